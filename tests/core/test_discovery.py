"""Discovery sources and the member snapshot."""

from __future__ import annotations

import pytest

from meshd.core.discovery import BadSnapshot, Snapshot, SnapshotEntry, Source, SourceBook
from meshd.core.types import Member, MemberState, NodeId

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)
C = ("10.0.0.3", 7946)


def member(name: str, address: tuple[str, int], state: MemberState) -> Member:
    return Member(NodeId(name), address, 1, state)


def test_first_direct_source_wins_and_strangers_came_by_gossip() -> None:
    book = SourceBook()
    book.expect(A, Source.MDNS)
    book.expect(A, Source.SEED)  # the same address found again: mdns was first
    assert book.joined(NodeId("a"), A) is Source.MDNS
    book.named(NodeId("a"), Source.SNAPSHOT)
    assert book.source(NodeId("a")) is Source.MDNS
    assert book.joined(NodeId("b"), B) is Source.GOSSIP
    book.named(NodeId("c"), Source.MDNS)
    assert book.counts() == {"mdns": 2, "seed": 0, "snapshot": 0, "join": 0, "gossip": 1}


def test_gossip_gives_way_to_a_direct_source() -> None:
    book = SourceBook()
    assert book.joined(NodeId("b"), B) is Source.GOSSIP  # b joined us first
    book.named(NodeId("b"), Source.MDNS)  # then its advertisement arrived
    assert book.source(NodeId("b")) is Source.MDNS
    # Or we learned of it by gossip, then joined its address as a seed.
    assert book.joined(NodeId("c"), C) is Source.GOSSIP
    book.expect(C, Source.SEED)
    assert book.joined(NodeId("c"), C) is Source.SEED


def test_a_reaped_member_is_new_when_it_returns() -> None:
    book = SourceBook()
    book.joined(NodeId("a"), A)
    book.forget(NodeId("a"))
    book.expect(A, Source.SNAPSHOT)
    assert book.joined(NodeId("a"), A) is Source.SNAPSHOT


def test_snapshot_records_last_alive_and_keeps_reaped_members() -> None:
    first = Snapshot.of(
        [
            member("self", C, MemberState.ALIVE),
            member("a", A, MemberState.ALIVE),
            member("b", B, MemberState.SUSPECT),
        ],
        self_id=NodeId("self"),
        now_wall=1000.0,
    )
    assert [(e.node_id, e.last_alive) for e in first.entries] == [("a", 1000.0), ("b", 1000.0)]
    # b died at 1010 and was reaped by 5000: its entry stays with its old time.
    later = Snapshot.of(
        [member("a", A, MemberState.LEFT)],
        self_id=NodeId("self"),
        now_wall=5000.0,
        previous=first,
    )
    assert {e.node_id: (e.state, e.last_alive) for e in later.entries} == {
        "a": (MemberState.LEFT, 1000.0),
        "b": (MemberState.SUSPECT, 1000.0),
    }
    # Too old: forgotten.
    pruned = Snapshot.of([], self_id=NodeId("self"), now_wall=5000.0, previous=first, keep_for=60.0)
    assert pruned.entries == ()


def test_rejoin_candidates_most_recent_first_and_not_too_old() -> None:
    snap = Snapshot(
        (
            SnapshotEntry(NodeId("a"), A, MemberState.LEFT, 900.0),
            SnapshotEntry(NodeId("b"), B, MemberState.ALIVE, 990.0),
            SnapshotEntry(NodeId("c"), C, MemberState.DEAD, 10.0),
            SnapshotEntry(NodeId("never"), ("10.0.0.9", 1), MemberState.DEAD, 0.0),
        )
    )
    assert snap.rejoin_candidates(now_wall=1000.0, max_age=500.0) == [B, A]
    assert snap.rejoin_candidates(now_wall=1000.0, max_age=500.0, exclude=[B]) == [A]


def test_snapshot_json_round_trip() -> None:
    snap = Snapshot(
        (
            SnapshotEntry(NodeId("a"), A, MemberState.LEFT, 900.5),
            SnapshotEntry(NodeId("b"), ("::1", 7000), MemberState.ALIVE, 990.0),
        )
    )
    assert Snapshot.from_json(snap.to_json()) == snap


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"v": 2, "members": []},
        {"v": 1},
        {"v": 1, "members": [{"id": "a"}]},
        {"v": 1, "members": [{"id": "a", "host": "h", "port": 0, "state": "alive", "last_alive": 1}]},
        {"v": 1, "members": [{"id": "a", "host": "h", "port": 1, "state": "zombie", "last_alive": 1}]},
        {"v": 1, "members": ["x"]},
    ],
)
def test_bad_snapshots_are_rejected(document: object) -> None:
    with pytest.raises(BadSnapshot):
        Snapshot.from_json(document)
