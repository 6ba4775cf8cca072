"""KvService in one process: real stores, real tallies, a fake network between the services.

``FakeMesh`` stands in for the network only: each service's ``call`` goes
straight to the target service's ``handle`` (what ``Daemon.call`` and the
RPC session would deliver), and each service's membership view is a table
the test edits (what the core would report). Everything else is the
product's code: SQLite stores in ``tmp_path``, the ring, the coordinator,
hints, read repair, anti-entropy and handoff. The same scenarios run with
real daemons in ``tests/process/test_kv.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from meshd.config import KvSection
from meshd.core import kvmessages as kvm
from meshd.core.hlc import Timestamp
from meshd.core.outputs import MemberJoined, MemberRecovered
from meshd.core.types import Member, MemberState, NodeId
from meshd.core.versioned import Record, placement_key
from meshd.runtime import store as store_module
from meshd.runtime.kv import KvService, KvTuning, KvUnavailable
from meshd.runtime.rpc import ECHO_SERVICE, RpcError, RpcUnavailable
from meshd.runtime.store import Store

FAST = KvTuning(
    ring_debounce=0.01,
    handoff_settle=0.05,
    handoff_interval=0.2,
    hint_interval=0.1,
    transition_min=0.2,
    transition_poll=0.05,
    stats_ttl=0.0,
    gc_interval=3600.0,
)
CONFIG = KvSection(timeout=1.0, anti_entropy_interval=3600.0)
_ports = itertools.count(20000)


@attrs.define
class FakeMesh:
    """Every node's view is the same table; ``unreachable`` nodes look alive but never answer."""

    root: Path
    states: dict[str, MemberState] = attrs.field(factory=dict)
    nodes: dict[str, KvService] = attrs.field(factory=dict)
    unreachable: set[str] = attrs.field(factory=set)
    calls: list[tuple[str, str]] = attrs.field(factory=list)

    def members(self) -> list[Member]:
        return [
            Member(NodeId(name), ("127.0.0.1", 1), 1, state) for name, state in self.states.items()
        ]

    def caller(self, me: str) -> Callable[[str, str, bytes, float], object]:
        async def call(node: str, service: str, body: bytes, timeout: float) -> bytes:
            self.calls.append((me, node))
            if self.states.get(node) is not MemberState.ALIVE:
                raise RpcUnavailable("not_member", f"{node!r} is not an alive member")
            if node in self.unreachable or node not in self.nodes:
                await trio.sleep(timeout)
                raise RpcUnavailable("timeout", f"timeout after {timeout:g} s")
            if service == ECHO_SERVICE:
                return body
            with trio.move_on_after(timeout):
                return await self.nodes[node].handle(me, body)
            raise RpcUnavailable("timeout", f"timeout after {timeout:g} s")

        return call

    def event(self, name: str, kind: type = MemberJoined) -> None:
        member = Member(NodeId(name), ("127.0.0.1", 1), 1, self.states[name])
        for service in self.nodes.values():
            service.member_event(kind(member))


@asynccontextmanager
async def mesh(
    tmp_path: Path, size: int, config: KvSection = CONFIG, tuning: KvTuning = FAST
) -> AsyncIterator[tuple[FakeMesh, trio.Nursery, Callable[[str], object]]]:
    """``size`` started services node-1..N; yields (mesh, nursery, add(name))."""
    fake = FakeMesh(tmp_path)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def add(name: str) -> KvService:
            fake.states[name] = MemberState.ALIVE
            store = await Store.open(tmp_path / f"{name}.sqlite3", synchronous="NORMAL")
            stack.push_async_callback(store.aclose)
            service = KvService(
                node_id=name,
                store=store,
                config=config,
                member_state=fake.states.get,
                members=fake.members,
                call=fake.caller(name),  # type: ignore[arg-type]
                tuning=tuning,
            )
            fake.nodes[name] = service
            await nursery.start(service.run)
            return service

        for i in range(1, size + 1):
            fake.states[f"node-{i}"] = MemberState.ALIVE
        for i in range(1, size + 1):
            await add(f"node-{i}")
        for service in fake.nodes.values():
            service.member_event(MemberJoined(fake.members()[0]))
        await settle_rings(fake)
        try:
            yield fake, nursery, add
        finally:
            nursery.cancel_scope.cancel()


