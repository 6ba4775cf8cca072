"""The ``meshctl`` command: the operator's and scripts' view of a running meshd.

``meshctl`` sends one request over the daemon's control socket (JSON Lines on
a unix socket, :mod:`meshd.control`), prints the answer and exits. It is a
short-lived process, so it uses a plain blocking socket with a deadline and
imports neither trio nor the protocol core; ``meshd.config`` is imported
only when ``--config`` is given.

Data goes to stdout (a table, ``key: value`` lines, or with ``--json`` one
JSON document ``{"v": 1, ...}``; ``status --watch --json`` prints one per
line); diagnostics and what to do about them go to stderr. The exit
statuses are :class:`~meshd.cli.exit_codes.ExitStatus`; ``status --check``
exits 3 when something is unhealthy.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import importlib
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from meshd import __version__, control
from meshd.cli.exit_codes import ExitStatus
from meshd.cli.output import columns, printable, width
from meshd.errors import BadPacket, ConfigError, MeshError

__all__ = [
    "DEFAULT_TIMEOUT",
    "CommandFailed",
    "Rendered",
    "SocketChoice",
    "build_parser",
    "call",
    "connect_failure",
    "main",
    "parse_key",
    "render_metrics",
    "render_status",
    "resolve_socket",
    "run",
    "unhealthy",
    "watch",
]

#: Seconds to wait for the daemon's answer unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 5.0

#: Printed with exit status 69: the socket is missing or nobody listens on it.
HINT_UNAVAILABLE = "is meshd running? (systemctl status meshd, or meshd run --config FILE)"
#: Printed with exit status 77: the socket (or its directory) is not ours to open.
HINT_NOPERM = (
    "add yourself to group meshd (usermod -aG meshd $USER) or use sudo; "
    "a new group takes effect at your next login"
)
#: Printed with a malformed key (usage error).
HINT_KEY = (
    "KEY must be 32 random bytes in base64 (44 characters ending in '='), "
    "or '-' to read it from stdin; generate one with: meshd keygen"
)

_DESCRIPTION = """\
meshctl inspects and controls the meshd daemon on this host through its
local control socket.

  meshctl status              the mesh as this node sees it, with a summary
  meshctl status --check      the same; exit 3 when anything is unhealthy
  meshctl status --watch      redraw every 2 s until Ctrl-C
  meshctl metrics             Prometheus metrics of this node
  meshctl members --json      every member, for scripts
  meshctl join 10.0.0.2:7946  contact another node and merge memberships
  meshctl keys list           gossip keys installed across the mesh
  meshctl put KEY VALUE       store a value in the replicated store (VALUE - : stdin)
  meshctl get KEY             print a value (exit 1 when the key is absent)
  meshctl delete KEY          delete a key
  meshctl ring                owners per member: ownership, keys, bytes, handoffs
  meshctl plugins             this node's plugins: state, restarts, last error
  meshctl plugins reload      apply the config file's [plugins] without a restart
  meshctl event deploy v42    send a user event to every member (plugin events)
  meshctl services [NAME]     where each service runs and whether it is healthy

The socket is, first found: --socket PATH, $MESHCTL_SOCKET, the
[control] socket of --config FILE, /run/meshd/meshd.sock if it exists,
else .meshd/meshd.sock in the current directory.
"""

_EPILOG = f"""\
exit status:
  {ExitStatus.OK:<4d} success
  {ExitStatus.ERROR:<4d} the request failed, timed out, or a filter matched nothing
  {ExitStatus.USAGE:<4d} bad command line (or a malformed KEY)
  {ExitStatus.UNHEALTHY:<4d} status --check: something is unhealthy (stderr says what)
  {ExitStatus.UNAVAILABLE:<4d} meshd is not reachable: no socket, or nobody listening on it
  {ExitStatus.NOPERM:<4d} permission denied on the socket (join group meshd)
  {ExitStatus.CONFIG:<4d} the --config file could not be read
  {ExitStatus.INTERRUPTED:<4d} interrupted (Ctrl-C)
"""

_STATUS_EPILOG = f"""\
--check counts as unhealthy: a member suspect or dead (left is fine), a
possible split of the mesh, a local health score above 0, mDNS discovery
failed, under-replicated key ranges (once meshd reports them). It prints
the usual output (or --json) and, when unhealthy, one line on stderr saying
why.

exit status:
  {ExitStatus.OK:<4d} success (with --check: healthy)
  {ExitStatus.ERROR:<4d} the request failed or timed out
  {ExitStatus.UNHEALTHY:<4d} --check: something is unhealthy
  {ExitStatus.UNAVAILABLE:<4d} meshd is not reachable
  {ExitStatus.NOPERM:<4d} permission denied on the socket (join group meshd)
  {ExitStatus.CONFIG:<4d} the --config file could not be read

--watch stops with Ctrl-C and then exits 0; if the first request fails it
exits at once with that failure's status, later failures are shown and
retried.
"""

#: Seconds between ``status --watch`` snapshots when SECS is not given.
DEFAULT_WATCH = 2.0
#: Shortest ``--watch`` interval accepted.
MIN_WATCH = 0.1
#: ANSI: cursor home, clear screen (``status --watch`` on a terminal).
_CLEAR_SCREEN = "\x1b[H\x1b[2J"

_STATUS_LETTERS = {"alive": "A", "suspect": "S", "dead": "D", "left": "L"}
#: How many names a warning lists before it says "and N more".
_WARN_NAMES = 10


class CommandFailed(MeshError):
    """The command cannot go on; ``message`` goes to stderr, ``status`` is the exit status."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Rendered(NamedTuple):
    """What a command prints, and its exit status.

    ``data``, when set, is written to stdout as raw bytes after ``out``
    (``meshctl get`` prints a value exactly as stored).
    """

    out: list[str]
    err: list[str]
    status: int = ExitStatus.OK
    data: bytes | None = None


# ---------------------------------------------------------------------------
# Finding the socket.


class SocketChoice(NamedTuple):
    """The control socket to use and how it was found (for error messages)."""

    path: Path
    #: ``--socket``, ``$MESHCTL_SOCKET``, ``--config FILE`` or ``default``.
    source: str
    #: Other paths looked at on the way (the default's system socket).
    also_tried: tuple[Path, ...] = ()


_ConfigLoader = Callable[[str], Any]


def _import_config_loader() -> _ConfigLoader:
    # Imported here, not at the top: only --config needs it, and meshctl
    # --help/--version must not pay for the config module's imports.
    try:
        config = importlib.import_module("meshd.config")
    except ImportError as exc:
        raise CommandFailed(
            ExitStatus.ERROR, f"this meshctl cannot read config files: {exc}"
        ) from None
    loader: _ConfigLoader = config.load_config
    return loader


