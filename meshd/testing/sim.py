"""A deterministic discrete-event network for many sans-io cores on virtual time.

Strategy
--------
Every node is one :class:`~meshd.core.node.NodeCore` (or any object with the
same four methods). The network owns a single event heap of plain tuples
``(time, seq, kind, node, ...)``; ``seq`` grows monotonically, so two events
at the same virtual instant always run in the order they were scheduled. The
run loop pops an event, feeds the matching input to the node's core and
performs the outputs at once: datagrams and stream frames become new heap
entries one drawn latency later, events go to :attr:`SimNetwork.trace` and to
:attr:`SimNetwork.listeners`, and the node's next ``Tick`` is re-armed from
``core.next_deadline()``.

Rules
-----
Rule 1: all randomness comes from seeded :class:`random.Random` streams. The
network draws loss, latency and slow-node delays from its own stream
(``random.Random(f"{seed}/net")``); each core gets
``random.Random(f"{seed}/{node_id}/{generation}")``. No wall clock, no
threads, no hashing of ids into iteration order: the same seed and the same
calls give the same trace, byte for byte (:meth:`SimNetwork.trace_digest`).

Rule 2: a node has at most one live ``Tick`` in the heap. Re-arming bumps
the node's tick version; older heap entries are recognised by their version
and skipped (lazy deletion is cheaper than removing from a heap). A deadline
in the past is clamped to ``now``.

Rule 3: a process restart bumps the node's *generation*. Every delivery
carries the generation it was addressed to, and anything addressed to an
older generation (or to a crashed process) is dropped, like packets that
reach a port nobody listens on any more.

Rule 4: the hot path allocates only what the core itself needs (the input
value) plus one heap tuple; no attrs objects, no logging, attribute lookups
localised in :meth:`SimNetwork.run_until`. The simulator's own cost per event
is a few microseconds, against roughly 30 µs for a real core's ``handle``.

Network model
-------------
- Datagrams: dropped when the destination address is unknown, the
  destination process is crashed, the two nodes are in different partition
  groups (checked when sent *and* when they arrive, so a packet in flight when
  a partition starts is lost) or the link's loss draw says so. Otherwise they
  arrive ``uniform(lo, hi)`` seconds later; datagrams may be reordered.
- Streams (TCP) never lose or reorder frames but honour partitions and
  crashes: the requester gets ``StreamResult(error="timeout")`` when the peer
  is unreachable or does not answer within the stream's ``timeout``, and
  ``StreamResult(error="connection refused")`` one latency later when the
  peer's process is not running (or dies while the exchange is open) and the
  peer's host is reachable.
- Slow nodes (:class:`SlowSpec`) process inbound items (datagrams, stream
  frames, stream results) from a FIFO backlog: each is processed at
  ``max(arrival + uniform(min_delay, max_delay), previous item's time)``.
  Their ``Tick`` still fires on time. This is the overloaded-member case
  Lifeguard's local health addresses.

Per-link loss and latency: the most specific rule wins, in the order
directed link ``(src, dst)``, then "from ``src``", then "to ``dst``", then the
global setting.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs

from meshd.core.config import MembershipConfig
from meshd.core.inputs import (
    JoinRequested,
    LeaveRequested,
    MetadataChanged,
    PacketReceived,
    SendUserEvent,
    SendUserMessage,
    StreamReceived,
    StreamResult,
    Tick,
)
from meshd.core.outputs import OpenStream, ProbeCompleted, ReplyStream, SendPacket
from meshd.core.types import Address, Member, MemberState, NodeId

if TYPE_CHECKING:
    from meshd.core.inputs import Input
    from meshd.core.outputs import Event, Output

__all__ = [
    "CoreFactory",
    "SimCore",
    "SimNetwork",
    "SimNode",
    "SimNodeStats",
    "SimStats",
    "SlowSpec",
    "TraceEntry",
]

#: Port every simulated node listens on; addresses differ by host part.
SIM_PORT = 7946

#: Error strings the simulator reports in ``StreamResult.error``.
ERR_TIMEOUT = "timeout"
ERR_REFUSED = "connection refused"
ERR_NO_REPLY = "closed without reply"

# Heap entry kinds. Entries are tuples ``(time, seq, kind, node, a, b, c)``;
# ``seq`` is unique, so comparisons never look past it.
_K_TICK = 0  # a = tick version
_K_PACKET = 1  # datagram reaches the host: a = generation, b = data, c = sender SimNode
_K_PROCESS = 2  # slow node finally processes an item: a = generation, b = Input
_K_INBOUND = 3  # an input arrives (goes through the slow backlog): a = generation, b = Input
_K_STREAM_OPEN = 4  # request frame reaches the target: a = generation, b = _Conn
_K_STREAM_REPLY = 5  # reply frame reaches the requester: a = generation, b = _Conn, c = data
_K_STREAM_TIMEOUT = 6  # requester's stream deadline: a = generation, b = _Conn

#: A heap entry. The payload slots differ per kind (see above); ``Any`` keeps
#: the hot loop free of casts.
_Entry = tuple[float, int, int, "SimNode", Any, Any, Any]

# Ticks carry no data; one shared instance saves an allocation per tick.
_TICK = Tick()

# A node that keeps asking to be ticked at the very same instant is a core bug
# (its deadline never advances); fail loudly instead of looping forever.
_MAX_TICKS_AT_ONE_INSTANT = 100_000


class SimCore(Protocol):
    """What the simulator needs from a core: :class:`~meshd.core.node.NodeCore` fits."""

    def handle(self, event: Input, now: float) -> Sequence[Output]: ...

    def next_deadline(self) -> float | None: ...

    def members(self) -> Sequence[Member]: ...

    def seed_members(self, members: Iterable[Member], now: float) -> None: ...


class CoreFactory(Protocol):
    """Builds a core; called with keyword arguments only (``NodeCore`` itself fits)."""

    def __call__(
        self,
        *,
        node_id: NodeId,
        address: Address,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        meta: bytes,
    ) -> SimCore: ...


def _check_delay(lo: float, hi: float, what: str) -> None:
    if not 0.0 <= lo <= hi:
        raise ValueError(f"{what} needs 0 <= low <= high, got ({lo!r}, {hi!r})")


@attrs.frozen
class SlowSpec:
    """Inbound processing delay of a slow node, drawn uniformly per item.

    Attributes:
        min_delay: least extra seconds between an item's arrival and its processing.
        max_delay: most extra seconds (before queueing behind earlier items).
    """

    min_delay: float
    max_delay: float

    def __attrs_post_init__(self) -> None:
        _check_delay(self.min_delay, self.max_delay, "SlowSpec")


@attrs.frozen
class TraceEntry:
    """One event a core reported: at ``time``, ``observer``'s core said ``event``."""

    time: float
    observer: str
    event: Event


