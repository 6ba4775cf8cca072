"""The sans-io core of meshd.

Nothing in this package performs I/O, reads a clock or draws randomness:
time arrives as ``now`` (float seconds on the runtime's monotonic clock),
randomness as an injected :class:`~meshd.core.types.Rng`. A test
(``tests/test_layering.py``) fails if a module here imports trio, socket,
ssl, time, random, os, zeroconf, asyncio, threading or sqlite3.
"""
