"""Crash-test child for tests/runtime/test_store.py: write batches until killed.

    python store_crash_child.py DB_PATH FIRST_BATCH

Opens the store at DB_PATH and runs WRITERS concurrent tasks that each take
the next batch id, apply that batch, and only then print ``ack <id>`` (one
line, flushed). A printed id is an acknowledged write: the parent SIGKILLs
this process at some moment and then checks that every acknowledged batch is
in the database. The batch contents are a pure function of the id
(:func:`batch`), so the parent can recompute what must be there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from meshd.core.hlc import Timestamp
from meshd.core.versioned import Record
from meshd.runtime.store import open_store

#: Concurrent writer tasks (their applies share commits: group commit).
WRITERS = 4
#: Records with a key of their own per batch.
UNIQUE = 6
#: Hot keys, overwritten by every batch in turn (the latest ack must win).
HOT = 5
#: Wall-clock base of the timestamps: batch b writes at wall ms BASE + b.
BASE = 1_000_000
NAMESPACE = "crash"
WRITER = "node-crash"
#: A batch deletes the first unique key of the batch this many before it.
DELETE_LAG = 3


def unique_key(b: int, i: int) -> bytes:
    return b"b%06d-%d" % (b, i)


def unique_value(b: int, i: int) -> bytes:
    # 1-7 KiB: enough WAL traffic that kills also land in checkpoints.
    return (b"%d:%d|" % (b, i)) * (100 + (b * 7 + i * 13) % 600)


def hot_key(b: int) -> bytes:
    return b"hot-%d" % (b % HOT)


def batch(b: int) -> list[Record]:
    """The records batch ``b`` writes: UNIQUE new keys, one hot key, one delete."""
    records = [
        Record(NAMESPACE, unique_key(b, i), unique_value(b, i), Timestamp.of(BASE + b, i), WRITER)
        for i in range(UNIQUE)
    ]
    records.append(Record(NAMESPACE, hot_key(b), b"%d" % b, Timestamp.of(BASE + b, 50), WRITER))
    if b >= DELETE_LAG:
        records.append(
            Record.tombstone(
                NAMESPACE, unique_key(b - DELETE_LAG, 0), Timestamp.of(BASE + b, 60), WRITER
            )
        )
    return records


async def main(path: Path, first: int) -> None:
    next_id = first
    out = sys.stdout.buffer

    async def writer() -> None:
        nonlocal next_id
        while next_id < first + 100_000:  # stop eventually if the parent vanished
            b = next_id
            next_id += 1
            await store.apply(batch(b))
            out.write(b"ack %d\n" % b)
            out.flush()

    async with open_store(path.parent) as store:
        assert store.path == path
        out.write(b"ready\n")
        out.flush()
        async with trio.open_nursery() as nursery:
            for _ in range(WRITERS):
                nursery.start_soon(writer)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