async def settle_rings(fake: FakeMesh) -> None:
    """Wait until every service's ring has the mesh's ring members."""
    want = frozenset(
        n for n, s in fake.states.items() if s in (MemberState.ALIVE, MemberState.SUSPECT)
    )
    with trio.fail_after(10):
        while True:
            views = [s.view for n, s in fake.nodes.items() if n in want]
            if all(v is not None and frozenset(v.ring.members) == want for v in views):
                return
            await trio.sleep(0.01)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result  # type: ignore[misc]
            if result:
                return
            await trio.sleep(0.02)


def replicas_of(fake: FakeMesh, key: bytes, ns: str = "default") -> tuple[str, ...]:
    view = next(iter(fake.nodes.values())).view
    assert view is not None
    return view.ring.owners(placement_key(ns, key))


# ---------------------------------------------------------------------------
# Coordination


async def test_kv_put_get_delete_through_any_coordinator(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one, two, three = fake.nodes.values()
        written = await one.put("default", b"k", b"v1")
        assert set(written.replicas) == set(fake.nodes)
        assert len(written.acked) >= 2
        assert (await two.get("default", b"k")).value == b"v1"
        await three.delete("default", "k", consistency="all")
        got = await one.get("default", b"k", consistency="all")
        assert got.value is None
        assert got.record is not None
        assert got.record.value is None
        # Every replica ends up with the tombstone (ALL waited for all three).
        for service in fake.nodes.values():
            record = await service.store.get("default", b"k")
            assert record is not None
            assert record.value is None


async def test_kv_scan_merges_every_members_page_newest_wins_deletes_left_out(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, 4) as (fake, _, _):
        one, two, three, four = fake.nodes.values()
        for i in range(30):
            await one.put("app", f"user/{i:02d}".encode(), f"v{i}".encode())
        await two.put("app", b"user/05", b"newer")  # another coordinator, later
        await three.delete("app", b"user/07")
        await one.put("app", b"other/1", b"x")
        await one.put("elsewhere", b"user/99", b"y")
        pairs = await four.scan("app", b"user/", limit=100)
        expected = [(f"user/{i:02d}".encode(), f"v{i}".encode()) for i in range(30) if i != 7]
        expected[5] = (b"user/05", b"newer")
        assert pairs == expected
        # A limit is a prefix of the full answer, even when pages are cut.
        assert await four.scan("app", b"user/", limit=4) == expected[:4]
        # quorum/all need every ring member; one takes whoever answers.
        fake.unreachable.add("node-3")
        with pytest.raises(KvUnavailable, match=r"node-3: timeout"):
            await four.scan("app", b"user/", timeout=0.3)
        partial = await four.scan("app", b"user/", consistency="one", timeout=0.3)
        # Every key has 3 replicas of 4 members: nothing is lost by one silent member.
        assert partial == expected


async def test_kv_coordinator_stamps_with_its_clock_and_writer(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        first = await one.put("default", b"k", b"a")
        second = await one.put("default", b"k", b"b")
        assert first.record.writer == "node-1"
        assert second.record.timestamp > first.record.timestamp
        assert (await fake.nodes["node-3"].get("default", b"k", consistency="all")).value == b"b"


async def test_kv_quorum_failure_says_how_many_answered_and_why(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3, config=attrs.evolve(CONFIG, hinted_handoff=False)) as (
        fake,
        _,
        _,
    ):
        key = b"some-key"
        plist = replicas_of(fake, key)
        coordinator = fake.nodes[plist[0]]
        fake.states[plist[1]] = MemberState.SUSPECT  # in the ring, not alive
        fake.unreachable.add(plist[2])  # alive in the view, never answers
        with pytest.raises(KvUnavailable) as info:
            await coordinator.put("default", key, b"v", timeout=0.3)
        assert str(info.value) == (
            f"quorum needs 2 of 3 replicas, 1 answered ({plist[1]}: not alive, {plist[2]}: timeout)"
        )
        # ONE is met by the coordinator's own copy.
        assert (await coordinator.put("default", key, b"v", consistency="one")).acked == (plist[0],)
        # ALL cannot be met once one replica is not alive: it fails at once.
        expected = rf"all needs 3 of 3 replicas, \d answered \({plist[1]}: not alive"
        with pytest.raises(KvUnavailable, match=expected):
            await coordinator.get("default", key, consistency="all", timeout=0.3)
        assert coordinator.requests[("put", "quorum", "unavailable")] == 1
        assert coordinator.requests[("put", "one", "ok")] == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.put("bad ns", b"k", b"v"), "namespace 'bad ns' is not valid"),
        (lambda s: s.put("default", b"", b"v"), "key must be 1..1024 bytes"),
        (lambda s: s.put("default", b"k" * 1025, b"v"), "key must be 1..1024 bytes"),
        (lambda s: s.put("default", b"k", b"v" * (1 << 20 + 1)), "value must be at most"),
        (lambda s: s.put("default", b"k", b"v", consistency="most"), "consistency must be"),
        (lambda s: s.get("default", b"k", timeout=-1), "timeout must be in"),
        (lambda s: s.delete("", b"k"), "namespace '' is not valid"),
    ],
)
async def test_kv_bad_requests_are_refused_clearly(
    tmp_path: Path, call: Callable[[KvService], object], message: str
) -> None:
    async with mesh(tmp_path, 1) as (fake, _, _):
        service = fake.nodes["node-1"]
        with pytest.raises(ValueError, match=message):
            await call(service)  # type: ignore[misc]
        assert (await service.put("default", b"k", b"fine")).acked == ("node-1",)


