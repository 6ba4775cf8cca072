"""The replicated key-value store's runtime: coordinator, replica service, repair and handoff.

``service.py`` holds :class:`KvService`, one per daemon: it keeps the ring
current, coordinates requests, serves the ``kv`` RPC service, delivers
hints, and runs anti-entropy and rebalancing through ``sync.py``. The rules
it follows are in ``meshd/core`` (ring.py, versioned.py, replication.py,
merkle.py, hlc.py, kvmessages.py); ``docs/data.md`` is the operator's view.
"""

from meshd.runtime.kv.service import (
    KvService,
    KvTuning,
    KvUnavailable,
    ReadOutcome,
    WriteOutcome,
)

__all__ = ["KvService", "KvTuning", "KvUnavailable", "ReadOutcome", "WriteOutcome"]
