#!/usr/bin/env python3
"""RPC transport benchmark: persistent sessions versus a TLS connection per request.

Two real ``meshd run`` daemons on 127.0.0.1 (``meshd.testing.cluster.
LocalCluster``: encrypted gossip, mutual-TLS 1.3 streams, nothing mocked).
``node-1`` calls the built-in ``_echo`` service of ``node-2`` with an empty
body (``--size`` changes it): the raw ceiling of the transport, the number
that the KV store (issue 5, quorum puts >= 50 % of it) and plugin RPC
(issue 6, >= 70 %) are measured against.

The calls run inside ``node-1`` (the ``bench_rpc`` control command, a
benchmark aid enabled by ``MESHD_BENCH=1`` in the daemons' environment), so
the control socket is not timed: each row is K calls with C of them in
flight at a time, timed from the first call to the last answer, with the
latency of every call (``time.perf_counter`` around ``Daemon.call``).

* ``session``: ``Daemon.call`` -> ``RpcClient.call`` over one persistent,
  multiplexed session (opened by a warm-up before the first run);
* ``oneshot``: ``rpc.call_once``, one fresh TCP connection + TLS 1.3
  handshake (Ed25519 certificates both ways) per request, the way the
  membership exchanges talk: what sessions save.

Runs alternate between the rows; each row reports the median over
``--runs`` runs of calls/s, p50 and p99 (ms). The daemons and this script
share the machine's cores (client and server are separate processes, so
up to two cores are busy), and so do any other processes: compare numbers
from the same run.

Prints a table; with ``--json`` the last line is one JSON object:
``session`` and ``oneshot`` map the concurrency (as a string) to
``{"per_s", "p50_ms", "p99_ms", "runs_per_s"}``; ``raw_ceiling_per_s`` maps
concurrency to the session rate (the same numbers, under the name the data
and plugin benchmarks use), ``persistence_speedup`` maps the concurrencies
measured in both modes to session/oneshot calls/s; ``meta`` describes the
run. ``--quick`` takes about 15 s.
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

#: (mode, concurrency, calls per run) of the full run.
FULL = [
    ("session", 1, 3000),
    ("session", 16, 20000),
    ("session", 64, 30000),
    ("oneshot", 1, 300),
    ("oneshot", 16, 1000),
]
QUICK = [
    ("session", 1, 1000),
    ("session", 16, 5000),
    ("session", 64, 8000),
    ("oneshot", 1, 100),
    ("oneshot", 16, 300),
]


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


def bench(c: LocalCluster, mode: str, concurrency: int, count: int, size: int) -> dict[str, Any]:
    args = {
        "node": "node-2",
        "count": count,
        "concurrency": concurrency,
        "mode": mode,
        "size": size,
        "timeout": 30.0,
    }
    result = c.request("node-1", "bench_rpc", args, timeout=600)
    if result["errors"]:
        raise SystemExit(f"{mode} c={concurrency}: calls failed: {result['errors']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs (~15 s)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on the last line"
    )
    parser.add_argument(
        "--runs", type=int, help="runs per row (median reported; default 5, quick 3)"
    )
    parser.add_argument("--size", type=int, default=0, help="request body bytes (default 0)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    runs = args.runs or (3 if args.quick else 5)

    os.environ["MESHD_BENCH"] = "1"  # inherited by the daemons: enables bench_rpc
    root = Path(tempfile.mkdtemp(prefix="meshd-rpc-", dir="/tmp"))
    commit = git_commit()
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {(m, k): [] for m, k, _ in plan}
    load_before = os.getloadavg()
    try:
        with LocalCluster(root, 2) as c:
            print("starting 2 daemons …", file=sys.stderr, flush=True)
            c.start_all()
            if not c.wait_until(c.converged, 30.0):
                raise SystemExit("the daemons did not converge within 30 s")
            # Warm-up: opens the session and warms both processes.
            bench(c, "session", 16, 2000, args.size)
            bench(c, "oneshot", 4, 40, args.size)
            for r in range(runs):
                print(f"run {r + 1}/{runs} …", file=sys.stderr, flush=True)
                for mode, concurrency, count in plan:
                    samples[(mode, concurrency)].append(
                        bench(c, mode, concurrency, count, args.size)
                    )
            counters = c.request("node-1", "status")["counters"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()

    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for key, results in samples.items():
        rows[key] = {
            "per_s": round(statistics.median(r["per_s"] for r in results), 1),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 4),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 4),
            "runs_per_s": [r["per_s"] for r in results],
        }
    speedup = {
        k: round(rows[("session", k)]["per_s"] / rows[("oneshot", k)]["per_s"], 1)
        for m, k, _ in plan
        if m == "oneshot" and ("session", k) in rows
    }

    print(
        f"meshd RPC on loopback, 2 daemons, body {args.size} B, median of {runs} runs"
        f"{' (quick)' if args.quick else ''}; {os.cpu_count()} cores, "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print(f"{'mode':10} {'in flight':>9} {'calls/s':>10} {'p50 ms':>9} {'p99 ms':>9}  note")
    for mode, concurrency, count in plan:
        row = rows[(mode, concurrency)]
        note = f"{count} calls/run"
        if mode == "session" and concurrency in speedup:
            note += f", {speedup[concurrency]}x one-shot"
        if mode == "session" and concurrency == 1:
            note += ", one session for all rows"
        print(
            f"{mode:10} {concurrency:>9} {row['per_s']:>10,.0f} {row['p50_ms']:>9.3f} "
            f"{row['p99_ms']:>9.3f}  {note}"
        )
    print(
        f"RPC sessions node-1 opened for all session rows and the warm-up: "
        f"{counters.get('rpc_client_connects', 0)} (1 = every call shared one connection)"
    )

    if args.json:
        out = {
            "session": {str(k): rows[(m, k)] for m, k, _ in plan if m == "session"},
            "oneshot": {str(k): rows[(m, k)] for m, k, _ in plan if m == "oneshot"},
            "raw_ceiling_per_s": {
                str(k): rows[(m, k)]["per_s"] for m, k, _ in plan if m == "session"
            },
            "persistence_speedup": {str(k): v for k, v in speedup.items()},
            "meta": {
                "body_bytes": args.size,
                "runs": runs,
                "quick": args.quick,
                "calls_per_run": {f"{m}_{k}": n for m, k, n in plan},
                "cores": os.cpu_count(),
                "load_before": round(load_before[0], 2),
                "load_after": round(load_after[0], 2),
                "python": platform.python_version(),
                "commit": commit,
                "sessions_opened": counters.get("rpc_client_connects"),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
