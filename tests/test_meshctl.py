"""``meshctl`` in process against a fake control server on a real unix socket.

The fake server is a test double for the *client*: a thread that accepts
connections, decodes each request with :mod:`meshd.control` and answers
with a canned reply. The daemon's own server is tested with the runtime.
Nothing sleeps: the client's socket timeouts and ``threading.Event`` do the
synchronising.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd import control
from meshd.cli import meshctl
from meshd.cli.exit_codes import ExitStatus
from meshd.cli.output import columns, printable, width

# ---------------------------------------------------------------------------
# Canned daemon answers.


def _member(
    name: str, addr: str, status: str, inc: int, tags: dict[str, str], via: str | None = "gossip"
) -> dict[str, Any]:
    return {
        "name": name,
        "id": name,
        "addr": addr,
        "status": status,
        "incarnation": inc,
        "tags": tags,
        "via": via,
        "protocol": {"min": 1, "max": 1, "version": 1},
    }


LONG = "node-c-with-a-rather-long-name.example.internal"
MEMBERS = [
    _member("node-b", "10.0.0.2:7946", "suspect", 7, {}),
    _member("node-a", "10.0.0.1:7946", "alive", 42, {"role": "web", "dc": "x"}, "self"),
    _member(LONG, "[2001:db8::3]:7946", "dead", 3, {"role": "db"}, "mdns"),
    _member("node-d", "10.0.0.4:7946", "left", 1, {}),
]
STATUS = {
    "self": "node-a",
    "cluster": "prod",
    "key_fingerprint": "0123456789abcdef",
    "address": "10.0.0.1:7946",
    "incarnation": 42,
    "health": 2,
    "uptime_s": 3725.5,
    "members": MEMBERS,
    "counts": {"alive": 1, "suspect": 1, "dead": 1, "left": 1},
    "split": None,
    "mdns": "running",
    "counters": {"packets_in": 5},
}
HEALTHY_STATUS = {
    **STATUS,
    "health": 0,
    "members": [MEMBERS[1]],
    "counts": {"alive": 1, "suspect": 0, "dead": 0, "left": 0},
}
MEMBERS_RESULT = {"self": "node-a", "members": MEMBERS}
INFO = {
    "name": "node-a",
    "version": "0.1.0",
    "address": "10.0.0.1:7946",
    "cluster": "prod",
    "incarnation": 42,
    "health": 0,
    "uptime_s": 93725.5,
    "config_path": "/etc/meshd/meshd.toml",
    "state_dir": "/var/lib/meshd",
    "members": 4,
    "key_fingerprints": ["0123456789abcdef", "fedcba9876543210"],
    "primary_key": "0123456789abcdef",
    "tls_ca": None,
    "discovery": {
        "mdns": {
            "state": "running",
            "error": None,
            "interfaces": ["10.0.0.1"],
            "instance": "node-a@prod-3f2a",
            "counters": {"peers_seen": 3},
        },
        "sources": {"mdns": 2, "seed": 1, "snapshot": 0, "join": 0, "gossip": 0},
        "rejoin": True,
        "snapshot": "/var/lib/meshd/members.json",
        "reconnect_interval_s": 30.0,
    },
    "counters": {"packets_in": 5, "acks": 3},
}
KEYS_LIST = {
    "keys": [
        {"fingerprint": "fedcba9876543210", "primary": False, "members": 2},
        {"fingerprint": "0123456789abcdef", "primary": True, "members": 3},
    ],
    "responded": 3,
    "failed": {},
}
KEY = base64.b64encode(bytes(range(32))).decode()


# ---------------------------------------------------------------------------
# The fake control server.

Reply = dict[str, Any] | bytes | None
Handler = Callable[[dict[str, Any]], Reply]


def ok(result: dict[str, Any]) -> Handler:
    """A handler answering every request with ``result``."""
    return lambda request: {"ok": True, "result": result}


def error(code: str, message: str) -> Handler:
    return lambda request: {"ok": False, "error": {"code": code, "message": message}}


class FakeServer:
    """Serves one canned reply per connection on a unix socket, in a thread.

    The handler returns ``{"ok": True, "result": ...}`` / ``{"ok": False,
    "error": ...}`` (encoded with the request's id), raw ``bytes`` to send as
    they are, or ``None`` to hold the connection open without answering
    until the server is closed.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._closing = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            with conn:
                if self._closing.is_set():
                    return
                try:
                    self._answer(conn)
                except Exception as exc:  # reported by close()
                    self.errors.append(exc)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        request = control.decode_request_untrusted(data)
        self.requests.append(request)
        reply = self.handler(request)
        if reply is None:
            self._closing.wait(10)
        elif isinstance(reply, bytes):
            conn.sendall(reply)
        elif reply["ok"]:
            conn.sendall(control.encode_response_ok(request["id"], reply["result"]))
        else:
            err = reply["error"]
            conn.sendall(control.encode_response_error(request["id"], err["code"], err["message"]))

    def close(self) -> None:
        self._closing.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(str(self.path))  # unblocks accept()
        self._thread.join(10)
        self._listener.close()
        assert not self._thread.is_alive()
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="meshctl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    """No socket from the environment or the host leaks into a test."""
    monkeypatch.delenv(control.SOCKET_ENV, raising=False)
    monkeypatch.setattr(control, "SYSTEM_SOCKET", short_dir / "no-system" / "meshd.sock")
    monkeypatch.chdir(short_dir)


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        server = FakeServer(short_dir / f"s{len(servers)}.sock", handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def run(
    capsys: pytest.CaptureFixture[str], server: FakeServer | None, *argv: str
) -> tuple[int, str, str]:
    """``meshctl [--socket PATH] ARGV`` in process: (status, stdout, stderr)."""
    prefix = ["--socket", str(server.path)] if server is not None else []
    status = meshctl.main([*prefix, *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------------
# status


def test_meshctl_status_text(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(STATUS))
    status, out, err = run(capsys, server, "status")
    assert (status, err) == (ExitStatus.OK, "")
    # Load, owns and plugins are not reported yet (KV store, plugins): "--",
    # never a made-up number. Health is known for this node only.
    assert out == (
        "Mesh: prod  self=node-a  members=4  key=0123456789abcdef\n"
        "========================================================\n"
        "Status=Alive/Suspect/Dead/Left  Inc=incarnation  Health=local health score, 0 is best\n"
        "Load=data stored  Owns=share of the keys  Via=how this node found the member"
        "  --=not known\n"
        f"--  Name{' ' * 45}Address             Load  Owns  Inc  Health  Plugins  Via     Tags\n"
        f"A   node-a{' ' * 43}10.0.0.1:7946       --    --    42   2       --       self"
        "    dc=x,role=web\n"
        f"S   node-b{' ' * 43}10.0.0.2:7946       --    --    7    --      --       gossip  --\n"
        f"D   {LONG}  [2001:db8::3]:7946  --    --    3    --      --       mdns    role=db\n"
        f"L   node-d{' ' * 43}10.0.0.4:7946       --    --    1    --      --       gossip  --\n"
        "Alive:1 / Suspect:1 / Dead:1 / Left:1\n"
        f"WARNING: 2 member(s) not alive: node-b (suspect), {LONG} (dead)\n"
        "  check `systemctl status meshd` on those hosts, and that their address is "
        "reachable from here over UDP and TCP (firewall, routing)\n"
        "Note: local health score 2 (0 is healthy): this node is missing acks, so it may be "
        "overloaded or losing packets; it probes more slowly until that clears\n"
    )
    assert server.requests == [{"v": 1, "id": 1, "cmd": "status", "args": {}}]


def test_meshctl_status_warns_of_a_split(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    split = {
        "failed": ["node-c", "node-d"],
        "known": 4,
        "within_s": 3.2,
        "since_s": 10.0,
        "reconnect_interval_s": 30.0,
    }
    server = serve(ok({**HEALTHY_STATUS, "split": split}))
    status, out, _ = run(capsys, server, "status")
    assert status == ExitStatus.OK
    assert (
        "WARNING: the mesh may be split: 2 of 4 members failed within 3 s: "
        "node-c (dead), node-d (dead)\n"
    ) in out
    assert "retried every 30 s" in out


def test_meshctl_status_healthy_has_no_warning(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({**HEALTHY_STATUS, "key_fingerprint": None}))
    status, out, _ = run(capsys, server, "status")
    assert status == ExitStatus.OK
    assert out.splitlines()[0] == "Mesh: prod  self=node-a  members=1  key=none"
    assert out.splitlines()[-1] == "Alive:1 / Suspect:0 / Dead:0 / Left:0"
    assert "WARNING" not in out
    assert "Note" not in out


def test_meshctl_status_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(STATUS))
    status, out, err = run(capsys, server, "status", "--json")
    assert (status, err) == (ExitStatus.OK, "")
    assert json.loads(out) == {"v": 1, **STATUS}
    assert next(iter(json.loads(out))) == "v"


def test_meshctl_status_warning_lists_at_most_ten_names(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = [_member(f"n{i:02d}", f"10.0.1.{i}:7946", "dead", 1, {}) for i in range(13)]
    counts = {"alive": 0, "suspect": 0, "dead": 13, "left": 0}
    server = serve(ok({**STATUS, "members": dead, "counts": counts}))
    _, out, _ = run(capsys, server, "status")
    (warning,) = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert warning.endswith("n09 (dead), and 3 more")
    assert warning.startswith("WARNING: 13 member(s) not alive: n00 (dead), ")


def test_meshctl_status_shows_data_fields_when_the_daemon_reports_them(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the KV store and the plugins will add: load (bytes), owns
    # (fraction), plugins, a member's own health, and the footer counts.
    extra = {
        "node-a": {"load": 123_456_789, "owns": 1 / 3, "plugins": ["hello", "status"]},
        "node-b": {"load": 512, "owns": 0.25, "plugins": [], "health": 1},
    }
    members = [{**MEMBERS[1], **extra["node-a"]}, {**MEMBERS[0], **extra["node-b"]}]
    result = {
        **HEALTHY_STATUS,
        "members": members,
        "counts": {"alive": 1, "suspect": 1, "dead": 0, "left": 0},
        "under_replicated": 0,
        "hints_pending": 12,
        "handoffs": [{"range": 1}, {"range": 2}],
    }
    server = serve(ok(result))
    status, out, _ = run(capsys, server, "status")
    assert status == ExitStatus.OK
    lines = out.splitlines()
    assert lines[4:7] == [
        "--  Name    Address        Load       Owns   Inc  Health  Plugins       Via     Tags",
        "A   node-a  10.0.0.1:7946  117.7 MiB  33.3%  42   0       hello,status  self"
        "    dc=x,role=web",
        "S   node-b  10.0.0.2:7946  512 B      25.0%  7    1       --            gossip  --",
    ]
    assert lines[8] == "Under-replicated ranges:0 / Hints pending:12 / Handoffs:2"
    assert "fewer copies" not in out  # 0 under-replicated ranges: no warning


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**60, "1024.0 PiB"),
    ],
)
def test_meshctl_size_uses_binary_units(size: int, text: str) -> None:
    assert meshctl._size(size) == text


def test_meshctl_status_mistyped_data_field_exits_1(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    members = [{**MEMBERS[1], "owns": "a third"}]
    server = serve(ok({**HEALTHY_STATUS, "members": members}))
    status, out, err = run(capsys, server, "status")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err.startswith("meshctl: meshd's status answer lacks or mistypes")


def test_meshctl_status_warns_when_mdns_failed(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({**HEALTHY_STATUS, "mdns": "failed"}))
    _, out, _ = run(capsys, server, "status")
    assert "WARNING: mDNS discovery failed to start" in out
    assert "meshctl info" in out
    assert "224.0.0.251" in out


def test_meshctl_status_warns_of_under_replicated_ranges(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({**HEALTHY_STATUS, "under_replicated": 3}))
    _, out, _ = run(capsys, server, "status")
    assert "Under-replicated ranges:3\n" in out
    assert "WARNING: 3 key range(s) have fewer copies than configured\n" in out


def test_meshctl_status_sorts_names_naturally(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["node-10", "node-2", "node-1", "db", "node-1b", "Node-3", "node-02"]
    members = [_member(n, "10.0.0.1:7946", "alive", 1, {}) for n in names]
    server = serve(ok({**HEALTHY_STATUS, "members": members}))
    _, out, _ = run(capsys, server, "status")
    rows = out.splitlines()[5 : 5 + len(names)]
    assert [row.split()[1] for row in rows] == [
        "Node-3",
        "db",
        "node-1",
        "node-1b",
        "node-2",
        "node-02",
        "node-10",
    ]


# ---------------------------------------------------------------------------
# status --check: exit 3 when anything is unhealthy.

SPLIT = {
    "failed": ["node-c", "node-d"],
    "known": 4,
    "within_s": 3.2,
    "since_s": 10.0,
    "reconnect_interval_s": 30.0,
}


def test_meshctl_status_check_healthy_exits_0_with_normal_output(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Left members are a graceful exit, not a fault.
    members = [MEMBERS[1], MEMBERS[3]]
    counts = {"alive": 1, "suspect": 0, "dead": 0, "left": 1}
    server = serve(ok({**HEALTHY_STATUS, "members": members, "counts": counts}))
    plain = run(capsys, server, "status")
    checked = run(capsys, server, "status", "--check")
    assert checked == plain
    assert checked[0] == ExitStatus.OK
    assert checked[2] == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"members": [MEMBERS[1], MEMBERS[0]]}, "1 member(s) suspect"),
        ({"members": [MEMBERS[1], MEMBERS[2]]}, "1 member(s) dead"),
        ({"split": SPLIT}, "the mesh may be split"),
        ({"health": 3}, "local health score 3"),
        ({"mdns": "failed"}, "mDNS discovery failed"),
        ({"under_replicated": 2}, "2 under-replicated range(s)"),
        ({"under_replicated": [{"range": 1}]}, "1 under-replicated range(s)"),
    ],
)
def test_meshctl_status_check_unhealthy_exits_3(
    serve: Any, capsys: pytest.CaptureFixture[str], change: dict[str, Any], reason: str
) -> None:
    server = serve(ok({**HEALTHY_STATUS, **change}))
    status, out, err = run(capsys, server, "status", "--check")
    assert status == ExitStatus.UNHEALTHY
    assert int(ExitStatus.UNHEALTHY) == 3  # documented in --help: never renumbered
    assert out.startswith("Mesh: prod")  # the usual output, too
    assert err == f"meshctl: unhealthy: {reason}\n"


def test_meshctl_status_check_lists_every_reason(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({**STATUS, "split": SPLIT, "mdns": "failed"}))
    status, _, err = run(capsys, server, "status", "--check")
    assert status == ExitStatus.UNHEALTHY
    assert err == (
        "meshctl: unhealthy: 1 member(s) suspect; 1 member(s) dead; the mesh may be split; "
        "local health score 2; mDNS discovery failed\n"
    )


def test_meshctl_status_check_with_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(STATUS))
    status, out, err = run(capsys, server, "status", "--check", "--json")
    assert status == ExitStatus.UNHEALTHY
    assert json.loads(out) == {"v": 1, **STATUS}
    assert err.startswith("meshctl: unhealthy: ")
    server2 = serve(ok(HEALTHY_STATUS))
    status, out, err = run(capsys, server2, "status", "--json", "--check")
    assert (status, err) == (ExitStatus.OK, "")
    assert json.loads(out) == {"v": 1, **HEALTHY_STATUS}


def test_meshctl_status_check_when_unreachable_is_not_3(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A monitor tells "meshd is down" (69) from "the mesh is degraded" (3).
    path = short_dir / "absent.sock"
    status, _, _ = run(capsys, None, "--socket", str(path), "status", "--check")
    assert status == ExitStatus.UNAVAILABLE


def test_meshctl_status_help_documents_check_and_exit_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, None, "status", "--help")
    assert status == ExitStatus.OK
    assert "--check" in out
    assert "--watch [SECS]" in out
    assert "  3    --check: something is unhealthy" in out
    status, out, _ = run(capsys, None, "--help")
    assert "  3    status --check: something is unhealthy" in out
    assert "meshctl metrics" in out


def test_meshctl_status_check_and_watch_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(capsys, None, "status", "--check", "--watch")
    assert status == ExitStatus.USAGE
    assert "not allowed with" in err


# ---------------------------------------------------------------------------
# status --watch


class _Interrupt:
    """A ``time.sleep`` stand-in: records delays, raises Ctrl-C on call ``after``."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) == self.after:
            raise KeyboardInterrupt


def test_meshctl_status_watch_redraws_until_ctrl_c(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok(HEALTHY_STATUS))
    sleep = _Interrupt(after=3)
    monkeypatch.setattr(time, "sleep", sleep)
    status, out, err = run(capsys, server, "status", "--watch", "0.5")
    assert (status, err) == (ExitStatus.OK, "")  # Ctrl-C ends a watch cleanly
    assert len(server.requests) == 3
    assert len(sleep.delays) == 3
    frames = out.split("\n\n")  # not a terminal: frames follow each other
    assert len(frames) == 3
    plain = meshctl.render_status(HEALTHY_STATUS).out
    for frame in frames:
        heading, *body = frame.rstrip("\n").split("\n")
        assert heading.startswith("Every 0.5s: meshctl status  ")
        assert body == plain
    assert "\x1b" not in out


def test_meshctl_status_watch_default_interval(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok(HEALTHY_STATUS))
    monkeypatch.setattr(time, "sleep", _Interrupt(after=1))
    status, out, _ = run(capsys, server, "status", "--watch", "--json")
    assert status == ExitStatus.OK
    # JSON Lines: one compact document per line, no heading.
    (line,) = out.splitlines()
    assert json.loads(line) == {"v": 1, **HEALTHY_STATUS}
    assert meshctl.build_parser().parse_args(["status", "--watch"]).watch == 2.0


@pytest.mark.parametrize("value", ["0", "0.05", "-1", "x"])
def test_meshctl_status_watch_bad_interval_is_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    status, _, err = run(capsys, None, "status", "--watch", value)
    assert status == ExitStatus.USAGE
    assert "--watch" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_meshctl_watch_clears_the_screen_only_on_a_terminal() -> None:
    frame = meshctl.Rendered(["table"], [])
    screen, pipe = _Terminal(), io.StringIO()
    for out in (screen, pipe):
        status = meshctl.watch(
            lambda: frame, interval=1, out=out, err=io.StringIO(), sleep=_Interrupt(after=2)
        )
        assert status == ExitStatus.OK
    assert screen.getvalue().count(meshctl._CLEAR_SCREEN) == 2
    assert screen.getvalue().startswith(meshctl._CLEAR_SCREEN + "Every 1s: meshctl status  ")
    assert "\x1b" not in pipe.getvalue()
    lines = pipe.getvalue().splitlines()
    assert [line for line in lines if not line.startswith("Every 1s:")] == ["table", "", "table"]
    json_screen = _Terminal()
    meshctl.watch(
        lambda: meshctl.Rendered(["{}"], []),
        interval=1,
        json_lines=True,
        out=json_screen,
        err=io.StringIO(),
        sleep=_Interrupt(after=2),
    )
    assert json_screen.getvalue() == "{}\n{}\n"


def test_meshctl_watch_keeps_a_steady_pace() -> None:
    now = [100.0]
    durations = iter([0.3, 2.5, 0.1])  # the second answer takes longer than the interval

    def snapshot() -> meshctl.Rendered:
        now[0] += next(durations)
        return meshctl.Rendered([], [])

    sleep = _Interrupt(after=3)

    def sleeping(seconds: float) -> None:
        now[0] += seconds
        sleep(seconds)

    meshctl.watch(
        snapshot,
        interval=2,
        out=io.StringIO(),
        err=io.StringIO(),
        sleep=sleeping,
        clock=lambda: now[0],
    )
    # Starts at 100, 102, 104.5 (late: no burst to catch up), next due at 106.5.
    assert sleep.delays == pytest.approx([1.7, 0.0, 1.9])


def test_meshctl_watch_first_failure_exits_later_failures_are_retried(
    short_dir: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "absent.sock"
    status, out, err = run(capsys, None, "--socket", str(path), "status", "--watch")
    assert (status, out) == (ExitStatus.UNAVAILABLE, "")
    assert "no socket there" in err

    answers = iter([ok(HEALTHY_STATUS), error(control.FAILED, "restarting"), ok(HEALTHY_STATUS)])
    server = serve(lambda request: next(answers)(request))
    prefix = ["--socket", str(server.path), "--timeout", "5"]
    ns = meshctl.build_parser().parse_args([*prefix, "status", "--watch"])
    choice = meshctl.SocketChoice(server.path, "--socket")
    out_stream, err_stream = io.StringIO(), io.StringIO()
    status = meshctl.watch(
        lambda: meshctl._fetch(ns, choice, "status", {}),
        interval=1,
        out=out_stream,
        err=err_stream,
        sleep=_Interrupt(after=3),
    )
    assert status == ExitStatus.OK
    assert err_stream.getvalue() == "meshctl: status failed: restarting\n"
    assert out_stream.getvalue().count("Mesh: prod") == 2
    assert len(server.requests) == 3


# ---------------------------------------------------------------------------
# metrics


METRICS_TEXT = (
    "# HELP meshd_members Members by state.\n"
    "# TYPE meshd_members gauge\n"
    'meshd_members{state="alive"} 3.0\n'
    "# HELP meshd_build_info Build information.\n"
    "# TYPE meshd_build_info gauge\n"
    'meshd_build_info{python="3.11.7",version="0.1.0"} 1.0\n'
)


def test_meshctl_metrics_prints_the_text_verbatim(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({"text": METRICS_TEXT}))
    status, out, err = run(capsys, server, "metrics")
    assert (status, out, err) == (ExitStatus.OK, METRICS_TEXT, "")
    assert server.requests == [{"v": 1, "id": 1, "cmd": "metrics", "args": {}}]
    status, out, _ = run(capsys, server, "metrics", "--json")
    assert json.loads(out) == {"v": 1, "text": METRICS_TEXT}


def test_meshctl_metrics_without_text_exits_1(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({"text": 42}))
    status, out, err = run(capsys, server, "metrics")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert "metrics answer lacks or mistypes" in err


# ---------------------------------------------------------------------------
# Start-up cost: meshctl status must answer in <= 150 ms on a 30-member mesh,
# interpreter start included, so its import path stays light.


def test_meshctl_imports_no_heavy_modules() -> None:
    heavy = [
        "trio",
        "prometheus_client",
        "zeroconf",
        "cryptography",
        "msgpack",
        "attrs",
        "meshd.config",
        "meshd.core",
        "meshd.runtime",
    ]
    code = f"import sys, meshd.cli.meshctl\nprint([m for m in {heavy!r} if m in sys.modules])\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# members


def test_meshctl_members_text(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(MEMBERS_RESULT))
    status, out, err = run(capsys, server, "members")
    assert (status, err) == (ExitStatus.OK, "")
    pad = " " * (len(LONG) - len("node-b"))
    assert out == (
        f"node-b{pad}  10.0.0.2:7946       suspect\n"
        f"node-a{pad}  10.0.0.1:7946       alive    dc=x,role=web\n"
        f"{LONG}  [2001:db8::3]:7946  dead     role=db\n"
        f"node-d{pad}  10.0.0.4:7946       left\n"
    )
    assert server.requests == [{"v": 1, "id": 1, "cmd": "members", "args": {}}]


def test_meshctl_members_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(MEMBERS_RESULT))
    status, out, _ = run(capsys, server, "members", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out) == {"v": 1, "self": "node-a", "members": MEMBERS}


def test_meshctl_members_status_filter(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(MEMBERS_RESULT))
    status, out, _ = run(capsys, server, "members", "--status", "dead", "--status", "suspect")
    assert status == ExitStatus.OK
    assert [line.split()[0] for line in out.splitlines()] == ["node-b", LONG]
    status, out, _ = run(capsys, server, "members", "--status", "alive", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out)["members"] == [MEMBERS[1]]


def test_meshctl_members_filter_matching_nothing_exits_1(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({"self": "node-a", "members": [MEMBERS[1]]}))
    status, out, err = run(capsys, server, "members", "--status", "dead")
    assert (status, out, err) == (ExitStatus.ERROR, "", "meshctl: no member has status dead\n")
    status, out, _ = run(capsys, server, "members", "--status", "dead", "--json")
    assert status == ExitStatus.ERROR
    assert json.loads(out) == {"v": 1, "self": "node-a", "members": []}


def test_meshctl_members_bad_status_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, None, "members", "--status", "zombie")
    assert status == ExitStatus.USAGE
    assert "invalid choice: 'zombie'" in err


