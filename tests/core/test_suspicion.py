"""Tests for meshd.core.suspicion: memberlist suspicion_test.go with deadlines, not sleeps."""

from __future__ import annotations

import math

import pytest

from meshd.core import timing
from meshd.core.suspicion import Suspicion
from meshd.core.types import NodeId

ME = NodeId("me")


def make(
    k: int = 3, minimum: float = 0.5, maximum: float = 2.0, started_at: float = 100.0
) -> Suspicion:
    return Suspicion(
        accuser=ME, k=k, min_timeout=minimum, max_timeout=maximum, started_at=started_at
    )


# memberlist TestSuspicion_remainingSuspicionTime: (n, k, elapsed, min, max,
# remaining). Our remaining time is `deadline - now`, with now = start + elapsed.
REMAINING_CASES = [
    (0, 3, 0.0, 2.0, 30.0, 30.0),
    (1, 3, 2.0, 2.0, 30.0, 14.0),
    (2, 3, 3.0, 2.0, 30.0, 4.81),
    (3, 3, 4.0, 2.0, 30.0, -2.0),
    # memberlist goes on to n = 4 and 5 with k = 3; confirm() stops counting
    # at k, so those cases are covered by test_suspicion_stops_at_k.
]


@pytest.mark.parametrize(("n", "k", "elapsed", "minimum", "maximum", "remaining"), REMAINING_CASES)
def test_suspicion_remaining_time(
    n: int, k: int, elapsed: float, minimum: float, maximum: float, remaining: float
) -> None:
    start = 50.0
    s = Suspicion(accuser=ME, k=k, min_timeout=minimum, max_timeout=maximum, started_at=start)
    for i in range(n):
        assert s.confirm(NodeId(f"peer-{i}"))
    assert s.confirmations == n
    assert s.deadline - (start + elapsed) == pytest.approx(remaining, abs=1e-9)


# memberlist TestSuspicion_Timer: k = 3, min 0.5 s, max 2 s, original accuser
# "me". (confirm calls as (accuser, new info?), confirmations, total timeout).
TIMER_CASES = [
    ([], 0, 2.0),
    ([("me", False), ("foo", True)], 1, 1.25),
    ([("me", False), ("foo", True), ("foo", False), ("foo", False)], 1, 1.25),
    ([("me", False), ("foo", True), ("bar", True)], 2, 0.811),
    ([("me", False), ("foo", True), ("bar", True), ("baz", True)], 3, 0.5),
    ([("me", False), ("foo", True), ("bar", True), ("baz", True), ("zoo", False)], 3, 0.5),
]


@pytest.mark.parametrize(("calls", "confirmations", "timeout"), TIMER_CASES)
def test_suspicion_confirm_sequence(
    calls: list[tuple[str, bool]], confirmations: int, timeout: float
) -> None:
    s = make()
    for accuser, new_info in calls:
        assert s.confirm(NodeId(accuser)) is new_info, accuser
    assert s.confirmations == confirmations
    assert s.deadline == pytest.approx(100.0 + timeout, abs=1e-9)


def test_suspicion_deadline_after_each_confirm() -> None:
    # The deadline is recomputed from started_at after every confirmation
    # and only ever moves earlier.
    s = make(k=3, minimum=2.0, maximum=30.0, started_at=0.0)
    seen = [s.deadline]
    for accuser in ("a", "b", "c"):
        assert s.confirm(NodeId(accuser))
        seen.append(s.deadline)
    assert seen == pytest.approx([30.0, 16.0, 7.81, 2.0])


def test_suspicion_starts_at_max() -> None:
    s = make(k=2, minimum=8.0, maximum=48.0, started_at=10.0)
    assert s.confirmations == 0
    assert s.deadline == 58.0


@pytest.mark.parametrize("k", [0, -1])
def test_suspicion_without_enough_members_uses_min(k: int) -> None:
    # memberlist: "if there aren't enough nodes to confirm, use min".
    s = make(k=k, minimum=4.0, maximum=24.0, started_at=1.0)
    assert s.deadline == 5.0
    assert s.confirm(NodeId("other")) is False
    assert s.confirmations == 0
    assert s.deadline == 5.0


def test_suspicion_original_accuser_never_counts() -> None:
    # Our own suspicion gossiped back to us is not independent evidence.
    s = make()
    for _ in range(5):
        assert s.confirm(ME) is False
    assert s.confirmations == 0
    assert s.deadline == 102.0


def test_suspicion_stops_at_k() -> None:
    s = make(k=2, minimum=1.0, maximum=6.0, started_at=0.0)
    assert s.confirm(NodeId("a"))
    assert s.confirm(NodeId("b"))
    assert s.deadline == 1.0
    # memberlist TestSuspicion_remainingSuspicionTime n = 4, 5 > k: still min,
    # and confirm() reports no new information.
    assert s.confirm(NodeId("c")) is False
    assert s.confirm(NodeId("d")) is False
    assert s.confirmations == 2
    assert s.deadline == 1.0


def test_suspicion_deadline_matches_timing() -> None:
    cfg_n = 100
    k = timing.suspicion_confirmations_needed(4, cfg_n)
    minimum = timing.suspicion_min_timeout(4, cfg_n, 1.0)
    maximum = timing.suspicion_max_timeout(minimum, 6)
    s = Suspicion(accuser=ME, k=k, min_timeout=minimum, max_timeout=maximum, started_at=7.0)
    assert s.deadline == 7.0 + 48.0
    assert s.confirm(NodeId("a"))
    expected = 48.0 - 40.0 * math.log(2) / math.log(3)
    assert s.deadline == pytest.approx(7.0 + math.floor(expected * 1000) / 1000)
    assert s.deadline == 7.0 + timing.suspicion_timeout(1, k, minimum, maximum)
    assert s.confirm(NodeId("b"))
    assert s.deadline == 7.0 + 8.0


def test_suspicion_min_equals_max_confirm_is_still_news() -> None:
    # The deadline cannot move, but the confirmation is still counted
    # (the core re-gossips on True, like memberlist).
    s = make(k=3, minimum=5.0, maximum=5.0, started_at=0.0)
    assert s.confirm(NodeId("a")) is True
    assert s.deadline == 5.0


def test_suspicion_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Suspicion(ME, 3, 0.5, 2.0, 0.0)  # type: ignore[call-arg]
