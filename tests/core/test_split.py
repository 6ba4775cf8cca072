"""Split suspicion: a burst of failures, not one crash."""

from __future__ import annotations

import pytest

from meshd.core.split import SplitDetector
from meshd.core.types import NodeId

C, D, E = NodeId("c"), NodeId("d"), NodeId("e")


def test_one_crash_is_not_a_split() -> None:
    det = SplitDetector(window=24.0)
    det.failed(C, 100.0)
    assert det.suspicion(live_members=3) is None


def test_half_the_mesh_failing_together_is_suspected() -> None:
    det = SplitDetector(window=24.0)
    det.failed(C, 100.0)
    det.failed(D, 103.5)
    found = det.suspicion(live_members=2)
    assert found is not None
    assert found.failed == (C, D)
    assert found.known == 4
    assert (found.first_failure, found.last_failure) == (100.0, 103.5)


def test_failures_far_apart_are_separate_incidents() -> None:
    det = SplitDetector(window=24.0)
    det.failed(C, 100.0)
    det.failed(D, 500.0)
    assert det.suspicion(live_members=2) is None


def test_two_crashes_in_a_large_mesh_are_not_a_split() -> None:
    det = SplitDetector(window=24.0)
    det.failed(C, 100.0)
    det.failed(D, 101.0)
    assert det.suspicion(live_members=20) is None


def test_members_coming_back_clear_the_suspicion() -> None:
    det = SplitDetector(window=24.0)
    for n, t in ((C, 100.0), (D, 101.0), (E, 102.0)):
        det.failed(n, t)
    assert det.suspicion(live_members=3) is not None
    det.cleared(C)
    det.cleared(D)
    assert det.suspicion(live_members=5) is None


def test_the_largest_burst_is_reported() -> None:
    det = SplitDetector(window=10.0)
    det.failed(C, 0.0)
    det.failed(D, 100.0)
    det.failed(E, 105.0)
    found = det.suspicion(live_members=2)
    assert found is not None and found.failed == (D, E)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SplitDetector(window=0)
    with pytest.raises(ValueError):
        SplitDetector(window=1, fraction=0)
