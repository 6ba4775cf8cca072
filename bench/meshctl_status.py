#!/usr/bin/env python3
"""How long ``meshctl status`` takes, interpreter start-up included.

Starts an N-member mesh of real daemons on 127.0.0.1 (default N = 30,
``meshd.testing.cluster.LocalCluster``), waits until it converged, then runs
the installed ``meshctl --socket SOCK status`` (and ``--json``, ``--check``)
``--runs`` times each as a fresh process and reports the wall time: median,
p90 and max. As a baseline measured in the same run, it times
``python -c pass`` with the same interpreter: what start-up alone costs.

Prints a table; with ``--json`` the last line is one JSON object:
``status_median_ms``, ``status_p90_ms``, ``status_json_median_ms``,
``status_check_median_ms``, ``python_startup_median_ms``, ``members``,
``target_le_150ms`` (the issue's target: status ≤ 150 ms at 30 members).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshd.testing.cluster import LocalCluster


def _times(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        out.append((time.perf_counter() - t0) * 1000)
        if done.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return out


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10 members, 10 runs")
    args = parser.parse_args()
    if args.quick:
        args.members, args.runs = 10, 10
    meshctl = str(Path(sys.executable).with_name("meshctl"))
    root = Path(tempfile.mkdtemp(prefix="meshd-bench-", dir="/tmp"))
    try:
        with LocalCluster(root, args.members) as c:
            c.start(c.names[0])
            for name in c.names[1:]:
                c.start(name, wait=False)
            if not c.wait_until(c.converged, 60.0, interval=0.5):
                raise SystemExit(f"the {args.members}-member mesh did not converge in 60 s")
            sock = str(c.socket_path(c.names[0]))
            base = [meshctl, "--socket", sock, "status"]
            startup = _times([sys.executable, "-c", "pass"], args.runs)
            status = _times(base, args.runs)
            as_json = _times([*base, "--json"], args.runs)
            check = _times([*base, "--check"], args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("python -c pass (start-up baseline)", startup),
        ("meshctl status", status),
        ("meshctl status --json", as_json),
        ("meshctl status --check", check),
    ]
    print(f"meshctl status against a {args.members}-member mesh ({args.runs} runs each, ms)")
    print(f"{'':38}{'median':>8}{'p90':>8}{'max':>8}")
    for label, values in rows:
        print(
            f"{label:38}{statistics.median(values):8.1f}{_p90(values):8.1f}{max(values):8.1f}"
        )
    target = statistics.median(status) <= 150.0
    print(f"target: median status <= 150 ms at {args.members} members: {target}")
    if args.json:
        print(
            json.dumps(
                {
                    "members": args.members,
                    "status_median_ms": statistics.median(status),
                    "status_p90_ms": _p90(status),
                    "status_json_median_ms": statistics.median(as_json),
                    "status_check_median_ms": statistics.median(check),
                    "python_startup_median_ms": statistics.median(startup),
                    "target_le_150ms": target if args.members >= 30 else None,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
