"""The control protocol between ``meshctl`` and ``meshd``: JSON Lines on a unix socket.

Both sides import this module: the daemon's control server (trio, in
``meshd/runtime``) and the ``meshctl`` client (blocking sockets). It is
import-light on purpose: no trio, no network libraries, only :mod:`json`.
"""

# Strategy
#
# The wire, one JSON object per line, UTF-8 (this side always writes ASCII,
# a subset), each line at most MAX_LINE bytes including its b"\n":
#
#   request   {"v": 1, "id": N, "cmd": NAME, "args": {...}}
#   success   {"v": 1, "id": N, "ok": true,  "result": {...}}
#   failure   {"v": 1, "id": N, "ok": false, "error": {"code": CODE, "message": TEXT}}
#
# Rule 1: every byte read from the socket goes through decode_*_untrusted,
#   which raises only BadPacket (as its subclass BadControlLine) for anything
#   it cannot accept: oversized, not UTF-8, not JSON, NaN/Infinity, duplicate
#   keys, nesting deep enough to exhaust the recursion limit, not an object,
#   a missing or wrong-typed field, or another protocol version.
# Rule 2: a BadControlLine carries what the server needs to answer it: the
#   error code (bad_request, or unsupported_version for a readable line of
#   another version) and the request id when one could be read. A reply to a
#   line whose id could not be read carries "id": null; that is the only
#   place null is a valid id.
# Rule 3: integers are JSON integers, never booleans (Python's True is an
#   int; the decoder tells them apart), and ids fit in 53 bits so that any
#   JSON implementation (jq, JavaScript) reads them exactly.
# Rule 4: the decoder checks the envelope only. Which commands exist and
#   what their arguments mean is the server's business: an unknown command
#   decodes fine and is answered with "unknown_command"; unknown top-level
#   keys are ignored, so a later version may add some. "args" may be left
#   out (it means {}), so an operator can type a request into socat.
# Rule 5: the encoders refuse (ValueError) to produce a line longer than
#   MAX_LINE, so the peer's reader never has to cut one; the server answers
#   an oversized result with a "failed" error instead.

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

from meshd.errors import BadPacket

__all__ = [
    "BAD_REQUEST",
    "COMMANDS",
    "ERROR_CODES",
    "FAILED",
    "KEY_OPS",
    "LOCAL_SOCKET",
    "MAX_ID",
    "MAX_LINE",
    "MEMBER_STATUSES",
    "PROTOCOL_VERSION",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "UNKNOWN_COMMAND",
    "UNSUPPORTED_VERSION",
    "BadControlLine",
    "decode_line_untrusted",
    "decode_request_untrusted",
    "decode_response_untrusted",
    "default_socket_path",
    "encode_request",
    "encode_response_error",
    "encode_response_ok",
]

#: The control protocol version; the ``"v"`` of every line.
PROTOCOL_VERSION = 1
#: Longest accepted line in bytes, including the terminating ``b"\n"`` (1 MiB).
MAX_LINE = 1 << 20
#: Largest request id: 2**53 - 1, exact in every JSON implementation.
MAX_ID = (1 << 53) - 1

#: Error code: the line is malformed or the arguments are wrong.
BAD_REQUEST = "bad_request"
#: Error code: this daemon has no such command.
UNKNOWN_COMMAND = "unknown_command"
#: Error code: the command was understood but could not be carried out.
FAILED = "failed"
#: Error code: the line's ``"v"`` is not :data:`PROTOCOL_VERSION`.
UNSUPPORTED_VERSION = "unsupported_version"
#: Every error code a server may send (clients accept unknown codes too).
ERROR_CODES = frozenset({BAD_REQUEST, UNKNOWN_COMMAND, FAILED, UNSUPPORTED_VERSION})

#: The commands of protocol version 1.
COMMANDS = (
    "status",
    "members",
    "info",
    "join",
    "leave",
    "keys",
    "metrics",
    "kv_put",
    "kv_get",
    "kv_delete",
    "ring",
    "kv_merkle",
    "kv_anti_entropy",
    "plugins",
    "plugin",
)
#: The ``"op"`` argument of the ``keys`` command.
KEY_OPS = ("list", "install", "use", "remove")
#: Values of a member's ``"status"``.
MEMBER_STATUSES = ("alive", "suspect", "dead", "left")

#: Environment variable naming the socket for ``meshctl``.
SOCKET_ENV = "MESHCTL_SOCKET"
#: Where a packaged meshd listens (systemd ``RuntimeDirectory=meshd``).
SYSTEM_SOCKET = Path("/run/meshd/meshd.sock")
#: Where an unpackaged meshd listens, relative to its working directory.
LOCAL_SOCKET = Path(".meshd") / "meshd.sock"