def resolve_socket(
    *,
    socket_flag: str | None,
    config_flag: str | None,
    environ: Mapping[str, str],
    load_config: _ConfigLoader | None = None,
    cwd: Path | None = None,
) -> SocketChoice:
    """Pick the control socket: ``--socket``, ``$MESHCTL_SOCKET``, ``--config``, default.

    Args:
        socket_flag: the ``--socket`` value, if given.
        config_flag: the ``--config`` value, if given.
        environ: the environment (``os.environ``).
        load_config: ``meshd.config.load_config`` (injectable for tests);
            ``load_config(FILE).control.socket`` is the socket path.
        cwd: directory for the local default socket (default: the current one).

    Returns:
        The chosen path and where it came from.

    Raises:
        CommandFailed: the config file could not be read (exit status 78).
    """
    if socket_flag:
        return SocketChoice(Path(socket_flag), "--socket")
    from_env = environ.get(control.SOCKET_ENV)
    if from_env:
        return SocketChoice(Path(from_env), f"${control.SOCKET_ENV}")
    if config_flag is not None:
        loader = _import_config_loader() if load_config is None else load_config
        # load_config raises ConfigError for every problem it knows about;
        # OSError/ValueError are a safety net for one it lets through.
        try:
            config = loader(config_flag)
        except (ConfigError, OSError, ValueError) as exc:
            # ConfigError messages start with the file's path and say what to do.
            raise CommandFailed(ExitStatus.CONFIG, f"--config: {exc}") from None
        return SocketChoice(Path(config.control.socket), f"--config {config_flag}")
    try:
        path = control.default_socket_path(cwd=cwd)
    except PermissionError:
        # /run/meshd is 0750 meshd:meshd: outside group meshd one cannot even
        # tell whether the socket exists. Connecting to it says so (exit 77,
        # "add yourself to group meshd") instead of a traceback.
        path = control.SYSTEM_SOCKET
    also = () if path == control.SYSTEM_SOCKET else (control.SYSTEM_SOCKET,)
    return SocketChoice(path, "default", also)


# ---------------------------------------------------------------------------
# Talking to the daemon.

_UNAVAILABLE_REASONS = {
    errno.ENOENT: "no socket there",
    errno.ECONNREFUSED: "connection refused (a stale socket: nobody is listening)",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENOTSOCK: "the path is not a socket",
}
_NOPERM_ERRNOS = {errno.EACCES, errno.EPERM}


def connect_failure(exc: OSError, choice: SocketChoice) -> tuple[ExitStatus, str]:
    """The exit status and message for a failed ``connect`` to the control socket.

    Args:
        exc: what ``socket.connect`` raised.
        choice: the socket tried.

    Returns:
        ``(UNAVAILABLE, ...)`` for a missing socket or a refused connection,
        ``(NOPERM, ...)`` for EACCES/EPERM, ``(ERROR, ...)`` for anything else.
    """
    tried = f"socket tried: {choice.path}"
    if choice.also_tried:
        tried += f" (also looked for {', '.join(map(str, choice.also_tried))})"
    elif choice.source != "default":
        tried += f" (from {choice.source})"
    if exc.errno in _NOPERM_ERRNOS:
        return ExitStatus.NOPERM, (
            f"permission denied on the meshd control socket {choice.path}\n{HINT_NOPERM}"
        )
    reason = _UNAVAILABLE_REASONS.get(exc.errno) if exc.errno is not None else None
    if reason is not None:
        return ExitStatus.UNAVAILABLE, (
            f"cannot connect to meshd: {reason}\n{HINT_UNAVAILABLE}; {tried}"
        )
    return ExitStatus.ERROR, f"cannot connect to meshd: {exc.strerror or exc}; {tried}"


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """Read up to and including the first ``b"\\n"``, at most ``MAX_LINE`` bytes."""
    buffer = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise CommandFailed(ExitStatus.ERROR, "meshd closed the connection without answering")
        end = chunk.find(b"\n")
        buffer += chunk if end < 0 else chunk[: end + 1]
        if len(buffer) > control.MAX_LINE:
            raise CommandFailed(
                ExitStatus.ERROR, f"meshd's answer is longer than {control.MAX_LINE} bytes"
            )
        if end >= 0:
            return bytes(buffer)


