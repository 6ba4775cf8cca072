# Wire codec, version 1. protocol/SPEC.md is the normative description; this
# module is one implementation of it and protocol/vectors/ pins both together.
#
# Strategy
# --------
# Every message is a msgpack array ``[type, field1, field2, ...]`` with the
# fields of its class in messages.py, by position: no field names on the
# wire, so a ping costs a dozen bytes. Nested values are small arrays too:
# an address is ``[host, port]``, a protocol range ``[min, max, current]``.
#
#   UDP packet   = version byte, envelope byte, compound
#   compound     = one msgpack array of messages, <= COMPOUND_BUDGET bytes
#   stream frame = version byte, one msgpack message (<= STREAM_MAX bytes;
#                  the runtime adds the length prefix and the TLS)
#
# A compound is built from messages encoded once: the broadcast queue keeps
# each gossip message as bytes, sizes a packet with compound_header_size()
# and glues the chosen ones together with encode_compound(), so no message is
# re-encoded per packet.
#
# Decoding rules
# --------------
# * Functions that read network bytes end in ``_untrusted`` and raise nothing
#   but BadPacket, whatever the input: msgpack errors and any stray
#   ValueError/TypeError/IndexError... are converted at the boundary.
# * msgpack does the parsing (raw=False, strict_map_key=True, length limits
#   per transport); then each known message is checked field by field with
#   plain ``type(x) is T`` tests (``bool`` is not an ``int`` here) and built
#   with its class. No attrs validators run; the checks here are the
#   validation, and each failure names the field ("alive.address.port").
# * Forward compatibility: unknown message types in a packet are skipped
#   (types are append-only, newer peers may add some) and extra trailing
#   fields of a known message are ignored (new fields are only ever appended).
#   A stream frame carries exactly one message, so there an unknown type is an
#   error.
# * Push-pull, key_op(_result) and app_request/app_response travel only on
#   streams; inside a packet they are rejected.
#
# Encoding trusts its input: messages are built by the core, not by peers.
# Oversized results raise LocalProtocolError rather than reaching the wire.
"""Encode gossip messages to bytes and decode untrusted bytes back (wire v1).

See ``protocol/SPEC.md`` for the format and ``protocol/vectors/`` for golden
examples.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import msgpack

from meshd.core.messages import (
    Ack,
    Alive,
    AppRequest,
    AppResponse,
    Dead,
    KeyOp,
    KeyOpResult,
    Leave,
    Message,
    MessageType,
    Nack,
    Ping,
    PingReq,
    PushNodeState,
    PushPull,
    Suspect,
    UserEvent,
    UserMessage,
)
from meshd.core.types import Address, MemberState, NodeId, ProtocolRange
from meshd.errors import BadPacket, LocalProtocolError

__all__ = [
    "COMPOUND_BUDGET",
    "ENVELOPE_AES_GCM",
    "ENVELOPE_PLAIN",
    "ENVELOPE_RESERVE",
    "HEADER_SIZE",
    "HOST_MAX",
    "MEMBERS_MAX",
    "META_MAX",
    "NODE_ID_MAX",
    "PACKET_MAX",
    "SERVICE_MAX",
    "STREAM_MAX",
    "WIRE_VERSION",
    "compound_header_size",
    "decode_packet_untrusted",
    "decode_stream_untrusted",
    "encode_compound",
    "encode_message",
    "encode_packet",
    "encode_stream",
]

#: First byte of every packet and stream frame. Changes only if the framing
#: itself changes; new message types do not bump it (see SPEC.md "Versions").
WIRE_VERSION = 1
#: Largest UDP packet sent or accepted, envelope included.
PACKET_MAX = 1400
#: Envelope byte: the compound follows in clear.
ENVELOPE_PLAIN = 0
#: Envelope byte reserved for AES-GCM (key hint, nonce, ciphertext, tag; the
#: plaintext starts with the sender's boot epoch and packet counter). Not
#: implemented by this build: such packets are rejected.
ENVELOPE_AES_GCM = 1
#: Bytes left free in every packet for the AES-GCM envelope, so turning
#: encryption on never changes how many messages fit in a packet.
ENVELOPE_RESERVE = 50
#: Version byte + envelope byte.
HEADER_SIZE = 2
#: The most bytes a compound (array header included) may take.
COMPOUND_BUDGET = PACKET_MAX - HEADER_SIZE - ENVELOPE_RESERVE
#: Largest stream frame (version byte + message), without the length prefix.
STREAM_MAX = 20 * 1024 * 1024

#: Node ids are 1..NODE_ID_MAX bytes of UTF-8.
NODE_ID_MAX = 128
#: Hosts are 1..HOST_MAX characters.
HOST_MAX = 255
#: Node metadata (tags) is at most META_MAX bytes.
META_MAX = 1024
#: A push-pull carries at most MEMBERS_MAX member entries.
MEMBERS_MAX = 1_048_576
#: An app_request's service name is 1..SERVICE_MAX bytes of UTF-8.
SERVICE_MAX = 64

_U64_MAX = 2**64 - 1
_U8_MAX = 255
_PORT_MAX = 65535

# msgpack limits per transport, on top of the input size. A packet is at most
# PACKET_MAX bytes, so its limits only need to be that size. In a stream they
# bound what a 20 MiB frame can make us allocate: an array header costs 5
# bytes but allocates 8 bytes per claimed element, so arrays are capped at
# MEMBERS_MAX (which is how the push-pull member cap is enforced), and no v1
# message has maps.
_PACKET_LIMITS = {
    "max_str_len": PACKET_MAX,
    "max_bin_len": PACKET_MAX,
    "max_array_len": PACKET_MAX,
    "max_map_len": PACKET_MAX // 2,
    "max_ext_len": PACKET_MAX,
}
_STREAM_LIMITS = {
    "max_str_len": STREAM_MAX,
    "max_bin_len": STREAM_MAX,
    "max_array_len": MEMBERS_MAX,
    "max_map_len": 65536,
    "max_ext_len": STREAM_MAX,
}

# Errors our own field checks could hit on a malformed message if a check
# were missing; converted to BadPacket so the untrusted-input contract holds.
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    IndexError,
    KeyError,
    AttributeError,
)

_WIRE_VERSION_BYTE = bytes([WIRE_VERSION])
_PLAIN_HEADER = bytes([WIRE_VERSION, ENVELOPE_PLAIN])
_ARRAY16 = struct.Struct(">BH")  # 0xdc, element count
_ARRAY32 = struct.Struct(">BI")  # 0xdd, element count

# One packer for the whole process: packb() builds a fresh Packer per call,
# which is most of its cost. Safe because the core is single-threaded and
# pack() calls back into no Python code (no ``default=`` hook), so it is never
# re-entered; autoreset hands back the bytes and clears the buffer, also when
# packing fails.
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


#####################################################################
# Encoding
#####################################################################


def _range_fields(r: ProtocolRange) -> list[int]:
    return [r.minimum, r.maximum, r.current]


def _node_state_fields(n: PushNodeState) -> list[object]:
    return [n.node, n.address, n.incarnation, n.state, n.meta, _range_fields(n.protocol)]


def _ping_fields(m: Ping) -> list[object]:
    return [MessageType.PING, m.seq, m.target, m.source]


def _ping_req_fields(m: PingReq) -> list[object]:
    return [MessageType.PING_REQ, m.seq, m.target, m.target_address, m.source, m.want_nack]


def _ack_fields(m: Ack) -> list[object]:
    return [MessageType.ACK, m.seq, m.payload]


def _nack_fields(m: Nack) -> list[object]:
    return [MessageType.NACK, m.seq]


def _suspect_fields(m: Suspect) -> list[object]:
    return [MessageType.SUSPECT, m.incarnation, m.node, m.accuser]


def _alive_fields(m: Alive) -> list[object]:
    return [MessageType.ALIVE, m.incarnation, m.node, m.address, m.meta, _range_fields(m.protocol)]


def _dead_fields(m: Dead) -> list[object]:
    return [MessageType.DEAD, m.incarnation, m.node, m.accuser]


def _leave_fields(m: Leave) -> list[object]:
    return [MessageType.LEAVE, m.incarnation, m.node]


def _push_pull_fields(m: PushPull) -> list[object]:
    members = None if m.members is None else [_node_state_fields(n) for n in m.members]
    return [MessageType.PUSH_PULL, m.join, m.checksum, members]


def _key_op_fields(m: KeyOp) -> list[object]:
    return [MessageType.KEY_OP, m.op, m.key]


def _key_op_result_fields(m: KeyOpResult) -> list[object]:
    return [MessageType.KEY_OP_RESULT, m.ok, m.error, list(m.fingerprints)]


def _user_fields(m: UserMessage) -> list[object]:
    return [MessageType.USER, m.sender, m.payload]


def _user_event_fields(m: UserEvent) -> list[object]:
    return [MessageType.USER_EVENT, m.origin, m.ltime, m.payload]


def _app_request_fields(m: AppRequest) -> list[object]:
    return [MessageType.APP_REQUEST, m.request_id, m.service, m.body]


def _app_response_fields(m: AppResponse) -> list[object]:
    return [MessageType.APP_RESPONSE, m.request_id, m.ok, m.body, m.error]


# Keyed by class. msgpack packs IntEnums (type numbers, member states) as
# ints and address tuples as arrays.
_ENCODERS: dict[type, Callable[..., list[object]]] = {
    Ping: _ping_fields,
    PingReq: _ping_req_fields,
    Ack: _ack_fields,
    Nack: _nack_fields,
    Suspect: _suspect_fields,
    Alive: _alive_fields,
    Dead: _dead_fields,
    Leave: _leave_fields,
    PushPull: _push_pull_fields,
    UserMessage: _user_fields,
    KeyOp: _key_op_fields,
    KeyOpResult: _key_op_result_fields,
    AppRequest: _app_request_fields,
    AppResponse: _app_response_fields,
    UserEvent: _user_event_fields,
}


def encode_message(msg: Message) -> bytes:
    """Encode one message as a msgpack array ``[type, field1, field2, ...]``.

    Args:
        msg: any message from :mod:`meshd.core.messages`.

    Returns:
        The message's bytes, ready for :func:`encode_compound` or (with the
        version byte) a stream frame.

    Raises:
        TypeError: ``msg`` is not a message.
    """
    fields = _ENCODERS.get(type(msg))
    if fields is None:
        raise TypeError(f"not a message: {type(msg).__name__}")
    encoded: bytes = _pack(fields(msg))
    return encoded


def compound_header_size(count: int) -> int:
    """Return how many bytes the array header of a ``count``-message compound takes.

    Args:
        count: number of messages, 0..2**32-1.

    Returns:
        1 up to 15 messages, 3 up to 65535, else 5 (msgpack fixarray,
        array 16, array 32).

    Raises:
        ValueError: ``count`` is negative or above 2**32-1.
    """
    if not 0 <= count <= 0xFFFFFFFF:
        raise ValueError(f"a compound cannot hold {count} messages")
    if count <= 15:
        return 1
    if count <= 0xFFFF:
        return 3
    return 5


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """Glue already-encoded messages into a compound (one msgpack array).

    The caller keeps the result within :data:`COMPOUND_BUDGET`, counting
    :func:`compound_header_size` plus the parts; :func:`encode_packet`
    refuses anything larger.

    Args:
        parts: outputs of :func:`encode_message`, at least one.

    Returns:
        The array header for ``len(parts)`` followed by the parts.

    Raises:
        LocalProtocolError: ``parts`` is empty; the protocol has no empty
            compound.
    """
    count = len(parts)
    if count <= 15:
        if count == 0:
            raise LocalProtocolError("a compound needs at least one message")
        header = bytes([0x90 | count])
    elif count <= 0xFFFF:
        header = _ARRAY16.pack(0xDC, count)
    else:
        header = _ARRAY32.pack(0xDD, count)
    return header + b"".join(parts)


def encode_packet(compound: bytes) -> bytes:
    """Wrap a compound in the plain (unencrypted) packet header.

    Args:
        compound: output of :func:`encode_compound`.

    Returns:
        The UDP payload: version byte, :data:`ENVELOPE_PLAIN`, compound.

    Raises:
        LocalProtocolError: the compound exceeds :data:`COMPOUND_BUDGET`.
    """
    if len(compound) > COMPOUND_BUDGET:
        raise LocalProtocolError(
            f"compound of {len(compound)} bytes exceeds the budget of {COMPOUND_BUDGET}"
        )
    return _PLAIN_HEADER + compound


def encode_stream(msg: Message) -> bytes:
    """Encode one message as a stream frame (without the length prefix).

    Args:
        msg: any message; push-pull is sent only this way.

    Returns:
        Version byte followed by :func:`encode_message`.

    Raises:
        LocalProtocolError: the frame exceeds :data:`STREAM_MAX`.
    """
    frame = _WIRE_VERSION_BYTE + encode_message(msg)
    if len(frame) > STREAM_MAX:
        raise LocalProtocolError(f"stream frame of {len(frame)} bytes exceeds {STREAM_MAX}")
    return frame


#####################################################################
# Decoding: field checks
#####################################################################

# Each check takes the raw value and the field's dotted name, and returns the
# value (typed) or raises BadPacket naming the field. Error texts show types,
# sizes and numbers, never the peer's strings or bytes.


_KINDS = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    dict: "map",
}


def _kind(value: object) -> str:
    # The msgpack name of a decoded value's type, for error messages.
    return _KINDS.get(type(value)) or type(value).__name__


def _u64(value: object, field: str) -> int:
    if type(value) is int and 0 <= value <= _U64_MAX:
        return value
    if type(value) is int:
        raise BadPacket(f"{field}: {value} is outside 0..2**64-1")
    raise BadPacket(f"{field}: expected int, got {_kind(value)}")


def _bool(value: object, field: str) -> bool:
    if type(value) is bool:
        return value
    raise BadPacket(f"{field}: expected bool, got {_kind(value)}")


def _node_id(value: object, field: str) -> NodeId:
    if type(value) is not str:
        raise BadPacket(f"{field}: expected str node id, got {_kind(value)}")
    # Up to 32 characters cannot exceed 128 UTF-8 bytes: skip the encode.
    if not value or (len(value) > NODE_ID_MAX // 4 and len(value.encode()) > NODE_ID_MAX):
        raise BadPacket(f"{field}: node id must be 1..{NODE_ID_MAX} UTF-8 bytes")
    return NodeId(value)


def _address(value: object, field: str) -> Address:
    if type(value) is not list or len(value) != 2:
        raise BadPacket(f"{field}: expected [host, port]")
    host, port = value
    if type(host) is not str or not 1 <= len(host) <= HOST_MAX:
        raise BadPacket(f"{field}.host: expected str of 1..{HOST_MAX} characters")
    if type(port) is not int or not 0 <= port <= _PORT_MAX:
        raise BadPacket(f"{field}.port: expected int 0..{_PORT_MAX}")
    return (host, port)


def _bin(value: object, field: str, limit: int) -> bytes:
    if type(value) is not bytes:
        raise BadPacket(f"{field}: expected bin, got {_kind(value)}")
    if len(value) > limit:
        raise BadPacket(f"{field}: {len(value)} bytes exceeds {limit}")
    return value


# Every alive message and push-pull entry carries a protocol range, and a mesh
# has only a handful of distinct ones, so valid ranges are shared instead of
# rebuilt per message. Only validated ranges get in, and at most _RANGES_MAX
# of them, so peers cannot grow the cache.
_RANGES_MAX = 64
_RANGES: dict[tuple[int, int, int], ProtocolRange] = {}


def _protocol(value: object, field: str) -> ProtocolRange:
    if type(value) is not list or len(value) != 3:
        raise BadPacket(f"{field}: expected [min, max, current]")
    low, high, current = value
    # Type check before the cache lookup: True == 1 and 1.0 == 1 as keys.
    if type(low) is not int or type(high) is not int or type(current) is not int:
        raise BadPacket(f"{field}: versions must be ints 0..{_U8_MAX}")
    key = (low, high, current)
    cached = _RANGES.get(key)
    if cached is not None:
        return cached
    if not (0 <= low <= _U8_MAX and 0 <= high <= _U8_MAX and 0 <= current <= _U8_MAX):
        raise BadPacket(f"{field}: versions must be ints 0..{_U8_MAX}")
    if low > high:
        raise BadPacket(f"{field}: min {low} > max {high}")
    protocol = ProtocolRange(low, high, current)
    if len(_RANGES) < _RANGES_MAX:
        _RANGES[key] = protocol
    return protocol


def _state(value: object, field: str) -> MemberState:
    if type(value) is int and 0 <= value <= 3:
        return MemberState(value)
    raise BadPacket(f"{field}: expected member state 0..3")


def _arity(m: list[object], count: int, name: str) -> None:
    # More items than ``count`` is fine: fields appended by newer versions.
    if len(m) < count:
        raise BadPacket(f"{name}: expected {count} items, got {len(m)}")


#####################################################################
# Decoding: messages
#####################################################################

# ``m`` is the message array, type number first. ``payload_max`` is the
# transport's cap on opaque payloads (COMPOUND_BUDGET in a packet).


def _decode_ping(m: list[object], payload_max: int) -> Ping:
    _arity(m, 4, "ping")
    return Ping(
        _u64(m[1], "ping.seq"),
        _node_id(m[2], "ping.target"),
        _node_id(m[3], "ping.source"),
    )


def _decode_ping_req(m: list[object], payload_max: int) -> PingReq:
    _arity(m, 6, "ping_req")
    return PingReq(
        _u64(m[1], "ping_req.seq"),
        _node_id(m[2], "ping_req.target"),
        _address(m[3], "ping_req.target_address"),
        _node_id(m[4], "ping_req.source"),
        _bool(m[5], "ping_req.want_nack"),
    )


def _decode_ack(m: list[object], payload_max: int) -> Ack:
    _arity(m, 3, "ack")
    return Ack(_u64(m[1], "ack.seq"), _bin(m[2], "ack.payload", payload_max))


def _decode_nack(m: list[object], payload_max: int) -> Nack:
    _arity(m, 2, "nack")
    return Nack(_u64(m[1], "nack.seq"))


def _decode_suspect(m: list[object], payload_max: int) -> Suspect:
    _arity(m, 4, "suspect")
    return Suspect(
        _u64(m[1], "suspect.incarnation"),
        _node_id(m[2], "suspect.node"),
        _node_id(m[3], "suspect.accuser"),
    )


def _decode_alive(m: list[object], payload_max: int) -> Alive:
    _arity(m, 6, "alive")
    return Alive(
        _u64(m[1], "alive.incarnation"),
        _node_id(m[2], "alive.node"),
        _address(m[3], "alive.address"),
        _bin(m[4], "alive.meta", META_MAX),
        _protocol(m[5], "alive.protocol"),
    )


def _decode_dead(m: list[object], payload_max: int) -> Dead:
    _arity(m, 4, "dead")
    return Dead(
        _u64(m[1], "dead.incarnation"),
        _node_id(m[2], "dead.node"),
        _node_id(m[3], "dead.accuser"),
    )


def _decode_leave(m: list[object], payload_max: int) -> Leave:
    _arity(m, 3, "leave")
    return Leave(_u64(m[1], "leave.incarnation"), _node_id(m[2], "leave.node"))


def _decode_node_state(e: object) -> PushNodeState:
    # Field names are relative (".state"); _decode_push_pull prefixes the
    # entry's index, so the happy path formats no string per entry.
    if type(e) is not list:
        raise BadPacket(f": expected array, got {_kind(e)}")
    _arity(e, 6, "")
    return PushNodeState(
        _node_id(e[0], ".node"),
        _address(e[1], ".address"),
        _u64(e[2], ".incarnation"),
        _state(e[3], ".state"),
        _bin(e[4], ".meta", META_MAX),
        _protocol(e[5], ".protocol"),
    )


def _decode_push_pull(m: list[object], payload_max: int) -> PushPull:
    _arity(m, 4, "push_pull")
    join = _bool(m[1], "push_pull.join")
    checksum = _u64(m[2], "push_pull.checksum")
    raw = m[3]
    if raw is None:
        return PushPull(join, checksum, None)
    if type(raw) is not list:
        raise BadPacket(f"push_pull.members: expected array or nil, got {_kind(raw)}")
    members: list[PushNodeState] = []
    try:
        for e in raw:
            members.append(_decode_node_state(e))
    except BadPacket as exc:
        raise BadPacket(f"push_pull.members[{len(members)}]{exc}") from None
    return PushPull(join, checksum, tuple(members))


def _decode_user(m: list[object], payload_max: int) -> UserMessage:
    _arity(m, 3, "user")
    return UserMessage(_node_id(m[1], "user.sender"), _bin(m[2], "user.payload", payload_max))


def _decode_user_event(m: list[object], payload_max: int) -> UserEvent:
    _arity(m, 4, "user_event")
    return UserEvent(
        _node_id(m[1], "user_event.origin"),
        _u64(m[2], "user_event.ltime"),
        _bin(m[3], "user_event.payload", payload_max),
    )


KEY_OPS = frozenset({"list", "install", "use", "remove"})
_KEY_SIZE = 32
_ERROR_MAX = 256
_FINGERPRINTS_MAX = 64
_FINGERPRINT_MAX = 64


def _decode_key_op(m: list[object], payload_max: int) -> KeyOp:
    _arity(m, 3, "key_op")
    op = m[1]
    if type(op) is not str or op not in KEY_OPS:
        raise BadPacket("key_op.op: expected one of list, install, use, remove")
    key = _bin(m[2], "key_op.key", _KEY_SIZE)
    if len(key) != (0 if op == "list" else _KEY_SIZE):
        raise BadPacket(f"key_op.key: {op} needs {'no key' if op == 'list' else 'a 32-byte key'}")
    return KeyOp(op, key)


def _decode_key_op_result(m: list[object], payload_max: int) -> KeyOpResult:
    _arity(m, 4, "key_op_result")
    ok = _bool(m[1], "key_op_result.ok")
    error = m[2]
    if type(error) is not str or len(error) > _ERROR_MAX:
        raise BadPacket(f"key_op_result.error: expected str of at most {_ERROR_MAX} characters")
    raw = m[3]
    if type(raw) is not list or len(raw) > _FINGERPRINTS_MAX:
        raise BadPacket(f"key_op_result.fingerprints: expected array of at most {_FINGERPRINTS_MAX}")
    for fp in raw:
        if type(fp) is not str or not 1 <= len(fp) <= _FINGERPRINT_MAX:
            raise BadPacket("key_op_result.fingerprints: expected short strings")
    return KeyOpResult(ok, error, tuple(raw))  # type: ignore[arg-type]


def _decode_app_request(m: list[object], payload_max: int) -> AppRequest:
    _arity(m, 4, "app_request")
    service = m[2]
    if type(service) is not str:
        raise BadPacket(f"app_request.service: expected str, got {_kind(service)}")
    # Up to 16 characters cannot exceed 64 UTF-8 bytes: skip the encode.
    if not service or (
        len(service) > SERVICE_MAX // 4 and len(service.encode()) > SERVICE_MAX
    ):
        raise BadPacket(f"app_request.service: must be 1..{SERVICE_MAX} UTF-8 bytes")
    return AppRequest(
        _u64(m[1], "app_request.request_id"), service, _bin(m[3], "app_request.body", payload_max)
    )


def _decode_app_response(m: list[object], payload_max: int) -> AppResponse:
    _arity(m, 5, "app_response")
    request_id = _u64(m[1], "app_response.request_id")
    ok = _bool(m[2], "app_response.ok")
    body = _bin(m[3], "app_response.body", payload_max)
    error = m[4]
    if type(error) is not str or len(error) > _ERROR_MAX:
        raise BadPacket(f"app_response.error: expected str of at most {_ERROR_MAX} characters")
    return AppResponse(request_id, ok, body, error)


_Decoder = Callable[[list[object], int], Message]

# Keyed by plain ints, not MessageType members, so a lookup with a decoded
# int matches by identity instead of calling IntEnum.__eq__.
_STREAM_DECODERS: dict[int, _Decoder] = {
    int(t): d
    for t, d in (
        (MessageType.PING, _decode_ping),
        (MessageType.PING_REQ, _decode_ping_req),
        (MessageType.ACK, _decode_ack),
        (MessageType.NACK, _decode_nack),
        (MessageType.SUSPECT, _decode_suspect),
        (MessageType.ALIVE, _decode_alive),
        (MessageType.DEAD, _decode_dead),
        (MessageType.LEAVE, _decode_leave),
        (MessageType.PUSH_PULL, _decode_push_pull),
        (MessageType.USER, _decode_user),
        (MessageType.KEY_OP, _decode_key_op),
        (MessageType.KEY_OP_RESULT, _decode_key_op_result),
        (MessageType.APP_REQUEST, _decode_app_request),
        (MessageType.APP_RESPONSE, _decode_app_response),
        (MessageType.USER_EVENT, _decode_user_event),
    )
}
# Push-pull, keyring operations and application traffic travel only on
# (mutually authenticated) streams; in a datagram they are rejected.
_STREAM_ONLY = (
    MessageType.PUSH_PULL,
    MessageType.KEY_OP,
    MessageType.KEY_OP_RESULT,
    MessageType.APP_REQUEST,
    MessageType.APP_RESPONSE,
)
_PACKET_DECODERS = {t: d for t, d in _STREAM_DECODERS.items() if t not in _STREAM_ONLY}


def _unpack(body: memoryview, limits: dict[str, int]) -> object:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, **limits)
    # msgpack documents that unpacking may raise exceptions outside its own
    # hierarchy and that catching Exception is the way to catch them all.
    except Exception as exc:
        raise BadPacket(f"invalid msgpack: {exc or type(exc).__name__}") from None


def _message_type(m: list[object]) -> int:
    if not m:
        raise BadPacket("message: empty array")
    mtype = m[0]
    if type(mtype) is not int:
        raise BadPacket(f"message type: expected int, got {_kind(mtype)}")
    return mtype


#####################################################################
# Decoding: entry points
#####################################################################


def decode_packet_untrusted(data: bytes) -> list[Message]:
    """Decode a UDP packet into its messages.

    Unknown message types are skipped, so a packet of only unknown types
    decodes to an empty list; extra trailing fields are ignored.

    Args:
        data: the datagram as received.

    Returns:
        The known messages, in packet order.

    Raises:
        BadPacket: for anything that is not a valid v1 plain packet; never
            any other exception.
    """
    size = len(data)
    if size > PACKET_MAX:
        raise BadPacket(f"packet of {size} bytes exceeds {PACKET_MAX}")
    if size < HEADER_SIZE:
        raise BadPacket(f"packet of {size} bytes is shorter than its header")
    if data[0] != WIRE_VERSION:
        raise BadPacket(f"unsupported wire version {data[0]}")
    envelope = data[1]
    if envelope != ENVELOPE_PLAIN:
        if envelope == ENVELOPE_AES_GCM:
            raise BadPacket("encrypted envelope not supported by this build")
        raise BadPacket(f"unknown envelope {envelope}")
    compound = _unpack(memoryview(data)[HEADER_SIZE:], _PACKET_LIMITS)
    if type(compound) is not list:
        raise BadPacket(f"compound: expected array, got {_kind(compound)}")
    if not compound:
        raise BadPacket("compound: empty")
    messages: list[Message] = []
    try:
        for m in compound:
            if type(m) is not list:
                raise BadPacket(f"message: expected array, got {_kind(m)}")
            mtype = _message_type(m)
            decode = _PACKET_DECODERS.get(mtype)
            if decode is not None:
                messages.append(decode(m, COMPOUND_BUDGET))
            elif mtype in _STREAM_ONLY:
                raise BadPacket(f"{MessageType(mtype).name.lower()}: only allowed on streams")
            # Else: a type from a newer protocol version; skip it.
    except _DECODE_ERRORS as exc:
        raise BadPacket(f"malformed message: {type(exc).__name__}: {exc}") from None
    return messages


def decode_stream_untrusted(data: bytes) -> Message:
    """Decode one stream frame (length prefix already removed).

    Args:
        data: the frame: version byte and one msgpack message.

    Returns:
        The message.

    Raises:
        BadPacket: for anything that is not exactly one known v1 message;
            never any other exception.
    """
    size = len(data)
    if size > STREAM_MAX:
        raise BadPacket(f"stream frame of {size} bytes exceeds {STREAM_MAX}")
    if size < 1:
        raise BadPacket("stream frame is empty")
    if data[0] != WIRE_VERSION:
        raise BadPacket(f"unsupported wire version {data[0]}")
    m = _unpack(memoryview(data)[1:], _STREAM_LIMITS)
    if type(m) is not list:
        raise BadPacket(f"message: expected array, got {_kind(m)}")
    try:
        mtype = _message_type(m)
        decode = _STREAM_DECODERS.get(mtype)
        if decode is None:
            raise BadPacket(f"unknown message type {mtype} in a stream frame")
        return decode(m, STREAM_MAX)
    except _DECODE_ERRORS as exc:
        raise BadPacket(f"malformed message: {type(exc).__name__}: {exc}") from None
