"""The KV service of one daemon: ring, coordinator, replica, hints, repair, rebalancing."""

# Theory of operation
# -------------------
#
# One KvService per daemon. It owns the replica store (runtime/store.py) and
# registers the RPC service "kv" (bodies: core/kvmessages.py). Its tasks,
# all children of run()'s nursery:
#
#   ring loop       membership changed -> wait ring_debounce -> rebuild the
#                   RingView off the trio thread (pure CPU: 0.16 s at N=100)
#                   -> plan handoffs, remember the old ring for reads
#   coordinator     put/get/delete from the control socket: fan out to the
#                   preference list, decide with core/replication.py tallies
#   replica         the "kv" service: write/read/stats/compare/entries/fetch
#   hint loop       every hint_interval and when a member (re)joins: deliver
#                   hints to alive targets, expire those older than the window
#   handoff loop    push partitions to new owners, delete those no longer ours
#   anti-entropy    every anti_entropy_interval: Merkle compare with each peer
#   transition loop forget the old ring once no member has handoffs pending
#   gc loop         collect tombstones older than the grace period
#
# Rule 1: the ring is built from the ALIVE and SUSPECT members. A suspicion
#         is often false (Lifeguard refutes it), so it must not move data;
#         dead and left members leave the ring. Every node that sees the same
#         members computes the same ring (ring.py Rule 1).
# Rule 2: a coordinator's write goes to every member of the preference list
#         at once; the request answers as soon as the level is met
#         (replication.py), and the remaining sends go on in the background
#         until the deadline. A member that is not alive, or does not answer,
#         gets a hint on the next alive node past the list (Dynamo §4.6),
#         or on the coordinator itself when none takes it.
# Rule 3: the coordinator stamps each write with its HLC (hlc.py); replicas
#         merge the timestamps of coordinators' writes into their clocks and
#         refuse one too far ahead (ClockDriftError). Repairs, hints and
#         handoffs carry old writes: they never move a clock by force.
# Rule 4: a read answers with the newest record among the answers; read
#         repair writes it back to the stale members of the list after the
#         answer, once every member answered or the deadline passed.
# Rule 5: rebalancing never drops a copy before the new owners have it: a
#         node pushes a partition it no longer owns to every owner of the new
#         ring, checks that the partition did not change meanwhile, and only
#         then deletes it. A coordinator's write that lands on a partition
#         this node does not own (the coordinator's ring is older or newer)
#         is stored *and* hinted to the owners, so a delete racing it cannot
#         lose it.
# Rule 6: reads stay correct during a move: for a ring change, the
#         coordinator also asks the previous owners (replication.py Rule 5)
#         until no member reports pending handoffs.
# Rule 7: nothing here blocks the trio thread: SQLite runs on the store's
#         thread, ring builds in trio's thread pool, and anti-entropy and
#         handoff are throttled (sync.py Rule 1).
# Rule 8: a coordinator coalesces the writes waiting for one replica into
#         one message (``_WriteBatcher``): none waits for a batch to fill,
#         but while a few messages are in flight the next writes go together.
#         Each write keeps its own acknowledgement and deadline.

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
import trio.lowlevel

from meshd.config import KvSection
from meshd.core import kvmessages as kvm
from meshd.core.hlc import ClockDriftError, HybridClock
from meshd.core.merkle import EMPTY
from meshd.core.outputs import Event, MemberJoined, MemberRecovered
from meshd.core.replication import (
    Consistency,
    ReadTally,
    RingView,
    WriteTally,
    check_namespace,
    parse_consistency,
    required,
)
from meshd.core.ring import RingDiff
from meshd.core.ring import diff as ring_diff
from meshd.core.types import Member, MemberState
from meshd.core.versioned import Record, newer, placement_key
from meshd.errors import BadPacket, MeshError
from meshd.runtime.kv import sync
from meshd.runtime.rpc import ECHO_SERVICE, RpcError, RpcUnavailable
from meshd.runtime.store import Store, StoreError, check_record

__all__ = ["KvService", "KvTuning", "KvUnavailable", "ReadOutcome", "WriteOutcome"]

log = logging.getLogger("meshd.kv")

#: The ring's members are the members in these states (Rule 1).
RING_STATES = (MemberState.ALIVE, MemberState.SUSPECT)

#: Why a replica did not answer, by RpcUnavailable.kind (for error messages).
_UNAVAILABLE_REASONS = {
    "timeout": "timeout",
    "not_member": "not alive",
    "connect": "unreachable",
    "lost": "connection lost",
    "tls": "TLS failed",
    "identity": "wrong identity",
    "protocol": "protocol error",
    "stopped": "stopping",
}


class KvUnavailable(MeshError):
    """A request could not be carried out at its consistency level; the message says why."""


@attrs.frozen(kw_only=True)
class KvTuning:
    """Internal timings and sizes; the defaults are the product's, tests shorten them.

    Attributes:
        ring_debounce: seconds of quiet after a membership change before the
            ring is rebuilt (a burst of changes makes one rebuild).
        handoff_settle: seconds the ring must stay unchanged before
            partitions are handed off and deleted.
        handoff_interval: seconds between handoff passes when nothing changes.
        handoff_concurrency: partitions handed off at once (Riak's
            handoff_concurrency is 2).
        hint_interval: seconds between hint deliveries.
        hint_batch: hints delivered per message.
        transition_min: seconds the previous ring is read from at least.
        transition_max: seconds it is read from at most.
        transition_poll: seconds between asks whether handoffs are done.
        max_transitions: previous rings kept for reads at most (the latest).
        stats_ttl: seconds a member's load is cached for ``status``/``ring``.
        stats_timeout: seconds to wait for a member's load.
        gc_interval: seconds between tombstone collections.
        max_background: background tasks (fan-out tails, read repairs)
            beyond which read repairs are skipped and counted.
        coalesce_writes: send the writes waiting for one replica together
            (Rule 8); off: one message per write and replica.
        batches_in_flight: write messages in flight to one replica at once.
    """

    ring_debounce: float = 0.2
    handoff_settle: float = 2.0
    handoff_interval: float = 30.0
    handoff_concurrency: int = 2
    hint_interval: float = 10.0
    hint_batch: int = 500
    transition_min: float = 10.0
    transition_max: float = 3600.0
    transition_poll: float = 1.0
    max_transitions: int = 4
    stats_ttl: float = 5.0
    stats_timeout: float = 0.5
    gc_interval: float = 600.0
    max_background: int = 10_000
    coalesce_writes: bool = True
    batches_in_flight: int = 4


