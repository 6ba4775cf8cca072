"""Deterministic, seeded simulation of many sans-io cores on virtual time.

:class:`SimNetwork` runs hundreds to thousands of
:class:`~meshd.core.node.NodeCore` instances in one process, with no threads,
no trio and no wall clock: seeded loss and latency, partitions, crashes,
restarts and slow nodes. The same seed and the same calls give the same
event trace (:meth:`SimNetwork.trace_digest`), so scenario tests and
benchmarks are reproducible.

Everything in ``__all__`` is re-exported from :mod:`meshd.testing.sim`.
"""

from __future__ import annotations

from meshd.testing.sim import SimNetwork as SimNetwork
from meshd.testing.sim import SimNode as SimNode
from meshd.testing.sim import SlowSpec as SlowSpec

__all__ = ["SimNetwork", "SimNode", "SlowSpec"]
