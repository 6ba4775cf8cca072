"""Lifeguard local health: how much this node trusts its own timeliness."""

# Strategy
#
# SWIM assumes the prober is healthy: a missed ack is blamed on the target.
# Lifeguard (Dadgar, Phillips, Currey, arXiv 1707.00788, "Local Health
# Multiplier") notices that a node which is itself slow (CPU starved,
# paused, overloaded) misses acks from everyone and so accuses healthy
# peers. It keeps a small integer score of evidence that *we* are the
# problem and stretches the probe interval by score + 1, so a sick node
# probes (and accuses) less often.
#
# This is memberlist awareness.go without the mutex and the metrics gauge:
# the core is single-threaded, and metrics come from statistics snapshots.
#
# Rule 1: 0 <= score <= max_multiplier - 1 at all times. Every change goes
#         through apply_delta(), which clamps, so a burst of bad news cannot
#         push the score past the rail and a burst of good news cannot take
#         it below healthy.
# Rule 2: this object only keeps the score; it never decides when to move
#         it. The probe and refute logic (swim.py, membership.py) applies
#         the deltas listed below, copied from memberlist state.go.
# Rule 3: the formula lives in timing.scaled_interval; scale() only feeds it
#         the current score.
#
# Deltas the core applies (memberlist state.go probeNode and refute):
#
#   -1  a probe's ack arrived within probe_timeout of the ping (however
#       early the probe escalated). A late, indirect or TCP-only success
#       changes nothing: it shows the target is up, not that we are fast.
#   +(expected_nacks - received_nacks)
#       a probe failed and some ping-req helpers were able to send nacks:
#       each helper that did not even nack us means our own traffic is
#       being lost or delayed. All nacks received gives 0, since the
#       target, not us, is the problem.
#   +1  a probe failed and no helper could send nacks (none chosen, or none
#       speaks a protocol with nacks): the plain "failed probe" penalty.
#    0  the ping could not be sent for a local reason; nothing was learnt.
#   +1  we refuted a suspicion or death notice about ourselves: others
#       could not hear from us in time, which is evidence we are slow.
#
# The probe timeout is deliberately not scaled (memberlist: "we don't really
# expect waiting longer to help get UDP through"); only the probe interval
# is, which also leaves more time for indirect acks and nacks.
#
# max_multiplier = 1 turns the mechanism off: the only allowed score is 0,
# so scale() is the identity. MembershipConfig.lifeguard = False should map
# to that.

from __future__ import annotations

import attrs

from meshd.core import timing

__all__ = ["Awareness"]


def _check_max_multiplier(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # A multiplier below 1 would leave no valid score at all (0 .. -1).
    if value < 1:
        raise ValueError(f"max_multiplier must be >= 1, got {value!r}")


@attrs.define(eq=False)
class Awareness:
    """Lifeguard local health score (memberlist ``awareness``).

    Lower is healthier; 0 is fully healthy and the initial value.

    Attributes:
        max_multiplier: upper bound of the interval multiplier
            (``MembershipConfig.awareness_max_multiplier``); the score stays
            in ``0 .. max_multiplier - 1``. 1 disables local health.
        score: the current score.
    """

    max_multiplier: int = attrs.field(validator=_check_max_multiplier)
    score: int = attrs.field(default=0, init=False)

    def apply_delta(self, delta: int) -> int:
        """Move the score by ``delta`` and clamp it to ``0 .. max_multiplier - 1``.

        Deltas that would push past either rail change nothing beyond it;
        see the module comment for which events apply which delta.

        Args:
            delta: signed change, e.g. -1 after a successful probe.

        Returns:
            The new score.
        """
        score = self.score + delta
        if score < 0:
            score = 0
        elif score > self.max_multiplier - 1:
            score = self.max_multiplier - 1
        self.score = score
        return score

    def scale(self, timeout: float) -> float:
        """Stretch an interval by the current health (``timing.scaled_interval``).

        Args:
            timeout: the configured interval in seconds (the probe interval).

        Returns:
            ``timeout * (score + 1)``.
        """
        return timing.scaled_interval(timeout, self.score)
