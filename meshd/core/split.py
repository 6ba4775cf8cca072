"""Does this node believe the mesh may be split?

One crashed host is an incident; a large share of the mesh failing within a
few seconds of each other is more likely a network partition seen from one
side of it. The member table cannot tell the two apart, but an operator
should hear the second case said plainly, since the fix is in the network,
not on the hosts (SWIM itself, and the reconnect timer, merge the halves
once packets flow again).

The rule: a *burst* is the set of currently dead members whose failures lie
within ``window`` seconds of each other. A split is suspected when the
largest burst has at least two members and at least ``fraction`` of the
members this node knows (alive, suspect, and the burst itself). Members that
come back, leave or are reaped leave the burst. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import attrs

from meshd.core.types import NodeId

__all__ = ["SplitDetector", "SplitSuspicion"]


@attrs.frozen
class SplitSuspicion:
    """A suspected split, as this node sees it.

    Attributes:
        failed: members of the burst (sorted).
        known: members this node counts, itself included.
        first_failure: ``now`` of the burst's first failure.
        last_failure: ``now`` of its last failure.
    """

    failed: tuple[NodeId, ...]
    known: int
    first_failure: float
    last_failure: float


class SplitDetector:
    """Tracks failures and reports a suspected split.

    Args:
        window: seconds within which failures count as one burst.
        fraction: share of the known members a burst must reach.
    """

    def __init__(self, *, window: float, fraction: float = 1 / 3) -> None:
        if window <= 0 or not 0 < fraction <= 1:
            raise ValueError("window must be > 0 and fraction in (0, 1]")
        self._window = window
        self._fraction = fraction
        self._failed: dict[NodeId, float] = {}

    def failed(self, node_id: NodeId, now: float) -> None:
        """``node_id`` was declared dead at ``now``."""
        self._failed[node_id] = now

    def cleared(self, node_id: NodeId) -> None:
        """``node_id`` is alive again, left, or was reaped."""
        self._failed.pop(node_id, None)

    def suspicion(self, *, live_members: int) -> SplitSuspicion | None:
        """The suspected split, if any.

        Args:
            live_members: alive and suspect members, this node included.
        """
        if len(self._failed) < 2:
            return None
        times = sorted((t, n) for n, t in self._failed.items())
        best: list[tuple[float, NodeId]] = []
        start = 0
        for end in range(len(times)):
            while times[end][0] - times[start][0] > self._window:
                start += 1
            if end - start + 1 > len(best):
                best = times[start : end + 1]
        known = live_members + len(best)
        if len(best) < 2 or len(best) < self._fraction * known:
            return None
        return SplitSuspicion(
            failed=tuple(sorted(n for _, n in best)),
            known=known,
            first_failure=best[0][0],
            last_failure=best[-1][0],
        )
