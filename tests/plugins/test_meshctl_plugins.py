"""meshctl plugins / event / services: requests and rendering, without a daemon."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any

import pytest

from meshd.cli import meshctl
from meshd.cli.exit_codes import ExitStatus


def request(*argv: str, stdin: bytes = b"", monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    ns = meshctl.build_parser().parse_args(list(argv))
    return meshctl._request(ns)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plugins"], ("plugins", {"op": "list"})),
        (["plugins", "list", "--json"], ("plugins", {"op": "list"})),
        (["plugins", "reload"], ("plugins", {"op": "reload", "name": None})),
        (["plugins", "reload", "events"], ("plugins", {"op": "reload", "name": "events"})),
        (
            ["plugins", "call", "hello", "greet", '{"node": "n2"}'],
            ("plugin", {"plugin": "hello", "command": "greet", "args": {"node": "n2"}}),
        ),
        (
            ["plugins", "call", "hello", "greet"],
            ("plugin", {"plugin": "hello", "command": "greet", "args": {}}),
        ),
        (
            ["event", "deploy", "v42"],
            (
                "plugin",
                {
                    "plugin": "events",
                    "command": "send",
                    "args": {"name": "deploy", "payload_b64": base64.b64encode(b"v42").decode()},
                },
            ),
        ),
        (
            ["event", "ping"],
            (
                "plugin",
                {
                    "plugin": "events",
                    "command": "send",
                    "args": {"name": "ping", "payload_b64": ""},
                },
            ),
        ),
        (["services"], ("plugin", {"plugin": "services", "command": "list", "args": {}})),
        (
            ["services", "web", "--json"],
            ("plugin", {"plugin": "services", "command": "list", "args": {"name": "web"}}),
        ),
    ],
)
def test_requests(
    argv: list[str], expected: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert request(*argv, monkeypatch=monkeypatch) == expected


def test_event_payload_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    _cmd, args = request("event", "blob", "-", stdin=b"\x00\xffbinary", monkeypatch=monkeypatch)
    assert base64.b64decode(args["args"]["payload_b64"]) == b"\x00\xffbinary"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [("{bad", "ARGS is not JSON"), ("[1]", "ARGS must be a JSON object")],
)
def test_plugins_call_bad_json_is_a_usage_error(
    arguments: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = meshctl.main(["--socket", "/nonexistent", "plugins", "call", "p", "c", arguments])
    assert status == ExitStatus.USAGE
    assert message in capsys.readouterr().err


PLUGINS = {
    "plugins": [
        {
            "name": "services",
            "state": "running",
            "failing": False,
            "restarts": 0,
            "last_error": None,
            "blocked": 0,
            "version": "0.1.0",
            "source": "entry_point",
            "status": "2/2 service(s) healthy",
        },
        {
            "name": "crashy",
            "state": "restarting",
            "failing": True,
            "restarts": 3,
            "last_error": "RuntimeError: boom (crashy.py:9 in run)",
            "last_error_at": time.time() - 5,
            "blocked": 0,
            "version": None,
            "source": "dir",
        },
        {
            "name": "slow",
            "state": "running",
            "failing": False,
            "restarts": 1,
            "last_error": "ValueError: once (slow.py:3 in run)",
            "last_error_at": time.time() - 3600,
            "blocked": 2,
            "last_blocked": {"seconds": 1.5, "where": "slow.py:12 in spin", "at": time.time()},
            "source": "dir",
        },
        {
            "name": "future",
            "state": "refused",
            "failing": True,
            "restarts": 0,
            "last_error": "[plugins] enabled: plugin 'future' declares plugin API 2.0",
            "blocked": 0,
        },
    ]
}


def test_render_plugins_table_and_warnings() -> None:
    rendered = meshctl.render_plugins(PLUGINS)
    assert rendered.status == ExitStatus.OK
    table = [line.split() for line in rendered.out[:5]]
    assert table[0] == ["Plugin", "State", "Restarts", "Blocked", "Version", "Source", "Status"]
    assert table[1] == ["crashy", "failing", "3", "0", "--", "directory", "--"]
    assert table[2] == ["future", "refused", "0", "0", "--", "--", "--"]
    assert table[3] == [
        "services",
        "running",
        "0",
        "0",
        "0.1.0",
        "installed",
        "2/2",
        "service(s)",
        "healthy",
    ]
    assert table[4][:2] == ["slow", "running"]
    # "N s ago" depends on when this runs (PLUGINS is built at import, which
    # may be minutes before this test in a full run): write it as NN.
    text = re.sub(r"1h \d+m \d+s ago", "1h 0m NNs ago", "\n".join(rendered.out))
    text = re.sub(r"(?<![hm] )\b(\d+m )?\d+s ago", "NNs ago", text)
    assert "Earlier errors:\n  slow: last error 1h 0m NNs ago: ValueError: once" in text
    assert (
        "WARNING: plugin crashy is failing (3 restart(s)); last error NNs ago: RuntimeError: boom"
        in text
    )
    assert "WARNING: plugin future was refused: [plugins] enabled: plugin 'future'" in text
    assert (
        "WARNING: plugin slow blocked the event loop 2 time(s), last for 1.50 s NNs ago "
        "at slow.py:12 in spin" in text
    )


def test_render_plugins_none() -> None:
    assert meshctl.render_plugins({"plugins": []}).out == [
        "no plugins enabled on this node ([plugins] enabled in the config file)"
    ]


def test_render_reload() -> None:
    ok = meshctl.render_reload(
        {"started": ["a"], "restarted": [], "stopped": ["b"], "unchanged": ["c"], "errors": {}}
    )
    assert ok == meshctl.Rendered(["started: a", "stopped: b", "unchanged: c"], [], ExitStatus.OK)
    bad = meshctl.render_reload({"unchanged": ["c"], "errors": {"x": "[plugins.x] port: bad"}})
    assert bad.status == ExitStatus.ERROR
    assert bad.err == ["x: [plugins.x] port: bad"]


SERVICES = {
    "services": [
        {
            "service": "web",
            "node": "node-10",
            "address": "10.0.0.10:80",
            "health": "healthy",
            "tags": [],
            "check": "true",
            "output": "",
        },
        {
            "service": "web",
            "node": "node-2",
            "address": "10.0.0.2:80",
            "health": "unhealthy",
            "tags": ["v2"],
            "check": "x",
            "output": "refused",
        },
        {
            "service": "db",
            "node": "node-1",
            "address": "10.0.0.1:5432",
            "health": "healthy",
            "tags": [],
            "check": "",
            "output": "no check",
        },
    ],
    "unreachable": {"node-3": "timeout after 3 s"},
}


def test_render_services() -> None:
    rendered = meshctl.render_services(SERVICES, None)
    rows = [line.split() for line in rendered.out]
    assert rows[0] == ["Service", "Node", "Address", "Health", "Tags", "Check"]
    assert rows[1] == ["db", "node-1", "10.0.0.1:5432", "healthy", "--", "no", "check"]
    # node-2 before node-10 (natural order)
    assert [r[1] for r in rows[2:4]] == ["node-2", "node-10"]
    assert rows[2][3:] == ["unhealthy", "v2", "refused"]
    assert rendered.out[-1] == "3 instance(s) of 2 service(s): 2 healthy, 1 not healthy"
    assert rendered.err == ["no answer from node-3: timeout after 3 s"]
    assert rendered.status == ExitStatus.OK
    missing = meshctl.render_services({"services": [], "unreachable": {}}, "cache")
    assert missing.status == ExitStatus.ERROR
    assert missing.err == ["no service 'cache' announced by any member"]


def _status(local_plugins: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "self": "a",
        "cluster": "c",
        "key_fingerprint": "f",
        "health": 0,
        "counts": {"alive": 1, "suspect": 0, "dead": 0, "left": 0},
        "members": [
            {
                "name": "a",
                "addr": "1.2.3.4:1",
                "status": "alive",
                "incarnation": 1,
                "tags": {},
                "plugins": ["events", "services"],
            }
        ],
        "local_plugins": local_plugins,
    }


def test_status_shows_plugins_and_failing_is_unhealthy() -> None:
    healthy = _status(
        [{"name": "events", "state": "running", "failing": False, "restarts": 0, "blocked": 0}]
    )
    assert meshctl.unhealthy(healthy) == []
    rendered = meshctl.render_status(healthy)
    row = next(line for line in rendered.out if line.startswith("A "))
    assert "events,services" in row
    failing = _status(PLUGINS["plugins"])
    assert meshctl.unhealthy(failing) == ["plugin(s) failing: crashy, future"]
    text = "\n".join(meshctl.render_status(failing).out)
    assert "WARNING: plugin crashy is failing" in text
    assert "WARNING: plugin slow blocked the event loop" in text


def test_json_output_of_reload_with_errors_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = meshctl.build_parser().parse_args(["plugins", "reload", "--json"])
    result = {"started": [], "errors": {"x": "bad"}}
    rendered = meshctl._render(ns, result)
    assert rendered.status == ExitStatus.ERROR
    assert json.loads(rendered.out[0])["errors"] == {"x": "bad"}
