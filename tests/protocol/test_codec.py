"""The wire codec against the golden vectors of protocol/vectors/, plus its edges.

The vectors are written by protocol/vectors/generate.py with msgpack alone, so
these tests check meshd's codec against the spec, not against itself.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest

from meshd.core import codec
from meshd.core.codec import (
    COMPOUND_BUDGET,
    ENVELOPE_RESERVE,
    HEADER_SIZE,
    MEMBERS_MAX,
    PACKET_MAX,
    STREAM_MAX,
    WIRE_VERSION,
    compound_header_size,
    decode_packet_untrusted,
    decode_stream_untrusted,
    encode_compound,
    encode_message,
    encode_packet,
    encode_stream,
)
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
from meshd.core.types import MemberState, NodeId, ProtocolRange
from meshd.errors import BadPacket, LocalProtocolError

VECTORS = Path(__file__).parents[2] / "protocol" / "vectors"
VALID: list[dict[str, Any]] = json.loads((VECTORS / "valid.json").read_text())
INVALID: list[dict[str, Any]] = json.loads((VECTORS / "invalid.json").read_text())


def by_name(vectors: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(v for v in vectors if v["name"] == name)


def decode(vector: dict[str, Any]) -> list[Message]:
    data = bytes.fromhex(vector["hex"])
    if vector["transport"] == "packet":
        return decode_packet_untrusted(data)
    return [decode_stream_untrusted(data)]


########################################################################
# JSON rendering of messages (SPEC.md, "Test vectors")
########################################################################

_CLASSES: dict[str, type] = {
    "ping": Ping,
    "ping_req": PingReq,
    "ack": Ack,
    "nack": Nack,
    "suspect": Suspect,
    "alive": Alive,
    "dead": Dead,
    "leave": Leave,
    "push_pull": PushPull,
    "user": UserMessage,
    "key_op": KeyOp,
    "key_op_result": KeyOpResult,
    "app_request": AppRequest,
    "app_response": AppResponse,
    "user_event": UserEvent,
}
_NAMES = {cls: name for name, cls in _CLASSES.items()}


def _value_from_json(field: str, value: Any) -> Any:
    if field in ("address", "target_address"):
        return (value["host"], value["port"])
    if field in ("meta", "payload", "key", "body"):
        return bytes.fromhex(value)
    if field == "fingerprints":
        return tuple(value)
    if field == "protocol":
        return ProtocolRange(value["minimum"], value["maximum"], value["current"])
    if field == "state":
        return MemberState[value.upper()]
    if field == "members":
        return None if value is None else tuple(_entry_from_json(e) for e in value)
    return value


def _entry_from_json(entry: dict[str, Any]) -> PushNodeState:
    return PushNodeState(**{k: _value_from_json(k, v) for k, v in entry.items()})


def message_from_json(rendered: dict[str, Any]) -> Message:
    fields = {k: _value_from_json(k, v) for k, v in rendered.items() if k != "type"}
    message: Message = _CLASSES[rendered["type"]](**fields)
    return message


def _value_to_json(field: str, value: Any) -> Any:
    if field in ("address", "target_address"):
        return {"host": value[0], "port": value[1]}
    if field in ("meta", "payload", "key", "body"):
        return value.hex()
    if field == "fingerprints":
        return list(value)
    if field == "protocol":
        return {"minimum": value.minimum, "maximum": value.maximum, "current": value.current}
    if field == "state":
        return value.name.lower()
    if field == "members":
        return None if value is None else [_fields_to_json(e) for e in value]
    return value


def _fields_to_json(obj: Any) -> dict[str, Any]:
    return {f.name: _value_to_json(f.name, getattr(obj, f.name)) for f in attrs.fields(type(obj))}


def message_to_json(msg: Message) -> dict[str, Any]:
    return {"type": _NAMES[type(msg)], **_fields_to_json(msg)}


########################################################################
# Vectors
########################################################################


def test_vectors_are_reproducible() -> None:
    # generate.py and the checked-in files must agree, so that reviewing the
    # generator reviews the vectors.
    spec = importlib.util.spec_from_file_location("generate", VECTORS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.valid_vectors() == VALID
    assert generate.invalid_vectors() == INVALID


def test_vectors_cover_every_message_type() -> None:
    seen = {d["type"] for v in VALID for d in v["decoded"]}
    assert seen == {t.name.lower() for t in MessageType}
    push_pulls = [d for v in VALID for d in v["decoded"] if d["type"] == "push_pull"]
    assert any(d["members"] is None for d in push_pulls)
    assert any(d["members"] for d in push_pulls)
    assert all(v["transport"] == "stream" for v in VALID if "push_pull" in v["name"])


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_to_its_meaning(vector: dict[str, Any]) -> None:
    messages = decode(vector)
    assert [message_to_json(m) for m in messages] == vector["decoded"]
    assert messages == [message_from_json(d) for d in vector["decoded"]]


@pytest.mark.parametrize(
    "vector", [v for v in VALID if v["canonical"]], ids=[v["name"] for v in VALID if v["canonical"]]
)
def test_canonical_vector_reencodes_to_same_bytes(vector: dict[str, Any]) -> None:
    messages = [message_from_json(d) for d in vector["decoded"]]
    if vector["transport"] == "packet":
        encoded = encode_packet(encode_compound([encode_message(m) for m in messages]))
    else:
        [message] = messages
        encoded = encode_stream(message)
    assert encoded.hex() == vector["hex"]


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_rejected(vector: dict[str, Any]) -> None:
    with pytest.raises(BadPacket):
        decode(vector)


# What the BadPacket message says, for a selection of invalid vectors: the
# field at fault, or the spec's wording.
ERROR_TEXTS = {
    "unknown wire version": "unsupported wire version 2",
    "stream unknown wire version": "unsupported wire version 2",
    "encrypted envelope": "encrypted envelope not supported by this build",
    "unknown envelope": "unknown envelope 7",
    "oversized packet": "1401 bytes exceeds 1400",
    "empty compound": "compound: empty",
    "push_pull in a packet": "push_pull: only allowed on streams",
    "stream unknown type": "unknown message type 200",
    "str seq": "ping.seq: expected int, got str",
    "bool seq": "ping.seq: expected int, got bool",
    "negative incarnation": "suspect.incarnation",
    "int node id": "ping.target: expected str",
    "node id of 130 UTF-8 bytes": "leave.node: node id must be 1..128 UTF-8 bytes",
    "bad state 9": "push_pull.members[0].state",
    "member missing fields": "push_pull.members[0]: expected 6 items, got 5",
    "bad port 70000": "alive.address.port",
    "empty host": "alive.address.host",
    "meta as str": "alive.meta: expected bin, got str",
    "protocol min > max": "alive.protocol: min 2 > max 1",
    "want_nack int": "ping_req.want_nack",
    "join nil": "push_pull.join: expected bool, got nil",
    "missing fields ping": "ping: expected 4 items, got 3",
    "oversized stream member meta": "push_pull.members[0].meta: 1025 bytes exceeds 1024",
    "user payload over budget in a packet": "user.payload: 1349 bytes exceeds 1348",
    "app_request in a packet": "app_request: only allowed on streams",
    "app_response in a packet": "app_response: only allowed on streams",
    "app_request service of 66 UTF-8 bytes": "app_request.service: must be 1..64 UTF-8 bytes",
    "app_request str body": "app_request.body: expected bin, got str",
    "app_response error too long": "app_response.error: expected str of at most 256",
}


@pytest.mark.parametrize(("name", "text"), ERROR_TEXTS.items())
def test_bad_packet_names_the_problem(name: str, text: str) -> None:
    with pytest.raises(BadPacket, match=re.escape(text)):
        decode(by_name(INVALID, name))


########################################################################
# Constants and compound building
########################################################################


def test_constants() -> None:
    assert (WIRE_VERSION, PACKET_MAX, HEADER_SIZE, ENVELOPE_RESERVE) == (1, 1400, 2, 50)
    assert COMPOUND_BUDGET == 1348
    assert STREAM_MAX == 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("count", "size", "first_byte"),
    [(0, 1, 0x90), (1, 1, 0x91), (15, 1, 0x9F), (16, 3, 0xDC), (65535, 3, 0xDC), (65536, 5, 0xDD)],
)
def test_compound_header_size(count: int, size: int, first_byte: int) -> None:
    assert compound_header_size(count) == size
    if count == 0:
        return  # the protocol has no empty compound; see test below
    part = encode_message(Nack(1))
    compound = encode_compound([part] * count)
    assert compound[0] == first_byte
    assert len(compound) == size + count * len(part)
    assert msgpack.unpackb(compound) == [[MessageType.NACK, 1]] * count


@pytest.mark.parametrize("count", [-1, 2**32])
def test_compound_header_size_rejects_impossible_counts(count: int) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        compound_header_size(count)


def test_compound_header_size_max() -> None:
    assert compound_header_size(2**32 - 1) == 5


def test_encode_compound_refuses_empty() -> None:
    with pytest.raises(LocalProtocolError):
        encode_compound([])


def test_encode_packet_enforces_budget() -> None:
    # A user message whose compound is exactly the budget, then one byte more.
    overhead = len(encode_compound([encode_message(UserMessage(NodeId("a"), bytes(300)))])) - 300
    biggest = UserMessage(NodeId("a"), bytes(COMPOUND_BUDGET - overhead))
    fits = encode_compound([encode_message(biggest)])
    assert len(fits) == COMPOUND_BUDGET
    packet = encode_packet(fits)
    assert packet[:2] == bytes([WIRE_VERSION, codec.ENVELOPE_PLAIN])
    assert len(packet) == PACKET_MAX - ENVELOPE_RESERVE
    assert decode_packet_untrusted(packet) == [biggest]
    with pytest.raises(LocalProtocolError, match="budget"):
        encode_packet(fits + b"\xc0")


def test_encode_stream_enforces_stream_max() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_stream(UserMessage(NodeId("a"), bytes(STREAM_MAX)))


def test_encode_message_rejects_non_messages() -> None:
    with pytest.raises(TypeError, match="not a message"):
        encode_message(ProtocolRange())  # type: ignore[arg-type]


########################################################################
# Decoder edges the vectors cannot hold
########################################################################


def test_oversized_stream_frame_rejected() -> None:
    frame = encode_stream(UserMessage(NodeId("a"), bytes(STREAM_MAX - 100)))
    assert decode_stream_untrusted(frame) == UserMessage(NodeId("a"), bytes(STREAM_MAX - 100))
    with pytest.raises(BadPacket, match="exceeds"):
        decode_stream_untrusted(frame + bytes(100))


def test_push_pull_member_cap() -> None:
    entry: bytes = msgpack.packb(["n", ["h", 1], 1, 0, b"", [1, 1, 1]], use_bin_type=True)

    def frame(count: int) -> bytes:
        # [PUSH_PULL, false, 1, <array 32 of count entries>]
        head = bytes([WIRE_VERSION, 0x94, MessageType.PUSH_PULL, 0xC2, 0x01, 0xDD])
        return head + count.to_bytes(4, "big") + entry * count

    pp = decode_stream_untrusted(frame(3))
    assert isinstance(pp, PushPull)
    assert pp.members is not None
    assert len(pp.members) == 3
    # Every entry is valid: only the cap can reject this.
    with pytest.raises(BadPacket):
        decode_stream_untrusted(frame(MEMBERS_MAX + 1))


def test_deep_nesting_rejected() -> None:
    # Nesting inside a skipped message still has to be bounded.
    packet = bytes([WIRE_VERSION, 0, 0x91, 0x92, 200]) + b"\x91" * 1300 + b"\xc0"
    with pytest.raises(BadPacket):
        decode_packet_untrusted(packet)


def test_protocol_range_cache_checks_types_first() -> None:
    # (True, 1, 1) == (1, 1, 1) as a dict key; the cache must not let it in.
    good = Alive(1, NodeId("a"), ("h", 1), b"", ProtocolRange(1, 1, 1))
    assert decode_packet_untrusted(encode_packet(encode_compound([encode_message(good)]))) == [good]
    for bad in ([True, 1, 1], [1.0, 1, 1]):
        body = msgpack.packb([[MessageType.ALIVE, 1, "a", ["h", 1], b"", bad]], use_bin_type=True)
        with pytest.raises(BadPacket, match=r"alive\.protocol"):
            decode_packet_untrusted(bytes([WIRE_VERSION, 0]) + body)


def test_protocol_range_cache_is_bounded() -> None:
    for high in range(200):
        alive = Alive(1, NodeId("a"), ("h", 1), b"", ProtocolRange(0, high, 0))
        [decoded] = decode_packet_untrusted(encode_packet(encode_compound([encode_message(alive)])))
        assert decoded == alive
    assert len(codec._RANGES) <= codec._RANGES_MAX


def test_decoded_values_have_plain_types() -> None:
    vector = by_name(VALID, "push_pull join with members")
    [pp] = decode(vector)
    assert isinstance(pp, PushPull)
    assert pp.members is not None
    entry = pp.members[0]
    assert type(entry.state) is MemberState
    assert type(entry.address) is tuple
    assert type(pp.members) is tuple


def test_packet_of_only_unknown_types_is_empty() -> None:
    assert decode(by_name(VALID, "only unknown types")) == []
