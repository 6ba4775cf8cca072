"""Bodies of the ``kv`` RPC service: what replicas and coordinators say to each other."""

# Strategy
#
# The replicated store talks over RPC sessions (protocol/SPEC.md §3.1): one
# service, "kv", whose request and response bodies are defined here, and in
# protocol/SPEC.md §10 for other implementations. The session layer already
# authenticates the caller (mutual TLS) and matches answers to requests, so a
# body only says what to do.
#
# Every body is one msgpack array, the operation number first, fields by
# position (the same discipline as codec.py: no names on the wire, trailing
# fields a newer peer appends are ignored). A record is the array
# ``[namespace, key, value | nil, timestamp, writer]``.
#
#   op  request                                     response
#   1   write   [1, flags, hint_for|nil, [record]]  [applied, hinted]
#   2   read    [2, namespace, key]                 [record | nil]
#   3   stats   [3]                                 [keys, tombstones, bytes, hints,
#                                                    handoffs, file_bytes]
#   4   compare [4, session, bitmap|nil, summary..] [0] equal | [1, summary..] |
#                                                   [2, [bucket]]
#   5   entries [5, [partition]]                    [[partition, [[pkey, digest]]]]
#   6   fetch   [6, [pkey]]                         [[record]]
#
# Rule 1: decoders of bodies (``*_untrusted``) raise only BadPacket, whatever
#         the bytes; every field is checked with ``type(x) is T`` and against
#         the limits below before a value object is built.
# Rule 2: the limits are the store's (runtime/store.py checks the same
#         numbers on every record it keeps; a test pins them together), so a
#         record that decodes is one a replica can store.
# Rule 3: operation numbers are append-only, like message types.

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import attrs
import msgpack

from meshd.core.hlc import Timestamp
from meshd.core.merkle import DIGEST_SIZE, Summary
from meshd.core.versioned import MAX_NAMESPACE_BYTES, Record
from meshd.errors import BadPacket

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_RECORDS",
    "MAX_VALUE_BYTES",
    "MAX_WRITER_BYTES",
    "SERVICE",
    "CompareReply",
    "CompareRequest",
    "EntriesReply",
    "EntriesRequest",
    "FetchReply",
    "FetchRequest",
    "Op",
    "ReadReply",
    "ReadRequest",
    "ScanRequest",
    "StatsReply",
    "StatsRequest",
    "WriteReply",
    "WriteRequest",
    "bitmap_of",
    "decode_compare_reply_untrusted",
    "decode_entries_reply_untrusted",
    "decode_fetch_reply_untrusted",
    "decode_read_reply_untrusted",
    "decode_request_untrusted",
    "decode_stats_reply_untrusted",
    "decode_write_reply_untrusted",
    "encode",
    "partitions_of_bitmap",
]

#: The RPC service name the store registers.
SERVICE = "kv"
#: Largest key in bytes (runtime/store.py MAX_KEY_BYTES).
MAX_KEY_BYTES = 1024
#: Largest value in bytes: 1 MiB (runtime/store.py MAX_VALUE_BYTES).
MAX_VALUE_BYTES = 1 << 20
#: Largest writer id in bytes of UTF-8 (runtime/store.py MAX_WRITER_BYTES).
MAX_WRITER_BYTES = 255
#: Most records, keys or partitions one body carries.
MAX_RECORDS = 100_000
#: Most Merkle nodes one compare body carries.
MAX_SUMMARY_NODES = 1 << 17
_PACKED_LIMIT = 1 << 63
_R = TypeVar("_R")
_MAX_DEPTH = 24
_MAX_PARTITION_BITS = 24


class Op(enum.IntEnum):
    """Operation numbers of the kv service (append-only)."""

    WRITE = 1
    READ = 2
    STATS = 3
    COMPARE = 4
    ENTRIES = 5
    FETCH = 6
    SCAN = 7


# ---------------------------------------------------------------------------
# Values. Built by the runtime (trusted) or by the decoders below (checked).


