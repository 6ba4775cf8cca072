"""The replicated store with real ``meshd run`` daemons on 127.0.0.1.

Nothing is mocked: each daemon has its own SQLite store, requests go through
the control socket (``meshd.client``, concurrently) and the daemons talk
over their mutual-TLS RPC sessions. Process faults are SIGKILL + restart
(loopback has no nftables; a killed node misses writes exactly like one cut
off by a partition, and its TCP peers see the same refused connections).

Bounds (lan profile: a SIGKILLed member of 5 is dead after 4..24 s of
suspicion, see test_daemon.py):

* CONVERGE_S: the mesh converges after a start or a restart.
* HEAL_S: after a healed fault, every pair of replicas shows equal Merkle
  roots for the partitions both hold. The bound is two anti-entropy rounds
  ([kv] anti_entropy_interval = 2 s here, jittered 0.9..1.1) plus the
  exchange itself, plus the restart and rejoin: 30 s. Measured here: a
  few seconds after the mesh converged.
* SETTLE_S: handoffs and hints finish after a ring change.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

import meshd.client
from meshd.core.ring import Ring
from meshd.core.versioned import placement_key
from meshd.testing.cluster import ControlError, LocalCluster

from .conftest import START_TIMEOUT, _answers

CONVERGE_S = 30.0
HEAL_S = 30.0
SETTLE_S = 60.0
#: [kv] settings of every test mesh: short anti-entropy rounds.
KV = {"anti_entropy_interval": 2.0, "timeout": 3.0}


def start_kv_cluster(
    cluster: Callable[..., LocalCluster],
    size: int,
    *,
    running: int | None = None,
    kv: dict[str, Any] | None = None,
) -> LocalCluster:
    """A LocalCluster of ``size`` nodes with ``[kv]`` settings; the first ``running`` started."""
    c = cluster(size, start=False)
    for name in c.names:
        c.configure(name, "kv", {**KV, **(kv or {})})
    names = c.names[: size if running is None else running]
    c.start(names[0], timeout=START_TIMEOUT)
    for name in names[1:]:
        c.start(name, wait=False)
    for name in names[1:]:
        assert c.wait_until(functools.partial(_answers, c, name), START_TIMEOUT)
    assert c.wait_until(c.converged, CONVERGE_S), "the mesh did not converge"
    assert c.wait_until(lambda: rings_agree(c), CONVERGE_S), "the rings did not agree"
    return c


def rings_agree(c: LocalCluster) -> bool:
    """Every running node computes the same ring, of the running nodes, and serves requests."""
    try:
        rings = [c.request(n, "ring") for n in c.running()]
    except ControlError:
        return False
    names = sorted(c.running())
    return (
        all(sorted(m["name"] for m in r["members"]) == names for r in rings)
        and len({r["fingerprint"] for r in rings}) == 1
        and all(r["serving"] for r in rings)
    )


def settled(c: LocalCluster) -> bool:
    """No running node has handoffs or hints pending."""
    try:
        for name in c.running():
            ring = c.request(name, "ring")
            if ring["handoffs"] or ring["hints_pending"]:
                return False
    except ControlError:
        return False
    return True


def converged_roots(c: LocalCluster) -> bool:
    """Every pair of running replicas has equal Merkle roots over the partitions both hold."""
    try:
        roots = {n: c.request(n, "kv_merkle")["roots"] for n in c.running()}
    except ControlError:
        return False
    return all(roots[a].get(b) == roots[b].get(a) for a in roots for b in roots if a != b)


def kv_counters(c: LocalCluster, key: str) -> int:
    return sum(int(c.request(n, "status")["counters"].get(key, 0)) for n in c.running())


async def clients(c: LocalCluster, names: list[str]) -> dict[str, meshd.client.Client]:
    return {n: await meshd.client.connect(c.socket_path(n), max_connections=8) for n in names}


# ==================================================================== SIGKILL under load


def test_kv_acknowledged_writes_survive_a_sigkill_and_restart(
    cluster: Callable[..., LocalCluster],
) -> None:
    """5 nodes, 5,000 quorum writes while node-5 is SIGKILLed, declared dead, and restarted.

    The checker records, per key, the last acknowledged and the last
    attempted sequence number (writes to one key are sequential and go
    through one coordinator, so their HLC timestamps are ordered). Afterwards
    every key must read back, at quorum, a value no older than its last
    acknowledgement.
    """
    c = start_kv_cluster(cluster, 5)
    keys, rounds, workers = 500, 10, 40
    rate = 250.0  # writes/s in all: 20 s, long enough for node-5 to be declared dead
    acked: dict[int, int] = {}
    attempted: dict[int, int] = {}
    failures: list[str] = []
    done = 0
    killed = trio.Event()
    reached_kill, reached_restart = trio.Event(), trio.Event()
    declared_dead = False
    kill_at, restart_at = keys * rounds // 5, keys * rounds * 3 // 5
    coordinators = ["node-1", "node-2", "node-3", "node-4"]  # node-5 is the one killed

    async def main() -> float:
        nonlocal done
        conns = await clients(c, coordinators)
        started = time.monotonic()

        async def worker(w: int) -> None:
            nonlocal done
            mine = [k for k in range(keys) if k % workers == w]
            for seq in range(rounds):
                for k in mine:
                    attempted[k] = seq
                    client = conns[coordinators[k % len(coordinators)]]
                    try:
                        await client.put("default", f"key-{k}", f"{k}:{seq}", consistency="quorum")
                    except meshd.client.RequestFailed as e:
                        failures.append(str(e))
                    else:
                        acked[k] = seq
                    done += 1
                    if done >= kill_at:
                        reached_kill.set()
                    if done >= restart_at:
                        reached_restart.set()
                    # Pacing of the workload (a rate, not a wait): writes keep
                    # flowing while node-5 dies, is declared dead and returns.
                    await trio.sleep(workers / rate)

        def survivors_see_node5_dead() -> bool:
            return c.all_see("node-5", "dead", observers=coordinators)

        async def chaos() -> None:
            nonlocal declared_dead
            await reached_kill.wait()
            await trio.to_thread.run_sync(c.kill, "node-5")
            killed.set()
            # Let the failure detector declare it dead (the ring changes and
            # its partitions are handed to the next members), then bring it back.
            declared_dead = await trio.to_thread.run_sync(
                c.wait_until, survivors_see_node5_dead, 40.0, 0.2
            )
            await reached_restart.wait()
            await trio.to_thread.run_sync(functools.partial(c.start, "node-5", timeout=30.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chaos)
            async with trio.open_nursery() as writers:
                for w in range(workers):
                    writers.start_soon(worker, w)
        elapsed = time.monotonic() - started
        for conn in conns.values():
            await conn.aclose()
        return elapsed

    elapsed = trio.run(main)
    assert killed.is_set()
    assert declared_dead, "node-5 was never declared dead"
    assert done == keys * rounds
    assert elapsed < 60, f"5,000 writes took {elapsed:.1f} s"
    # Quorum (2 of 3) never needs node-5: every write was acknowledged.
    assert failures == [], failures[:5]

    assert c.wait_until(c.converged, CONVERGE_S), "node-5 did not rejoin"
    assert c.wait_until(lambda: rings_agree(c), CONVERGE_S)
    assert c.wait_until(lambda: settled(c), SETTLE_S), "handoffs/hints did not finish"
    # node-5 was written to while it was down: hints were kept and delivered;
    # its death and return moved partitions twice.
    assert kv_counters(c, "kv_hints_stored") > 0
    assert kv_counters(c, "kv_hints_delivered") > 0
    assert kv_counters(c, "kv_handoff_partitions") > 0

    async def check() -> list[str]:
        conns = await clients(c, c.names)
        lost: list[str] = []
        names = itertools.cycle(c.names)

        async def read(k: int, node: str) -> None:
            got = await conns[node].get("default", f"key-{k}", consistency="quorum")
            seq = -1 if got is None else int(got.decode().split(":")[1])
            if not acked[k] <= seq <= attempted[k]:
                lost.append(f"key-{k}: read {seq} via {node}, last acknowledged {acked[k]}")

        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(32)

            async def bounded(k: int, node: str) -> None:
                async with limiter:
                    await read(k, node)

            for k in range(keys):
                nursery.start_soon(bounded, k, next(names))
        for conn in conns.values():
            await conn.aclose()
        return lost

    assert trio.run(check) == []


# ==================================================================== partition, heal, tombstones


def test_kv_replicas_converge_after_a_partition_and_deletes_stay_deleted(
    cluster: Callable[..., LocalCluster],
) -> None:
    """node-3 misses writes and a delete; anti-entropy alone repairs it (no hints).

    The fault is a SIGKILL and a restart within the suspicion timeout, so
    the ring never changes and no handoff runs: the only way node-3 learns
    what it missed is the Merkle comparison. Convergence is checked as
    equal roots for every pair within HEAL_S, and the deleted key must read
    as deleted on every replica, including after more rounds.
    """
    c = start_kv_cluster(cluster, 3, kv={"hinted_handoff": False})
    for i in range(100):
        c.request("node-1", "kv_put", {"key": f"k{i}", "value": "old", "consistency": "all"})
    c.request("node-1", "kv_put", {"key": "doomed", "value": "alive", "consistency": "all"})
    assert c.wait_until(lambda: converged_roots(c), HEAL_S)

    c.kill("node-3")
    for i in range(100):
        c.request("node-2", "kv_put", {"key": f"k{i}", "value": "new"})
    for i in range(100, 150):
        c.request("node-1", "kv_put", {"key": f"k{i}", "value": "added"})
    c.request("node-1", "kv_delete", {"key": "doomed"})
    c.start("node-3")
    healed_from = time.monotonic()
    assert c.wait_until(c.converged, CONVERGE_S)
    assert c.wait_until(lambda: rings_agree(c), CONVERGE_S)
    assert c.wait_until(lambda: converged_roots(c), HEAL_S), "replicas did not converge"
    heal_s = time.monotonic() - healed_from
    assert kv_counters(c, "kv_anti_entropy_pushed") + kv_counters(c, "kv_anti_entropy_pulled") > 0

    # The tombstone won everywhere and stays: more rounds do not bring "alive" back.
    for _ in range(2):
        for name in c.names:
            got = c.request(name, "kv_get", {"key": "doomed", "consistency": "all"})
            assert (got["found"], got["deleted"]) == (False, True), name
        for name in c.names:
            c.request(name, "kv_anti_entropy")
    for name in c.names:
        assert c.request(name, "kv_get", {"key": "k5", "consistency": "all"})["value"] == "new"
        assert c.request(name, "kv_get", {"key": "k120", "consistency": "one"})["value"] == "added"
    assert heal_s < HEAL_S


# ==================================================================== a sixth node joins


def test_kv_sixth_node_takes_its_share_and_every_key_stays_readable(
    cluster: Callable[..., LocalCluster],
) -> None:
    c = start_kv_cluster(cluster, 6, running=5)
    keys = [f"key-{i}" for i in range(600)]

    async def write() -> None:
        conns = await clients(c, c.names[:5])
        limiter = trio.CapacityLimiter(32)

        async def put(i: int, key: str) -> None:
            async with limiter:
                await conns[c.names[i % 5]].put("default", key, key, consistency="all")

        async with trio.open_nursery() as nursery:
            for i, key in enumerate(keys):
                nursery.start_soon(put, i, key)
        for conn in conns.values():
            await conn.aclose()

    trio.run(write)

    stop = threading.Event()
    bad: list[str] = []
    reads = 0
    coordinators = c.names[:5]  # node-6 too, once its control socket answers

    def reader() -> None:
        nonlocal reads
        rng = random.Random(5)
        while not stop.is_set():
            key = rng.choice(keys)
            node = rng.choice(coordinators)
            level = rng.choice(["one", "quorum"])
            try:
                got = c.request(node, "kv_get", {"key": key, "consistency": level})
            except ControlError as e:
                # A node that has not joined yet refuses; it never answers wrongly.
                if not (node == "node-6" and "has not joined the mesh yet" in str(e)):
                    bad.append(f"{node} {key} {level}: {e}")
                continue
            reads += 1
            if got["value"] != key:
                bad.append(f"{node} {key} {level}: read {got['value']!r}")

    ring = Ring.build(c.names)
    owners = {k: ring.owners(placement_key("default", k.encode())) for k in keys}
    expected = {n: sum(1 for o in owners.values() if n in o) for n in c.names}
    assert expected["node-6"] > 0

    def holdings() -> dict[str, int]:
        # Each node's own count (the ring command's view of the others is cached).
        return {
            n: next(m["keys"] for m in c.request(n, "ring")["members"] if m["name"] == n)
            for n in c.running()
        }

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        c.start("node-6")
        coordinators.append("node-6")
        assert c.wait_until(c.converged, CONVERGE_S)
        assert c.wait_until(lambda: rings_agree(c), CONVERGE_S)
        # node-6 holds exactly its share, and the others dropped what moved to it.
        assert c.wait_until(lambda: holdings() == expected, SETTLE_S, interval=0.5), (
            f"handoffs did not finish: {holdings()} != {expected}"
        )
        assert c.wait_until(lambda: settled(c), SETTLE_S)
        # Keep reading after the move, from every node: 100 more reads.
        after_move = reads
        assert c.wait_until(lambda: reads >= after_move + 100, 30.0)
    finally:
        stop.set()
        thread.join(30)
    assert bad == [], bad[:10]
    assert reads > 100
    answer = c.request("node-1", "ring")
    share = {m["name"]: m["owns"] for m in answer["members"]}["node-6"]
    assert abs(expected["node-6"] / len(keys) - share) < 0.1


# ==================================================================== hints


def test_kv_hints_are_delivered_to_a_returning_node(
    cluster: Callable[..., LocalCluster],
) -> None:
    """Writes node-4 misses while down are kept as hints elsewhere and reach it on return.

    Anti-entropy is set to an hour so that only hints can carry the writes.
    """
    c = start_kv_cluster(cluster, 4, kv={"anti_entropy_interval": 3600.0})
    ring = Ring.build(c.names)
    candidates = (f"h{i}" for i in range(400))
    theirs = [
        k for k in candidates if "node-4" in ring.owners(placement_key("default", k.encode()))
    ]
    theirs = theirs[:60]
    c.kill("node-4")
    for key in theirs:
        c.request("node-1", "kv_put", {"key": key, "value": "v"})
    assert c.wait_until(
        lambda: sum(c.request(n, "ring")["hints_pending"] for n in c.running()) >= len(theirs),
        10.0,
    ), "the missed writes were not kept as hints"
    c.start("node-4")
    assert c.wait_until(c.converged, CONVERGE_S)
    assert c.wait_until(lambda: settled(c), SETTLE_S), "hints were not delivered"
    assert kv_counters(c, "kv_hints_delivered") >= len(theirs)
    # node-4 has them now: its own store holds every one of its keys.
    keys4 = {m["name"]: m["keys"] for m in c.request("node-4", "ring")["members"]}["node-4"]
    assert keys4 == len(theirs)


# ==================================================================== a damaged store


def test_kv_corrupt_store_stops_the_daemon_with_a_clear_message(
    cluster: Callable[..., LocalCluster],
) -> None:
    """No crash loop: exit status 78 (like a configuration error) and the file named."""
    c = cluster(1, start=False)
    state = c.configs["node-1"].parent / "state"
    state.mkdir(exist_ok=True)
    database = state / "kv.sqlite3"
    database.write_bytes(b"certainly not an SQLite database\n" * 200)
    proc = c.start("node-1", wait=False)
    assert proc.wait(timeout=60) == 78
    log = c.log_path("node-1").read_text()
    assert str(database) in log
    assert "move the file aside" in log
    assert "Traceback" not in log


def test_kv_bad_requests_status_and_metrics(cluster: Callable[..., LocalCluster]) -> None:
    c = start_kv_cluster(cluster, 2)
    c.request("node-1", "metrics")  # the registry exists from here on
    c.request("node-1", "kv_put", {"key": "k", "value": "v"})
    c.request("node-1", "kv_get", {"key": "k", "consistency": "one"})
    bad = [
        ({"key": "k", "ns": "no spaces"}, "namespace 'no spaces' is not valid"),
        ({"key": "k" * 1025, "value": "v"}, "key must be 1..1024 bytes"),
        ({"key": "k", "value": "v", "consistency": "most"}, "consistency must be one, quorum"),
        ({"key": "k", "value_b64": "not base64!"}, "value_b64 is not valid base64"),
        ({"key": "k", "value": "v", "timeout": "soon"}, "timeout must be a number"),
        ({"key": 7, "value": "v"}, "key must be a string"),
    ]
    for args, message in bad:
        cmd = "kv_put" if "value" in args or "value_b64" in args else "kv_get"
        with pytest.raises(ControlError, match=message):
            c.request("node-1", cmd, args)
    assert c.request("node-1", "kv_get", {"key": "k"})["value"] == "v"  # still serving

    def loads() -> dict[str, Any]:
        return {m["name"]: m.get("load") for m in c.request("node-1", "status")["members"]}

    # Other members' load is cached for 5 s: wait for the refresh.
    assert c.wait_until(lambda: loads() == {"node-1": 2, "node-2": 2}, 10.0, 0.5), loads()
    status = c.request("node-1", "status")
    assert {m["owns"] for m in status["members"]} == {1.0}  # 2 members, 3 replicas: all of it
    assert (status["under_replicated"], status["hints_pending"], status["handoffs"]) == (0, 0, 0)

    text = c.request("node-1", "metrics")["text"]
    assert 'meshd_kv_requests_total{consistency="quorum",op="put",result="ok"} 1.0' in text
    assert 'meshd_kv_requests_total{consistency="one",op="get",result="ok"} 1.0' in text
    assert 'meshd_kv_requests_total{consistency="quorum",op="get",result="ok"} 1.0' in text
    # Refused by the service itself (the others never reach it: bad control arguments).
    assert 'meshd_kv_requests_total{consistency="invalid",op="put",result="invalid"} 1.0' in text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meshd_kv_requests_total{")
    )
    assert f"meshd_kv_request_duration_seconds_count {counted}" in text
    assert "meshd_hints_pending 0.0" in text