class BadControlLine(BadPacket):
    """A control line that cannot be accepted; ``code`` and ``request_id`` say how to answer it."""

    def __init__(self, message: str, *, code: str = BAD_REQUEST, request_id: int | None = None):
        super().__init__(message)
        #: The error code to answer with (:data:`BAD_REQUEST` or :data:`UNSUPPORTED_VERSION`).
        self.code = code
        #: The id of the offending request, if it could be read; else ``None``.
        self.request_id = request_id


def default_socket_path(*, cwd: Path | None = None) -> Path:
    """Where a client looks for the daemon when it is told nothing.

    :data:`SYSTEM_SOCKET` if it exists, else :data:`LOCAL_SOCKET` under
    ``cwd``. Explicit choices (``--socket``, :data:`SOCKET_ENV`, the config
    file) come first; that order is the client's business.

    Args:
        cwd: directory for the local socket (default: the current one).

    Returns:
        An absolute path (a relative ``cwd`` stays relative).
    """
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return (Path.cwd() if cwd is None else cwd) / LOCAL_SOCKET


# ---------------------------------------------------------------------------
# Encoding: trusted values from this process.


def _is_int(value: object) -> TypeGuard[int]:
    """True for a JSON integer (``bool`` is an ``int`` in Python but not in JSON)."""
    return type(value) is int


def _check_id(request_id: object, *, allow_none: bool = False) -> None:
    if request_id is None and allow_none:
        return
    if not _is_int(request_id):
        raise TypeError(f"a request id must be an int, not {type(request_id).__name__}")
    if not 0 <= request_id <= MAX_ID:
        raise ValueError(f"a request id must be in [0, {MAX_ID}], got {request_id}")


def _encode(message: dict[str, Any]) -> bytes:
    # ensure_ascii: the line is 7-bit clean and encoding cannot fail on lone
    # surrogates; allow_nan=False: NaN and Infinity are not JSON.
    text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    line = text.encode("ascii") + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"control line of {len(line)} bytes exceeds the {MAX_LINE}-byte limit")
    return line


def encode_request(request_id: int, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    """One request line, newline included.

    Args:
        request_id: the id the response will echo, in ``[0, MAX_ID]``.
        cmd: the command name.
        args: the command's arguments (default: none).

    Returns:
        The UTF-8 (in fact ASCII) line ending in ``b"\\n"``.

    Raises:
        TypeError: a value is of the wrong type or not JSON-serialisable.
        ValueError: the id is out of range, ``cmd`` is empty, a float is not
            finite, or the line would exceed :data:`MAX_LINE`.
    """
    _check_id(request_id)
    if not isinstance(cmd, str):
        raise TypeError(f"cmd must be a str, not {type(cmd).__name__}")
    if not cmd:
        raise ValueError("cmd must not be empty")
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise TypeError(f"args must be a dict, not {type(args).__name__}")
    return _encode({"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args})


def encode_response_ok(request_id: int, result: dict[str, Any]) -> bytes:
    """One success response line, newline included.

    Args:
        request_id: the id of the request answered.
        result: the command's result object.

    Raises:
        TypeError: a value is of the wrong type or not JSON-serialisable.
        ValueError: the id is out of range, a float is not finite, or the
            line would exceed :data:`MAX_LINE` (answer with
            :func:`encode_response_error` and :data:`FAILED` instead).
    """
    _check_id(request_id)
    if not isinstance(result, dict):
        raise TypeError(f"result must be a dict, not {type(result).__name__}")
    return _encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_response_error(request_id: int | None, code: str, message: str) -> bytes:
    """One failure response line, newline included.

    Args:
        request_id: the id of the request answered, or ``None`` when the
            line's id could not be read (``BadControlLine.request_id``).
        code: one of :data:`ERROR_CODES`.
        message: one line for the operator; it must not contain secrets.

    Raises:
        TypeError: a value is of the wrong type.
        ValueError: the id is out of range, ``code`` is not a known error
            code, or the line would exceed :data:`MAX_LINE`.
    """
    _check_id(request_id, allow_none=True)
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}; use one of {sorted(ERROR_CODES)}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    error = {"code": code, "message": message}
    return _encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error})


# ---------------------------------------------------------------------------
# Decoding: untrusted bytes from the socket.


