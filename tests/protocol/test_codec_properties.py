"""Property tests of the wire codec: round trips, and garbage in -> BadPacket out."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.core.codec import (
    COMPOUND_BUDGET,
    HEADER_SIZE,
    HOST_MAX,
    META_MAX,
    NODE_ID_MAX,
    PACKET_MAX,
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
    Leave,
    Message,
    Nack,
    Ping,
    PingReq,
    PushNodeState,
    PushPull,
    Suspect,
    UserMessage,
)
from meshd.core.types import MemberState, ProtocolRange
from meshd.errors import BadPacket

VECTORS = Path(__file__).parents[2] / "protocol" / "vectors"
SAMPLES = [
    bytes.fromhex(v["hex"])
    for name in ("valid.json", "invalid.json")
    for v in json.loads((VECTORS / name).read_text())
]

# Examples per test; the whole protocol test set stays well under 20 s.
FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])

########################################################################
# Strategies: every valid value of every message
########################################################################

node_ids = st.text(min_size=1, max_size=48).filter(lambda s: len(s.encode()) <= 128)
hosts = st.one_of(
    st.ip_addresses().map(str),
    st.text(min_size=1, max_size=255),
)
addresses = st.tuples(hosts, st.integers(0, 65535))
u64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
metas = st.binary(max_size=1024)
payloads = st.binary(max_size=COMPOUND_BUDGET)
protocols = st.builds(
    lambda a, b, current: ProtocolRange(min(a, b), max(a, b), current),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)
node_states = st.builds(
    PushNodeState,
    node=node_ids,
    address=addresses,
    incarnation=u64,
    state=st.sampled_from(MemberState),
    meta=metas,
    protocol=protocols,
)

MESSAGES: dict[str, st.SearchStrategy[Message]] = {
    "ping": st.builds(Ping, seq=u64, target=node_ids, source=node_ids),
    "ping_req": st.builds(
        PingReq,
        seq=u64,
        target=node_ids,
        target_address=addresses,
        source=node_ids,
        want_nack=st.booleans(),
    ),
    "ack": st.builds(Ack, seq=u64, payload=payloads),
    "nack": st.builds(Nack, seq=u64),
    "suspect": st.builds(Suspect, incarnation=u64, node=node_ids, accuser=node_ids),
    "alive": st.builds(
        Alive, incarnation=u64, node=node_ids, address=addresses, meta=metas, protocol=protocols
    ),
    "dead": st.builds(Dead, incarnation=u64, node=node_ids, accuser=node_ids),
    "leave": st.builds(Leave, incarnation=u64, node=node_ids),
    "push_pull": st.builds(
        PushPull,
        join=st.booleans(),
        checksum=u64,
        members=st.none() | st.lists(node_states, max_size=8).map(tuple),
    ),
    "user": st.builds(UserMessage, sender=node_ids, payload=payloads),
    "app_request": st.builds(
        AppRequest,
        request_id=u64,
        service=st.text(min_size=1, max_size=16),
        body=st.binary(max_size=2048),
    ),
    "app_response": st.builds(
        AppResponse,
        request_id=u64,
        ok=st.booleans(),
        body=st.binary(max_size=2048),
        error=st.text(max_size=256),
    ),
}
#: Stream-only types (SPEC.md §2.2): never in a compound.
STREAM_ONLY = ("push_pull", "app_request", "app_response")
packet_messages = st.one_of([s for name, s in MESSAGES.items() if name not in STREAM_ONLY])


def as_packet(encoded: list[bytes]) -> bytes:
    return encode_packet(encode_compound(encoded))


########################################################################
# Round trips
########################################################################


@pytest.mark.parametrize("kind", MESSAGES)
@FEW
@given(data=st.data())
def test_message_round_trip(kind: str, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[kind])
    assert decode_stream_untrusted(encode_stream(msg)) == msg
    encoded = encode_message(msg)
    if compound_header_size(1) + len(encoded) <= COMPOUND_BUDGET:
        if kind in STREAM_ONLY:
            with pytest.raises(BadPacket, match="only allowed on streams"):
                decode_packet_untrusted(as_packet([encoded]))
        else:
            assert decode_packet_untrusted(as_packet([encoded])) == [msg]


@MANY
@given(st.lists(packet_messages, min_size=1, max_size=40))
def test_compound_round_trip(messages: list[Message]) -> None:
    # Fill a packet the way the sender does: add messages while they fit.
    chosen: list[Message] = []
    parts: list[bytes] = []
    for msg in messages:
        encoded = encode_message(msg)
        size = compound_header_size(len(parts) + 1) + sum(map(len, parts)) + len(encoded)
        if size <= COMPOUND_BUDGET:
            chosen.append(msg)
            parts.append(encoded)
    if not parts:
        return
    packet = as_packet(parts)
    assert len(packet) <= PACKET_MAX
    assert decode_packet_untrusted(packet) == chosen


########################################################################
# Garbage never raises anything but BadPacket
########################################################################


def assert_within_spec(value: Message | PushNodeState) -> None:
    """Check the limits of SPEC.md section 4.1 on an accepted message, field by field."""
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        if field.name in ("seq", "incarnation", "checksum", "request_id", "ltime"):
            assert type(item) is int
            assert 0 <= item < 2**64
        elif field.name in ("target", "source", "node", "accuser", "sender", "origin"):
            assert type(item) is str
            assert 1 <= len(item.encode()) <= NODE_ID_MAX
        elif field.name in ("address", "target_address"):
            host, port = item
            assert type(host) is str
            assert 1 <= len(host) <= HOST_MAX
            assert type(port) is int
            assert 0 <= port <= 65535
        elif field.name == "meta":
            assert type(item) is bytes
            assert len(item) <= META_MAX
        elif field.name in ("payload", "body"):
            assert type(item) is bytes
        elif field.name == "service":
            assert type(item) is str
            assert 1 <= len(item.encode()) <= 64
        elif field.name in ("want_nack", "join", "ok"):
            assert type(item) is bool
        elif field.name == "op":
            assert item in ("list", "install", "use", "remove")
        elif field.name == "key":
            assert type(item) is bytes
            assert len(item) in (0, 32)
        elif field.name == "error":
            assert type(item) is str
            assert len(item) <= 256
        elif field.name == "fingerprints":
            assert type(item) is tuple
            assert all(type(fp) is str for fp in item)
        elif field.name == "state":
            assert type(item) is MemberState
        elif field.name == "protocol":
            versions = (item.minimum, item.maximum, item.current)
            assert all(type(v) is int and 0 <= v <= 255 for v in versions)
            assert item.minimum <= item.maximum
        elif field.name == "members":
            assert item is None or type(item) is tuple
            for entry in item or ():
                assert_within_spec(entry)
        else:
            raise AssertionError(f"unchecked field {field.name}")


def check_only_bad_packet_escapes(data: bytes) -> None:
    """Decode ``data`` as a packet and as a stream frame; only BadPacket may escape.

    Whatever is accepted must be a proper message: within the spec's limits,
    and it re-encodes and decodes back to itself.
    """
    accepted: list[Message] = []
    try:
        accepted += decode_packet_untrusted(data)
    except BadPacket:
        pass
    try:
        accepted.append(decode_stream_untrusted(data))
    except BadPacket:
        pass
    for msg in accepted:
        assert_within_spec(msg)
        assert decode_stream_untrusted(encode_stream(msg)) == msg


@MANY
@given(st.binary(max_size=PACKET_MAX + 10))
def test_random_bytes(data: bytes) -> None:
    check_only_bad_packet_escapes(data)


@MANY
@given(st.binary(max_size=300))
def test_random_bodies_behind_valid_headers(body: bytes) -> None:
    check_only_bad_packet_escapes(bytes([WIRE_VERSION, 0]) + body)
    check_only_bad_packet_escapes(bytes([WIRE_VERSION]) + body)


# Arbitrary msgpack values, to get past msgpack into the field checks; the
# sized str/bin leaves sit around the limits (node id 128 bytes, host 255
# characters, meta 1024 bytes).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([-1, 4, 256, 65536, 2**64 - 1])
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.integers(0, 300).map(lambda n: "é" * (n // 2) if n % 2 else "x" * n)
    | st.binary(max_size=8)
    | st.integers(1020, 1030).map(bytes),
    lambda children: (
        st.lists(children, max_size=7) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@FEW
@given(st.integers(0, 14), st.lists(msgpack_values, max_size=7))
def test_random_fields(mtype: int, fields: list[object]) -> None:
    message = [mtype, *fields]
    check_only_bad_packet_escapes(bytes([WIRE_VERSION, 0]) + msgpack.packb([message], use_bin_type=True))
    check_only_bad_packet_escapes(bytes([WIRE_VERSION]) + msgpack.packb(message, use_bin_type=True))


def replace_one(data: st.DataObject, value: object, top: bool = True) -> object:
    """``value`` with one item, at any depth, replaced by an arbitrary msgpack value."""
    if isinstance(value, list) and value and (top or data.draw(st.booleans())):
        copy = list(value)
        at = data.draw(st.integers(0, len(copy) - 1))
        copy[at] = replace_one(data, copy[at], top=False)
        return copy
    return data.draw(msgpack_values)


@MANY
@given(st.sampled_from(list(MESSAGES.values())).flatmap(lambda s: s), st.data())
def test_valid_message_with_one_bad_value(msg: Message, data: st.DataObject) -> None:
    message = replace_one(data, msgpack.unpackb(encode_message(msg)))
    check_only_bad_packet_escapes(bytes([WIRE_VERSION, 0]) + msgpack.packb([message], use_bin_type=True))
    check_only_bad_packet_escapes(bytes([WIRE_VERSION]) + msgpack.packb(message, use_bin_type=True))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 8)),
    st.tuples(st.just("set"), st.integers(0, 2**16), st.integers(0, 255)),
)


def mutate(data: bytes, op: tuple[object, ...]) -> bytes:
    if not data:
        return data
    kind, at, *args = op
    assert isinstance(at, int)
    at %= len(data)
    if kind == "flip":
        [bit] = args
        assert isinstance(bit, int)
        return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        [extra] = args
        assert isinstance(extra, bytes)
        return data[:at] + extra + data[at:]
    if kind == "delete":
        [count] = args
        assert isinstance(count, int)
        return data[:at] + data[at + count :]
    [value] = args
    assert isinstance(value, int)
    return data[:at] + bytes([value]) + data[at + 1 :]


@MANY
@given(st.sampled_from(SAMPLES), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_vectors(sample: bytes, ops: list[tuple[object, ...]]) -> None:
    for op in ops:
        sample = mutate(sample, op)
    check_only_bad_packet_escapes(sample)
    # Also behind the other transport's header, so packet bytes reach the
    # stream decoder's message checks and vice versa.
    check_only_bad_packet_escapes(bytes([WIRE_VERSION]) + sample[HEADER_SIZE:])
    check_only_bad_packet_escapes(bytes([WIRE_VERSION, 0]) + sample[1:])
