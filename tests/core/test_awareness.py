"""Tests for meshd.core.awareness (memberlist awareness_test.go, made table-driven)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core import timing
from meshd.core.awareness import Awareness


def test_awareness_starts_healthy() -> None:
    a = Awareness(8)
    assert a.score == 0
    assert a.scale(1.0) == 1.0


# memberlist TestAwareness: (delta, score after, probe interval scale of 1 s).
AWARENESS_SEQUENCE = [
    (0, 0, 1.0),
    (-1, 0, 1.0),  # floor at 0
    (-10, 0, 1.0),
    (1, 1, 2.0),
    (-1, 0, 1.0),
    (10, 7, 8.0),  # rail at max_multiplier - 1
    (-1, 6, 7.0),
    (-1, 5, 6.0),
    (-1, 4, 5.0),
    (-1, 3, 4.0),
    (-1, 2, 3.0),
    (-1, 1, 2.0),
    (-1, 0, 1.0),
    (-1, 0, 1.0),
]


def test_awareness_delta_sequence() -> None:
    a = Awareness(8)
    for i, (delta, score, scaled) in enumerate(AWARENESS_SEQUENCE):
        assert a.apply_delta(delta) == score, f"step {i}"
        assert a.score == score, f"step {i}"
        assert a.scale(1.0) == scaled, f"step {i}"


# The deltas the core applies (see the module comment), on a fresh score of 2.
CORE_DELTA_CASES = [
    ("probe succeeded", -1, 1),
    ("failed probe, 3 nacks expected, 3 received", 3 - 3, 2),
    ("failed probe, 3 nacks expected, 1 received", 3 - 1, 4),
    ("failed probe, 3 nacks expected, none received", 3 - 0, 5),
    ("failed probe, no nack-capable helpers", 1, 3),
    ("refuted a suspicion about ourselves", 1, 3),
]


@pytest.mark.parametrize(("event", "delta", "expected"), CORE_DELTA_CASES)
def test_awareness_core_deltas(event: str, delta: int, expected: int) -> None:
    a = Awareness(8)
    a.apply_delta(2)
    assert a.apply_delta(delta) == expected, event


def test_awareness_max_multiplier_one_disables_lifeguard() -> None:
    a = Awareness(1)
    for delta in (1, 5, 100, -1, 3):
        assert a.apply_delta(delta) == 0
        assert a.scale(1.5) == 1.5


@pytest.mark.parametrize("bad", [0, -1])
def test_awareness_rejects_max_multiplier_below_one(bad: int) -> None:
    with pytest.raises(ValueError, match="max_multiplier"):
        Awareness(bad)


def test_awareness_scale_uses_timing_formula() -> None:
    a = Awareness(8)
    a.apply_delta(3)
    assert a.scale(0.2) == timing.scaled_interval(0.2, 3)


def test_awareness_has_identity_equality() -> None:
    # State machines compare by identity (attrs eq=False).
    assert Awareness(8) != Awareness(8)


@given(max_multiplier=st.integers(1, 16), deltas=st.lists(st.integers(-20, 20), max_size=50))
def test_awareness_score_stays_in_range(max_multiplier: int, deltas: list[int]) -> None:
    a = Awareness(max_multiplier)
    expected = 0
    for delta in deltas:
        expected = min(max(expected + delta, 0), max_multiplier - 1)
        assert a.apply_delta(delta) == expected
        assert 0 <= a.score <= max_multiplier - 1
