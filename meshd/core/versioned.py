"""Stored values: a versioned record per key; last writer wins; deletes are tombstones."""

# Strategy
#
# Dynamo keeps every concurrent version and hands siblings to the client
# (vector clocks, §4.4). meshd stores plain bytes for operators and plugins
# that cannot merge, so it takes Cassandra's rule instead: each write is
# stamped by its coordinator with an HLC timestamp and the coordinator's
# node id, and of two records for the same key the one with the larger
# Version (timestamp, then writer id) wins, on every replica, whatever
# order the records arrive in. Concurrent writes lose silently: that is the
# price of LWW, and HLC (hlc.py) at least makes "last" respect causality
# seen by the coordinators.
#
# Rule 1: a delete is a write. It stores a tombstone (value None) with its
#         own Version, so an older value arriving later through a hint,
#         read repair or anti-entropy loses to it instead of coming back.
# Rule 2: a tombstone may be collected only after a grace period longer
#         than the hint window: a hint or a replica that was down delivers
#         the old value at most that long after the delete, and by then the
#         tombstone has reached every replica (Cassandra's gc_grace_seconds,
#         default 10 days, for the same reason). A replica that was down for
#         longer than the grace period must not rejoin with its old data.
# Rule 3: the order is total. Two records with the same Version (one
#         coordinator never issues a timestamp twice, so this means a bug or
#         a corrupt replica) are still ordered: a tombstone beats a value,
#         then the larger value bytes win. Every replica picks the same one.
# Rule 4: namespaces partition the key space. The placement key hashed by
#         the ring is the length-prefixed namespace followed by the key, so
#         equal keys in two namespaces are unrelated.

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import attrs

from meshd.core.hlc import Timestamp, Version

__all__ = [
    "DEFAULT_TOMBSTONE_GRACE_MS",
    "MAX_NAMESPACE_BYTES",
    "Record",
    "RepairPlan",
    "check_tombstone_grace",
    "newer",
    "placement_key",
    "plan_read_repair",
    "resolve",
    "tombstone_collectable",
]

#: Namespace names are 1..255 bytes of UTF-8 (one length byte in the placement key).
MAX_NAMESPACE_BYTES = 255
#: How long a tombstone is kept after its delete, in ms: 10 days, as
#: Cassandra's gc_grace_seconds. Must exceed the hint window (Rule 2).
DEFAULT_TOMBSTONE_GRACE_MS = 10 * 24 * 3600 * 1000

_DIGEST_DOMAIN = b"meshd record v1\x00"


def _namespace_bytes(namespace: str) -> bytes:
    encoded = namespace.encode()
    if not 1 <= len(encoded) <= MAX_NAMESPACE_BYTES:
        raise ValueError(
            f"namespace must be 1..{MAX_NAMESPACE_BYTES} bytes of UTF-8, got {len(encoded)}"
        )
    return encoded


def placement_key(namespace: str, key: bytes) -> bytes:
    """The bytes the ring hashes for ``key`` in ``namespace`` (Rule 4).

    Raises:
        ValueError: if the namespace is empty or longer than MAX_NAMESPACE_BYTES.
    """
    encoded = _namespace_bytes(namespace)
    return bytes((len(encoded),)) + encoded + key


def _check_namespace(_instance: object, _attribute: object, value: str) -> None:
    _namespace_bytes(value)


@attrs.frozen
class Record:
    """What a replica stores for one key: its value (or a tombstone) and the write's version.

    Attributes:
        namespace: the key's namespace (operator data, or a plugin's).
        key: the key.
        value: the value, or ``None`` for a tombstone (a delete).
        timestamp: the HLC timestamp the coordinator stamped the write with.
        writer: node id of that coordinator.
    """

    namespace: str = attrs.field(validator=_check_namespace)
    key: bytes = attrs.field(repr=lambda k: k.hex())
    value: bytes | None = attrs.field(
        repr=lambda v: "tombstone" if v is None else f"<{len(v)} bytes>"
    )
    timestamp: Timestamp
    writer: str

    @classmethod
    def tombstone(cls, namespace: str, key: bytes, timestamp: Timestamp, writer: str) -> Record:
        """The record a delete stores (Rule 1)."""
        return cls(namespace, key, None, timestamp, writer)

    @property
    def is_tombstone(self) -> bool:
        """Whether this record is a delete."""
        return self.value is None

    @property
    def version(self) -> Version:
        """The record's place in the LWW order (timestamp, then writer)."""
        return Version(self.timestamp, self.writer)

    @property
    def placement_key(self) -> bytes:
        """The bytes the ring hashes to place this record."""
        return placement_key(self.namespace, self.key)

    def digest(self) -> bytes:
        """16-byte BLAKE2b over version and value: what the Merkle trees compare.

        Two replicas holding the same version of a key produce equal digests;
        the value is included so a replica with corrupt bytes under the
        right version is found and repaired too.
        """
        writer = self.writer.encode()
        h = hashlib.blake2b(_DIGEST_DOMAIN, digest_size=16)
        h.update(struct.pack(">QI", self.timestamp.packed, len(writer)) + writer)
        if self.value is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01" + self.value)
        return h.digest()


