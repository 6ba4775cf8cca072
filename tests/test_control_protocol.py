"""The control protocol's shared definitions (meshd/control.py): round trips and garbage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd import control
from meshd.control import (
    BAD_REQUEST,
    FAILED,
    MAX_ID,
    MAX_LINE,
    PROTOCOL_VERSION,
    UNSUPPORTED_VERSION,
    BadControlLine,
    decode_line_untrusted,
    decode_request_untrusted,
    decode_response_untrusted,
    encode_request,
    encode_response_error,
    encode_response_ok,
)
from meshd.errors import BadPacket

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------
# Round trips.


def test_control_request_round_trip() -> None:
    line = encode_request(7, "join", {"addresses": ["10.0.0.2:7946", "[::1]:7946"]})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    expected = {
        "v": 1,
        "id": 7,
        "cmd": "join",
        "args": {"addresses": ["10.0.0.2:7946", "[::1]:7946"]},
    }
    assert decode_request_untrusted(line) == expected
    assert decode_line_untrusted(line) == expected
    assert json.loads(line) == expected


def test_control_request_without_args_sends_empty_object() -> None:
    assert json.loads(encode_request(1, "status")) == {"v": 1, "id": 1, "cmd": "status", "args": {}}


def test_control_response_ok_round_trip() -> None:
    result = {"self": "node-a", "members": [], "counters": {"x": 1}, "ratio": 0.5, "none": None}
    line = encode_response_ok(3, result)
    expected = {"v": 1, "id": 3, "ok": True, "result": result}
    assert decode_response_untrusted(line) == expected
    assert decode_line_untrusted(line) == expected


@pytest.mark.parametrize("request_id", [0, 5, MAX_ID, None])
def test_control_response_error_round_trip(request_id: int | None) -> None:
    line = encode_response_error(request_id, FAILED, "no seed answered")
    error = {"code": "failed", "message": "no seed answered"}
    assert decode_response_untrusted(line) == {
        "v": 1,
        "id": request_id,
        "ok": False,
        "error": error,
    }


def test_control_encoding_is_ascii_and_compact() -> None:
    line = encode_response_ok(1, {"name": "nœud-é", "ctl": "a\x1bb\n"})
    assert line.isascii()
    assert line.count(b"\n") == 1  # the embedded newline is escaped
    assert b": " not in line
    assert b", " not in line
    assert decode_response_untrusted(line)["result"] == {"name": "nœud-é", "ctl": "a\x1bb\n"}


def test_control_decoder_accepts_line_without_newline_and_crlf() -> None:
    line = encode_request(1, "info")
    assert decode_request_untrusted(line[:-1])["cmd"] == "info"
    assert decode_request_untrusted(line[:-1] + b"\r\n")["cmd"] == "info"


def test_control_decoder_defaults_missing_args_and_drops_unknown_keys() -> None:
    line = b'{"v":1,"id":2,"cmd":"status","future":true}\n'
    assert decode_request_untrusted(line) == {"v": 1, "id": 2, "cmd": "status", "args": {}}


def test_control_unknown_command_and_error_code_decode() -> None:
    # Which commands exist is the server's business; which codes, the client's.
    assert decode_request_untrusted(encode_request(1, "frobnicate"))["cmd"] == "frobnicate"
    line = b'{"v":1,"id":1,"ok":false,"error":{"code":"from_the_future","message":"m"}}'
    assert decode_response_untrusted(line)["error"]["code"] == "from_the_future"


# ---------------------------------------------------------------------------
# Encoders refuse caller mistakes.


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda: encode_request(True, "status"), TypeError),
        (lambda: encode_request(1.0, "status"), TypeError),  # type: ignore[arg-type]
        (lambda: encode_request(-1, "status"), ValueError),
        (lambda: encode_request(MAX_ID + 1, "status"), ValueError),
        (lambda: encode_request(1, ""), ValueError),
        (lambda: encode_request(1, b"status"), TypeError),  # type: ignore[arg-type]
        (lambda: encode_request(1, "status", ["x"]), TypeError),  # type: ignore[arg-type]
        (lambda: encode_request(1, "status", {"x": float("nan")}), ValueError),
        (lambda: encode_request(1, "status", {"x": object()}), TypeError),
        (lambda: encode_response_ok(1, ["x"]), TypeError),  # type: ignore[arg-type]
        (lambda: encode_response_ok(None, {}), TypeError),  # type: ignore[arg-type]
        (lambda: encode_response_error(1, "oops", "m"), ValueError),
        (lambda: encode_response_error(1, FAILED, 5), TypeError),  # type: ignore[arg-type]
    ],
)
def test_control_encoder_rejects_misuse(call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call()


def test_control_encoder_refuses_oversized_line() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_response_ok(1, {"blob": "x" * MAX_LINE})


def _padded_request(size: int) -> bytes:
    """A valid request line of exactly ``size`` bytes, newline included."""
    empty = encode_request(1, "status", {"pad": ""})
    return encode_request(1, "status", {"pad": "x" * (size - len(empty))})


def test_control_line_of_exactly_max_line_is_accepted() -> None:
    line = _padded_request(MAX_LINE)
    assert len(line) == MAX_LINE
    assert decode_request_untrusted(line)["cmd"] == "status"


def test_control_line_over_max_line_is_rejected() -> None:
    line = _padded_request(MAX_LINE)[:-1] + b" \n"  # JSON allows the space; size does not
    assert len(line) == MAX_LINE + 1
    with pytest.raises(BadPacket, match="exceeds"):
        decode_request_untrusted(line)


# ---------------------------------------------------------------------------
# Malformed lines: BadPacket, with what the server needs to answer.

_MALFORMED_REQUESTS = [
    (b"", "not JSON"),
    (b"\n", "not JSON"),
    (b"status\n", "not JSON"),
    (b"\xff\xfe{}\n", "not UTF-8"),
    (b'{"v":1,"id":1,"cmd":"status"', "not JSON"),
    (b"[1,2]", "not an object"),
    (b'"status"', "not an object"),
    (b"null", "not an object"),
    (b'{"id":1,"cmd":"status"}', "missing 'v'"),
    (b'{"v":"1","id":1,"cmd":"status"}', "'v' must be an integer"),
    (b'{"v":true,"id":1,"cmd":"status"}', "'v' must be an integer"),
    (b'{"v":1.0,"id":1,"cmd":"status"}', "'v' must be an integer"),
    (b'{"v":1,"cmd":"status"}', "missing 'id'"),
    (b'{"v":1,"id":true,"cmd":"status"}', "'id' must be"),
    (b'{"v":1,"id":"1","cmd":"status"}', "'id' must be"),
    (b'{"v":1,"id":1.5,"cmd":"status"}', "'id' must be"),
    (b'{"v":1,"id":-1,"cmd":"status"}', "'id' must be"),
    (b'{"v":1,"id":9007199254740992,"cmd":"status"}', "'id' must be"),
    (b'{"v":1,"id":1}', "missing 'cmd'"),
    (b'{"v":1,"id":1,"cmd":""}', "must not be empty"),
    (b'{"v":1,"id":1,"cmd":5}', "'cmd' must be"),
    (b'{"v":1,"id":1,"cmd":"status","args":[]}', "'args' must be"),
    (b'{"v":1,"id":1,"cmd":"status","args":null}', "'args' must be"),
    (b'{"v":1,"id":1,"cmd":"status","cmd":"leave"}', "repeats a key"),
    (b'{"v":1,"id":1,"cmd":"keys","args":{"x":NaN}}', "not a JSON number"),
    (b'{"v":1,"id":1,"cmd":"keys","args":{"x":-Infinity}}', "not a JSON number"),
    (b'{"v":1,"id":1,"cmd":"keys","args":{"x":1e999}}', "out of range"),
    (b'{"v":1,"id":1,"cmd":"keys","args":{"x":' + b"9" * 5000 + b"}}", "not JSON"),
    (b'{"v":1,"id":1,"cmd":"status"}\n{"v":1,"id":2,"cmd":"status"}\n', "more than one line"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "not JSON"),
]


@pytest.mark.parametrize(("line", "why"), _MALFORMED_REQUESTS)
def test_control_malformed_request_is_bad_packet(line: bytes, why: str) -> None:
    with pytest.raises(BadPacket, match=why) as info:
        decode_request_untrusted(line)
    assert isinstance(info.value, BadControlLine)
    assert info.value.code == BAD_REQUEST


_MALFORMED_RESPONSES = [
    b'{"v":1,"id":1}',
    b'{"v":1,"id":1,"ok":1,"result":{}}',
    b'{"v":1,"id":1,"ok":"true","result":{}}',
    b'{"v":1,"ok":true,"result":{}}',
    b'{"v":1,"id":null,"ok":true,"result":{}}',
    b'{"v":1,"id":false,"ok":true,"result":{}}',
    b'{"v":1,"id":-3,"ok":false,"error":{"code":"failed","message":"m"}}',
    b'{"v":1,"id":1,"ok":true}',
    b'{"v":1,"id":1,"ok":true,"result":[]}',
    b'{"v":1,"id":1,"ok":true,"error":{"code":"failed","message":"m"}}',
    b'{"v":1,"id":1,"ok":false}',
    b'{"v":1,"id":1,"ok":false,"error":"failed"}',
    b'{"v":1,"id":1,"ok":false,"error":{"message":"m"}}',
    b'{"v":1,"id":1,"ok":false,"error":{"code":"failed"}}',
    b'{"v":1,"id":1,"ok":false,"error":{"code":7,"message":"m"}}',
    b'{"v":1,"id":1,"ok":false,"error":{"code":"failed","message":null}}',
    b'{"v":2,"id":1,"ok":true,"result":{}}',
]


@pytest.mark.parametrize("line", _MALFORMED_RESPONSES)
def test_control_malformed_response_is_bad_packet(line: bytes) -> None:
    with pytest.raises(BadPacket):
        decode_response_untrusted(line)
    with pytest.raises(BadPacket):
        decode_line_untrusted(line)


@pytest.mark.parametrize(
    "line",
    [b'{"v":1,"id":1}', b'{"v":1,"id":1,"cmd":"status","ok":true,"result":{}}'],
)
def test_control_line_must_be_request_or_response(line: bytes) -> None:
    with pytest.raises(BadPacket, match="exactly one of"):
        decode_line_untrusted(line)


def test_control_response_is_not_a_request() -> None:
    with pytest.raises(BadPacket, match="missing 'cmd'"):
        decode_request_untrusted(encode_response_ok(1, {}))
    with pytest.raises(BadPacket, match="missing 'ok'"):
        decode_response_untrusted(encode_request(1, "status"))


@pytest.mark.parametrize(("version", "request_id"), [(2, 9), (0, 4), (-1, None)])
def test_control_other_version_is_unsupported_with_request_id(
    version: int, request_id: int | None
) -> None:
    fields = {"v": version, "cmd": "status"} | ({} if request_id is None else {"id": request_id})
    with pytest.raises(BadControlLine, match=f"version {version} is not supported") as info:
        decode_request_untrusted(json.dumps(fields).encode())
    assert (info.value.code, info.value.request_id) == (UNSUPPORTED_VERSION, request_id)
    # The server answers with exactly that, and the client can read the answer.
    reply = encode_response_error(info.value.request_id, info.value.code, str(info.value))
    assert decode_response_untrusted(reply)["error"]["code"] == UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b'{"v":1,"id":12,"cmd":""}', 12),
        (b'{"v":1,"id":12,"cmd":"keys","args":"list"}', 12),
        (b'{"id":12,"cmd":"status"}', 12),
        (b'{"v":1,"id":true,"cmd":"status"}', None),
        (b'{"v":1,"id":-12,"cmd":"status"}', None),
        (b"not json", None),
    ],
)
def test_control_bad_request_keeps_readable_id(line: bytes, request_id: int | None) -> None:
    with pytest.raises(BadControlLine) as info:
        decode_request_untrusted(line)
    assert (info.value.code, info.value.request_id) == (BAD_REQUEST, request_id)


def test_control_error_message_never_echoes_the_line() -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWxlYWs="
    for line in (f'{{"v":1,"id":1,"cmd":"keys","args":{{"key":"{secret}"}}', f"{secret}\n"):
        with pytest.raises(BadPacket) as info:
            decode_request_untrusted(line.encode())
        assert secret not in str(info.value)


# ---------------------------------------------------------------------------
# Fuzz: anything at all decodes to a dict or raises BadPacket, nothing else.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
envelope_keys = st.sampled_from(["v", "id", "cmd", "args", "ok", "result", "error", "code", "x"])
# Objects built mostly from the protocol's own keys reach the deep checks.
envelopes = st.dictionaries(
    envelope_keys,
    json_values | st.sampled_from([1, 0, 2, True, False, None, "status", {}, {"code": "failed"}]),
    max_size=6,
)


def _check_only_bad_packet(line: bytes) -> None:
    for decode in (decode_line_untrusted, decode_request_untrusted, decode_response_untrusted):
        try:
            assert isinstance(decode(line), dict)
        except BadPacket:
            pass


@FUZZ
@given(st.binary(max_size=200))
def test_control_fuzz_bytes_only_bad_packet(line: bytes) -> None:
    _check_only_bad_packet(line)


@FUZZ
@given(json_values | envelopes)
def test_control_fuzz_json_only_bad_packet(value: object) -> None:
    _check_only_bad_packet(json.dumps(value).encode())


@FUZZ
@given(st.sampled_from(["request", "ok", "error"]), json_values, st.data())
def test_control_fuzz_mutated_valid_lines_only_bad_packet(
    kind: str, payload: object, data: st.DataObject
) -> None:
    if kind == "request":
        line = encode_request(1, "keys", {"p": payload})
    elif kind == "ok":
        line = encode_response_ok(1, {"p": payload})
    else:
        line = encode_response_error(1, FAILED, json.dumps(payload))
    cut = data.draw(st.integers(0, len(line)))
    flip = data.draw(st.integers(0, len(line) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(line)
    mutated[flip] ^= 1 << bit
    _check_only_bad_packet(line[:cut])
    _check_only_bad_packet(bytes(mutated))


@FUZZ
@given(
    st.integers(0, MAX_ID),
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_control_fuzz_request_round_trip(request_id: int, cmd: str, args: dict[str, Any]) -> None:
    decoded = decode_request_untrusted(encode_request(request_id, cmd, args))
    assert decoded == {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args}


# ---------------------------------------------------------------------------
# Where a client looks by default.


def test_control_default_socket_prefers_system_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "run" / "meshd.sock"
    monkeypatch.setattr(control, "SYSTEM_SOCKET", system)
    assert control.default_socket_path(cwd=tmp_path) == tmp_path / ".meshd" / "meshd.sock"
    system.parent.mkdir()
    system.touch()
    assert control.default_socket_path(cwd=tmp_path) == system


def test_control_default_socket_uses_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "SYSTEM_SOCKET", tmp_path / "absent.sock")
    monkeypatch.chdir(tmp_path)
    assert control.default_socket_path() == tmp_path / ".meshd" / "meshd.sock"
