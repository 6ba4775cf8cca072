"""Tests for meshd.core.ring: placement is a pure, monotone, balanced function of the members."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.ring import (
    DEFAULT_PARTITION_BITS,
    DEFAULT_REPLICAS,
    DEFAULT_TOKENS_PER_MEMBER,
    Ring,
    diff,
    key_hash,
    member_tokens,
)

# The properties hold for any parameters; small ones keep hypothesis fast.
SMALL = {"tokens_per_member": 16, "partition_bits": 8}

member_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
member_sets = st.sets(member_ids, min_size=1, max_size=9)
keys = st.binary(max_size=16)


def names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(1, n + 1)]


def max_over_mean(shares: dict[str, float]) -> float:
    return max(shares.values()) / statistics.mean(shares.values())


# ---------------------------------------------------------------- stability


def test_key_hash_is_pinned() -> None:
    # The placement contract: every node, platform and version agrees.
    assert key_hash(b"") == 0xE4A6A0577479B2B4
    assert key_hash(b"hello") == 0xA7B6EDA801E5347D


def test_member_tokens_are_pinned_and_prefix_stable() -> None:
    assert member_tokens("node-1", 2) == (0xAA46A1DAFA777EC9, 0x05C351D6DB570C41)
    assert member_tokens("node-1", 64)[:2] == member_tokens("node-1", 2)


def test_ring_placement_is_pinned() -> None:
    ring = Ring.build(names(5))
    assert (ring.tokens_per_member, ring.partition_bits, ring.replicas) == (
        DEFAULT_TOKENS_PER_MEMBER,
        DEFAULT_PARTITION_BITS,
        DEFAULT_REPLICAS,
    )
    assert ring.partition_of(b"hello") == 42934 == key_hash(b"hello") >> 48
    assert ring.owners(b"hello") == ("node-2", "node-5", "node-4")
    assert ring.fingerprint == "c0b51cec6ee96b2af87fd50d2171c25f"


# ---------------------------------------------------------------- properties


@given(member_sets, st.integers(1, 5), st.lists(keys, max_size=20))
def test_ring_preference_lists_are_distinct_members(
    members: set[str], replicas: int, ks: list[bytes]
) -> None:
    ring = Ring.build(members, replicas=replicas, **SMALL)
    want = min(replicas, len(members))
    for p in ring.partitions():
        plist = ring.preference_list(p)
        assert len(plist) == want
        assert len(set(plist)) == want
        assert set(plist) <= members
    for key in ks:
        assert ring.owners(key) == ring.preference_list(ring.partition_of(key))


@given(st.lists(member_ids, min_size=1, max_size=9), st.randoms(use_true_random=False))
def test_ring_same_members_any_order_same_ring(members: list[str], rnd: object) -> None:
    shuffled = members * 2
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Ring.build(members, **SMALL), Ring.build(shuffled, **SMALL)
    assert a == b
    assert a.fingerprint == b.fingerprint
    assert [a.preference_list(p) for p in a.partitions()] == [
        b.preference_list(p) for p in b.partitions()
    ]


def _only_joiner_entered(before: tuple[str, ...], after: tuple[str, ...], joiner: str) -> bool:
    """after == before with `joiner` inserted somewhere (and the last member pushed out)."""
    if joiner not in after:
        return after == before
    return tuple(m for m in after if m != joiner) == before[: len(after) - 1]


@given(member_sets, member_ids, st.integers(1, 4))
def test_ring_join_moves_keys_only_to_the_new_member(
    members: set[str], joiner: str, replicas: int
) -> None:
    members.discard(joiner)
    if not members:
        return
    before = Ring.build(members, replicas=replicas, **SMALL)
    after = Ring.build(members | {joiner}, replicas=replicas, **SMALL)
    for p in before.partitions():
        assert _only_joiner_entered(before.preference_list(p), after.preference_list(p), joiner), p
    change = diff(before, after)
    for c in change.changes:
        assert c.gained == (joiner,)
        assert len(c.lost) <= 1
    # Keys that moved their primary moved it to the joiner.
    assert all(c.after[0] == joiner for c in change.changes if c.primary_changed)
    assert change.gained_by(joiner) == tuple(c.partition for c in change.changes)


@given(member_sets, st.integers(1, 4))
def test_ring_leave_moves_only_the_leavers_keys(members: set[str], replicas: int) -> None:
    if len(members) < 2:
        return
    leaver = sorted(members)[0]
    before = Ring.build(members, replicas=replicas, **SMALL)
    after = Ring.build(members - {leaver}, replicas=replicas, **SMALL)
    # A leave is a join seen backwards.
    for p in before.partitions():
        assert _only_joiner_entered(after.preference_list(p), before.preference_list(p), leaver)
    assert all(c.lost == (leaver,) for c in diff(before, after).changes)


@given(member_sets, keys, st.integers(1, 12))
def test_ring_owners_longer_than_precomputed_walk_the_circle(
    members: set[str], key: bytes, n: int
) -> None:
    ring = Ring.build(members, replicas=2, **SMALL)
    longer = Ring.build(members, replicas=12, **SMALL)
    assert ring.owners(key, n) == longer.owners(key, n) == longer.owners(key)[:n]
    assert ring.owners(key, n)[: min(n, 2)] == ring.owners(key)[:n]


# ---------------------------------------------------------------- balance (defaults)


@pytest.mark.parametrize(("n", "bound"), [(10, 1.10), (100, 1.15)])
def test_ring_ownership_is_balanced(n: int, bound: float) -> None:
    ring = Ring.build(names(n))
    primary = ring.ownership()
    assert sum(primary.values()) == pytest.approx(1.0)
    assert max_over_mean(primary) <= bound
    replica = ring.ownership(DEFAULT_REPLICAS)
    assert sum(replica.values()) == pytest.approx(DEFAULT_REPLICAS)
    assert max_over_mean(replica) <= bound


def test_ring_join_moves_about_one_share() -> None:
    change = diff(Ring.build(names(10)), Ring.build(names(11)))
    ideal = 1 / 11
    assert change.moved_fraction <= 1.1 * ideal
    # Every partition the joiner now replicates is one copy to hand off.
    assert change.replica_moves == len(Ring.build(names(11)).partitions_of("node-11"))


# ---------------------------------------------------------------- API edges


def test_ring_small_mesh_returns_every_member() -> None:
    ring = Ring.build(["a", "b"], **SMALL)
    assert sorted(ring.owners(b"k")) == ["a", "b"]
    assert sorted(ring.owners(b"k", 5)) == ["a", "b"]
    assert ring.owners(b"k", 1) == ring.owners(b"k")[:1]


def test_ring_without_members() -> None:
    ring = Ring.build([], **SMALL)
    assert ring.owners(b"k") == ()
    assert ring.owners(b"k", 3) == ()
    assert ring.ownership() == {}
    assert ring.partitions_of("a") == ()


def test_ring_partitions_of_matches_ownership() -> None:
    ring = Ring.build(names(4), **SMALL)
    for member, share in ring.ownership(2).items():
        assert len(ring.partitions_of(member, 2)) == share * ring.partition_count
    assert len(ring.partitions()) == ring.partition_count == 256


@pytest.mark.parametrize(
    "kwargs",
    [{"replicas": 0}, {"tokens_per_member": 0}, {"partition_bits": 0}, {"partition_bits": 25}],
)
def test_ring_build_rejects_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Ring.build(["a"], **kwargs)


@pytest.mark.parametrize("member", ["", 7, b"a"])
def test_ring_build_rejects_bad_member_ids(member: object) -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        Ring.build(["a", member], **SMALL)  # type: ignore[list-item]


def test_ring_lookup_rejects_bad_arguments() -> None:
    ring = Ring.build(["a", "b"], **SMALL)
    with pytest.raises(ValueError, match="n must be"):
        ring.owners(b"k", 0)
    with pytest.raises(ValueError, match="out of range"):
        ring.preference_list(256)


def test_diff_of_equal_rings_is_empty_and_needs_matching_parameters() -> None:
    ring = Ring.build(names(3), **SMALL)
    assert diff(ring, Ring.build(reversed(names(3)), **SMALL)).changes == ()
    with pytest.raises(ValueError, match="cannot be compared"):
        diff(ring, Ring.build(names(3), replicas=2, **SMALL))


def test_diff_reports_gains_and_losses_per_member() -> None:
    before = Ring.build(names(3), **SMALL)
    after = Ring.build(names(4), **SMALL)
    change = diff(before, after)
    assert change.gained_by("node-4") == after.partitions_of("node-4")
    lost = {p for m in names(3) for p in change.lost_by(m)}
    assert lost == set(after.partitions_of("node-4"))  # n = 3 of 4: someone always steps out
    assert change.moved_fraction == len(after.partitions_of("node-4", 1)) / after.partition_count