# ---------------------------------------------------------------------------
# Columns hold with long, wide and hostile names.


def test_meshctl_long_names_keep_columns_aligned(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["a", "x" * 120, "b" * 40, "ノード-東京"]
    members = [_member(n, f"10.0.0.{i}:7946", "alive", i, {}) for i, n in enumerate(names)]
    counts = {"alive": 4, "suspect": 0, "dead": 0, "left": 0}
    server = serve(ok({**STATUS, "members": members, "counts": counts}))
    _, out, _ = run(capsys, server, "status")
    table = out.splitlines()[4:9]
    assert table[0].startswith("--  Name")
    # "Address" starts at the same terminal column on every line, and so
    # does every column after it (here "Via": "--" for every member).
    starts = {width(line.split("10.0.0.")[0]) for line in table[1:]}
    assert starts == {width(table[0].split("Address")[0])}
    assert len(starts) == 1
    assert starts.pop() == 4 + 120 + 2
    via = {width(line.rsplit("gossip", 1)[0]) for line in table[1:]}
    assert via == {width(table[0].split("Via")[0])}
    _, out, _ = run(capsys, server, "members")
    assert len({width(line.split("10.0.0.")[0]) for line in out.splitlines()}) == 1


def test_meshctl_escapes_control_characters_from_peers(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = _member("evil\x1b[2J\nfake-line", "10.0.0.9:7946", "alive", 1, {"k\r": "v\x07"})
    server = serve(ok({"self": "node-a", "members": [evil]}))
    status, out, _ = run(capsys, server, "members")
    assert status == ExitStatus.OK
    assert out == "evil\\x1b[2J\\nfake-line  10.0.0.9:7946  alive  k\\r=v\\x07\n"


# ---------------------------------------------------------------------------
# info


def test_meshctl_info_text(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(INFO))
    status, out, err = run(capsys, server, "info")
    assert (status, err) == (ExitStatus.OK, "")
    assert out == (
        "name: node-a\n"
        "version: 0.1.0\n"
        "cluster: prod\n"
        "address: 10.0.0.1:7946\n"
        "incarnation: 42\n"
        "health: 0\n"
        "uptime: 1d 2h 2m 5s\n"
        "members: 4\n"
        "config_path: /etc/meshd/meshd.toml\n"
        "state_dir: /var/lib/meshd\n"
        "primary_key: 0123456789abcdef\n"
        "key_fingerprints: 0123456789abcdef, fedcba9876543210\n"
        "tls_ca: --\n"
        "mdns: running on 10.0.0.1\n"
        "discovered via: mdns 2, seed 1\n"
        "snapshot: /var/lib/meshd/members.json\n"
        "counters:\n"
        "  acks: 3\n"
        "  packets_in: 5\n"
    )


def test_meshctl_info_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(INFO))
    status, out, _ = run(capsys, server, "info", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out) == {"v": 1, **INFO}


# ---------------------------------------------------------------------------
# join and leave


def test_meshctl_join_sends_addresses(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok({"joined": ["10.0.0.2:7946", "[::1]:7946"], "failed": {}}))
    status, out, err = run(capsys, server, "join", "10.0.0.2:7946", "[::1]:7946")
    assert (status, out, err) == (ExitStatus.OK, "joined 2 of 2: 10.0.0.2:7946, [::1]:7946\n", "")
    assert server.requests[0]["args"] == {"addresses": ["10.0.0.2:7946", "[::1]:7946"]}


def test_meshctl_join_partial_failure_warns_and_succeeds(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    result = {"joined": ["10.0.0.2:7946"], "failed": {"10.0.0.9:7946": "connection refused"}}
    server = serve(ok(result))
    status, out, err = run(capsys, server, "join", "10.0.0.2:7946", "10.0.0.9:7946")
    assert status == ExitStatus.OK
    assert out == "joined 1 of 2: 10.0.0.2:7946\n"
    assert err == "meshctl: could not join 10.0.0.9:7946: connection refused\n"


def test_meshctl_join_failure_exits_1_with_daemon_message(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(error(control.FAILED, "10.0.0.9:7946: connection refused"))
    status, out, err = run(capsys, server, "join", "10.0.0.9:7946")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err == "meshctl: join failed: 10.0.0.9:7946: connection refused\n"


def test_meshctl_join_needs_an_address(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, None, "join")
    assert status == ExitStatus.USAGE
    assert "ADDR" in err


def test_meshctl_leave(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok({"left": True}))
    assert run(capsys, server, "leave") == (
        ExitStatus.OK,
        "left the mesh; meshd is shutting down\n",
        "",
    )
    assert server.requests[0]["cmd"] == "leave"


# ---------------------------------------------------------------------------
# keys


def test_meshctl_keys_list_text(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(KEYS_LIST))
    status, out, err = run(capsys, server, "keys", "list")
    assert (status, err) == (ExitStatus.OK, "")
    assert out == (
        "Fingerprint       Primary  Members\n"
        "0123456789abcdef  yes      3/3\n"
        "fedcba9876543210  no       2/3\n"
    )
    assert server.requests[0]["args"] == {"op": "list"}


def test_meshctl_keys_list_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(ok(KEYS_LIST))
    status, out, _ = run(capsys, server, "keys", "list", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out) == {"v": 1, **KEYS_LIST}


def test_meshctl_keys_list_with_unreachable_nodes_exits_1(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok({**KEYS_LIST, "responded": 2, "failed": {"node-c": "timeout"}}))
    status, out, err = run(capsys, server, "keys", "list")
    assert status == ExitStatus.ERROR
    assert "0123456789abcdef  yes      3/2" in out
    assert err == (
        "meshctl: 1 node(s) did not complete 'keys list':\n"
        "meshctl: node-c: timeout\n"
        "meshctl: the list covers only the nodes that answered\n"
    )


@pytest.mark.parametrize(
    ("op", "done"), [("install", "installed"), ("use", "now using"), ("remove", "removed")]
)
def test_meshctl_keys_change(
    serve: Any, capsys: pytest.CaptureFixture[str], op: str, done: str
) -> None:
    result = {"op": op, "fingerprint": "aaaabbbbccccdddd", "succeeded": 3, "failed": {}}
    server = serve(ok(result))
    status, out, err = run(capsys, server, "keys", op, KEY)
    assert (status, out, err) == (ExitStatus.OK, f"{done} key aaaabbbbccccdddd on 3 node(s)\n", "")
    assert server.requests[0]["args"] == {"op": op, "key": KEY}


def test_meshctl_keys_change_partial_failure_exits_1_without_printing_key(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    result = {
        "op": "install",
        "fingerprint": "aaaabbbbccccdddd",
        "succeeded": 2,
        "failed": {"node-c": "timeout"},
    }
    server = serve(ok(result))
    status, out, err = run(capsys, server, "keys", "install", KEY)
    assert status == ExitStatus.ERROR
    assert out == "installed key aaaabbbbccccdddd on 2 node(s)\n"
    assert "node-c: timeout" in err
    assert "repeat 'meshctl keys install'" in err
    assert KEY not in out + err


def test_meshctl_keys_key_from_stdin(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok({"op": "use", "fingerprint": "f" * 16, "succeeded": 1, "failed": {}}))
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    status, out, err = run(capsys, server, "keys", "use", "-")
    assert status == ExitStatus.OK
    assert server.requests[0]["args"] == {"op": "use", "key": KEY}
    assert KEY not in out + err


@pytest.mark.parametrize(
    "key",
    [
        "bad",
        "",
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(range(32))).decode().rstrip("="),  # no padding
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),  # '-' and '_' are not standard base64
        "Zm9v YmFy" * 5,
    ],
)
def test_meshctl_keys_invalid_key_is_usage_error(
    serve: Any, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    server = serve(ok({}))
    status, out, err = run(capsys, server, "keys", "install", key)
    assert (status, out) == (ExitStatus.USAGE, "")
    assert "meshd keygen" in err
    assert "32" in err
    if key:
        assert key not in err
    assert server.requests == []  # rejected before connecting


def test_meshctl_keys_needs_an_operation(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, None, "keys")
    assert status == ExitStatus.USAGE
    assert "usage: meshctl keys" in err


def test_meshctl_parse_key_canonicalises() -> None:
    assert meshctl.parse_key(f"  {KEY}\n") == KEY
    assert meshctl.parse_key("-", stdin=io.StringIO(f"{KEY}\nignored\n")) == KEY
    with pytest.raises(ValueError, match="meshd keygen"):
        meshctl.parse_key("-", stdin=io.StringIO(""))


# ---------------------------------------------------------------------------
# Error responses and broken answers: exit 1 with a message.


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (control.FAILED, None),
        (control.UNKNOWN_COMMAND, "older than meshctl"),
        (control.UNSUPPORTED_VERSION, "control protocol v1"),
        (control.BAD_REQUEST, "same version"),
    ],
)
def test_meshctl_error_response_exits_1_with_message(
    serve: Any, capsys: pytest.CaptureFixture[str], code: str, hint: str | None
) -> None:
    server = serve(error(code, "it went wrong"))
    status, out, err = run(capsys, server, "info")
    assert (status, out) == (ExitStatus.ERROR, "")
    first, *rest = err.splitlines()
    assert first == "meshctl: info failed: it went wrong"
    if hint is None:
        assert rest == []
    else:
        assert len(rest) == 1
        assert hint in rest[0]


def test_meshctl_error_message_with_control_characters_is_escaped(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(error(control.FAILED, "bad\x1b[31m\nnews"))
    _, _, err = run(capsys, server, "status")
    assert err == "meshctl: status failed: bad\\x1b[31m\\nnews\n"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"not json\n", "meshctl: meshd sent a malformed answer: line is not JSON"),
        (
            b'{"v":2,"id":1,"ok":true,"result":{}}\n',
            "meshctl: meshd sent a malformed answer: protocol version 2",
        ),
        (b'{"v":1,"id":1,"ok":true', "meshctl: meshd closed the connection without answering"),
        (b"", "meshctl: meshd closed the connection without answering"),
        (b'{"v":1,"id":2,"ok":true,"result":{}}\n', "meshctl: meshd answered request 2, not 1"),
        (
            b'{"v":1,"id":1,"ok":true,"result":{"self":"a"}}\n',
            "meshctl: meshd's status answer lacks",
        ),
        (
            b" " * (control.MAX_LINE + 10),
            f"meshctl: meshd's answer is longer than {control.MAX_LINE}",
        ),
    ],
)
def test_meshctl_broken_answer_exits_1(
    serve: Any, capsys: pytest.CaptureFixture[str], reply: bytes, message: str
) -> None:
    server = serve(lambda request: reply)
    status, out, err = run(capsys, server, "status")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err.startswith(message)


