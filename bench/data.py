#!/usr/bin/env python3
"""Data benchmark: the placement ring, and the replicated store on loopback daemons.

Ring section (pure, one process, no network), for the ring meshd uses
(``meshd.core.ring.Ring`` with its default parameters):

* lookups/s — ``ring.owners(key)`` (the whole preference list, n = 3) over
  200,000 distinct keys, and, in the same run, interleaved with it, the
  ``uhashring`` package (default: md5, 160 vnodes per node) for N = 10:
  ``get_node(key)`` (primary only, the issue's reference number) and
  ``list(range(key, 3))`` (its preference list of 3). Median over ``--runs``
  passes. Without uhashring installed (``pip install uhashring``) its
  rows say so and its JSON keys are left out;
* ownership max/mean — the largest member's share of the key space over the
  mean share, for N = 10 and 100 members named ``node-1 .. node-N``, primary
  (n = 1) and replica (n = 3) ownership;
* moved on join — when ``node-11`` joins ``node-1 .. node-10``: the fraction
  of keys whose primary changed over the ideal 1/11, and the fraction of
  preference-list slots that changed over the ideal 3/33;
* the same three numbers as the worst over ``--name-sets`` other sets of
  member names (``s<k>-host<i>.example``): the placement is deterministic,
  so one set of names is one sample, and the worst case shows the spread;
* build time — ``Ring.build`` for N = 10 and 100.

``--schemes`` adds the measurement that chose the scheme (module docstring
of ``meshd/core/ring.py``): random tokens per member looked up by bisection,
fixed partitions ranked by rendezvous hashing (HRW), and meshd's fixed
partitions placed by tokens.

Store section (``--no-store`` skips it): real ``meshd run`` daemons on
127.0.0.1 (``meshd.testing.cluster.LocalCluster``: mutual-TLS RPC sessions,
SQLite stores with ``synchronous = full``, nothing mocked), 3 and then 5 of
them. The load runs inside ``node-1`` (the ``bench_kv`` control command, a
benchmark aid enabled by ``MESHD_BENCH=1``), so the control socket is not
timed; ``node-1`` coordinates every request, C at a time, over 10,000 keys
with 100-byte values:

* ``put``/``get`` at consistency ``one`` and ``quorum``: requests/s and the
  p50/p99 latency of a request (coordinator receipt to answer); the
  coordinator coalesces writes waiting for the same replica into one
  message (``runtime/kv/service.py`` Rule 8), so under this load a put costs
  fewer round trips than the ceiling counts: ``put_quorum_uncoalesced``
  turns that off and shows one message per write and replica;
* ``raw``: the raw ceiling, the same round trips with no KV work: for each
  request an empty ``_echo`` to every member of the key's preference list
  over the same sessions (the coordinator's own copy runs locally, as the
  KV's does), answered once as many replied as the level needs.

Rows alternate within each run; each reports the median over ``--runs``.
Five daemons share this machine's cores with the load generator, so
compare rows of the same run rather than absolute numbers.

Ring and store JSON keys: ``put_quorum_per_s``, ``raw_ceiling_per_s`` (the
raw quorum row, what ``put_quorum`` is measured against),
``put_quorum_over_raw``, ``put_quorum_uncoalesced_per_s``,
``get_quorum_p99_ms``, ``put_quorum_p99_ms`` for 3 daemons, and ``store``
with every row for 3 and 5 daemons.

Prints a table; with ``--json`` the last line is one JSON object:
``ring_lookups_per_s``, ``uhashring_lookups_per_s`` (``get_node``),
``uhashring_preference_list_per_s``, ``ownership_max_over_mean`` and
``replica_ownership_max_over_mean`` (maps "10"/"100" to a number),
``moved_fraction_over_ideal``, ``moved_replicas_over_ideal``,
``worst_over_name_sets`` (the same ownership/moved keys, worst case),
``ring_build_ms`` (map N to ms) and a ``meta`` object.
``--quick`` takes well under a minute.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import hashlib
import json
import platform
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

import attrs

from meshd.core.ring import PartitionChange, Ring, RingDiff, diff, member_tokens

try:
    import uhashring  # type: ignore[import-untyped]
except ImportError:  # reported in the table and left out of the JSON
    uhashring = None

SIZES = (10, 100)
JOIN_BASE = 10
REPLICAS = 3


@attrs.define
class Plan:
    lookups: int
    runs: int
    name_sets: int  # including the canonical node-1..N


FULL = Plan(lookups=200_000, runs=5, name_sets=20)
QUICK = Plan(lookups=100_000, runs=3, name_sets=5)


def names(n: int, name_set: int = 0) -> list[str]:
    """Member names: ``node-1 .. node-n`` for set 0, ``s<k>-host<i>.example`` for set k."""
    if name_set == 0:
        return [f"node-{i}" for i in range(1, n + 1)]
    return [f"s{name_set}-host{i}.example" for i in range(1, n + 1)]


def max_over_mean(shares: dict[str, float]) -> float:
    values = list(shares.values())
    return max(values) / statistics.mean(values)


# ---------------------------------------------------------------- ring section


def placement(
    name_set: int,
    build: Callable[[list[str]], Ring] = Ring.build,
    compare: Callable[[Ring, Ring], RingDiff] = diff,
) -> dict[str, float]:
    """Ownership at N = 10 and 100 and movement on an 11th join, for one set of names."""
    out: dict[str, float] = {}
    for n in SIZES:
        ring = build(names(n, name_set))
        out[f"own{n}"] = max_over_mean(ring.ownership(1))
        out[f"rep{n}"] = max_over_mean(ring.ownership(REPLICAS))
    before = build(names(JOIN_BASE, name_set))
    after = build(names(JOIN_BASE + 1, name_set))
    change = compare(before, after)
    ideal = 1 / (JOIN_BASE + 1)
    out["moved"] = change.moved_fraction / ideal
    # Ideal for replicas: the joiner takes 1/11 of the n slots of every partition.
    out["moved_replicas"] = change.replica_moves / (after.partition_count * REPLICAS) / ideal
    joiner = names(JOIN_BASE + 1, name_set)[-1]
    out["foreign_moves"] = sum(
        1 for c in change.changes if set(c.gained) - {joiner} or (c.lost and joiner not in c.gained)
    )
    return out


def lookups_per_s(fn: Callable[[bytes], object], keys: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for key in keys:
        fn(key)
    return len(keys) / (time.perf_counter() - start)


def lookup_rates(plan: Plan) -> dict[str, float]:
    """Median lookups/s of ours and uhashring's, measured alternately in one process."""
    ring = Ring.build(names(10))
    keys = [b"key-%d" % i for i in range(plan.lookups)]
    skeys = [k.decode() for k in keys]  # uhashring hashes str(key)
    contenders: dict[str, Callable[[], float]] = {"ring": lambda: lookups_per_s(ring.owners, keys)}
    if uhashring is not None:
        other = uhashring.HashRing(names(10))
        contenders["uhashring"] = lambda: lookups_per_s(other.get_node, skeys)  # type: ignore[arg-type]
        contenders["uhashring_plist"] = lambda: lookups_per_s(
            lambda k: list(other.range(k, REPLICAS)),
            skeys[: plan.lookups // 4],  # type: ignore[arg-type]
        )
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(plan.runs):
        for name, run in contenders.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def build_ms(n: int, repeat: int = 3) -> float:
    members = names(n)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        Ring.build(members)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def uhashring_ownership(n: int) -> float | None:
    """uhashring's primary ownership max/mean (its continuum, 128-bit md5 points)."""
    if uhashring is None:
        return None
    ring = uhashring.HashRing(names(n))
    points = ring.runtime._keys
    owner = ring.runtime._ring
    shares: Counter[str] = Counter()
    span = 1 << 128
    for i, point in enumerate(points):
        previous = points[i - 1] if i else points[-1] - span
        shares[owner[point]] += (point - previous) / span
    return max_over_mean(dict(shares))


# ------------------------------------------------------- scheme comparison


def _hrw_ring(members: list[str], partition_bits: int) -> list[tuple[str, ...]]:
    """Rendezvous hashing per partition: the n highest scores of SHAKE(member)[p]."""
    ordered = sorted(set(members))
    count = 1 << partition_bits
    columns = [
        struct.unpack(f">{count}Q", hashlib.shake_128(b"hrw\x00" + m.encode()).digest(8 * count))
        for m in ordered
    ]
    table = []
    for scores in zip(*columns, strict=True):
        remaining = list(scores)
        plist = []
        for _ in range(min(REPLICAS, len(ordered))):
            best = max(remaining)
            i = remaining.index(best)
            plist.append(ordered[i])
            remaining[i] = -1
        table.append(tuple(plist))
    return table


@attrs.frozen
class _TableRing:
    """Just enough of Ring's interface for placement() over another scheme's table."""

    table: list[tuple[str, ...]]
    members: tuple[str, ...]

    @property
    def partition_count(self) -> int:
        return len(self.table)

    def ownership(self, n: int) -> dict[str, float]:
        counts: Counter[str] = Counter(m for plist in self.table for m in plist[:n])
        return {m: counts[m] / len(self.table) for m in self.members}


def _table_diff(before: _TableRing, after: _TableRing) -> RingDiff:
    changes = tuple(
        PartitionChange(p, b, a)
        for p, (b, a) in enumerate(zip(before.table, after.table, strict=True))
        if a != b
    )
    return RingDiff(len(before.table), changes)


def _hrw_build(members: list[str], partition_bits: int) -> _TableRing:
    return _TableRing(_hrw_ring(members, partition_bits), tuple(sorted(set(members))))


def _tokens_bisect(members: list[str], tokens: int) -> tuple[list[int], list[tuple[str, ...]]]:
    """Plain consistent hashing: sorted tokens, a preference list per token."""
    points = sorted((t, m) for m in sorted(set(members)) for t in member_tokens(m, tokens))
    circle = [t for t, _ in points]
    owners = [m for _, m in points]
    want = min(REPLICAS, len(set(members)))
    plists = []
    for i in range(len(owners)):
        found: list[str] = []
        j = i
        while len(found) < want:
            if owners[j] not in found:
                found.append(owners[j])
            j = (j + 1) % len(owners)
        plists.append(tuple(found))
    return circle, plists


def scheme_rows(plan: Plan) -> list[tuple[str, dict[str, float]]]:
    """Every candidate scheme over the same name sets: canonical value and worst case."""
    candidates: list[tuple[str, Callable[[list[str]], object]]] = []
    for tokens in (160, 256, 1024):
        # Continuous ownership approximated on a 2**18-point grid.
        candidates.append(
            (
                f"random tokens, {tokens}/member",
                functools.partial(Ring.build, tokens_per_member=tokens, partition_bits=18),
            )
        )
    for bits in (12, 14, 16):
        candidates.append((f"HRW, Q=2^{bits}", functools.partial(_hrw_build, partition_bits=bits)))
    for tokens in (512, 1024, 2048):
        candidates.append(
            (
                f"Q=2^16 by tokens, {tokens}/member",
                functools.partial(Ring.build, tokens_per_member=tokens),
            )
        )
    rows = []
    for label, build in candidates:
        print(f"  scheme: {label} …", file=sys.stderr, flush=True)
        start = time.perf_counter()
        build(names(100))
        build_100 = 1000 * (time.perf_counter() - start)
        compare = _table_diff if isinstance(build(names(2)), _TableRing) else diff
        samples = [
            placement(name_set, build, compare)  # type: ignore[arg-type]
            for name_set in range(plan.name_sets)
        ]
        row = {f"{k}_first": samples[0][k] for k in samples[0]}
        row |= {f"{k}_worst": max(s[k] for s in samples) for k in samples[0]}
        row["build_100_ms"] = build_100
        rows.append((label, row))
    # Lookup cost of the two lookup shapes (independent of placement quality).
    circle, plists = _tokens_bisect(names(10), 1024)
    keys = [b"key-%d" % i for i in range(plan.lookups)]

    def by_bisect(key: bytes) -> tuple[str, ...]:
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        return plists[bisect.bisect_left(circle, h) % len(circle)]

    table_ring = Ring.build(names(10))
    shapes = {
        "lookups/s: bisect over 10x1024 tokens": by_bisect,
        "lookups/s: table of 2^16 partitions": table_ring.owners,
    }
    rates: dict[str, list[float]] = {label: [] for label in shapes}
    for _ in range(plan.runs):
        for label, fn in shapes.items():
            rates[label].append(lookups_per_s(fn, keys))
    rows.extend((label, {"lookups": statistics.median(v)}) for label, v in rates.items())
    return rows


# ---------------------------------------------------------------- store


#: (row name, op, consistency, coalesce) of the store section; "raw" is the ceiling.
STORE_ROWS = [
    ("raw_one", "raw", "one", True),
    ("raw_quorum", "raw", "quorum", True),
    ("put_one", "put", "one", True),
    ("put_quorum", "put", "quorum", True),
    ("put_quorum_uncoalesced", "put", "quorum", False),
    ("get_one", "get", "one", True),
    ("get_quorum", "get", "quorum", True),
]
STORE_KEYS = 10_000
STORE_VALUE = 100
STORE_CONCURRENCY = 64


def _bench_kv(
    c: object, op: str, level: str, count: int, coalesce: bool = True
) -> dict[str, object]:
    args = {
        "op": op,
        "consistency": level,
        "count": count,
        "keys": min(STORE_KEYS, count),
        "concurrency": STORE_CONCURRENCY,
        "size": STORE_VALUE,
        "timeout": 30.0,
        "coalesce": coalesce,
    }
    result: dict[str, object] = c.request("node-1", "bench_kv", args, timeout=600)  # type: ignore[attr-defined]
    if result["errors"]:
        raise SystemExit(f"store {op} {level}: requests failed: {result['errors']}")
    return result


def measure_store(sizes: tuple[int, ...], count: int, runs: int) -> dict[str, dict[str, object]]:
    """The store rows for each mesh size: name -> {per_s, p50_ms, p99_ms, runs_per_s}."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from meshd.testing.cluster import LocalCluster

    os.environ["MESHD_BENCH"] = "1"  # inherited by the daemons: enables bench_kv
    found: dict[str, dict[str, object]] = {}
    for size in sizes:
        root = Path(tempfile.mkdtemp(prefix="meshd-data-", dir="/tmp"))
        try:
            with LocalCluster(root, size) as c:
                print(f"starting {size} daemons …", file=sys.stderr, flush=True)
                c.start_all()
                if not c.wait_until(c.converged, 30.0):
                    raise SystemExit("the daemons did not converge within 30 s")

                def serving(size: int = size) -> bool:
                    try:
                        rings = [c.request(n, "ring") for n in c.names]
                    except Exception:
                        return False
                    return all(
                        r["serving"] and len(r["members"]) == size and not r["rebalancing"]
                        for r in rings
                    )

                # Steady state: every ring formed, and the start-up ring
                # changes are no longer being handed off (reads would also ask
                # the previous owners until then).
                if not c.wait_until(serving, 60.0, interval=0.5):
                    raise SystemExit("the rings did not settle within 60 s")
                # Warm-up: sessions, caches, and every key written once.
                _bench_kv(c, "put", "quorum", STORE_KEYS)
                samples: dict[str, list[dict[str, object]]] = {}
                for r in range(runs):
                    print(f"  {size} daemons: run {r + 1}/{runs} …", file=sys.stderr, flush=True)
                    for name, op, level, coalesce in STORE_ROWS:
                        samples.setdefault(name, []).append(
                            _bench_kv(c, op, level, count, coalesce)
                        )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        for name, results in samples.items():
            found.setdefault(str(size), {})[name] = {
                "per_s": round(statistics.median(float(r["per_s"]) for r in results), 1),  # type: ignore[arg-type]
                "p50_ms": round(statistics.median(float(r["p50_ms"]) for r in results), 3),  # type: ignore[arg-type]
                "p99_ms": round(statistics.median(float(r["p99_ms"]) for r in results), 3),  # type: ignore[arg-type]
                "runs_per_s": [r["per_s"] for r in results],
            }
    return found


# ---------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer lookups, runs and name sets (< 1 min)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on the last line"
    )
    parser.add_argument("--runs", type=int, help="lookup passes per contender (median is reported)")
    parser.add_argument(
        "--name-sets", type=int, help="member-name sets for the worst-case rows (>= 1)"
    )
    parser.add_argument(
        "--schemes", action="store_true", help="also compare the candidate placement schemes"
    )
    parser.add_argument(
        "--no-store", action="store_true", help="skip the store section (no daemons started)"
    )
    parser.add_argument(
        "--store-runs", type=int, help="runs per store row (median reported; default 3, quick 1)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = attrs.evolve(plan, runs=args.runs)
    if args.name_sets:
        plan = attrs.evolve(plan, name_sets=max(1, args.name_sets))

    print("measuring lookups …", file=sys.stderr, flush=True)
    rates = lookup_rates(plan)
    print("measuring placement …", file=sys.stderr, flush=True)
    canonical = placement(0)
    # Set 0 is the canonical one; the worst case covers it and name_sets - 1 others.
    others = [placement(s) for s in range(1, plan.name_sets)]
    worst = {k: max([canonical[k]] + [o[k] for o in others]) for k in canonical}
    builds = {n: build_ms(n) for n in SIZES}
    default = Ring.build([])
    store: dict[str, dict[str, object]] = {}
    if not args.no_store:
        print("measuring the store …", file=sys.stderr, flush=True)
        store = measure_store(
            (3, 5),
            count=3000 if args.quick else 10_000,
            runs=args.store_runs or (1 if args.quick else 3),
        )

    print(
        f"meshd ring: {default.tokens_per_member} tokens/member, Q = 2^{default.partition_bits} "
        f"partitions, n = {default.replicas}{' (quick)' if args.quick else ''}"
    )
    width = 44

    def row(label: str, value: str, note: str = "") -> None:
        print(f"{label:{width}}  {value:>12}  {note}")

    row("owners(key) lookups/s, N=10", f"{rates['ring']:,.0f}", "one hash + one index, n = 3")
    if uhashring is None:
        row("uhashring lookups/s", "n/a", "uhashring not installed (pip install uhashring)")
    else:
        row(
            "uhashring get_node lookups/s",
            f"{rates['uhashring']:,.0f}",
            f"ratio ours/uhashring {rates['ring'] / rates['uhashring']:.2f}",
        )
        row(
            "uhashring list(range(key, 3)) lookups/s",
            f"{rates['uhashring_plist']:,.0f}",
            f"ratio {rates['ring'] / rates['uhashring_plist']:.2f}",
        )
    for n in SIZES:
        row(
            f"ownership max/mean N={n}, primary",
            f"{canonical[f'own{n}']:.3f}",
            f"worst of {plan.name_sets} name sets {worst[f'own{n}']:.3f}",
        )
        row(
            f"ownership max/mean N={n}, n=3 replicas",
            f"{canonical[f'rep{n}']:.3f}",
            f"worst {worst[f'rep{n}']:.3f}",
        )
        if uhashring is not None:
            row(
                f"  uhashring primary max/mean N={n}",
                f"{uhashring_ownership(n):.3f}",
                "160 vnodes, md5",
            )
    row(
        "moved on 11th join / ideal 1/11, primary",
        f"{canonical['moved']:.3f}",
        f"worst {worst['moved']:.3f}",
    )
    row(
        "moved on 11th join / ideal, list slots",
        f"{canonical['moved_replicas']:.3f}",
        f"worst {worst['moved_replicas']:.3f}",
    )
    row(
        "partitions changed not by the joiner",
        f"{canonical['foreign_moves']:.0f}",
        f"worst {worst['foreign_moves']:.0f} (must be 0)",
    )
    for n in SIZES:
        row(f"Ring.build ms, N={n}", f"{builds[n]:.0f}")
    if store:
        print()
        print(
            f"store: node-1 coordinates, {STORE_CONCURRENCY} requests in flight, "
            f"{STORE_VALUE}-byte values, {STORE_KEYS:,} keys, synchronous = full"
        )
        print(f"{'daemons':>7} {'row':22} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}  note")
        for size, rows in store.items():
            for name, values in rows.items():
                v: dict[str, float] = values  # type: ignore[assignment]
                note = ""
                if name.startswith("put_") or name.startswith("get_"):
                    level = name.split("_")[1]
                    raw = rows[f"raw_{level}"]["per_s"]  # type: ignore[index]
                    note = f"{100 * v['per_s'] / raw:.0f}% of raw"
                    if name.endswith("uncoalesced"):
                        note += ", one message per write and replica"
                elif name.startswith("raw_"):
                    note = "ceiling: the same round trips, empty"
                print(
                    f"{size:>7} {name:22} {v['per_s']:>11,.0f} {v['p50_ms']:>8.2f} "
                    f"{v['p99_ms']:>8.2f}  {note}"
                )
    else:
        print("store: not measured (--no-store)")

    if args.schemes:
        print()
        print(f"candidate schemes (first = node-1..N; worst over {plan.name_sets} name sets)")
        header = ("own10", "own100", "rep100", "moved", "foreign_moves")
        print(f"{'scheme':40} " + " ".join(f"{h:>15}" for h in header) + f" {'build100 ms':>12}")
        for label, values in scheme_rows(plan):
            if "lookups" in values:
                print(f"{label:40} {values['lookups']:,.0f}")
                continue
            cells = [f"{values[f'{h}_first']:.3f}/{values[f'{h}_worst']:.3f}" for h in header]
            print(
                f"{label:40} "
                + " ".join(f"{c:>15}" for c in cells)
                + f" {values['build_100_ms']:>12.0f}"
            )

    if args.json:
        out: dict[str, object] = {
            "ring_lookups_per_s": round(rates["ring"]),
            "ownership_max_over_mean": {str(n): round(canonical[f"own{n}"], 4) for n in SIZES},
            "replica_ownership_max_over_mean": {
                str(n): round(canonical[f"rep{n}"], 4) for n in SIZES
            },
            "moved_fraction_over_ideal": round(canonical["moved"], 4),
            "moved_replicas_over_ideal": round(canonical["moved_replicas"], 4),
            "worst_over_name_sets": {
                "name_sets": plan.name_sets,
                "ownership_max_over_mean": {str(n): round(worst[f"own{n}"], 4) for n in SIZES},
                "moved_fraction_over_ideal": round(worst["moved"], 4),
            },
            "ring_build_ms": {str(n): round(builds[n], 1) for n in SIZES},
            "meta": {
                "tokens_per_member": default.tokens_per_member,
                "partition_bits": default.partition_bits,
                "replicas": default.replicas,
                "lookup_runs": plan.runs,
                "python": platform.python_version(),
                "uhashring": getattr(uhashring, "__version__", None) if uhashring else None,
                "store_concurrency": STORE_CONCURRENCY,
                "store_value_bytes": STORE_VALUE,
                "cores": __import__("os").cpu_count(),
            },
        }
        if store:
            three: dict[str, dict[str, float]] = store["3"]  # type: ignore[assignment]
            out["put_quorum_per_s"] = three["put_quorum"]["per_s"]
            out["raw_ceiling_per_s"] = three["raw_quorum"]["per_s"]
            out["put_quorum_over_raw"] = round(
                three["put_quorum"]["per_s"] / three["raw_quorum"]["per_s"], 3
            )
            out["put_quorum_p99_ms"] = three["put_quorum"]["p99_ms"]
            out["put_quorum_uncoalesced_per_s"] = three["put_quorum_uncoalesced"]["per_s"]
            out["get_quorum_p99_ms"] = three["get_quorum"]["p99_ms"]
            out["store"] = store
        if uhashring is not None:
            out["uhashring_lookups_per_s"] = round(rates["uhashring"])
            out["uhashring_preference_list_per_s"] = round(rates["uhashring_plist"])
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
