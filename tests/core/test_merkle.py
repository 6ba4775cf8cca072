"""Tests for meshd.core.merkle: roots follow contents only; the exchange finds exactly the diff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.merkle import (
    DEFAULT_DEPTH,
    EMPTY,
    MerkleTree,
    Summary,
    compare_entries,
    diff,
)
from meshd.core.ring import DEFAULT_PARTITION_BITS, Ring

# Properties hold at any depth; a small one keeps hypothesis fast.
DEPTH = 6

contents = st.dictionaries(st.binary(max_size=6), st.binary(min_size=1, max_size=4), max_size=40)


def differing_keys(a: MerkleTree, b: MerkleTree, stride: int) -> set[bytes]:
    found = diff(a.snapshot(), b.snapshot(), stride=stride)
    keys: set[bytes] = set()
    for bucket in found.buckets:
        changed = compare_entries(a.entries(bucket), b.entries(bucket))
        assert changed, f"bucket {bucket} reported but nothing in it differs"
        keys.update(changed)
    return keys


@given(contents, st.randoms(use_true_random=False), contents)
def test_merkle_equal_contents_equal_roots_in_any_order(
    data: dict[bytes, bytes], rnd: object, noise: dict[bytes, bytes]
) -> None:
    items = list(data.items())
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a = MerkleTree.build(items, DEPTH)
    b = MerkleTree(DEPTH)
    # Extra keys and overwritten digests that are later undone leave no trace.
    for key, digest in noise.items():
        b.put(key, digest + b"!")
    for key, digest in shuffled:
        b.put(key, digest)
    for key in noise:
        if key not in data:
            assert b.remove(key)
    assert a.root == b.root
    assert a.snapshot() == b.snapshot()
    assert len(a) == len(b) == len(data)
    assert (a.root == EMPTY) == (not data)


@given(contents, contents, st.integers(1, 7))
def test_merkle_diff_finds_exactly_the_differing_keys(
    ours: dict[bytes, bytes], theirs: dict[bytes, bytes], stride: int
) -> None:
    a, b = MerkleTree.build(ours.items(), DEPTH), MerkleTree.build(theirs.items(), DEPTH)
    expected = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differing_keys(a, b, stride) == expected
    assert differing_keys(b, a, stride) == expected
    assert (a.root == b.root) == (not expected)


@given(contents, st.data())
def test_merkle_incremental_updates_match_a_fresh_build(
    data: dict[bytes, bytes], draw: st.DataObject
) -> None:
    tree = MerkleTree(DEPTH)
    model: dict[bytes, bytes] = {}
    for key, digest in data.items():
        tree.put(key, digest)
        model[key] = digest
        tree.root  # noqa: B018 - interleave refreshes with updates
        if draw.draw(st.booleans()):
            assert tree.remove(key)
            del model[key]
    assert tree.root == MerkleTree.build(model.items(), DEPTH).root
    assert all(tree.get(k) == v for k, v in model.items())


@given(contents, st.sets(st.integers(0, (1 << DEPTH) - 1)))
def test_merkle_restricted_snapshot_sees_only_its_buckets(
    data: dict[bytes, bytes], buckets: set[int]
) -> None:
    tree = MerkleTree.build(data.items(), DEPTH)
    inside = MerkleTree.build(
        ((k, v) for k, v in data.items() if tree.bucket_of(k) in buckets), DEPTH
    )
    assert tree.snapshot(buckets) == inside.snapshot()
    assert tree.snapshot(range(1 << DEPTH)) == tree.snapshot()


def test_merkle_default_tree_compares_in_few_messages() -> None:
    entries = [(b"key-%d" % i, b"v1") for i in range(2000)]
    a = MerkleTree.build(entries)
    b = MerkleTree.build(entries)
    assert diff(a.snapshot(), b.snapshot()).messages == 1  # equal roots: done
    b.put(b"key-7", b"v2")
    found = diff(a.snapshot(), b.snapshot())
    assert found.buckets == (a.bucket_of(b"key-7"),)
    # Root, then depths 4, 8, 12, 16: 16 digests per message below the root.
    assert found.messages == 1 + DEFAULT_DEPTH // 4
    assert found.digests_sent <= 1 + 16 * (DEFAULT_DEPTH // 4)


def test_merkle_buckets_are_ring_partitions() -> None:
    # Same hash, same bits: a snapshot restricted to a replica pair's shared
    # partitions compares exactly the data both should hold.
    assert DEFAULT_DEPTH == DEFAULT_PARTITION_BITS
    ring = Ring.build(["a", "b", "c"], tokens_per_member=8)
    tree = MerkleTree()
    for key in (b"x", b"y", b"\x03opsk"):
        assert tree.bucket_of(key) == ring.partition_of(key)


def test_merkle_tree_navigation() -> None:
    tree = MerkleTree.build([(b"a", b"1"), (b"b", b"2")], depth=3)
    snap = tree.snapshot()
    assert snap.root == tree.root == snap.node(0, 0)
    assert [len(snap.level(d)) for d in range(4)] == [1, 2, 4, 8]
    left, right = snap.children(0, 0)
    assert (left, right) == (snap.node(1, 0), snap.node(1, 1))
    with pytest.raises(ValueError, match="leaves"):
        snap.children(3, 0)
    assert not tree.remove(b"missing")
    assert tree.entries(tree.bucket_of(b"a")) == {b"a": b"1"}  # (a and b: different buckets)
    assert tree.drop_bucket(tree.bucket_of(b"b")) == 1
    assert tree.drop_bucket(tree.bucket_of(b"b")) == 0
    assert tree.root == MerkleTree.build([(b"a", b"1")], depth=3).root
    assert len(tree) == 1


def test_merkle_summary_lists_non_empty_nodes_under_its_ancestors() -> None:
    tree = MerkleTree.build([(b"a", b"1")], depth=4)
    snap = tree.snapshot()
    leaf = tree.bucket_of(b"a")
    summary = snap.summary(4, under=[leaf >> 2], under_depth=2)
    assert summary == Summary(4, 2, (leaf >> 2,), ((leaf, snap.node(4, leaf)),))
    assert list(summary.covered()) == list(range((leaf >> 2) * 4, (leaf >> 2) * 4 + 4))
    assert MerkleTree(depth=4).snapshot().differing(summary) == (leaf,)
    with pytest.raises(ValueError, match="under_depth"):
        snap.summary(2, under_depth=3)


@pytest.mark.parametrize("depth", [-1, 25])
def test_merkle_depth_is_bounded(depth: int) -> None:
    with pytest.raises(ValueError, match="depth"):
        MerkleTree(depth)


def test_merkle_diff_rejects_mismatched_trees() -> None:
    with pytest.raises(ValueError, match="depth"):
        diff(MerkleTree(2).snapshot(), MerkleTree(3).snapshot())
    with pytest.raises(ValueError, match="stride"):
        diff(MerkleTree(2).snapshot(), MerkleTree(2).snapshot(), stride=0)
    with pytest.raises(ValueError, match="out of range"):
        MerkleTree(2).snapshot([4])
