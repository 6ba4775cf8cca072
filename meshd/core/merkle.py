"""Merkle trees over (key, version digest): find what two replicas disagree on in a few messages."""

# Strategy
#
# Anti-entropy (Dynamo §4.7, Cassandra repair, Riak AAE) compares replicas
# without shipping their data: each side hashes what it holds into a tree,
# equal roots mean equal data, and only subtrees whose digests differ are
# descended into, so the cost follows the size of the difference, not of
# the data.
#
# Shape: a complete binary tree of fixed depth D over the key hash space.
# Leaf (bucket) b holds the keys whose ring key_hash starts with the D bits
# of b. With D equal to the ring's partition_bits (16 for both by default)
# a bucket *is* a partition, so a snapshot restricted to the partitions two
# replicas share compares exactly the data they should agree on.
#
# Rule 1: the tree is a function of the set of (key, digest) pairs alone.
#         Insertion order, and keys put then removed, leave no trace: a
#         leaf is the XOR of its entries' hashes (empty = 16 zero bytes),
#         and an inner node is BLAKE2b(left || right), or empty when both
#         children are. A key holds one digest at a time, so no entry hash
#         ever appears twice in a leaf and XOR cannot cancel it.
# Rule 2: updates are cheap. put/remove XOR one 128-bit value into one leaf
#         (O(1)) and mark it dirty; inner nodes on dirty paths are rehashed
#         when a root or snapshot is next asked for (O(dirty * D)).
# Rule 3: comparison goes down several levels per message. A Summary lists
#         the non-empty digests at one depth under some ancestors; the peer
#         answers with the indices that differ and the next Summary, `stride`
#         levels further down. From the root (16 bytes) to the leaves of a
#         depth-16 tree takes 5 messages at stride 4; then the differing
#         buckets' entries are exchanged and compare_entries names the keys.
#
# XOR leaves are linear: someone who chooses many (key, digest) pairs could
# build two different bucket contents with the same XOR (Wagner's
# generalised birthday). Digests here are chosen by coordinators (HLC
# timestamp and writer inside), replicas are authenticated mesh members,
# and a false "equal" only delays repair until the next write or read
# repair, so the O(1) update is worth it.

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import attrs

from meshd.core.ring import DEFAULT_PARTITION_BITS, HASH_BITS, key_hash

__all__ = [
    "DEFAULT_DEPTH",
    "DIGEST_SIZE",
    "EMPTY",
    "MerkleDiff",
    "MerkleSnapshot",
    "MerkleTree",
    "Summary",
    "compare_entries",
    "diff",
]

#: Tree depth: leaves = 2**depth buckets. Equal to the ring's partition bits,
#: so that a bucket is a partition.
DEFAULT_DEPTH = DEFAULT_PARTITION_BITS
#: Bytes per node digest.
DIGEST_SIZE = 16
#: The digest of an empty subtree.
EMPTY = bytes(DIGEST_SIZE)
_MAX_DEPTH = 24


def _entry_hash(key: bytes, digest: bytes) -> int:
    # Length-prefixed so (key, digest) pairs cannot run into each other.
    data = struct.pack(">I", len(key)) + key + digest
    return int.from_bytes(hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest(), "big")


def _parent(left: bytes, right: bytes) -> bytes:
    if left == EMPTY and right == EMPTY:
        return EMPTY
    return hashlib.blake2b(left + right, digest_size=DIGEST_SIZE).digest()


def _leaf(xor: int) -> bytes:
    return xor.to_bytes(DIGEST_SIZE, "big")


def _check_depth(depth: int) -> None:
    if not 0 <= depth <= _MAX_DEPTH:
        raise ValueError(f"Merkle depth must be in 0..{_MAX_DEPTH}, got {depth}")


@attrs.frozen
class Summary:
    """Digests of the nodes at one depth below some ancestors: one anti-entropy message.

    Only non-empty nodes are listed; a covered node that is missing is empty.

    Attributes:
        depth: the depth of the listed nodes (0 = root, tree depth = buckets).
        under_depth: the depth of the ancestors (<= depth).
        under: indices of the ancestors at ``under_depth``, ascending. Their
            descendants at ``depth`` are the nodes this summary covers.
        nodes: ``(index, digest)`` of the covered non-empty nodes, ascending.
    """

    depth: int
    under_depth: int
    under: tuple[int, ...]
    nodes: tuple[tuple[int, bytes], ...]

    def covered(self) -> Iterable[int]:
        """The indices at :attr:`depth` this summary speaks for."""
        span = self.depth - self.under_depth
        for ancestor in self.under:
            yield from range(ancestor << span, (ancestor + 1) << span)


