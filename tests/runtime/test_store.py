"""Tests for meshd.runtime.store: LWW storage, tombstones, hints, partitions, Merkle, crashes.

Every test opens real SQLite files in ``tmp_path`` through the store's worker
thread. The crash test runs ``store_crash_child.py`` in a subprocess, SIGKILLs
it after a random number of acknowledged batches (waiting on its output, never
sleeping), and checks the reopened database.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import merkle
from meshd.core.hlc import Timestamp
from meshd.core.ring import Ring
from meshd.core.versioned import Record, placement_key, resolve
from meshd.runtime import store as store_module
from meshd.runtime.store import (
    DB_FILE_NAME,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Hint,
    NamespaceStats,
    Store,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    StoreSchemaError,
    check_record,
    move_aside,
    open_store,
    split_placement_key,
)

from . import store_crash_child as child

NS = "ops"


def rec(key: bytes, value: bytes | None, wall: int, writer: str = "n1", ns: str = NS) -> Record:
    return Record(ns, key, value, Timestamp.of(1_000 + wall), writer)


async def contents(store: Store, namespace: str = NS) -> dict[bytes, Record]:
    return {r.key: r for r in await store.scan(namespace, limit=10_000, tombstones=True)}


# ---------------------------------------------------------------------------
# Last writer wins


async def test_store_apply_keeps_newer_only(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        assert await store.apply([rec(b"k", b"v2", 2)]) == [True]
        assert await store.apply([rec(b"k", b"v1", 1), rec(b"k", b"v3", 3)]) == [False, True]
        assert await store.apply([rec(b"k", b"v3", 3)]) == [False]  # duplicate delivery
        # Same timestamp: the writer id breaks the tie.
        assert await store.apply([rec(b"k", b"a", 3, writer="n0")]) == [False]
        assert await store.apply([rec(b"k", b"b", 3, writer="n2")]) == [True]
        assert await store.get(NS, b"k") == rec(b"k", b"b", 3, writer="n2")
        assert await store.get(NS, b"missing") is None
        assert await store.apply([]) == []


async def test_store_apply_same_version_is_ordered_like_versioned(tmp_path: Path) -> None:
    # versioned.py Rule 3: at one version a tombstone beats a value, then larger bytes win.
    async with open_store(tmp_path) as store:
        assert await store.apply([rec(b"k", b"a", 1)]) == [True]
        assert await store.apply([rec(b"k", b"b", 1)]) == [True]
        assert await store.apply([rec(b"k", b"a", 1)]) == [False]
        assert await store.apply([rec(b"k", None, 1)]) == [True]
        assert await store.apply([rec(b"k", b"z", 1)]) == [False]
        assert await store.get(NS, b"k") == rec(b"k", None, 1)


_record_specs = st.lists(
    st.tuples(
        st.sampled_from([b"a", b"b", b"c"]),
        st.sampled_from([None, b"", b"x", b"y"]),
        st.integers(0, 3),
        st.sampled_from(["n1", "n2"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(specs=_record_specs, data=st.data())
async def test_store_lww_regardless_of_arrival_order(
    specs: list[tuple[bytes, bytes | None, int, str]], data: st.DataObject
) -> None:
    records = [rec(k, v, wall, writer) for k, v, wall, writer in specs]
    shuffled = data.draw(st.permutations(records))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=4)))
    with tempfile.TemporaryDirectory() as a_dir, tempfile.TemporaryDirectory() as b_dir:
        async with open_store(Path(a_dir)) as a, open_store(Path(b_dir)) as b:
            for r in records:  # one at a time, in order
                await a.apply([r])
            for start, end in zip([0, *cuts], [*cuts, len(records)], strict=True):
                await b.apply(shuffled[start:end])  # permuted, in batches
            for key in {r.key for r in records}:
                expected = resolve(r for r in records if r.key == key)
                assert await a.get(NS, key) == expected
                assert await b.get(NS, key) == expected
            assert await a.merkle_root() == await b.merkle_root()
            assert (await a.stats()).namespaces == (await b.stats()).namespaces


async def test_store_apply_is_atomic_and_validated(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        good = rec(b"good", b"v", 1)
        bad_batches: list[tuple[Record, type[Exception]]] = [
            (rec(b"", b"v", 1), ValueError),
            (rec(b"k" * (MAX_KEY_BYTES + 1), b"v", 1), ValueError),
            (rec(b"k", b"v" * (MAX_VALUE_BYTES + 1), 1), ValueError),
            (rec(b"k", b"v", 1, writer=""), ValueError),
            (rec(b"k", b"v", 1, writer="\ud800"), ValueError),
            (Record(NS, bytearray(b"k"), b"v", Timestamp(1), "n1"), TypeError),  # type: ignore[arg-type]
            (Record(NS, b"k", "text", Timestamp(1), "n1"), TypeError),  # type: ignore[arg-type]
            (Record(NS, b"k", b"v", 5, "n1"), TypeError),  # type: ignore[arg-type]
        ]
        for bad, error in bad_batches:
            with pytest.raises(error):
                check_record(bad)
            with pytest.raises(error):
                await store.apply([good, bad])
        assert await store.get(NS, b"good") is None  # nothing of a refused batch is stored
        # The limits themselves are fine.
        edge = rec(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES, 1)
        assert await store.apply([edge]) == [True]
        assert await store.get(NS, edge.key) == edge
        with pytest.raises(ValueError, match="namespace"):
            await store.get("", b"k")
        with pytest.raises(ValueError, match="key"):
            await store.get(NS, b"")


async def test_store_concurrent_applies_share_commits_and_fail_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = store_module._Db.apply
    calls: list[int] = []

    def apply(db: store_module._Db, records: Sequence[Record], now_ms: int) -> list[bool]:
        calls.append(len(records))
        if any(r.key == b"boom" for r in records):
            raise sqlite3.OperationalError("injected failure")
        return real_apply(db, records, now_ms)

    monkeypatch.setattr(store_module._Db, "apply", apply)
    results: dict[int, list[bool] | Exception] = {}
    async with open_store(tmp_path) as store:

        async def one(i: int) -> None:
            batch = [rec(b"k%d" % i, b"v", 1), rec(b"shared", b"%d" % i, i)]
            if i == 17:
                batch.append(rec(b"boom", b"v", 1))
            try:
                results[i] = await store.apply(batch)
            except StoreError as e:
                results[i] = e

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert isinstance(results.pop(17), StoreError)
        assert len(results) == 39
        assert all(isinstance(r, list) and r[0] is True for r in results.values())
        assert await store.get(NS, b"k17") is None  # the failed call left nothing
        assert await store.get(NS, b"shared") == rec(b"shared", b"39", 39)
        assert (await store.stats()).namespaces[NS].keys == 40
        assert await store.integrity_check() == ["ok"]
    # Some calls were committed together (and re-run alone after the failure).
    assert len(calls) > 40


async def test_store_damage_found_while_running_fails_every_later_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = store_module._Db.apply

    def apply(db: store_module._Db, records: Sequence[Record], now_ms: int) -> list[bool]:
        if any(r.key == b"rot" for r in records):
            error = sqlite3.DatabaseError("database disk image is malformed")
            error.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
            raise error
        return real_apply(db, records, now_ms)

    monkeypatch.setattr(store_module._Db, "apply", apply)
    outcomes: list[object] = []
    async with open_store(tmp_path) as store:

        async def one(i: int) -> None:
            try:
                outcomes.append(await store.apply([rec(b"rot" if i == 5 else b"k%d" % i, b"v", 1)]))
            except StoreCorrupt as e:
                outcomes.append(e)

        with trio.fail_after(10):  # no caller is left waiting
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
        assert len(outcomes) == 20
        assert any(isinstance(o, StoreCorrupt) for o in outcomes)
        with pytest.raises(StoreCorrupt, match="move the file aside"):
            await store.get(NS, b"k1")
        with pytest.raises(StoreCorrupt):
            await store.apply([rec(b"k", b"v", 2)])


# ---------------------------------------------------------------------------
# Tombstones


async def test_store_tombstone_beats_older_value_and_is_collected_after_grace(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path) as store:
        await store.apply([rec(b"k", b"v", 1), rec(b"keep", b"v", 0)])
        assert await store.apply([rec(b"k", None, 5)]) == [True]
        # An older value arriving late (hint, repair, anti-entropy) loses.
        assert await store.apply([rec(b"k", b"old", 3)]) == [False]
        assert await store.get(NS, b"k") == rec(b"k", None, 5)
        assert [r.key for r in await store.scan(NS)] == [b"keep"]
        stats = (await store.stats()).namespaces[NS]
        assert stats == NamespaceStats(keys=1, tombstones=1, bytes=len(b"keep") + 1 + len(b"k"))
        root = await store.merkle_root()

        deleted_at = 1_000 + 5  # wall ms of the tombstone
        grace = 100
        assert await store.collect_tombstones(deleted_at + grace - 1, grace) == 0
        assert await store.get(NS, b"k") is not None
        assert await store.collect_tombstones(deleted_at + grace, grace) == 1
        assert await store.get(NS, b"k") is None
        assert await store.get(NS, b"keep") is not None  # values are never collected
        assert (await store.stats()).namespaces[NS] == NamespaceStats(1, 0, 5)
        assert await store.merkle_root() != root
        assert await store.collect_tombstones(10**9, grace) == 0


async def test_store_collect_tombstones_in_bounded_steps(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        await store.apply([rec(b"t%d" % i, None, i) for i in range(25)])
        assert await store.collect_tombstones(10**6, 0, limit=10) == 10
        assert await store.collect_tombstones(10**6, 0, limit=10) == 10
        assert await store.collect_tombstones(10**6, 0, limit=10) == 5
        assert (await store.stats()).namespaces == {}
        assert await store.merkle_root() == merkle.EMPTY


# ---------------------------------------------------------------------------
# Hints


async def test_store_hint_lifecycle(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        v1, v2 = rec(b"k", b"1", 1), rec(b"k", b"2", 2)
        assert await store.add_hint("n2", v1, now_ms=10)
        assert await store.add_hint("n2", rec(b"other", None, 1), now_ms=11)
        assert await store.add_hint("n3", v1, now_ms=12)
        assert await store.hint_count() == 3
        assert await store.hint_targets() == {"n2": 2, "n3": 1}
        (first, second) = await store.hints_for("n2")
        assert first == Hint(first.id, "n2", v1, 10)
        assert second.record.key == b"other"
        assert [h.id for h in await store.hints_for("n2", limit=1)] == [first.id]

        # A newer write replaces the held hint under a new id; older ones are refused.
        assert await store.add_hint("n2", v2, now_ms=13)
        assert not await store.add_hint("n2", v1, now_ms=14)
        assert await store.hint_count("n2") == 2
        # Dropping the id of the replaced hint (a delivery of v1 that was in
        # flight) must not drop v2.
        assert await store.drop_hints([first.id]) == 0
        replaced = next(h for h in await store.hints_for("n2") if h.record.key == b"k")
        assert replaced.record == v2
        assert replaced.id > second.id

        # Delivered: drop them.
        assert await store.drop_hints([h.id for h in await store.hints_for("n2")]) == 2
        assert await store.hints_for("n2") == []
        assert await store.hint_targets() == {"n3": 1}
        assert (await store.stats()).hints == 1
        assert await store.drop_hints([]) == 0


async def test_store_hints_expire_after_the_window(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        # a: created at 1_200 ms for a write at wall 1_500; b: created at
        # 5_000 for an old write at wall 1_000. The window counts from the
        # earlier of the two.
        await store.add_hint("n2", rec(b"a", b"v", 500), now_ms=1_200)
        await store.add_hint("n2", rec(b"b", b"v", 0), now_ms=5_000)
        await store.add_hint("n2", rec(b"c", b"v", 5_000), now_ms=6_000)
        window = 2_000
        assert await store.expire_hints(2_999, window) == 0
        assert await store.expire_hints(3_000, window) == 1  # b: by its write's age
        assert await store.expire_hints(3_199, window) == 0
        assert await store.expire_hints(3_200, window) == 1  # a: by its creation
        assert await store.expire_hints(7_999, window) == 0
        assert [h.record.key for h in await store.hints_for("n2")] == [b"c"]
        assert await store.expire_hints(8_000, window) == 1
        assert await store.hint_count() == 0


# ---------------------------------------------------------------------------
# Partitions and Merkle trees


def _spread(n: int, ns: str = NS) -> list[Record]:
    return [rec(b"key-%d" % i, b"value-%d" % i, i % 7, ns=ns) for i in range(n)]


async def test_store_partition_queries(tmp_path: Path) -> None:
    ring = Ring.build(["a", "b", "c"])
    records = [*_spread(300), *_spread(50, ns="plugin")]
    by_partition: dict[int, list[Record]] = {}
    for r in records:
        by_partition.setdefault(ring.partition_of(r.placement_key), []).append(r)
    busiest = max(by_partition, key=lambda p: len(by_partition[p]))
    async with open_store(tmp_path) as store:
        await store.apply(records)
        for p, expected in by_partition.items():
            got = await store.partition_records(p)
            assert got == sorted(expected, key=lambda r: (r.namespace, r.key))
            entries = await store.merkle_entries(p)
            assert entries == {r.placement_key: r.digest() for r in expected}
            assert sorted(await store.records_for(entries), key=lambda r: r.key) == sorted(
                expected, key=lambda r: r.key
            )
        empty = next(p for p in ring.partitions() if p not in by_partition)
        assert await store.partition_records(empty) == []
        asked = [busiest, empty, *list(by_partition)[:20]]
        assert await store.keys_in_partitions(asked) == {
            p: len(by_partition[p]) for p in asked if p in by_partition
        }
        # Handoff done: drop a partition.
        before = await store.stats()
        dropped = by_partition[busiest]
        assert await store.delete_partition(busiest) == len(dropped)
        assert await store.partition_records(busiest) == []
        assert await store.merkle_entries(busiest) == {}
        after = await store.stats()
        assert after.keys == before.keys - len(dropped)
        assert after.bytes == before.bytes - sum(len(r.key) + len(r.value or b"") for r in dropped)
        assert await store.delete_partition(busiest) == 0
        with pytest.raises(ValueError, match="partition"):
            await store.partition_records(1 << 16)


async def test_store_merkle_roots_equal_for_equal_contents(tmp_path: Path) -> None:
    records = _spread(400)
    deletes = [rec(b"key-%d" % i, None, 10) for i in range(0, 400, 9)]
    shuffled = list(records + deletes)
    random.Random(5).shuffle(shuffled)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        open_store(tmp_path / "a") as a,
        open_store(tmp_path / "b") as b,
    ):
        await a.apply(records)
        await a.apply(deletes)
        for start in range(0, len(shuffled), 37):
            await b.apply(shuffled[start : start + 37])
        assert await a.merkle_root() == await b.merkle_root() != merkle.EMPTY
        tree = merkle.MerkleTree.build((r.placement_key, r.digest()) for r in records + deletes)
        assert await a.merkle_root() == tree.root

        # One divergent write: the roots differ, and the diff names its partition.
        divergent = rec(b"key-1", b"changed", 20)
        await b.apply([divergent])
        assert await a.merkle_root() != await b.merkle_root()
        found = merkle.diff(await a.merkle_snapshot(), await b.merkle_snapshot())
        partition = Ring.build(["a"]).partition_of(divergent.placement_key)
        assert found.buckets == (partition,)
        assert merkle.compare_entries(
            await a.merkle_entries(partition), await b.merkle_entries(partition)
        ) == (divergent.placement_key,)
        # Restricted to the other partitions, the replicas agree.
        others = [p for p in range(1 << 16) if p != partition]
        assert (await a.merkle_snapshot(others)).root == (await b.merkle_snapshot(others)).root
        # Repair: a takes the newer record, and the trees agree again.
        await a.apply(await b.records_for([divergent.placement_key]))
        assert await a.merkle_root() == await b.merkle_root()


def test_split_placement_key_inverts_placement_key() -> None:
    for ns, key in [("ops", b"k"), ("é" * 127, b"\x00\xff"), ("x", b"")]:
        assert split_placement_key(placement_key(ns, key)) == (ns, key)
    with pytest.raises(ValueError, match="placement key"):
        split_placement_key(b"\x05ab")


async def test_store_scan_by_prefix_and_pages(tmp_path: Path) -> None:
    keys = [b"a", b"ab", b"ab\xff", b"ab\xff\x00", b"ac", b"b", b"\xff", b"\xff\xff"]
    async with open_store(tmp_path) as store:
        await store.apply([rec(k, b"v", 1) for k in keys])
        await store.apply([rec(b"ab", None, 2), rec(b"zz", b"v", 1, ns="other")])
        assert [r.key for r in await store.scan(NS, b"ab")] == [b"ab\xff", b"ab\xff\x00"]
        assert (await store.scan(NS, b"ab", tombstones=True))[0].key == b"ab"
        assert [r.key for r in await store.scan(NS, b"ab\xff")] == [b"ab\xff", b"ab\xff\x00"]
        assert [r.key for r in await store.scan(NS, b"\xff")] == [b"\xff", b"\xff\xff"]
        live = [k for k in keys if k != b"ab"]
        pages, after = [], None
        while page := await store.scan(NS, limit=3, after=after):
            pages.append([r.key for r in page])
            after = page[-1].key
        assert [k for page in pages for k in page] == live
        assert [len(p) for p in pages] == [3, 3, 1]
        with pytest.raises(ValueError, match="limit"):
            await store.scan(NS, limit=0)


# ---------------------------------------------------------------------------
# Files: persistence, schema, damage, locking


async def test_store_persists_across_reopen(tmp_path: Path) -> None:
    records = [*_spread(200), rec(b"gone", None, 3), *_spread(10, ns="plugin")]
    async with open_store(tmp_path) as store:
        await store.apply(records)
        await store.add_hint("n9", records[0], now_ms=77)
        root, stats = await store.merkle_root(), await store.stats()
        before = await contents(store)
    assert os.listdir(tmp_path) == [DB_FILE_NAME]  # WAL checkpointed
    assert os.stat(tmp_path / DB_FILE_NAME).st_mode & 0o777 == 0o600
    async with open_store(tmp_path) as store:
        assert await contents(store) == before
        assert await store.merkle_root() == root
        assert (await store.stats()).namespaces == stats.namespaces
        assert [(h.target, h.record, h.created_at) for h in await store.hints_for("n9")] == [
            ("n9", records[0], 77)
        ]
        assert await store.integrity_check() == ["ok"]


async def test_store_refuses_unknown_schema_version(tmp_path: Path) -> None:
    async with open_store(tmp_path):
        pass
    path = tmp_path / DB_FILE_NAME
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreSchemaError, match=r"schema version 99.*newer") as info:
        await Store.open(path)
    assert str(path) in str(info.value)


async def test_store_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE_NAME
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreSchemaError, match="not a meshd store"):
        await Store.open(path)


@pytest.mark.parametrize("damage", ["header", "interior"])
async def test_store_corrupt_file_is_a_clear_error_not_a_crash_loop(
    tmp_path: Path, damage: str
) -> None:
    async with open_store(tmp_path) as store:
        await store.apply([rec(b"key-%d" % i, os.urandom(900), 1) for i in range(200)])
    path = tmp_path / DB_FILE_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    if damage == "header":
        data[:100] = b"\xaa" * 100
    else:
        for start in range(5 * page, len(data), 7 * page):
            data[start : start + page] = b"\xaa" * page
    path.write_bytes(bytes(data))
    for _ in range(3):  # the same clear error every time, no thread left behind
        with pytest.raises(StoreCorrupt) as info:
            await Store.open(path)
        assert str(path) in str(info.value)
        assert "move the file aside" in str(info.value)
        assert info.value.path == path
        assert not [t for t in threading.enumerate() if t.name.startswith("meshd-store")]
    moved = move_aside(path)
    assert moved.exists()
    assert not path.exists()
    async with open_store(tmp_path) as store:
        assert (await store.stats()).keys == 0


async def test_store_refuses_a_second_opener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_LOCK_TIMEOUT", 0.05)
    async with open_store(tmp_path) as store:
        await store.apply([rec(b"k", b"v", 1)])
        with pytest.raises(StoreLocked, match="another meshd"):
            await Store.open(tmp_path / DB_FILE_NAME)
        assert await store.get(NS, b"k") is not None  # the first one is unaffected


async def test_store_closed_refuses_calls(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / DB_FILE_NAME)
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreClosed):
        await store.get(NS, b"k")


async def test_store_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing"):
        await Store.open(tmp_path / "missing" / DB_FILE_NAME)


# ---------------------------------------------------------------------------
# Crash: SIGKILL at random moments never loses an acknowledged write


CHILD = Path(child.__file__)


async def _run_until_killed(path: Path, first: int, acks_wanted: int) -> set[int]:
    """Start the child, wait for ``acks_wanted`` acks, SIGKILL it; every ack it printed."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), str(path), str(first)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(20):
            while buffer.count(b"ack ") < acks_wanted:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"child exited early ({await proc.wait()}): {buffer[-500:]!r}"
                buffer += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        # Acks printed between our last read and the kill count too.
        while chunk := await proc.stdout.receive_some():
            buffer += chunk
        await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    lines = buffer.decode().splitlines()
    if lines and not buffer.endswith(b"\n"):
        lines.pop()  # a line cut by the kill was never a complete ack
    return {int(line.split()[1]) for line in lines if line.startswith("ack ")}


