"""The plugin manager in one process (runtime/plugins.py), on trio's virtual clock.

A FakeDaemon gives the manager what a Daemon would: a real NodeCore (so
tags and broadcasts go through the membership core), a real RpcServer (calls
to this node run through it, as Daemon.call does), and a state directory.
Remote members are seeded into the core; calls to them fail as a daemon's
would. The process tests (tests/process/test_plugins.py) cover real daemons.
"""

from __future__ import annotations

import itertools
import random
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.config import Config, generate_secret, load_config
from meshd.core.config import MembershipConfig
from meshd.core.inputs import MetadataChanged, SendUserEvent
from meshd.core.node import NodeCore
from meshd.core.outputs import MemberJoined, UserEventReceived
from meshd.core.types import Member, MemberState, NodeId
from meshd.plugin_api import (
    CallError,
    MembershipEvent,
    Unavailable,
)
from meshd.runtime import rpc
from meshd.runtime.daemon import decode_tags, encode_tags
from meshd.runtime.plugins import (
    BACKOFF_MIN,
    PluginCommandFailed,
    PluginManager,
    _NotRunning,
)

SELF = NodeId("n1")


class FakeDaemon:
    """What PluginManager uses of a Daemon, with a real core and RPC server."""

    def __init__(self, config: Config, peers: dict[str, str] | None = None) -> None:
        self.config = config
        self.node_id = SELF
        self.rpc_server = rpc.RpcServer()
        self._core: NodeCore | None = None
        self.plugins = PluginManager(self, config)
        self.meta = encode_tags(self.node_tags())
        self._peers = peers or {}
        self.remote_calls: list[tuple[str, str]] = []

    def start_core(self) -> None:
        self._core = NodeCore(
            node_id=SELF,
            address=("127.0.0.1", 7001),
            config=MembershipConfig.lan(),
            rng=random.Random(0),
            now=trio.current_time(),
            meta=self.meta,
        )
        self._core.seed_members(
            [
                Member(
                    NodeId(name),
                    ("127.0.0.1", 7002 + i),
                    0,
                    MemberState.ALIVE,
                    encode_tags({"plugins": plugins} if plugins else {}),
                )
                for i, (name, plugins) in enumerate(self._peers.items())
            ],
            trio.current_time(),
        )

    @property
    def core(self) -> NodeCore:
        assert self._core is not None
        return self._core

    def node_tags(self, config: Config | None = None) -> dict[str, str]:
        return self.plugins.node_tags((config or self.config).node.tags)

    def publish_tags(self) -> None:
        meta = encode_tags(self.node_tags())
        if meta != self.meta:
            self._feed(MetadataChanged(meta))
            self.meta = meta

    def send_user_event(self, payload: bytes) -> int:
        for out in self._feed(SendUserEvent(payload)):
            if isinstance(out, UserEventReceived):
                return out.ltime
        raise AssertionError("no local delivery")

    def _feed(self, inp: Any) -> list[Any]:
        outputs = self.core.handle(inp, trio.current_time())
        for out in outputs:
            self.plugins.on_event(out)
        return outputs

    async def call(self, node_id: str, service: str, body: bytes, timeout: float) -> bytes:
        if node_id == SELF:
            with trio.fail_after(timeout):
                return await self.rpc_server.call_local(SELF, service, body)
        self.remote_calls.append((node_id, service))
        if node_id not in self._peers:
            raise rpc.RpcUnavailable("not_member", f"{node_id!r} is not an alive member")
        if service.removeprefix("plugin/") not in self._peers[node_id].split(","):
            raise rpc.RpcError(f"unknown service {service!r}")
        raise rpc.RpcUnavailable("connect", f"cannot connect to {node_id}")


def write(tmp_path: Path, toml: str, sources: dict[str, str]) -> Config:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir(exist_ok=True)
    for name, source in sources.items():
        (plugin_dir / f"{name}.py").write_text(textwrap.dedent(source))
    secret = tmp_path / "secret"
    secret.write_text(generate_secret() + "\n")
    secret.chmod(0o600)
    path = tmp_path / "meshd.toml"
    path.write_text(
        '[cluster]\nsecret_file = "secret"\n[node]\nname = "n1"\n'
        + '[plugins]\ndirs = ["plugins"]\n'
        + textwrap.dedent(toml)
    )
    return load_config(path, environ={})