@attrs.frozen
class SimNodeStats:
    """Traffic counters of one node (or of the whole network, for totals).

    Attributes:
        packets_sent: datagrams the node's core asked to send.
        bytes_sent: payload bytes of those datagrams.
        packets_dropped: datagrams this node sent that never arrived (loss,
            partition, unknown address, destination crashed or restarted).
        packets_delivered: datagrams this node sent that arrived at a running
            destination. ``sent == dropped + delivered + in flight``.
        packets_received: datagrams delivered *to* this node.
        streams_opened: ``OpenStream`` actions of this node.
        stream_bytes_sent: frame bytes this node wrote on streams (requests
            it opened and replies it gave).
        inputs_handled: ``core.handle`` calls for this node (ticks included).
    """

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_dropped: int = 0
    packets_delivered: int = 0
    packets_received: int = 0
    streams_opened: int = 0
    stream_bytes_sent: int = 0
    inputs_handled: int = 0


@attrs.frozen
class SimStats:
    """A snapshot of :class:`SimNetwork` counters.

    Attributes:
        nodes: per-node counters, by node id.
        total: the sum over all nodes.
        events_processed: heap entries popped by the run loop (stale ones included).
    """

    nodes: dict[str, SimNodeStats]
    total: SimNodeStats
    events_processed: int


_STAT_FIELDS = tuple(a.name for a in attrs.fields(SimNodeStats))


@final
class _Counters:
    """Mutable twin of :class:`SimNodeStats` for the hot path (same field names)."""

    __slots__ = (
        "bytes_sent",
        "inputs_handled",
        "packets_delivered",
        "packets_dropped",
        "packets_received",
        "packets_sent",
        "stream_bytes_sent",
        "streams_opened",
    )

    def __init__(self) -> None:
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_dropped = 0
        self.packets_delivered = 0
        self.packets_received = 0
        self.streams_opened = 0
        self.stream_bytes_sent = 0
        self.inputs_handled = 0

    def snapshot(self) -> SimNodeStats:
        return SimNodeStats(*(getattr(self, name) for name in _STAT_FIELDS))


