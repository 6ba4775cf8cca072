"""Consistency levels, quorum tallies and the node's ring view (meshd/core/replication.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.hlc import Timestamp
from meshd.core.replication import (
    Consistency,
    ReadTally,
    RingView,
    WriteTally,
    check_namespace,
    parse_consistency,
    required,
)
from meshd.core.ring import Ring
from meshd.core.versioned import Record

ONE, QUORUM, ALL = Consistency.ONE, Consistency.QUORUM, Consistency.ALL
PLIST = ("a", "b", "c")


def rec(value: bytes | None, wall: int) -> Record:
    return Record("default", b"k", value, Timestamp.of(wall), "w")


@pytest.mark.parametrize(
    ("level", "n", "needed"),
    [
        (ONE, 3, 1),
        (QUORUM, 1, 1),
        (QUORUM, 2, 2),
        (QUORUM, 3, 2),
        (QUORUM, 4, 3),
        (QUORUM, 5, 3),
        (ALL, 3, 3),
        (ALL, 1, 1),
        (QUORUM, 0, 1),
    ],
)
def test_required_table(level: Consistency, n: int, needed: int) -> None:
    assert required(level, n) == needed


def test_parse_consistency_accepts_names_any_case_and_refuses_others() -> None:
    assert parse_consistency("QUORUM") is QUORUM
    assert parse_consistency(ONE) is ONE
    for bad in ("two", "", None, 3):
        with pytest.raises(ValueError, match="consistency must be one, quorum or all"):
            parse_consistency(bad)


@pytest.mark.parametrize("name", ["default", "plugin.web-cache", "a", "x:y_z", "A" * 64])
def test_check_namespace_accepts(name: str) -> None:
    assert check_namespace(name) == name


@pytest.mark.parametrize("name", ["", "-x", "has space", "a/b", "é", "A" * 65, None, b"x"])
def test_check_namespace_refuses(name: object) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        check_namespace(name)


# ---------------------------------------------------------------------------
# WriteTally


def test_write_tally_quorum_met_by_two_acks() -> None:
    t = WriteTally(QUORUM, PLIST)
    t.ack("a")
    assert (t.succeeded, t.decided) == (False, False)
    t.fail("b", "timeout")
    assert not t.decided
    t.ack("c")
    assert (t.succeeded, t.decided, t.acks) == (True, True, 2)


def test_write_tally_decides_failure_as_soon_as_it_is_impossible() -> None:
    t = WriteTally(QUORUM, PLIST)
    t.fail("b", "not alive")
    assert not t.decided
    t.fail("c", "unreachable")
    assert t.decided
    assert not t.succeeded
    assert t.error("no answer yet") == (
        "quorum needs 2 of 3 replicas, 0 answered (b: not alive, c: unreachable, a: no answer yet)"
    )


def test_write_tally_error_matches_the_documented_form() -> None:
    t = WriteTally(QUORUM, ("node-2", "node-3", "node-4"))
    t.ack("node-2")
    t.fail("node-4", "not alive")
    assert t.error() == (
        "quorum needs 2 of 3 replicas, 1 answered (node-4: not alive, node-3: timeout)"
    )


def test_write_tally_hints_count_only_when_sloppy() -> None:
    strict = WriteTally(QUORUM, PLIST)
    sloppy = WriteTally(QUORUM, PLIST, sloppy=True)
    for t in (strict, sloppy):
        t.ack("a")
        t.fail("b", "not alive")
        t.hint_started("b")
    # While the hint is on its way, a sloppy quorum is still possible.
    strict.fail("c", "not alive")
    sloppy.fail("c", "not alive")
    assert strict.decided
    assert not strict.succeeded
    assert not sloppy.decided
    sloppy.hint_stored("b", "d")
    assert sloppy.succeeded
    assert sloppy.hinted == {"b": "d"}
    strict.hint_stored("b", "d")
    assert not strict.succeeded


def test_write_tally_failed_hint_ends_a_sloppy_wait() -> None:
    t = WriteTally(QUORUM, PLIST, sloppy=True)
    t.ack("a")
    for m in ("b", "c"):
        t.fail(m, "timeout")
        t.hint_started(m)
    assert not t.decided
    t.hint_failed("b")
    t.hint_failed("c")
    assert t.decided
    assert not t.succeeded
    assert "1 answered" in t.error()


def test_write_tally_late_ack_after_failure_counts_once() -> None:
    t = WriteTally(ALL, PLIST)
    t.ack("a")
    t.ack("a")
    t.fail("a", "timeout")  # an ack is not taken back
    assert t.acked == ["a"]
    assert "a" not in t.failed


@given(
    outcomes=st.lists(st.sampled_from(["ack", "fail"]), min_size=3, max_size=3),
    level=st.sampled_from(list(Consistency)),
)
def test_write_tally_success_iff_enough_acks(outcomes: list[str], level: Consistency) -> None:
    t = WriteTally(level, PLIST)
    for member, outcome in zip(PLIST, outcomes, strict=True):
        if outcome == "ack":
            t.ack(member)
        else:
            t.fail(member, "x")
    assert t.decided
    assert t.succeeded == (outcomes.count("ack") >= required(level, 3))


# ---------------------------------------------------------------------------
# ReadTally


def test_read_tally_answers_newest_and_names_stale_members() -> None:
    t = ReadTally(QUORUM, PLIST)
    t.answer("a", rec(b"old", 1))
    t.answer("b", rec(b"new", 2))
    assert t.decided
    plan = t.plan()
    assert plan.value == b"new"
    assert plan.stale == ("a",)


def test_read_tally_not_found_waits_for_pending_replicas() -> None:
    # Rule 4: a new owner without the data answers first with nothing.
    t = ReadTally(ONE, PLIST)
    t.answer("a", None)
    assert t.can_answer
    assert not t.decided
    t.answer("b", rec(b"v", 1))
    assert t.decided
    assert t.plan().value == b"v"


def test_read_tally_not_found_everywhere_is_an_answer() -> None:
    t = ReadTally(ONE, PLIST)
    for m in PLIST:
        t.answer(m, None)
    assert t.decided
    assert t.plan().winner is None
    assert not t.found


def test_read_tally_tombstone_counts_as_found() -> None:
    t = ReadTally(ONE, PLIST)
    t.answer("a", rec(None, 5))
    assert t.decided
    assert t.found
    assert t.plan().value is None


def test_read_tally_extras_are_waited_for_resolve_and_never_repaired() -> None:
    t = ReadTally(QUORUM, PLIST, extras=("old",))
    t.answer("a", None)
    t.answer("b", None)
    assert t.can_answer
    assert not t.decided
    t.answer("old", rec(b"moving", 3))
    assert t.decided
    plan = t.plan()
    assert plan.value == b"moving"
    assert plan.stale == ("a", "b")


def test_read_tally_failure_is_decided_and_explained() -> None:
    t = ReadTally(QUORUM, PLIST)
    t.fail("a", "timeout")
    t.fail("b", "not alive")
    assert t.decided
    assert not t.can_answer
    assert t.error("no answer yet") == (
        "quorum needs 2 of 3 replicas, 0 answered (a: timeout, b: not alive, c: no answer yet)"
    )


# ---------------------------------------------------------------------------
# RingView


def test_ring_view_sets_match_the_ring() -> None:
    members = [f"node-{i}" for i in range(1, 6)]
    view = RingView.build(members, "node-2", partition_bits=10)
    ring = Ring.build(members, partition_bits=10)
    assert view.ring == ring
    assert view.owned == frozenset(ring.partitions_of("node-2"))
    for peer in members:
        if peer == "node-2":
            assert peer not in view.shared
            continue
        both = [
            p
            for p in ring.partitions()
            if "node-2" in ring.preference_list(p) and peer in ring.preference_list(p)
        ]
        assert list(view.shared[peer]) == both
    assert view.primary == pytest.approx(ring.ownership(1))
    assert view.effective == pytest.approx(ring.ownership(3))
    assert sum(view.effective.values()) == pytest.approx(3.0)


def test_ring_view_of_a_node_outside_the_ring_owns_nothing() -> None:
    view = RingView.build(["a", "b"], "z", partition_bits=8)
    assert view.owned == frozenset()
    assert dict(view.shared) == {}


@settings(max_examples=20, deadline=None)
@given(st.sets(st.sampled_from([f"n{i}" for i in range(12)]), min_size=1, max_size=8))
def test_ring_view_is_the_same_on_every_node(members: set[str]) -> None:
    # Rule 1 of ring.py through the view: equal member sets, equal placement.
    views = [
        RingView.build(sorted(members, reverse=r), m, partition_bits=8)
        for m in members
        for r in (False, True)
    ]
    assert len({v.ring.fingerprint for v in views}) == 1
    for v in views:
        for p in v.owned:
            assert v.self_id in v.ring.preference_list(p)


def test_ring_view_under_replicated_counts_lists_with_a_suspect() -> None:
    members = [f"node-{i}" for i in range(1, 6)]
    view = RingView.build(members, "node-1", partition_bits=10)
    assert view.under_replicated([]) == 0
    assert view.under_replicated(["stranger"]) == 0
    expected = sum(1 for p in view.ring.partitions() if "node-3" in view.ring.preference_list(p))
    assert view.under_replicated(["node-3"]) == expected
