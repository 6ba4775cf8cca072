"""Every formula that turns membership knobs into a count or a duration.

Pure functions; each docstring states its formula and the memberlist
function it follows.
"""

# Strategy
#
# SWIM and Lifeguard scale their timers and retransmit counts with the
# logarithm of the group size N, so that detection time and per-member
# load stay nearly flat as the mesh grows. memberlist keeps these formulas
# as small pure helpers in util.go (suspicionTimeout, retransmitLimit,
# pushPullScale) and suspicion.go (remainingSuspicionTime); meshd gathers
# them here, in one module, so there is exactly one place to read, test
# and change them.
#
# Rule 1: no other module computes a timeout or a retransmit count from
#         config knobs. They call these functions. A second copy of a
#         formula is how memberlist's docs drifted from its code (config.go
#         says log(N+1) for the suspicion timeout, util.go uses
#         log10(max(1, N))).
# Rule 2: every function here is total and pure: plain numbers in, a plain
#         number out, no state, no clock. Bad sizes (N <= 0) give the
#         "smallest group" answer instead of raising, because N is a live
#         estimate and the core must never crash on it.
# Rule 3: each docstring states its formula; tests/core/test_timing.py
#         checks the function against that formula and against the numbers
#         in ANCHORS.md §6 (retransmits 8/12/16/20, suspicion 4/8/12 s,
#         push-pull 90/180/300 s).
#
# N is always "members this node knows about, itself included", the value
# memberlist calls estNumNodes().
#
# Where exact integer arithmetic gives the same answer as the float formula
# we use it: ceil(log10(N + 1)) is the digit count of N and ceil(log2(N)) is
# (N - 1).bit_length(). Float logs are only exact at powers of the base by
# courtesy of the C library (math.log(1000, 10) is 2.9999999999999996), and
# an off-by-one in a retransmit count is a silent protocol change.

from __future__ import annotations

import math

__all__ = [
    "PUSH_PULL_SCALE_THRESHOLD",
    "escalation_timeout",
    "push_pull_scale",
    "retransmit_limit",
    "rtt_update",
    "scaled_interval",
    "suspicion_confirmations_needed",
    "suspicion_max_timeout",
    "suspicion_min_timeout",
    "suspicion_timeout",
]

# memberlist util.go pushPullScaleThreshold: at most this many members the
# push-pull interval is used as configured. Above it the interval grows by
# one step per doubling, so the 33rd member doubles it and the 65th triples
# it (each push-pull moves the whole member list, so its cost grows with N).
PUSH_PULL_SCALE_THRESHOLD = 32

# log2(PUSH_PULL_SCALE_THRESHOLD), as an exact integer.
_PUSH_PULL_SCALE_BITS = PUSH_PULL_SCALE_THRESHOLD.bit_length() - 1

# Suspicion timeouts are rounded down to whole milliseconds, as memberlist's
# remainingSuspicionTime does with time.Duration. The rounding must not
# turn an exact value such as 16.0 s into 15.999 s because the float
# arithmetic came out at 15.999999999999998, so a tiny fraction of a
# millisecond is added before flooring.
_MS_FLOOR_EPSILON = 1e-6


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one broadcast is piggybacked before it is dropped.

    Formula (memberlist util.go ``retransmitLimit``)::

        retransmit_mult * ceil(log10(n + 1))

    With the LAN multiplier 4 this is 8, 12, 16 and 20 transmissions for
    N = 10, 100, 1000 and 10000: infection-style gossip reaches everyone
    after O(log N) rounds (SWIM §4.1), so a log-scaled count suffices.

    Args:
        retransmit_mult: ``MembershipConfig.retransmit_mult``.
        n: members known, this node included.

    Returns:
        The transmit limit; 0 when ``n <= 0``.
    """
    if n <= 0:
        return 0
    # ceil(log10(n + 1)) == number of decimal digits of n, for n >= 1:
    # 10**(d-1) <= n < 10**d  <=>  d - 1 < log10(n + 1) <= d.
    return retransmit_mult * len(str(n))


def suspicion_min_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """The shortest time a suspect member gets to refute before it is declared dead.

    Formula (memberlist util.go ``suspicionTimeout``)::

        suspicion_mult * max(1, log10(max(1, n))) * probe_interval

    LAN (mult 4, probe 1 s): 4 s for N <= 10, 8 s for N = 100, 12 s for
    N = 1000. memberlist truncates the log factor to 1/1000 before
    multiplying (an integer Duration artefact); we keep the exact value,
    which differs by under 0.1 %.

    Args:
        suspicion_mult: ``MembershipConfig.suspicion_mult``.
        n: members known, this node included.
        probe_interval: ``MembershipConfig.probe_interval`` in seconds (not
            scaled by local health, as in memberlist).

    Returns:
        The minimum suspicion timeout in seconds.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    return suspicion_mult * node_scale * probe_interval


def suspicion_max_timeout(min_timeout: float, max_timeout_mult: int) -> float:
    """The time a suspicion starts at before any confirmation arrives (Lifeguard).

    Formula (memberlist state.go ``suspectNode``)::

        max_timeout_mult * min_timeout

    LAN: 24 s, 48 s and 72 s for N = 10, 100 and 1000.

    Args:
        min_timeout: result of :func:`suspicion_min_timeout`.
        max_timeout_mult: ``MembershipConfig.suspicion_max_timeout_mult``.

    Returns:
        The maximum suspicion timeout in seconds.
    """
    return max_timeout_mult * min_timeout