@asynccontextmanager
async def running(daemon: FakeDaemon) -> AsyncIterator[PluginManager]:
    daemon.start_core()
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.plugins.run)
        await trio.sleep(0.01)  # let the plugins start
        yield daemon.plugins
        nursery.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def _forget_dir_modules() -> None:
    yield
    for name in [m for m in sys.modules if m.startswith("_meshd_plugin_")]:
        del sys.modules[name]


def row(manager: PluginManager, name: str) -> dict[str, Any]:
    return next(r for r in manager.describe() if r["name"] == name)


ECHO = """
from meshd.plugin_api import CallError, Context, Option, Plugin, Schema

STOPS = []


class Echo(Plugin):
    api_version = "1.0"
    config_schema = Schema({"word": Option(str, default="echo")})

    async def run(self, ctx: Context) -> None:
        async def echo(sender, body):
            return f"{ctx.config['word']} {sender} ".encode() + body

        async def refuse(sender, body):
            raise CallError("no, thanks")

        async def crash(sender, body):
            raise ValueError("handler bug")

        async def text(sender, body):
            return "not bytes"

        async def leave(sender, body):
            raise SystemExit(3)

        for name, handler in (
            ("echo", echo),
            ("refuse", refuse),
            ("crash", crash),
            ("text", text),
            ("exit", leave),
        ):
            ctx.register(name, handler)

        async def hello(args):
            if args.get("fail"):
                raise KeyError("oops")
            return {"hi": ctx.node_id}

        ctx.command("hello", hello)

    async def on_stop(self, ctx: Context) -> None:
        STOPS.append(ctx.config["word"])
"""

CRASHY = """
import trio
from meshd.plugin_api import Context, Plugin

RUNS = []


class Crashy(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        RUNS.append(trio.current_time())
        if len(RUNS) <= 3:
            raise RuntimeError(f"crash {len(RUNS)}")
        await trio.sleep_forever()
"""


# ------------------------------------------------------------------ supervision


async def test_supervisor_restarts_with_doubling_backoff_until_stable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["crashy"]\n', {"crashy": CRASHY}))
    async with running(daemon) as manager:
        module = sys.modules["_meshd_plugin_crashy"]
        await trio.sleep(10)
        runs = module.RUNS
        assert len(runs) == 4
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(runs)]
        assert gaps == [BACKOFF_MIN, 2 * BACKOFF_MIN, 4 * BACKOFF_MIN]
        r = row(manager, "crashy")
        assert (r["state"], r["restarts"], r["failures"], r["failing"]) == ("running", 3, 3, True)
        assert r["last_error"].startswith("RuntimeError: crash 3 (crashy.py:")
        await trio.sleep(61)  # a run of STABLE_AFTER clears "failing"
        assert row(manager, "crashy")["failing"] is False


async def test_supervisor_stop_cancels_run_and_calls_on_stop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = write(tmp_path, 'enabled = ["echo"]\n[plugins.echo]\nword = "one"\n', {"echo": ECHO})
    daemon = FakeDaemon(config)
    async with running(daemon) as manager:
        stops = sys.modules["_meshd_plugin_echo"].STOPS
        # A new section: restarted with it; on_stop saw the old one.
        changed = write(tmp_path, 'enabled = ["echo"]\n[plugins.echo]\nword = "two"\n', {})
        result = manager.apply(changed.plugins)
        assert result["restarted"] == ["echo"]
        await trio.sleep(0.1)
        assert stops == ["one"]
        answer = await manager.call(
            "echo", "n1", "echo", b"x", 1.0, __import__("collections").Counter()
        )
        assert answer == b"two n1 x"
        # Disabled: stopped, its service and tag gone.
        result = manager.apply(write(tmp_path, "enabled = []\n", {}).plugins)
        assert result["stopped"] == ["echo"]
        await trio.sleep(0.1)
        assert stops == ["one", "two"]
        assert manager.describe() == []
        assert "plugin/echo" not in daemon.rpc_server.statistics().services
        assert "plugins" not in decode_tags(daemon.meta)


