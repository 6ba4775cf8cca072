"""Lifeguard LHA-Suspicion: a suspect's deadline that shrinks as accusers agree."""

# Strategy
#
# SWIM (§4.2) gives a suspect member a fixed time to refute before it is
# declared dead. Lifeguard (Dadgar, Phillips, Currey, arXiv 1707.00788,
# "Local Health Aware Suspicion") starts that timer long, at max_timeout,
# and shortens it toward min_timeout as *independent* members report the
# same suspicion. One slow or partitioned accuser then cannot kill a
# healthy member quickly, while a member that many peers cannot reach is
# still declared dead fast:
#
#     timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))
#
# with c confirmations so far and k the confirmations that reach min
# (timing.suspicion_timeout, timing.suspicion_confirmations_needed).
#
# This follows memberlist suspicion.go, with the timer replaced by a value:
# memberlist keeps a time.AfterFunc and re-arms it on every confirmation
# with "timeout - elapsed"; the sans-io core instead stores started_at and
# exposes `deadline`, an absolute time the core compares with `now` and
# reports through next_deadline(). Re-arming becomes recomputing one
# number, and a deadline already in the past simply means "expire at the
# next tick" (memberlist's "fire immediately" case).
#
# Rule 1: a node counts at most once. The first accuser is recorded at
#         construction and never counted: our own suspicion (or the one
#         that started it here) will be gossiped back to us by peers who
#         merely relayed it, and relaying is not independent evidence.
# Rule 2: confirmations never exceed k; once k are in, the deadline is
#         started_at + min_timeout and further accusers are ignored.
# Rule 3: the deadline only ever moves earlier (or stays). It is
#         recomputed from started_at, not from the time of the latest
#         confirmation, so the *total* suspicion time follows the formula.
# Rule 4: this object knows nothing about incarnations or refutation. The
#         membership table drops the Suspicion when the suspect refutes
#         (higher incarnation) and declares the member dead when
#         `deadline <= now`.

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from meshd.core import timing

if TYPE_CHECKING:
    from meshd.core.types import NodeId

__all__ = ["Suspicion"]


@attrs.define(eq=False, kw_only=True)
class Suspicion:
    """One member's suspicion: who accused it, and when it will be declared dead.

    Build one when a member first becomes suspect, with ``k``, ``min_timeout``
    and ``max_timeout`` from :mod:`meshd.core.timing`, and feed every later
    suspect message about the same incarnation to :meth:`confirm`.

    Attributes:
        accuser: the member whose suspect message started this suspicion
            (this node, if its own probe failed). Never counted as a
            confirmation.
        k: independent confirmations that bring the deadline down to
            ``min_timeout``; below 1 the deadline is the minimum from the
            start, because there are too few members to ever confirm.
        min_timeout: shortest suspicion, in seconds.
        max_timeout: suspicion with no confirmations, in seconds.
        started_at: ``now`` when the suspicion began.
        confirmations: independent confirmations so far, ``0 .. max(k, 0)``.
    """

    accuser: NodeId
    k: int
    min_timeout: float
    max_timeout: float
    started_at: float
    confirmations: int = attrs.field(default=0, init=False)

    # Every member that has accused so far, the original accuser included
    # (memberlist's `confirmations` map); this is what makes Rule 1 hold.
    _accusers: set[NodeId] = attrs.field(init=False, factory=set)

    # Cached absolute deadline. It changes only in confirm(), and the core
    # reads it on every next_deadline() call, so it is kept rather than
    # recomputed with two logarithms each time.
    _deadline: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        # Pre-count the accuser (Rule 1): "we might get our own suspicion
        # message gossiped back to us" (memberlist newSuspicion).
        self._accusers.add(self.accuser)
        # With zero confirmations and k >= 1 this is max_timeout; with
        # k < 1 timing.suspicion_timeout returns min_timeout.
        self._deadline = self.started_at + timing.suspicion_timeout(
            0, self.k, self.min_timeout, self.max_timeout
        )

    @property
    def deadline(self) -> float:
        """Absolute time at which the suspect is declared dead unless it refutes.

        ``started_at + timing.suspicion_timeout(confirmations, k,
        min_timeout, max_timeout)``.
        """
        return self._deadline

    def confirm(self, accuser: NodeId) -> bool:
        """Record that ``accuser`` also suspects the member.

        Args:
            accuser: the ``from`` field of a suspect message about the same
                member and incarnation.

        Returns:
            True if this was a new independent confirmation: it was counted
            and the deadline recomputed (earlier, or unchanged when the
            millisecond rounding or ``min_timeout == max_timeout`` leaves no
            room). The core re-gossips the suspicion only then. False for
            the original accuser, an accuser already counted, or once
            ``k`` confirmations are in (including whenever ``k < 1``).
        """
        # Enough confirmations already: the deadline is at its minimum and
        # further accusers cannot move it (Rule 2). memberlist checks this
        # before the duplicate check, so a late accuser is not recorded.
        if self.confirmations >= self.k:
            return False
        if accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self.confirmations += 1
        self._deadline = self.started_at + timing.suspicion_timeout(
            self.confirmations, self.k, self.min_timeout, self.max_timeout
        )
        return True