@attrs.frozen
class WriteRequest:
    """Store records (a coordinator's write, a repair, a hint delivery, a handoff).

    Attributes:
        records: the records; the replica keeps each one that wins LWW.
        fresh: a coordinator's new write: the replica refuses it when its
            timestamp is too far ahead of the replica's clock (hlc.py Rule 3).
            Repairs, handoffs and hints carry old writes and are not checked.
        hint_for: when set, the receiver is a fallback: it keeps the records
            as hints for this node instead of storing them.
    """

    records: tuple[Record, ...]
    fresh: bool = False
    hint_for: str | None = None


@attrs.frozen
class WriteReply:
    """Attributes: applied: records stored; hinted: records kept as hints."""

    applied: int
    hinted: int = 0


@attrs.frozen
class ReadRequest:
    """Attributes: namespace and key of the record asked for."""

    namespace: str
    key: bytes


@attrs.frozen
class ReadReply:
    """Attributes: record: what the replica holds (a tombstone too), or None."""

    record: Record | None


@attrs.frozen
class ScanRequest:
    """A page of the replica's records of ``namespace`` whose key starts with
    ``prefix``, in key order, after ``after``; tombstones included (the
    coordinator needs them to drop keys deleted elsewhere). Answered with a
    :class:`FetchReply`.
    """

    namespace: str
    prefix: bytes
    limit: int
    after: bytes | None = None


@attrs.frozen
class StatsRequest:
    """Ask a member for its load (``meshctl status``/``ring``)."""


@attrs.frozen
class StatsReply:
    """A member's load.

    Attributes:
        keys: live keys held.
        tombstones: deletes not yet collected.
        bytes: key plus value bytes held.
        hints: hints held for other members.
        handoffs: partitions waiting to be handed to other members.
        file_bytes: size of its database files.
    """

    keys: int
    tombstones: int
    bytes: int
    hints: int
    handoffs: int
    file_bytes: int


@attrs.frozen
class CompareRequest:
    """One step of a Merkle comparison (anti-entropy, merkle.py Rule 3).

    Attributes:
        session: chosen by the initiator; the responder keeps its snapshot
            under (caller, session) between the steps.
        partitions: the first step's partition set, as a bitmap
            (:func:`bitmap_of`); ``None`` in later steps.
        summary: the initiator's digests at one depth.
    """

    session: int
    partitions: bytes | None
    summary: Summary


@attrs.frozen
class CompareReply:
    """The responder's answer to one comparison step.

    Attributes:
        equal: nothing differs under the summary; the comparison is over.
        summary: the responder's digests one stride further down (or None).
        buckets: when the summary was of the leaves: the differing buckets
            (partitions), and the comparison is over.
    """

    equal: bool = False
    summary: Summary | None = None
    buckets: tuple[int, ...] | None = None


@attrs.frozen
class EntriesRequest:
    """Attributes: partitions: whose Merkle entries (placement key -> digest) to send."""

    partitions: tuple[int, ...]


@attrs.frozen
class EntriesReply:
    """Attributes: entries: partition -> {placement key: record digest}."""

    entries: Mapping[int, Mapping[bytes, bytes]]


@attrs.frozen
class FetchRequest:
    """Attributes: keys: placement keys of the records asked for."""

    keys: tuple[bytes, ...]


@attrs.frozen
class FetchReply:
    """Attributes: records: the records held among those asked for."""

    records: tuple[Record, ...]


KvRequest = (
    WriteRequest
    | ReadRequest
    | StatsRequest
    | CompareRequest
    | EntriesRequest
    | FetchRequest
    | ScanRequest
)
KvReply = WriteReply | ReadReply | StatsReply | CompareReply | EntriesReply | FetchReply


# ---------------------------------------------------------------------------
# Partition bitmaps: 2**16 partitions in 8 KiB.