async def test_apply_refuses_a_bad_section_and_keeps_the_running_version(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["echo"]\n', {"echo": ECHO}))
    async with running(daemon) as manager:
        bad = write(tmp_path, 'enabled = ["echo", "nope"]\n[plugins.echo]\nword = 3\n', {})
        result = manager.apply(bad.plugins)
        assert result["errors"]["echo"].startswith("[plugins.echo] word: must be a string")
        assert "[plugins] enabled: no plugin named 'nope'" in result["errors"]["nope"]
        echo = row(manager, "echo")
        assert echo["state"] == "running"
        assert echo["last_error"].startswith("reload refused, still running the previous version")
        assert row(manager, "nope")["state"] == "refused"
        assert decode_tags(daemon.meta)["plugins"] == "echo"


# ------------------------------------------------------------------ RPC


async def test_rpc_dispatch_answers_and_errors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from collections import Counter

    daemon = FakeDaemon(write(tmp_path, 'enabled = ["echo"]\n', {"echo": ECHO}))
    async with running(daemon) as manager:
        out: Counter[str] = Counter()

        async def call(method: str) -> bytes:
            return await manager.call("echo", "n1", method, b"b", 1.0, out)

        assert await call("echo") == b"echo n1 b"
        with pytest.raises(CallError, match=r"^no, thanks$"):
            await call("refuse")
        with pytest.raises(
            CallError,
            match=r"internal error in plugin 'echo' method 'crash' on n1: ValueError: handler bug",
        ):
            await call("crash")
        with pytest.raises(CallError, match=r"method 'text' on n1 returned str, not bytes"):
            await call("text")
        with pytest.raises(CallError, match=r"method 'exit' on n1: SystemExit: 3"):
            await call("exit")  # not even sys.exit() gets out of a plugin
        with pytest.raises(CallError, match=r"has no method 'nope' \(it has: crash, echo"):
            await call("nope")
        with pytest.raises(ValueError, match=r"method name must be 1\.\.255"):
            await call("")
        # The plugin survived its handlers' failures.
        r = row(manager, "echo")
        assert (r["state"], r["failures"], r["rpc_requests"], r["rpc_errors"]) == (
            "running",
            0,
            5,
            5,
        )
        assert out == Counter()  # nothing outstanding


async def test_rpc_to_a_node_without_the_plugin_is_not_running(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from collections import Counter

    daemon = FakeDaemon(write(tmp_path, 'enabled = ["echo"]\n', {"echo": ECHO}), {"n2": ""})
    async with running(daemon) as manager:
        with pytest.raises(_NotRunning, match="plugin 'echo' is not enabled on n2"):
            await manager.call("echo", "n2", "echo", b"", 1.0, Counter())
        with pytest.raises(Unavailable, match="not an alive member") as info:
            await manager.call("echo", "ghost", "echo", b"", 1.0, Counter())
        assert info.value.kind == "not_member"


ROUTER = """
from meshd.plugin_api import Context, Plugin


class Router(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        async def where(sender, body):
            return ctx.node_id.encode()

        async def route(args):
            if args["how"] == "owner":
                answer = await ctx.call_owner(args["key"], "where")
            else:
                answer = await ctx.call_any("where", strategy=args["how"])
            return {"answer": answer.decode(), "owners": ctx.owners(args.get("key", "k"))}

        ctx.register("where", where)
        ctx.command("route", route)
"""


async def test_calls_skip_members_that_did_not_run_the_request(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # n2 and n3 advertise the plugin but cannot be reached (connection
    # refused: the request surely did not run); n4 does not run it.
    daemon = FakeDaemon(
        write(tmp_path, 'enabled = ["router"]\n', {"router": ROUTER}),
        {"n2": "router", "n3": "router", "n4": "other"},
    )
    async with running(daemon) as manager:
        peers = [m.node_id for m in manager.peers("router")]
        assert peers == ["n1", "n2", "n3"]
        for how in ("round_robin", "random", "least_outstanding", "round_robin", "round_robin"):
            result = await manager.command(
                {"plugin": "router", "command": "route", "args": {"how": how}}
            )
            assert result["answer"] == "n1"
        result = await manager.command(
            {"plugin": "router", "command": "route", "args": {"how": "owner", "key": "alice"}}
        )
        assert result["answer"] == "n1"
        assert sorted(result["owners"]) == ["n1", "n2", "n3"]  # never n4
        assert {node for node, _ in daemon.remote_calls} <= {"n2", "n3"}


# ------------------------------------------------------------------ events, tags, broadcasts

EVENTS = """
import trio
from meshd.plugin_api import Context, Plugin

SEEN = []


class Events(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        members = ctx.membership_events()
        users = ctx.user_events()

        async def watch(stream):
            async for item in stream:
                SEEN.append(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, members)
            nursery.start_soon(watch, users)
            await trio.sleep(0)
            SEEN.append(ctx.broadcast("hi", b"there"))
"""


async def test_membership_and_user_events_reach_the_plugin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["events"]\n', {"events": EVENTS}))
    async with running(daemon) as manager:
        seen = sys.modules["_meshd_plugin_events"].SEEN
        await trio.sleep(0.1)
        joined = Member(
            NodeId("n9"), ("10.0.0.9", 7946), 2, MemberState.ALIVE, encode_tags({"plugins": "a,b"})
        )
        manager.on_event(MemberJoined(joined))
        # Another plugin's event, and garbage, are not delivered.
        manager.on_event(UserEventReceived(NodeId("n9"), 5, b"\x93\xa5other\xa1x\xc4\x00"))
        manager.on_event(UserEventReceived(NodeId("n9"), 6, b"\xc1"))
        await trio.sleep(0.1)
        assert seen[0] == 1  # broadcast() returns the event's Lamport time
        [own, member] = seen[1:]
        assert (own.name, own.payload, own.origin, own.ltime) == ("hi", b"there", "n1", 1)
        assert isinstance(member, MembershipEvent)
        assert member.kind == "joined"
        assert (member.member.node_id, member.member.plugins, member.member.incarnation) == (
            "n9",
            frozenset({"a", "b"}),
            2,
        )
        assert manager.counters["plugin_events_unclaimed"] == 1
        assert manager.counters["plugin_events_malformed"] == 1


TAGS = """
from meshd.plugin_api import Context, Plugin


class Tags(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        async def tag(args):
            ctx.set_tags(args["tags"])
            return {"tags": dict(ctx.tags)}

        async def shout(args):
            for i in range(args["count"]):
                ctx.broadcast("n", bytes(args.get("size", 0)))
            return {}

        ctx.command("tag", tag)
        ctx.command("shout", shout)
"""


async def test_tags_are_published_under_the_plugin_name_within_the_cap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["tags"]\n', {"tags": TAGS}))
    async with running(daemon) as manager:
        incarnation = daemon.core.incarnation
        result = await manager.command(
            {"plugin": "tags", "command": "tag", "args": {"tags": {"v": "1"}}}
        )
        assert result["tags"] == {"plugins": "tags", "tags.v": "1"}
        assert decode_tags(daemon.meta) == result["tags"]
        assert daemon.core.incarnation == incarnation + 1  # gossiped as an update
        with pytest.raises(PluginCommandFailed) as info:
            await manager.command(
                {"plugin": "tags", "command": "tag", "args": {"tags": {"big": "x" * 600}}}
            )
        assert str(info.value).startswith("plugin 'tags' tags refused: node metadata is 6")
        assert "membership.meta_max_size is 512 bytes" in str(info.value)
        assert decode_tags(daemon.meta)["tags.v"] == "1"  # unchanged


async def test_broadcasts_are_size_checked_and_rate_limited(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["tags"]\n', {"tags": TAGS}))
    async with running(daemon) as manager:
        with pytest.raises(PluginCommandFailed, match=r"at most \d+ bytes fit in one gossip"):
            await manager.command(
                {"plugin": "tags", "command": "shout", "args": {"count": 1, "size": 1400}}
            )
        await manager.command({"plugin": "tags", "command": "shout", "args": {"count": 200}})
        with pytest.raises(PluginCommandFailed, match="more than 50 broadcasts a second"):
            await manager.command({"plugin": "tags", "command": "shout", "args": {"count": 1}})
        await trio.sleep(1.0)  # the bucket refills
        await manager.command({"plugin": "tags", "command": "shout", "args": {"count": 40}})
        assert row(manager, "tags")["events_sent"] == 240


# ------------------------------------------------------------------ state, commands, watch

STATEFUL = """
from meshd.plugin_api import Context, Plugin


class Stateful(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        state = await ctx.restore() or {"runs": 0, "blob": b""}
        state["runs"] += 1
        state["blob"] += b"x"
        await ctx.checkpoint(state)

        async def get(args):
            return {"runs": state["runs"], "blob": len(state["blob"])}

        ctx.command("get", get)
"""


async def test_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    config = write(tmp_path, 'enabled = ["stateful"]\n', {"stateful": STATEFUL})
    daemon = FakeDaemon(config)
    async with running(daemon) as manager:
        await trio.sleep(0.2)
        assert await manager.command({"plugin": "stateful", "command": "get"}) == {
            "runs": 1,
            "blob": 1,
        }
        manager.apply(config.plugins, force=["stateful"])
        with trio.fail_after(5):
            while (  # noqa: ASYNC110 - polls a condition of another task's making
                row(manager, "stateful")["commands"] != ["get"]
                or (await manager.command({"plugin": "stateful", "command": "get"}))["runs"] != 2
            ):
                await trio.sleep(0.05)
    assert (config.state.dir / "plugins" / "stateful" / "checkpoint.msgpack").exists()


async def test_commands_report_clear_errors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["echo"]\n', {"echo": ECHO}))
    async with running(daemon) as manager:
        assert await manager.command({"plugin": "echo", "command": "hello"}) == {"hi": "n1"}
        for args, message in (
            ({"plugin": "nope", "command": "x"}, "plugin 'nope' is not enabled on this node"),
            (
                {"plugin": "echo", "command": "x"},
                "plugin 'echo' has no command 'x' (it has: hello)",
            ),
            (
                {"plugin": "echo", "command": "hello", "args": {"fail": True}},
                "plugin 'echo' command 'hello' failed: KeyError: 'oops'",
            ),
        ):
            with pytest.raises(PluginCommandFailed) as info:
                await manager.command(args)
            assert str(info.value).startswith(message)


BLOCKER = """
import time
from meshd.plugin_api import Context, Plugin


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Blocker(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        async def block(args):
            spin(args["seconds"])
            return {}

        ctx.command("block", block)
"""


async def test_a_step_holding_the_loop_is_attributed_to_its_plugin(tmp_path: Path) -> None:
    config = write(
        tmp_path, 'enabled = ["blocker"]\nblock_threshold = 0.05\n', {"blocker": BLOCKER}
    )
    daemon = FakeDaemon(config)
    async with running(daemon) as manager:
        await manager.command({"plugin": "blocker", "command": "block", "args": {"seconds": 0.4}})
        await trio.sleep(0.01)
        r = row(manager, "blocker")
        assert r["blocked"] == 1
        assert r["last_blocked"]["where"].startswith("blocker.py:")
        assert "in spin" in r["last_blocked"]["where"]
        assert 0.35 < r["last_blocked"]["seconds"] < 2.0
        start = time.perf_counter()
        await trio.sleep(0.2)  # ordinary waiting is not blocking
        assert row(manager, "blocker")["blocked"] == 1
        assert time.perf_counter() - start >= 0.2


EXITS = """
import sys
from meshd.plugin_api import Context, Plugin


class Exits(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        sys.exit("bye")
"""


async def test_sys_exit_in_run_is_a_failure_not_the_end_of_the_daemon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(write(tmp_path, 'enabled = ["exits"]\n', {"exits": EXITS}))
    async with running(daemon) as manager:
        await trio.sleep(3.5)
        r = row(manager, "exits")
        assert r["restarts"] >= 2
        assert r["failing"]
        assert r["last_error"].startswith("SystemExit: bye (exits.py:")


METRICS = """
from meshd.plugin_api import Context, Plugin


class Counted(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        ctx.metrics.counter("jobs", "jobs done").inc(3)
        ctx.metrics.gauge("queue").set(7)
"""


async def test_metrics_are_exported_per_plugin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    daemon = FakeDaemon(write(tmp_path, 'enabled = ["my-counted"]\n', {"my-counted": METRICS}))
    async with running(daemon) as manager:
        registry = CollectorRegistry()
        registry.register(manager.collector())
        text = generate_latest(registry).decode()
    assert 'meshd_plugin_up{plugin="my-counted"} 1.0' in text
    assert 'meshd_plugin_blocked_total{plugin="my-counted"} 0.0' in text
    assert "# HELP meshd_plugin_my_counted_jobs_total jobs done" in text
    assert "meshd_plugin_my_counted_jobs_total 3.0" in text
    assert "meshd_plugin_my_counted_queue 7.0" in text


async def test_owners_rebuilds_a_changed_ring_off_the_event_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = FakeDaemon(
        write(tmp_path, 'enabled = ["router"]\n', {"router": ROUTER}),
        {"n2": "router", "n3": "router"},
    )
    async with running(daemon) as manager:
        assert sorted(manager.owners("router", "k", 5)) == ["n1", "n2", "n3"]  # built at once
        joined = Member(
            NodeId("n5"),
            ("127.0.0.1", 7100),
            0,
            MemberState.ALIVE,
            encode_tags({"plugins": "router"}),
        )
        daemon.core.seed_members([joined], trio.current_time())
        manager.on_event(MemberJoined(joined))
        # The previous ring answers while the new one is built in a thread...
        assert sorted(manager.owners("router", "k", 5)) == ["n1", "n2", "n3"]
        with trio.fail_after(30):
            while "n5" not in manager.owners("router", "k", 5):  # noqa: ASYNC110
                await trio.sleep(0.01)
        # ...and then it is the ring of the new members.
        assert sorted(manager.owners("router", "k", 5)) == ["n1", "n2", "n3", "n5"]