assert sorted(_Counters.__slots__) == sorted(_STAT_FIELDS)


@final
class _Conn:
    """One open stream exchange between ``requester`` and ``target``."""

    __slots__ = (
        "conn_id",
        "expect_reply",
        "replied",
        "request_id",
        "requester",
        "requester_gen",
        "target",
        "target_gen",
    )

    def __init__(
        self,
        conn_id: int,
        requester: SimNode,
        request_id: int,
        target: SimNode,
        expect_reply: bool,
    ) -> None:
        self.conn_id = conn_id
        self.requester = requester
        self.requester_gen = requester.generation
        self.request_id = request_id
        self.target = target
        self.target_gen = target.generation
        self.expect_reply = expect_reply
        self.replied = False


@final
@attrs.define(eq=False)
class SimNode:
    """One simulated host: a name, an address and (while running) a core.

    Created by :meth:`SimNetwork.add_node`; read it, do not mutate it (use the
    network's methods).

    Attributes:
        node_id: the node's name.
        address: its gossip/stream address, ``("10.x.y.z", 7946)``.
        config: membership configuration its cores are built with.
        meta: metadata its next core starts with (follows ``set_meta``).
        slow: inbound processing delay, or None for a healthy node.
        core: the running core, None while the process is crashed.
        generation: 0 for the first process, +1 per restart.
        left: a graceful leave was requested for the current process.
        join_via: node ids of the last ``join`` (used again by ``restart``).
    """

    node_id: str
    address: Address
    config: MembershipConfig
    meta: bytes
    slow: SlowSpec | None
    core: SimCore | None = None
    generation: int = 0
    left: bool = False
    join_via: tuple[str, ...] = ()
    # Hot-path state, owned by SimNetwork.
    _counters: _Counters = attrs.field(factory=_Counters, init=False, repr=False)
    _tick_version: int = attrs.field(default=0, init=False, repr=False)
    _tick_at: float | None = attrs.field(default=None, init=False, repr=False)
    _backlog_until: float = attrs.field(default=0.0, init=False, repr=False)
    _group: int = attrs.field(default=0, init=False, repr=False)
    _last_tick: float = attrs.field(default=-1.0, init=False, repr=False)
    _ticks_at_instant: int = attrs.field(default=0, init=False, repr=False)

    @property
    def running(self) -> bool:
        """Whether the node's process is up (not crashed)."""
        return self.core is not None


def _default_core_factory() -> CoreFactory:
    # Imported lazily so the simulator (and tests with fake cores) work even
    # while the real core is being written.
    from meshd.core.node import NodeCore

    return NodeCore