async def test_kv_replica_refuses_garbage_and_future_timestamps(tmp_path: Path) -> None:
    async with mesh(tmp_path, 1) as (fake, _, _):
        service = fake.nodes["node-1"]
        with pytest.raises(RpcError, match="kv: "):
            await service.handle("node-2", b"\xc1garbage")
        far = Timestamp.of(service._wall_ms() + 60_000)  # 60 s ahead, drift bound 5 s
        body = kvm.encode(
            kvm.WriteRequest((Record("default", b"k", b"v", far, "node-2"),), fresh=True)
        )
        with pytest.raises(RpcError, match=r"refused the write from node-2: .* ahead"):
            await service.handle("node-2", body)
        assert await service.store.get("default", b"k") is None
        # A repair of the same record (not fresh) is kept: it was accepted elsewhere.
        repair = kvm.encode(kvm.WriteRequest((Record("default", b"k", b"v", far, "node-2"),)))
        assert kvm.decode_write_reply_untrusted(await service.handle("node-2", repair)).applied == 1


# ---------------------------------------------------------------------------
# Hinted handoff


async def test_kv_hint_goes_to_next_alive_node_and_is_delivered_on_return(tmp_path: Path) -> None:
    async with mesh(tmp_path, 5) as (fake, _, _):
        key = b"hinted"
        plist = replicas_of(fake, key)
        down = plist[2]
        fake.states[down] = MemberState.SUSPECT
        await fake.nodes[plist[0]].put("default", key, b"v")
        await wait_for(lambda: fake.nodes[plist[0]]._background == 0)
        holders = [n for n, s in fake.nodes.items() if await s.store.hint_count(down)]
        # Dynamo §4.6: the next alive node past the preference list keeps it.
        view = fake.nodes[plist[0]].view
        assert view is not None
        beyond = view.ring.owners(placement_key("default", key), 5)[3:]
        assert holders == [beyond[0]]
        held = fake.nodes[beyond[0]]
        assert await held.store.hint_count(down) == 1
        assert await fake.nodes[down].store.get("default", key) is None
        # The replica comes back: the hint is delivered and dropped.
        fake.states[down] = MemberState.ALIVE
        fake.event(down, MemberRecovered)

        async def delivered() -> bool:
            record = await fake.nodes[down].store.get("default", key)
            return record is not None and await held.store.hint_count(down) == 0

        await wait_for(delivered)
        assert held.counters["kv_hints_delivered"] == 1