@attrs.frozen
class MerkleSnapshot:
    """A tree's digests at one moment, possibly restricted to some buckets.

    Attributes:
        depth: the tree depth.
        levels: ``levels[d][i]`` is node ``i`` at depth ``d`` (``2**d`` nodes).
    """

    depth: int
    levels: tuple[tuple[bytes, ...], ...] = attrs.field(repr=False)

    @property
    def root(self) -> bytes:
        """The root digest; equal roots mean equal contents."""
        return self.levels[0][0]

    def level(self, depth: int) -> tuple[bytes, ...]:
        """All ``2**depth`` digests at ``depth``."""
        return self.levels[depth]

    def node(self, depth: int, index: int) -> bytes:
        """The digest of node ``index`` at ``depth``."""
        return self.levels[depth][index]

    def children(self, depth: int, index: int) -> tuple[bytes, bytes]:
        """The two children of node ``index`` at ``depth`` (which must be above the leaves)."""
        if depth >= self.depth:
            raise ValueError(f"nodes at depth {depth} are leaves of a depth-{self.depth} tree")
        below = self.levels[depth + 1]
        return below[2 * index], below[2 * index + 1]

    def summary(self, depth: int, under: Iterable[int] = (0,), under_depth: int = 0) -> Summary:
        """The message describing the nodes at ``depth`` below ``under`` (Rule 3).

        Args:
            depth: depth of the nodes to describe.
            under: ancestor indices at ``under_depth``; the default is the whole level.
            under_depth: depth of the ancestors.

        Raises:
            ValueError: on depths outside ``0 <= under_depth <= depth <= self.depth``.
        """
        if not 0 <= under_depth <= depth <= self.depth:
            raise ValueError(f"need 0 <= under_depth <= depth <= {self.depth}")
        ancestors = tuple(sorted(set(under)))
        level = self.levels[depth]
        empty = Summary(depth, under_depth, ancestors, ())
        nodes = tuple((i, level[i]) for i in empty.covered() if level[i] != EMPTY)
        return Summary(depth, under_depth, ancestors, nodes)

    def differing(self, theirs: Summary) -> tuple[int, ...]:
        """Indices at ``theirs.depth`` (among those it covers) where our digest differs."""
        if theirs.depth > self.depth:
            raise ValueError(
                f"summary at depth {theirs.depth} is below this depth-{self.depth} tree"
            )
        given = dict(theirs.nodes)
        level = self.levels[theirs.depth]
        return tuple(i for i in theirs.covered() if level[i] != given.get(i, EMPTY))


