"""Table-driven tests of the membership transition rules (membership.py)."""

from __future__ import annotations

import pytest

from meshd.core.membership import MemberEntry, MemberTable, Outcome, SuspicionParams
from meshd.core.messages import Alive, Dead, Leave, Suspect
from meshd.core.types import MemberState, NodeId, ProtocolRange

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
X = NodeId("x")
HOME = ("10.0.0.9", 7946)
ELSEWHERE = ("10.0.0.10", 7946)
PARAMS = SuspicionParams(k=2, min_timeout=4.0, max_timeout=24.0)


def table_with(state: MemberState, incarnation: int) -> MemberTable:
    t = MemberTable()
    t.add(MemberEntry(X, HOME, incarnation, A, b"m", ProtocolRange(), 0.0))
    if state is S:
        assert t.apply_suspect(Suspect(incarnation, X, NodeId("acc")), 0.0, PARAMS) is Outcome.SUSPECTED
    elif state is D:
        assert t.apply_dead(Dead(incarnation, X, NodeId("acc")), 0.0) is Outcome.FAILED
    elif state is L:
        assert t.apply_leave(Leave(incarnation, X), 0.0) is Outcome.LEFT
    return t


def apply(t: MemberTable, msg: object) -> Outcome:
    if isinstance(msg, Alive):
        return t.apply_alive(msg, 1.0)
    if isinstance(msg, Suspect):
        return t.apply_suspect(msg, 1.0, PARAMS)
    if isinstance(msg, Dead):
        return t.apply_dead(msg, 1.0)
    assert isinstance(msg, Leave)
    return t.apply_leave(msg, 1.0)


# (state, incarnation) before, message, expected outcome, (state, incarnation) after
CASES = [
    # alive: needs a higher incarnation to change anything (Rule 2)
    ((A, 3), Alive(3, X, HOME, b"m"), Outcome.IGNORED, (A, 3)),
    ((A, 3), Alive(2, X, HOME, b"m"), Outcome.IGNORED, (A, 3)),
    ((A, 3), Alive(4, X, HOME, b"m"), Outcome.REFRESHED, (A, 4)),
    ((A, 3), Alive(4, X, HOME, b"new"), Outcome.UPDATED, (A, 4)),
    ((S, 3), Alive(3, X, HOME, b"m"), Outcome.IGNORED, (S, 3)),
    ((S, 3), Alive(4, X, HOME, b"m"), Outcome.RECOVERED, (A, 4)),
    ((D, 3), Alive(3, X, HOME, b"m"), Outcome.IGNORED, (D, 3)),
    ((D, 3), Alive(4, X, HOME, b"m"), Outcome.REJOINED, (A, 4)),
    ((L, 3), Alive(4, X, HOME, b"m"), Outcome.REJOINED, (A, 4)),
    # Rule 3: a live member keeps its address; a dead one may come back elsewhere
    ((A, 3), Alive(9, X, ELSEWHERE, b"m"), Outcome.CONFLICT, (A, 3)),
    ((S, 3), Alive(9, X, ELSEWHERE, b"m"), Outcome.CONFLICT, (S, 3)),
    ((D, 3), Alive(0, X, ELSEWHERE, b"m"), Outcome.REJOINED, (A, 3)),
    # suspect: overrides alive at an equal or higher incarnation
    ((A, 3), Suspect(3, X, NodeId("y")), Outcome.SUSPECTED, (S, 3)),
    ((A, 3), Suspect(5, X, NodeId("y")), Outcome.SUSPECTED, (S, 5)),
    ((A, 3), Suspect(2, X, NodeId("y")), Outcome.IGNORED, (A, 3)),
    ((S, 3), Suspect(3, X, NodeId("y")), Outcome.CONFIRMED, (S, 3)),
    ((S, 3), Suspect(3, X, NodeId("acc")), Outcome.IGNORED, (S, 3)),
    ((D, 3), Suspect(4, X, NodeId("y")), Outcome.IGNORED, (D, 3)),
    ((L, 3), Suspect(4, X, NodeId("y")), Outcome.IGNORED, (L, 3)),
    # dead: overrides alive and suspect at an equal or higher incarnation
    ((A, 3), Dead(3, X, NodeId("y")), Outcome.FAILED, (D, 3)),
    ((S, 3), Dead(3, X, NodeId("y")), Outcome.FAILED, (D, 3)),
    ((A, 3), Dead(2, X, NodeId("y")), Outcome.IGNORED, (A, 3)),
    ((D, 3), Dead(4, X, NodeId("y")), Outcome.IGNORED, (D, 3)),
    ((L, 3), Dead(4, X, NodeId("y")), Outcome.IGNORED, (L, 3)),
    # leave
    ((A, 3), Leave(3, X), Outcome.LEFT, (L, 3)),
    ((S, 3), Leave(3, X), Outcome.LEFT, (L, 3)),
    ((A, 3), Leave(2, X), Outcome.IGNORED, (A, 3)),
    ((D, 3), Leave(3, X), Outcome.IGNORED, (D, 3)),
]


@pytest.mark.parametrize(("before", "msg", "outcome", "after"), CASES)
def test_membership_transitions(
    before: tuple[MemberState, int], msg: object, outcome: Outcome, after: tuple[MemberState, int]
) -> None:
    t = table_with(*before)
    assert apply(t, msg) is outcome
    e = t.get(X)
    assert e is not None
    assert (e.state, e.incarnation) == after
    # The suspects index holds exactly the members with a running timer.
    assert (X in t.suspects) == (e.state is S)
    assert (e.suspicion is not None) == (e.state is S)


@pytest.mark.parametrize(
    "msg",
    [Suspect(1, X, NodeId("y")), Dead(1, X, NodeId("y")), Leave(1, X)],
)
def test_membership_unknown_member_ignored(msg: object) -> None:
    t = MemberTable()
    assert apply(t, msg) is Outcome.IGNORED
    assert len(t) == 0


def test_membership_alive_adds_unknown_member() -> None:
    t = MemberTable()
    assert t.apply_alive(Alive(7, X, HOME, b"tags"), 2.5) is Outcome.JOINED
    m = t.get(X)
    assert m is not None
    assert m.snapshot().state is A and m.incarnation == 7 and m.meta == b"tags"
    assert m.state_changed_at == 2.5


def test_membership_state_changed_at_moves_only_on_state_change() -> None:
    t = table_with(A, 1)
    assert t.apply_alive(Alive(2, X, HOME, b"m"), 5.0) is Outcome.REFRESHED
    assert t.get(X).state_changed_at == 0.0  # type: ignore[union-attr]
    t.apply_suspect(Suspect(2, X, NodeId("y")), 6.0, PARAMS)
    assert t.get(X).state_changed_at == 6.0  # type: ignore[union-attr]
