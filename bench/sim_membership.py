#!/usr/bin/env python3
"""Membership benchmark on the deterministic simulator (LAN profile).

For each mesh size N it measures, on virtual time:

* dissemination — seconds (and gossip rounds) until 99.99 % of the other
  members have applied a new update (a metadata change of a random member);
* failure detection — seconds from a SIGKILL-style crash until *every*
  running member marks the victim dead, p50 and p99 over ``--crashes``
  crashes (the victim restarts and rejoins between crashes);
* load — mean bytes each member sends per second in a converged mesh
  (datagrams plus stream frames: push-pull included);
* false deaths — a member that is neither crashed nor slow declared dead
  (counted where a suspicion timer fires, i.e. at the declaring member),
  per member-hour, with 10 % loss on every link and 5 % of the members slow
  (every inbound datagram waits in a backlog for 0.5–16 s, the overload
  Lifeguard exists for), with Lifeguard on and off;
* wall-clock seconds the whole measurement for that N took.

Prints a table; with ``--json`` the last line is one JSON object whose keys
map N (as a string) to a number. ``--quick`` runs N = 10 and 100 with fewer
samples in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable

import attrs

from meshd.core.config import MembershipConfig
from meshd.core.outputs import Event, MemberFailed, MemberJoined, MemberUpdated
from meshd.testing.sim import SimNetwork, SlowSpec

LAN = MembershipConfig.lan()
SLOW = SlowSpec(min_delay=0.5, max_delay=16.0)


@attrs.define
class Plan:
    sizes: list[int]
    dissemination_trials: int
    crashes: int
    load_window: float
    false_death_seconds: dict[int, float]


FULL = Plan(
    sizes=[10, 100, 1000],
    dissemination_trials=5,
    crashes=20,
    load_window=180.0,
    false_death_seconds={10: 3600.0, 100: 900.0, 1000: 60.0},
)
QUICK = Plan(
    sizes=[10, 100],
    dissemination_trials=3,
    crashes=20,
    load_window=60.0,
    false_death_seconds={10: 1200.0, 100: 180.0},
)


def formed_mesh(n: int, seed: int, config: MembershipConfig = LAN, **net_args: object) -> SimNetwork:
    """N nodes that already know each other, settled for a few seconds."""
    net = SimNetwork(seed, record_trace=False, **net_args)  # type: ignore[arg-type]
    for i in range(n):
        net.add_node(f"n{i:04}", config=config)
    net.bootstrap_full_mesh()
    net.run_for(5.0)
    return net


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def on_event(net: SimNetwork, fn: Callable[[float, str, Event], None]) -> Callable[[], None]:
    net.listeners.append(fn)
    return lambda: net.listeners.remove(fn)


# ---------------------------------------------------------------- measurements


def dissemination(net: SimNetwork, trials: int, rng: random.Random) -> float:
    """Median seconds until 99.99 % of the other members applied an update."""
    nodes = net.alive_nodes()
    need = math.ceil(0.9999 * (len(nodes) - 1))
    samples = []
    for trial in range(trials):
        origin = rng.choice(nodes)
        tag = b"bench-%d" % trial
        seen: dict[str, float] = {}

        def listen(t: float, observer: str, ev: Event, origin: str = origin, tag: bytes = tag) -> None:
            if isinstance(ev, MemberUpdated) and ev.member.node_id == origin and ev.member.meta == tag:
                seen.setdefault(observer, t)

        stop = on_event(net, listen)
        net.run_for(rng.random() * LAN.probe_interval)  # random phase
        start = net.now
        net.set_meta(origin, tag)
        ok = net.run_until_true(lambda: len(seen) >= need, timeout=30.0, check_every=0.05)
        stop()
        if not ok:
            raise RuntimeError(f"update reached only {len(seen)} of {need} members in 30 s")
        samples.append(sorted(seen.values())[need - 1] - start)
        net.run_for(5.0)  # let the broadcast die out before the next trial
    return statistics.median(samples)


def detection(net: SimNetwork, crashes: int, rng: random.Random) -> list[float]:
    """Seconds from crash to every running member marking the victim dead."""
    samples = []
    for _ in range(crashes):
        victim = rng.choice(net.alive_nodes())
        others = set(net.alive_nodes()) - {victim}
        failed: set[str] = set()
        rejoined: set[str] = set()

        def listen(t: float, observer: str, ev: Event, victim: str = victim) -> None:
            member = getattr(ev, "member", None)
            if member is None or member.node_id != victim:
                return
            if isinstance(ev, MemberFailed):
                failed.add(observer)
            elif isinstance(ev, MemberJoined):
                rejoined.add(observer)

        stop = on_event(net, listen)
        net.run_for(rng.random() * LAN.probe_interval)
        start = net.now
        net.crash(victim)
        if not net.run_until_true(lambda: failed >= others, timeout=120.0, check_every=0.05):
            raise RuntimeError(f"{victim} not detected by {len(others - failed)} members in 120 s")
        samples.append(net.now - start)
        net.restart(victim, join_via=[rng.choice(sorted(others))])
        if not net.run_until_true(lambda: rejoined >= others, timeout=60.0, check_every=0.1):
            raise RuntimeError(f"{victim} did not rejoin everywhere in 60 s")
        stop()
        net.run_for(3.0)
    return samples


def load(net: SimNetwork, window: float) -> float:
    """Mean bytes sent per member per second in a converged, quiet mesh."""
    net.reset_stats()
    net.run_for(window)
    total = net.stats.total
    return (total.bytes_sent + total.stream_bytes_sent) / len(net.alive_nodes()) / window


def false_deaths(n: int, seed: int, seconds: float, lifeguard: bool) -> tuple[float, float]:
    """(healthy, slow) members declared dead per member-hour under loss and overload."""
    config = attrs.evolve(LAN, lifeguard=lifeguard)
    net = formed_mesh(n, seed, config, loss=0.10)
    nodes = net.alive_nodes()
    slow = set(random.Random(seed).sample(nodes, max(1, round(0.05 * n))))
    for s in sorted(slow):
        net.set_slow(s, SLOW)
    counts = {"healthy": 0, "slow": 0}

    def listen(t: float, observer: str, ev: Event) -> None:
        # Count declarations (the member whose suspicion timer fired), not
        # every observer that hears about them: one death, one count.
        if isinstance(ev, MemberFailed) and ev.accuser == observer:
            counts["slow" if ev.member.node_id in slow else "healthy"] += 1

    net.listeners.append(listen)
    net.run_for(seconds)
    member_hours = n * seconds / 3600
    return counts["healthy"] / member_hours, counts["slow"] / member_hours


# ---------------------------------------------------------------- driver


def measure(n: int, plan: Plan, seed: int) -> dict[str, float]:
    wall = time.perf_counter()
    rng = random.Random(seed)
    net = formed_mesh(n, seed)
    result: dict[str, float] = {}
    result["dissemination_s"] = dissemination(net, plan.dissemination_trials, rng)
    result["dissemination_rounds"] = result["dissemination_s"] / LAN.gossip_interval
    result["bytes_per_member_s"] = load(net, plan.load_window)
    crashes = detection(net, plan.crashes, rng)
    result["detection_p50_s"] = percentile(crashes, 50)
    result["detection_p99_s"] = percentile(crashes, 99)
    seconds = plan.false_death_seconds[n]
    on, on_slow = false_deaths(n, seed, seconds, lifeguard=True)
    off, off_slow = false_deaths(n, seed, seconds, lifeguard=False)
    result["false_deaths_per_member_hour_lifeguard_on"] = on
    result["false_deaths_per_member_hour_lifeguard_off"] = off
    result["slow_deaths_per_member_hour_lifeguard_on"] = on_slow
    result["slow_deaths_per_member_hour_lifeguard_off"] = off_slow
    result["false_death_virtual_s"] = seconds
    result["wall_s"] = time.perf_counter() - wall
    return result


ROWS = [
    ("dissemination_s", "dissemination to 99.99 % (s)", "{:.2f}"),
    ("dissemination_rounds", "  in gossip rounds", "{:.1f}"),
    ("detection_p50_s", "detection p50 (s)", "{:.2f}"),
    ("detection_p99_s", "detection p99 (s)", "{:.2f}"),
    ("bytes_per_member_s", "bytes sent per member per s", "{:.0f}"),
    ("false_deaths_per_member_hour_lifeguard_on", "false deaths /member-h, Lifeguard on", "{:.3f}"),
    ("false_deaths_per_member_hour_lifeguard_off", "false deaths /member-h, Lifeguard off", "{:.3f}"),
    ("slow_deaths_per_member_hour_lifeguard_on", "slow members dead /member-h, on", "{:.3f}"),
    ("slow_deaths_per_member_hour_lifeguard_off", "slow members dead /member-h, off", "{:.3f}"),
    ("false_death_virtual_s", "  virtual seconds observed", "{:.0f}"),
    ("wall_s", "wall-clock seconds", "{:.1f}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10 and 100 only, fewer samples (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="override N, e.g. 10,100")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sizes:
        plan = attrs.evolve(plan, sizes=args.sizes)
        for n in args.sizes:
            plan.false_death_seconds.setdefault(n, 180.0)
    results: dict[int, dict[str, float]] = {}
    for n in plan.sizes:
        print(f"measuring N = {n} …", file=sys.stderr, flush=True)
        results[n] = measure(n, plan, args.seed)

    width = max(len(label) for _, label, _ in ROWS)
    print(f"meshd membership on the simulator (LAN profile, seed {args.seed}"
          f"{', quick' if args.quick else ''})")
    print(f"{'':{width}}  " + "  ".join(f"{'N=' + str(n):>10}" for n in plan.sizes))
    for key, label, fmt in ROWS:
        print(f"{label:{width}}  " + "  ".join(f"{fmt.format(results[n][key]):>10}" for n in plan.sizes))
    if args.json:
        keys = [key for key, _, _ in ROWS]
        print(json.dumps({k: {str(n): round(results[n][k], 6) for n in plan.sizes} for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