async def test_kv_sloppy_quorum_counts_hints(tmp_path: Path) -> None:
    config = attrs.evolve(CONFIG, sloppy_quorum=True)
    async with mesh(tmp_path, 5, config=config) as (fake, _, _):
        key = b"sloppy"
        plist = replicas_of(fake, key)
        for member in plist[1:]:
            fake.states[member] = MemberState.SUSPECT
        written = await fake.nodes[plist[0]].put("default", key, b"v", consistency="quorum")
        # Two of the three are down: the quorum counts hints (held past the list).
        assert set(written.acked) <= {plist[0]}
        assert set(written.hinted) <= set(plist[1:])
        assert len(written.acked) + len(written.hinted) >= 2
        assert not set(written.hinted.values()) & set(plist)


async def test_kv_strict_quorum_does_not_count_hints(tmp_path: Path) -> None:
    async with mesh(tmp_path, 5) as (fake, _, _):
        key = b"strict"
        plist = replicas_of(fake, key)
        for member in plist[1:]:
            fake.states[member] = MemberState.SUSPECT
        with pytest.raises(KvUnavailable, match=r"quorum needs 2 of 3 replicas, [01] answered"):
            await fake.nodes[plist[0]].put("default", key, b"v")
        # ...but the hints were still left for both replicas.
        await wait_for(lambda: fake.nodes[plist[0]]._background == 0)
        total = 0
        for service in fake.nodes.values():
            total += await service.store.hint_count()
        assert total == 2


# ---------------------------------------------------------------------------
# Read repair


