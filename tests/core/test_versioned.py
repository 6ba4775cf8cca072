"""Tests for meshd.core.versioned: last writer wins, the same way on every replica."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.hlc import Timestamp, Version
from meshd.core.versioned import (
    DEFAULT_TOMBSTONE_GRACE_MS,
    Record,
    RepairPlan,
    check_tombstone_grace,
    newer,
    placement_key,
    plan_read_repair,
    resolve,
    tombstone_collectable,
)

T0 = 1_700_000_000_000


def rec(
    value: bytes | None, wall: int = T0, logical: int = 0, writer: str = "a", key: bytes = b"k"
) -> Record:
    return Record("ops", key, value, Timestamp.of(wall, logical), writer)


# (a, b, a wins?) — Rule 3's order, one row per tie-break level.
NEWER_CASES = [
    (rec(b"x", T0 + 1), rec(b"y", T0), True),  # later wall time
    (rec(b"x", T0, 1), rec(b"y", T0, 0), True),  # later logical counter
    (rec(b"x", T0, writer="b"), rec(b"y", T0, writer="a"), True),  # same timestamp: writer id
    (rec(b"x", T0 - 1, writer="z"), rec(b"y", T0, writer="a"), False),  # timestamp before writer
    (rec(None, T0), rec(b"y", T0), True),  # same version: the tombstone wins
    (rec(b"b", T0), rec(b"a", T0), True),  # same version, both values: larger bytes
    (rec(b"a", T0), rec(b"a", T0), False),  # identical: neither is newer
]


@pytest.mark.parametrize(("a", "b", "a_wins"), NEWER_CASES)
def test_newer(a: Record, b: Record, a_wins: bool) -> None:
    assert newer(a, b) is a_wins
    if a != b:
        assert newer(b, a) is not a_wins


records = st.builds(
    rec,
    st.one_of(st.none(), st.binary(max_size=4)),
    st.integers(T0, T0 + 3),
    st.integers(0, 2),
    st.sampled_from(["a", "b", "c"]),
)


@given(st.lists(records, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_resolve_does_not_depend_on_arrival_order(rs: list[Record], rnd: object) -> None:
    shuffled = list(rs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    winner = resolve(rs)
    assert winner == resolve(shuffled) == resolve(reversed(rs))
    assert winner is not None
    assert all(not newer(r, winner) for r in rs)


def test_resolve_edges() -> None:
    assert resolve([]) is None
    with pytest.raises(ValueError, match="different keys"):
        resolve([rec(b"x"), rec(b"x", key=b"other")])
    with pytest.raises(ValueError, match="different keys"):
        newer(rec(b"x"), Record("other-ns", b"k", b"x", Timestamp.of(T0), "a"))


def test_record_version_and_tombstone() -> None:
    r = Record.tombstone("ops", b"k", Timestamp.of(T0, 2), "n1")
    assert r.is_tombstone
    assert r.value is None
    assert r.version == Version(Timestamp.of(T0, 2), "n1")
    assert "tombstone" in repr(r)
    assert not rec(b"").is_tombstone  # an empty value is a value


def test_record_digest_covers_version_and_value() -> None:
    base = rec(b"v")
    assert base.digest() == rec(b"v").digest()
    assert len(base.digest()) == 16
    others = [rec(b"w"), rec(None), rec(b""), rec(b"v", logical=1), rec(b"v", writer="b")]
    assert len({base.digest(), *(o.digest() for o in others)}) == 1 + len(others)


def test_placement_key_separates_namespaces() -> None:
    assert placement_key("a", b"bc") != placement_key("ab", b"c")
    assert placement_key("ops", b"k") == b"\x03opsk" == rec(b"x").placement_key
    for bad in ("", "x" * 256):
        with pytest.raises(ValueError, match="namespace"):
            placement_key(bad, b"k")
    with pytest.raises(ValueError, match="namespace"):
        Record("", b"k", b"v", Timestamp.of(T0), "a")


OLD, NEW = rec(b"old", T0), rec(b"new", T0 + 5)

# answers -> (winner, stale replicas)
REPAIR_CASES = [
    ({}, None, ()),
    ({"r1": None, "r2": None}, None, ()),
    ({"r1": NEW, "r2": NEW, "r3": NEW}, NEW, ()),
    ({"r1": NEW, "r2": OLD, "r3": None}, NEW, ("r2", "r3")),
    ({"r1": OLD, "r2": NEW}, NEW, ("r1",)),
    # A newer tombstone is repaired like a value (Rule 1).
    ({"r1": rec(None, T0 + 9), "r2": NEW, "r3": None}, rec(None, T0 + 9), ("r2", "r3")),
]


@pytest.mark.parametrize(("answers", "winner", "stale"), REPAIR_CASES)
def test_plan_read_repair(
    answers: dict[str, Record | None], winner: Record | None, stale: tuple[str, ...]
) -> None:
    plan = plan_read_repair(answers)
    assert plan == RepairPlan(winner, stale)
    assert plan.value == (None if winner is None else winner.value)


def test_tombstone_collectable_after_grace_only() -> None:
    grace = 1000
    tomb = rec(None, T0)
    assert not tombstone_collectable(tomb, now_ms=T0 + grace - 1, grace_ms=grace)
    assert tombstone_collectable(tomb, now_ms=T0 + grace, grace_ms=grace)
    # Values are never collected, however old.
    assert not tombstone_collectable(rec(b"v", T0), now_ms=T0 + 10 * grace, grace_ms=grace)


def test_check_tombstone_grace() -> None:
    three_hours = 3 * 3600 * 1000
    check_tombstone_grace(DEFAULT_TOMBSTONE_GRACE_MS, three_hours)
    with pytest.raises(ValueError, match="longer than the hint window"):
        check_tombstone_grace(three_hours, three_hours)
    with pytest.raises(ValueError, match=">= 0"):
        check_tombstone_grace(1, -1)