def test_meshctl_error_with_null_id_is_reported(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(
        lambda request: control.encode_response_error(None, control.BAD_REQUEST, "line too long")
    )
    status, _, err = run(capsys, server, "members")
    assert status == ExitStatus.ERROR
    assert err.startswith("meshctl: members failed: line too long\n")


def test_meshctl_timeout_exits_1(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(lambda request: None)  # never answers
    status, out, err = run(capsys, server, "--timeout", "0.2", "status")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err.startswith("meshctl: meshd did not answer 'status' within 0.2s")
    assert str(server.path) in err
    assert "--timeout" in err


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_meshctl_bad_timeout_is_usage_error(capsys: pytest.CaptureFixture[str], value: str) -> None:
    status, _, err = run(capsys, None, "--timeout", value, "status")
    assert status == ExitStatus.USAGE
    assert "--timeout" in err


# ---------------------------------------------------------------------------
# Unreachable daemon: 69; permission denied: 77.


def test_meshctl_missing_socket_exits_69_with_hint(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "absent.sock"
    status, out, err = run(capsys, None, "--socket", str(path), "status")
    assert (status, out) == (ExitStatus.UNAVAILABLE, "")
    assert err == (
        "meshctl: cannot connect to meshd: no socket there\n"
        "meshctl: is meshd running? (systemctl status meshd, or meshd run --config FILE); "
        f"socket tried: {path} (from --socket)\n"
    )


def test_meshctl_refused_connection_exits_69(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stale socket file: bound once, nobody listening any more.
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    status, _, err = run(capsys, None, "--socket", str(path), "status")
    assert status == ExitStatus.UNAVAILABLE
    assert "connection refused" in err
    assert f"socket tried: {path}" in err


def test_meshctl_path_through_a_file_exits_69(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (short_dir / "file").write_text("")
    status, _, err = run(capsys, None, "--socket", str(short_dir / "file" / "x.sock"), "info")
    assert status == ExitStatus.UNAVAILABLE
    assert "is meshd running?" in err


def test_meshctl_default_socket_in_cwd_when_system_socket_absent(
    short_dir: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, None, "status")
    assert status == ExitStatus.UNAVAILABLE
    expected = short_dir / ".meshd" / "meshd.sock"
    assert f"socket tried: {expected} (also looked for {control.SYSTEM_SOCKET})" in err
    expected.parent.mkdir()
    server = FakeServer(expected, ok(MEMBERS_RESULT))
    try:
        status, out, _ = run(capsys, None, "members")
    finally:
        server.close()
    assert status == ExitStatus.OK
    assert out.startswith("node-b")


def test_meshctl_default_socket_prefers_system_socket(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok({"left": True}))
    monkeypatch.setattr(control, "SYSTEM_SOCKET", server.path)
    status, _, _ = run(capsys, None, "leave")
    assert status == ExitStatus.OK
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_meshctl_permission_denied_maps_to_77(code: int) -> None:
    choice = meshctl.SocketChoice(Path("/run/meshd/meshd.sock"), "default")
    status, message = meshctl.connect_failure(OSError(code, os.strerror(code)), choice)
    assert status == ExitStatus.NOPERM
    assert "/run/meshd/meshd.sock" in message
    assert "add yourself to group meshd (usermod -aG meshd $USER) or use sudo" in message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file"), ExitStatus.UNAVAILABLE),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ExitStatus.UNAVAILABLE),
        (OSError(errno.ENOTDIR, "not a dir"), ExitStatus.UNAVAILABLE),
        (OSError("AF_UNIX path too long"), ExitStatus.ERROR),
        (OSError(errno.EIO, "I/O error"), ExitStatus.ERROR),
    ],
)
def test_meshctl_connect_failure_mapping(exc: OSError, expected: ExitStatus) -> None:
    choice = meshctl.SocketChoice(Path("/x.sock"), "$MESHCTL_SOCKET")
    status, message = meshctl.connect_failure(exc, choice)
    assert status == expected
    assert "socket tried: /x.sock (from $MESHCTL_SOCKET)" in message


def test_meshctl_permission_denied_end_to_end(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok(STATUS))
    real_connect = socket.socket.connect

    def denied(self: socket.socket, address: Any) -> None:
        if address == str(server.path):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_connect(self, address)

    # Root ignores file modes, so the EACCES of a 0660 socket in a 0750
    # directory is injected at connect(); the real check runs below when
    # the tests are not root.
    monkeypatch.setattr(socket.socket, "connect", denied)
    status, out, err = run(capsys, server, "status")
    monkeypatch.undo()
    assert (status, out) == (ExitStatus.NOPERM, "")
    assert err == (
        f"meshctl: permission denied on the meshd control socket {server.path}\n"
        "meshctl: add yourself to group meshd (usermod -aG meshd $USER) or use sudo; "
        "a new group takes effect at your next login\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_meshctl_permission_denied_for_real(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = short_dir / "private"
    private.mkdir()
    server = FakeServer(private / "meshd.sock", ok(STATUS))
    private.chmod(0o000)
    try:
        status, _, err = run(capsys, server, "status")
    finally:
        private.chmod(0o700)
        server.close()
    assert status == ExitStatus.NOPERM
    assert "usermod -aG meshd" in err


# ---------------------------------------------------------------------------
# Finding the socket: --socket, $MESHCTL_SOCKET, --config, default.


def test_meshctl_env_socket_is_honoured(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok({"left": True}))
    monkeypatch.setenv(control.SOCKET_ENV, str(server.path))
    status, _, _ = run(capsys, None, "leave")
    assert status == ExitStatus.OK
    assert len(server.requests) == 1


def test_meshctl_socket_flag_beats_env(
    serve: Any, short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok({"left": True}))
    monkeypatch.setenv(control.SOCKET_ENV, str(short_dir / "elsewhere.sock"))
    assert run(capsys, server, "leave")[0] == ExitStatus.OK
    monkeypatch.setenv(control.SOCKET_ENV, str(server.path))
    status, _, err = run(capsys, None, "--socket", str(short_dir / "nope.sock"), "leave")
    assert status == ExitStatus.UNAVAILABLE
    assert "nope.sock" in err


def test_meshctl_connection_flags_after_the_command(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(ok(KEYS_LIST))
    status, _, _ = run(capsys, None, "keys", "list", "--socket", str(server.path), "--timeout", "3")
    assert status == ExitStatus.OK
    status, _, _ = run(capsys, None, "--socket", str(server.path), "keys", "list", "--timeout", "3")
    assert status == ExitStatus.OK


def _stub_config(socket_path: Path) -> Any:
    return types.SimpleNamespace(control=types.SimpleNamespace(socket=socket_path))


def test_meshctl_resolve_socket_order(tmp_path: Path) -> None:
    seen: list[str] = []

    def load(path: str) -> Any:
        seen.append(path)
        return _stub_config(Path("/from/config.sock"))

    def resolve(socket_flag: str | None, config_flag: str | None, env: dict[str, str]) -> Any:
        return meshctl.resolve_socket(
            socket_flag=socket_flag,
            config_flag=config_flag,
            environ=env,
            load_config=load,
            cwd=tmp_path,
        )

    env = {control.SOCKET_ENV: "/from/env.sock"}
    assert resolve("/flag.sock", "c.toml", env) == (Path("/flag.sock"), "--socket", ())
    assert resolve(None, "c.toml", env) == (Path("/from/env.sock"), "$MESHCTL_SOCKET", ())
    assert seen == []  # the config is not even read when not needed
    assert resolve(None, "c.toml", {control.SOCKET_ENV: ""}) == (
        Path("/from/config.sock"),
        "--config c.toml",
        (),
    )
    assert seen == ["c.toml"]
    assert resolve(None, None, {}) == (
        tmp_path / ".meshd" / "meshd.sock",
        "default",
        (control.SYSTEM_SOCKET,),
    )


def test_meshctl_default_socket_in_a_directory_we_may_not_enter(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # /run/meshd is 0750 meshd:meshd: for a user outside group meshd,
    # Path.exists() on the socket raises PermissionError. That must end as
    # exit 77 with the group hint, not as a traceback.
    def denied(*, cwd: Path | None = None) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(control, "default_socket_path", denied)
    choice = meshctl.resolve_socket(socket_flag=None, config_flag=None, environ={})
    assert choice.path == control.SYSTEM_SOCKET
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if address == str(control.SYSTEM_SOCKET):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    status, _, err = run(capsys, None, "status")
    assert status == ExitStatus.NOPERM
    assert "usermod -aG meshd" in err


def test_meshctl_config_flag_uses_meshd_config(
    serve: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok(INFO))
    fake = types.ModuleType("meshd.config")
    fake.load_config = lambda path: _stub_config(server.path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "meshd.config", fake)
    status, _, _ = run(capsys, None, "--config", "/etc/meshd/meshd.toml", "info")
    assert status == ExitStatus.OK
    assert server.requests[0]["cmd"] == "info"


def test_meshctl_config_flag_with_real_config_file(
    short_dir: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("meshd.config")
    server = serve(ok({"left": True}))
    config = short_dir / "meshd.toml"
    config.write_text(
        f'[cluster]\nsecret_file = "secret"\n\n[control]\nsocket = "{server.path.name}"\n'
    )
    status, _, err = run(capsys, None, "leave", "--config", str(config))
    assert (status, err) == (ExitStatus.OK, "")
    assert len(server.requests) == 1


def test_meshctl_unreadable_config_exits_78(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("meshd.config")
    status, out, err = run(capsys, None, "--config", str(short_dir / "missing.toml"), "status")
    assert (status, out) == (ExitStatus.CONFIG, "")
    assert err.startswith("meshctl: --config: ")
    assert "missing.toml" in err


# ---------------------------------------------------------------------------
# The column formatter and escaping.


def test_output_columns_pad_to_widest_cell_and_strip_trailing_space() -> None:
    assert columns([("a", "bb", ""), ("ccc", "d", "e")]) == ["a    bb", "ccc  d   e"]
    assert columns([("a", 1), ("long", None)], gap=1) == ["a    1", "long None"]
    assert columns([]) == []
    assert columns([("x",), ("y", "z")]) == ["x", "y  z"]


def test_output_width_counts_terminal_cells() -> None:
    assert width("abc") == 3
    assert width("東京") == 4
    assert width("e\u0301") == 1  # e + combining acute
    lines = columns([("東京", "x"), ("abcd", "y")])
    assert lines == ["東京  x", "abcd  y"]


def test_output_printable_escapes_only_unprintable() -> None:
    assert printable("node-a é 東京") == "node-a é 東京"
    assert printable("a\x1b[0m\n\t\x7f\u2028\ud800") == "a\\x1b[0m\\n\\t\\x7f\\u2028\\ud800"