@final
class SimNetwork:
    """Many cores on one virtual clock, connected by a seeded, faulty network.

    Args:
        seed: makes the whole run reproducible.
        latency: default one-way delay range ``(low, high)`` in seconds.
        loss: default probability that a datagram is dropped.
        core_factory: builds each node's core; defaults to ``NodeCore``.
        record_trace: keep every event in :attr:`trace` (turn off for very
            long benchmark runs that only need :attr:`listeners`).

    Attributes:
        trace: every event output, in order, as :class:`TraceEntry`.
        listeners: callables ``(time, observer, event)`` invoked for each
            event as it happens. They must only observe, never call back
            into the network.
    """

    def __init__(
        self,
        seed: int,
        *,
        latency: tuple[float, float] = (0.0005, 0.002),
        loss: float = 0.0,
        core_factory: CoreFactory | None = None,
        record_trace: bool = True,
    ) -> None:
        _check_delay(*latency, "latency")
        _check_loss(loss)
        self.seed = seed
        self._factory = core_factory if core_factory is not None else _default_core_factory()
        self._rng = random.Random(f"{seed}/net")
        self._now = 0.0
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._conn_ids = itertools.count(1)
        self._nodes: dict[str, SimNode] = {}
        self._by_address: dict[Address, SimNode] = {}
        self._conns: dict[int, _Conn] = {}
        self._events_processed = 0
        self._record_trace = record_trace
        self.trace: list[TraceEntry] = []
        self.listeners: list[Callable[[float, str, Event], None]] = []
        # Loss/latency: global defaults plus optional overrides.
        self._loss = loss
        self._lat_lo, self._lat_span = latency[0], latency[1] - latency[0]
        self._loss_rules: dict[tuple[str | None, str | None], float] = {}
        self._lat_rules: dict[tuple[str | None, str | None], tuple[float, float]] = {}

    # ------------------------------------------------------------ queries

    @property
    def now(self) -> float:
        """Virtual seconds since the network was created."""
        return self._now

    def node(self, node_id: str) -> SimNode:
        """The node called ``node_id``.

        Raises:
            KeyError: no such node.
        """
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no simulated node {node_id!r}") from None

    @property
    def node_ids(self) -> list[str]:
        """Every node ever added, in the order added."""
        return list(self._nodes)

    def alive_nodes(self) -> list[str]:
        """Nodes whose process is running (not crashed), in the order added."""
        return [n.node_id for n in self._nodes.values() if n.core is not None]

    def view(self, observer: str) -> dict[str, MemberState]:
        """``observer``'s membership table: member id → state (itself included).

        Raises:
            KeyError: no such node.
            ValueError: ``observer`` is crashed and has no view.
        """
        core = self._running_core(observer)
        return {str(m.node_id): m.state for m in core.members()}

    def converged(self, nodes: Iterable[str] | None = None) -> bool:
        """Whether the views of ``nodes`` (default: all) agree with reality.

        A node of the set is *up* when its process runs and it has not been
        asked to leave. The set has converged when every up node sees every
        up node as ALIVE, and sees no node of the set that is down (crashed
        or left) as ALIVE or SUSPECT (DEAD, LEFT or forgotten are fine).

        It stops at the first disagreement, so polling it is cheap while the
        mesh has not converged; a positive answer reads every view (about a
        second for 1000 real cores).
        """
        chosen = [self.node(n) for n in nodes] if nodes is not None else list(self._nodes.values())
        up = [n.node_id for n in chosen if n.core is not None and not n.left]
        down = [n.node_id for n in chosen if n.core is None or n.left]
        alive, suspect = MemberState.ALIVE, MemberState.SUSPECT
        for observer in up:
            view = self.view(observer)
            for member in up:
                if view.get(member) is not alive:
                    return False
            for member in down:
                if view.get(member) in (alive, suspect):
                    return False
        return True

    def node_stats(self, node_id: str) -> SimNodeStats:
        """Traffic counters of ``node_id`` since the start or the last :meth:`reset_stats`."""
        return self.node(node_id)._counters.snapshot()

    @property
    def stats(self) -> SimStats:
        """Per-node counters and their totals."""
        per_node = {nid: n._counters.snapshot() for nid, n in self._nodes.items()}
        total = SimNodeStats(
            *(sum(getattr(s, name) for s in per_node.values()) for name in _STAT_FIELDS)
        )
        return SimStats(nodes=per_node, total=total, events_processed=self._events_processed)

    def reset_stats(self) -> None:
        """Zero every traffic counter (e.g. after a warm-up phase)."""
        for n in self._nodes.values():
            n._counters = _Counters()
        self._events_processed = 0

    def trace_digest(self) -> str:
        """SHA-256 (hex) of a canonical rendering of :attr:`trace`.

        Two runs with the same seed and the same calls give the same digest.
        """
        h = hashlib.sha256()
        for entry in self.trace:
            h.update(f"{entry.time!r}\t{entry.observer}\t{entry.event!r}\n".encode())
        return h.hexdigest()

    def format_trace(self, last: int | None = None) -> str:
        """The trace (or its ``last`` entries) as text, for test failure reports."""
        entries = self.trace if last is None else self.trace[-last:]
        lines = [f"# SimNetwork seed={self.seed} now={self._now:.6f} events={len(self.trace)}"]
        lines += [f"{e.time:12.6f} {e.observer:>12} {e.event!r}" for e in entries]
        return "\n".join(lines)

    # ------------------------------------------------------------ nodes

    def add_node(
        self,
        node_id: str,
        *,
        config: MembershipConfig | None = None,
        meta: bytes = b"",
        slow: SlowSpec | None = None,
    ) -> SimNode:
        """Start a node (a fresh core) at ``now``; it does not join anyone.

        Its address is ``("10.x.y.z", 7946)``, derived from the order of
        addition: the first node is ``10.0.0.1``.

        Raises:
            ValueError: ``node_id`` already exists.
        """
        if node_id in self._nodes:
            raise ValueError(f"simulated node {node_id!r} already exists")
        index = len(self._nodes)
        host = f"10.{index // (254 * 256) % 256}.{index // 254 % 256}.{index % 254 + 1}"
        node = SimNode(
            node_id=node_id,
            address=(host, SIM_PORT),
            config=config if config is not None else MembershipConfig.lan(),
            meta=meta,
            slow=slow,
        )
        self._nodes[node_id] = node
        self._by_address[node.address] = node
        self._start_core(node)
        return node

    def join(self, node_id: str, via: Sequence[str]) -> None:
        """Feed ``JoinRequested`` with the addresses of ``via`` to ``node_id``, now."""
        node = self.node(node_id)
        node.join_via = tuple(via)
        addresses = tuple(self.node(v).address for v in via)
        self._command(node, JoinRequested(addresses))

    def leave(self, node_id: str) -> None:
        """Ask ``node_id`` to leave gracefully (``LeaveRequested``), now."""
        node = self.node(node_id)
        node.left = True
        self._command(node, LeaveRequested())

    def set_meta(self, node_id: str, meta: bytes) -> None:
        """Publish new metadata for ``node_id`` (``MetadataChanged``), now."""
        node = self.node(node_id)
        self._command(node, MetadataChanged(meta))
        node.meta = meta

    def broadcast(self, node_id: str, payload: bytes) -> None:
        """Make ``node_id`` gossip a user message (``SendUserMessage``), now."""
        self._command(self.node(node_id), SendUserMessage(payload))

    def user_event(self, node_id: str, payload: bytes) -> None:
        """Make ``node_id`` send a user event (``SendUserEvent``), now: every member re-gossips it."""
        self._command(self.node(node_id), SendUserEvent(payload))

    def bootstrap_full_mesh(self) -> None:
        """Pre-form the mesh: every running node learns every other as alive at incarnation 0.

        Uses ``core.seed_members``, so no join traffic and no events; this is
        how large simulations start without spending virtual minutes joining.
        """
        now = self._now
        running = [n for n in self._nodes.values() if n.core is not None]
        members = [
            Member(
                node_id=NodeId(n.node_id),
                address=n.address,
                incarnation=0,
                state=MemberState.ALIVE,
                meta=n.meta,
                state_changed_at=now,
            )
            for n in running
        ]
        for node in running:
            assert node.core is not None
            node.core.seed_members([m for m in members if m.node_id != node.node_id], now)
            self._rearm(node, now)

    def crash(self, node_id: str) -> None:
        """Kill ``node_id``'s process (SIGKILL): its core is discarded.

        Nothing is delivered to it any more; streams it had open as the target
        fail for their requesters with ``connection refused`` after one
        latency; streams it had opened are forgotten.

        Raises:
            ValueError: the node is already crashed.
        """
        node = self.node(node_id)
        if node.core is None:
            raise ValueError(f"simulated node {node_id!r} is already crashed")
        now = self._now
        node.core = None
        node._tick_version += 1
        node._tick_at = None
        node._backlog_until = 0.0
        for conn_id, conn in list(self._conns.items()):
            if conn.requester is node:
                del self._conns[conn_id]
            elif conn.target is node and conn.requester._group == node._group:
                # The dead host's kernel resets the connection. (Across a
                # partition the reset is lost too: the requester times out.)
                del self._conns[conn_id]
                requester = conn.requester
                self._push(
                    now + self._latency(node, requester),
                    _K_INBOUND,
                    requester,
                    conn.requester_gen,
                    StreamResult(conn.request_id, error=ERR_REFUSED),
                )

    def restart(self, node_id: str, *, join_via: Sequence[str] | None = None) -> None:
        """Start a fresh process for ``node_id`` (crashing the old one if needed), then join.

        The new core has the same id, address, config and current metadata,
        empty state and a new rng stream (generation + 1). It joins through
        ``join_via``; when None, through the still-running nodes of its last
        :meth:`join`, or else through up to three other running nodes. A lone
        node does not join.
        """
        node = self.node(node_id)
        if node.core is not None:
            self.crash(node_id)
        node.generation += 1
        node.left = False
        self._start_core(node)
        if join_via is None:
            running = set(self.alive_nodes())
            join_via = [v for v in node.join_via if v != node_id and v in running]
            if not join_via:
                join_via = [n for n in self.alive_nodes() if n != node_id][:3]
        if join_via:
            self.join(node_id, join_via)

    def set_slow(self, node_id: str, slow: SlowSpec | None) -> None:
        """Make ``node_id`` slow to process inbound items (None: healthy again).

        Items already in its backlog keep their processing times, and new
        items still queue behind them.
        """
        self.node(node_id).slow = slow

    # ------------------------------------------------------------ faults

    def set_loss(self, loss: float, *, src: str | None = None, dst: str | None = None) -> None:
        """Set the datagram loss probability: globally, per node or per directed link.

        With ``src`` and ``dst``: the link ``src → dst``. With only ``src``:
        every link from ``src``; only ``dst``: every link to ``dst``. The most
        specific rule applies (link, then source, then destination, then global).
        """
        _check_loss(loss)
        if src is None and dst is None:
            self._loss = loss
        else:
            self._check_names(src, dst)
            self._loss_rules[(src, dst)] = loss

    def set_latency(
        self, lo: float, hi: float, *, src: str | None = None, dst: str | None = None
    ) -> None:
        """Set the one-way delay range ``[lo, hi]`` seconds; scoping as in :meth:`set_loss`."""
        _check_delay(lo, hi, "latency")
        if src is None and dst is None:
            self._lat_lo, self._lat_span = lo, hi - lo
        else:
            self._check_names(src, dst)
            self._lat_rules[(src, dst)] = (lo, hi - lo)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes in different groups cannot exchange packets or streams.

        Nodes not named in any group form one more, implicit group together.
        A new partition replaces the previous one.

        Raises:
            ValueError: a node is named in two groups.
        """
        assignment: dict[str, int] = {}
        for number, group in enumerate(groups, start=1):
            for node_id in group:
                self.node(node_id)
                if node_id in assignment:
                    raise ValueError(f"simulated node {node_id!r} is in two partition groups")
                assignment[node_id] = number
        for node_id, node in self._nodes.items():
            node._group = assignment.get(node_id, 0)

    def heal(self) -> None:
        """Remove the partition: everyone can reach everyone again."""
        for node in self._nodes.values():
            node._group = 0

    # ------------------------------------------------------------ time

    def run_for(self, dt: float) -> None:
        """Advance virtual time by ``dt`` seconds, processing everything due."""
        self.run_until(self._now + dt)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, check_every: float = 0.1
    ) -> bool:
        """Advance time until ``predicate()`` holds, checking every ``check_every`` seconds.

        Returns:
            whether it held (checked once more at the timeout).
        """
        if check_every <= 0:
            raise ValueError(f"check_every must be > 0, got {check_every!r}")
        deadline = self._now + timeout
        while True:
            if predicate():
                return True
            if self._now >= deadline:
                return False
            self.run_until(min(self._now + check_every, deadline))

    def run_until(self, t: float) -> None:
        """Process every event due at or before ``t``; then ``now`` is ``t``.

        Raises:
            ValueError: ``t`` is in the past.
        """
        if t < self._now:
            raise ValueError(f"cannot run back in time: now={self._now!r}, asked {t!r}")
        heap = self._heap
        pop = heapq.heappop
        process = self._process
        arrive = self._arrive
        conns = self._conns
        popped = 0
        entry: _Entry | None = None
        try:
            while heap and heap[0][0] <= t:
                entry = pop(heap)
                popped += 1
                now = entry[0]
                kind = entry[2]
                node = entry[3]
                if kind == _K_TICK:
                    if entry[4] != node._tick_version:
                        continue  # superseded or the process crashed
                    self._now = now
                    if now == node._last_tick:
                        node._ticks_at_instant += 1
                        if node._ticks_at_instant > _MAX_TICKS_AT_ONE_INSTANT:
                            raise RuntimeError(
                                f"{node.node_id}: next_deadline() stays at {now!r} after a Tick"
                            )
                    else:
                        node._last_tick = now
                        node._ticks_at_instant = 0
                    node._tick_at = None
                    node._counters.inputs_handled += 1
                    process(node, node.core.handle(_TICK, now), now)  # type: ignore[union-attr]
                elif kind == _K_PACKET:
                    sender: SimNode = entry[6]
                    if (
                        entry[4] != node.generation
                        or node.core is None
                        or sender._group != node._group
                    ):
                        sender._counters.packets_dropped += 1
                        continue
                    self._now = now
                    sender._counters.packets_delivered += 1
                    node._counters.packets_received += 1
                    arrive(node, PacketReceived(entry[5], sender.address), now)
                elif kind == _K_PROCESS:
                    if entry[4] != node.generation or node.core is None:
                        continue
                    self._now = now
                    node._counters.inputs_handled += 1
                    process(node, node.core.handle(entry[5], now), now)
                elif kind == _K_INBOUND:
                    if entry[4] != node.generation or node.core is None:
                        continue
                    self._now = now
                    arrive(node, entry[5], now)
                elif kind == _K_STREAM_OPEN:
                    conn: _Conn = entry[5]
                    if (
                        conns.get(conn.conn_id) is not conn
                        or conn.requester._group != node._group
                        or entry[4] != node.generation
                        or node.core is None
                    ):
                        continue  # closed, cut off or target gone: the requester times out
                    self._now = now
                    arrive(
                        node,
                        StreamReceived(conn.conn_id, entry[6], conn.requester.address),
                        now,
                    )
                    if not conn.expect_reply:
                        # Fire-and-forget: done once the frame is delivered.
                        del conns[conn.conn_id]
                        requester = conn.requester
                        if (
                            requester.generation == conn.requester_gen
                            and requester.core is not None
                        ):
                            arrive(requester, StreamResult(conn.request_id), now)
                elif kind == _K_STREAM_REPLY:
                    conn = entry[5]
                    if conns.get(conn.conn_id) is not conn or conn.target._group != node._group:
                        continue  # timed out already, or cut off
                    del conns[conn.conn_id]
                    if entry[4] != node.generation or node.core is None:
                        continue
                    self._now = now
                    data: bytes | None = entry[6]
                    result = (
                        StreamResult(conn.request_id, data=data)
                        if data is not None
                        else StreamResult(conn.request_id, error=ERR_NO_REPLY)
                    )
                    arrive(node, result, now)
                elif kind == _K_STREAM_TIMEOUT:
                    conn = entry[5]
                    if conns.get(conn.conn_id) is not conn:
                        continue  # finished in time
                    del conns[conn.conn_id]
                    if entry[4] != node.generation or node.core is None:
                        continue
                    self._now = now
                    arrive(node, StreamResult(conn.request_id, error=ERR_TIMEOUT), now)
                else:  # pragma: no cover - kinds are private constants
                    raise AssertionError(f"unknown heap entry kind {kind!r}")
        except Exception as exc:
            doing = repr(entry[2:6]) if entry is not None else "a command"
            exc.add_note(f"SimNetwork seed={self.seed} now={self._now!r} while processing {doing}")
            raise
        finally:
            self._events_processed += popped
        self._now = t

    # ------------------------------------------------------------ internals

    def _running_core(self, node_id: str) -> SimCore:
        core = self.node(node_id).core
        if core is None:
            raise ValueError(f"simulated node {node_id!r} is crashed")
        return core

    def _check_names(self, *names: str | None) -> None:
        for name in names:
            if name is not None:
                self.node(name)

    def _start_core(self, node: SimNode) -> None:
        node.core = self._factory(
            node_id=NodeId(node.node_id),
            address=node.address,
            config=node.config,
            rng=random.Random(f"{self.seed}/{node.node_id}/{node.generation}"),
            now=self._now,
            meta=node.meta,
        )
        node._backlog_until = 0.0
        self._rearm(node, self._now)

    def _command(self, node: SimNode, inp: Input) -> None:
        """Hand a local command (join, leave, …) to the node's core right now."""
        if node.core is None:
            raise ValueError(f"simulated node {node.node_id!r} is crashed")
        node._counters.inputs_handled += 1
        self._process(node, node.core.handle(inp, self._now), self._now)

    def _push(
        self, t: float, kind: int, node: SimNode, a: object, b: object = None, c: object = None
    ) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, node, a, b, c))

    def _latency(self, src: SimNode, dst: SimNode) -> float:
        if self._lat_rules:
            lo, span = self._link_latency(src.node_id, dst.node_id)
        else:
            lo, span = self._lat_lo, self._lat_span
        return lo + span * self._rng.random()

    def _link_latency(self, src: str, dst: str) -> tuple[float, float]:
        rules = self._lat_rules
        rule = rules.get((src, dst)) or rules.get((src, None)) or rules.get((None, dst))
        return rule if rule is not None else (self._lat_lo, self._lat_span)

    def _link_loss(self, src: str, dst: str) -> float:
        rules = self._loss_rules
        for key in ((src, dst), (src, None), (None, dst)):
            loss = rules.get(key)
            if loss is not None:
                return loss
        return self._loss

    def _arrive(self, node: SimNode, inp: Input, now: float) -> None:
        """An inbound item reached ``node``: process it now, or queue it if slow."""
        slow = node.slow
        if slow is None and node._backlog_until <= now:
            node._counters.inputs_handled += 1
            self._process(node, node.core.handle(inp, now), now)  # type: ignore[union-attr]
            return
        at = now
        if slow is not None:
            at += slow.min_delay + (slow.max_delay - slow.min_delay) * self._rng.random()
        if at < node._backlog_until:
            at = node._backlog_until
        node._backlog_until = at
        entry = (at, next(self._seq), _K_PROCESS, node, node.generation, inp, None)
        heapq.heappush(self._heap, entry)

    def _process(self, node: SimNode, outputs: Sequence[Output], now: float) -> None:
        """Perform ``node``'s outputs, then re-arm its tick."""
        if outputs:
            counters = node._counters
            push = heapq.heappush
            heap = self._heap
            seq = self._seq
            for out in outputs:
                if type(out) is SendPacket:
                    data = out.data
                    counters.packets_sent += 1
                    counters.bytes_sent += len(data)
                    dst = self._by_address.get(out.address)
                    if dst is None or dst.core is None or dst._group != node._group:
                        counters.packets_dropped += 1
                        continue
                    if self._loss_rules or self._lat_rules:
                        loss = self._link_loss(node.node_id, dst.node_id)
                        lo, span = self._link_latency(node.node_id, dst.node_id)
                    else:
                        loss, lo, span = self._loss, self._lat_lo, self._lat_span
                    rnd = self._rng.random
                    if loss and rnd() < loss:
                        counters.packets_dropped += 1
                        continue
                    at = now + lo + span * rnd()
                    push(heap, (at, next(seq), _K_PACKET, dst, dst.generation, data, node))
                elif type(out) is OpenStream:
                    self._open_stream(node, out, now)
                elif type(out) is ReplyStream:
                    self._reply_stream(node, out, now)
                else:
                    self._emit(node, out, now)  # type: ignore[arg-type]
        self._rearm(node, now)

    def _rearm(self, node: SimNode, now: float) -> None:
        core = node.core
        if core is None:
            return
        deadline = core.next_deadline()
        if deadline != node._tick_at:
            node._tick_version += 1
            node._tick_at = deadline
            if deadline is not None:
                at = deadline if deadline > now else now
                entry = (at, next(self._seq), _K_TICK, node, node._tick_version, None, None)
                heapq.heappush(self._heap, entry)

    def _emit(self, node: SimNode, event: Event, now: float) -> None:
        # Probe timings (one per member per second) would swamp the trace.
        if self._record_trace and type(event) is not ProbeCompleted:
            self.trace.append(TraceEntry(now, node.node_id, event))
        for listener in self.listeners:
            listener(now, node.node_id, event)

    def _open_stream(self, node: SimNode, out: OpenStream, now: float) -> None:
        counters = node._counters
        counters.streams_opened += 1
        counters.stream_bytes_sent += len(out.data)
        target = self._by_address.get(out.address)
        reachable = target is not None and target._group == node._group
        if target is None or (reachable and target.core is None):
            # Nobody listens there: the peer's host answers with a reset.
            if target is not None:
                latency = self._latency(node, target)
            else:
                latency = self._lat_lo + self._lat_span * self._rng.random()
            refused = StreamResult(out.request_id, error=ERR_REFUSED)
            self._push(now + latency, _K_INBOUND, node, node.generation, refused)
            return
        conn = _Conn(next(self._conn_ids), node, out.request_id, target, out.expect_reply)
        self._conns[conn.conn_id] = conn
        self._push(now + out.timeout, _K_STREAM_TIMEOUT, node, node.generation, conn)
        if reachable:
            at = now + self._latency(node, target)
            self._push(at, _K_STREAM_OPEN, target, target.generation, conn, out.data)
        # else: across a partition the SYN goes nowhere; the timeout reports it.

    def _reply_stream(self, node: SimNode, out: ReplyStream, now: float) -> None:
        conn = self._conns.get(out.conn_id)
        if conn is None or conn.target is not node or conn.target_gen != node.generation:
            return  # the requester gave up, crashed, or never waited for a reply
        if not conn.expect_reply or conn.replied:
            return
        conn.replied = True
        if out.data is not None:
            node._counters.stream_bytes_sent += len(out.data)
        requester = conn.requester
        if requester._group != node._group:
            return  # cut off: the requester times out
        self._push(
            now + self._latency(node, requester),
            _K_STREAM_REPLY,
            requester,
            conn.requester_gen,
            conn,
            out.data,
        )


def _check_loss(loss: float) -> None:
    if not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss must be within [0, 1], got {loss!r}")