async def _check_acknowledged(path: Path, acked: set[int]) -> None:
    # A fresh plain connection, like any tool: the file is consistent.
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    async with open_store(path.parent) as store:
        for b in acked:
            for i in range(child.UNIQUE):
                got = await store.get(child.NAMESPACE, child.unique_key(b, i))
                assert got is not None, f"acknowledged batch {b} lost key {i}"
                if i == 0 and b + child.DELETE_LAG in acked:
                    assert got.is_tombstone
                elif not got.is_tombstone:
                    assert got.value == child.unique_value(b, i)
                    assert got.timestamp == Timestamp.of(child.BASE + b, i)
                else:  # deleted by a later batch that committed without its ack
                    assert i == 0
                    assert got.timestamp == Timestamp.of(child.BASE + b + child.DELETE_LAG, 60)
        for hot in range(child.HOT):
            writers = [b for b in acked if b % child.HOT == hot]
            if writers:
                got = await store.get(child.NAMESPACE, child.hot_key(hot))
                assert got is not None
                assert got.value is not None
                assert int(got.value) >= max(writers)
                assert got.timestamp == Timestamp.of(child.BASE + int(got.value), 50)
        assert await store.integrity_check() == ["ok"]


@pytest.mark.parametrize("seed", [20250605])
async def test_store_sigkill_never_loses_an_acknowledged_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / DB_FILE_NAME
    acked: set[int] = set()
    first = 0
    for kill in range(5):
        got = await _run_until_killed(path, first, rng.randint(5, 150))
        assert got, f"seed {seed}, kill {kill}: no acks"
        acked |= got
        await _check_acknowledged(path, acked)
        first = max(acked) + 1 + child.WRITERS  # past any batch still in flight
    assert len(acked) >= 25


async def test_store_repartitions_when_the_partition_bits_change(tmp_path: Path) -> None:
    records = _spread(100)
    async with open_store(tmp_path, partition_bits=8) as store:
        await store.apply(records)
        root8 = await store.merkle_root()
    async with open_store(tmp_path) as store:
        ring = Ring.build(["a"])
        some = records[0]
        p = ring.partition_of(some.placement_key)
        assert some in await store.partition_records(p)
        total = await store.keys_in_partitions(range(1 << 16))
        assert sum(total.values()) == len(records)
        assert await store.merkle_root() != root8  # a depth-16 tree now