def _rank(record: Record) -> tuple[int, str, bool, bytes]:
    # Rule 3: version first; then a tombstone beats a value; then value bytes.
    return (record.timestamp.packed, record.writer, record.value is None, record.value or b"")


def newer(a: Record, b: Record) -> bool:
    """Whether ``a`` wins over ``b`` under last-writer-wins.

    Raises:
        ValueError: if the records are for different keys.
    """
    if (a.namespace, a.key) != (b.namespace, b.key):
        raise ValueError("records for different keys are not versions of each other")
    return _rank(a) > _rank(b)


def resolve(records: Iterable[Record]) -> Record | None:
    """The winning record among replicas' answers, or ``None`` if there are none.

    The result does not depend on the order of ``records``.

    Raises:
        ValueError: if the records are for different keys.
    """
    winner: Record | None = None
    for record in records:
        if winner is None or newer(record, winner):  # newer() checks the keys match
            winner = record
    return winner


@attrs.frozen
class RepairPlan:
    """What a read learned from the replicas: the winner, and who needs it written back.

    Attributes:
        winner: the newest record any replica returned (possibly a
            tombstone), or ``None`` if no replica had the key.
        stale: replicas that answered with an older record or none at all,
            in the order the answers were given. Read repair writes
            ``winner`` to each of them.
    """

    winner: Record | None
    stale: tuple[str, ...]

    @property
    def value(self) -> bytes | None:
        """What the read returns: the winner's value, ``None`` if absent or deleted."""
        return None if self.winner is None else self.winner.value


def plan_read_repair(answers: Mapping[str, Record | None]) -> RepairPlan:
    """Resolve a read from the replicas that answered (Dynamo §4.5 "read repair").

    A tombstone is repaired like a value: a replica without it could
    otherwise serve an older value to a later read at consistency one.

    Args:
        answers: replica node id -> the record it holds (``None``: not found).

    Returns:
        The winner and the replicas to repair.
    """
    winner = resolve(r for r in answers.values() if r is not None)
    if winner is None:
        return RepairPlan(None, ())
    stale = tuple(
        replica
        for replica, record in answers.items()
        if record is None or _rank(record) < _rank(winner)
    )
    return RepairPlan(winner, stale)


def tombstone_collectable(record: Record, *, now_ms: int, grace_ms: int) -> bool:
    """Whether a replica may now drop ``record`` for good (Rule 2).

    Only tombstones are ever collected, once their timestamp's wall time is
    ``grace_ms`` in the past. The HLC wall time is the same on every
    replica, so all replicas collect a tombstone at about the same moment.

    Args:
        record: a stored record.
        now_ms: the wall clock, milliseconds since the Unix epoch.
        grace_ms: the tombstone grace period (DEFAULT_TOMBSTONE_GRACE_MS).
    """
    return record.value is None and record.timestamp.wall_ms + grace_ms <= now_ms


def check_tombstone_grace(grace_ms: int, hint_window_ms: int) -> None:
    """Refuse a grace period that would let a delivered hint resurrect a deleted key.

    Raises:
        ValueError: unless ``grace_ms > hint_window_ms >= 0``.
    """
    if hint_window_ms < 0:
        raise ValueError(f"hint window must be >= 0 ms, got {hint_window_ms}")
    if grace_ms <= hint_window_ms:
        raise ValueError(
            f"tombstone grace period ({grace_ms} ms) must be longer than the hint window "
            f"({hint_window_ms} ms), or a late hint can bring a deleted value back"
        )