def call(choice: SocketChoice, cmd: str, args: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Send one request and return the result of a successful response.

    Args:
        choice: the control socket.
        cmd: the command name.
        args: its arguments.
        timeout: seconds for the whole exchange, connect included.

    Returns:
        The response's ``result`` object.

    Raises:
        CommandFailed: unreachable (69), permission denied (77), a timeout, a
            malformed answer or an error response (1).
    """
    deadline = time.monotonic() + timeout
    request_id = 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(str(choice.path))
            except TimeoutError:
                raise
            except OSError as exc:
                raise CommandFailed(*connect_failure(exc, choice)) from None
            sock.sendall(control.encode_request(request_id, cmd, args))
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise CommandFailed(
                ExitStatus.ERROR,
                f"meshd did not answer {cmd!r} within {timeout:g}s (socket {choice.path}); "
                "it may be overloaded or stuck: check its log (journalctl -u meshd), "
                "or retry with a longer --timeout",
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise CommandFailed(
                ExitStatus.ERROR, f"meshd closed the connection: {exc.strerror or exc}"
            ) from None
        except OSError as exc:
            raise CommandFailed(
                ExitStatus.ERROR, f"talking to meshd failed: {exc.strerror or exc}"
            ) from None
    try:
        response = control.decode_response_untrusted(line)
    except BadPacket as exc:
        raise CommandFailed(ExitStatus.ERROR, f"meshd sent a malformed answer: {exc}") from None
    if response["id"] not in (request_id, None):
        raise CommandFailed(
            ExitStatus.ERROR, f"meshd answered request {response['id']}, not {request_id}"
        )
    if not response["ok"]:
        raise CommandFailed(ExitStatus.ERROR, _error_message(cmd, response["error"]))
    result: dict[str, Any] = response["result"]
    return result


def _error_message(cmd: str, error: Mapping[str, str]) -> str:
    message = f"{cmd.removeprefix('kv_')} failed: {printable(error['message'])}"
    code = error["code"]
    if code == control.UNSUPPORTED_VERSION:
        message += (
            f"\nmeshctl {__version__} speaks control protocol v{control.PROTOCOL_VERSION}; "
            "install the same meshd and meshctl version"
        )
    elif code == control.UNKNOWN_COMMAND:
        message += f"\nthis meshd is older than meshctl {__version__}; upgrade meshd"
    elif code == control.BAD_REQUEST and not cmd.startswith("kv_"):
        # (A KV request's arguments come from the user; the message says what is wrong.)
        message += "\nmeshd did not understand meshctl's request; are they the same version?"
    return message


# ---------------------------------------------------------------------------
# Rendering results.


def _tags(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _names(members: Sequence[Mapping[str, Any]]) -> str:
    shown = [f"{m['name']} ({m['status']})" for m in members[:_WARN_NAMES]]
    if len(members) > _WARN_NAMES:
        shown.append(f"and {len(members) - _WARN_NAMES} more")
    return ", ".join(shown)


def _duration(seconds: float) -> str:
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size or parts:
            parts.append(f"{left // size}{unit}")
            left %= size
    parts.append(f"{left}s")
    return " ".join(parts)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``node-2`` before ``node-10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple((1, int(p)) if i % 2 else (0, p) for i, p in enumerate(parts))


def _by_name(members: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(members, key=lambda m: _natural(str(m["name"])))


# The status table. Columns a daemon does not report yet (load, owns and
# plugins arrive with the KV store and the plugins; health is known for this
# node only) show "--": meshctl never makes a number up.

_STATUS_LEGEND = (
    "Status=Alive/Suspect/Dead/Left  Inc=incarnation  Health=local health score, 0 is best",
    "Load=data stored  Owns=share of the keys  Via=how this node found the member  --=not known",
)
_STATUS_HEADER = (
    "--",
    "Name",
    "Address",
    "Load",
    "Owns",
    "Inc",
    "Health",
    "Plugins",
    "Via",
    "Tags",
)
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _size(value: object) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``12.0 MiB`` (binary units, like ``du -h``)."""
    size = float(_number(value))
    if size < 1024:
        return f"{int(size)} B"
    unit = 0
    while size >= 1024 and unit < len(_BYTE_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_BYTE_UNITS[unit]}"


def _number(value: object) -> int | float:
    """``value`` if it is a JSON number (not a bool), else ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a number, not {value!r}")
    return value


def _count(value: object) -> int:
    """A count from the daemon: an integer, or a list/object counted by its length."""
    if isinstance(value, list | dict):
        return len(value)
    return int(_number(value))


def _optional(member: Mapping[str, Any], key: str, show: Callable[[Any], str]) -> str:
    value = member.get(key)
    return "--" if value is None else show(value)


def _plugins(names: object) -> str:
    if not isinstance(names, list):
        raise TypeError(f"plugins must be a list, not {names!r}")
    return ",".join(map(str, names)) or "--"


def _member_row(member: Mapping[str, Any], local_health: object) -> tuple[object, ...]:
    health = member.get("health", local_health)
    return (
        _STATUS_LETTERS.get(member["status"], "?"),
        member["name"],
        member["addr"],
        _optional(member, "load", _size),
        _optional(member, "owns", lambda owns: f"{100 * _number(owns):.1f}%"),
        int(member["incarnation"]),
        "--" if health is None else int(_number(health)),
        _optional(member, "plugins", _plugins),
        member.get("via") or "--",
        _tags(member["tags"]) or "--",
    )


#: Footer fields that arrive with the KV store: (key in the answer, label).
_DATA_FOOTER = (
    ("under_replicated", "Under-replicated ranges"),
    ("hints_pending", "Hints pending"),
    ("handoffs", "Handoffs"),
)


def unhealthy(result: Mapping[str, Any]) -> list[str]:
    """What makes ``status --check`` exit 3, one short phrase each; empty when healthy.

    Unhealthy is: a member suspect or dead (left is a graceful exit), a
    suspected split, a local health score above 0, mDNS failed to start, or
    under-replicated key ranges (when the daemon reports them).

    Args:
        result: the daemon's ``status`` answer.
    """
    reasons = []
    for status in ("suspect", "dead"):
        count = sum(1 for m in result["members"] if m["status"] == status)
        if count:
            reasons.append(f"{count} member(s) {status}")
    if result.get("split"):
        reasons.append("the mesh may be split")
    health = int(_number(result["health"]))
    if health > 0:
        reasons.append(f"local health score {health}")
    if result.get("mdns") == "failed":
        reasons.append("mDNS discovery failed")
    if result.get("under_replicated") is not None:
        ranges = _count(result["under_replicated"])
        if ranges:
            reasons.append(f"{ranges} under-replicated range(s)")
    failing = [p["name"] for p in result.get("local_plugins") or () if p.get("failing")]
    if failing:
        reasons.append(f"plugin(s) failing: {', '.join(map(str, failing))}")
    return reasons


def render_status(result: Mapping[str, Any]) -> Rendered:
    """``meshctl status`` as text: header, legend, one row per member, footer, advice.

    The layout follows ``nodetool status`` and ``riak-admin member-status``
    (ECOSYSTEM.md §2.1). Column widths follow the widest cell, so long names
    widen a column instead of breaking the table.
    """
    members = _by_name(result["members"])
    counts = result["counts"]
    key = result["key_fingerprint"] or "none"
    header = printable(
        f"Mesh: {result['cluster']}  self={result['self']}  members={len(members)}  key={key}"
    )
    rows: list[Sequence[object]] = [_STATUS_HEADER]
    for m in members:
        rows.append(_member_row(m, result["health"] if m["name"] == result["self"] else None))
    out = [header, "=" * width(header), *_STATUS_LEGEND, *columns(rows)]
    out.append(
        f"Alive:{int(counts['alive'])} / Suspect:{int(counts['suspect'])} / "
        f"Dead:{int(counts['dead'])} / Left:{int(counts['left'])}"
    )
    data = [
        f"{label}:{_count(result[key])}"
        for key, label in _DATA_FOOTER
        if result.get(key) is not None
    ]
    if data:
        out.append(" / ".join(data))
    out += _status_warnings(result, members)
    return Rendered(out, [])


def _status_warnings(result: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> list[str]:
    """The warnings under the status table, each followed by what to do about it."""
    out = []
    split = result.get("split")
    if split:
        failed = [{"name": n, "status": "dead"} for n in split["failed"]]
        out.append(
            printable(
                f"WARNING: the mesh may be split: {len(failed)} of {int(split['known'])} members "
                f"failed within {float(split['within_s']):.0f} s: {_names(failed)}"
            )
        )
        out.append(
            "  check the network between this host and them (firewall, routing, switch); "
            f"their addresses are retried every {float(split['reconnect_interval_s']):g} s "
            "and the halves merge by themselves once packets flow"
        )
    troubled = [m for m in members if m["status"] in ("suspect", "dead")]
    if troubled:
        out.append(printable(f"WARNING: {len(troubled)} member(s) not alive: {_names(troubled)}"))
        out.append(
            "  check `systemctl status meshd` on those hosts, and that their address is "
            "reachable from here over UDP and TCP (firewall, routing)"
        )
    if result.get("mdns") == "failed":
        out.append("WARNING: mDNS discovery failed to start: this node finds no peers on the LAN")
        out.append(
            "  `meshctl info` shows the error; check [discovery] interfaces and that UDP port "
            "5353 to 224.0.0.251 is allowed; seeds and the snapshot still work"
        )
    if result.get("under_replicated") is not None:
        ranges = _count(result["under_replicated"])
        if ranges:
            out.append(f"WARNING: {ranges} key range(s) have fewer copies than configured")
            out.append(
                "  a further failure may make keys in them unavailable; "
                "bring back the members that are not alive"
            )
    out += plugin_warnings(result.get("local_plugins") or ())
    health = int(_number(result["health"]))
    if health > 0:
        out.append(
            f"Note: local health score {health} (0 is healthy): this node is missing acks, "
            "so it may be overloaded or losing packets; it probes more slowly until that clears"
        )
    return out


def render_members(result: Mapping[str, Any]) -> Rendered:
    """``meshctl members`` as text: serf-style ``name addr status tags``, no header."""
    rows = [(m["name"], m["addr"], m["status"], _tags(m["tags"])) for m in result["members"]]
    return Rendered(columns(rows), [])


_INFO_FIELDS = (
    "name",
    "version",
    "cluster",
    "address",
    "incarnation",
    "health",
    "uptime_s",
    "members",
    "config_path",
    "state_dir",
    "primary_key",
    "key_fingerprints",
    "tls_ca",
)


def _info_value(value: object) -> str:
    if value is None or value == "" or value == []:
        return "--"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def render_info(result: Mapping[str, Any]) -> Rendered:
    """``meshctl info`` as ``key: value`` lines; counters indented below ``counters:``."""
    out = []
    for key in _INFO_FIELDS:
        value = result[key]
        if key == "uptime_s":
            out.append(f"uptime: {_duration(float(value))}")
        else:
            out.append(printable(f"{key}: {_info_value(value)}"))
    discovery = result.get("discovery")
    if discovery:
        mdns = discovery["mdns"]
        text = str(mdns.get("state", "--"))
        if mdns.get("interfaces"):
            text += f" on {', '.join(map(str, mdns['interfaces']))}"
        if mdns.get("error"):
            text += f" ({mdns['error']})"
        out.append(printable(f"mdns: {text}"))
        sources = discovery.get("sources") or {}
        found = ", ".join(f"{k} {v}" for k, v in sources.items() if v) or "--"
        out.append(printable(f"discovered via: {found}"))
        out.append(printable(f"snapshot: {discovery['snapshot']}"))
    counters = result["counters"]
    out.append("counters:" if counters else "counters: --")
    out += [printable(f"  {name}: {counters[name]}") for name in sorted(counters)]
    return Rendered(out, [])


def _failures(result: Mapping[str, Any]) -> list[str]:
    failed: Mapping[str, str] = result["failed"]
    return [printable(f"{node}: {reason}") for node, reason in sorted(failed.items())]


def render_keys(result: Mapping[str, Any], op: str) -> Rendered:
    """``meshctl keys ...`` as text. Only fingerprints are ever printed, never keys."""
    failures = _failures(result)
    if op == "list":
        responded = int(result["responded"])
        keys = sorted(result["keys"], key=lambda k: (not k["primary"], str(k["fingerprint"])))
        rows: list[Sequence[object]] = [("Fingerprint", "Primary", "Members")]
        rows += [
            (k["fingerprint"], "yes" if k["primary"] else "no", f"{int(k['members'])}/{responded}")
            for k in keys
        ]
        out = columns(rows)
        advice = "the list covers only the nodes that answered"
    else:
        done = {"install": "installed", "use": "now using", "remove": "removed"}[op]
        fingerprint = printable(str(result["fingerprint"]))
        out = [f"{done} key {fingerprint} on {int(result['succeeded'])} node(s)"]
        advice = f"repeat 'meshctl keys {op}' once they are reachable"
    if not failures:
        return Rendered(out, [])
    err = [f"{len(failures)} node(s) did not complete 'keys {op}':", *failures, advice]
    return Rendered(out, err, ExitStatus.ERROR)


def render_join(result: Mapping[str, Any], addresses: Sequence[str]) -> Rendered:
    """``meshctl join`` as text; failed addresses go to stderr (success if any joined)."""
    joined = [str(a) for a in result["joined"]]
    out = [printable(f"joined {len(joined)} of {len(addresses)}: {', '.join(joined) or '--'}")]
    failures = _failures(result)
    err = [f"could not join {line}" for line in failures]
    return Rendered(out, err, ExitStatus.OK if joined else ExitStatus.ERROR)


def render_leave(result: Mapping[str, Any]) -> Rendered:
    """``meshctl leave`` as text."""
    if result.get("left") is not True:
        return Rendered([], ["meshd did not confirm that it left"], ExitStatus.ERROR)
    return Rendered(["left the mesh; meshd is shutting down"], [])


def render_metrics(result: Mapping[str, Any]) -> Rendered:
    """``meshctl metrics``: the Prometheus text exposition, verbatim."""
    text = result["text"]
    if not isinstance(text, str):
        raise TypeError(f"'text' must be a string, not {type(text).__name__}")
    # print() adds the final newline back: the output is the text as served.
    return Rendered([text.removesuffix("\n")], [])


def render_get(result: Mapping[str, Any], *, tty: bool) -> Rendered:
    """``meshctl get``: the value alone, as raw bytes (a newline is added on a terminal).

    An absent or deleted key prints nothing on stdout, a message on stderr,
    and exits 1.
    """
    if not result["found"]:
        what = "was deleted" if result.get("deleted") else "not found"
        key = result.get("key") or f"(base64) {result.get('key_b64')}"
        message = printable(f"key {key!r} {what} in namespace {result['ns']!r}")
        return Rendered([], [message], ExitStatus.ERROR)
    value = base64.b64decode(str(result["value_b64"]), validate=True)
    if tty and not value.endswith(b"\n"):
        value += b"\n"
    return Rendered([], [], ExitStatus.OK, value)


def _percent(value: object) -> str:
    return f"{100 * _number(value):.1f}%"


def _maybe(value: object, show: Callable[[Any], str] = lambda v: f"{int(_number(v)):,}") -> str:
    return "--" if value is None else show(value)


def render_ring(result: Mapping[str, Any]) -> Rendered:
    """``meshctl ring``: one row per ring member, then this node's handoff state."""
    members = _by_name(result["members"])
    header = printable(
        f"Ring {str(result['fingerprint'])[:12]}  replicas={int(result['replicas'])}  "
        f"partitions={int(result['partitions'])}  members={len(members)}  self={result['self']}"
    )
    rows: list[Sequence[object]] = [
        ("Name", "Status", "Primary", "Owns", "Keys", "Tombstones", "Load", "Hints", "Handoffs")
    ]
    for m in members:
        rows.append(
            (
                m["name"],
                m["status"],
                _percent(m["owns_primary"]),
                _percent(m["owns"]),
                _maybe(m.get("keys")),
                _maybe(m.get("tombstones")),
                _maybe(m.get("bytes"), _size),
                _maybe(m.get("hints")),
                _maybe(m.get("handoffs")),
            )
        )
    out = [header, "=" * width(header)]
    out.append(
        "Primary=share of the keys it is first owner of  Owns=share it holds a replica of  "
        "Load=key+value bytes  --=did not answer"
    )
    out += columns(rows)
    out.append(
        f"Handoffs pending here:{_count(result['handoffs'])} / "
        f"Rebalancing:{'yes' if result.get('rebalancing') else 'no'} / "
        f"Hints pending here:{_count(result['hints_pending'])} / "
        f"Under-replicated ranges:{_count(result['under_replicated'])}"
    )
    return Rendered(out, [])


# ---------------------------------------------------------------------------
# Plugins: meshctl plugins, event, services (the plugins' own answers are
# rendered here; the bundled plugins events and services answer the "plugin"
# control command).

#: Commands of this section.
PLUGIN_COMMANDS = ("plugins", "event", "services")

_PLUGINS_EPILOG = """\
Without an operation, lists this node's plugins: state (running, restarting,
stopped, refused; "failing" when it crashed and has not yet run for 60 s
since), restarts, how often it blocked the event loop, version and source.

reload re-reads the config file's [plugins] section and applies it without
restarting meshd: enabled plugins start, disabled ones stop, and those whose
section or code changed restart (NAME restarts that one in any case). A
plugin whose new section is invalid keeps running as it was; the problems
are printed and the exit status is 1. SIGHUP does the same for [plugins].

call runs a command a plugin offers (see its documentation) with a JSON
object of arguments and prints the JSON answer.
"""


def plugin_request(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command and arguments of ``plugins``, ``event`` and ``services``."""
    parser: argparse.ArgumentParser = ns.subparser
    if ns.command == "plugins":
        op = getattr(ns, "plugins_op", None) or "list"
        if op == "reload":
            return "plugins", {"op": "reload", "name": ns.name}
        if op == "call":
            try:
                args = json.loads(ns.arguments) if ns.arguments is not None else {}
            except json.JSONDecodeError as exc:
                parser.error(f"ARGS is not JSON: {exc}")
            if not isinstance(args, dict):
                parser.error('ARGS must be a JSON object, e.g. \'{"key": "alice"}\'')
            return "plugin", {"plugin": ns.plugin, "command": ns.plugin_command, "args": args}
        return "plugins", {"op": "list"}
    if ns.command == "event":
        if ns.payload == "-":
            raw = sys.stdin.buffer.read(64 * 1024)
        else:
            raw = os.fsencode(ns.payload or "")
        args = {"name": ns.name, "payload_b64": base64.b64encode(raw).decode("ascii")}
        return "plugin", {"plugin": "events", "command": "send", "args": args}
    args = {} if ns.name is None else {"name": ns.name}
    return "plugin", {"plugin": "services", "command": "list", "args": args}


def _ago(at: object) -> str:
    if not isinstance(at, int | float) or isinstance(at, bool):
        return ""
    return f" {_duration(max(0.0, time.time() - float(at)))} ago"


def plugin_warnings(plugins: Iterable[Mapping[str, Any]]) -> list[str]:
    """Warnings for failing, refused or blocking plugins (``status`` and ``plugins``)."""
    out: list[str] = []
    for p in plugins:
        name = printable(str(p["name"]))
        if p.get("state") == "refused":
            out.append(printable(f"WARNING: plugin {name} was refused: {p.get('last_error')}"))
            out.append("  fix its [plugins] section or install it, then: meshctl plugins reload")
        elif p.get("failing"):
            out.append(
                printable(
                    f"WARNING: plugin {name} is failing ({int(p.get('restarts') or 0)} "
                    f"restart(s)); last error{_ago(p.get('last_error_at'))}: {p.get('last_error')}"
                )
            )
            out.append(
                "  its traceback is in the meshd log (journalctl -u meshd); meshd restarts it "
                "with back-off, membership is not affected"
            )
        last = p.get("last_blocked")
        if last:
            out.append(
                printable(
                    f"WARNING: plugin {name} blocked the event loop {int(p.get('blocked') or 0)} "
                    f"time(s), last for {float(last['seconds']):.2f} s{_ago(last.get('at'))} at "
                    f"{last['where']}"
                )
            )
            out.append(
                "  membership stalls while it does; its author should move blocking work to "
                "trio.to_thread.run_sync (docs/plugins.md)"
            )
    return out


def render_plugins(result: Mapping[str, Any]) -> Rendered:
    """``meshctl plugins``: one row per plugin of this node, then warnings."""
    plugins = sorted(result["plugins"], key=lambda p: str(p["name"]))
    if not plugins:
        return Rendered(
            ["no plugins enabled on this node ([plugins] enabled in the config file)"], []
        )
    rows: list[Sequence[object]] = [
        ("Plugin", "State", "Restarts", "Blocked", "Version", "Source", "Status")
    ]
    for p in plugins:
        state = "failing" if p.get("failing") and p.get("state") != "refused" else p["state"]
        source = {"entry_point": "installed", "dir": "directory"}.get(
            str(p.get("source")), p.get("source") or "--"
        )
        rows.append(
            (
                p["name"],
                state,
                int(p.get("restarts") or 0),
                int(p.get("blocked") or 0),
                p.get("version") or "--",
                source,
                p.get("status") or "--",
            )
        )
    out = columns(rows)
    errors = [
        printable(f"  {p['name']}: last error{_ago(p.get('last_error_at'))}: {p['last_error']}")
        for p in plugins
        if p.get("last_error") and not p.get("failing") and p.get("state") != "refused"
    ]
    if errors:
        out += ["Earlier errors:", *errors]
    out += plugin_warnings(plugins)
    return Rendered(out, [])


def render_reload(result: Mapping[str, Any]) -> Rendered:
    """``meshctl plugins reload``: what changed; problems on stderr with exit status 1."""
    out = []
    for key in ("started", "restarted", "stopped", "unchanged"):
        names = result.get(key) or []
        if names:
            out.append(f"{key}: {', '.join(map(str, names))}")
    if not out:
        out.append("no plugins enabled")
    errors = result.get("errors") or {}
    err = [printable(f"{name}: {message}") for name, message in sorted(errors.items())]
    return Rendered(out, err, ExitStatus.ERROR if err else ExitStatus.OK)


def render_services(result: Mapping[str, Any], name: str | None) -> Rendered:
    """``meshctl services``: one row per service instance, mesh-wide."""
    services = sorted(
        result["services"], key=lambda s: (str(s["service"]), _natural(str(s["node"])))
    )
    unreachable: Mapping[str, str] = result.get("unreachable") or {}
    err = [printable(f"no answer from {node}: {why}") for node, why in sorted(unreachable.items())]
    if not services:
        what = f"no service {name!r}" if name else "no services"
        return Rendered([], [f"{what} announced by any member", *err], ExitStatus.ERROR)
    rows: list[Sequence[object]] = [("Service", "Node", "Address", "Health", "Tags", "Check")]
    for s in services:
        rows.append(
            (
                s["service"],
                s["node"],
                s["address"],
                s["health"],
                ",".join(map(str, s.get("tags") or [])) or "--",
                s.get("output") or ("--" if not s.get("check") else ""),
            )
        )
    healthy = sum(1 for s in services if s["health"] == "healthy")
    names = {s["service"] for s in services}
    out = [
        *columns(rows),
        f"{len(services)} instance(s) of {len(names)} service(s): {healthy} healthy, "
        f"{len(services) - healthy} not healthy",
    ]
    return Rendered(out, err)


def render_plugin_command(ns: argparse.Namespace, result: Mapping[str, Any]) -> Rendered:
    """Text (or ``--json``) output of ``plugins``, ``event`` and ``services``, and their status."""
    op = getattr(ns, "plugins_op", None) or "list"
    if getattr(ns, "json", False):
        failed = ns.command == "plugins" and op == "reload" and bool(result.get("errors"))
        return Rendered([_json_document(result)], [], ExitStatus.ERROR if failed else ExitStatus.OK)
    if ns.command == "plugins":
        if op == "reload":
            return render_reload(result)
        if op == "call":
            return Rendered([json.dumps(dict(result), indent=2, ensure_ascii=True)], [])
        return render_plugins(result)
    if ns.command == "event":
        return Rendered(
            [
                printable(
                    f"sent event {ns.name!r} ({int(result['bytes'])} bytes, Lamport time "
                    f"{int(result['ltime'])}) to the events plugin of every member"
                )
            ],
            [],
        )
    return render_services(result, ns.name)


def _add_plugin_commands(commands: Any) -> None:
    """``plugins [list|reload|call]``, ``event`` and ``services``."""
    plugins = _subparser(
        commands,
        "plugins",
        "this node's plugins; reload them; call a plugin's command",
        json_flag=True,
        epilog=_PLUGINS_EPILOG,
    )
    ops = plugins.add_subparsers(dest="plugins_op", metavar="OP", title="operations")
    _subparser(ops, "list", "state, restarts, blocking and last error (the default)", json_flag=True)
    reload = _subparser(
        ops, "reload", "apply [plugins] from the config file now", json_flag=True
    )
    reload.add_argument("name", nargs="?", metavar="NAME", help="also restart this plugin")
    call = _subparser(ops, "call", "run a plugin's command on this node", json_flag=True)
    call.add_argument("plugin", metavar="PLUGIN", help="the plugin")
    call.add_argument("plugin_command", metavar="COMMAND", help="its command")
    call.add_argument(
        "arguments", nargs="?", metavar="ARGS", help="a JSON object of arguments (default {})"
    )
    event = _subparser(
        commands,
        "event",
        "send a user event to every member (needs the events plugin)",
        json_flag=True,
        epilog="Members whose events plugin has a handler for user:NAME (or user, or *) run it\n"
        "with MESHD_USER_EVENT=NAME and the payload on stdin (docs/plugins.md).",
    )
    event.add_argument("name", metavar="NAME", help="the event name")
    event.add_argument(
        "payload", nargs="?", metavar="PAYLOAD", help="its payload (text), or - to read stdin"
    )
    services = _subparser(
        commands,
        "services",
        "services announced by the members, mesh-wide, with their health (plugin services)",
        json_flag=True,
    )
    services.add_argument("name", nargs="?", metavar="NAME", help="only this service")


def _json_document(result: Mapping[str, Any], *, compact: bool = False) -> str:
    """``{"v": 1, ...the daemon's answer}``; compact is one line (JSON Lines)."""
    document: dict[str, Any] = {"v": control.PROTOCOL_VERSION}
    document.update((k, v) for k, v in result.items() if k != "v")
    if compact:
        return json.dumps(document, ensure_ascii=True, separators=(",", ":"))
    return json.dumps(document, indent=2, ensure_ascii=True)


# ---------------------------------------------------------------------------
# Commands: what to send, how to show the answer.


def parse_key(text: str, *, stdin: Any = None) -> str:
    """Check a gossip key given on the command line and return it in canonical base64.

    Args:
        text: the ``KEY`` argument; ``-`` reads one line from ``stdin``.
        stdin: where ``-`` reads from (default: ``sys.stdin``).

    Returns:
        Standard base64 of the 32 key bytes.

    Raises:
        ValueError: not base64 of exactly 32 bytes; the message never
            contains the key.
    """
    if text == "-":
        text = (sys.stdin if stdin is None else stdin).readline()
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(HINT_KEY)
    return base64.b64encode(raw).decode("ascii")


#: Largest VALUE ``meshctl put`` sends: its base64 must fit one control line.
MAX_PUT_VALUE = (control.MAX_LINE - 4096) // 4 * 3


def _kv_request(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``put``/``get``/``delete``: the ``kv_*`` command and its arguments."""
    args: dict[str, Any] = {"ns": ns.ns, "key": ns.key}
    if ns.consistency is not None:
        args["consistency"] = ns.consistency
    if ns.command == "put":
        if ns.value == "-":
            raw = sys.stdin.buffer.read(MAX_PUT_VALUE + 1)
        else:
            raw = os.fsencode(ns.value)  # arguments are bytes to the OS; give them back
        if len(raw) > MAX_PUT_VALUE:
            parser: argparse.ArgumentParser = ns.subparser
            parser.error(
                f"VALUE is larger than the {MAX_PUT_VALUE} bytes meshctl can send through "
                "the control socket"
            )
        try:
            args["value"] = raw.decode()
        except UnicodeDecodeError:
            args["value_b64"] = base64.b64encode(raw).decode("ascii")
    return f"kv_{ns.command}", args


def _request(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The command name and arguments to send for the parsed command line."""
    if ns.command in ("put", "get", "delete"):
        return _kv_request(ns)
    if ns.command in PLUGIN_COMMANDS:
        return plugin_request(ns)
    if ns.command == "join":
        return "join", {"addresses": list(ns.addresses)}
    if ns.command == "keys":
        if ns.op == "list":
            return "keys", {"op": "list"}
        try:
            key = parse_key(ns.key)
        except ValueError as exc:
            parser: argparse.ArgumentParser = ns.subparser
            parser.error(str(exc))  # exits with status 2
        return "keys", {"op": ns.op, "key": key}
    return ns.command, {}


def _render(ns: argparse.Namespace, result: Mapping[str, Any]) -> Rendered:
    """The output for ``result``, as text or JSON per ``--json``; ``--check`` sets the status."""
    if ns.command in PLUGIN_COMMANDS:
        return render_plugin_command(ns, result)
    rendered = _render_output(ns, result)
    if ns.command == "get" and getattr(ns, "json", False) and not result.get("found"):
        return Rendered(rendered.out, [], ExitStatus.ERROR)
    if ns.command == "status" and ns.check:
        reasons = unhealthy(result)
        if reasons:
            message = printable(f"unhealthy: {'; '.join(reasons)}")
            return Rendered(rendered.out, [*rendered.err, message], ExitStatus.UNHEALTHY)
    return rendered


def _render_output(ns: argparse.Namespace, result: Mapping[str, Any]) -> Rendered:
    """The output for ``result``, as text or JSON per ``--json``."""
    if ns.command == "members" and ns.status:
        wanted = set(ns.status)
        result = {**result, "members": [m for m in result["members"] if m["status"] in wanted]}
        if not result["members"]:
            nothing = f"no member has status {' or '.join(sorted(wanted))}"
            out = [_json_document(result)] if getattr(ns, "json", False) else []
            return Rendered(out, [nothing], ExitStatus.ERROR)
    if getattr(ns, "json", False):
        # Under --watch: JSON Lines, one snapshot per line.
        compact = getattr(ns, "watch", None) is not None
        return Rendered([_json_document(result, compact=compact)], [])
    if ns.command == "status":
        return render_status(result)
    if ns.command == "get":
        return render_get(result, tty=sys.stdout.isatty())
    if ns.command in ("put", "delete"):
        return Rendered([], [])
    if ns.command == "ring":
        return render_ring(result)
    if ns.command == "metrics":
        return render_metrics(result)
    if ns.command == "members":
        return render_members(result)
    if ns.command == "info":
        return render_info(result)
    if ns.command == "join":
        return render_join(result, ns.addresses)
    if ns.command == "leave":
        return render_leave(result)
    return render_keys(result, ns.op)


# ---------------------------------------------------------------------------
# The command line.


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _watch_seconds(text: str) -> float:
    value = _positive_seconds(text)
    if value < MIN_WATCH:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_WATCH:g} seconds: {text!r}")
    return value


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _add_connection_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--socket/--config/--timeout``, accepted before and after the command.

    On subcommands the defaults are SUPPRESS, so a flag given before the
    command is not reset by the subcommand's parser.
    """
    group = parser.add_argument_group("connection")
    default: Callable[[object], object] = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    group.add_argument(
        "--socket",
        metavar="PATH",
        type=_nonempty,
        default=default(None),
        help=f"control socket of meshd (env {control.SOCKET_ENV})",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        type=_nonempty,
        default=default(None),
        help="meshd config file; its [control] socket is used",
    )
    group.add_argument(
        "--timeout",
        metavar="SECS",
        type=_positive_seconds,
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds to wait for meshd (default {DEFAULT_TIMEOUT:g})",
    )


def _subparser(
    commands: Any, name: str, help_text: str, *, json_flag: bool = False, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help='print one JSON document {"v": 1, ...}'
        )
    _add_connection_flags(parser, top=False)
    parser.set_defaults(subparser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``meshctl`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    _add_connection_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    status = _subparser(
        commands,
        "status",
        "the mesh as this node sees it, with a summary",
        json_flag=True,
        epilog=_STATUS_EPILOG,
    )
    mode = status.add_mutually_exclusive_group()
    mode.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH,
        type=_watch_seconds,
        metavar="SECS",
        help=f"redraw every SECS seconds (default {DEFAULT_WATCH:g}) until Ctrl-C; "
        "with --json, one JSON document per line",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help=f"exit {int(ExitStatus.UNHEALTHY)} when anything is unhealthy (see below), "
        "0 when all is well; the output is printed as usual",
    )
    members = _subparser(
        commands, "members", "list members (name, address, status, tags)", json_flag=True
    )
    members.add_argument(
        "--status",
        action="append",
        choices=control.MEMBER_STATUSES,
        help="only members with this status (repeat for several); none matching exits 1",
    )
    _subparser(commands, "info", "this node: version, uptime, keys, counters", json_flag=True)
    _subparser(
        commands,
        "metrics",
        "this node's Prometheus metrics, the text /metrics serves",
        json_flag=True,
    )
    join = _subparser(commands, "join", "contact other nodes and merge their membership")
    join.add_argument("addresses", nargs="+", metavar="ADDR", help="host:port of a mesh node")
    _subparser(commands, "leave", "leave the mesh gracefully; meshd then exits")

    _add_kv_commands(commands)
    _add_plugin_commands(commands)
    keys = _subparser(commands, "keys", "gossip keys across the mesh: list|install|use|remove")
    ops = keys.add_subparsers(dest="op", metavar="OP", title="operations", required=True)
    _subparser(
        ops, "list", "fingerprints of installed keys and how many nodes have each", json_flag=True
    )
    for op, help_text in (
        ("install", "install KEY on every node (it can then decrypt with it)"),
        ("use", "make the installed KEY primary on every node (it then encrypts with it)"),
        ("remove", "remove KEY from every node (not the primary)"),
    ):
        sub = _subparser(ops, op, help_text)
        sub.add_argument(
            "key", metavar="KEY", help="base64 of 32 bytes (meshd keygen), or - for stdin"
        )
    return parser


_KV_EPILOG = """\
Any node accepts the request and forwards it to the key's replicas (its
preference list on the ring). --consistency says how many of them must
answer: one, quorum (a majority; the default unless [kv] consistency says
otherwise) or all. When too few answer, the command fails with exit status 1
and says how many did and why the others did not.

Keys and values are text; `meshctl put KEY -` reads the value (any bytes)
from stdin, and `meshctl get` writes it back exactly (adding a newline only
on a terminal).
"""


#: Namespaces a client may name (``meshd.core.replication.check_namespace``,
#: checked here too so that a typo is a usage error before anything is sent).
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _namespace(text: str) -> str:
    if not _NAMESPACE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace: use 1..64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return text


def _add_kv_commands(commands: Any) -> None:
    """``put``, ``get``, ``delete`` and ``ring``."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("key", metavar="KEY", type=_nonempty, help="the key (text)")
        parser.add_argument(
            "--consistency",
            choices=("one", "quorum", "all"),
            help="replicas that must answer (default: [kv] consistency, normally quorum)",
        )
        parser.add_argument(
            "--ns",
            metavar="NAMESPACE",
            type=_namespace,
            default="default",
            help="namespace (default: default): letters, digits, '.', '_', ':', '-'",
        )

    put = _subparser(
        commands, "put", "store VALUE under KEY", json_flag=True, epilog=_KV_EPILOG
    )
    common(put)
    put.add_argument("value", metavar="VALUE", help="the value (text), or - to read it from stdin")
    get = _subparser(
        commands,
        "get",
        "print the value of KEY (exit 1 if absent)",
        json_flag=True,
        epilog=_KV_EPILOG,
    )
    common(get)
    delete = _subparser(commands, "delete", "delete KEY", json_flag=True, epilog=_KV_EPILOG)
    common(delete)
    _subparser(
        commands,
        "ring",
        "the ring: ownership, keys, bytes and handoffs per member",
        json_flag=True,
    )


def _fetch(
    ns: argparse.Namespace, choice: SocketChoice, cmd: str, args: dict[str, Any]
) -> Rendered:
    """One request and its rendering; a malformed answer is a :class:`CommandFailed`."""
    result = call(choice, cmd, args, timeout=ns.timeout)
    try:
        return _render(ns, result)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CommandFailed(
            ExitStatus.ERROR,
            f"meshd's {cmd} answer lacks or mistypes {exc}; "
            "are meshd and meshctl the same version? (--json shows the raw answer)",
        ) from None


def watch(
    snapshot: Callable[[], Rendered],
    *,
    interval: float,
    json_lines: bool = False,
    out: Any = None,
    err: Any = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> int:
    """``status --watch``: print ``snapshot()`` every ``interval`` seconds until Ctrl-C.

    On a terminal each text snapshot replaces the last (the screen is
    cleared); otherwise, and always with JSON Lines, snapshots follow each
    other so that a log or a pipe keeps them all. Snapshots start every
    ``interval`` seconds, not ``interval`` after the last one ended; a slow
    answer delays the next one instead of causing a burst.

    Args:
        snapshot: one request, rendered; raises :class:`CommandFailed`.
        interval: seconds between the starts of two snapshots.
        json_lines: the snapshots are JSON documents, one per line: no
            clearing and no heading.
        out: stream for the output (default ``sys.stdout``).
        err: stream for the diagnostics (default ``sys.stderr``).
        sleep: default ``time.sleep`` (looked up at call time, for tests).
        clock: default ``time.monotonic``.

    Returns:
        ``ExitStatus.OK`` after Ctrl-C.

    Raises:
        CommandFailed: the first snapshot failed (a wrong socket should not
            leave the operator watching an error). Later failures are shown
            and retried: the daemon may just be restarting.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    sleep = time.sleep if sleep is None else sleep
    clock = time.monotonic if clock is None else clock
    clear = not json_lines and out.isatty()
    first = True
    next_at = clock()
    try:
        while True:
            try:
                rendered = snapshot()
            except CommandFailed as fail:
                if first:
                    raise
                rendered = Rendered([], fail.message.splitlines(), fail.status)
            if not json_lines:
                if clear:
                    out.write(_CLEAR_SCREEN)
                elif not first:
                    out.write("\n")
                out.write(f"Every {interval:g}s: meshctl status  {time.strftime('%F %T')}\n")
            first = False
            _print(rendered.out, out)
            out.flush()
            _print(rendered.err, err, "meshctl: ")
            next_at += interval
            now = clock()
            if next_at < now:
                next_at = now
            sleep(next_at - now)
    except KeyboardInterrupt:
        if err.isatty():
            err.write("\n")  # the shell's prompt goes below the ^C
        return ExitStatus.OK


def _status_of(exc: SystemExit) -> int:
    """The exit status carried by a ``SystemExit`` (argparse raises it)."""
    if exc.code is None:
        return ExitStatus.OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return ExitStatus.ERROR


def _print(lines: Iterable[str], stream: Any, prefix: str = "") -> None:
    for line in lines:
        print(f"{prefix}{line}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshctl`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: command-line arguments, without the program name.

    Returns:
        An :class:`~meshd.cli.exit_codes.ExitStatus` value (as an int).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
        if ns.command is None:
            parser.print_help(sys.stderr)
            return ExitStatus.USAGE
        cmd, request_args = _request(ns)
        choice = resolve_socket(socket_flag=ns.socket, config_flag=ns.config, environ=os.environ)

        def snapshot() -> Rendered:
            return _fetch(ns, choice, cmd, request_args)

        if getattr(ns, "watch", None) is not None:
            return watch(snapshot, interval=ns.watch, json_lines=ns.json)
        rendered = snapshot()
        _print(rendered.out, sys.stdout)
        if rendered.data is not None:
            sys.stdout.flush()
            sys.stdout.buffer.write(rendered.data)
            sys.stdout.buffer.flush()
        _print(rendered.err, sys.stderr, "meshctl: ")
        return rendered.status
    except CommandFailed as fail:
        _print(fail.message.splitlines(), sys.stderr, "meshctl: ")
        return fail.status
    except SystemExit as exc:
        return _status_of(exc)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return ExitStatus.INTERRUPTED


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # `meshctl members | head -1`: the reader left; say nothing more.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = ExitStatus.ERROR
    sys.exit(status)