def _reject_constant(name: str) -> NoReturn:
    raise BadControlLine(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadControlLine(f"number {text[:20]}... is out of range")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers could pick different values of a repeated key; refuse it.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BadControlLine("an object repeats a key")
    return obj


def _parse_untrusted(line: bytes) -> dict[str, Any]:
    """The JSON object on ``line``, version checked; raises only :class:`BadControlLine`."""
    if len(line) > MAX_LINE:
        raise BadControlLine(f"line exceeds {MAX_LINE} bytes")
    data = bytes(line)
    if data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" in data:
        raise BadControlLine("more than one line")
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError:
        raise BadControlLine("line is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and int-size errors are ValueErrors; their messages
        # give a position, never the content.
        raise BadControlLine(f"line is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadControlLine(f"line is a JSON {type(value).__name__}, not an object")
    request_id = value.get("id")
    readable_id = request_id if _is_int(request_id) and 0 <= request_id <= MAX_ID else None
    if "v" not in value:
        raise BadControlLine("missing 'v' (protocol version)", request_id=readable_id)
    version = value["v"]
    if not _is_int(version):
        raise BadControlLine("'v' must be an integer", request_id=readable_id)
    if version != PROTOCOL_VERSION:
        raise BadControlLine(
            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})",
            code=UNSUPPORTED_VERSION,
            request_id=readable_id,
        )
    return value


def _field(message: dict[str, Any], key: str, kind: type, what: str, request_id: int | None) -> Any:
    if key not in message:
        raise BadControlLine(f"missing {key!r}", request_id=request_id)
    value = message[key]
    if type(value) is not kind:
        raise BadControlLine(f"{key!r} must be {what}", request_id=request_id)
    return value


def _request_from(message: dict[str, Any]) -> dict[str, Any]:
    request_id = _field(message, "id", int, "an integer", None)
    if not 0 <= request_id <= MAX_ID:
        raise BadControlLine(f"'id' must be in [0, {MAX_ID}]")
    cmd = _field(message, "cmd", str, "a string", request_id)
    if not cmd:
        raise BadControlLine("'cmd' must not be empty", request_id=request_id)
    args = _field(message, "args", dict, "an object", request_id) if "args" in message else {}
    return {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args}


def _response_from(message: dict[str, Any]) -> dict[str, Any]:
    ok = _field(message, "ok", bool, "true or false", None)
    if "id" not in message:
        raise BadControlLine("missing 'id'")
    request_id = message["id"]
    if request_id is None and ok:
        raise BadControlLine("a success response must carry the request's id")
    if request_id is not None:
        if not _is_int(request_id) or not 0 <= request_id <= MAX_ID:
            raise BadControlLine(f"'id' must be an integer in [0, {MAX_ID}] or null")
    if ok:
        result = _field(message, "result", dict, "an object", request_id)
        return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}
    error = _field(message, "error", dict, "an object", request_id)
    code = _field(error, "code", str, "a string", request_id)
    text = _field(error, "message", str, "a string", request_id)
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": text},
    }


def decode_request_untrusted(line: bytes) -> dict[str, Any]:
    """Decode one request line (the server's side).

    Args:
        line: bytes read from the socket, with or without the final ``b"\\n"``.

    Returns:
        ``{"v", "id", "cmd", "args"}`` (``args`` is ``{}`` when left out);
        other keys of the line are dropped.

    Raises:
        BadControlLine: a :class:`~meshd.errors.BadPacket`; its ``code`` and
            ``request_id`` are what to answer with.
    """
    return _request_from(_parse_untrusted(line))


def decode_response_untrusted(line: bytes) -> dict[str, Any]:
    """Decode one response line (the client's side).

    Args:
        line: bytes read from the socket, with or without the final ``b"\\n"``.

    Returns:
        ``{"v", "id", "ok": True, "result"}`` or ``{"v", "id", "ok": False,
        "error": {"code", "message"}}``. An unknown error code is accepted.

    Raises:
        BadControlLine: a :class:`~meshd.errors.BadPacket`.
    """
    return _response_from(_parse_untrusted(line))


def decode_line_untrusted(line: bytes) -> dict[str, Any]:
    """Decode a request or a response line, whichever it is.

    A line with ``"cmd"`` is a request, one with ``"ok"`` is a response; a
    line with both or neither is rejected.

    Returns:
        What :func:`decode_request_untrusted` or
        :func:`decode_response_untrusted` returns.

    Raises:
        BadControlLine: a :class:`~meshd.errors.BadPacket`.
    """
    message = _parse_untrusted(line)
    is_request, is_response = "cmd" in message, "ok" in message
    if is_request == is_response:
        raise BadControlLine("a line must have exactly one of 'cmd' (request) or 'ok' (response)")
    return _request_from(message) if is_request else _response_from(message)
