"""Plugins in real ``meshd run`` daemons on 127.0.0.1 (issue 6).

Test plugins come from ``plugin_fixtures/`` through ``[plugins] dirs``; the
bundled ones (``events``, ``services``) through their ``meshd.plugins``
entry points (``python3 dev.py`` installs them); a third-party one is a
wheel built here and installed with pip. meshctl is run in-process
(``meshctl.main``) against each daemon's socket.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.cli import meshctl
from meshd.cli.exit_codes import ExitStatus
from meshd.testing.cluster import ControlError, LocalCluster

FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"
CONVERGE_S = 20.0

Factory = Callable[..., LocalCluster]


def configure(c: LocalCluster, plugins: dict[str, Any], nodes: list[str] | None = None) -> None:
    for name in nodes or c.names:
        c.configure(name, "plugins", {"dirs": [str(FIXTURES)], **plugins})


def start(c: LocalCluster, *, env: dict[str, str] | None = None) -> None:
    for name in c.names:
        c.start(name, wait=False, env=env)
    for name in c.names:
        assert c.wait_until(lambda n=name: _answers(c, n), 30.0), f"{name} did not start"
    assert c.wait_until(c.converged, CONVERGE_S), "the daemons did not converge"


def _answers(c: LocalCluster, name: str) -> bool:
    proc = c.procs[name]
    if proc.poll() is not None:
        raise ControlError(f"{name} exited with status {proc.returncode}; see {c.log_path(name)}")
    try:
        c.request(name, "info", timeout=1.0)
    except ControlError:
        return False
    return True


def command(c: LocalCluster, at: str, plugin: str, cmd: str, /, **args: Any) -> dict[str, Any]:
    """Run ``cmd`` of ``plugin`` on node ``at`` (what ``meshctl plugins call`` does)."""
    return c.request(at, "plugin", {"plugin": plugin, "command": cmd, "args": args}, timeout=30)


def plugin_row(c: LocalCluster, node: str, plugin: str) -> dict[str, Any]:
    rows = c.request(node, "plugins")["plugins"]
    return next(r for r in rows if r["name"] == plugin)


def run_meshctl(
    c: LocalCluster, node: str, *argv: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    capsys.readouterr()
    status = meshctl.main(["--socket", str(c.socket_path(node)), "--timeout", "20", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def all_alive(c: LocalCluster) -> bool:
    return c.converged()


# ------------------------------------------------------------------ RPC


def test_plugin_rpc_to_key_owner_sees_verified_sender(cluster: Factory) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["probe"]})
    start(c)
    # Every member advertises the plugins it runs.
    status = c.request("node-1", "status")
    assert {m["name"]: m.get("plugins") for m in status["members"]} == {
        n: ["probe"] for n in c.names
    }
    for key in ("alice", "bob", "carol", "dave"):
        owners = command(c, "node-1", "probe", "owners", key=key)["owners"]
        # Every node computes the same owners (the ring is a function of the members).
        assert command(c, "node-2", "probe", "owners", key=key)["owners"] == owners
        assert sorted(owners) == c.names  # 3 replicas, 3 members
        for caller in ("node-1", "node-3"):
            result = command(c, caller, "probe", "owner", key=key)
            # The key's primary owner answered, and saw the TLS-verified caller.
            assert result["answer"] == {
                "node": owners[0],
                "sender": caller,
                "body": "for the owner",
            }

    # An unknown method is a clear error back to the caller.
    with pytest.raises(ControlError, match=r"plugin 'probe' on node-2 has no method 'nope'"):
        command(c, "node-1", "probe", "call", node="node-2", method="nope")
    row = plugin_row(c, "node-1", "probe")
    assert row["rpc_requests"] >= 4
    assert row["methods"] == ["whoami"]


def test_plugin_rpc_unknown_plugin_is_a_clear_error(cluster: Factory) -> None:
    # node-3 does not run "probe": calls to it fail with a message, and the
    # owner and load-balanced calls only ever pick members that run it.
    c = cluster(3, start=False)
    configure(c, {"enabled": ["probe"]}, nodes=["node-1", "node-2"])
    configure(c, {"enabled": []}, nodes=["node-3"])
    start(c)
    assert c.wait_until(
        lambda: (
            command(c, "node-1", "probe", "spread", count=4)["seen"] == {"node-1": 2, "node-2": 2}
        ),
        10.0,
    )
    with pytest.raises(ControlError, match=r"plugin 'probe' is not enabled on node-3"):
        command(c, "node-1", "probe", "call", node="node-3", method="whoami")
    owners = command(c, "node-2", "probe", "owners", key="k")["owners"]
    assert sorted(owners) == ["node-1", "node-2"]


def test_round_robin_spreads_calls_evenly(cluster: Factory) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["probe"]})
    start(c)
    for node in c.names:
        seen = command(c, node, "probe", "spread", count=30, strategy="round_robin")["seen"]
        assert seen == {"node-1": 10, "node-2": 10, "node-3": 10}, (node, seen)
    for strategy in ("random", "least_outstanding"):
        seen = command(c, "node-1", "probe", "spread", count=30, strategy=strategy)["seen"]
        assert sum(seen.values()) == 30
        assert set(seen) <= set(c.names)
    # Sequential calls: nothing outstanding, so least-outstanding rotates too.
    assert command(c, "node-2", "probe", "spread", count=6, strategy="least_outstanding")[
        "seen"
    ] == {"node-1": 2, "node-2": 2, "node-3": 2}


# ------------------------------------------------------------------ isolation


def test_raising_plugin_restarts_and_membership_stays_healthy(
    cluster: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["crashy", "probe"]}, nodes=["node-2"])
    configure(c, {"enabled": ["probe"]}, nodes=["node-1", "node-3"])
    start(c)
    # Back-off 1 s, 2 s, 4 s...: two restarts within a few seconds.
    assert c.wait_until(lambda: plugin_row(c, "node-2", "crashy")["restarts"] >= 2, 20.0)
    row = plugin_row(c, "node-2", "crashy")
    assert row["failing"] is True
    assert row["state"] in ("running", "restarting")
    assert row["last_error"].startswith("RuntimeError: boom: crashy always fails (crashy.py:")
    # The traceback is in the log.
    log = c.log_path("node-2").read_text()
    assert "plugin crashy failed" in log
    assert "Traceback" in log
    # Membership and the other plugin are unaffected, and stay so.
    assert LocalCluster.holds_for(lambda: all_alive(c), 3.0) is None
    assert command(c, "node-1", "probe", "call", node="node-2", method="whoami")["answer"]
    assert plugin_row(c, "node-2", "probe")["failing"] is False

    # meshctl shows it: plugins, status (warning) and status --check (exit 3).
    status, out, _ = run_meshctl(c, "node-2", "plugins", capsys=capsys)
    assert status == ExitStatus.OK
    assert any(line.split()[:2] == ["crashy", "failing"] for line in out.splitlines())
    assert "WARNING: plugin crashy is failing" in out
    assert "boom" in out
    status, out, err = run_meshctl(c, "node-2", "status", "--check", capsys=capsys)
    assert status == ExitStatus.UNHEALTHY
    assert "plugin(s) failing: crashy" in err
    assert "WARNING: plugin crashy is failing" in out
    assert "probe" in out  # the Plugins column of the member rows


def test_blocking_plugin_is_reported_by_name(
    cluster: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["blocker", "probe"], "block_threshold": 0.2})
    start(c)
    assert command(c, "node-1", "blocker", "block", seconds=1.0) == {"blocked": True}
    row = plugin_row(c, "node-1", "blocker")
    assert row["blocked"] == 1
    assert 0.9 <= row["last_blocked"]["seconds"] < 3.0
    assert row["last_blocked"]["where"].startswith("blocker.py:")
    log = c.log_path("node-1").read_text()
    assert "plugin blocker blocked the event loop for" in log
    assert "so far (threshold 0.20 s) by plugin 'blocker' at blocker.py:" in log
    assert plugin_row(c, "node-1", "probe")["blocked"] == 0
    _status, out, _ = run_meshctl(c, "node-1", "status", capsys=capsys)
    assert "WARNING: plugin blocker blocked the event loop 1 time(s)" in out
    # Nobody declared node-1 dead, and the mesh is whole again at once.
    assert c.wait_until(lambda: all_alive(c), 10.0)
    for node in c.names:
        assert c.request(node, "status")["counts"]["dead"] == 0


# ------------------------------------------------------------------ loading


def _build_wheel(directory: Path, *, api_version: str = "1.0") -> Path:
    """A wheel of a third-party plugin distribution, written by hand (no build backend)."""
    name, version = "meshd_thirdparty_test", "1.2.3"
    dist_info = f"{name}-{version}.dist-info"
    code = f'''
from meshd.plugin_api import Context, Option, Plugin, Schema


class ThirdParty(Plugin):
    api_version = "{api_version}"
    description = "a plugin installed with pip"
    config_schema = Schema({{"word": Option(str, default="pong")}})

    async def run(self, ctx: Context) -> None:
        async def ping(sender: str, body: bytes) -> bytes:
            return f"{{ctx.config['word']}} from {{ctx.node_id}}".encode()

        async def hello(args):
            answer = await ctx.call(args["node"], "ping")
            return {{"answer": answer.decode()}}

        ctx.register("ping", ping)
        ctx.command("hello", hello)
'''
    files = {
        f"{name}/__init__.py": code,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: meshd-thirdparty-test\nVersion: {version}\n"
        ),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": (f"[meshd.plugins]\nthirdparty = {name}:ThirdParty\n"),
    }
    record = [f"{path},," for path in files] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_third_party_plugin_installed_with_pip_loads_through_its_entry_point(
    cluster: Factory, tmp_path: Path
) -> None:
    wheel = _build_wheel(tmp_path)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True
    )
    assert (target / "meshd_thirdparty_test-1.2.3.dist-info" / "entry_points.txt").exists()

    c = cluster(3, start=False)
    configure(c, {"enabled": ["thirdparty"], "thirdparty": {"word": "pong!"}})
    start(c, env={"PYTHONPATH": str(target)})
    row = plugin_row(c, "node-1", "thirdparty")
    assert (row["state"], row["source"], row["version"]) == ("running", "entry_point", "1.2.3")
    assert "meshd-thirdparty-test 1.2.3" in row["where"]
    assert command(c, "node-1", "thirdparty", "hello", node="node-3") == {
        "answer": "pong! from node-3"
    }


def test_incompatible_plugin_is_refused_with_its_message(
    cluster: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["probe"]})
    # At start: exit 78 (configuration error), saying which API versions work.
    configure(c, {"enabled": ["probe", "future"]}, nodes=["node-3"])
    proc = c.start("node-3", wait=False)
    assert proc.wait(timeout=30) == ExitStatus.CONFIG
    message = (
        "[plugins] enabled: plugin 'future' (" + str(FIXTURES / "future.py") + ") declares "
        "plugin API 2.0; this meshd supports plugin API 1.0"
    )
    assert message in c.log_path("node-3").read_text()
    c.procs.pop("node-3")

    # On reload: refused with the same message, the running plugins stay.
    configure(c, {"enabled": ["probe"]}, nodes=["node-3"])
    start(c)
    configure(c, {"enabled": ["probe", "future"]}, nodes=["node-1"])
    status, out, err = run_meshctl(c, "node-1", "plugins", "reload", capsys=capsys)
    assert status == ExitStatus.ERROR
    assert "unchanged: probe" in out
    assert message in err
    row = plugin_row(c, "node-1", "future")
    assert row["state"] == "refused"
    assert message in row["last_error"]
    assert plugin_row(c, "node-1", "probe")["state"] == "running"
    assert c.converged()


def test_reload_starts_stops_and_reconfigures_without_a_restart(
    cluster: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["probe"]})
    start(c)
    pid = c.procs["node-1"].pid
    incarnation = c.request("node-1", "info")["incarnation"]
    # SIGHUP: enable blocker on node-1.
    configure(c, {"enabled": ["probe", "blocker"]}, nodes=["node-1"])
    c.procs["node-1"].send_signal(1)  # SIGHUP
    assert c.wait_until(
        lambda: any(r["name"] == "blocker" for r in c.request("node-1", "plugins")["plugins"]),
        10.0,
    )
    # The others learn it from node-1's tags.
    assert c.wait_until(
        lambda: (
            {m["name"]: m.get("plugins") for m in c.request("node-2", "status")["members"]}.get(
                "node-1"
            )
            == ["blocker", "probe"]
        ),
        10.0,
    )
    # meshctl plugins reload NAME restarts that one.
    status, out, _ = run_meshctl(c, "node-1", "plugins", "reload", "probe", capsys=capsys)
    assert status == ExitStatus.OK
    assert "restarted: probe" in out
    # Disable both: they stop.
    configure(c, {"enabled": []}, nodes=["node-1"])
    status, out, _ = run_meshctl(c, "node-1", "plugins", "reload", capsys=capsys)
    assert status == ExitStatus.OK
    assert "stopped: blocker, probe" in out
    assert c.wait_until(lambda: c.request("node-1", "plugins")["plugins"] == [], 10.0)
    assert c.procs["node-1"].pid == pid
    assert c.procs["node-1"].poll() is None
    assert c.request("node-1", "info")["incarnation"] > incarnation  # tags republished
    assert c.converged()


# ------------------------------------------------------------------ bundled plugins


def test_events_handler_runs_on_member_failure_with_the_event_in_its_environment(
    cluster: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "events"
    out_dir.mkdir()
    record = (
        f"env | grep ^MESHD_ | sort > {out_dir}/$MESHD_SELF_NAME.$MESHD_EVENT.env; "
        f"cat > {out_dir}/$MESHD_SELF_NAME.$MESHD_EVENT.stdin"
    )
    c = cluster(3, start=False)
    configure(
        c,
        {
            "enabled": ["events"],
            "events": {
                "handlers": [
                    {"event": "member-failed", "command": record},
                    {"event": "user:deploy", "command": record, "timeout": 10.0},
                ]
            },
        },
    )
    c.configure("node-1", "node", {"tags": {"role": "web"}})
    start(c)
    c.kill("node-3")
    env_file = out_dir / "node-1.member-failed.env"
    assert c.wait_until(env_file.exists, 40.0), "no member-failed handler ran on node-1"
    # The handler writes stdin after env: wait for that file's whole line.
    stdin_file = out_dir / "node-1.member-failed.stdin"
    assert c.wait_until(
        lambda: stdin_file.exists() and stdin_file.read_text().endswith("\n"), 10.0
    )
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["MESHD_EVENT"] == "member-failed"
    assert env["MESHD_MEMBER_NAME"] == "node-3"
    assert env["MESHD_MEMBER_STATUS"] == "dead"
    assert env["MESHD_MEMBER_ADDRESS"] == f"127.0.0.1:{c.ports['node-3']}"
    assert env["MESHD_SELF_NAME"] == "node-1"
    assert env["MESHD_SELF_ADDRESS"] == f"127.0.0.1:{c.ports['node-1']}"
    assert env["MESHD_TAG_ROLE"] == "web"
    assert env["MESHD_TAG_PLUGINS"] == "events"
    stdin = (out_dir / "node-1.member-failed.stdin").read_text()
    assert stdin.startswith(f"node-3\t127.0.0.1:{c.ports['node-3']}\tdead\t")
    assert c.wait_until((out_dir / "node-2.member-failed.env").exists, 20.0)

    # meshctl event NAME PAYLOAD: every member's user:deploy handler runs.
    status, out, _ = run_meshctl(c, "node-2", "event", "deploy", "v42", capsys=capsys)
    assert status == ExitStatus.OK
    assert "sent event 'deploy' (3 bytes" in out
    for node in ("node-1", "node-2"):
        stdin_file = out_dir / f"{node}.user.stdin"
        assert c.wait_until(lambda f=stdin_file: f.exists() and f.read_text() == "v42", 10.0)
        env = dict(
            line.split("=", 1) for line in (out_dir / f"{node}.user.env").read_text().splitlines()
        )
        assert (env["MESHD_EVENT"], env["MESHD_USER_EVENT"], env["MESHD_USER_ORIGIN"]) == (
            "user",
            "deploy",
            "node-2",
        )
        assert int(env["MESHD_USER_LTIME"]) >= 1
    # The plugin's metrics, and the plugin families, in /metrics.
    metrics = c.request("node-1", "metrics")["text"]
    assert 'meshd_plugin_up{plugin="events"} 1.0' in metrics
    assert 'meshd_plugin_restarts_total{plugin="events"} 0.0' in metrics
    handlers_run = re.search(r"^meshd_plugin_events_handlers_run_total (\S+)$", metrics, re.M)
    assert handlers_run is not None
    assert float(handlers_run.group(1)) >= 2


def test_services_shows_a_service_on_two_nodes_and_one_unhealthy(
    cluster: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = tmp_path / "node-2-healthy"
    c = cluster(3, start=False)

    def services(check: str, port: int) -> dict[str, Any]:
        return {
            "enabled": ["services"],
            "services": {
                "check_interval": 0.3,
                "service": [{"name": "web", "port": port, "tags": ["v2"], "check": check}],
            },
        }

    configure(c, services("true", 8080), nodes=["node-1"])
    configure(c, services(f"test -e {flag} || {{ echo not ready; exit 1; }}", 8081), ["node-2"])
    configure(c, {"enabled": ["services"]}, nodes=["node-3"])
    start(c)

    def rows() -> dict[str, tuple[str, str]]:
        listing = command(c, "node-3", "services", "list", name="web")
        assert listing["unreachable"] == {}
        return {s["node"]: (s["health"], s["address"]) for s in listing["services"]}

    assert c.wait_until(
        lambda: (
            rows()
            == {
                "node-1": ("healthy", "127.0.0.1:8080"),
                "node-2": ("unhealthy", "127.0.0.1:8081"),
            }
        ),
        15.0,
    )
    status, out, _ = run_meshctl(c, "node-3", "services", "web", capsys=capsys)
    assert status == ExitStatus.OK
    lines = out.splitlines()
    assert lines[0].split() == ["Service", "Node", "Address", "Health", "Tags", "Check"]
    assert lines[1].split()[:5] == ["web", "node-1", "127.0.0.1:8080", "healthy", "v2"]
    assert lines[2].split() == [
        "web",
        "node-2",
        "127.0.0.1:8081",
        "unhealthy",
        "v2",
        "not",
        "ready",
    ]
    assert "2 instance(s) of 1 service(s): 1 healthy, 1 not healthy" in out
    status, _, err = run_meshctl(c, "node-3", "services", "db", capsys=capsys)
    assert status == ExitStatus.ERROR
    assert "no service 'db'" in err

    flag.touch()  # the check passes from now on
    assert c.wait_until(lambda: rows()["node-2"][0] == "healthy", 10.0)
    # JSON for scripts.
    status, out, _ = run_meshctl(c, "node-1", "services", "--json", capsys=capsys)
    document = json.loads(out)
    assert {s["node"] for s in document["services"]} == {"node-1", "node-2"}


def test_hello_greets_over_rpc_counts_in_kv_and_says_hello(cluster: Factory) -> None:
    c = cluster(3, start=False)
    configure(c, {"enabled": ["hello"], "hello": {"greeting": "hi"}})
    start(c)

    def kv_open_everywhere() -> bool:  # each member counts: its KV requests are open
        answers = [command(c, "node-1", "hello", "greet", node=n)["answer"] for n in c.names]
        return all(" (greeted node-1 " in a for a in answers)

    assert c.wait_until(kv_open_everywhere, 20.0)
    # Round-robin over the three members; the count is kept in the KV store
    # (quorum writes and reads), so it grows whichever member answers.
    answers = [command(c, "node-1", "hello", "greet", name="Ada")["answer"] for _ in range(3)]
    assert sorted(a.split(", from ")[1].split(" ")[0] for a in answers) == c.names
    counts = [int(a.split("greeted node-1 ")[1].split(" ")[0]) for a in answers]
    assert counts == list(range(counts[0], counts[0] + 3))
    assert all(a.startswith("hi, Ada, from node-") for a in answers)

    # A restarted hello says hello again, and every other node hears it.
    # (At start-up a node can miss the others' first hello: an event only
    # reaches the subscribers that exist when it arrives.)
    def heard() -> list[int]:
        return [c.log_path(n).read_text().count("node-1 says hello") for n in ("node-2", "node-3")]

    before = heard()
    reloaded = c.request("node-1", "plugins", {"op": "reload", "name": "hello"})
    assert reloaded["restarted"] == ["hello"]
    assert c.wait_until(lambda: all(a > b for a, b in zip(heard(), before, strict=True)), 10.0)
