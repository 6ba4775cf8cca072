"""``meshctl put/get/delete/ring`` in process against the fake control server of test_meshctl.

The daemon side of these commands runs for real in tests/process/test_kv.py.
"""

# The fixtures of test_meshctl are imported by name, so pytest finds them; the
# test functions then take them as arguments (F811 for each).
# ruff: noqa: F811

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any

import pytest

# The fake server and its fixtures (``serve`` and the autouse isolation).
from test_meshctl import _isolated, error, ok, run, serve, short_dir  # noqa: F401

from meshd.cli import meshctl
from meshd.cli.exit_codes import ExitStatus

PUT_RESULT = {
    "ns": "default",
    "key": "greeting",
    "key_b64": "Z3JlZXRpbmc=",
    "deleted": False,
    "version": {"timestamp": "1700000000000.00000", "wall_ms": 1700000000000, "writer": "node-a"},
    "replicas": ["node-a", "node-b", "node-c"],
    "acked": ["node-a", "node-b"],
    "hinted": {},
}


def _get_result(value: bytes | None, *, deleted: bool = False) -> dict[str, Any]:
    return {
        "ns": "default",
        "key": "greeting",
        "key_b64": "Z3JlZXRpbmc=",
        "found": value is not None,
        "deleted": deleted,
        "value_b64": None if value is None else base64.b64encode(value).decode(),
        "value": None,
        "version": None,
        "replicas": ["node-a", "node-b", "node-c"],
        "answered": ["node-a", "node-b"],
    }


RING = {
    "self": "node-a",
    "fingerprint": "0123456789abcdef0123456789abcdef",
    "replicas": 3,
    "partitions": 65536,
    "members": [
        {
            "name": "node-b",
            "status": "alive",
            "owns_primary": 0.5,
            "owns": 1.0,
            "keys": 1200,
            "tombstones": 3,
            "bytes": 2048,
            "hints": 0,
            "handoffs": 0,
        },
        {
            "name": "node-a",
            "status": "alive",
            "owns_primary": 0.5,
            "owns": 1.0,
            "keys": None,
            "tombstones": None,
            "bytes": None,
            "hints": None,
            "handoffs": None,
        },
    ],
    "handoffs": 2,
    "rebalancing": True,
    "serving": True,
    "hints_pending": 5,
    "under_replicated": 0,
}


def test_meshctl_put_sends_key_value_and_options(serve: Any, capsys: Any) -> None:
    server = serve(ok(PUT_RESULT))
    status, out, err = run(
        capsys, server, "put", "greeting", "hello", "--consistency", "all", "--ns", "app.one"
    )
    assert (status, out, err) == (ExitStatus.OK, "", "")
    request = server.requests[0]
    assert request["cmd"] == "kv_put"
    assert request["args"] == {
        "ns": "app.one",
        "key": "greeting",
        "value": "hello",
        "consistency": "all",
    }


def test_meshctl_put_reads_binary_stdin_as_base64(
    serve: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ok(PUT_RESULT))
    raw = bytes(range(256))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    status, _, _ = run(capsys, server, "put", "blob", "-")
    assert status == ExitStatus.OK
    args = server.requests[0]["args"]
    assert "value" not in args
    assert base64.b64decode(args["value_b64"]) == raw


def test_meshctl_put_json_prints_the_answer(serve: Any, capsys: Any) -> None:
    server = serve(ok(PUT_RESULT))
    status, out, _ = run(capsys, server, "put", "greeting", "hello", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out) == {"v": 1, **PUT_RESULT}


def test_meshctl_put_refuses_a_value_too_large_for_the_socket(serve: Any, capsys: Any) -> None:
    server = serve(ok(PUT_RESULT))
    status, _, err = run(capsys, server, "put", "k", "x" * (meshctl.MAX_PUT_VALUE + 1))
    assert status == ExitStatus.USAGE
    assert "larger than" in err
    assert server.requests == []


def test_meshctl_get_prints_the_value_alone(serve: Any, capsys: Any) -> None:
    server = serve(ok(_get_result(b"hello world")))
    status, out, err = run(capsys, server, "get", "greeting")
    # Not a terminal: the value exactly, no newline added.
    assert (status, out, err) == (ExitStatus.OK, "hello world", "")
    assert server.requests[0]["args"] == {"ns": "default", "key": "greeting"}


def test_meshctl_get_adds_a_newline_on_a_terminal() -> None:
    rendered = meshctl.render_get(_get_result(b"v"), tty=True)
    assert rendered.data == b"v\n"
    assert meshctl.render_get(_get_result(b"v\n"), tty=True).data == b"v\n"


