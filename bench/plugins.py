#!/usr/bin/env python3
"""Plugin benchmark: plugin RPC against the raw transport, and broadcast delivery time.

Real ``meshd run`` daemons on 127.0.0.1 (``meshd.testing.cluster.LocalCluster``),
with a benchmark plugin loaded from a plugin directory written by this script.

**RPC** (2 daemons). ``node-1`` calls ``node-2`` with an empty body:

* ``raw``: the built-in ``_echo`` service through ``Daemon.call`` (the
  ``bench_rpc`` control command, as ``bench/rpc.py`` measures it): the
  ceiling of the stream transport (persistent mutual-TLS sessions);
* ``plugin``: the benchmark plugin's ``echo`` method through the same path
  as ``ctx.call`` (the ``bench_plugin_rpc`` control command): request
  encoding, the plugin's service ``plugin/benchplug``, dispatch to the
  running instance, its handler, error mapping.

Both are enabled by ``MESHD_BENCH=1`` in the daemons' environment. Rows
alternate; each reports the median over ``--runs`` runs of calls/s, p50 and
p99 (ms). Target: plugin RPC >= 70 % of the raw ceiling.

**Broadcast** (``--nodes``, default 10). ``node-1``'s plugin sends a user
event (``ctx.broadcast``) and, in separate rounds, publishes a new plugin tag
(``ctx.set_tags``: a membership update, gossiped as an ``alive`` message).
Every node's plugin notes the wall-clock time the event or the ``updated``
membership event arrives (all daemons share this host's clock); a round's
time is the last arrival minus the send. The membership update is the
reference: "the membership dissemination time". Target: the broadcast
reaches all members within it.

Prints a table; with ``--json`` the last line is one JSON object: ``rpc``
maps ``raw``/``plugin`` to concurrency -> ``{"per_s", "p50_ms", "p99_ms",
"runs_per_s"}``, ``ratio`` maps concurrency to the median over runs of plugin/raw calls per
second (each run's plugin row against the raw row just before it),
``broadcast`` holds ``{"nodes", "rounds", "delivery_ms": {...},
"membership_ms": {...}, "missed"}`` (median, p90, max over rounds), and
``meta`` describes the run. ``--quick`` takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshd.testing.cluster import LocalCluster

PLUGIN = "benchplug"

PLUGIN_SOURCE = '''
"""Benchmark plugin: an echo method, and arrival times of broadcasts and tag updates."""

import time

from meshd.plugin_api import Context, Plugin


class BenchPlugin(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        arrivals = {}

        async def echo(sender, body):
            return body

        async def send(args):
            sent = time.time()
            ctx.broadcast("round", str(args["round"]).encode())
            return {"sent": sent}

        async def publish(args):
            sent = time.time()
            ctx.set_tags({"round": str(args["round"])})
            return {"sent": sent}

        async def arrived(args):
            return {"arrivals": arrivals}

        ctx.register("echo", echo)
        for name, handler in (("send", send), ("publish", publish), ("arrived", arrived)):
            ctx.command(name, handler)

        async def users():
            async for event in ctx.user_events():
                arrivals.setdefault("event:" + event.payload.decode(), time.time())

        async def members():
            async for event in ctx.membership_events():
                value = event.member.tags.get("benchplug.round")
                if event.kind == "updated" and value is not None:
                    key = "tag:" + value + ":" + event.member.node_id
                    arrivals.setdefault(key, time.time())

        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(users)
            nursery.start_soon(members)
'''

#: (concurrency, calls per run) of the RPC rows.
FULL = [(1, 3000), (16, 20000), (64, 30000)]
QUICK = [(1, 1000), (16, 5000), (64, 8000)]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def make_cluster(root: Path, size: int, plugin_dir: Path) -> LocalCluster:
    root.mkdir()
    c = LocalCluster(root, size)
    for name in c.names:
        c.configure(name, "plugins", {"enabled": [PLUGIN], "dirs": [str(plugin_dir)]})
    return c


def start(c: LocalCluster) -> None:
    c.start(c.names[0], timeout=60)
    for name in c.names[1:]:
        c.start(name, wait=False)
    for name in c.names[1:]:
        if not c.wait_until(lambda n=name: c._answers(n), 60):
            raise SystemExit(f"{name} did not start; see {c.log_path(name)}")
    if not c.wait_until(c.converged, 60):
        raise SystemExit("the daemons did not converge within 60 s")

    def everyone_runs_it() -> bool:
        for name in c.names:
            members = c.request(name, "status")["members"]
            if not all(PLUGIN in (m.get("plugins") or []) for m in members):
                return False
        return True

    if not c.wait_until(everyone_runs_it, 30):
        raise SystemExit("not every node sees the plugin on every member")


def rpc_row(c: LocalCluster, kind: str, concurrency: int, count: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "node": "node-2",
        "count": count,
        "concurrency": concurrency,
        "timeout": 30.0,
    }
    if kind == "raw":
        result = c.request("node-1", "bench_rpc", args, timeout=600)
    else:
        args.update(plugin=PLUGIN, method="echo")
        result = c.request("node-1", "bench_plugin_rpc", args, timeout=600)
    if result["errors"]:
        raise SystemExit(f"{kind} c={concurrency}: calls failed: {result['errors']}")
    return result


def bench_rpc(root: Path, plugin_dir: Path, plan: list[tuple[int, int]], runs: int) -> dict:
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with make_cluster(root / "rpc", 2, plugin_dir) as c:
        print("RPC: starting 2 daemons …", file=sys.stderr, flush=True)
        start(c)
        rpc_row(c, "raw", 16, 2000)  # warm-up: opens the session
        rpc_row(c, "plugin", 16, 2000)
        for r in range(runs):
            print(f"RPC run {r + 1}/{runs} …", file=sys.stderr, flush=True)
            for concurrency, count in plan:
                for kind in ("raw", "plugin"):
                    samples.setdefault((kind, concurrency), []).append(
                        rpc_row(c, kind, concurrency, count)
                    )
        blocked = c.request("node-2", "plugins")["plugins"][0]["blocked"]
    rows = {}
    for key, results in samples.items():
        rows[key] = {
            "per_s": round(statistics.median(r["per_s"] for r in results), 1),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 4),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 4),
            "runs_per_s": [r["per_s"] for r in results],
        }
    return {"rows": rows, "blocked": blocked}


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 1),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


def bench_broadcast(root: Path, plugin_dir: Path, size: int, rounds: int) -> dict[str, Any]:
    with make_cluster(root / "broadcast", size, plugin_dir) as c:
        print(f"broadcast: starting {size} daemons …", file=sys.stderr, flush=True)
        start(c)
        time.sleep(2.0)  # let the join gossip drain
        sends: dict[str, float] = {}
        for i in range(rounds):
            sends[f"event:{i}"] = c.request("node-1", "plugin", _cmd("send", round=i))["sent"]
            time.sleep(1.0)
            sends[f"tag:{i}"] = c.request("node-1", "plugin", _cmd("publish", round=i))["sent"]
            time.sleep(1.0)
        time.sleep(2.0)
        arrivals = {
            name: c.request(name, "plugin", _cmd("arrived"))["arrivals"] for name in c.names
        }
        counters = c.request("node-1", "status")["counters"]
    delivery: list[float] = []
    membership: list[float] = []
    missed = 0
    for i in range(rounds):
        event_times = [arrivals[n].get(f"event:{i}") for n in arrivals]
        if None in event_times:
            missed += event_times.count(None)
        else:
            last = max(t for t in event_times if t is not None)
            delivery.append(1000 * (last - sends[f"event:{i}"]))
        # node-1's own update is not an event it receives.
        tag_times = [arrivals[n].get(f"tag:{i}:node-1") for n in arrivals if n != "node-1"]
        if None not in tag_times:
            last = max(t for t in tag_times if t is not None)
            membership.append(1000 * (last - sends[f"tag:{i}"]))
    return {
        "nodes": size,
        "rounds": rounds,
        "delivery_ms": _stats(delivery),
        "membership_ms": _stats(membership),
        "missed": missed,
        "duplicates_dropped_node_1": counters.get("user_events_duplicate", 0),
    }


def _cmd(name: str, **args: Any) -> dict[str, Any]:
    return {"plugin": PLUGIN, "command": name, "args": args}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls, runs and rounds")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--runs", type=int, help="RPC runs per row (default 5, quick 3)")
    parser.add_argument("--nodes", type=int, default=10, help="daemons for the broadcast part")
    parser.add_argument("--rounds", type=int, help="broadcast rounds (default 20, quick 8)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    runs = args.runs or (3 if args.quick else 5)
    rounds = args.rounds or (8 if args.quick else 20)

    os.environ["MESHD_BENCH"] = "1"  # inherited by the daemons
    root = Path(tempfile.mkdtemp(prefix="meshd-plug-", dir="/tmp"))
    plugin_dir = root / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    load_before = os.getloadavg()
    try:
        rpc = bench_rpc(root, plugin_dir, plan, runs)
        broadcast = bench_broadcast(root, plugin_dir, args.nodes, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    rows = rpc["rows"]
    # Paired: each run's plugin row against the raw row measured just before
    # it, so load from other processes on the machine mostly cancels out.
    ratio = {
        k: round(
            statistics.median(
                p / r
                for p, r in zip(
                    rows[("plugin", k)]["runs_per_s"], rows[("raw", k)]["runs_per_s"], strict=True
                )
            ),
            3,
        )
        for k, _ in plan
    }

    print(
        f"meshd plugins on loopback, median of {runs} runs{' (quick)' if args.quick else ''}; "
        f"{os.cpu_count()} cores, load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print("RPC node-1 -> node-2, empty body:")
    print(f"  {'path':8} {'in flight':>9} {'calls/s':>10} {'p50 ms':>9} {'p99 ms':>9}  plugin/raw")
    for concurrency, _ in plan:
        for kind in ("raw", "plugin"):
            row = rows[(kind, concurrency)]
            note = f"{100 * ratio[concurrency]:.0f} %  (target >= 70 %)" if kind == "plugin" else ""
            print(
                f"  {kind:8} {concurrency:>9} {row['per_s']:>10,.0f} {row['p50_ms']:>9.3f} "
                f"{row['p99_ms']:>9.3f}  {note}"
            )
    d, m = broadcast["delivery_ms"], broadcast["membership_ms"]
    print(
        f"Broadcast to all {broadcast['nodes']} members, {broadcast['rounds']} rounds "
        f"(ms: median / p90 / max):"
    )
    print(f"  user event (ctx.broadcast)       {d['median']} / {d['p90']} / {d['max']}")
    print(f"  membership update (a tag change) {m['median']} / {m['p90']} / {m['max']}")
    within = (
        d["max"] is not None
        and m["max"] is not None
        and d["median"] <= m["median"] * 1.25
        and broadcast["missed"] == 0
    )
    print(
        f"  missed deliveries: {broadcast['missed']}; broadcast within the membership "
        f"dissemination time: {'yes' if within else 'NO'}"
    )
    if args.json:
        out = {
            "rpc": {kind: {str(k): rows[(kind, k)] for k, _ in plan} for kind in ("raw", "plugin")},
            "ratio": {str(k): v for k, v in ratio.items()},
            "broadcast": {**broadcast, "within_membership_time": within},
            "meta": {
                "runs": runs,
                "quick": args.quick,
                "calls_per_run": {str(k): n for k, n in plan},
                "plugin_blocked_loop": rpc["blocked"],
                "cores": os.cpu_count(),
                "load_before": round(load_before[0], 2),
                "load_after": round(load_after[0], 2),
                "python": platform.python_version(),
                "commit": git_commit(),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