def bitmap_of(partitions: Iterable[int], partition_bits: int) -> bytes:
    """The partitions as a bitmap, bit ``p % 8`` of byte ``p // 8`` (LSB first).

    Raises:
        ValueError: a partition out of range.
    """
    bits = bytearray((1 << partition_bits) // 8 or 1)
    limit = 1 << partition_bits
    for p in partitions:
        if not 0 <= p < limit:
            raise ValueError(f"partition {p} out of range 0..{limit - 1}")
        bits[p >> 3] |= 1 << (p & 7)
    return bytes(bits)


def partitions_of_bitmap(bitmap: bytes) -> list[int]:
    """The partitions set in ``bitmap``, ascending (inverse of :func:`bitmap_of`)."""
    found: list[int] = []
    for i, byte in enumerate(bitmap):
        if byte:
            base = i << 3
            found.extend(base + b for b in range(8) if byte >> b & 1)
    return found


# ---------------------------------------------------------------------------
# Encoding (trusted values).


def _record(r: Record) -> list[object]:
    return [r.namespace, r.key, r.value, r.timestamp.packed, r.writer]


def _summary(s: Summary) -> list[object]:
    return [s.depth, s.under_depth, list(s.under), [[i, d] for i, d in s.nodes]]


def encode(message: KvRequest | KvReply) -> bytes:
    """The body bytes of a request or a reply.

    Raises:
        TypeError: not a kv message.
    """
    m = message
    fields: list[object]
    if isinstance(m, WriteRequest):
        fields = [Op.WRITE, int(m.fresh), m.hint_for, [_record(r) for r in m.records]]
    elif isinstance(m, ReadRequest):
        fields = [Op.READ, m.namespace, m.key]
    elif isinstance(m, StatsRequest):
        fields = [Op.STATS]
    elif isinstance(m, CompareRequest):
        fields = [Op.COMPARE, m.session, m.partitions, *_summary(m.summary)]
    elif isinstance(m, EntriesRequest):
        fields = [Op.ENTRIES, list(m.partitions)]
    elif isinstance(m, FetchRequest):
        fields = [Op.FETCH, list(m.keys)]
    elif isinstance(m, ScanRequest):
        fields = [Op.SCAN, m.namespace, m.prefix, m.limit, m.after]
    elif isinstance(m, WriteReply):
        fields = [m.applied, m.hinted]
    elif isinstance(m, ReadReply):
        fields = [None if m.record is None else _record(m.record)]
    elif isinstance(m, StatsReply):
        fields = [m.keys, m.tombstones, m.bytes, m.hints, m.handoffs, m.file_bytes]
    elif isinstance(m, CompareReply):
        if m.equal:
            fields = [0]
        elif m.summary is not None:
            fields = [1, *_summary(m.summary)]
        else:
            fields = [2, list(m.buckets or ())]
    elif isinstance(m, EntriesReply):
        fields = [[p, [[k, d] for k, d in e.items()]] for p, e in m.entries.items()]
    elif isinstance(m, FetchReply):
        fields = [[_record(r) for r in m.records]]
    else:
        raise TypeError(f"not a kv message: {type(m).__name__}")
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


# ---------------------------------------------------------------------------
# Decoding (untrusted bytes; Rule 1).


def _unpack(body: bytes) -> list[object]:
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    # msgpack may raise outside its own hierarchy; catching Exception is the
    # documented way to catch them all.
    except Exception as exc:
        raise BadPacket(f"kv: invalid msgpack: {exc or type(exc).__name__}") from None
    if type(value) is not list:
        raise BadPacket("kv: a body must be an array")
    return value


def _field(fields: Sequence[object], index: int, what: str) -> object:
    if index >= len(fields):
        raise BadPacket(f"kv: {what} missing")
    return fields[index]


def _int(value: object, what: str, limit: int = _PACKED_LIMIT) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise BadPacket(f"kv: {what} must be an integer in 0..{limit - 1}")
    return value


def _text(value: object, what: str, limit: int) -> str:
    if type(value) is not str:
        raise BadPacket(f"kv: {what} must be a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise BadPacket(f"kv: {what} is not valid UTF-8") from None
    if not 1 <= size <= limit:
        raise BadPacket(f"kv: {what} must be 1..{limit} bytes")
    return value


def _key(value: object, what: str = "key") -> bytes:
    if type(value) is not bytes or not 1 <= len(value) <= MAX_KEY_BYTES:
        raise BadPacket(f"kv: {what} must be 1..{MAX_KEY_BYTES} bytes")
    return value


def _list(value: object, what: str, limit: int = MAX_RECORDS) -> list[object]:
    if type(value) is not list:
        raise BadPacket(f"kv: {what} must be an array")
    if len(value) > limit:
        raise BadPacket(f"kv: {what} has more than {limit} entries")
    return value


def _record_untrusted(value: object) -> Record:
    f = _list(value, "record", 64)
    if len(f) < 5:
        raise BadPacket("kv: a record has 5 fields")
    namespace = _text(f[0], "record.namespace", MAX_NAMESPACE_BYTES)
    key = _key(f[1], "record.key")
    data = f[2]
    if data is not None and (type(data) is not bytes or len(data) > MAX_VALUE_BYTES):
        raise BadPacket(f"kv: record.value must be nil or at most {MAX_VALUE_BYTES} bytes")
    ts = _int(f[3], "record.timestamp")
    writer = _text(f[4], "record.writer", MAX_WRITER_BYTES)
    return Record(namespace, key, data, Timestamp(ts), writer)


def _records_untrusted(value: object) -> tuple[Record, ...]:
    return tuple(_record_untrusted(r) for r in _list(value, "records"))


def _summary_untrusted(fields: Sequence[object], start: int) -> Summary:
    depth = _int(_field(fields, start, "summary.depth"), "summary.depth", _MAX_DEPTH + 1)
    under_depth = _int(
        _field(fields, start + 1, "summary.under_depth"), "summary.under_depth", depth + 1
    )
    under_raw = _list(_field(fields, start + 2, "summary.under"), "summary.under", 1 << 16)
    under = tuple(_int(i, "summary.under[]", 1 << under_depth) for i in under_raw)
    if list(under) != sorted(set(under)):
        raise BadPacket("kv: summary.under must be ascending and distinct")
    span = depth - under_depth
    nodes = []
    raw_nodes = _field(fields, start + 3, "summary.nodes")
    for pair in _list(raw_nodes, "summary.nodes", MAX_SUMMARY_NODES):
        p = _list(pair, "summary.nodes[]", 2)
        if len(p) != 2:
            raise BadPacket("kv: a summary node is [index, digest]")
        index = _int(p[0], "summary node index", 1 << depth)
        if index >> span not in under:
            raise BadPacket("kv: a summary node lies outside the ancestors it is under")
        if type(p[1]) is not bytes or len(p[1]) != DIGEST_SIZE:
            raise BadPacket(f"kv: a summary digest is {DIGEST_SIZE} bytes")
        nodes.append((index, p[1]))
    return Summary(depth, under_depth, under, tuple(nodes))


def decode_request_untrusted(body: bytes) -> KvRequest:
    """A kv request from a peer.

    Raises:
        BadPacket: anything malformed, oversized or unknown (the only exception).
    """
    try:
        return _request(_unpack(body))
    except BadPacket:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise BadPacket(f"kv: malformed request: {exc}") from None


def _request(f: list[object]) -> KvRequest:
    op = _int(_field(f, 0, "op"), "op", 256)
    if op == Op.WRITE:
        flags = _int(_field(f, 1, "write.flags"), "write.flags", 256)
        hint_for = _field(f, 2, "write.hint_for")
        target = None if hint_for is None else _text(hint_for, "write.hint_for", MAX_WRITER_BYTES)
        records = _records_untrusted(_field(f, 3, "write.records"))
        return WriteRequest(records, bool(flags & 1), target)
    if op == Op.READ:
        namespace = _text(_field(f, 1, "read.namespace"), "read.namespace", MAX_NAMESPACE_BYTES)
        return ReadRequest(namespace, _key(_field(f, 2, "read.key")))
    if op == Op.STATS:
        return StatsRequest()
    if op == Op.COMPARE:
        session = _int(_field(f, 1, "compare.session"), "compare.session", 1 << 64)
        bitmap = _field(f, 2, "compare.partitions")
        if bitmap is not None and (
            type(bitmap) is not bytes or len(bitmap) > (1 << _MAX_PARTITION_BITS) // 8
        ):
            raise BadPacket("kv: compare.partitions must be nil or a bitmap")
        return CompareRequest(session, bitmap, _summary_untrusted(f, 3))
    if op == Op.ENTRIES:
        parts = _list(_field(f, 1, "entries.partitions"), "entries.partitions")
        return EntriesRequest(tuple(_int(p, "partition", 1 << _MAX_PARTITION_BITS) for p in parts))
    if op == Op.FETCH:
        keys = _list(_field(f, 1, "fetch.keys"), "fetch.keys")
        return FetchRequest(tuple(_key(k, "fetch key") for k in keys))
    if op == Op.SCAN:
        namespace = _text(_field(f, 1, "scan.namespace"), "scan.namespace", MAX_NAMESPACE_BYTES)
        prefix = _field(f, 2, "scan.prefix")
        if type(prefix) is not bytes or len(prefix) > MAX_KEY_BYTES:
            raise BadPacket(f"kv: scan.prefix must be bin of at most {MAX_KEY_BYTES} bytes")
        limit = _int(_field(f, 3, "scan.limit"), "scan.limit", MAX_RECORDS + 1)
        if limit < 1:
            raise BadPacket("kv: scan.limit must be at least 1")
        after = _field(f, 4, "scan.after")
        return ScanRequest(namespace, prefix, limit, None if after is None else _key(after, "scan.after"))
    raise BadPacket(f"kv: unknown operation {op}")


def _reply(decode: Callable[[list[object]], _R], body: bytes, what: str) -> _R:
    try:
        return decode(_unpack(body))
    except BadPacket:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise BadPacket(f"kv: malformed {what} reply: {exc}") from None


def decode_write_reply_untrusted(body: bytes) -> WriteReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> WriteReply:
        applied = _int(_field(f, 0, "write.applied"), "write.applied")
        hinted = _int(f[1], "write.hinted") if len(f) > 1 else 0
        return WriteReply(applied, hinted)

    return _reply(decode, body, "write")


def decode_read_reply_untrusted(body: bytes) -> ReadReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> ReadReply:
        raw = _field(f, 0, "read.record")
        return ReadReply(None if raw is None else _record_untrusted(raw))

    return _reply(decode, body, "read")


def decode_stats_reply_untrusted(body: bytes) -> StatsReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> StatsReply:
        names = ("keys", "tombstones", "bytes", "hints", "handoffs", "file_bytes")
        return StatsReply(*(_int(_field(f, i, n), f"stats.{n}") for i, n in enumerate(names)))

    return _reply(decode, body, "stats")


def decode_compare_reply_untrusted(body: bytes) -> CompareReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> CompareReply:
        kind = _int(_field(f, 0, "compare.kind"), "compare.kind", 3)
        if kind == 0:
            return CompareReply(equal=True)
        if kind == 1:
            return CompareReply(summary=_summary_untrusted(f, 1))
        buckets = _list(_field(f, 1, "compare.buckets"), "compare.buckets", 1 << 24)
        return CompareReply(
            buckets=tuple(_int(b, "bucket", 1 << _MAX_PARTITION_BITS) for b in buckets)
        )

    return _reply(decode, body, "compare")


def decode_entries_reply_untrusted(body: bytes) -> EntriesReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> EntriesReply:
        entries: dict[int, dict[bytes, bytes]] = {}
        total = 0
        for item in _list(f, "entries"):
            pair = _list(item, "entries[]", 2)
            if len(pair) != 2:
                raise BadPacket("kv: an entries item is [partition, pairs]")
            partition = _int(pair[0], "partition", 1 << _MAX_PARTITION_BITS)
            got: dict[bytes, bytes] = {}
            for kd in _list(pair[1], "entries pairs"):
                two = _list(kd, "entry", 2)
                if len(two) != 2:
                    raise BadPacket("kv: an entry is [placement key, digest]")
                if type(two[0]) is not bytes or not 2 <= len(two[0]) <= 1 + 255 + MAX_KEY_BYTES:
                    raise BadPacket("kv: an entry's placement key is malformed")
                if type(two[1]) is not bytes or len(two[1]) != DIGEST_SIZE:
                    raise BadPacket(f"kv: an entry's digest is {DIGEST_SIZE} bytes")
                got[two[0]] = two[1]
            total += len(got)
            if total > MAX_RECORDS * 4:
                raise BadPacket("kv: too many entries")
            entries[partition] = got
        return EntriesReply(entries)

    return _reply(decode, body, "entries")


def decode_fetch_reply_untrusted(body: bytes) -> FetchReply:
    """Raises: BadPacket."""

    def decode(f: list[object]) -> FetchReply:
        return FetchReply(_records_untrusted(_field(f, 0, "fetch.records")))

    return _reply(decode, body, "fetch")
