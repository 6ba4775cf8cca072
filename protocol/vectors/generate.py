"""Write the wire v1 golden vectors: valid.json and invalid.json next to this file.

Built with msgpack alone, from protocol/SPEC.md, so the vectors stay
independent of meshd's codec (the code they test). The checked-in hex is the
source of truth; rerun this only to add vectors, and review the diff:

    python protocol/vectors/generate.py

Vector format (see SPEC.md, "Test vectors"):

- valid.json: ``{"name", "transport", "hex", "decoded", "canonical", "note"}``.
  ``transport`` is "packet" or "stream". ``decoded`` is the list of messages
  the bytes decode to (one for a stream), each an object with ``type`` and
  the fields of SPEC.md; bin values are hex strings, addresses
  ``{"host", "port"}``, protocol ranges ``{"minimum", "maximum", "current"}``
  and member states their names. ``canonical`` is true when encoding
  ``decoded`` must give exactly ``hex`` back.
- invalid.json: ``{"name", "transport", "hex", "reason"}``; every decoder
  must reject these bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack

HERE = Path(__file__).parent

(
    PING,
    PING_REQ,
    ACK,
    NACK,
    SUSPECT,
    ALIVE,
    DEAD,
    LEAVE,
    PUSH_PULL,
    USER,
    KEY_OP,
    KEY_OP_RESULT,
    APP_REQUEST,
    APP_RESPONSE,
    USER_EVENT,
) = range(1, 16)
STATES = ["alive", "suspect", "dead", "left"]
PACKET_MAX = 1400
COMPOUND_BUDGET = 1348


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def array(*packed: bytes) -> bytes:
    """A msgpack array of already-packed items (for hand-made bad items)."""
    assert len(packed) <= 15
    return bytes([0x90 | len(packed)]) + b"".join(packed)


def packet_bytes(body: bytes) -> str:
    return (bytes([1, 0]) + body).hex()


def packet(*messages: list[object]) -> str:
    return packet_bytes(pack(list(messages)))


def stream(message: object) -> str:
    return (bytes([1]) + pack(message)).hex()


# Each builder returns (wire array, JSON rendering).


def ping(seq: int, target: str, source: str) -> tuple[list[object], dict[str, object]]:
    return [PING, seq, target, source], {
        "type": "ping",
        "seq": seq,
        "target": target,
        "source": source,
    }


def ping_req(
    seq: int, target: str, host: str, port: int, source: str, want_nack: bool
) -> tuple[list[object], dict[str, object]]:
    return [PING_REQ, seq, target, [host, port], source, want_nack], {
        "type": "ping_req",
        "seq": seq,
        "target": target,
        "target_address": {"host": host, "port": port},
        "source": source,
        "want_nack": want_nack,
    }


def ack(seq: int, payload: bytes) -> tuple[list[object], dict[str, object]]:
    return [ACK, seq, payload], {"type": "ack", "seq": seq, "payload": payload.hex()}


def nack(seq: int) -> tuple[list[object], dict[str, object]]:
    return [NACK, seq], {"type": "nack", "seq": seq}


def accusation(
    kind: int, name: str, incarnation: int, node: str, accuser: str
) -> tuple[list[object], dict[str, object]]:
    return [kind, incarnation, node, accuser], {
        "type": name,
        "incarnation": incarnation,
        "node": node,
        "accuser": accuser,
    }


def alive(
    incarnation: int,
    node: str,
    host: str,
    port: int,
    meta: bytes,
    protocol: tuple[int, int, int] = (1, 1, 1),
) -> tuple[list[object], dict[str, object]]:
    return [ALIVE, incarnation, node, [host, port], meta, list(protocol)], {
        "type": "alive",
        "incarnation": incarnation,
        "node": node,
        "address": {"host": host, "port": port},
        "meta": meta.hex(),
        "protocol": dict(zip(("minimum", "maximum", "current"), protocol, strict=True)),
    }


def leave(incarnation: int, node: str) -> tuple[list[object], dict[str, object]]:
    return [LEAVE, incarnation, node], {"type": "leave", "incarnation": incarnation, "node": node}


def member(
    node: str, host: str, port: int, incarnation: int, state: int, meta: bytes
) -> tuple[list[object], dict[str, object]]:
    return [node, [host, port], incarnation, state, meta, [1, 1, 1]], {
        "node": node,
        "address": {"host": host, "port": port},
        "incarnation": incarnation,
        "state": STATES[state],
        "meta": meta.hex(),
        "protocol": {"minimum": 1, "maximum": 1, "current": 1},
    }


def push_pull(
    join: bool, checksum: int, members: list[tuple[list[object], dict[str, object]]] | None
) -> tuple[list[object], dict[str, object]]:
    wire = None if members is None else [w for w, _ in members]
    shown = None if members is None else [d for _, d in members]
    return [PUSH_PULL, join, checksum, wire], {
        "type": "push_pull",
        "join": join,
        "checksum": checksum,
        "members": shown,
    }


def user(sender: str, payload: bytes) -> tuple[list[object], dict[str, object]]:
    return [USER, sender, payload], {"type": "user", "sender": sender, "payload": payload.hex()}


def key_op(op: str, key: bytes) -> tuple[list[object], dict[str, object]]:
    return [KEY_OP, op, key], {"type": "key_op", "op": op, "key": key.hex()}


def key_op_result(ok: bool, error: str, fps: list[str]) -> tuple[list[object], dict[str, object]]:
    return [KEY_OP_RESULT, ok, error, fps], {
        "type": "key_op_result",
        "ok": ok,
        "error": error,
        "fingerprints": fps,
    }


def app_request(
    request_id: int, service: str, body: bytes
) -> tuple[list[object], dict[str, object]]:
    return [APP_REQUEST, request_id, service, body], {
        "type": "app_request",
        "request_id": request_id,
        "service": service,
        "body": body.hex(),
    }


def app_response(
    request_id: int, ok: bool, body: bytes, error: str
) -> tuple[list[object], dict[str, object]]:
    return [APP_RESPONSE, request_id, ok, body, error], {
        "type": "app_response",
        "request_id": request_id,
        "ok": ok,
        "body": body.hex(),
        "error": error,
    }


def user_event(origin: str, ltime: int, payload: bytes) -> tuple[list[object], dict[str, object]]:
    return [USER_EVENT, origin, ltime, payload], {
        "type": "user_event",
        "origin": origin,
        "ltime": ltime,
        "payload": payload.hex(),
    }


def two_users_filler(size: int) -> int:
    """Payload length of user "b" so that users "a" (700 bytes) + "b" fill ``size`` bytes."""
    # Both payloads are 256+ bytes, so each takes a 3-byte bin 16 header.
    base = len(bytes.fromhex(packet([USER, "a", b"\x11" * 700], [USER, "b", b"\x22" * 256])))
    filler = 256 + size - base
    assert 256 <= filler <= COMPOUND_BUDGET
    assert (
        len(bytes.fromhex(packet([USER, "a", b"\x11" * 700], [USER, "b", b"\x22" * filler])))
        == size
    )
    return filler


def valid_packet(
    name: str, *built: tuple[list[object], dict[str, object]], note: str
) -> dict[str, object]:
    return {
        "name": name,
        "transport": "packet",
        "hex": packet(*(w for w, _ in built)),
        "decoded": [d for _, d in built],
        "canonical": True,
        "note": note,
    }


def valid_stream(
    name: str, built: tuple[list[object], dict[str, object]], note: str
) -> dict[str, object]:
    wire, shown = built
    return {
        "name": name,
        "transport": "stream",
        "hex": stream(wire),
        "decoded": [shown],
        "canonical": True,
        "note": note,
    }


def valid_vectors() -> list[dict[str, object]]:
    members = [
        member("node-a", "10.0.0.1", 7946, 3, 0, b"role=web"),
        member("node-b", "10.0.0.2", 7946, 9, 1, b""),
        member("node-c", "fd00::3", 7946, 1, 2, b"\x00\x01"),
        member("node-d", "node-d.example", 17946, 4, 3, b""),
    ]
    typical = [ping(12345, "node-b", "node-a")] + [
        alive(7 + i, f"node-{i}", f"10.0.0.{i}", 7946, b"role=web") for i in range(3)
    ]
    vectors = [
        valid_packet("ping", ping(7, "b", "a"), note="direct probe"),
        valid_packet(
            "ping_req",
            ping_req(8, "node-c", "10.0.0.3", 7946, "node-a", True),
            note="indirect probe, nack wanted",
        ),
        valid_packet(
            "ping_req ipv6 no nack",
            ping_req(2**32, "node-c", "fd00::3", 65535, "node-a", False),
            note="IPv6 host without brackets; seq 2**32 needs a uint 64; no nack wanted",
        ),
        valid_packet("ack", ack(7, b"\x01\x02\x03"), note="ack with a payload"),
        valid_packet("ack empty payload", ack(0, b""), note="payload is an empty bin, not nil"),
        valid_packet("nack", nack(8), note=""),
        valid_packet("suspect", accusation(SUSPECT, "suspect", 3, "node-b", "node-a"), note=""),
        valid_packet(
            "alive",
            alive(4, "node-a", "10.0.0.1", 7946, b"dc=eu1", (1, 2, 1)),
            note="protocol range 1..2, speaking 1",
        ),
        valid_packet("dead", accusation(DEAD, "dead", 5, "node-b", "node-a"), note=""),
        valid_packet("leave", leave(6, "node-a"), note=""),
        valid_packet("user", user("node-a", b"hello"), note="opaque application payload"),
        valid_packet(
            "compound ping + 3 alive",
            *typical,
            note="a typical probe packet with piggybacked gossip",
        ),
        valid_packet(
            "compound of every packet type",
            ping(1, "b", "a"),
            ping_req(2, "c", "10.0.0.3", 7946, "a", True),
            ack(3, b""),
            nack(4),
            accusation(SUSPECT, "suspect", 1, "c", "a"),
            alive(2, "c", "10.0.0.3", 7946, b""),
            accusation(DEAD, "dead", 1, "d", "a"),
            leave(9, "e"),
            user("a", b"\xff"),
            note="nine messages in one packet",
        ),
        valid_packet(
            "boundaries",
            ping(2**64 - 1, "é" * 64, "x" * 128),
            alive(2**64 - 1, "ü" * 64, "h" * 255, 0, b"m" * 100, (0, 255, 255)),
            note="max uint64 seq/incarnation, 128-byte node ids (2-byte characters "
            "and ASCII), 255-char host, port 0, protocol 0..255",
        ),
        valid_stream(
            "push_pull checksum only",
            push_pull(False, 0x0123456789ABCDEF, None),
            note="periodic exchange opener: members nil, only the checksum",
        ),
        valid_stream(
            "push_pull join with members",
            push_pull(True, 2**64 - 1, members),
            note="join: full state, one member per state",
        ),
        valid_stream(
            "push_pull full state reply",
            push_pull(False, 42, members[:1]),
            note="reply when checksums differ",
        ),
        valid_stream(
            "push_pull empty members",
            push_pull(False, 0, []),
            note="full state of nobody: empty array, not nil",
        ),
        valid_stream("stream ping", ping(7, "b", "a"), note="any known type may use a stream"),
        valid_stream(
            "stream alive max meta",
            alive(1, "node-a", "10.0.0.1", 7946, b"\xab" * 1024),
            note="meta of exactly 1024 bytes",
        ),
        valid_stream("key_op list", key_op("list", b""), note="ask a member for its keys"),
        valid_stream(
            "key_op install",
            key_op("install", bytes(range(32))),
            note="install a 32-byte key on the receiving member",
        ),
        valid_stream(
            "key_op_result",
            key_op_result(True, "", ["a44d4482b5f0e1d2", "0123456789abcdef"]),
            note="answer: installed keys' fingerprints, primary first",
        ),
        valid_stream(
            "key_op_result refused",
            key_op_result(False, "cannot remove the primary key", ["a44d4482b5f0e1d2"]),
            note="a refused operation says why",
        ),
        valid_stream(
            "stream user large payload",
            user("node-a", b"\x5a" * 4000),
            note="payloads above the packet budget are fine on streams",
        ),
        valid_stream(
            "app_request",
            app_request(1, "kv", b"\x93\x01\x02\x03"),
            note="first request of a session: opens it (section 3)",
        ),
        valid_stream(
            "app_request empty body",
            app_request(0, "_echo", b""),
            note="request id 0 is valid; an empty body is a bin of length 0",
        ),
        valid_stream(
            "app_request boundaries",
            app_request(2**64 - 1, "é" * 32, b"\x00" * 70000),
            note="max uint64 request id, 64-byte service name (2-byte characters), "
            "a body above 64 KiB (bin 32)",
        ),
        valid_stream(
            "app_response ok",
            app_response(1, True, b"value", ""),
            note="the answer to request 1",
        ),
        valid_stream(
            "app_response error",
            app_response(7, False, b"", "unknown service 'kv'"),
            note="a refusal: ok false, empty body, the reason",
        ),
        valid_stream(
            "app_response error of 256 characters",
            app_response(2**40, False, b"", "é" * 256),
            note="error limit counts characters, not bytes",
        ),
        valid_packet(
            "user_event",
            user_event("node-a", 42, b"\x93\xa5hello\xa4ping\xc4\x00"),
            note="a user event at Lamport time 42; receivers re-gossip it once",
        ),
        valid_packet(
            "user_event with alive",
            alive(4, "node-a", "10.0.0.1", 7946, b"", (1, 1, 1)),
            user_event("node-b", 2**64 - 1, b""),
            note="piggybacked like any gossip; ltime is a uint64, the payload may be empty",
        ),
    ]

    # Forward compatibility: not canonical, the re-encoding drops the extras.
    skipped = ping(7, "b", "a")
    vectors.append(
        {
            "name": "unknown type skipped",
            "transport": "packet",
            "hex": packet([200, "from the future", {"k": [1, 2]}], skipped[0]),
            "decoded": [skipped[1]],
            "canonical": False,
            "note": "type 200 is unknown to v1 and skipped; the ping is kept",
        }
    )
    vectors.append(
        {
            "name": "only unknown types",
            "transport": "packet",
            "hex": packet([199], [65535, b"x"]),
            "decoded": [],
            "canonical": False,
            "note": "a packet of only unknown types decodes to no messages",
        }
    )
    vectors.append(
        {
            "name": "extra trailing fields",
            "transport": "packet",
            "hex": packet([*skipped[0], "new field", 42, None]),
            "decoded": [skipped[1]],
            "canonical": False,
            "note": "fields appended by a newer version are ignored",
        }
    )
    entry_wire, entry_shown = member("node-a", "10.0.0.1", 7946, 3, 0, b"")
    pp_wire, pp_shown = push_pull(True, 1, [([*entry_wire, {"zone": "b"}], entry_shown)])
    vectors.append(
        {
            "name": "push_pull extra fields",
            "transport": "stream",
            "hex": stream([*pp_wire, True]),
            "decoded": [pp_shown],
            "canonical": False,
            "note": "extra fields after a member entry and after the message are ignored",
        }
    )
    # The largest packet a receiver accepts is PACKET_MAX bytes, even though
    # a sender keeps its compound within COMPOUND_BUDGET (so not canonical).
    first, second = user("a", b"\x11" * 700), user("b", b"\x22" * two_users_filler(PACKET_MAX))
    full = packet(first[0], second[0])
    vectors.append(
        {
            "name": "packet of exactly 1400 bytes",
            "transport": "packet",
            "hex": full,
            "decoded": [first[1], second[1]],
            "canonical": False,
            "note": "receivers accept up to 1400 bytes; senders stop at the compound budget",
        }
    )
    return vectors


def replaced(wire: list[object], index: int, value: object) -> list[object]:
    """A copy of ``wire`` with item ``index`` set to ``value``."""
    copy = list(wire)
    copy[index] = value
    return copy


def invalid_vectors() -> list[dict[str, str]]:
    good_packet = bytes.fromhex(
        packet(
            [PING, 12345, "node-b", "node-a"],
            [ALIVE, 7, "node-0", ["10.0.0.0", 7946], b"role=web", [1, 1, 1]],
        )
    )
    good_stream = bytes.fromhex(
        stream([PUSH_PULL, True, 1, [["node-a", ["10.0.0.1", 7946], 3, 0, b"meta", [1, 1, 1]]]])
    )
    filler = two_users_filler(PACKET_MAX + 1)
    oversized = packet([USER, "a", b"\x11" * 700], [USER, "b", b"\x22" * filler])
    a_ping: list[object] = [PING, 7, "b", "a"]
    an_alive: list[object] = [ALIVE, 1, "a", ["h", 1], b"", [1, 1, 1]]
    an_entry: list[object] = ["node-a", ["10.0.0.1", 7946], 3, 0, b"", [1, 1, 1]]

    def alive_with(index: int, value: object) -> str:
        return packet(replaced(an_alive, index, value))

    def entry_with(index: int, value: object) -> str:
        return stream([PUSH_PULL, True, 1, [replaced(an_entry, index, value)]])

    cases: list[tuple[str, str, str, str]] = [
        # Framing.
        ("empty packet", "packet", "", "no header"),
        ("empty stream", "stream", "", "no version byte"),
        ("packet version byte only", "packet", "01", "truncated header"),
        ("packet header only", "packet", "0100", "no compound"),
        ("stream version byte only", "stream", "01", "no message"),
        ("oversized packet", "packet", oversized, "1401 bytes > PACKET_MAX"),
        ("unknown wire version", "packet", "02" + good_packet[1:].hex(), "version 2"),
        ("wire version 0", "packet", "00" + good_packet[1:].hex(), "version 0"),
        ("stream unknown wire version", "stream", "02" + good_stream[1:].hex(), "version 2"),
        (
            "encrypted envelope",
            "packet",
            "0101" + good_packet[2:].hex(),
            "AES-GCM envelope is reserved, not in this build",
        ),
        ("unknown envelope", "packet", "0107" + good_packet[2:].hex(), "envelope 7"),
        ("packet trailing byte", "packet", good_packet.hex() + "c0", "bytes after the compound"),
        (
            "packet two compounds",
            "packet",
            good_packet.hex() + good_packet[2:].hex(),
            "exactly one compound per packet",
        ),
        ("stream trailing byte", "stream", good_stream.hex() + "00", "bytes after the message"),
        ("reserved msgpack byte", "packet", "0100c1", "0xc1 is never valid msgpack"),
        # Compound and message structure.
        ("empty compound", "packet", packet(), "a compound holds at least one message"),
        ("compound is a map", "packet", packet_bytes(pack({"type": 1})), "not an array"),
        ("compound is an int", "packet", packet_bytes(pack(1)), "not an array"),
        ("message not an array", "packet", packet_bytes(pack([1])), "bare int"),
        ("message empty array", "packet", packet_bytes(pack([[]])), "no type"),
        ("message type str", "packet", packet(replaced(a_ping, 0, "1")), "str type"),
        ("message type bool", "packet", packet(replaced(a_ping, 0, True)), "bool is not int"),
        ("message type nil", "packet", packet(replaced(a_ping, 0, None)), "nil type"),
        ("stream not an array", "stream", stream("ping"), "str"),
        ("stream compound", "stream", stream([a_ping]), "a frame holds one message"),
        ("stream unknown type", "stream", stream([200, "x"]), "nothing to skip to"),
        (
            "map with int key",
            "packet",
            packet([200, {1: 2}], a_ping),
            "map keys must be str or bin, even inside skipped messages",
        ),
        ("push_pull in a packet", "packet", packet([PUSH_PULL, False, 1, None]), "stream only"),
        ("key_op in a packet", "packet", packet([KEY_OP, "list", b""]), "stream only"),
        (
            "key_op_result in a packet",
            "packet",
            packet([KEY_OP_RESULT, True, "", []]),
            "stream only",
        ),
        ("key_op unknown op", "stream", stream([KEY_OP, "steal", b""]), "op not in the table"),
        ("key_op short key", "stream", stream([KEY_OP, "install", b"k" * 31]), "key of 31 bytes"),
        ("key_op list with key", "stream", stream([KEY_OP, "list", b"k" * 32]), "list takes no key"),
        (
            "key_op_result fingerprint not str",
            "stream",
            stream([KEY_OP_RESULT, True, "", [1]]),
            "fingerprints are strings",
        ),
        (
            "app_request in a packet",
            "packet",
            packet([APP_REQUEST, 1, "kv", b""]),
            "stream only",
        ),
        (
            "app_response in a packet",
            "packet",
            packet([APP_RESPONSE, 1, True, b"", ""]),
            "stream only",
        ),
        ("app_request empty service", "stream", stream([APP_REQUEST, 1, "", b""]), "service"),
        (
            "app_request service of 65 bytes",
            "stream",
            stream([APP_REQUEST, 1, "s" * 65, b""]),
            "service over 64 bytes",
        ),
        (
            "app_request service of 66 UTF-8 bytes",
            "stream",
            stream([APP_REQUEST, 1, "é" * 33, b""]),
            "33 characters but 66 bytes",
        ),
        ("app_request bin service", "stream", stream([APP_REQUEST, 1, b"kv", b""]), "str"),
        ("app_request str body", "stream", stream([APP_REQUEST, 1, "kv", "x"]), "body is bin"),
        ("app_request nil body", "stream", stream([APP_REQUEST, 1, "kv", None]), "body is bin"),
        (
            "app_request negative id",
            "stream",
            stream([APP_REQUEST, -1, "kv", b""]),
            "request_id is uint64",
        ),
        ("app_request missing body", "stream", stream([APP_REQUEST, 1, "kv"]), "missing field"),
        (
            "user_event negative ltime",
            "packet",
            packet([USER_EVENT, "a", -1, b""]),
            "ltime is uint64",
        ),
        ("user_event str payload", "packet", packet([USER_EVENT, "a", 1, "x"]), "payload is bin"),
        ("user_event missing payload", "packet", packet([USER_EVENT, "a", 1]), "missing field"),
        (
            "user_event payload over budget in a packet",
            "packet",
            packet([USER_EVENT, "a", 1, b"\x00" * (COMPOUND_BUDGET + 1)]),
            "payload over COMPOUND_BUDGET",
        ),
        ("app_response ok int", "stream", stream([APP_RESPONSE, 1, 1, b"", ""]), "ok is bool"),
        (
            "app_response error too long",
            "stream",
            stream([APP_RESPONSE, 1, False, b"", "e" * 257]),
            "error over 256 characters",
        ),
        ("app_response error nil", "stream", stream([APP_RESPONSE, 1, True, b"", None]), "str"),
        (
            "app_response missing error",
            "stream",
            stream([APP_RESPONSE, 1, True, b""]),
            "missing field",
        ),
        (
            "push_pull after a ping in a packet",
            "packet",
            packet(a_ping, [PUSH_PULL, False, 1, None]),
            "stream only",
        ),
        # Missing fields.
        ("missing fields ping", "packet", packet(a_ping[:3]), "ping without source"),
        ("missing fields alive", "packet", packet(an_alive[:5]), "alive without protocol"),
        ("missing fields ack", "packet", packet([ACK, 1]), "ack without payload"),
        ("missing fields nack", "packet", packet([NACK]), "nack without seq"),
        (
            "missing fields push_pull",
            "stream",
            stream([PUSH_PULL, False, 1]),
            "members missing (nil is required)",
        ),
        ("member missing fields", "stream", stream([PUSH_PULL, False, 1, [an_entry[:5]]]), "entry"),
        # Field types and ranges.
        ("str seq", "packet", packet(replaced(a_ping, 1, "7")), "ping.seq"),
        ("float seq", "packet", packet(replaced(a_ping, 1, 7.0)), "ping.seq"),
        ("bool seq", "packet", packet(replaced(a_ping, 1, True)), "ping.seq"),
        ("nil seq", "packet", packet([NACK, None]), "nack.seq"),
        (
            "seq 2**64",
            "packet",
            packet(replaced(a_ping, 1, float(2**64))),
            "msgpack ints stop at 2**64-1; a bigger seq can only arrive as a float",
        ),
        ("negative seq", "packet", packet([ACK, -1, b""]), "ack.seq"),
        ("negative incarnation", "packet", packet([SUSPECT, -1, "b", "a"]), "incarnation"),
        ("int node id", "packet", packet(replaced(a_ping, 2, 42)), "ping.target"),
        ("bin node id", "packet", packet(replaced(a_ping, 2, b"b")), "node ids are str"),
        ("empty node id", "packet", packet(replaced(a_ping, 2, "")), "node id of 0 bytes"),
        ("node id of 129 bytes", "packet", packet([LEAVE, 1, "x" * 129]), "over 128 bytes"),
        (
            "node id of 130 UTF-8 bytes",
            "packet",
            packet([LEAVE, 1, "é" * 65]),
            "65 characters but 130 bytes",
        ),
        (
            "invalid UTF-8 node id",
            "packet",
            packet_bytes(array(pack(a_ping)[:-2] + b"\xa2\xff\xfe")),
            "str must be UTF-8",
        ),
        ("bad state 9", "stream", entry_with(3, 9), "state"),
        ("bool state", "stream", entry_with(3, False), "state"),
        ("bad port 70000", "packet", alive_with(3, ["h", 70000]), "port"),
        ("negative port", "packet", alive_with(3, ["h", -1]), "port"),
        ("empty host", "packet", alive_with(3, ["", 1]), "host"),
        ("host of 256 chars", "packet", alive_with(3, ["h" * 256, 1]), "host"),
        ("address of 3 items", "packet", alive_with(3, ["h", 1, 2]), "address"),
        ("address as str", "packet", alive_with(3, "h:1"), "address"),
        ("meta as str", "packet", alive_with(4, "meta"), "meta is bin"),
        ("meta nil", "packet", alive_with(4, None), "meta is bin"),
        ("protocol min > max", "packet", alive_with(5, [2, 1, 1]), "protocol"),
        ("protocol 256", "packet", alive_with(5, [1, 256, 1]), "protocol"),
        ("protocol bool", "packet", alive_with(5, [True, 1, 1]), "protocol"),
        ("protocol of 2 items", "packet", alive_with(5, [1, 1]), "protocol"),
        (
            "want_nack int",
            "packet",
            packet([PING_REQ, 1, "c", ["h", 1], "a", 1]),
            "want_nack is bool",
        ),
        ("join nil", "stream", stream([PUSH_PULL, None, 1, None]), "join is bool"),
        ("negative checksum", "stream", stream([PUSH_PULL, False, -5, None]), "checksum"),
        ("members as map", "stream", stream([PUSH_PULL, False, 1, {"a": 1}]), "members"),
        ("member not an array", "stream", stream([PUSH_PULL, False, 1, ["node-a"]]), "members"),
        # Sizes.
        (
            "oversized stream meta",
            "stream",
            stream(replaced(an_alive, 4, b"m" * 1025)),
            "meta > 1024",
        ),
        ("oversized stream member meta", "stream", entry_with(4, b"m" * 1025), "meta > 1024"),
        ("oversized stream node id", "stream", stream([LEAVE, 1, "n" * 129]), "node id > 128"),
        (
            "user payload over budget in a packet",
            "packet",
            packet([USER, "a", b"\x00" * (COMPOUND_BUDGET + 1)]),
            "payload > COMPOUND_BUDGET",
        ),
    ]
    for cut in (3, 10, 40, len(good_packet) - 1):
        cases.append((f"packet truncated at {cut}", "packet", good_packet[:cut].hex(), "truncated"))
    for cut in (2, 20, len(good_stream) - 1):
        cases.append((f"stream truncated at {cut}", "stream", good_stream[:cut].hex(), "truncated"))
    return [{"name": n, "transport": t, "hex": h, "reason": r} for n, t, h, r in cases]


def write(name: str, vectors: list[dict[str, object]] | list[dict[str, str]]) -> None:
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    (HERE / name).write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write("valid.json", valid_vectors())
    write("invalid.json", invalid_vectors())
