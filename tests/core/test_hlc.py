"""Tests for meshd.core.hlc: the packed max is Kulkarni et al.'s algorithm; drift is bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.hlc import (
    DEFAULT_MAX_DRIFT_MS,
    LOGICAL_BITS,
    ZERO,
    ClockDriftError,
    HybridClock,
    Timestamp,
    Version,
)
from meshd.errors import RemoteProtocolError

T0 = 1_700_000_000_000  # a wall time in ms


class PaperClock:
    """HLC as written in the paper (Fig. 5): l and c kept apart, one case per branch."""

    def __init__(self) -> None:
        self.l, self.c = 0, 0

    def send(self, pt: int) -> tuple[int, int]:
        old = self.l
        self.l = max(old, pt)
        self.c = self.c + 1 if self.l == old else 0
        return self.l, self.c

    def receive(self, ml: int, mc: int, pt: int) -> tuple[int, int]:
        old = self.l
        self.l = max(old, ml, pt)
        if self.l == old == ml:
            self.c = max(self.c, mc) + 1
        elif self.l == old:
            self.c += 1
        elif self.l == ml:
            self.c = mc + 1
        else:
            self.c = 0
        return self.l, self.c


def pair(ts: Timestamp) -> tuple[int, int]:
    return ts.wall_ms, ts.logical


# (last, remote, physical) -> expected, one row per branch of the paper's receive rule.
RECEIVE_CASES = [
    ((T0, 4), (T0, 7), T0 - 5, (T0, 8)),  # l == l' == m.l: max(c, m.c) + 1
    ((T0, 4), (T0 - 1, 9), T0 - 5, (T0, 5)),  # l == l': c + 1
    ((T0, 4), (T0 + 2, 9), T0 + 1, (T0 + 2, 10)),  # l == m.l: m.c + 1
    ((T0, 4), (T0 + 2, 9), T0 + 3, (T0 + 3, 0)),  # physical time wins: c = 0
]


@pytest.mark.parametrize(("last", "remote", "physical", "expected"), RECEIVE_CASES)
def test_hlc_update_cases(
    last: tuple[int, int], remote: tuple[int, int], physical: int, expected: tuple[int, int]
) -> None:
    clock = HybridClock(last=Timestamp.of(*last))
    assert pair(clock.update(Timestamp.of(*remote), physical)) == expected
    assert pair(clock.last) == expected


def test_hlc_now_follows_wall_time_and_counts_within_a_millisecond() -> None:
    clock = HybridClock()
    assert pair(clock.now(T0)) == (T0, 0)
    assert pair(clock.now(T0)) == (T0, 1)
    assert pair(clock.now(T0 + 1)) == (T0 + 1, 0)
    # The wall clock steps back (NTP): l stays, c counts on (Rule 2).
    assert pair(clock.now(T0 - 1000)) == (T0 + 1, 1)


def test_hlc_logical_overflow_carries_into_wall_time() -> None:
    clock = HybridClock(last=Timestamp.of(T0, (1 << LOGICAL_BITS) - 1))
    before = clock.last
    after = clock.now(T0)
    assert after > before
    assert pair(after) == (T0 + 1, 0)


# (kind, remote wall ms, remote logical, physical ms); a send uses the physical time only.
events = st.lists(
    st.tuples(
        st.sampled_from(["send", "receive"]),
        st.integers(0, 50),
        st.integers(0, 50),
        st.integers(0, 60),
    ),
    max_size=40,
)


@given(events)
def test_hlc_packed_max_equals_the_papers_algorithm(steps: list[tuple[str, int, int, int]]) -> None:
    ours, paper = HybridClock(max_drift_ms=1000), PaperClock()
    previous = ZERO
    for kind, ml, mc, pt in steps:
        if kind == "send":
            got, want = ours.now(pt), paper.send(pt)
        else:
            remote = Timestamp.of(ml, mc)
            got, want = ours.update(remote, pt), paper.receive(ml, mc, pt)
            assert got > remote  # causality: after everything received
        assert pair(got) == want
        assert got > previous  # strictly increasing
        previous = got


def test_hlc_rejects_remote_timestamps_beyond_the_drift_bound() -> None:
    clock = HybridClock(max_drift_ms=500)
    clock.now(T0)
    before = clock.last
    with pytest.raises(ClockDriftError, match="501 ms ahead") as info:
        clock.update(Timestamp.of(T0 + 501), T0)
    assert isinstance(info.value, RemoteProtocolError)
    assert clock.last == before  # refused: the clock did not move
    assert pair(clock.update(Timestamp.of(T0 + 500, 3), T0)) == (T0 + 500, 4)


def test_hlc_default_drift_bound() -> None:
    assert HybridClock().max_drift_ms == DEFAULT_MAX_DRIFT_MS
    with pytest.raises(ValueError, match=">= 0"):
        HybridClock(max_drift_ms=-1)


def test_timestamp_packing_and_order() -> None:
    ts = Timestamp.of(T0, 3)
    assert ts.packed == T0 << LOGICAL_BITS | 3
    assert (ts.wall_ms, ts.logical) == (T0, 3)
    assert str(ts) == f"{T0}.00003"
    assert Timestamp.of(T0, 9) < Timestamp.of(T0 + 1, 0) < Timestamp.of(T0 + 1, 1)
    assert Timestamp.of(0) == ZERO


@pytest.mark.parametrize(
    ("wall_ms", "logical"), [(-1, 0), (0, -1), (0, 1 << LOGICAL_BITS), (1 << 47, 0)]
)
def test_timestamp_rejects_out_of_range(wall_ms: int, logical: int) -> None:
    with pytest.raises(ValueError, match=r"out of range|>= 0"):
        Timestamp.of(wall_ms, logical)


def test_version_orders_by_timestamp_then_writer() -> None:
    early, late = Timestamp.of(T0, 0), Timestamp.of(T0, 1)
    assert Version(early, "zz") < Version(late, "aa")
    assert Version(late, "aa") < Version(late, "ab")
    assert sorted([Version(late, "b"), Version(early, "c"), Version(late, "a")]) == [
        Version(early, "c"),
        Version(late, "a"),
        Version(late, "b"),
    ]