def suspicion_confirmations_needed(suspicion_mult: int, n: int) -> int:
    """Independent confirmations that drive a suspicion to its minimum timeout.

    Formula (memberlist state.go ``suspectNode``)::

        k = suspicion_mult - 2;  k = 0 if n - 2 < k;  never below 0

    The two members subtracted from ``n`` are the suspect itself and the
    first accuser, neither of which can confirm. With too few other members
    the confirmations could never all arrive, so k = 0 and the suspicion
    uses the minimum timeout from the start.

    Args:
        suspicion_mult: ``MembershipConfig.suspicion_mult``.
        n: members known, this node included.

    Returns:
        k, the number of confirmations wanted (0 or more).
    """
    k = suspicion_mult - 2
    if n - 2 < k:
        return 0
    return max(0, k)


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Total suspicion timeout, measured from the start of the suspicion (Lifeguard LHA-Suspicion).

    Formula (memberlist suspicion.go ``remainingSuspicionTime``, without the
    ``- elapsed`` term, since meshd keeps a deadline instead of a timer)::

        raw = max_timeout - (max_timeout - min_timeout)
                            * log(confirmations + 1) / log(k + 1)
        max(min_timeout, floor_to_ms(raw))

    The timeout falls logarithmically: the first confirmations buy the most,
    because each independent accuser makes a false positive much less likely.
    With ``confirmations >= k`` it is ``min_timeout``.

    Args:
        confirmations: independent confirmations so far (first accuser not
            counted).
        k: confirmations wanted, from :func:`suspicion_confirmations_needed`.
        min_timeout: from :func:`suspicion_min_timeout`.
        max_timeout: from :func:`suspicion_max_timeout`.

    Returns:
        Seconds from the start of the suspicion to its deadline, a whole
        number of milliseconds unless it is ``min_timeout`` itself.
    """
    if k < 1 or confirmations >= k:
        # memberlist: "if there aren't enough nodes to confirm, use min"
        # (and log(k + 1) would be 0 or undefined). At k confirmations the
        # formula is exactly min; returning it avoids float noise above min.
        return min_timeout
    frac = math.log(confirmations + 1) / math.log(k + 1)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    floored = math.floor(raw * 1000.0 + _MS_FLOOR_EPSILON) / 1000.0
    return max(min_timeout, floored)


def push_pull_scale(interval: float, n: int) -> float:
    """Push-pull (anti-entropy) interval stretched for large meshes.

    Formula (memberlist util.go ``pushPullScale``)::

        interval                                         if n <= 32
        interval * (ceil(log2(n) - log2(32)) + 1)        otherwise

    LAN (30 s): 90 s at N = 100, 180 s at N = 1000, 300 s at N = 10000.
    Each exchange ships the full member list, so without this the total
    push-pull traffic would grow as N².

    Args:
        interval: ``MembershipConfig.push_pull_interval`` in seconds.
        n: members known, this node included.

    Returns:
        The scaled interval in seconds.
    """
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    # ceil(log2(n)) == (n - 1).bit_length() for n >= 1, and log2(32) is the
    # integer 5, so the ceil can be taken before subtracting.
    multiplier = (n - 1).bit_length() - _PUSH_PULL_SCALE_BITS + 1
    return interval * multiplier


def scaled_interval(interval: float, health_score: int) -> float:
    """An interval stretched by Lifeguard's local health multiplier.

    Formula (memberlist awareness.go ``ScaleTimeout``)::

        interval * (health_score + 1)

    A node that misses acks because it is itself slow (CPU starved, GC,
    overloaded NIC) probes less often instead of accusing healthy peers.
    memberlist scales the probe interval this way but deliberately not the
    probe timeout: waiting longer does not get a lost UDP packet through.

    Args:
        interval: the configured interval in seconds.
        health_score: ``Awareness.score``, 0 when healthy.

    Returns:
        The scaled interval in seconds.
    """
    return interval * (health_score + 1)


# RTT smoothing gains of RFC 6298 §2 (TCP's retransmission timer): the mean
# follows new samples with weight 1/8, the deviation with weight 1/4.
_RTT_ALPHA = 0.125
_RTT_BETA = 0.25


def rtt_update(srtt: float | None, rttvar: float, sample: float) -> tuple[float, float]:
    """Fold one round-trip ``sample`` into a smoothed estimate (RFC 6298 §2).

    Formula: first sample: ``srtt = R``, ``rttvar = R / 2``; afterwards
    ``rttvar = 3/4 · rttvar + 1/4 · |srtt − R|`` and
    ``srtt = 7/8 · srtt + 1/8 · R``.

    Returns:
        ``(srtt, rttvar)`` after the sample.
    """
    if srtt is None:
        return sample, sample / 2
    rttvar = (1 - _RTT_BETA) * rttvar + _RTT_BETA * abs(srtt - sample)
    return (1 - _RTT_ALPHA) * srtt + _RTT_ALPHA * sample, rttvar


def escalation_timeout(
    srtt: float | None, rttvar: float, probe_timeout_min: float, probe_timeout: float
) -> float:
    """How long a probe waits for a direct ack before ping-req and TCP ping.

    Formula: ``clamp(srtt + 4 · rttvar, probe_timeout_min, probe_timeout)``;
    ``probe_timeout`` while the member has no RTT estimate yet.

    meshd's refinement over memberlist, whose fixed ``ProbeTimeout`` must be
    hand-set near the p99 RTT: an ack overdue by the measured RTT spread
    escalates at once. Escalation only *asks for more evidence* (indirect
    pings, a stream ping); the verdict still waits for the end of the
    protocol period, so a short timeout costs packets, never a false suspicion.
    """
    if srtt is None:
        return probe_timeout
    return min(probe_timeout, max(probe_timeout_min, srtt + 4 * rttvar))