@attrs.frozen
class WriteOutcome:
    """A write that met its level.

    Attributes:
        record: what was written (value None: a delete's tombstone).
        replicas: the preference list.
        acked: replicas that stored it before the answer.
        hinted: replica -> node holding a hint for it.
    """

    record: Record
    replicas: tuple[str, ...]
    acked: tuple[str, ...]
    hinted: Mapping[str, str]


@attrs.frozen
class ReadOutcome:
    """A read that met its level.

    Attributes:
        record: the newest record among the answers (possibly a tombstone),
            or None when no replica had the key.
        replicas: the preference list.
        answered: members of the list that answered before the reply.
    """

    record: Record | None
    replicas: tuple[str, ...]
    answered: tuple[str, ...]

    @property
    def value(self) -> bytes | None:
        """The value, or None if the key is absent or deleted."""
        return None if self.record is None else self.record.value


@attrs.frozen
class _Transition:
    view: RingView
    since: float


class _Failed(Exception):
    """A member did not carry out a request; ``reason`` is for messages."""

    def __init__(self, reason: str, *, unavailable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unavailable = unavailable


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


#: Seconds past a write's deadline its fan-out may take to keep hints.
_HINT_GRACE = 1.0
#: Most records and bytes of records in one coalesced write message.
_BATCH_RECORDS = 512
_BATCH_BYTES = 4 << 20


def _pending_reason(deadline: float) -> str:
    """How to describe a member still pending when a request gave up."""
    return "timeout" if trio.current_time() >= deadline else "no answer yet"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
    if not 1 <= len(key) <= kvm.MAX_KEY_BYTES:
        raise ValueError(f"key must be 1..{kvm.MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def _as_value(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes or str, not {type(value).__name__}")
    if len(value) > kvm.MAX_VALUE_BYTES:
        raise ValueError(f"value must be at most {kvm.MAX_VALUE_BYTES} bytes, got {len(value)}")
    return value


class KvService:
    """The replicated store's work on one node (see the theory above).

    Args:
        node_id: this node's id.
        store: its open replica store.
        config: the ``[kv]`` section.
        member_state: the state of a member in this node's view (None: unknown).
        members: this node's membership table (``NodeCore.members``).
        call: ``Daemon.call``: ``(node, service, body, timeout) -> body``; a
            call to this node runs locally.
        tuning: internal timings (tests shorten them).
        on_request: called with ``(op, consistency, result, seconds)`` after
            each client request (metrics).
        wall_ms: the wall clock in ms since the epoch (HLC physical time).
        serving: coordinate requests from the start; False: only once
            :meth:`open` is called (the daemon opens once it joined the mesh:
            a node that knows only itself would answer "not found" and
            write to the wrong replicas).
    """

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        config: KvSection,
        member_state: Callable[[str], MemberState | None],
        members: Callable[[], Sequence[Member]],
        call: Callable[[str, str, bytes, float], Awaitable[bytes]],
        tuning: KvTuning | None = None,
        on_request: Callable[[str, str, str, float], None] | None = None,
        wall_ms: Callable[[], int] = _wall_ms,
        serving: bool = True,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.config = config
        self.tuning = tuning or KvTuning()
        self._member_state = member_state
        self._members = members
        self._call = call
        self._on_request = on_request
        self._wall_ms = wall_ms
        self.clock = HybridClock(max_drift_ms=round(config.max_clock_drift * 1000))
        self._rng = random.Random()
        #: Counters for ``meshctl status``/``info`` (``kv_*`` keys).
        self.counters: Counter[str] = Counter()
        #: (op, consistency, result) -> client requests, for metrics.
        self.requests: Counter[tuple[str, str, str]] = Counter()
        #: Hints held here for other members (refreshed by the hint loop).
        self.hints_pending = 0
        self._view: RingView | None = None
        self._view_changed_at = 0.0
        self._ring_dirty = trio.Event()
        self._ring_built = trio.Event()
        self._transitions: list[_Transition] = []
        self._hints_wake = trio.Event()
        self._handoff_wake = trio.Event()
        self._ae_wake = trio.Event()
        #: partition -> members to push our copy to (we stay an owner).
        self._pushes: dict[int, set[str]] = {}
        #: partitions we hold but no longer own: push to the owners, then delete.
        self._drops: set[int] = set()
        self._stats: dict[str, tuple[float, kvm.StatsReply | None]] = {}
        self._responder = sync.CompareResponder(store)
        self._ae_rate = sync.RateLimit(config.anti_entropy_rate)
        self._handoff_rate = sync.RateLimit(config.handoff_rate)
        self._nursery: trio.Nursery | None = None
        self._background = 0
        #: Coalesce concurrent writes to one replica into one message (Rule 8).
        self.coalesce_writes = self.tuning.coalesce_writes
        self._batchers: dict[str, _WriteBatcher] = {}
        self.ready = trio.Event()
        #: Set when this node may coordinate requests (see ``serving``).
        self.serving = trio.Event()
        if serving:
            self.serving.set()

    # ================================================================ life cycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Build the first ring, start every loop, and run until cancelled."""
        await self._rebuild()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ring_loop)
            nursery.start_soon(self._hint_loop)
            nursery.start_soon(self._handoff_loop)
            nursery.start_soon(self._anti_entropy_loop)
            nursery.start_soon(self._transition_loop)
            nursery.start_soon(self._gc_loop)
            self.ready.set()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def member_event(self, event: Event) -> None:
        """A membership event from the core: maybe rebuild the ring, deliver hints."""
        self._ring_dirty.set()
        if isinstance(event, (MemberJoined, MemberRecovered)):
            self._hints_wake.set()

    @property
    def view(self) -> RingView | None:
        """The current ring as this node sees it (None before the first build)."""
        return self._view

    @property
    def ring_is_current(self) -> bool:
        """The ring is built from this node's current view (no rebuild pending)."""
        view = self._view
        return view is not None and frozenset(view.ring.members) == self._ring_members()

    @property
    def rebalancing(self) -> bool:
        """Reads still also ask the owners of a previous ring (Rule 6)."""
        return bool(self._transitions)

    @property
    def handoffs_pending(self) -> int:
        """Partitions this node still has to hand to other members."""
        return len(self._drops | set(self._pushes))

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        nursery = self._nursery
        if nursery is None:
            raise KvUnavailable("the KV service is not running")
        self._background += 1

        async def task() -> None:
            try:
                await fn(*args)
            finally:
                self._background -= 1

        nursery.start_soon(task)

    def _state(self, member: str) -> MemberState | None:
        if member == self.node_id:
            return MemberState.ALIVE
        return self._member_state(member)

    # ================================================================ ring

    def _ring_members(self) -> frozenset[str]:
        return frozenset(
            [self.node_id, *(m.node_id for m in self._members() if m.state in RING_STATES)]
        )

    async def _ring_loop(self) -> None:
        while True:
            await self._ring_dirty.wait()
            self._ring_dirty = trio.Event()
            # Debounce: a burst of events (a mesh joining) makes one rebuild.
            await trio.sleep(self.tuning.ring_debounce)
            await self._rebuild()

    async def _rebuild(self) -> None:
        members = self._ring_members()
        old = self._view
        if old is not None and frozenset(old.ring.members) == members:
            return
        build = functools.partial(
            RingView.build,
            members,
            self.node_id,
            replicas=self.config.replicas,
            partition_bits=self.store.partition_bits,
        )
        new = await trio.to_thread.run_sync(build)
        changes: RingDiff | None = None
        held: set[int] = set()
        if old is not None:
            changes = await trio.to_thread.run_sync(ring_diff, old.ring, new.ring)
            try:
                held = await self._held_partitions()
            except StoreError as e:  # the periodic pass retries the plan
                log.warning("ring change: cannot read the store to plan handoffs: %s", e)
        # From here on no await until the handoffs are planned: whoever sees
        # the new ring also sees the work it implies (handoffs_pending).
        now = trio.current_time()
        self._view = new
        self._view_changed_at = now
        self._ring_built.set()
        self._ring_built = trio.Event()
        self.counters["kv_ring_builds"] += 1
        if old is None or changes is None:
            log.info("ring: %d member(s), fingerprint %s", len(members), new.ring.fingerprint[:12])
            return
        log.info(
            "ring: %d member(s), fingerprint %s; %d of %d partitions changed owners",
            len(members),
            new.ring.fingerprint[:12],
            len(changes.changes),
            changes.partition_count,
        )
        if changes.changes:
            self._transitions.append(_Transition(old, now))
            # Each kept ring weighs megabytes at N = 100: keep the latest few.
            del self._transitions[: -self.tuning.max_transitions]
            self._plan_handoffs(held, changes)
            self._handoff_wake.set()

    # ================================================================ coordinator

    def _level(self, consistency: str | Consistency | None) -> Consistency:
        return parse_consistency(consistency or self.config.consistency)

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.config.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError("timeout must be a number of seconds")
        if not 0 < timeout <= 300:
            raise ValueError(f"timeout must be in (0, 300] seconds, got {timeout}")
        return float(timeout)

    async def wait_for_ring(self, members: int) -> None:
        """Return once the ring has at least ``members`` members."""
        while self._view is None or len(self._view.ring.members) < members:
            await self._ring_built.wait()

    def open(self) -> None:
        """Start coordinating requests (see the ``serving`` argument)."""
        self.serving.set()

    def _require_view(self) -> RingView:
        view = self._view
        if view is None:
            raise KvUnavailable("the ring is not built yet; retry in a moment")
        if not self.serving.is_set():
            raise KvUnavailable(
                "the KV store is starting: this node has not joined the mesh yet "
                "(see `meshctl status`); retry in a moment"
            )
        return view

    def _count(self, op: str, level: Consistency | str, result: str, started: float) -> None:
        name = level.value if isinstance(level, Consistency) else level
        self.requests[(op, name, result)] += 1
        if self._on_request is not None:
            self._on_request(op, name, result, trio.current_time() - started)

    async def put(
        self,
        namespace: str,
        key: bytes | str,
        value: bytes | str,
        *,
        consistency: str | Consistency | None = None,
        timeout: float | None = None,
    ) -> WriteOutcome:
        """Store ``value`` under ``key`` in ``namespace``.

        Args:
            namespace: see ``replication.check_namespace``.
            key: 1..1024 bytes (str is UTF-8 encoded).
            value: at most 1 MiB (str is UTF-8 encoded).
            consistency: ``one``, ``quorum`` or ``all`` ([kv] consistency by default).
            timeout: seconds ([kv] timeout by default).

        Raises:
            ValueError, TypeError: bad arguments.
            KvUnavailable: the level was not met; says how many replicas answered.
        """
        return await self._write("put", namespace, key, value, consistency, timeout)

    async def delete(
        self,
        namespace: str,
        key: bytes | str,
        *,
        consistency: str | Consistency | None = None,
        timeout: float | None = None,
    ) -> WriteOutcome:
        """Delete ``key``: write a tombstone (versioned.py Rule 1). Raises as :meth:`put`."""
        return await self._write("delete", namespace, key, None, consistency, timeout)

    async def _write(
        self,
        op: str,
        namespace: str,
        key: bytes | str,
        value: bytes | str | None,
        consistency: str | Consistency | None,
        timeout: float | None,
    ) -> WriteOutcome:
        started = trio.current_time()
        try:
            level = self._level(consistency)
        except ValueError:
            self._count(op, "invalid", "invalid", started)
            raise
        try:
            seconds = self._timeout(timeout)
            check_namespace(namespace)
            raw_key = _as_key(key)
            raw_value = None if value is None else _as_value(value)
            view = self._require_view()
        except (ValueError, TypeError):
            self._count(op, level, "invalid", started)
            raise
        stamp = self.clock.now(self._wall_ms())
        record = Record(namespace, raw_key, raw_value, stamp, self.node_id)
        check_record(record)
        replicas = view.ring.owners(record.placement_key)
        tally = WriteTally(level, replicas, sloppy=self.config.sloppy_quorum)
        decided, answered = trio.Event(), trio.Event()
        deadline = started + seconds
        self._spawn(self._write_fanout, view, record, tally, (decided, answered), deadline)
        with trio.move_on_at(deadline):
            await decided.wait()
            if not tally.succeeded:
                # Impossible already: let the others answer, for an exact count.
                await answered.wait()
        if not tally.succeeded:
            self._count(op, level, "unavailable", started)
            raise KvUnavailable(tally.error(_pending_reason(deadline)))
        self._count(op, level, "ok", started)
        return WriteOutcome(record, replicas, tuple(tally.acked), dict(tally.hinted))

    async def _write_fanout(
        self,
        view: RingView,
        record: Record,
        tally: WriteTally,
        events: tuple[trio.Event, trio.Event],
        deadline: float,
    ) -> None:
        decided, answered = events
        request = kvm.WriteRequest((record,), fresh=True)
        body = kvm.encode(request) if not self.coalesce_writes else b""
        fallbacks = _Fallbacks(self, view, record.placement_key, tally.replicas)

        def settle() -> None:
            if tally.decided:
                decided.set()
            if not tally.pending:
                answered.set()

        async def one(member: str) -> None:
            try:
                if self.coalesce_writes:
                    await self._batcher(member).write(record, deadline)
                elif member == self.node_id:
                    await self._apply_write(self.node_id, request)
                else:
                    await self._ask(member, body, deadline, kvm.decode_write_reply_untrusted)
            except _Failed as failure:
                tally.fail(member, failure.reason)
                if failure.unavailable and self.config.hinted_handoff:
                    tally.hint_started(member)
                    settle()
                    holder = await self._hint(member, record, fallbacks, deadline)
                    if holder is None:
                        tally.hint_failed(member)
                    else:
                        tally.hint_stored(member, holder)
            else:
                tally.ack(member)
            settle()

        # A little past the deadline: a replica whose request timed out still
        # gets its hint kept (on this node, if no fallback answers in time).
        with trio.move_on_at(deadline + _HINT_GRACE):
            async with trio.open_nursery() as nursery:
                for member in tally.replicas:
                    nursery.start_soon(one, member)
        decided.set()
        answered.set()

    def _batcher(self, member: str) -> _WriteBatcher:
        batcher = self._batchers.get(member)
        if batcher is None:
            batcher = self._batchers[member] = _WriteBatcher(self, member)
        return batcher

    async def _hint(
        self, target: str, record: Record, fallbacks: _Fallbacks, deadline: float
    ) -> str | None:
        """Leave ``record`` as a hint for ``target`` on a fallback, else here; return the holder."""
        body = kvm.encode(kvm.WriteRequest((record,), hint_for=target))
        for holder in fallbacks.candidates():
            if holder == self.node_id:
                break
            try:
                await self._ask(holder, body, deadline, kvm.decode_write_reply_untrusted)
            except _Failed:
                continue
            self.counters["kv_hints_sent"] += 1
            return holder
        try:
            # Not cancelled with the request: the hint is this node's promise.
            with trio.CancelScope(shield=True):
                await self.store.add_hint(target, record)
        except StoreError as e:
            log.warning("cannot keep a hint for %s: %s", target, e)
            return None
        self.counters["kv_hints_stored"] += 1
        self._hints_wake.set()
        return self.node_id

    async def get(
        self,
        namespace: str,
        key: bytes | str,
        *,
        consistency: str | Consistency | None = None,
        timeout: float | None = None,
    ) -> ReadOutcome:
        """Read ``key`` from ``namespace``: the newest record the replicas hold.

        Raises:
            ValueError, TypeError: bad arguments.
            KvUnavailable: the level was not met; says how many replicas answered.
        """
        op = "get"
        started = trio.current_time()
        try:
            level = self._level(consistency)
        except ValueError:
            self._count(op, "invalid", "invalid", started)
            raise
        try:
            seconds = self._timeout(timeout)
            check_namespace(namespace)
            raw_key = _as_key(key)
            view = self._require_view()
        except (ValueError, TypeError):
            self._count(op, level, "invalid", started)
            raise
        pkey = placement_key(namespace, raw_key)
        replicas = view.ring.owners(pkey)
        tally = ReadTally(level, replicas, self._extras(pkey, replicas))
        decided, answered = trio.Event(), trio.Event()
        deadline = started + seconds
        self._spawn(self._read_fanout, namespace, raw_key, tally, (decided, answered), deadline)
        with trio.move_on_at(deadline):
            await decided.wait()
            if not tally.can_answer:
                await answered.wait()  # for an exact count (see _write)
        if not tally.can_answer:
            self._count(op, level, "unavailable", started)
            raise KvUnavailable(tally.error(_pending_reason(deadline)))
        winner = tally.plan().winner
        if winner is not None:
            try:
                self.clock.update(winner.timestamp, self._wall_ms())
            except ClockDriftError:
                pass
        self._count(op, level, "ok", started)
        return ReadOutcome(winner, replicas, tuple(tally.answers))

    async def scan(
        self,
        namespace: str,
        prefix: bytes = b"",
        *,
        limit: int = 1000,
        consistency: str | Consistency | None = None,
        timeout: float | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Keys of ``namespace`` starting with ``prefix``, with their newest values, in key
        order: at most ``limit`` pairs, deleted keys left out.

        A scan has no preference list: every ring member holds some of the
        keys, so the coordinator asks all of them for a page and merges the
        pages by last-writer-wins. ``one`` takes whichever members answer in
        time (keys held only by silent members are missing); ``quorum`` and
        ``all`` need every ring member's answer, so that every key's replicas
        were asked.

        Raises:
            ValueError, TypeError: bad arguments.
            KvUnavailable: a member did not answer (at quorum/all), or nobody did.
        """
        op = "scan"
        started = trio.current_time()
        level = self._level(consistency)
        seconds = self._timeout(timeout)
        check_namespace(namespace)
        if type(prefix) is not bytes:
            raise TypeError("prefix must be bytes")
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be 1..10000")
        view = self._require_view()
        members = sorted(view.ring.members)
        request = kvm.ScanRequest(namespace, prefix, limit)
        body = kvm.encode(request)
        deadline = started + seconds
        pages: dict[str, list[Record]] = {}
        failed: dict[str, str] = {}

        async def one(member: str) -> None:
            try:
                if member == self.node_id:
                    pages[member] = await self._local(self._scan_local(request))
                else:
                    reply = await self._ask(member, body, deadline, kvm.decode_fetch_reply_untrusted)
                    pages[member] = list(reply.records)
            except _Failed as e:
                failed[member] = e.reason

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(one, member)
        if not pages or (failed and level is not Consistency.ONE):
            self._count(op, level.value, "unavailable", started)
            reasons = ", ".join(f"{m}: {r}" for m, r in sorted(failed.items()))
            raise KvUnavailable(
                f"scan at {level.value} needs every ring member ({len(members)}), "
                f"{len(pages)} answered ({reasons})"
            )
        newest: dict[bytes, Record] = {}
        cutoff: bytes | None = None
        for records in pages.values():
            if len(records) >= limit and records:
                # A full page: keys past its last one were not sent.
                last = records[-1].key
                cutoff = last if cutoff is None else min(cutoff, last)
            for record in records:
                if record.namespace != namespace:
                    continue
                known = newest.get(record.key)
                if known is None or newer(record, known):
                    newest[record.key] = record
        pairs = [
            (key, record.value)
            for key, record in sorted(newest.items())
            if record.value is not None and (cutoff is None or key <= cutoff)
        ]
        self._count(op, level.value, "ok", started)
        return pairs[:limit]

    async def _scan_local(self, request: kvm.ScanRequest) -> list[Record]:
        records: list[Record] = await self.store.scan(
            request.namespace,
            request.prefix,
            limit=request.limit,
            after=request.after,
            tombstones=True,
        )
        return records

    def _extras(self, pkey: bytes, replicas: tuple[str, ...]) -> tuple[str, ...]:
        """Previous owners of ``pkey`` still worth asking (Rule 6)."""
        extras: list[str] = []
        for transition in self._transitions:
            for member in transition.view.ring.owners(pkey):
                if (
                    member not in replicas
                    and member not in extras
                    and self._state(member) is MemberState.ALIVE
                ):
                    extras.append(member)
        return tuple(extras)

    async def _read_fanout(
        self,
        namespace: str,
        key: bytes,
        tally: ReadTally,
        events: tuple[trio.Event, trio.Event],
        deadline: float,
    ) -> None:
        decided, answered = events
        request = kvm.ReadRequest(namespace, key)
        body = kvm.encode(request)

        async def one(member: str) -> None:
            try:
                if member == self.node_id:
                    record = await self._local(self.store.get(namespace, key))
                else:
                    reply = await self._ask(member, body, deadline, kvm.decode_read_reply_untrusted)
                    record = reply.record
                    if record is not None and (record.namespace, record.key) != (namespace, key):
                        raise _Failed("answered for another key", unavailable=False)
            except _Failed as failure:
                tally.fail(member, failure.reason)
            else:
                tally.answer(member, record)
            if tally.decided:
                decided.set()
            if not tally.pending:
                answered.set()

        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for member in (*tally.replicas, *tally.extras):
                    nursery.start_soon(one, member)
        decided.set()
        answered.set()
        # Rule 4: read repair, after the answer.
        plan = tally.plan()
        if plan.winner is None or not plan.stale:
            return
        if self._background > self.tuning.max_background:
            self.counters["kv_read_repairs_skipped"] += 1
            return
        repair = kvm.WriteRequest((plan.winner,))
        repair_body = kvm.encode(repair)
        until = trio.current_time() + self.config.timeout

        async def fix(member: str) -> None:
            try:
                if member == self.node_id:
                    await self._apply_write(self.node_id, repair)
                else:
                    await self._ask(member, repair_body, until, kvm.decode_write_reply_untrusted)
            except _Failed as failure:
                log.debug("read repair of %s failed: %s", member, failure.reason)
                return
            self.counters["kv_read_repairs"] += 1

        async with trio.open_nursery() as nursery:
            for member in plan.stale:
                nursery.start_soon(fix, member)

    async def _local(self, operation: Awaitable[Any]) -> Any:
        try:
            return await operation
        except StoreError as e:
            raise _Failed(f"store error: {_clip(str(e))}", unavailable=False) from None

    async def _ask(
        self,
        member: str,
        body: bytes,
        deadline: float,
        decode: Callable[[bytes], Any],
    ) -> Any:
        """One kv request to ``member``; every failure becomes :class:`_Failed`.

        ``call`` (``Daemon.call``) refuses a member that is not alive in this
        node's view at once (``not_member``: "not alive"), without the network.
        """
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise _Failed("timeout", unavailable=True)
        try:
            return decode(await self._call(member, kvm.SERVICE, body, remaining))
        except RpcUnavailable as e:
            raise _Failed(_UNAVAILABLE_REASONS.get(e.kind, e.kind), unavailable=True) from None
        except RpcError as e:
            raise _Failed(f"refused: {_clip(str(e))}", unavailable=False) from None
        except BadPacket as e:
            raise _Failed(f"bad answer: {_clip(str(e))}", unavailable=False) from None

    async def echo_fanout(
        self, key: bytes, consistency: str | Consistency | None = None, timeout: float = 10.0
    ) -> None:
        """BENCHMARK AID: what a request of ``key`` costs in round trips alone.

        Sends an empty ``_echo`` call to each member of the key's preference
        list and returns once as many answered as ``consistency`` needs (the
        rest finish in the background), exactly the messages a put sends,
        without the KV work. ``bench/data.py`` uses it as the raw ceiling.
        """
        level = self._level(consistency)
        view = self._require_view()
        replicas = view.ring.owners(placement_key("bench", key))
        needed = required(level, len(replicas))
        answered = 0
        done = trio.Event()
        deadline = trio.current_time() + timeout

        async def fanout() -> None:
            async def one(member: str) -> None:
                nonlocal answered
                remaining = max(deadline - trio.current_time(), 0.001)
                try:
                    await self._call(member, ECHO_SERVICE, b"", remaining)
                except (RpcError, RpcUnavailable):
                    return
                answered += 1
                if answered >= needed:
                    done.set()

            with trio.move_on_at(deadline):
                async with trio.open_nursery() as nursery:
                    for member in replicas:
                        nursery.start_soon(one, member)
            done.set()

        self._spawn(fanout)
        await done.wait()
        if answered < needed:
            raise KvUnavailable(f"echo: {answered} of {needed} answered")

    # ================================================================ replica

    async def handle(self, peer: str, body: bytes) -> bytes:
        """The ``kv`` RPC service: one request from ``peer`` (a verified member id)."""
        try:
            request = kvm.decode_request_untrusted(body)
        except BadPacket as e:
            self.counters["kv_bad_requests"] += 1
            raise RpcError(str(e)) from None
        try:
            reply = await self._serve(peer, request)
        except StoreError as e:
            raise RpcError(f"{self.node_id}: store error: {_clip(str(e), 200)}") from None
        except (ValueError, TypeError) as e:
            raise RpcError(f"{self.node_id}: refused: {_clip(str(e), 200)}") from None
        return kvm.encode(reply)

    async def _serve(self, peer: str, request: kvm.KvRequest) -> kvm.KvReply:
        if isinstance(request, kvm.WriteRequest):
            return await self._apply_write(peer, request)
        if isinstance(request, kvm.ReadRequest):
            return kvm.ReadReply(await self.store.get(request.namespace, request.key))
        if isinstance(request, kvm.StatsRequest):
            return await self._local_stats()
        if isinstance(request, kvm.CompareRequest):
            return await self._responder.answer(peer, request)
        if isinstance(request, kvm.EntriesRequest):
            if len(request.partitions) > 4 * sync.ENTRIES_PER_MESSAGE:
                raise RpcError("too many partitions in one entries request")
            entries = {p: await self.store.merkle_entries(p) for p in set(request.partitions)}
            return kvm.EntriesReply(entries)
        if isinstance(request, kvm.FetchRequest):
            return kvm.FetchReply(tuple(await self.store.records_for(request.keys)))
        if isinstance(request, kvm.ScanRequest):
            return kvm.FetchReply(tuple(await self._scan_local(request)))
        raise RpcError(f"unsupported kv request {type(request).__name__}")  # pragma: no cover

    async def _apply_write(self, peer: str, request: kvm.WriteRequest) -> kvm.WriteReply:
        """Store a write (or keep it as hints); raises _Failed locally, RpcError for peers."""
        records = request.records
        now = self._wall_ms()
        for record in records:
            try:
                self.clock.update(record.timestamp, now)
            except ClockDriftError as e:
                if request.fresh:  # Rule 3
                    self.counters["kv_clock_drift_refused"] += 1
                    message = f"{self.node_id} refused the write from {record.writer}: {e}"
                    if peer == self.node_id:
                        raise _Failed(f"refused: {_clip(str(e))}", unavailable=False) from None
                    raise RpcError(message) from None
        try:
            if request.hint_for is not None:
                kept = 0
                for record in records:
                    kept += await self.store.add_hint(request.hint_for, record)
                self.counters["kv_hints_stored"] += kept
                self._hints_wake.set()
                return kvm.WriteReply(0, kept)
            applied = await self.store.apply(records)
            await self._check_ownership(records, hint=request.fresh)
        except StoreError as e:
            if peer == self.node_id:
                raise _Failed(f"store error: {_clip(str(e))}", unavailable=False) from None
            raise
        return kvm.WriteReply(sum(applied))

    async def _check_ownership(self, records: Sequence[Record], *, hint: bool) -> None:
        """Records stored in a partition we do not own (a coordinator or a read
        repair going by another ring): hand them on soon; a coordinator's write
        is also hinted to the owners at once (Rule 5)."""
        view = self._view
        if view is None:
            return
        for record in records:
            pkey = record.placement_key
            if view.ring.partition_of(pkey) in view.owned:
                continue
            self.counters["kv_writes_not_owned"] += 1
            self._handoff_wake.set()
            if hint:
                for owner in view.ring.owners(pkey):
                    if owner != self.node_id:
                        await self.store.add_hint(owner, record)
                self._hints_wake.set()

    async def _local_stats(self) -> kvm.StatsReply:
        stats = await self.store.stats()
        self.hints_pending = stats.hints
        return kvm.StatsReply(
            keys=stats.keys,
            tombstones=stats.tombstones,
            bytes=stats.bytes,
            hints=stats.hints,
            handoffs=self.handoffs_pending,
            file_bytes=stats.file_bytes,
        )

    # ================================================================ load (status, ring)

    async def member_stats(
        self, members: Sequence[str], *, refresh: bool = False
    ) -> dict[str, kvm.StatsReply | None]:
        """The load of ``members``: this node's from its store, others' through a cached
        ``stats`` request (at most one per member per ``stats_ttl`` seconds).

        A member that does not answer within ``stats_timeout`` keeps its last
        known load (None if never known); with ``refresh`` the cache is skipped
        and a member that does not answer is None.
        """
        now = trio.current_time()
        result: dict[str, kvm.StatsReply | None] = {}
        ask: list[str] = []
        for member in members:
            if member == self.node_id:
                result[member] = await self._local_stats()
                continue
            cached = self._stats.get(member)
            alive = self._state(member) is MemberState.ALIVE
            if alive and (refresh or cached is None or now - cached[0] >= self.tuning.stats_ttl):
                ask.append(member)
            else:
                result[member] = None if cached is None else cached[1]
        body = kvm.encode(kvm.StatsRequest())
        deadline = now + self.tuning.stats_timeout

        async def one(member: str) -> None:
            try:
                reply = await self._ask(member, body, deadline, kvm.decode_stats_reply_untrusted)
            except _Failed:
                old = self._stats.get(member)
                kept = None if refresh or old is None else old[1]
                self._stats[member] = (now, kept)
                result[member] = kept
                return
            self._stats[member] = (now, reply)
            result[member] = reply

        async with trio.open_nursery() as nursery:
            for member in ask:
                nursery.start_soon(one, member)
        return result

    async def under_replicated(self) -> int:
        """Partitions with a suspect member in their preference list."""
        view = self._view
        if view is None:
            return 0
        down = [m for m in view.ring.members if self._state(m) is not MemberState.ALIVE]
        if not down:
            return 0
        return await trio.to_thread.run_sync(view.under_replicated, down)

    async def shared_roots(self) -> dict[str, str]:
        """Peer -> hex Merkle root over the partitions both replicate (equal: converged)."""
        view = self._require_view()
        roots: dict[str, str] = {}
        for peer, partitions in sorted(view.shared.items()):
            snapshot = await self.store.merkle_snapshot(partitions)
            roots[peer] = snapshot.root.hex()
        return roots

    # ================================================================ hints

    async def _hint_loop(self) -> None:
        window_ms = round(self.config.hint_window * 1000)
        while True:
            with trio.move_on_after(self.tuning.hint_interval):
                await self._hints_wake.wait()
            self._hints_wake = trio.Event()
            try:
                expired = await self.store.expire_hints(self._wall_ms(), window_ms)
                if expired:
                    self.counters["kv_hints_expired"] += expired
                    log.warning("dropped %d hint(s) older than the hint window", expired)
                targets = await self.store.hint_targets()
                self.hints_pending = sum(targets.values())
                for target in sorted(targets):
                    if self._state(target) is MemberState.ALIVE:
                        await self._deliver_hints(target)
                self.hints_pending = await self.store.hint_count()
            except StoreError as e:
                log.warning("hint delivery: %s", e)

    async def _deliver_hints(self, target: str) -> None:
        while True:
            hints = await self.store.hints_for(target, limit=self.tuning.hint_batch)
            if not hints:
                return
            if target == self.node_id:
                # Hints for ourselves (a write we took while our ring said
                # otherwise): apply them directly.
                await self.store.apply([h.record for h in hints])
            else:
                request = kvm.WriteRequest(tuple(h.record for h in hints))
                await self._handoff_rate.take(sum(sync.record_cost(h.record) for h in hints))
                deadline = trio.current_time() + max(self.config.timeout, 5.0)
                try:
                    await self._ask(
                        target, kvm.encode(request), deadline, kvm.decode_write_reply_untrusted
                    )
                except _Failed as failure:
                    log.debug("hints for %s not delivered: %s", target, failure.reason)
                    return
            await self.store.drop_hints([h.id for h in hints])
            self.counters["kv_hints_delivered"] += len(hints)
            log.debug("delivered %d hint(s) to %s", len(hints), target)

    # ================================================================ rebalancing

    async def _held_partitions(self) -> set[int]:
        snapshot = await self.store.merkle_snapshot()
        leaves = snapshot.level(snapshot.depth)
        return {i for i, digest in enumerate(leaves) if digest != EMPTY}

    def _plan_handoffs(self, held: set[int], changes: RingDiff | None) -> None:
        """What to push where after a ring change (or a periodic pass without one).

        Args:
            held: the partitions this node holds data in (:meth:`_held_partitions`).
            changes: the ring change, if this follows one.
        """
        # Always against the current ring: pushes planned for an older
        # change are pruned to it.
        view = self._view
        if view is None:
            return
        if changes is not None:
            me = self.node_id
            for change in changes.changes:
                p = change.partition
                if p not in held or me not in change.after or not change.gained:
                    continue
                # A member that lost the partition and is alive hands it off
                # itself (a join: it pushes to the joiner). Otherwise (a
                # death, or a mesh growing past fewer members than replicas)
                # the first surviving old owner pushes, one copy per gainer.
                lost = change.lost
                if lost and all(self._state(m) is MemberState.ALIVE for m in lost):
                    continue
                survivors = [m for m in change.before if m in change.after]
                if survivors[:1] == [me]:
                    self._pushes.setdefault(p, set()).update(change.gained)
        for p, targets in list(self._pushes.items()):
            targets &= set(view.ring.preference_list(p))
            targets.discard(self.node_id)
            if p not in view.owned or p not in held or not targets:
                del self._pushes[p]
        self._drops = held - view.owned

    async def _handoff_loop(self) -> None:
        while True:
            with trio.move_on_after(self.tuning.handoff_interval):
                await self._handoff_wake.wait()
            self._handoff_wake = trio.Event()
            if self._view is None:
                continue
            try:
                self._plan_handoffs(await self._held_partitions(), None)
            except StoreError as e:
                log.warning("handoff: %s", e)
                continue
            # Never move data while the ring is still changing.
            settle = self.tuning.handoff_settle
            # (A deadline that moves with each ring change, not an event to wait for.)
            while (wait := self._view_changed_at + settle - trio.current_time()) > 0:  # noqa: ASYNC110
                await trio.sleep(wait)
            view = self._view
            assert view is not None
            work = sorted(self._drops | set(self._pushes))
            if not work:
                continue
            log.info("handoff: %d partition(s) to hand off", len(work))
            limiter = trio.CapacityLimiter(self.tuning.handoff_concurrency)

            async def one(
                partition: int,
                view: RingView = view,
                limiter: trio.CapacityLimiter = limiter,
            ) -> None:
                async with limiter:
                    if self._view is view:
                        try:
                            await self._handoff(partition, view)
                        except StoreError as e:
                            log.warning("handoff of partition %d: %s", partition, e)

            async with trio.open_nursery() as nursery:
                for partition in work:
                    nursery.start_soon(one, partition)
            left = self.handoffs_pending
            if left:
                log.info("handoff: %d partition(s) still pending", left)
            else:
                log.info("handoff: done")

    async def _push(self, partition: int, member: str) -> bool:
        async def ask(peer: str, body: bytes) -> bytes:
            return await self._call(peer, kvm.SERVICE, body, max(self.config.timeout, 10.0))

        try:
            sent = await sync.push_partition(self.store, ask, member, partition, self._handoff_rate)
        except (RpcError, RpcUnavailable, BadPacket, StoreError) as e:
            log.debug("handoff of partition %d to %s failed: %s", partition, member, e)
            self.counters["kv_handoff_failures"] += 1
            return False
        self.counters["kv_handoff_records"] += sent
        return True

    async def _handoff(self, partition: int, view: RingView) -> None:
        owners = [m for m in view.ring.preference_list(partition) if m != self.node_id]
        if partition in self._drops:
            # Rule 5: every owner gets our copy before we delete it.
            if not owners or any(self._state(m) is not MemberState.ALIVE for m in owners):
                return  # an owner is suspect: wait for it (or for the ring to drop it)
            before = await self.store.merkle_entries(partition)
            for member in owners:
                if not await self._push(partition, member):
                    return
            if self._view is not view or await self.store.merkle_entries(partition) != before:
                return  # the ring or the partition changed meanwhile: next pass
            removed = await self.store.delete_partition(partition)
            self._drops.discard(partition)
            self.counters["kv_handoff_partitions"] += 1
            log.debug("handed off partition %d (%d records)", partition, removed)
            return
        targets = self._pushes.get(partition, set())
        for member in sorted(targets):
            if self._state(member) is MemberState.ALIVE and await self._push(partition, member):
                targets.discard(member)
        if not targets:
            self._pushes.pop(partition, None)
            self.counters["kv_handoff_partitions"] += 1

    async def _transition_loop(self) -> None:
        """Forget previous rings once no member has handoffs pending (Rule 6)."""
        while True:
            await trio.sleep(self.tuning.transition_poll)
            if not self._transitions:
                continue
            now = trio.current_time()
            self._transitions = [
                t for t in self._transitions if now - t.since < self.tuning.transition_max
            ]
            if not self._transitions:
                continue
            newest = max(t.since for t in self._transitions)
            if now - newest < self.tuning.transition_min or self.handoffs_pending:
                continue
            others = sorted(
                {
                    m
                    for t in self._transitions
                    for m in t.view.ring.members
                    if m != self.node_id and self._state(m) is MemberState.ALIVE
                }
            )
            try:
                stats = await self.member_stats(others, refresh=True)
            except StoreError as e:
                log.warning("rebalancing check: %s", e)
                continue
            if all(s is not None and s.handoffs == 0 for s in stats.values()):
                self._transitions = [t for t in self._transitions if t.since > newest]
                log.info("rebalancing finished: reads use the current ring only")

    # ================================================================ anti-entropy

    async def _anti_entropy_loop(self) -> None:
        interval = self.config.anti_entropy_interval
        while True:
            with trio.move_on_after(interval * self._rng.uniform(0.9, 1.1)):
                await self._ae_wake.wait()
            self._ae_wake = trio.Event()
            await self.anti_entropy_round()

    async def anti_entropy_round(self) -> dict[str, sync.SyncResult]:
        """Compare with every alive peer this node initiates with (the smaller id of a pair).

        Returns:
            peer -> what the exchange found and moved (failed peers are left out).
        """
        view = self._view
        results: dict[str, sync.SyncResult] = {}
        if view is None:
            return results

        async def ask(peer: str, body: bytes) -> bytes:
            timeout = max(self.config.timeout, 10.0)
            return await self._call(peer, kvm.SERVICE, body, timeout)

        for peer, partitions in sorted(view.shared.items()):
            # Each pair once per round: the exchange repairs both sides.
            if peer < self.node_id or self._state(peer) is not MemberState.ALIVE:
                continue
            try:
                result = await sync.anti_entropy(
                    self.store, ask, peer, partitions, self._ae_rate, self._rng.getrandbits(63)
                )
            except (RpcError, RpcUnavailable, BadPacket, StoreError) as e:
                self.counters["kv_anti_entropy_failures"] += 1
                log.debug("anti-entropy with %s failed: %s", peer, e)
                continue
            results[peer] = result
            self.counters["kv_anti_entropy_exchanges"] += 1
            if result.buckets:
                self.counters["kv_anti_entropy_pushed"] += result.pushed
                self.counters["kv_anti_entropy_pulled"] += result.pulled
                log.info(
                    "anti-entropy with %s: %d partition(s) differed, %d record(s) sent, "
                    "%d received",
                    peer,
                    result.buckets,
                    result.pushed,
                    result.pulled,
                )
        return results

    # ================================================================ tombstones

    async def _gc_loop(self) -> None:
        grace_ms = round(self.config.tombstone_grace * 1000)
        while True:
            await trio.sleep(self.tuning.gc_interval)
            try:
                while True:
                    limit = 10_000
                    dropped = await self.store.collect_tombstones(
                        self._wall_ms(), grace_ms, limit=limit
                    )
                    self.counters["kv_tombstones_collected"] += dropped
                    if dropped < limit:
                        break
                    await trio.lowlevel.checkpoint()
            except StoreError as e:
                log.warning("tombstone collection: %s", e)


@attrs.define(eq=False)
class _Pending:
    record: Record
    deadline: float
    done: trio.Event = attrs.field(factory=trio.Event)
    error: _Failed | None = None


class _WriteBatcher:
    """Coordinator writes on their way to one replica (Rule 8).

    At most ``batches_in_flight`` messages are outstanding; writes that
    arrive meanwhile wait and leave together in the next one, as one
    ``write`` request that the replica applies in one transaction. When the
    replica is idle a write leaves at once, alone, so coalescing adds no
    delay; under load it saves a message, a decode and a store job per write.
    Every write of a message shares its outcome: all stored, or all failed
    with the same reason.
    """

    def __init__(self, service: KvService, member: str) -> None:
        self._service = service
        self._member = member
        self._queue: list[_Pending] = []
        self._in_flight = 0

    async def write(self, record: Record, deadline: float) -> None:
        """Send ``record`` with the next message; raises :class:`_Failed` as ``_ask`` does."""
        pending = _Pending(record, deadline)
        self._queue.append(pending)
        self._kick()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def _kick(self) -> None:
        limit = self._service.tuning.batches_in_flight
        while self._queue and self._in_flight < limit:
            now = trio.current_time()
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < _BATCH_RECORDS and size < _BATCH_BYTES:
                pending = self._queue.pop(0)
                if pending.deadline <= now:  # its request gave up: do not send it late
                    pending.error = _Failed("timeout", unavailable=True)
                    pending.done.set()
                    continue
                batch.append(pending)
                size += sync.record_cost(pending.record)
            if not batch:
                return
            self._in_flight += 1
            try:
                self._service._spawn(self._send, batch)
            except KvUnavailable:
                self._in_flight -= 1
                for pending in batch:
                    pending.error = _Failed("stopping", unavailable=True)
                    pending.done.set()
                return

    async def _send(self, batch: list[_Pending]) -> None:
        service = self._service
        request = kvm.WriteRequest(tuple(p.record for p in batch), fresh=True)
        error: _Failed | None = None
        try:
            if self._member == service.node_id:
                await service._apply_write(service.node_id, request)
            else:
                deadline = max(p.deadline for p in batch)
                await service._ask(
                    self._member, kvm.encode(request), deadline, kvm.decode_write_reply_untrusted
                )
        except _Failed as failure:
            error = failure
        finally:
            self._in_flight -= 1
            for pending in batch:
                pending.error = error
                pending.done.set()
            if len(batch) > 1:
                service.counters["kv_writes_coalesced"] += len(batch) - 1
            self._kick()


class _Fallbacks:
    """Nodes past a key's preference list, in ring order, each given one hint (Rule 2)."""

    def __init__(
        self, service: KvService, view: RingView, pkey: bytes, replicas: tuple[str, ...]
    ) -> None:
        self._service = service
        self._view = view
        self._pkey = pkey
        self._replicas = replicas
        self._order: tuple[str, ...] | None = None
        self._taken: set[str] = set()

    def candidates(self) -> list[str]:
        """Untaken alive nodes past the list (this node last); each is taken when listed."""
        if self._order is None:
            ring = self._view.ring
            self._order = ring.owners(self._pkey, len(ring.members))[len(self._replicas) :]
        found = []
        for member in self._order:
            if member in self._taken:
                continue
            if self._service._state(member) is MemberState.ALIVE:
                self._taken.add(member)
                found.append(member)
                break
        found.append(self._service.node_id)
        return found
