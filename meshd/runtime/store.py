"""Replica storage of the KV store: SQLite in WAL mode, one worker thread, an async API.

Strategy
--------

Each node keeps the records it replicates in ``kv.sqlite3`` in its state
directory: one row per (namespace, key), holding the value (NULL for a
tombstone), the HLC timestamp and writer id of the write (``core/versioned``),
the key's ring partition and when this replica stored it. A second table
holds hints for hinted handoff. The schema version lives in
``PRAGMA user_version``.

Rule 1: one thread owns the database. SQLite runs on a dedicated worker
        thread fed by a queue; the trio side submits jobs and awaits an event
        the worker sets through the trio token (``run_sync_soon``), so the
        event loop never blocks on disk. One long-lived thread, rather than
        ``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)``, because the
        connection then never changes threads (sqlite3's same-thread check
        stays on and proves it), the in-memory Merkle tree and counters have
        one owner and need no lock, and the worker can see several queued
        writes at once and commit them together (Rule 3).
Rule 2: a write is stored only if it wins last-writer-wins against what is
        there (``versioned.newer``), so replicas converge whatever order hints,
        read repair, anti-entropy and handoff deliver records in. A call to
        :meth:`Store.apply` is atomic: one transaction, all or nothing.
Rule 3: group commit. Writes queued while a transaction runs are applied in
        the next one, up to ``GROUP_COMMIT_MAX_JOBS`` calls per commit, so
        concurrent callers share one fsync. Each call keeps its own outcome:
        if the shared transaction fails, it is rolled back and every call is
        retried alone, so one failing call never fails its neighbours.
Rule 4: memory follows the disk. The Merkle tree and the per-namespace
        counters change only after COMMIT returns, from the same thread, so
        they always describe exactly what is committed; at open they are
        rebuilt from the table (the digests are recomputed from the stored
        values, which is what lets anti-entropy find a replica whose bytes
        rotted under the right version).
Rule 5: bad input never reaches the file. Every record is checked (types,
        sizes: :func:`check_record`) on the caller's side before it is queued.
        A database that cannot be read raises :class:`StoreCorrupt`, naming the
        file and what to do, and the store then refuses every call (h11's
        ERROR state) instead of writing on top of damage.

Durability (``synchronous``)
----------------------------

The KV acknowledges a write once the replica's ``apply`` returns, so at that
point the write must survive the process dying. In WAL mode a commit appends
frames to ``kv.sqlite3-wal`` and sets a commit marker; readers and recovery
use only frames up to the last valid commit marker (each frame carries a
checksum over the log), so a process killed at any instant leaves either the
whole transaction or none of it, and the database stays consistent with
either ``synchronous`` setting.

* ``NORMAL``: COMMIT returns once the frames are ``write()``-n to the kernel.
  That survives SIGKILL (the page cache belongs to the kernel, not the
  process), but a power loss or kernel panic can lose the transactions since
  the last checkpoint's fsync, acknowledged ones included.
* ``FULL`` (the default here): COMMIT also fsyncs the WAL. An acknowledged
  write then survives power loss as well, provided the disk honours flushes
  (write cache with power-loss protection, or barriers on). On this machine
  the fsync costs about 150 us per commit: raw one-row transactions run at
  6,000/s against 48,000/s with NORMAL, and one-record ``apply`` calls at
  3,100/s against 6,600/s awaited one after another, but 15,900/s against
  20,900/s from 16 concurrent tasks, because group commit (Rule 3) shares
  the fsync. So we pay it: an acknowledgement is a promise to a client, and
  a correlated power cut (one rack) must not take back quorum writes from
  every replica at once.

Memory and open time
--------------------

The Merkle tree holds, per stored key (tombstones included), the placement
key (``1 + len(namespace) + len(key)`` bytes, in a bytes object with ~33
bytes of header) and its 16-byte digest (a 49-byte bytes object), in a dict
per bucket. Measured with 20-byte keys in a 3-byte namespace: 192 bytes per
key at 1 M keys (227 at 200 k, where the 2**16 small dicts weigh more), so
about 170 bytes plus the key length: ~2 GB for 10 M keys. Fixed part: 1.6 MB
for the leaves and inner levels of the 2**16-bucket tree.

Opening reads every row once to rebuild the tree (recomputing each digest)
and the counters: about 6 us per key here (300 k keys of 100 bytes, a 58 MB
file: 1.8 s, of which ``quick_check`` 0.1 s), so ~1 minute at 10 M keys.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Generic, Literal, TypeVar, final

import attrs
import trio

from meshd.core.hlc import Timestamp
from meshd.core.merkle import MerkleSnapshot, MerkleTree
from meshd.core.ring import DEFAULT_PARTITION_BITS, HASH_BITS, key_hash
from meshd.core.versioned import MAX_NAMESPACE_BYTES, Record, newer, placement_key
from meshd.errors import MeshError

__all__ = [
    "DB_FILE_NAME",
    "GROUP_COMMIT_MAX_JOBS",
    "MAX_KEY_BYTES",
    "MAX_SCAN_LIMIT",
    "MAX_VALUE_BYTES",
    "MAX_WRITER_BYTES",
    "SCHEMA_VERSION",
    "Hint",
    "NamespaceStats",
    "Store",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "StoreSchemaError",
    "StoreStats",
    "check_record",
    "move_aside",
    "open_store",
    "split_placement_key",
]

log = logging.getLogger("meshd.store")

#: The database file's name inside the state directory.
DB_FILE_NAME = "kv.sqlite3"
#: ``PRAGMA user_version`` of the schema this module writes. Bump it (and
#: add a migration in ``_Db._migrate``) on any schema change.
SCHEMA_VERSION = 1

#: Largest key, in bytes. Keys are copied into the in-memory Merkle tree
#: (see Memory above), hashed on every lookup and printed by ``meshctl``;
#: 1 KiB is generous for names and paths (etcd's whole request limit is
#: 1.5 MiB, Consul's KV keys are paths) while keeping the tree's worst case
#: bounded. Keys are 1..MAX_KEY_BYTES bytes.
MAX_KEY_BYTES = 1024
#: Largest value, in bytes: 1 MiB. A record travels in one stream frame and
#: sits in one transaction; bigger blobs belong in a blob store with their
#: address here (Consul caps KV values at 512 KiB, etcd requests at 1.5 MiB).
MAX_VALUE_BYTES = 1 << 20
#: Largest writer (coordinator node id), in bytes of UTF-8.
MAX_WRITER_BYTES = 255
#: Most records one :meth:`Store.scan` returns; page with ``after``.
MAX_SCAN_LIMIT = 10_000
#: Most queued write calls committed in one transaction (Rule 3). Bounds the
#: latency one large group adds to the calls behind it.
GROUP_COMMIT_MAX_JOBS = 128

#: How long opening waits for a lock held by another process, in seconds.
_LOCK_TIMEOUT = 2.0
#: The WAL is truncated back to this size after a checkpoint (bytes).
_JOURNAL_SIZE_LIMIT = 64 << 20
#: Page cache of the connection: negative = KiB (8 MiB).
_CACHE_SIZE = -8192
#: Bound on SQL variables per statement (SQLite's default limit is 32766).
_IN_CHUNK = 500

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE records (
    namespace TEXT NOT NULL,
    key       BLOB NOT NULL,
    value     BLOB,              -- NULL: a tombstone (a delete)
    ts        INTEGER NOT NULL,  -- HLC timestamp, packed (core/hlc.py)
    writer    TEXT NOT NULL,     -- node id of the coordinator that stamped it
    partition INTEGER NOT NULL,  -- ring partition of placement_key(namespace, key)
    stored_at INTEGER NOT NULL,  -- this replica's wall clock when stored, ms
    PRIMARY KEY (namespace, key)
);
CREATE INDEX records_partition ON records (partition);
-- Only tombstones, ordered by age: what collect_tombstones walks.
CREATE INDEX records_tombstones ON records (ts) WHERE value IS NULL;

CREATE TABLE hints (
    -- AUTOINCREMENT: an id is never reused, so drop_hints(ids) after a
    -- delivery can never drop a newer hint that replaced a delivered one.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    target     TEXT NOT NULL,     -- node id of the replica the record is for
    namespace  TEXT NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB,
    ts         INTEGER NOT NULL,
    writer     TEXT NOT NULL,
    created_at INTEGER NOT NULL,  -- wall clock when the hint was stored, ms
    UNIQUE (target, namespace, key)
);
CREATE INDEX hints_target ON hints (target, id);
CREATE INDEX hints_created ON hints (created_at);

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# Errors


class StoreError(MeshError):
    """The replica store cannot do what was asked (I/O error, full disk, closed, ...)."""


class StoreCorrupt(StoreError):
    """The database file is damaged or not a meshd store; move it aside to start empty.

    Attributes:
        path: the database file.
    """

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"{path}: {detail}. The replica store is unreadable. Stop meshd, move the file "
            f"aside with its -wal and -shm companions (e.g. mv {path.name} {path.name}.bad), "
            "and start again: the node starts with an empty store, and anti-entropy and "
            "handoff copy its partitions back from the other replicas"
        )


class StoreLocked(StoreError):
    """Another process holds the database (a second meshd on the same state directory?)."""


class StoreSchemaError(StoreError):
    """The database was written by another meshd version, or by something else."""


class StoreClosed(StoreError):
    """The store was used after :meth:`Store.aclose`."""


# ---------------------------------------------------------------------------
# Values


@attrs.frozen
class Hint:
    """A write held for a replica that was down (hinted handoff).

    Attributes:
        id: the hint's id; pass it to :meth:`Store.drop_hints` once delivered.
            Ids are never reused.
        target: node id of the replica the record belongs to.
        record: the record to deliver.
        created_at: wall clock (ms since the epoch) when the hint was stored.
    """

    id: int
    target: str
    record: Record
    created_at: int


@attrs.frozen
class NamespaceStats:
    """What one namespace holds on this replica.

    Attributes:
        keys: live keys (values).
        tombstones: deleted keys not yet collected.
        bytes: key plus value bytes over both.
    """

    keys: int
    tombstones: int
    bytes: int


@attrs.frozen
class StoreStats:
    """A snapshot of the store's size, for ``meshctl ring`` (Load) and metrics.

    Attributes:
        namespaces: namespace -> its stats (namespaces with no rows are absent).
        hints: hints waiting for delivery.
        file_bytes: size of the database file plus its WAL on disk.
    """

    namespaces: Mapping[str, NamespaceStats]
    hints: int
    file_bytes: int

    @property
    def keys(self) -> int:
        """Live keys over all namespaces."""
        return sum(s.keys for s in self.namespaces.values())

    @property
    def tombstones(self) -> int:
        """Tombstones over all namespaces."""
        return sum(s.tombstones for s in self.namespaces.values())

    @property
    def bytes(self) -> int:
        """Key and value bytes over all namespaces."""
        return sum(s.bytes for s in self.namespaces.values())


# ---------------------------------------------------------------------------
# Validation (Rule 5)


def _check_text(what: str, value: object, limit: int) -> None:
    if type(value) is not str:
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    size = len(value.encode())  # UnicodeEncodeError (a ValueError) on lone surrogates
    if not 1 <= size <= limit:
        raise ValueError(f"{what} must be 1..{limit} bytes of UTF-8, got {size}")


def _check_key(key: object) -> None:
    if type(key) is not bytes:
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"key must be 1..{MAX_KEY_BYTES} bytes, got {len(key)}")


def check_record(record: Record) -> None:
    """Refuse a record the store would not keep (Rule 5).

    The coordinator and the codec can call this too, to refuse a request
    before it is forwarded.

    Raises:
        TypeError: a field of the wrong type (bytes and str must be exactly those types).
        ValueError: an empty or oversized namespace, key, value or writer id.
    """
    if type(record) is not Record:
        raise TypeError(f"expected a Record, got {type(record).__name__}")
    _check_text("namespace", record.namespace, MAX_NAMESPACE_BYTES)
    _check_key(record.key)
    value = record.value
    if value is not None:
        if type(value) is not bytes:
            raise TypeError(f"value must be bytes or None, got {type(value).__name__}")
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"value must be at most {MAX_VALUE_BYTES} bytes, got {len(value)}")
    if type(record.timestamp) is not Timestamp:
        raise TypeError(f"timestamp must be a Timestamp, got {type(record.timestamp).__name__}")
    _check_text("writer", record.writer, MAX_WRITER_BYTES)


def split_placement_key(pkey: bytes) -> tuple[str, bytes]:
    """Invert ``versioned.placement_key``: the (namespace, key) a Merkle entry names.

    Raises:
        ValueError: if ``pkey`` is not a placement key.
    """
    if not pkey or len(pkey) < 1 + pkey[0]:
        raise ValueError("not a placement key: too short")
    size = pkey[0]
    return pkey[1 : 1 + size].decode(), pkey[1 + size :]


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def _size(record: Record) -> int:
    """What a record counts for in the Load figures: its key and value bytes."""
    return len(record.key) + len(record.value or b"")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def move_aside(path: Path) -> Path:
    """Rename a damaged database and its -wal/-shm files out of the way.

    The daemon must not have the store open. The next open starts empty.

    Returns:
        The new name of the database file (``<name>.corrupt-<UTC time>``).
    """
    suffix = ".corrupt-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(path.name + suffix)
    for extra in ("-wal", "-shm", ""):
        source = path.with_name(path.name + extra)
        if source.exists():
            os.replace(source, path.with_name(path.name + suffix + extra))
    return target


# ---------------------------------------------------------------------------
# The worker side: everything below runs on the store's thread only.


class _Job(Generic[_T]):
    """One call into the worker and, once done, its result or error."""

    __slots__ = ("done", "error", "fn", "result", "token", "write")

    def __init__(self, fn: Callable[[_Db], _T], *, write: bool, token: trio.lowlevel.TrioToken):
        self.fn = fn
        self.write = write
        self.token = token
        self.done = trio.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None

    def finish(self, result: _T | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        try:
            self.token.run_sync_soon(self.done.set)
        except trio.RunFinishedError:
            pass  # nobody is left to wait


_STOP = object()

_SELECT_RECORD = "SELECT namespace, key, value, ts, writer FROM records"


class _Db:
    """The connection and the in-memory views of it (Rule 1: one owner, the worker)."""

    def __init__(self, path: Path, *, partition_bits: int, synchronous: str, check: bool):
        self.path = path
        self.partition_bits = partition_bits
        self.synchronous = synchronous
        self.check = check
        self._shift = HASH_BITS - partition_bits
        self._conn: sqlite3.Connection | None = None
        self.tree = MerkleTree(partition_bits)
        # namespace -> [keys, tombstones, bytes]
        self.counts: dict[str, list[int]] = {}
        self.failed: StoreError | None = None
        self.stopped = False
        self._effects: list[Callable[[], None]] = []

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "store not open"
        return self._conn

    # -------------------------------------------------------------- the loop

    def serve(self, jobs: queue.SimpleQueue[object]) -> None:
        """Run jobs until the stop sentinel; then close the connection."""
        carry: object = None
        try:
            while True:
                job = carry if carry is not None else jobs.get()
                carry = None
                if job is _STOP:
                    break
                assert isinstance(job, _Job)
                if not job.write:
                    self._run_read(job)
                    continue
                group: list[_Job[object]] = [job]
                while len(group) < GROUP_COMMIT_MAX_JOBS:
                    try:
                        more = jobs.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, _Job) and more.write:
                        group.append(more)
                    else:
                        carry = more  # a read or the stop: runs right after the group
                        break
                self._run_writes(group)
        finally:
            self.close()
            self.stopped = True
            # Only after a bug escaped the loop can calls still be queued:
            # fail them rather than leave their callers waiting forever.
            while True:
                try:
                    left = jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(left, _Job):
                    left.finish(error=StoreClosed(f"{self.path}: the store's thread stopped"))

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                # The last connection checkpoints the WAL into the database
                # and removes it, so a clean stop leaves one file.
                conn.close()
            except sqlite3.Error as e:
                log.warning("closing %s: %s", self.path, e)

    def _run_read(self, job: _Job[object]) -> None:
        if self.failed is not None:
            job.finish(error=self.failed)
            return
        try:
            result = job.fn(self)
        except Exception as e:
            job.finish(error=self.translate_any(e, "reading"))
        else:
            job.finish(result)

    def _run_writes(self, group: list[_Job[object]]) -> None:
        # Rule 3: one transaction for the group; Rule 4: effects after COMMIT.
        if self.failed is not None:
            for job in group:
                job.finish(error=self.failed)
            return
        results: list[tuple[object, list[Callable[[], None]]]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for job in group:
                self._effects = []
                results.append((job.fn(self), self._effects))
            self.conn.execute("COMMIT")
        except Exception as e:
            self._rollback()
            error = self.translate_any(e, "writing")
            if len(group) > 1 and self.failed is None:
                for job in group:
                    self._run_writes([job])
                return
            for job in group:
                job.finish(error=error)
            return
        finally:
            self._effects = []
        for job, (result, effects) in zip(group, results, strict=True):
            try:
                for effect in effects:
                    effect()
            except Exception as e:
                # A bug: memory no longer matches the disk (Rule 4). The data
                # is committed and safe; refuse service until a restart
                # rebuilds the tree from the table.
                log.exception("store %s: in-memory update failed", self.path)
                self.failed = StoreError(
                    f"{self.path}: internal error updating the Merkle tree ({e!r}); "
                    "restart meshd to rebuild it from the database"
                )
            job.finish(result)

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("rollback on %s failed: %s", self.path, e)

    def defer(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` once the current write job's transaction commits (Rule 4)."""
        self._effects.append(effect)

    def translate_any(self, e: Exception, doing: str) -> Exception:
        """What the caller sees for ``e``; damage found anywhere fails the store."""
        if isinstance(e, sqlite3.Error):
            return self.translate(e, doing)
        if isinstance(e, StoreCorrupt):
            self.failed = e
        return e

    def translate(self, e: sqlite3.Error, doing: str) -> StoreError:
        """A StoreError naming the file; damage and I/O errors also fail the store."""
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        error: StoreError
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            error = StoreCorrupt(self.path, f"{doing}: {e}")
            self.failed = error
        elif code == _SQLITE_IOERR:
            error = StoreError(f"{self.path}: I/O error while {doing}: {e}; check the disk")
            self.failed = error
        elif code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            error = StoreLocked(
                f"{self.path} is locked by another process: is another meshd running with "
                f"the same state directory? ({e})"
            )
        elif code == _SQLITE_FULL:
            error = StoreError(f"{self.path}: disk full while {doing}; free space ({e})")
        elif code in (_SQLITE_CANTOPEN, _SQLITE_PERM, _SQLITE_READONLY):
            error = StoreError(
                f"{self.path}: cannot open or write the database: {e} "
                "(check the state directory's owner and permissions)"
            )
        else:
            error = StoreError(f"{self.path}: {doing}: {e}")
        return error

    # -------------------------------------------------------------- open

    def open(self) -> None:
        """Open or create the database, check it, and build the Merkle tree and counters."""
        try:
            self._open()
        except sqlite3.Error as e:
            self.close()
            raise self.translate(e, "opening") from e
        except OSError as e:
            self.close()
            raise StoreError(f"{self.path}: cannot create the database: {e}") from e
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            # Private from the start (the WAL inherits the mode), and the
            # directory entry made durable.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._conn = conn = sqlite3.connect(
            path, timeout=_LOCK_TIMEOUT, isolation_level=None, check_same_thread=True
        )
        # EXCLUSIVE: the first transaction takes the file lock for good, so a
        # second process (another meshd on the same state directory, whose
        # Merkle tree would go stale) fails to open instead of interleaving
        # writes. With WAL this also means no -shm file (no shared memory).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot use WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size = {_CACHE_SIZE}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._migrate()
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if self.check:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise StoreCorrupt(path, "integrity check failed: " + "; ".join(problems))
        self._load()

    def _migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreSchemaError(
                    f"{self.path} is an SQLite database but not a meshd store "
                    "(user_version 0 with tables); move it aside"
                )
            # One statement at a time, inside this transaction (executescript
            # would COMMIT first); so _SCHEMA has no ';' except between statements.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('partition_bits', ?)",
                (self.partition_bits,),
            )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("created replica store %s (schema %d)", self.path, SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            newer_or_older = "a newer" if version > SCHEMA_VERSION else "an older, unsupported"
            raise StoreSchemaError(
                f"{self.path} has schema version {version}, written by {newer_or_older} "
                f"meshd; this meshd reads version {SCHEMA_VERSION}. Run the meshd that wrote "
                "it, or move the file aside to start with an empty store"
            )
        row = conn.execute("SELECT value FROM meta WHERE name = 'partition_bits'").fetchone()
        if row is None:
            raise StoreCorrupt(self.path, "the meta table has no partition_bits")
        if row[0] != self.partition_bits:
            # The ring's partition count changed (a deliberate, cluster-wide
            # change): recompute every row's partition.
            log.warning(
                "%s: partition bits %s -> %d, re-partitioning",
                self.path,
                row[0],
                self.partition_bits,
            )
            conn.create_function("meshd_partition", 2, self._partition, deterministic=True)
            conn.execute("UPDATE records SET partition = meshd_partition(namespace, key)")
            conn.execute(
                "UPDATE meta SET value = ? WHERE name = 'partition_bits'", (self.partition_bits,)
            )

    def _partition(self, namespace: str, key: bytes) -> int:
        return key_hash(placement_key(namespace, key)) >> self._shift

    def _load(self) -> None:
        # Rule 4: the tree and the counters from the committed rows.
        tree, counts = self.tree, self.counts
        for row in self.conn.execute(_SELECT_RECORD):
            record = self.record(row)
            tree.put(record.placement_key, record.digest())
            c = counts.setdefault(record.namespace, [0, 0, 0])
            c[0 if record.value is not None else 1] += 1
            c[2] += _size(record)

    def record(self, row: tuple[object, ...]) -> Record:
        """A Record from a ``records`` or ``hints`` row; a mistyped row is damage."""
        namespace, key, value, ts, writer = row
        if (
            type(namespace) is not str
            or type(key) is not bytes
            or not (value is None or type(value) is bytes)
            or type(ts) is not int
            or type(writer) is not str
        ):
            raise StoreCorrupt(self.path, f"a row has wrong column types: {row!r:.200}")
        try:
            return Record(namespace, key, value, Timestamp(ts), writer)
        except ValueError as e:
            raise StoreCorrupt(self.path, f"a row is invalid ({e}): {row!r:.200}") from e

    # -------------------------------------------------------------- writes
    #
    # Each runs inside the transaction _run_writes opened, and changes the
    # tree and counters only through defer() (Rule 4).

    def _count(self, namespace: str, tombstone: bool, size: int, sign: int) -> None:
        c = self.counts.setdefault(namespace, [0, 0, 0])
        c[1 if tombstone else 0] += sign
        c[2] += sign * size
        if c == [0, 0, 0]:
            del self.counts[namespace]

    def apply(self, records: Sequence[Record], now_ms: int) -> list[bool]:
        conn = self.conn
        applied: list[bool] = []
        for record in records:
            ns, key = record.namespace, record.key
            ts, writer = record.timestamp.packed, record.writer
            row = conn.execute(
                "SELECT ts, writer, value IS NULL, length(key) + ifnull(length(value), 0) "
                "FROM records WHERE namespace = ? AND key = ?",
                (ns, key),
            ).fetchone()
            pkey = placement_key(ns, key)
            if row is None:
                conn.execute(
                    "INSERT INTO records (namespace, key, value, ts, writer, partition, "
                    "stored_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (ns, key, record.value, ts, writer, key_hash(pkey) >> self._shift, now_ms),
                )
                old: tuple[bool, int] | None = None
            else:
                old_ts, old_writer, old_tombstone, old_size = row
                if (ts, writer) != (old_ts, old_writer):
                    wins = (ts, writer) > (old_ts, old_writer)
                else:
                    # The same version twice: versioned.py Rule 3 orders by
                    # the bytes, so fetch them (rare: a duplicate delivery).
                    old_value = conn.execute(
                        "SELECT value FROM records WHERE namespace = ? AND key = ?", (ns, key)
                    ).fetchone()[0]
                    wins = newer(record, attrs.evolve(record, value=old_value))
                if not wins:
                    applied.append(False)
                    continue
                conn.execute(
                    "UPDATE records SET value = ?, ts = ?, writer = ?, stored_at = ? "
                    "WHERE namespace = ? AND key = ?",
                    (record.value, ts, writer, now_ms, ns, key),
                )
                old = (bool(old_tombstone), old_size)
            applied.append(True)
            self.defer(self._on_applied(record, pkey, old))
        return applied

    def _on_applied(
        self, record: Record, pkey: bytes, old: tuple[bool, int] | None
    ) -> Callable[[], None]:
        def effect() -> None:
            self.tree.put(pkey, record.digest())
            if old is not None:
                self._count(record.namespace, old[0], old[1], -1)
            self._count(record.namespace, record.value is None, _size(record), +1)

        return effect

    def delete_partition(self, partition: int) -> int:
        rows = self.conn.execute(
            "DELETE FROM records WHERE partition = ? "
            "RETURNING namespace, value IS NULL, length(key) + ifnull(length(value), 0)",
            (partition,),
        ).fetchall()

        def effect() -> None:
            self.tree.drop_bucket(partition)  # a bucket is a partition (same depth)
            for namespace, tombstone, size in rows:
                self._count(namespace, bool(tombstone), size, -1)

        self.defer(effect)
        return len(rows)

    def collect_tombstones(self, now_ms: int, grace_ms: int, limit: int) -> int:
        # versioned.tombstone_collectable: wall_ms + grace_ms <= now_ms, i.e.
        # every packed timestamp below (now_ms - grace_ms + 1) << 16.
        cutoff = Timestamp.of(max(now_ms - grace_ms + 1, 0)).packed
        rows = self.conn.execute(
            "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records "
            "WHERE value IS NULL AND ts < ? ORDER BY ts LIMIT ?) RETURNING namespace, key",
            (cutoff, limit),
        ).fetchall()

        def effect() -> None:
            for namespace, key in rows:
                self.tree.remove(placement_key(namespace, key))
                self._count(namespace, True, len(key), -1)

        self.defer(effect)
        return len(rows)

    def add_hint(self, target: str, record: Record, now_ms: int) -> bool:
        conn = self.conn
        row = conn.execute(
            "SELECT id, namespace, key, value, ts, writer FROM hints "
            "WHERE target = ? AND namespace = ? AND key = ?",
            (target, record.namespace, record.key),
        ).fetchone()
        if row is not None:
            if not newer(record, self.record(row[1:])):
                return False
            # Delete and insert, not update: the newer hint gets a new id, so
            # a delivery of the old one in flight cannot drop it (see schema).
            conn.execute("DELETE FROM hints WHERE id = ?", (row[0],))
        conn.execute(
            "INSERT INTO hints (target, namespace, key, value, ts, writer, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                target,
                record.namespace,
                record.key,
                record.value,
                record.timestamp.packed,
                record.writer,
                now_ms,
            ),
        )
        return True

    def drop_hints(self, ids: Sequence[int]) -> int:
        dropped = 0
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            dropped += self.conn.execute(f"DELETE FROM hints WHERE id IN ({marks})", chunk).rowcount
        return dropped

    def expire_hints(self, now_ms: int, window_ms: int) -> int:
        # A hint expires when either its creation or its write is older than
        # the window: the write's age is what the tombstone grace period is
        # measured against (versioned.py Rule 2), so a hint made late for an
        # old write must not outlive the window either.
        cutoff = now_ms - window_ms
        return self.conn.execute(
            "DELETE FROM hints WHERE created_at <= ? OR ts < ?",
            (cutoff, Timestamp.of(max(cutoff + 1, 0)).packed),
        ).rowcount

    # -------------------------------------------------------------- reads

    def get(self, namespace: str, key: bytes) -> Record | None:
        row = self.conn.execute(
            _SELECT_RECORD + " WHERE namespace = ? AND key = ?", (namespace, key)
        ).fetchone()
        return None if row is None else self.record(row)

    def records_for(self, pkeys: Iterable[bytes]) -> list[Record]:
        found = []
        for pkey in pkeys:
            record = self.get(*split_placement_key(pkey))
            if record is not None:
                found.append(record)
        return found

    def scan(
        self, namespace: str, prefix: bytes, limit: int, after: bytes | None, tombstones: bool
    ) -> list[Record]:
        sql = _SELECT_RECORD + " WHERE namespace = ? AND key >= ?"
        args: list[object] = [namespace, prefix]
        end = _prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            args.append(end)
        if after is not None:
            sql += " AND key > ?"
            args.append(after)
        if not tombstones:
            sql += " AND value IS NOT NULL"
        sql += " ORDER BY key LIMIT ?"
        args.append(limit)
        return [self.record(row) for row in self.conn.execute(sql, args)]

    def partition_records(self, partition: int) -> list[Record]:
        rows = self.conn.execute(
            _SELECT_RECORD + " WHERE partition = ? ORDER BY namespace, key", (partition,)
        )
        return [self.record(row) for row in rows]

    def keys_in_partitions(self, partitions: Sequence[int]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for start in range(0, len(partitions), _IN_CHUNK):
            chunk = partitions[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT partition, count(*) FROM records WHERE partition IN ({marks}) "
                "GROUP BY partition",
                chunk,
            )
            counts.update(rows)
        return counts

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        rows = self.conn.execute(
            "SELECT id, created_at, namespace, key, value, ts, writer FROM hints "
            "WHERE target = ? ORDER BY id LIMIT ?",
            (target, limit),
        )
        return [Hint(row[0], target, self.record(row[2:]), row[1]) for row in rows]

    def hint_count(self, target: str | None) -> int:
        if target is None:
            return int(self.conn.execute("SELECT count(*) FROM hints").fetchone()[0])
        return int(
            self.conn.execute("SELECT count(*) FROM hints WHERE target = ?", (target,)).fetchone()[
                0
            ]
        )

    def hint_targets(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT target, count(*) FROM hints GROUP BY target")
        return {target: count for target, count in rows}

    def stats(self) -> StoreStats:
        file_bytes = 0
        for extra in ("", "-wal"):
            try:
                file_bytes += os.stat(self.path.with_name(self.path.name + extra)).st_size
            except FileNotFoundError:
                pass
        namespaces = {ns: NamespaceStats(*c) for ns, c in sorted(self.counts.items())}
        return StoreStats(MappingProxyType(namespaces), self.hint_count(None), file_bytes)

    def integrity_check(self) -> list[str]:
        return [row[0] for row in self.conn.execute("PRAGMA integrity_check")]


# ---------------------------------------------------------------------------
# The trio side


def _check_partitions(partitions: Iterable[int], bits: int) -> list[int]:
    checked = []
    for partition in partitions:
        if type(partition) is not int or not 0 <= partition < 1 << bits:
            raise ValueError(f"partition must be an int in 0..{(1 << bits) - 1}, got {partition!r}")
        checked.append(partition)
    return checked


def _check_limit(limit: int, most: int) -> None:
    if type(limit) is not int or not 1 <= limit <= most:
        raise ValueError(f"limit must be 1..{most}, got {limit!r}")


@final
class Store:
    """One replica's records and hints; every method runs on the store's worker thread.

    Open with :func:`open_store` (or :meth:`Store.open` and :meth:`aclose`).
    The store belongs to the trio run that opened it.

    Cancellation: a cancelled call stops waiting, but a job already queued
    still runs. A cancelled :meth:`apply` may therefore have been stored,
    entirely or not at all, exactly like a write whose reply was lost; the
    caller must not acknowledge it.
    """

    def __init__(
        self,
        db: _Db,
        jobs: queue.SimpleQueue[object],
        thread: threading.Thread,
        token: trio.lowlevel.TrioToken,
    ) -> None:
        self._db = db
        self._jobs = jobs
        self._thread = thread
        self._token = token
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        partition_bits: int = DEFAULT_PARTITION_BITS,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        check: bool = True,
    ) -> Store:
        """Open (or create) the database at ``path`` and load its Merkle tree.

        Opening reads every row once (to build the tree and counters) and,
        with ``check``, runs ``PRAGMA quick_check`` over the whole file first.

        Args:
            path: the database file, normally ``state_dir / DB_FILE_NAME``.
            partition_bits: the ring's partition bits (``core/ring.py``); also
                the Merkle tree depth, so a bucket is a partition.
            synchronous: ``"FULL"`` (durable against power loss) or
                ``"NORMAL"`` (durable against process crash only); see the
                module docstring.
            check: run ``PRAGMA quick_check`` at open.

        Raises:
            StoreCorrupt: the file is damaged or not a database.
            StoreSchemaError: written by another meshd version, or not a meshd store.
            StoreLocked: another process has it open.
            StoreError: cannot create or open the file.
        """
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        db = _Db(Path(path), partition_bits=partition_bits, synchronous=synchronous, check=check)
        token = trio.lowlevel.current_trio_token()
        jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        opened: _Job[None] = _Job(lambda db: db.open(), write=False, token=token)
        jobs.put(opened)
        thread = threading.Thread(
            target=db.serve, args=(jobs,), name=f"meshd-store {path}", daemon=True
        )
        thread.start()
        try:
            with trio.CancelScope(shield=True):  # never leave a half-open thread behind
                await opened.done.wait()
        finally:
            if opened.error is not None:
                jobs.put(_STOP)
                await trio.to_thread.run_sync(thread.join)
        if opened.error is not None:
            raise opened.error
        return cls(db, jobs, thread, token)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    @property
    def partition_bits(self) -> int:
        """Partition bits of the ring this store is partitioned for."""
        return self._db.partition_bits

    async def _call(self, fn: Callable[[_Db], _T], *, write: bool = False) -> _T:
        if self._closed or self._db.stopped:
            raise StoreClosed(f"{self.path}: the store is closed")
        job: _Job[_T] = _Job(fn, write=write, token=self._token)
        self._jobs.put(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Finish queued calls, checkpoint the WAL into the file and close it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    # ------------------------------------------------------------ records

    async def apply(self, records: Iterable[Record]) -> list[bool]:
        """Store each record that wins last-writer-wins against the stored one.

        All in one transaction: when this returns, every applied record is
        committed (durable as ``synchronous`` says); if it raises, none is.

        Args:
            records: records to store; values and tombstones alike. A key may
                appear more than once; later ones then compare against earlier.

        Returns:
            For each record, whether it was stored (False: the stored record
            is the same or newer).

        Raises:
            TypeError, ValueError: a record fails :func:`check_record`; nothing is stored.
            StoreError: the database failed; nothing is stored.
        """
        batch = list(records)
        for record in batch:
            check_record(record)
        if not batch:
            return []
        now_ms = _now_ms()
        return await self._call(lambda db: db.apply(batch, now_ms), write=True)

    async def get(self, namespace: str, key: bytes) -> Record | None:
        """The stored record for ``key`` (possibly a tombstone), or None."""
        _check_text("namespace", namespace, MAX_NAMESPACE_BYTES)
        _check_key(key)
        return await self._call(lambda db: db.get(namespace, key))

    async def records_for(self, placement_keys: Iterable[bytes]) -> list[Record]:
        """The stored records named by Merkle entries (placement keys); absent ones are skipped."""
        pkeys = list(placement_keys)
        for pkey in pkeys:
            namespace, key = split_placement_key(pkey)
            _check_text("namespace", namespace, MAX_NAMESPACE_BYTES)
            _check_key(key)
        return await self._call(lambda db: db.records_for(pkeys))

    async def scan(
        self,
        namespace: str,
        prefix: bytes = b"",
        *,
        limit: int = 1000,
        after: bytes | None = None,
        tombstones: bool = False,
    ) -> list[Record]:
        """Records of ``namespace`` whose key starts with ``prefix``, in key order.

        Args:
            namespace: the namespace.
            prefix: key prefix (``b""``: every key).
            limit: most records to return, 1..MAX_SCAN_LIMIT.
            after: start after this key (the last key of the previous page).
            tombstones: include deleted keys.
        """
        _check_text("namespace", namespace, MAX_NAMESPACE_BYTES)
        if type(prefix) is not bytes or len(prefix) > MAX_KEY_BYTES:
            raise ValueError(f"prefix must be bytes of at most {MAX_KEY_BYTES}")
        if after is not None:
            _check_key(after)
        _check_limit(limit, MAX_SCAN_LIMIT)
        return await self._call(lambda db: db.scan(namespace, prefix, limit, after, tombstones))

    async def partition_records(self, partition: int) -> list[Record]:
        """Every record (tombstones included) in ``partition``: what handoff streams."""
        (p,) = _check_partitions((partition,), self.partition_bits)
        return await self._call(lambda db: db.partition_records(p))

    async def keys_in_partitions(self, partitions: Iterable[int]) -> dict[int, int]:
        """Rows (tombstones included) per partition, for the non-empty ones among ``partitions``.

        Handoff and rebalancing use the sum as the amount of work to show progress against.
        """
        ps = _check_partitions(partitions, self.partition_bits)
        return await self._call(lambda db: db.keys_in_partitions(ps))

    async def delete_partition(self, partition: int) -> int:
        """Drop every record of ``partition`` (after it was handed off); returns how many."""
        (p,) = _check_partitions((partition,), self.partition_bits)
        return await self._call(lambda db: db.delete_partition(p), write=True)

    async def collect_tombstones(self, now_ms: int, grace_ms: int, *, limit: int = 10_000) -> int:
        """Drop tombstones whose delete is ``grace_ms`` old (``versioned.tombstone_collectable``).

        Args:
            now_ms: the wall clock, ms since the Unix epoch.
            grace_ms: the grace period; it must exceed the hint window
                (``versioned.check_tombstone_grace``).
            limit: most tombstones to drop in this call (one transaction);
                call again while it returns ``limit``.

        Returns:
            How many were dropped.
        """
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        _check_limit(limit, 1_000_000)
        return await self._call(
            lambda db: db.collect_tombstones(now_ms, grace_ms, limit), write=True
        )

    # ------------------------------------------------------------ hints

    async def add_hint(self, target: str, record: Record, now_ms: int | None = None) -> bool:
        """Keep ``record`` for replica ``target`` until it is delivered or expires.

        One hint per (target, namespace, key): a newer record replaces the
        held one (under a new id); an older or equal one is refused.

        Args:
            target: node id of the replica that was down.
            record: the write it missed.
            now_ms: creation time, ms since the epoch (default: the wall clock).

        Returns:
            Whether the hint was stored.
        """
        _check_text("target", target, MAX_WRITER_BYTES)
        check_record(record)
        created = _now_ms() if now_ms is None else now_ms
        return await self._call(lambda db: db.add_hint(target, record, created), write=True)

    async def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        """The oldest ``limit`` hints for ``target``, oldest first."""
        _check_text("target", target, MAX_WRITER_BYTES)
        _check_limit(limit, MAX_SCAN_LIMIT)
        return await self._call(lambda db: db.hints_for(target, limit))

    async def drop_hints(self, ids: Iterable[int]) -> int:
        """Forget delivered hints; returns how many existed."""
        checked = list(ids)
        if any(type(i) is not int for i in checked):
            raise TypeError("hint ids are ints")
        if not checked:
            return 0
        return await self._call(lambda db: db.drop_hints(checked), write=True)

    async def hint_count(self, target: str | None = None) -> int:
        """Hints held, for ``target`` or in all."""
        if target is not None:
            _check_text("target", target, MAX_WRITER_BYTES)
        return await self._call(lambda db: db.hint_count(target))

    async def hint_targets(self) -> dict[str, int]:
        """Replicas with hints waiting, and how many each."""
        return await self._call(lambda db: db.hint_targets())

    async def expire_hints(self, now_ms: int, window_ms: int) -> int:
        """Drop hints older than the hint window (by creation or write time); returns how many."""
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        return await self._call(lambda db: db.expire_hints(now_ms, window_ms), write=True)

    # ------------------------------------------------------------ views

    async def stats(self) -> StoreStats:
        """Keys, tombstones and bytes per namespace, hints, and file size."""
        return await self._call(lambda db: db.stats())

    async def merkle_root(self) -> bytes:
        """Root digest over every record held (equal roots: equal contents)."""
        return await self._call(lambda db: db.tree.root)

    async def merkle_snapshot(self, partitions: Iterable[int] | None = None) -> MerkleSnapshot:
        """The Merkle digests, optionally of ``partitions`` only (others read as empty).

        Restricting to the partitions two replicas share is how they compare
        just what both should hold. Costs one hash per non-empty inner node
        (at most ``2**partition_bits``), on the worker thread.
        """
        if partitions is None:
            return await self._call(lambda db: db.tree.snapshot())
        ps = _check_partitions(partitions, self.partition_bits)
        return await self._call(lambda db: db.tree.snapshot(ps))

    async def merkle_entries(self, partition: int) -> dict[bytes, bytes]:
        """``placement key -> record digest`` for one partition (a differing Merkle bucket)."""
        (p,) = _check_partitions((partition,), self.partition_bits)
        return await self._call(lambda db: db.tree.entries(p))

    async def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` or the problems found (reads the whole file)."""
        return await self._call(lambda db: db.integrity_check())


@asynccontextmanager
async def open_store(
    state_dir: Path,
    *,
    partition_bits: int = DEFAULT_PARTITION_BITS,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    check: bool = True,
) -> AsyncIterator[Store]:
    """Open the replica store ``state_dir / kv.sqlite3`` for the duration of a block.

    See :meth:`Store.open` for the arguments and errors.
    """
    store = await Store.open(
        Path(state_dir) / DB_FILE_NAME,
        partition_bits=partition_bits,
        synchronous=synchronous,
        check=check,
    )
    try:
        yield store
    finally:
        await store.aclose()