def test_meshctl_get_absent_key_exits_1_with_a_message(serve: Any, capsys: Any) -> None:
    server = serve(ok(_get_result(None)))
    status, out, err = run(capsys, server, "get", "greeting", "--consistency", "one")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err == "meshctl: key 'greeting' not found in namespace 'default'\n"
    assert server.requests[0]["args"]["consistency"] == "one"


def test_meshctl_get_deleted_key_says_so(serve: Any, capsys: Any) -> None:
    server = serve(ok(_get_result(None, deleted=True)))
    status, _, err = run(capsys, server, "get", "greeting")
    assert status == ExitStatus.ERROR
    assert "was deleted" in err


def test_meshctl_get_json_absent_exits_1(serve: Any, capsys: Any) -> None:
    server = serve(ok(_get_result(None)))
    status, out, _ = run(capsys, server, "get", "greeting", "--json")
    assert status == ExitStatus.ERROR
    assert json.loads(out)["found"] is False


def test_meshctl_kv_failure_names_the_operation(serve: Any, capsys: Any) -> None:
    message = "quorum needs 2 of 3 replicas, 1 answered (node-b: timeout, node-c: not alive)"
    server = serve(error("failed", message))
    status, out, err = run(capsys, server, "delete", "greeting")
    assert (status, out) == (ExitStatus.ERROR, "")
    assert err == f"meshctl: delete failed: {message}\n"
    assert server.requests[0]["cmd"] == "kv_delete"


def test_meshctl_kv_bad_consistency_is_a_usage_error(serve: Any, capsys: Any) -> None:
    server = serve(ok(PUT_RESULT))
    status, _, err = run(capsys, server, "put", "k", "v", "--consistency", "most")
    assert status == ExitStatus.USAGE
    assert "invalid choice" in err
    assert server.requests == []


def test_meshctl_ring_table(serve: Any, capsys: Any) -> None:
    server = serve(ok(RING))
    status, out, err = run(capsys, server, "ring")
    assert (status, err) == (ExitStatus.OK, "")
    lines = out.splitlines()
    assert lines[0] == ("Ring 0123456789ab  replicas=3  partitions=65536  members=2  self=node-a")
    assert lines[3].split() == [
        "Name",
        "Status",
        "Primary",
        "Owns",
        "Keys",
        "Tombstones",
        "Load",
        "Hints",
        "Handoffs",
    ]
    assert lines[4].split() == ["node-a", "alive", "50.0%", "100.0%", "--", "--", "--", "--", "--"]
    assert lines[5].split()[:7] == ["node-b", "alive", "50.0%", "100.0%", "1,200", "3", "2.0"]
    assert lines[-1] == (
        "Handoffs pending here:2 / Rebalancing:yes / Hints pending here:5 / "
        "Under-replicated ranges:0"
    )


def test_meshctl_ring_json(serve: Any, capsys: Any) -> None:
    server = serve(ok(RING))
    status, out, _ = run(capsys, server, "ring", "--json")
    assert status == ExitStatus.OK
    assert json.loads(out) == {"v": 1, **RING}


def test_meshctl_status_shows_load_owns_and_the_data_footer(serve: Any, capsys: Any) -> None:
    from test_meshctl import HEALTHY_STATUS

    member = {**HEALTHY_STATUS["members"][0], "load": 3 * 1024 * 1024, "owns": 0.6}
    result = {
        **HEALTHY_STATUS,
        "members": [member],
        "under_replicated": 0,
        "hints_pending": 4,
        "handoffs": 1,
    }
    server = serve(ok(result))
    status, out, _ = run(capsys, server, "status")
    assert status == ExitStatus.OK
    row = next(line for line in out.splitlines() if line.startswith("A "))
    assert "3.0 MiB" in row
    assert "60.0%" in row
    assert "Under-replicated ranges:0 / Hints pending:4 / Handoffs:1" in out


def test_meshctl_kv_bad_namespace_is_a_usage_error(serve: Any, capsys: Any) -> None:
    server = serve(ok(PUT_RESULT))
    status, _, err = run(capsys, server, "put", "k", "v", "--ns", "bad ns")
    assert status == ExitStatus.USAGE
    assert "'bad ns' is not a namespace" in err
    assert server.requests == []


def test_meshctl_kv_refusal_has_no_version_hint(serve: Any, capsys: Any) -> None:
    server = serve(error("bad_request", "bad arguments: key must be 1..1024 bytes, got 2000"))
    status, _, err = run(capsys, server, "get", "k" * 2000)
    assert status == ExitStatus.ERROR
    assert err == "meshctl: get failed: bad arguments: key must be 1..1024 bytes, got 2000\n"
