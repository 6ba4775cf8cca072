"""Table tests for meshd.core.timing: each formula against its docstring and ANCHORS.md."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core import timing
from meshd.core.config import MembershipConfig

# -- retransmit_limit ---------------------------------------------------------

# (retransmit_mult, n, expected). ANCHORS.md §6.3: 8/12/16/20 for N = 10/100/1k/10k.
RETRANSMIT_CASES = [
    (4, 10, 8),
    (4, 100, 12),
    (4, 1000, 16),
    (4, 10000, 20),
    # Edges of ceil(log10(n + 1)): n = 9 -> log10(10) = 1 exactly.
    (4, 1, 4),
    (4, 9, 4),
    (4, 99, 8),
    (4, 999, 12),
    # Local profile multiplier.
    (2, 10, 4),
    (2, 1000, 8),
    # No members known: nothing to retransmit to.
    (4, 0, 0),
    (4, -3, 0),
]


@pytest.mark.parametrize(("mult", "n", "expected"), RETRANSMIT_CASES)
def test_retransmit_limit_table(mult: int, n: int, expected: int) -> None:
    assert timing.retransmit_limit(mult, n) == expected


@given(mult=st.integers(1, 10), n=st.integers(1, 10**9))
def test_retransmit_limit_matches_float_formula(mult: int, n: int) -> None:
    # The integer digit-count shortcut must equal the docstring formula,
    # evaluated exactly for every n where the float log is unambiguous.
    expected = mult * math.ceil(math.log10(n + 1))
    assert timing.retransmit_limit(mult, n) == expected


# -- suspicion_min_timeout / suspicion_max_timeout ------------------------------

# (mult, n, probe_interval, expected_min, expected_max at mult 6).
# ANCHORS.md §6.1 (LAN): min 4/8/12 s, max 24/48/72 s at N = 10/100/1000;
# §6.2 (WAN, mult 6, probe 5 s): 60 s / 360 s at N = 100.
SUSPICION_CASES = [
    (4, 10, 1.0, 4.0, 24.0),
    (4, 100, 1.0, 8.0, 48.0),
    (4, 1000, 1.0, 12.0, 72.0),
    (6, 100, 5.0, 60.0, 360.0),
    # log10 factor floors at 1 for tiny meshes (and n <= 0).
    (4, 1, 1.0, 4.0, 24.0),
    (4, 2, 1.0, 4.0, 24.0),
    (4, 0, 1.0, 4.0, 24.0),
    (4, -5, 1.0, 4.0, 24.0),
    # Local profile: mult 3, probe 1 s.
    (3, 10, 1.0, 3.0, 18.0),
]


@pytest.mark.parametrize(("mult", "n", "interval", "expected_min", "expected_max"), SUSPICION_CASES)
def test_suspicion_min_and_max_timeout_table(
    mult: int, n: int, interval: float, expected_min: float, expected_max: float
) -> None:
    minimum = timing.suspicion_min_timeout(mult, n, interval)
    assert minimum == pytest.approx(expected_min)
    assert timing.suspicion_max_timeout(minimum, 6) == pytest.approx(expected_max)


def test_suspicion_min_timeout_between_powers_of_ten() -> None:
    # N = 50: 4 * log10(50) * 1 s = 6.7959 s (memberlist truncates the log
    # factor to 1.698 -> 6.792 s; we keep the exact value).
    assert timing.suspicion_min_timeout(4, 50, 1.0) == pytest.approx(4 * math.log10(50))


def test_suspicion_timeouts_from_lan_config() -> None:
    cfg = MembershipConfig.lan()
    minimum = timing.suspicion_min_timeout(cfg.suspicion_mult, 100, cfg.probe_interval)
    assert minimum == pytest.approx(8.0)
    assert timing.suspicion_max_timeout(minimum, cfg.suspicion_max_timeout_mult) == pytest.approx(
        48.0
    )


# -- suspicion_confirmations_needed -------------------------------------------

# (suspicion_mult, n, expected k). k = mult - 2, or 0 when n - 2 < k.
CONFIRMATIONS_CASES = [
    (4, 100, 2),
    (4, 4, 2),  # n - 2 == k: just enough others to confirm
    (4, 3, 0),  # n - 2 < k
    (4, 1, 0),
    (6, 8, 4),
    (6, 5, 0),
    (3, 3, 1),
    (3, 2, 0),
    (2, 100, 0),
    (1, 100, 0),  # mult - 2 < 0: never negative
    (4, 0, 0),
]


@pytest.mark.parametrize(("mult", "n", "expected"), CONFIRMATIONS_CASES)
def test_suspicion_confirmations_needed_table(mult: int, n: int, expected: int) -> None:
    assert timing.suspicion_confirmations_needed(mult, n) == expected


# -- suspicion_timeout --------------------------------------------------------

# memberlist TestSuspicion_remainingSuspicionTime, with the elapsed term
# added back: (confirmations, k, min, max, expected total timeout).
REMAINING_CASES = [
    (0, 3, 2.0, 30.0, 30.0),
    (1, 3, 2.0, 30.0, 16.0),  # memberlist: 14 s left after 2 s elapsed
    (2, 3, 2.0, 30.0, 7.81),  # 4.81 s left after 3 s
    (3, 3, 2.0, 30.0, 2.0),  # -2 s left after 4 s
    (4, 3, 2.0, 30.0, 2.0),  # more than k: still min
    (5, 3, 2.0, 30.0, 2.0),
    # memberlist TestSuspicion_Timer (k 3, min 0.5 s, max 2 s).
    (0, 3, 0.5, 2.0, 2.0),
    (1, 3, 0.5, 2.0, 1.25),
    (2, 3, 0.5, 2.0, 0.811),  # floor(811.27 ms); the Go test allows 25 ms slack around 810
    (3, 3, 0.5, 2.0, 0.5),
    # LAN at N = 100: k = 2, min 8 s, max 48 s.
    (0, 2, 8.0, 48.0, 48.0),
    (1, 2, 8.0, 48.0, 22.762),  # 48 - 40 * log 2 / log 3 = 22.7630... -> floored to ms
    (2, 2, 8.0, 48.0, 8.0),
    # k < 1: always min ("not enough nodes to confirm").
    (0, 0, 4.0, 24.0, 4.0),
    (3, 0, 4.0, 24.0, 4.0),
    (0, -1, 4.0, 24.0, 4.0),
    # min == max: no room to shrink.
    (1, 3, 5.0, 5.0, 5.0),
]


@pytest.mark.parametrize(("confirmations", "k", "minimum", "maximum", "expected"), REMAINING_CASES)
def test_suspicion_timeout_table(
    confirmations: int, k: int, minimum: float, maximum: float, expected: float
) -> None:
    assert timing.suspicion_timeout(confirmations, k, minimum, maximum) == pytest.approx(
        expected, abs=1e-9
    )


def test_suspicion_timeout_rounds_down_to_whole_milliseconds() -> None:
    raw = 48.0 - 40.0 * math.log(2) / math.log(3)
    got = timing.suspicion_timeout(1, 2, 8.0, 48.0)
    assert got < raw
    assert raw - got < 0.001
    assert round(got * 1000) == pytest.approx(got * 1000, abs=1e-6)


@given(
    k=st.integers(1, 10),
    minimum=st.floats(0.1, 100.0),
    mult=st.integers(1, 10),
)
def test_suspicion_timeout_decreases_from_max_to_min(k: int, minimum: float, mult: int) -> None:
    maximum = minimum * mult
    values = [timing.suspicion_timeout(c, k, minimum, maximum) for c in range(k + 3)]
    # Starts at max (to the millisecond), never rises, ends at min.
    assert values[0] == pytest.approx(maximum, abs=0.001)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[k] == minimum
    assert all(v >= minimum for v in values)


# -- push_pull_scale ----------------------------------------------------------

# (interval, n, expected). ANCHORS.md §6.4: 30 s -> 90/180/300 s at N = 100/1k/10k.
PUSH_PULL_CASES = [
    (30.0, 100, 90.0),
    (30.0, 1000, 180.0),
    (30.0, 10000, 300.0),
    (30.0, 1, 30.0),
    (30.0, 32, 30.0),  # at the threshold: unscaled
    (30.0, 33, 60.0),  # "the 33rd node will cause us to double the interval"
    (30.0, 64, 60.0),
    (30.0, 65, 90.0),  # "while the 65th will triple it"
    (30.0, 0, 30.0),
    (60.0, 100, 180.0),  # WAN
]


@pytest.mark.parametrize(("interval", "n", "expected"), PUSH_PULL_CASES)
def test_push_pull_scale_table(interval: float, n: int, expected: float) -> None:
    assert timing.push_pull_scale(interval, n) == expected


@given(n=st.integers(33, 10**9))
def test_push_pull_scale_matches_float_formula(n: int) -> None:
    multiplier = math.ceil(math.log2(n) - math.log2(32)) + 1
    assert timing.push_pull_scale(1.0, n) == multiplier


# -- scaled_interval ----------------------------------------------------------

# (interval, health_score, expected). ANCHORS.md §1.2: max 8 s at LAN default.
SCALED_CASES = [
    (1.0, 0, 1.0),
    (1.0, 1, 2.0),
    (1.0, 7, 8.0),
    (5.0, 3, 20.0),
    (0.5, 2, 1.5),
]


@pytest.mark.parametrize(("interval", "score", "expected"), SCALED_CASES)
def test_scaled_interval_table(interval: float, score: int, expected: float) -> None:
    assert timing.scaled_interval(interval, score) == expected


# -- rtt_update ---------------------------------------------------------------

# (srtt, rttvar, sample, expected srtt, expected rttvar). RFC 6298 §2: the
# first sample R gives srtt = R, rttvar = R/2; afterwards
# rttvar = 3/4 rttvar + 1/4 |srtt - R| (with the *old* srtt), then
# srtt = 7/8 srtt + 1/8 R.
RTT_UPDATE_CASES = [
    # First sample: rttvar (whatever it holds) is ignored.
    (None, 0.0, 0.002, 0.002, 0.001),
    (None, 5.0, 0.1, 0.1, 0.05),
    (None, 0.0, 0.0, 0.0, 0.0),
    # Steady RTT: srtt stays, the deviation decays by 3/4 per sample.
    (0.002, 0.001, 0.002, 0.002, 0.00075),
    (0.1, 0.0, 0.1, 0.1, 0.0),
    # A slower sample: 0.004 after 0.002 -> rttvar = 0.75*0.001 + 0.25*0.002.
    (0.002, 0.001, 0.004, 0.00225, 0.00125),
    # A faster sample: 0.001 after 0.00225 (|diff| = 0.00125).
    (0.00225, 0.00125, 0.001, 0.00209375, 0.00125),
    # A spike: 0.8 s after a steady 0.1 s moves srtt by 1/8 of the gap.
    (0.1, 0.01, 0.8, 0.1875, 0.1825),
]


@pytest.mark.parametrize(("srtt", "rttvar", "sample", "exp_srtt", "exp_rttvar"), RTT_UPDATE_CASES)
def test_rtt_update_table(
    srtt: float | None, rttvar: float, sample: float, exp_srtt: float, exp_rttvar: float
) -> None:
    got_srtt, got_rttvar = timing.rtt_update(srtt, rttvar, sample)
    assert got_srtt == pytest.approx(exp_srtt, abs=1e-12)
    assert got_rttvar == pytest.approx(exp_rttvar, abs=1e-12)


def test_rtt_update_sequence_uses_old_srtt_for_the_deviation() -> None:
    # 2 ms, 2 ms, 4 ms, 1 ms: the worked example in docs/membership.md.
    srtt, rttvar = None, 0.0
    trail = []
    for sample in (0.002, 0.002, 0.004, 0.001):
        srtt, rttvar = timing.rtt_update(srtt, rttvar, sample)
        trail.append((srtt, rttvar))
    expected = [
        (0.002, 0.001),
        (0.002, 0.00075),
        (0.00225, 0.0010625),  # 0.75 * 0.00075 + 0.25 * |0.002 - 0.004|
        (0.00209375, 0.001109375),  # 0.75 * 0.0010625 + 0.25 * |0.00225 - 0.001|
    ]
    for (s, v), (es, ev) in zip(trail, expected, strict=True):
        assert s == pytest.approx(es, abs=1e-12)
        assert v == pytest.approx(ev, abs=1e-12)


@given(
    samples=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=50),
)
def test_rtt_update_stays_within_the_samples(samples: list[float]) -> None:
    # srtt is a weighted mean of the samples, so it never leaves their range;
    # rttvar is never negative.
    srtt: float | None = None
    rttvar = 0.0
    for sample in samples:
        srtt, rttvar = timing.rtt_update(srtt, rttvar, sample)
        assert rttvar >= 0.0
    assert srtt is not None
    assert min(samples) - 1e-9 <= srtt <= max(samples) + 1e-9


# -- escalation_timeout -------------------------------------------------------

# (srtt, rttvar, probe_timeout_min, probe_timeout, expected).
# clamp(srtt + 4 * rttvar, probe_timeout_min, probe_timeout); probe_timeout
# while there is no estimate.
ESCALATION_CASES = [
    # No RTT estimate yet: memberlist's fixed ProbeTimeout.
    (None, 0.0, 0.05, 0.5, 0.5),
    (None, 0.3, 0.05, 0.5, 0.5),
    (None, 0.0, 0.3, 3.0, 3.0),  # WAN
    (None, 0.0, 0.02, 0.2, 0.2),  # local
    # LAN, a 2 ms RTT: 2 + 4 * 1 = 6 ms, raised to the 50 ms floor.
    (0.002, 0.001, 0.05, 0.5, 0.05),
    (0.0, 0.0, 0.05, 0.5, 0.05),
    # Inside the window: srtt + 4 * rttvar itself.
    (0.1, 0.025, 0.05, 0.5, 0.2),
    (0.04, 0.0025, 0.05, 0.5, 0.05),  # exactly at the floor
    (0.3, 0.05, 0.05, 0.5, 0.5),  # exactly at the ceiling
    (0.2, 0.05, 0.05, 0.5, 0.4),
    # A slow, jittery member: capped at probe_timeout.
    (0.4, 0.1, 0.05, 0.5, 0.5),
    (2.0, 1.0, 0.05, 0.5, 0.5),
    # WAN: 80 ms RTT after its first sample (rttvar 40 ms): 240 ms -> 300 ms floor.
    (0.08, 0.04, 0.3, 3.0, 0.3),
    (1.0, 0.25, 0.3, 3.0, 2.0),
    # probe_timeout_min == probe_timeout: memberlist's fixed timeout whatever the RTT.
    (0.002, 0.001, 0.5, 0.5, 0.5),
    (2.0, 1.0, 0.5, 0.5, 0.5),
]


@pytest.mark.parametrize(("srtt", "rttvar", "floor", "ceiling", "expected"), ESCALATION_CASES)
def test_escalation_timeout_table(
    srtt: float | None, rttvar: float, floor: float, ceiling: float, expected: float
) -> None:
    assert timing.escalation_timeout(srtt, rttvar, floor, ceiling) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("name", ["lan", "wan", "local"])
def test_escalation_timeout_without_estimate_is_the_profile_probe_timeout(name: str) -> None:
    cfg = getattr(MembershipConfig, name)()
    got = timing.escalation_timeout(None, 0.0, cfg.probe_timeout_min, cfg.probe_timeout)
    assert got == cfg.probe_timeout


@given(
    srtt=st.floats(0.0, 100.0),
    rttvar=st.floats(0.0, 100.0),
    floor=st.floats(0.001, 1.0),
    extra=st.floats(0.0, 10.0),
)
def test_escalation_timeout_always_within_its_bounds(
    srtt: float, rttvar: float, floor: float, extra: float
) -> None:
    ceiling = floor + extra
    got = timing.escalation_timeout(srtt, rttvar, floor, ceiling)
    assert floor <= got <= ceiling
    if floor <= srtt + 4 * rttvar <= ceiling:
        assert got == srtt + 4 * rttvar
