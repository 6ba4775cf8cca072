"""meshd: a leaderless gossip mesh daemon (SWIM with the Lifeguard refinements).

The package is split in two layers:

- :mod:`meshd.core` is sans-io: pure state machines that take inputs and a
  ``now`` and return outputs and a deadline. It never touches sockets, clocks
  or randomness.
- :mod:`meshd.runtime` is the only trio code: it performs the core's outputs.

:mod:`meshd.testing` runs many cores in one process on virtual time, and
:mod:`meshd.cli` holds the ``meshd`` and ``meshctl`` commands.

This module stays import-light (no trio, no network libraries) so that
``meshctl`` starts fast and tooling can read ``__version__`` cheaply.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
