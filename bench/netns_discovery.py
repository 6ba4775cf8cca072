#!/usr/bin/env python3
"""Discovery benchmark: real daemons in network namespaces, mDNS only.

For N = 4 and 8 hosts (``meshd.testing.netns.NetnsLab``: one namespace per
host on a bridge of its own, real multicast) with one daemon per host, no
seeds and no snapshot, LAN profile, it measures:

* mesh — seconds from spawning every daemon at once until every daemon
  lists all N members alive (interpreter start-up counts). Median over
  ``--runs`` fresh meshes (default 3);
* heal — the hosts are split in two halves with nftables until each side
  marks the other dead; then the partition is removed and the seconds until
  every daemon lists all N alive again are timed. ``[membership]
  reconnect_interval`` is ``--reconnect`` seconds (default 5); the target is
  2 x that. The partition is held ``--hold`` seconds more after both sides
  saw the other dead (default 35, past ``gossip_to_the_dead_time`` = 30 s,
  so that the reconnect timer, not gossip still sent to the recently dead,
  is what merges the halves; ``--quick`` holds 0). Median over ``--heals``
  partitions (default 2) of the last mesh;
* mDNS packets — mDNS packets per second per host at steady state, counted
  by an nftables counter on the bridge's ingress (each packet once, however
  many ports it is flooded to), in a window that opens ``--settle`` seconds
  after convergence and lasts ``--window`` seconds; also the packets of the
  start-up (spawn until convergence).

Prints a table; with ``--json`` the last line is one JSON object whose keys
map N (as a string) to a number: ``mesh_s``, ``heal_s``,
``mdns_packets_per_host_s``, ``startup_mdns_packets``, plus ``targets``
(booleans for the issue's targets: mesh <= 3 s at N = 8, heal <= 2 x
reconnect interval, <= 1 mDNS packet/s/host) and ``meta``.

Needs root (network namespaces, nftables). ``--quick`` runs one mesh per N,
one heal and a 10 s window (about 2 minutes); the full run takes about 8.
Every namespace, process and temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meshd import __version__
from meshd.testing.cluster import LocalCluster
from meshd.testing.netns import NetnsLab, lab_unavailable

DEAD_TIMEOUT_S = 60.0
MESH_TIMEOUT_S = 30.0


def _mesh(lab: NetnsLab, root: Path, n: int, reconnect: float) -> LocalCluster:
    hosts = {f"node-{i}": h for i, h in enumerate(lab.names, 1)}
    return LocalCluster(
        root,
        n,
        cluster=f"bench{os.getpid()}",
        seeds=False,
        mdns=True,
        discovery={"rejoin": False},
        membership={"reconnect_interval": reconnect},
        addresses={name: (lab.address(h), 7946) for name, h in hosts.items()},
        launcher=lambda name, argv: lab.command(hosts[name], argv),
    )


def _converged(c: LocalCluster) -> bool:
    try:
        return c.converged()
    except Exception:
        return False


def _each_side_sees_the_other_dead(c: LocalCluster, left: list[str], right: list[str]) -> bool:
    try:
        for ours, theirs in ((left, right), (right, left)):
            for observer in ours:
                view = c.view(observer)
                if any(view.get(m) != "dead" for m in theirs):
                    return False
        return True
    except Exception:
        return False


def measure(n: int, args: argparse.Namespace) -> dict[str, float | None]:
    meshes: list[float] = []
    heals: list[float] = []
    startup_packets: list[int] = []
    rate: float | None = None
    for run in range(args.runs):
        last = run == args.runs - 1
        root = Path(tempfile.mkdtemp(prefix="meshd-bench-", dir="/tmp"))
        lab = NetnsLab(n).up()
        c = _mesh(lab, root, n, args.reconnect)
        try:
            before = lab.mdns_packets()
            t0 = time.monotonic()
            for name in c.names:
                c.start(name, wait=False)
            if not c.wait_until(lambda c=c: _converged(c), MESH_TIMEOUT_S, interval=0.02):
                print(f"  N={n} run {run + 1}: no full mesh within {MESH_TIMEOUT_S} s", flush=True)
                continue
            meshes.append(time.monotonic() - t0)
            startup_packets.append(lab.mdns_packets() - before)
            print(f"  N={n} run {run + 1}: full mesh after {meshes[-1]:.2f} s", flush=True)
            if not last:
                continue
            time.sleep(args.settle)  # a fixed settle time before a traffic window, not a wait
            start_count, start = lab.mdns_packets(), time.monotonic()
            time.sleep(args.window)
            rate = (lab.mdns_packets() - start_count) / (time.monotonic() - start) / n
            half = n // 2
            left, right = c.names[:half], c.names[half:]
            for heal in range(args.heals):
                lab.partition(lab.names[:half], lab.names[half:])
                if not c.wait_until(
                    lambda: _each_side_sees_the_other_dead(c, left, right), DEAD_TIMEOUT_S, 0.2
                ):
                    print(f"  N={n}: partition not detected within {DEAD_TIMEOUT_S} s")
                    lab.heal()
                    break
                time.sleep(args.hold)  # the partition lasts this long: part of the scenario
                lab.heal()
                healed = time.monotonic()
                if not c.wait_until(lambda: _converged(c), MESH_TIMEOUT_S, interval=0.02):
                    print(f"  N={n}: not one mesh {MESH_TIMEOUT_S} s after the heal")
                    break
                heals.append(time.monotonic() - healed)
                print(f"  N={n} heal {heal + 1}: one mesh {heals[-1]:.2f} s after the heal")
        finally:
            c.stop_all()
            lab.down()
            shutil.rmtree(root, ignore_errors=True)
    return {
        "mesh_s": statistics.median(meshes) if meshes else None,
        "heal_s": statistics.median(heals) if heals else None,
        "mdns_packets_per_host_s": rate,
        "startup_mdns_packets": statistics.median(startup_packets) if startup_packets else None,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per N, short window")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heals", type=int, default=2)
    parser.add_argument("--reconnect", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=35.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    why = lab_unavailable()
    if why is not None:
        print(f"netns_discovery: cannot run: {why}", file=sys.stderr)
        return 2
    if args.quick:
        args.runs, args.heals, args.settle, args.window, args.hold = 1, 1, 3.0, 10.0, 0.0
    results = {n: measure(n, args) for n in args.sizes}
    print()
    print("meshd discovery in network namespaces (mDNS only, LAN profile)")
    print(f"{'':44}" + "".join(f"{'N=' + str(n):>10}" for n in args.sizes))
    rows = [
        ("start to full mesh (s), median", "mesh_s", 2),
        (f"heal to one mesh (s), reconnect {args.reconnect:g} s", "heal_s", 2),
        ("mDNS packets /s per host, steady state", "mdns_packets_per_host_s", 3),
        ("mDNS packets during start-up (all hosts)", "startup_mdns_packets", 0),
    ]
    for label, key, digits in rows:
        print(f"{label:44}" + "".join(f"{_fmt(results[n][key], digits):>10}" for n in args.sizes))
    print(f"  window: {args.window:g} s, {args.settle:g} s after convergence; runs: {args.runs}")
    print(f"  partitions held {args.hold:g} s after both sides saw the other dead")

    def judge(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    targets = {
        "mesh_le_3s_at_8": judge(results.get(8, {}).get("mesh_s"), 3.0),
        "heal_le_2x_reconnect": (
            None
            if any(results[n]["heal_s"] is None for n in args.sizes)
            else all(results[n]["heal_s"] <= 2 * args.reconnect for n in args.sizes)  # type: ignore[operator]
        ),
        "mdns_le_1_per_host_s": (
            None
            if any(results[n]["mdns_packets_per_host_s"] is None for n in args.sizes)
            else all(results[n]["mdns_packets_per_host_s"] <= 1.0 for n in args.sizes)  # type: ignore[operator]
        ),
    }
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    if args.json:
        out: dict[str, object] = {
            key: {str(n): results[n][key] for n in args.sizes}
            for key in ("mesh_s", "heal_s", "mdns_packets_per_host_s", "startup_mdns_packets")
        }
        out["targets"] = targets
        out["meta"] = {
            "meshd": __version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "runs": args.runs,
            "heals": args.heals,
            "reconnect_interval_s": args.reconnect,
            "hold_s": args.hold,
            "window_s": args.window,
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