async def test_kv_read_repair_writes_the_newest_back_to_stale_replicas(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        await one.put("default", b"k", b"new", consistency="all")
        stale = Record("default", b"k", b"old", Timestamp.of(1), "node-9")
        # Make node-3's copy stale behind the store's back (a lost write).
        store3 = fake.nodes["node-3"].store
        await store3.delete_partition(one.view.ring.partition_of(placement_key("default", b"k")))  # type: ignore[union-attr]
        await store3.apply([stale])
        got = await fake.nodes["node-2"].get("default", b"k", consistency="all")
        assert got.value == b"new"

        async def repaired() -> bool:
            record = await store3.get("default", b"k")
            return record is not None and record.value == b"new"

        await wait_for(repaired)
        assert fake.nodes["node-2"].counters["kv_read_repairs"] == 1


async def test_kv_read_at_one_waits_past_a_replica_that_has_nothing(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        await one.put("default", b"k", b"v", consistency="all")
        for name in ("node-1", "node-2"):  # only node-3 still has it
            store = fake.nodes[name].store
            await store.delete_partition(one.view.ring.partition_of(placement_key("default", b"k")))  # type: ignore[union-attr]
        for _ in range(5):
            assert (await one.get("default", b"k", consistency="one")).value == b"v"


# ---------------------------------------------------------------------------
# Anti-entropy


async def test_kv_anti_entropy_converges_and_keeps_tombstones(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one, two, three = (fake.nodes[f"node-{i}"] for i in (1, 2, 3))
        records = [
            Record("default", b"k%d" % i, b"v%d" % i, Timestamp.of(1000 + i), "node-1")
            for i in range(200)
        ]
        await one.store.apply(records)  # only node-1 has them (writes the others missed)
        await two.store.apply(records[:100])
        dead = Record.tombstone("default", b"k7", Timestamp.of(5000), "node-2")
        await two.store.apply([dead])  # node-2 deleted k7 later
        for service in (one, two, three):
            await service.anti_entropy_round()
        for service in (one, two, three):
            await service.anti_entropy_round()  # a second round finds nothing left
        roots = {name: await s.shared_roots() for name, s in fake.nodes.items()}
        for a in roots:
            for b in roots[a]:
                assert roots[a][b] == roots[b][a], f"{a} and {b} differ"
        for service in (one, two, three):
            assert await service.store.get("default", b"k7") == dead
            assert (await service.store.get("default", b"k150")) == records[150]
        assert (await three.get("default", b"k7", consistency="all")).value is None
        assert one.counters["kv_anti_entropy_exchanges"] >= 2


async def test_kv_anti_entropy_respects_its_rate(tmp_path: Path) -> None:
    config = attrs.evolve(CONFIG, anti_entropy_rate=20_000)  # ~230 records/s at ~86 bytes
    async with mesh(tmp_path, 2, config=config) as (fake, _, _):
        records = [
            Record("default", b"k%03d" % i, b"x" * 16, Timestamp.of(1000 + i), "node-1")
            for i in range(400)
        ]
        await fake.nodes["node-1"].store.apply(records)
        started = trio.current_time()
        result = await fake.nodes["node-1"].anti_entropy_round()
        elapsed = trio.current_time() - started
        assert result["node-2"].pushed == 400
        # 400 records x 86 bytes = 34 kB at 20 kB/s, one second of burst: >= 0.7 s.
        assert elapsed >= 0.6


# ---------------------------------------------------------------------------
# Rebalancing


async def test_kv_join_hands_partitions_to_the_new_owner_and_reads_stay_correct(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, 3) as (fake, nursery, add):
        one = fake.nodes["node-1"]
        keys = [b"key-%04d" % i for i in range(150)]
        for key in keys:
            await one.put("default", key, key, consistency="all")
        failures: list[str] = []
        reads = 0
        stop = trio.Event()

        async def reader() -> None:
            nonlocal reads
            for key in itertools.cycle(keys):
                if stop.is_set():
                    return
                for name in ("node-1", "node-2", "node-3"):
                    got = await fake.nodes[name].get("default", key, consistency="one")
                    reads += 1
                    if got.value != key:
                        failures.append(f"{name} read {key!r} as {got.value!r}")

        nursery.start_soon(reader)
        four = await add("node-4")
        fake.event("node-4")
        await settle_rings(fake)

        async def settled() -> bool:
            if any(s.handoffs_pending for s in fake.nodes.values()):
                return False
            stats = await four.store.stats()
            return stats.keys > 0

        await wait_for(settled, 20)
        stop.set()
        assert not failures, failures[:5]
        assert reads > 50
        view = four.view
        assert view is not None
        # node-4 holds exactly the keys it owns, and every other node only its own.
        for name, service in fake.nodes.items():
            held = {r.key for r in await service.store.scan("default", limit=10_000)}
            owned = {k for k in keys if name in view.ring.owners(placement_key("default", k))}
            assert held == owned, name
        for key in keys:
            assert (await four.get("default", key)).value == key


async def test_kv_death_moves_partitions_to_the_next_members(tmp_path: Path) -> None:
    async with mesh(tmp_path, 4) as (fake, _, _):
        one = fake.nodes["node-1"]
        keys = [b"key-%04d" % i for i in range(100)]
        for key in keys:
            await one.put("default", key, key, consistency="all")
        fake.states["node-4"] = MemberState.DEAD
        fake.event("node-4")
        await settle_rings(fake)
        view = one.view
        assert view is not None

        async def replicated() -> bool:
            for key in keys:
                for owner in view.ring.owners(placement_key("default", key)):
                    if await fake.nodes[owner].store.get("default", key) is None:
                        return False
            return True

        await wait_for(replicated, 20)


# ---------------------------------------------------------------------------
# Load, roots, ring


async def test_kv_member_stats_and_under_replicated(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        await one.put("default", b"k", b"value", consistency="all")
        stats = await one.member_stats(["node-1", "node-2", "node-3"])
        assert {name: s.keys for name, s in stats.items() if s is not None} == {
            "node-1": 1,
            "node-2": 1,
            "node-3": 1,
        }
        assert await one.under_replicated() == 0
        fake.states["node-3"] = MemberState.SUSPECT
        # Every partition has all three members at N = 3.
        assert await one.under_replicated() == one.view.ring.partition_count  # type: ignore[union-attr]
        # A member that does not answer keeps its last known load.
        fake.unreachable.add("node-2")
        again = await one.member_stats(["node-2"])
        assert again["node-2"] is not None
        assert again["node-2"].keys == 1


async def test_kv_ring_ignores_suspicion_and_drops_the_dead(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        before = one.view
        fake.states["node-3"] = MemberState.SUSPECT
        fake.event("node-3")
        await trio.sleep(0.1)
        assert one.view is before  # a suspicion does not reshuffle data
        fake.states["node-3"] = MemberState.DEAD
        fake.event("node-3")
        await settle_rings(fake)
        assert one.view is not None
        assert one.view.ring.members == ("node-1", "node-2")
        assert one.view.ring.fingerprint == fake.nodes["node-2"].view.ring.fingerprint  # type: ignore[union-attr]


def test_kv_wire_limits_are_the_stores() -> None:
    # kvmessages.py Rule 2: a record that decodes is one a replica can store.
    assert kvm.MAX_KEY_BYTES == store_module.MAX_KEY_BYTES
    assert kvm.MAX_VALUE_BYTES == store_module.MAX_VALUE_BYTES
    assert kvm.MAX_WRITER_BYTES == store_module.MAX_WRITER_BYTES


async def test_kv_concurrent_writes_to_a_replica_are_coalesced(tmp_path: Path) -> None:
    async with mesh(tmp_path, 3) as (fake, _, _):
        one = fake.nodes["node-1"]
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one.put, "default", b"c%03d" % i, b"v")
        assert one.counters["kv_writes_coalesced"] > 0
        calls = sum(1 for caller, _ in fake.calls if caller == "node-1")
        assert calls < 2 * 200  # fewer messages than writes x remote replicas
        for service in fake.nodes.values():
            await wait_for(lambda s=service: s._background == 0)
            stats = await service.store.stats()
            assert stats.keys == 200


async def test_kv_a_failed_coalesced_message_fails_each_of_its_writes(tmp_path: Path) -> None:
    config = attrs.evolve(CONFIG, hinted_handoff=False)
    async with mesh(tmp_path, 3, config=config) as (fake, _, _):
        one = fake.nodes["node-1"]
        fake.unreachable.update({"node-2", "node-3"})
        errors: list[str] = []

        async def put(i: int) -> None:
            try:
                await one.put("default", b"f%02d" % i, b"v", timeout=0.3)
            except KvUnavailable as e:
                errors.append(str(e))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(put, i)
        assert len(errors) == 20
        assert all("quorum needs 2 of 3 replicas, 1 answered" in e for e in errors)
        assert all("node-2: timeout" in e and "node-3: timeout" in e for e in errors)


async def test_kv_tombstones_are_collected_after_the_grace_period(tmp_path: Path) -> None:
    config = attrs.evolve(CONFIG, hint_window=0.01, tombstone_grace=0.05)
    tuning = attrs.evolve(FAST, gc_interval=0.05)
    async with mesh(tmp_path, 1, config=config, tuning=tuning) as (fake, _, _):
        service = fake.nodes["node-1"]
        await service.put("default", b"gone", b"v")
        await service.delete("default", b"gone")
        assert (await service.store.stats()).tombstones == 1

        async def collected() -> bool:
            return (await service.store.stats()).tombstones == 0

        await wait_for(collected)
        assert service.counters["kv_tombstones_collected"] == 1
        assert await service.store.get("default", b"gone") is None
