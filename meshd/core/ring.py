"""Placement: which members hold a key (its preference list), as a pure function of the members.

Scheme (Dynamo §4.2 and §6.2 strategy 3, Riak's fixed ring, placed without a claimant)
----------------------------------------------------------------------------------------

The 64-bit hash circle is cut into Q = 2**16 equal *partitions*; a key's
partition is the top 16 bits of BLAKE2b-64(key). Every member places 2048
*tokens* on the circle, derived from its id alone (SHAKE-128 of the id).
Partition p belongs to the first token at or after its start point
``p << 48``, and its *preference list* is the first ``replicas`` distinct
members met walking clockwise from that token. The list of every partition
is precomputed, so ``owners(key)`` is one hash, one shift and one tuple index.

Rule 1: the ring is a function of the *set* of member ids (and the three
        parameters, which every node must share). Order, duplicates and
        history do not matter, so every node that sees the same alive members
        computes the same ring; ``fingerprint`` lets two nodes check it.
Rule 2: a join moves keys only to the joiner. For every partition, the new
        preference list is the old one with the joiner inserted at some
        position and, when the list was full, its last member pushed out;
        every other partition is unchanged. A leave is the same seen
        backwards: the leaver is removed and the next member clockwise
        appended. (Tokens depend on their own member only, and the clockwise
        order of the old members' tokens does not change when tokens are
        added.) The partitions whose primary changes are exactly the joiner's
        new primary share, so the keys moved equal the joiner's ownership.
Rule 3: partition ids do not depend on the members. They are the stable unit
        of storage, handoff (``diff`` lists changed partitions), and
        anti-entropy (a Merkle bucket of ``merkle.py`` is one partition).

Why not a balancing step: if a join may only move keys to the joiner, for
every member set, then the owner of each partition must be the highest of
the members in some fixed ranking of all possible ids for that partition
(rendezvous hashing and consistent hashing are two such rankings). Any step
that looks at loads makes one member's placement depend on the others and
breaks Rule 2: in trials while choosing, rendezvous hashing with each
member's replica slots capped at 1.05x the mean changed 8 (Q = 2**10) and
22 (Q = 2**12) partitions between *old* members when an 11th joined. So
balance has to come from the ranking's own statistics: enough tokens
(variance about 1/tokens) and enough partitions (variance about N/Q).

Measured (``bench/data.py --schemes``, this machine, 2 shared cores, Python
3.11; members ``node-1 .. node-N``, then the worst over 20 sets of names;
ownership = largest member's share of the keys over the mean share;
"moved" = keys whose primary changed when an 11th member joins 10, over the
ideal 1/11. Every scheme here changed no partition other than by the joiner)::

    scheme                        own N=10     own N=100    n=3, N=100   moved        build N=100
    random tokens, 160/member *   1.207/1.207  1.155/1.259  1.120/1.151  0.970/1.112    22 ms
    random tokens, 256/member *   1.198/1.198  1.161/1.239  1.112/1.148  0.928/1.075    37 ms
    random tokens, 1024/member *  1.046/1.066  1.076/1.100  1.035/1.058  1.013/1.055   122 ms
    rendezvous (HRW), Q = 2**12   1.096/1.104  1.465/1.709  1.204/1.294  1.058/1.155    56 ms
    rendezvous (HRW), Q = 2**14   1.043/1.056  1.239/1.263  1.137/1.137  1.021/1.057   264 ms
    rendezvous (HRW), Q = 2**16   1.029/1.029  1.083/1.126  1.043/1.086  1.020/1.020  1065 ms
    Q = 2**16 by tokens, 512      1.042/1.118  1.118/1.152  1.079/1.086  0.984/1.123    49 ms
    Q = 2**16 by tokens, 1024     1.043/1.062  1.108/1.120  1.031/1.065  1.009/1.053    91 ms
    Q = 2**16 by tokens, 2048 <-  1.055/1.055  1.083/1.128  1.044/1.062  1.012/1.047   156 ms
    targets                       <= 1.10      <= 1.15                   <= 1.10

    * continuous token ownership, sampled on 2**18 points. uhashring's own
      ring (160 md5 vnodes) measures 1.095 at N = 10 and 1.230 at N = 100.

Over 100 sets of names (``bench/data.py --name-sets 100``) the chosen
scheme's worst cases were 1.072 (N = 10), 1.128 (N = 100) and 1.047
(moved). In a 100-set trial while choosing, 1024 tokens reached 1.093,
1.144 and 1.101 (over the moved target), hence 2048. Cutting the circle
into partitions adds sampling noise of its own (compare random tokens with
Q = 2**16 by tokens, 1024 each, at N = 100). With Q = 2**17 and 2048 tokens
the N = 100 worst case of 20 sets was 1.083 instead of 1.128, at twice the
table and twice the Merkle leaves; not needed for the targets.

Lookups (``owners(key)``, n = 3, N = 10, median of 5 passes over 200,000
keys): 2.63 M/s from the partition table, against 1.42 M/s for a bisection
over the sorted tokens (random tokens, 10 x 1024); measured side by side in
the same run, uhashring 2.5 does 1.01 M/s with ``get_node`` (the primary
only: ratio 2.6) and 0.35 M/s with ``range(key, 3)`` (three members: ratio
7.5).

So: fixed partitions for the stable ids and the one-index lookup, placed by
tokens rather than rendezvous hashing because that gives the same balance
for a seventh of the build time (rendezvous needs N x Q hashes, tokens N x
2048 plus one walk per partition boundary). The costs: 0.16 s of CPU to
build the ring of 100 members on each membership change (21 ms at N = 10);
about 7 MB kept per ring at N = 100 (tokens, table, interned lists) and
21 MB at the peak of a build; and balance that is statistical: a
particular set of names can land a few percent worse than the numbers above.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from array import array
from collections import Counter
from collections.abc import Iterable

import attrs

__all__ = [
    "DEFAULT_PARTITION_BITS",
    "DEFAULT_REPLICAS",
    "DEFAULT_TOKENS_PER_MEMBER",
    "PartitionChange",
    "Ring",
    "RingDiff",
    "diff",
    "key_hash",
    "member_tokens",
]

#: Q = 2**16 partitions: the unit of placement, handoff and anti-entropy.
#: Part of the placement contract: every node must use the same value.
DEFAULT_PARTITION_BITS = 16
#: Tokens (virtual nodes) per member on the 64-bit hash circle. Part of the
#: placement contract too.
DEFAULT_TOKENS_PER_MEMBER = 2048
#: Dynamo's N and Riak's n_val: replicas per key.
DEFAULT_REPLICAS = 3

#: Width of the hash circle. Keys and tokens are 64-bit unsigned integers.
HASH_BITS = 64
_MAX_PARTITION_BITS = 24
#: Domain separation for token derivation; bump the version (and every node
#: at once) if the derivation ever changes.
_TOKEN_DOMAIN = b"meshd ring token v1\x00"
_FINGERPRINT_DOMAIN = b"meshd ring v1\x00"

# Bound once: owners() is the hot path and global attribute lookups show up.
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def key_hash(key: bytes) -> int:
    """The key's position on the 64-bit circle: BLAKE2b-64, big-endian.

    Not :func:`hash`, which is salted per process: every node, on every
    platform and Python version, must place a key at the same point.

    Args:
        key: the placement key (namespace included; see ``versioned.placement_key``).

    Returns:
        An integer in ``[0, 2**64)``.
    """
    return _from_bytes(_blake2b(key, digest_size=8).digest(), "big")


def member_tokens(member: str, count: int) -> tuple[int, ...]:
    """The ``count`` tokens of ``member``: SHAKE-128 of its id, cut into 64-bit words.

    A member's tokens depend on its id alone, never on who else is in the
    mesh; that is what makes a join move keys only to the joiner. The first
    ``k`` tokens are the same for any ``count >= k``.
    """
    digest = hashlib.shake_128(_TOKEN_DOMAIN + member.encode()).digest(8 * count)
    return struct.unpack(f">{count}Q", digest)


def _validate_members(members: Iterable[str]) -> tuple[str, ...]:
    names = set()
    for member in members:
        if not isinstance(member, str) or not member:
            raise ValueError(f"ring members are non-empty strings, got {member!r}")
        names.add(member)
    return tuple(sorted(names))


@attrs.frozen
class Ring:
    """The placement of every key for one set of members. Build with :meth:`Ring.build`.

    Two rings are equal when they were built from the same members and
    parameters, which means every lookup agrees; the tables are derived data
    and take no part in comparison.

    Attributes:
        members: the members, sorted and de-duplicated.
        replicas: length of the precomputed preference lists (fewer when the
            mesh has fewer members).
        tokens_per_member: tokens each member places on the circle.
        partition_bits: log2 of the partition count; a key's partition is the
            top ``partition_bits`` bits of :func:`key_hash`.
    """

    members: tuple[str, ...]
    replicas: int
    tokens_per_member: int
    partition_bits: int
    # Derived (see build()): the preference list of every partition, and the
    # sorted tokens with their owners' indices into `members` for the rare
    # lookup longer than `replicas`.
    _table: tuple[tuple[str, ...], ...] = attrs.field(eq=False, repr=False)
    _tokens: array[int] = attrs.field(eq=False, repr=False)
    _token_owners: array[int] = attrs.field(eq=False, repr=False)
    _shift: int = attrs.field(init=False, eq=False, repr=False)

    @_shift.default
    def _shift_default(self) -> int:
        return HASH_BITS - self.partition_bits

    @classmethod
    def build(
        cls,
        members: Iterable[str],
        *,
        replicas: int = DEFAULT_REPLICAS,
        tokens_per_member: int = DEFAULT_TOKENS_PER_MEMBER,
        partition_bits: int = DEFAULT_PARTITION_BITS,
    ) -> Ring:
        """Compute the ring of ``members``; the order and duplicates of the input do not matter.

        Costs ``len(members) * tokens_per_member`` hashes, a sort, and one
        preference-list walk per partition boundary: about 0.1 s for 100
        members with the defaults (see the module docstring).

        Args:
            members: member node ids (non-empty strings). May be empty.
            replicas: preference-list length to precompute (n); >= 1.
            tokens_per_member: tokens per member; >= 1.
            partition_bits: log2 of the partition count, 1..24.

        Returns:
            The ring.

        Raises:
            ValueError: on an empty or non-string member id or a parameter out of range.
        """
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if tokens_per_member < 1:
            raise ValueError(f"tokens_per_member must be >= 1, got {tokens_per_member}")
        if not 1 <= partition_bits <= _MAX_PARTITION_BITS:
            raise ValueError(
                f"partition_bits must be in 1..{_MAX_PARTITION_BITS}, got {partition_bits}"
            )
        names = _validate_members(members)
        count = len(names)
        partitions = 1 << partition_bits
        if not count:
            return cls(
                names,
                replicas,
                tokens_per_member,
                partition_bits,
                ((),) * partitions,
                array("Q"),
                array("I"),
            )

        # All tokens on one circle, sorted; equal tokens (2**-64 odds) are
        # ordered by member id so the result is still a function of the set.
        # (One int per token, token * count + index, sorts like the pair and
        # needs a third of the memory of tuples.)
        points = sorted(
            token * count + index
            for index, name in enumerate(names)
            for token in member_tokens(name, tokens_per_member)
        )
        tokens = [point // count for point in points]
        owners = [point % count for point in points]
        del points
        want = min(replicas, count)
        shift = HASH_BITS - partition_bits
        interned: dict[tuple[str, ...], tuple[str, ...]] = {}

        def walk(start: int) -> tuple[str, ...]:
            # Dynamo §4.3: the first `want` distinct members clockwise.
            found: list[int] = []
            j = start
            while True:
                owner = owners[j]
                if owner not in found:
                    found.append(owner)
                    if len(found) == want:
                        break
                j += 1
                if j == len(owners):
                    j = 0
            plist = tuple(names[i] for i in found)
            return interned.setdefault(plist, plist)

        # Partition p starts at point p << shift and belongs wholly to the
        # first token at or after that point. Token i therefore takes the
        # partitions whose start lies in (token[i-1], token[i]], i.e. indices
        # (token[i-1] >> shift) + 1 .. token[i] >> shift.
        table: list[tuple[str, ...]] = []
        last = -1
        for i, token in enumerate(tokens):
            upto = token >> shift
            if upto > last:
                table.extend([walk(i)] * (upto - last))
                last = upto
        # Starts past the last token wrap around to the first one.
        table.extend([walk(0)] * (partitions - 1 - last))
        return cls(
            names,
            replicas,
            tokens_per_member,
            partition_bits,
            tuple(table),
            array("Q", tokens),
            array("I", owners),
        )

    # ------------------------------------------------------------------ lookups

    @property
    def partition_count(self) -> int:
        """Q, the number of partitions (``2 ** partition_bits``)."""
        return 1 << self.partition_bits

    def partition_of(self, key: bytes) -> int:
        """The partition holding ``key``: the top ``partition_bits`` bits of :func:`key_hash`."""
        return _from_bytes(_blake2b(key, digest_size=8).digest(), "big") >> self._shift

    def owners(self, key: bytes, n: int | None = None) -> tuple[str, ...]:
        """The preference list of ``key``: ``n`` distinct members, primary first.

        One hash and one index into a precomputed table when ``n`` is at
        most :attr:`replicas`.

        Args:
            key: the placement key.
            n: how many owners; ``None`` means :attr:`replicas`. Capped at
                the member count, so a small mesh returns every member.

        Returns:
            The owners, primary first; ``()`` for a ring without members.

        Raises:
            ValueError: if ``n < 1``.
        """
        partition = _from_bytes(_blake2b(key, digest_size=8).digest(), "big") >> self._shift
        if n is None:
            return self._table[partition]
        return self._resize(self._table[partition], partition, n)

    def preference_list(self, partition: int, n: int | None = None) -> tuple[str, ...]:
        """The owners of ``partition``, primary first (as :meth:`owners`).

        Raises:
            ValueError: if ``partition`` is out of range or ``n < 1``.
        """
        if not 0 <= partition < len(self._table):
            raise ValueError(f"partition {partition} out of range 0..{len(self._table) - 1}")
        plist = self._table[partition]
        return plist if n is None else self._resize(plist, partition, n)

    def _resize(self, plist: tuple[str, ...], partition: int, n: int) -> tuple[str, ...]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if n <= len(plist):
            return plist[:n]
        if len(plist) == len(self.members):
            return plist
        # Longer than precomputed: walk the circle from the partition's start.
        want = min(n, len(self.members))
        j = bisect.bisect_left(self._tokens, partition << self._shift) % len(self._tokens)
        found: list[int] = []
        while len(found) < want:
            owner = self._token_owners[j]
            if owner not in found:
                found.append(owner)
            j = (j + 1) % len(self._tokens)
        return tuple(self.members[i] for i in found)

    # ------------------------------------------------------------ whole-ring views

    def partitions(self) -> range:
        """Every partition id, ``0 .. partition_count - 1``."""
        return range(len(self._table))

    def partitions_of(self, member: str, n: int | None = None) -> tuple[int, ...]:
        """The partitions ``member`` replicates: those with it among the first ``n`` owners.

        With ``n=1`` these are the partitions it is primary for. This is what a
        node stores, and what it compares with each peer in anti-entropy.
        """
        return tuple(p for p in self.partitions() if member in self.preference_list(p, n))

    def ownership(self, n: int = 1) -> dict[str, float]:
        """Fraction of the key space each member holds among its first ``n`` owners.

        ``n=1`` is primary ownership (values sum to 1); ``n=replicas`` is
        Cassandra's "effective ownership" (values sum to ``min(n, members)``).
        Every member appears, with 0.0 if it owns nothing.
        """
        counts: Counter[str] = Counter()
        for p in self.partitions():
            counts.update(self.preference_list(p, n))
        total = len(self._table)
        return {member: counts[member] / total for member in self.members}

    @property
    def fingerprint(self) -> str:
        """Hex digest of the members and parameters: equal fingerprints mean equal placement.

        Cheap to gossip and compare (Ringpop's ring checksum), so a node can
        tell that a peer computes a different ring before forwarding to it.
        """
        h = _blake2b(_FINGERPRINT_DOMAIN, digest_size=16)
        h.update(struct.pack(">III", self.replicas, self.tokens_per_member, self.partition_bits))
        for member in self.members:
            encoded = member.encode()
            h.update(struct.pack(">I", len(encoded)) + encoded)
        return h.hexdigest()


# ---------------------------------------------------------------------------
# Ring changes, for handoff and rebalancing.


@attrs.frozen
class PartitionChange:
    """One partition whose preference list differs between two rings.

    Attributes:
        partition: the partition id.
        before: its owners in the old ring, primary first.
        after: its owners in the new ring, primary first.
    """

    partition: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def gained(self) -> tuple[str, ...]:
        """Members that must receive the partition (in the new list, not the old)."""
        return tuple(m for m in self.after if m not in self.before)

    @property
    def lost(self) -> tuple[str, ...]:
        """Members that may drop the partition once every gainer has it."""
        return tuple(m for m in self.before if m not in self.after)

    @property
    def primary_changed(self) -> bool:
        """Whether the partition's keys have a new primary (the "moved keys" count)."""
        return self.before[:1] != self.after[:1]


@attrs.frozen
class RingDiff:
    """Every partition whose preference list changed from one ring to the next.

    Attributes:
        partition_count: Q of both rings.
        changes: the changed partitions, in partition order.
    """

    partition_count: int
    changes: tuple[PartitionChange, ...]

    def gained_by(self, member: str) -> tuple[int, ...]:
        """Partitions ``member`` must fetch (from any old owner in ``before``)."""
        return tuple(c.partition for c in self.changes if member in c.gained)

    def lost_by(self, member: str) -> tuple[int, ...]:
        """Partitions ``member`` holds now but no longer owns after the change."""
        return tuple(c.partition for c in self.changes if member in c.lost)

    @property
    def moved_fraction(self) -> float:
        """Fraction of keys whose primary owner changed."""
        return sum(c.primary_changed for c in self.changes) / self.partition_count

    @property
    def replica_moves(self) -> int:
        """Partition copies to transfer: the sum of ``len(gained)`` over the changes."""
        return sum(len(c.gained) for c in self.changes)


def diff(old: Ring, new: Ring) -> RingDiff:
    """The partitions whose owners differ between ``old`` and ``new``.

    Args:
        old: the ring before a membership change.
        new: the ring after it.

    Returns:
        The changes, in partition order.

    Raises:
        ValueError: if the rings differ in partition count or replicas (their
            partitions or lists would not correspond).
    """
    if (old.partition_bits, old.replicas) != (new.partition_bits, new.replicas):
        raise ValueError(
            "rings built with different partition_bits/replicas cannot be compared: "
            f"{old.partition_bits}/{old.replicas} vs {new.partition_bits}/{new.replicas}"
        )
    changes = tuple(
        PartitionChange(p, before, after)
        for p, (before, after) in enumerate(zip(old._table, new._table, strict=True))
        if before != after
    )
    return RingDiff(old.partition_count, changes)