@attrs.define(eq=False)
class MerkleTree:
    """The live tree of one replica's (key, version digest) pairs, updated on every put and delete.

    Keys are placement keys (as the ring hashes them); digests are
    ``Record.digest()`` (any bytes work).

    Attributes:
        depth: leaves are the ``2**depth`` buckets.
    """

    depth: int = DEFAULT_DEPTH
    _buckets: dict[int, dict[bytes, bytes]] = attrs.field(init=False, factory=dict)
    _leaves: list[int] = attrs.field(init=False)
    _levels: list[list[bytes]] = attrs.field(init=False)
    _dirty: set[int] = attrs.field(init=False, factory=set)
    _size: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        _check_depth(self.depth)
        self._leaves = [0] * (1 << self.depth)
        self._levels = [[EMPTY] * (1 << d) for d in range(self.depth + 1)]

    @classmethod
    def build(
        cls, entries: Iterable[tuple[bytes, bytes]], depth: int = DEFAULT_DEPTH
    ) -> MerkleTree:
        """A tree holding ``entries``, ``(key, digest)`` pairs; later pairs replace earlier ones."""
        tree = cls(depth)
        for key, digest in entries:
            tree.put(key, digest)
        return tree

    def bucket_of(self, key: bytes) -> int:
        """The leaf holding ``key``: the top ``depth`` bits of its ring hash."""
        return key_hash(key) >> (HASH_BITS - self.depth)

    def __len__(self) -> int:
        return self._size

    def get(self, key: bytes) -> bytes | None:
        """The digest stored for ``key``, if any."""
        return self._buckets.get(self.bucket_of(key), {}).get(key)

    def put(self, key: bytes, digest: bytes) -> None:
        """Record that this replica holds ``key`` at version ``digest`` (replacing any other)."""
        bucket = self.bucket_of(key)
        entries = self._buckets.setdefault(bucket, {})
        old = entries.get(key)
        if old == digest:
            return
        if old is None:
            self._size += 1
        else:
            self._leaves[bucket] ^= _entry_hash(key, old)
        entries[key] = digest
        self._leaves[bucket] ^= _entry_hash(key, digest)
        self._dirty.add(bucket)

    def remove(self, key: bytes) -> bool:
        """Forget ``key`` (collected tombstone, handed-off partition); False if it was absent."""
        bucket = self.bucket_of(key)
        entries = self._buckets.get(bucket)
        if entries is None or key not in entries:
            return False
        self._leaves[bucket] ^= _entry_hash(key, entries.pop(key))
        if not entries:
            del self._buckets[bucket]
        self._size -= 1
        self._dirty.add(bucket)
        return True

    def drop_bucket(self, bucket: int) -> int:
        """Forget every key in ``bucket`` (a partition handed off); returns how many."""
        entries = self._buckets.pop(bucket, {})
        if entries:
            self._leaves[bucket] = 0
            self._size -= len(entries)
            self._dirty.add(bucket)
        return len(entries)

    def entries(self, bucket: int) -> dict[bytes, bytes]:
        """A copy of the ``key -> digest`` pairs in ``bucket``: what to send when it differs."""
        return dict(self._buckets.get(bucket, {}))

    def _refresh(self) -> None:
        # Rule 2: rehash only the paths above dirty leaves.
        if not self._dirty:
            return
        levels = self._levels
        changed = self._dirty
        for bucket in changed:
            levels[self.depth][bucket] = _leaf(self._leaves[bucket])
        for depth in range(self.depth - 1, -1, -1):
            changed = {i >> 1 for i in changed}
            below, here = levels[depth + 1], levels[depth]
            for i in changed:
                here[i] = _parent(below[2 * i], below[2 * i + 1])
        self._dirty = set()

    @property
    def root(self) -> bytes:
        """The root digest of everything in the tree."""
        self._refresh()
        return self._levels[0][0]

    def snapshot(self, buckets: Iterable[int] | None = None) -> MerkleSnapshot:
        """Freeze the digests, optionally counting only ``buckets`` (others read as empty).

        Restricting is how two replicas compare just the partitions they
        share; it costs one hash per non-empty inner node (``2**depth`` at
        most), while the unrestricted snapshot reuses the live tree.
        """
        if buckets is None:
            self._refresh()
            return MerkleSnapshot(self.depth, tuple(tuple(level) for level in self._levels))
        leaves = [EMPTY] * (1 << self.depth)
        for bucket in buckets:
            if not 0 <= bucket < len(leaves):
                raise ValueError(f"bucket {bucket} out of range for a depth-{self.depth} tree")
            leaves[bucket] = _leaf(self._leaves[bucket])
        levels = [leaves]
        for _ in range(self.depth):
            below = levels[-1]
            levels.append([_parent(below[i], below[i + 1]) for i in range(0, len(below), 2)])
        return MerkleSnapshot(self.depth, tuple(tuple(level) for level in reversed(levels)))


@attrs.frozen
class MerkleDiff:
    """The result of comparing two snapshots the way two replicas would over the network.

    Attributes:
        buckets: leaf buckets whose contents differ, ascending.
        messages: summaries exchanged to find them (root included).
        digests_sent: non-empty digests carried by those summaries.
    """

    buckets: tuple[int, ...]
    messages: int
    digests_sent: int


def diff(ours: MerkleSnapshot, theirs: MerkleSnapshot, *, stride: int = 4) -> MerkleDiff:
    """Find the differing buckets by the summary exchange of Rule 3, counting its cost.

    The runtime runs the same steps across a stream, one side per node;
    this function plays both sides in memory (tests, simulation).

    Args:
        ours: one replica's snapshot.
        theirs: the other's, of the same depth.
        stride: levels descended per message (>= 1).

    Raises:
        ValueError: on different depths or a stride below 1.
    """
    if ours.depth != theirs.depth:
        raise ValueError(f"cannot compare trees of depth {ours.depth} and {theirs.depth}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    sides = (ours, theirs)
    message = ours.summary(0)
    messages, sent = 1, len(message.nodes)
    turn = 1  # the side that receives `message`
    differing = sides[turn].differing(message)
    while differing and message.depth < ours.depth:
        depth = min(message.depth + stride, ours.depth)
        message = sides[turn].summary(depth, differing, message.depth)
        messages += 1
        sent += len(message.nodes)
        turn = 1 - turn
        differing = sides[turn].differing(message)
    return MerkleDiff(differing, messages, sent)


def compare_entries(
    ours: Mapping[bytes, bytes], theirs: Mapping[bytes, bytes]
) -> tuple[bytes, ...]:
    """Keys of one bucket that differ: held by one side only, or with different digests.

    Returns:
        The keys, sorted. The runtime then exchanges those records and each
        side keeps the LWW winner (``versioned.resolve``).
    """
    keys = set(ours) | set(theirs)
    return tuple(sorted(k for k in keys if ours.get(k) != theirs.get(k)))
