"""NodeCore: one member of the mesh, as a sans-io state machine.

Theory of operation. The runtime (or the simulator) owns the clock, the
sockets and the randomness source; this class owns the protocol. It is
driven by two calls:

* ``handle(input, now) -> list[Output]`` — a datagram arrived, a stream
  exchange finished, a deadline passed (``Tick``), or the operator asked for
  a join, a leave or new metadata. The returned list holds *actions* for the
  runtime (send a packet, open or answer a stream) and *events* for
  observers (member joined, suspected, failed …), in the order they happened.
* ``next_deadline() -> float | None`` — when the runtime must send the next
  ``Tick``. Extra ticks are harmless; missing one only delays the protocol.

The mechanisms live one per file and this class routes between them:
``swim.py`` (probe order, probe and ping-req records), ``membership.py``
(the state transition rules), ``suspicion.py`` and ``awareness.py``
(Lifeguard), ``broadcast.py`` (the transmit-limited queue), ``pushpull.py``
(anti-entropy), ``timing.py`` (every formula), ``codec.py`` (bytes).

Rule 1: nothing here blocks or performs I/O; an I/O failure comes back as an
input (``StreamResult.error``).

Rule 2: bytes from the network can only produce a ``PacketRejected`` event
and a counter, never an exception out of ``handle``. Exceptions out of
``handle`` are for caller misuse (metadata too large, for example).

Rule 3: every update that other members must learn is queued on the
broadcast queue under the subject node's id, so a newer update about a
member replaces an older one that has not finished spreading.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

import attrs

from meshd.core import codec, timing
from meshd.core.awareness import Awareness
from meshd.core.broadcast import TransmitLimitedQueue
from meshd.core.config import MembershipConfig
from meshd.core.inputs import (
    Input,
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
from meshd.core.membership import MemberEntry, MemberTable, Outcome, SuspicionParams
from meshd.core.messages import (
    Ack,
    Alive,
    Dead,
    Leave,
    Message,
    Nack,
    Ping,
    PingReq,
    PushNodeState,
    PushPull,
    Suspect,
    UserEvent,
    UserMessage,
)
from meshd.core.outputs import (
    JoinFailed,
    JoinSucceeded,
    LeaveCompleted,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    OpenStream,
    Output,
    PacketRejected,
    ProbeCompleted,
    ReplyStream,
    SendPacket,
    UserEventReceived,
    UserMessageReceived,
)
from meshd.core.pushpull import checksum, to_messages
from meshd.core.swim import IndirectRelay, Probe, ProbeOrder
from meshd.core.types import Address, Member, MemberState, NodeId, ProtocolRange, Rng
from meshd.core.userevents import LamportClock, SeenEvents
from meshd.errors import BadPacket, LocalProtocolError, MetadataTooLarge

__all__ = ["STREAM_REFUSED", "CoreStatistics", "NodeCore"]

#: ``StreamResult.error`` the runtime reports when nothing listens at the
#: address (TCP RST). For a probe this is positive evidence that the target
#: process is gone, so the probe may conclude without waiting for ping-reqs.
STREAM_REFUSED = "connection refused"

# Bytes kept for the compound's array header (msgpack array16: 3 bytes).
_HEADER_RESERVE = 3
_SEQ_MASK = (1 << 64) - 1
# Direct reminders sent to a suspect before our timer may declare it dead
# (one, halfway to the deadline). Only members still suspecting by then send
# one, which are mostly those that missed the refutation.
_REFUTE_CHECKS = 1
_INF = math.inf


@attrs.frozen
class CoreStatistics:
    """A snapshot for status displays and metrics."""

    node_id: NodeId
    incarnation: int
    health_score: int
    members: dict[str, int]
    broadcast_queue_depth: int
    counters: dict[str, int]


@attrs.define(eq=False, slots=True)
class _StreamRequest:
    kind: str  # "ping", "join", "reconnect", "push_pull", "push"
    address: Address
    seq: int = 0
    checksum: int = 0
    peer: NodeId | None = None


class NodeCore:
    """The membership protocol of one node (SWIM + Lifeguard), without I/O.

    Args:
        node_id: this node's name, unique in the mesh.
        address: where this node's gossip and stream listeners are reachable.
        config: protocol tuning (``MembershipConfig.lan()`` and friends).
        rng: randomness for peer selection and timer jitter.
        now: the current time on the runtime's monotonic clock, in seconds.
        meta: initial node metadata (tags).
        protocol: protocol versions this node speaks.

    Raises:
        MetadataTooLarge: ``meta`` exceeds ``config.meta_max_size``.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        address: Address,
        config: MembershipConfig,
        rng: Rng,
        now: float,
        meta: bytes = b"",
        protocol: ProtocolRange = ProtocolRange(),
    ) -> None:
        self._check_meta(meta, config)
        self._id = node_id
        self._address = address
        self._config = config
        self._rng = rng
        self._incarnation = 0
        self._meta = meta
        self._protocol = protocol
        self._started_at = now

        self._table = MemberTable()
        #: Member ids in a list, for O(1) random picks (gossip targets, helpers).
        self._ids: list[NodeId] = []
        self._queue = TransmitLimitedQueue(config.retransmit_mult)
        self._awareness = Awareness(config.awareness_max_multiplier if config.lifeguard else 1)

        self._order = ProbeOrder(rng)
        self._probe: Probe | None = None
        # Timers start at a random phase so that nodes started together do
        # not probe and gossip in lock step.
        self._next_probe_at = now + rng.random() * config.probe_interval
        self._relays: dict[int, IndirectRelay] = {}
        # Sequence numbers start at a random point each boot, so acks recorded
        # in an earlier life of this node cannot answer this life's probes.
        self._seq = rng.randrange(0, 1 << 32)
        #: Suspects to remind of their suspicion: id -> (when, reminders left).
        self._refute_checks: dict[NodeId, tuple[float, int]] = {}
        # The earliest suspicion deadline or reminder, cached: next_deadline()
        # runs after every input, and a mesh with slow members can hold many
        # suspects at once. Any change to a suspicion marks it dirty.
        self._suspicion_next = _INF
        self._suspicion_dirty = False

        self._requests: dict[int, _StreamRequest] = {}
        self._request_id = 0

        # The gossip timer is a grid (like a ticker) that is not woken while
        # the broadcast queue is empty: see _align_gossip_timer.
        self._gossip_at = now + rng.random() * config.gossip_interval
        self._push_pull_at = (
            now + rng.random() * config.push_pull_interval
            if config.push_pull_interval > 0
            else _INF
        )
        self._reconnect_at = (
            now + config.reconnect_interval if config.reconnect_interval > 0 else _INF
        )
        #: Reaped dead members: id -> (address, retry until).
        self._reaped: dict[NodeId, tuple[Address, float]] = {}
        #: Members back from dead: id -> when to exchange full state with them.
        self._catch_up: dict[NodeId, float] = {}
        self._catch_up_at = _INF

        self._leaving = False
        self._leave_done = False
        self._leave_deadline = _INF

        self._stats: Counter[str] = Counter()
        self._out: list[Output] = []

        # User events (core/userevents.py): Lamport-stamped, de-duplicated,
        # re-gossiped by every member that sees one for the first time.
        self._user_clock = LamportClock()
        self._user_seen = SeenEvents()

        # Announce ourselves; the alive spreads once we know anyone.
        self._queue_self_alive()

        self._dispatch: dict[type, Callable[[Input, float], None]] = {
            PacketReceived: self._on_packet,  # type: ignore[dict-item]
            Tick: self._on_tick,  # type: ignore[dict-item]
            StreamReceived: self._on_stream_received,  # type: ignore[dict-item]
            StreamResult: self._on_stream_result,  # type: ignore[dict-item]
            JoinRequested: self._on_join_requested,  # type: ignore[dict-item]
            LeaveRequested: self._on_leave_requested,  # type: ignore[dict-item]
            MetadataChanged: self._on_metadata_changed,  # type: ignore[dict-item]
            SendUserMessage: self._on_send_user_message,  # type: ignore[dict-item]
            SendUserEvent: self._on_send_user_event,  # type: ignore[dict-item]
        }
        self._message_handlers: dict[type, Callable[[Message, Address, float], None]] = {
            Ping: self._on_ping,  # type: ignore[dict-item]
            PingReq: self._on_ping_req,  # type: ignore[dict-item]
            Ack: self._on_ack,  # type: ignore[dict-item]
            Nack: self._on_nack,  # type: ignore[dict-item]
            Alive: self._on_alive,  # type: ignore[dict-item]
            Suspect: self._on_suspect,  # type: ignore[dict-item]
            Dead: self._on_dead,  # type: ignore[dict-item]
            Leave: self._on_leave,  # type: ignore[dict-item]
            UserMessage: self._on_user_message,  # type: ignore[dict-item]
            UserEvent: self._on_user_event,  # type: ignore[dict-item]
        }

    # ================================================================ public API

    @property
    def node_id(self) -> NodeId:
        return self._id

    @property
    def address(self) -> Address:
        return self._address

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 is healthy, higher means "I am slow"."""
        return self._awareness.score

    def handle(self, event: Input, now: float) -> list[Output]:
        """Feed one input; return the actions and events it caused, in order.

        Raises:
            MetadataTooLarge: a ``MetadataChanged`` carried too much metadata.
            LocalProtocolError: the input is not allowed now (e.g. metadata
                change after leaving, a user message too large for a packet).
            TypeError: ``event`` is not an input type.
        """
        self._out = out = []
        try:
            handler = self._dispatch[type(event)]
        except KeyError:
            raise TypeError(f"NodeCore.handle() got {type(event).__name__}, not an input") from None
        idle = not self._queue
        handler(event, now)
        if idle and self._queue:
            self._align_gossip_timer(now)
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        """When the runtime must deliver the next ``Tick`` (None: nothing pending)."""
        if self._leave_done:
            return None
        t = _INF
        p = self._probe
        if p is not None:
            t = p.deadline if p.indirect_sent else p.indirect_at
        elif not self._leaving:
            t = self._next_probe_at
        if self._relays:
            t = min(t, min(r.deadline for r in self._relays.values()))
        if self._table.suspects or self._refute_checks:
            t = min(t, self._suspicion_wakeup())
        if self._queue and self._gossip_at < t:
            t = self._gossip_at
        if not self._leaving:
            t = min(t, self._push_pull_at, self._reconnect_at, self._catch_up_at)
        else:
            t = min(t, self._leave_deadline)
        return None if t == _INF else t

    def members(self) -> list[Member]:
        """This node's view of the mesh, itself first."""
        return [self._self_member(), *(e.snapshot() for e in self._table)]

    def member(self, node_id: NodeId) -> Member | None:
        """One member as this node sees it (None when unknown)."""
        if node_id == self._id:
            return self._self_member()
        e = self._table.get(node_id)
        return None if e is None else e.snapshot()

    def statistics(self) -> CoreStatistics:
        """Counters and gauges for ``meshctl status`` and metrics."""
        states = Counter(e.state.name.lower() for e in self._table)
        states[self._self_state().name.lower()] += 1
        return CoreStatistics(
            node_id=self._id,
            incarnation=self._incarnation,
            health_score=self._awareness.score,
            members={s.name.lower(): states.get(s.name.lower(), 0) for s in MemberState},
            broadcast_queue_depth=len(self._queue),
            counters=dict(self._stats),
        )

    def seed_members(self, members: Iterable[Member], now: float) -> None:
        """Learn members without gossiping about them.

        For simulations that start from an already formed mesh (a thousand
        joins would flood every queue for minutes) and for tests. A real
        node learns members through join and gossip.
        """
        for m in members:
            if m.node_id == self._id or m.node_id in self._table:
                continue
            self._table.add(
                MemberEntry(m.node_id, m.address, m.incarnation, m.state, m.meta, m.protocol, now)
            )
            self._learned(m.node_id)

    # ================================================================ inputs

    def _on_tick(self, _: Tick, now: float) -> None:
        self._check_probe(now)
        if self._relays:
            self._check_relays(now)
        if self._table.suspects or self._refute_checks:
            self._check_suspicions(now)
        if self._queue and now >= self._gossip_at:
            self._gossip(now)
        if not self._leaving:
            if now >= self._push_pull_at:
                self._start_push_pull(now)
            if now >= self._reconnect_at:
                self._reconnect(now)
            if now >= self._catch_up_at:
                self._start_catch_up(now)
        elif not self._leave_done:
            self._check_leave(now)

    def _on_packet(self, ev: PacketReceived, now: float) -> None:
        self._stats["packets_received"] += 1
        try:
            messages = codec.decode_packet_untrusted(ev.data)
        except BadPacket as e:
            self._reject(str(e), ev.source)
            return
        handlers = self._message_handlers
        for msg in messages:
            handlers[type(msg)](msg, ev.source, now)

    def _on_join_requested(self, ev: JoinRequested, now: float) -> None:
        for address in ev.addresses:
            self._start_join(address, "join")

    def _on_leave_requested(self, _: LeaveRequested, now: float) -> None:
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        self._leave_deadline = now + self._config.leave_timeout
        self._queue.queue(codec.encode_message(Leave(self._incarnation, self._id)), key=self._id)
        if not any(e.state in (MemberState.ALIVE, MemberState.SUSPECT) for e in self._table):
            self._finish_leave()  # nobody to tell

    def _on_metadata_changed(self, ev: MetadataChanged, now: float) -> None:
        self._check_meta(ev.meta, self._config)
        if self._leaving:
            raise LocalProtocolError("cannot publish metadata after leaving the mesh")
        self._meta = ev.meta
        self._incarnation += 1
        self._queue_self_alive()
        self._out.append(MemberUpdated(self._self_member()))

    def _on_send_user_message(self, ev: SendUserMessage, now: float) -> None:
        encoded = codec.encode_message(UserMessage(self._id, ev.payload))
        room = codec.COMPOUND_BUDGET - _HEADER_RESERVE
        if len(encoded) > room:
            raise LocalProtocolError(
                f"user message is {len(ev.payload)} bytes; at most "
                f"{len(ev.payload) - (len(encoded) - room)} bytes fit in one gossip packet"
            )
        self._queue.queue(encoded)

    def _on_send_user_event(self, ev: SendUserEvent, now: float) -> None:
        if self._leaving:
            raise LocalProtocolError("cannot send user events after leaving the mesh")
        ltime = self._user_clock.time + 1
        encoded = codec.encode_message(UserEvent(self._id, ltime, ev.payload))
        room = codec.COMPOUND_BUDGET - _HEADER_RESERVE
        if len(encoded) > room:
            raise LocalProtocolError(
                f"user event is {len(ev.payload)} bytes; at most "
                f"{len(ev.payload) - (len(encoded) - room)} bytes fit in one gossip packet"
            )
        self._user_clock.tick()
        self._user_seen.first_time(self._id, ltime, ev.payload, now)
        self._stats["user_events_sent"] += 1
        self._queue.queue(encoded)
        self._out.append(UserEventReceived(self._id, ltime, ev.payload))

    # ================================================================ gossip messages

    def _on_ping(self, msg: Ping, source: Address, now: float) -> None:
        if msg.target != self._id:
            # A ping for a name that is not ours: whoever had this address
            # before us. Answering would vouch for a node that is gone.
            self._stats["pings_misdirected"] += 1
            return
        self._send(source, [codec.encode_message(Ack(msg.seq))])

    def _on_ping_req(self, msg: PingReq, source: Address, now: float) -> None:
        seq = self._next_seq()
        self._relays[seq] = IndirectRelay(
            origin_seq=msg.seq,
            origin_address=source,
            want_nack=msg.want_nack,
            deadline=now + self._config.probe_timeout,
        )
        self._stats["ping_reqs_relayed"] += 1
        self._send(msg.target_address, [codec.encode_message(Ping(seq, msg.target, self._id))])

    def _on_ack(self, msg: Ack, source: Address, now: float) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            rtt = now - p.started_at
            if source == p.address:
                entry = self._table.get(p.target)
                if entry is not None:
                    entry.srtt, entry.rttvar = timing.rtt_update(entry.srtt, entry.rttvar, rtt)
            self._out.append(ProbeCompleted(p.target, rtt))
            # "Direct" for local health means: answered within the configured
            # probe timeout, however early we escalated.
            self._probe_succeeded(p, now, direct=rtt <= self._config.probe_timeout)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.origin_address, [codec.encode_message(Ack(relay.origin_seq))])

    def _on_nack(self, msg: Nack, source: Address, now: float) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            p.nacks += 1

    def _on_alive(self, msg: Alive, source: Address, now: float) -> None:
        if msg.node == self._id:
            self._alive_about_self(msg)
            return
        outcome = self._table.apply_alive(msg, now)
        if outcome is Outcome.IGNORED:
            return
        if outcome is Outcome.CONFLICT:
            self._stats["name_conflicts"] += 1
            return
        self._suspicion_dirty = True
        self._queue.queue(codec.encode_message(msg), key=msg.node)
        entry = self._table.get(msg.node)
        assert entry is not None
        if outcome is Outcome.JOINED:
            self._learned(msg.node)
            self._out.append(MemberJoined(entry.snapshot()))
        elif outcome is Outcome.REJOINED:
            self._reaped.pop(msg.node, None)
            self._out.append(MemberJoined(entry.snapshot()))
            self._schedule_catch_up(msg.node, now)
        elif outcome is Outcome.RECOVERED:
            self._out.append(MemberRecovered(entry.snapshot()))
        elif outcome is Outcome.UPDATED:
            self._out.append(MemberUpdated(entry.snapshot()))

    def _on_suspect(self, msg: Suspect, source: Address, now: float) -> None:
        if msg.node == self._id:
            self._accused(msg.incarnation, source)
            return
        outcome = self._table.apply_suspect(msg, now, self._suspicion_params())
        if outcome is Outcome.IGNORED:
            return
        self._suspicion_dirty = True
        # Confirmations are re-gossiped too: every member counts them.
        self._queue.queue(codec.encode_message(msg), key=msg.node)
        if outcome is Outcome.SUSPECTED:
            entry = self._table.get(msg.node)
            assert entry is not None
            self._stats["suspicions"] += 1
            self._schedule_refute_check(entry, now, _REFUTE_CHECKS)
            self._out.append(MemberSuspected(entry.snapshot(), msg.accuser))
        elif outcome is Outcome.CONFIRMED and msg.node in self._refute_checks:
            # A confirmation pulled the deadline in: keep the reminder
            # halfway to the new deadline, not after it.
            entry = self._table.get(msg.node)
            assert entry is not None and entry.suspicion is not None
            at, left = self._refute_checks[msg.node]
            if at > now + (entry.suspicion.deadline - now) / 2:
                self._schedule_refute_check(entry, now, left)

    def _on_dead(self, msg: Dead, source: Address, now: float) -> None:
        if msg.node == self._id:
            self._accused(msg.incarnation, source)
            return
        if self._table.apply_dead(msg, now) is Outcome.FAILED:
            self._suspicion_dirty = True
            self._queue.queue(codec.encode_message(msg), key=msg.node)
            entry = self._table.get(msg.node)
            assert entry is not None
            self._out.append(MemberFailed(entry.snapshot(), msg.accuser))

    def _on_leave(self, msg: Leave, source: Address, now: float) -> None:
        if msg.node == self._id:
            # Someone says we left; an echo of our own leave, or a leave of a
            # previous process with our name. Refute unless we are leaving.
            self._accused(msg.incarnation, source)
            return
        if self._table.apply_leave(msg, now) is Outcome.LEFT:
            self._suspicion_dirty = True
            self._queue.queue(codec.encode_message(msg), key=msg.node)
            entry = self._table.get(msg.node)
            assert entry is not None
            self._out.append(MemberLeft(entry.snapshot()))

    def _on_user_message(self, msg: UserMessage, source: Address, now: float) -> None:
        if msg.sender != self._id:
            self._out.append(UserMessageReceived(msg.sender, msg.payload))

    def _on_user_event(self, msg: UserEvent, source: Address, now: float) -> None:
        self._user_clock.witness(msg.ltime)
        if not self._user_seen.first_time(msg.origin, msg.ltime, msg.payload, now):
            self._stats["user_events_duplicate"] += 1
            return
        if msg.origin == self._id:
            # Our own event, forgotten and echoed back (core/userevents.py
            # Rule 2): we delivered it when we sent it.
            self._stats["user_events_duplicate"] += 1
            return
        self._stats["user_events_received"] += 1
        # Infection-style, like membership updates: every member that learns
        # of the event passes it on (unkeyed: events never replace each other).
        self._queue.queue(codec.encode_message(msg))
        self._out.append(UserEventReceived(msg.origin, msg.ltime, msg.payload))

    # ================================================================ refutation

    def _alive_about_self(self, msg: Alive) -> None:
        if self._leaving or msg.incarnation < self._incarnation:
            return
        if (
            msg.incarnation == self._incarnation
            and msg.meta == self._meta
            and msg.address == self._address
        ):
            return  # our own alive, echoed back
        # Someone holds a newer or different alive about us: a previous
        # process with our name, or a node claiming it. Out-bid it.
        self._refute(msg.incarnation)

    def _accused(self, incarnation: int, source: Address) -> None:
        if self._leaving:
            return
        if incarnation < self._incarnation:
            # We refuted this already, but the sender has not heard: the
            # refutation's gossip may have missed it (it is probabilistic,
            # and small meshes retransmit few times). Tell it directly; one
            # small packet, and its suspicion timer cannot fire on stale news.
            if source != self._address:
                self._stats["stale_accusations_answered"] += 1
                self._send(source, [self._encoded_self_alive()])
            return
        self._refute(incarnation)

    def _refute(self, accused_incarnation: int) -> None:
        # SWIM §4.2: only we may raise our incarnation; a higher one than the
        # accusation overrides it everywhere. Being accused also means peers
        # could not hear us in time: a hint that we are the slow one (Lifeguard).
        self._incarnation = max(self._incarnation, accused_incarnation) + 1
        self._awareness.apply_delta(1)
        self._stats["refutations"] += 1
        self._queue_self_alive()

    # ================================================================ probing

    def _check_probe(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.indirect_at:
                self._start_indirect(p, now)
            if now >= p.deadline:
                self._probe_failed(p, now, penalize=True)
        if self._probe is None and not self._leaving and now >= self._next_probe_at:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        # A ticker: the next probe is due at the first grid point after now.
        # A failed probe that ran past it (health-scaled period) starts the
        # next one as soon as it ends; missed ticks are skipped, not replayed.
        interval = self._config.probe_interval
        self._next_probe_at += (math.floor((now - self._next_probe_at) / interval) + 1) * interval
        target = self._next_probe_target(now)
        if target is None:
            return
        seq = self._next_seq()
        parts = [codec.encode_message(Ping(seq, target.node_id, self._id))]
        if self._config.lifeguard and target.state is MemberState.SUSPECT:
            # Buddy system: tell a suspect it is suspected in the same
            # packet, so it can refute at once instead of waiting for gossip.
            parts.append(
                codec.encode_message(Suspect(target.incarnation, target.node_id, self._id))
            )
        self._probe = Probe(
            seq=seq,
            target=target.node_id,
            incarnation=target.incarnation,
            address=target.address,
            started_at=now,
            indirect_at=now
            + timing.escalation_timeout(
                target.srtt,
                target.rttvar,
                self._config.probe_timeout_min,
                self._config.probe_timeout,
            ),
            deadline=now + self._awareness.scale(self._config.probe_interval),
        )
        self._stats["probes"] += 1
        self._send(target.address, parts)

    def _next_probe_target(self, now: float) -> MemberEntry | None:
        reshuffled = False
        while True:
            node = self._order.next()
            if node is None:
                if reshuffled:
                    return None  # nobody is probeable
                self._reap(now)
                self._order.reset(list(self._ids))
                reshuffled = True
                continue
            entry = self._table.get(node)
            if entry is not None and entry.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return entry

    def _start_indirect(self, p: Probe, now: float) -> None:
        p.indirect_sent = True
        target = p.target
        helpers = self._k_random(
            self._config.indirect_checks,
            lambda e: e.state is MemberState.ALIVE and e.node_id != target,
        )
        lifeguard = self._config.lifeguard
        for h in helpers:
            req = PingReq(p.seq, target, p.address, self._id, want_nack=lifeguard)
            self._send(h.address, [codec.encode_message(req)])
        self._stats["indirect_probes"] += 1
        p.expected_nacks = len(helpers) if lifeguard else 0
        if self._config.tcp_fallback_ping:
            rid = self._new_request(_StreamRequest("ping", p.address, seq=p.seq))
            p.stream_request = rid
            self._out.append(
                OpenStream(
                    request_id=rid,
                    address=p.address,
                    data=codec.encode_stream(Ping(p.seq, target, self._id)),
                    expect_reply=True,
                    timeout=max(p.deadline - now, self._config.probe_timeout),
                    peer=target,
                )
            )

    def _probe_succeeded(self, p: Probe, now: float, *, direct: bool) -> None:
        self._probe = None
        if direct:
            self._awareness.apply_delta(-1)

    def _probe_failed(self, p: Probe, now: float, *, penalize: bool) -> None:
        self._probe = None
        self._stats["probes_failed"] += 1
        if penalize:
            # Lifeguard: helpers that could not reach the target send nacks.
            # Missing nacks mean our own packets are not getting through, so
            # the failure is (also) ours: raise local health. Without helpers
            # there is no evidence either way; count the failure against us.
            if p.expected_nacks > 0:
                missing = p.expected_nacks - p.nacks
                if missing > 0:
                    self._awareness.apply_delta(missing)
            else:
                self._awareness.apply_delta(1)
        entry = self._table.get(p.target)
        if entry is None or entry.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        self._on_suspect(Suspect(p.incarnation, p.target, self._id), self._address, now)

    def _check_relays(self, now: float) -> None:
        expired = [seq for seq, r in self._relays.items() if r.deadline <= now]
        for seq in expired:
            r = self._relays.pop(seq)
            if r.want_nack:
                self._send(r.origin_address, [codec.encode_message(Nack(r.origin_seq))])

    def _schedule_refute_check(self, entry: MemberEntry, now: float, left: int) -> None:
        # Halfway to the deadline: a suspect that refuted long ago has had
        # time to be heard; if we still suspect it, its alive missed us.
        assert entry.suspicion is not None
        self._refute_checks[entry.node_id] = (now + (entry.suspicion.deadline - now) / 2, left)
        self._suspicion_dirty = True

    def _suspicion_wakeup(self) -> float:
        """The earliest suspicion deadline or refutation reminder (cached)."""
        if self._suspicion_dirty:
            suspects = self._table.suspects
            for node in [n for n in self._refute_checks if n not in suspects]:
                del self._refute_checks[node]  # refuted or dead: no reminder
            t = min((e.suspicion.deadline for e in suspects.values()), default=_INF)  # type: ignore[union-attr]
            self._suspicion_next = min([t, *(at for at, _ in self._refute_checks.values())])
            self._suspicion_dirty = False
        return self._suspicion_next

    def _check_suspicions(self, now: float) -> None:
        self._suspicion_dirty = True
        suspects = self._table.suspects
        for node in [n for n, (at, _) in self._refute_checks.items() if at <= now]:
            _, left = self._refute_checks.pop(node)
            entry = suspects.get(node)
            if entry is None:
                continue  # refuted or dead meanwhile
            # Refutation check: the refutation is gossip, and gossip can miss
            # a member (more often in small meshes, under loss). Before our
            # timer declares a healthy member dead on stale news, remind it
            # directly; it answers with its newer alive (see _accused) or
            # refutes now. One small packet per suspicion and reminder.
            assert entry.suspicion is not None
            notice = Suspect(entry.incarnation, node, entry.suspicion.accuser)
            self._stats["refute_checks"] += 1
            self._send(entry.address, [codec.encode_message(notice)])
            if left > 1:
                self._schedule_refute_check(entry, now, left - 1)
        due = [e for e in suspects.values() if e.suspicion.deadline <= now]  # type: ignore[union-attr]
        for e in due:
            # Our suspicion timer fired: we declare the member dead.
            self._on_dead(Dead(e.incarnation, e.node_id, self._id), self._address, now)

    def _suspicion_params(self) -> SuspicionParams:
        c = self._config
        n = len(self._table) + 1
        min_timeout = timing.suspicion_min_timeout(c.suspicion_mult, n, c.probe_interval)
        if not c.lifeguard:
            return SuspicionParams(k=0, min_timeout=min_timeout, max_timeout=min_timeout)
        return SuspicionParams(
            k=timing.suspicion_confirmations_needed(c.suspicion_mult, n),
            min_timeout=min_timeout,
            max_timeout=timing.suspicion_max_timeout(min_timeout, c.suspicion_max_timeout_mult),
        )

    # ================================================================ dissemination

    def _send(self, address: Address, parts: list[bytes]) -> None:
        """Send ``parts`` in one packet, filling the rest with queued broadcasts."""
        if self._queue:
            room = codec.COMPOUND_BUDGET - _HEADER_RESERVE - sum(map(len, parts))
            if room > 0:
                parts.extend(self._queue.get_broadcasts(0, room, len(self._table) + 1))
        data = codec.encode_packet(codec.encode_compound(parts))
        self._stats["packets_sent"] += 1
        self._stats["bytes_sent"] += len(data)
        self._out.append(SendPacket(address, data))

    def _gossip(self, now: float) -> None:
        interval = self._config.gossip_interval
        self._gossip_at += interval
        if self._gossip_at <= now:
            self._align_gossip_timer(now)
        dead_window = self._config.gossip_to_the_dead_time

        def eligible(e: MemberEntry) -> bool:
            s = e.state
            if s is MemberState.ALIVE or s is MemberState.SUSPECT:
                return True
            # The recently dead keep hearing gossip so that a member wrongly
            # declared dead learns it and refutes.
            return s is MemberState.DEAD and now - e.state_changed_at < dead_window

        n = len(self._table) + 1
        room = codec.COMPOUND_BUDGET - _HEADER_RESERVE
        for target in self._k_random(self._config.gossip_nodes, eligible):
            parts = self._queue.get_broadcasts(0, room, n)
            if not parts:
                break
            data = codec.encode_packet(codec.encode_compound(parts))
            self._stats["packets_sent"] += 1
            self._stats["bytes_sent"] += len(data)
            self._out.append(SendPacket(target.address, data))
        if self._leaving and not self._leave_done:
            self._check_leave(now)

    def _align_gossip_timer(self, now: float) -> None:
        # While the queue was empty the gossip grid was not ticking; move the
        # next gossip to the first grid point after now, as a ticker would.
        if self._gossip_at < now:
            interval = self._config.gossip_interval
            self._gossip_at += math.ceil((now - self._gossip_at) / interval) * interval

    def _queue_self_alive(self) -> None:
        self._queue.queue(self._encoded_self_alive(), key=self._id)

    def _encoded_self_alive(self) -> bytes:
        alive = Alive(self._incarnation, self._id, self._address, self._meta, self._protocol)
        return codec.encode_message(alive)

    # ================================================================ push-pull, join, reconnect

    def _start_push_pull(self, now: float) -> None:
        c = self._config
        self._push_pull_at = now + timing.push_pull_scale(
            c.push_pull_interval, len(self._table) + 1
        )
        peers = self._k_random(1, lambda e: e.state is MemberState.ALIVE)
        if peers:
            self._push_pull_with(peers[0].node_id, peers[0].address)

    def _push_pull_with(self, node: NodeId, address: Address) -> None:
        mine = checksum(self._local_state())
        rid = self._new_request(_StreamRequest("push_pull", address, checksum=mine, peer=node))
        self._stats["push_pulls"] += 1
        self._out.append(
            OpenStream(
                request_id=rid,
                address=address,
                data=codec.encode_stream(PushPull(join=False, checksum=mine)),
                expect_reply=True,
                timeout=self._config.tcp_timeout,
                peer=node,
            )
        )

    def _schedule_catch_up(self, node: NodeId, now: float) -> None:
        """Exchange full state with a member back from dead, one probe interval later.

        After a partition heals, one reconnect merges two tables, but the
        refutations that follow (each side was "dead" to the other) travel
        by gossip only among members each side already believes alive, and
        may run out of retransmits before the other side counts. A
        checksum-first push-pull with each returning member, once its own
        refutation had time to happen, carries whatever gossip missed; when
        the tables already agree it costs one small frame. At most one runs
        per probe interval.
        """
        if self._leaving or node in self._catch_up:
            return
        self._catch_up[node] = now + self._config.probe_interval
        self._catch_up_at = min(self._catch_up_at, self._catch_up[node])

    def _start_catch_up(self, now: float) -> None:
        due = [n for n, t in self._catch_up.items() if t <= now]
        if due:
            node = min(due, key=lambda n: (self._catch_up[n], n))
            del self._catch_up[node]
            entry = self._table.get(node)
            if entry is not None and entry.state is MemberState.ALIVE:
                self._stats["catch_up_push_pulls"] += 1
                self._push_pull_with(node, entry.address)
        if not self._catch_up:
            self._catch_up_at = _INF
        else:
            # Rate limit: the next one a probe interval from now at the earliest.
            self._catch_up_at = max(now + self._config.probe_interval, min(self._catch_up.values()))

    def _start_join(self, address: Address, kind: str) -> None:
        state = tuple(self._local_state())
        rid = self._new_request(_StreamRequest(kind, address))
        self._out.append(
            OpenStream(
                request_id=rid,
                address=address,
                data=codec.encode_stream(
                    PushPull(join=True, checksum=checksum(state), members=state)
                ),
                expect_reply=True,
                timeout=self._config.tcp_timeout,
            )
        )

    def _reconnect(self, now: float) -> None:
        c = self._config
        self._reconnect_at = now + c.reconnect_interval
        self._reaped = {n: v for n, v in self._reaped.items() if v[1] > now}
        candidates = [
            e.address
            for e in self._table
            if e.state in (MemberState.DEAD, MemberState.LEFT)
            and now - e.state_changed_at < c.reconnect_timeout
        ]
        candidates.extend(address for address, _ in self._reaped.values())
        if not candidates:
            return
        # Serf's rule: with F failed and A alive members, each member tries
        # with probability F/A, so the mesh as a whole makes about F attempts
        # per interval however large it is.
        alive = 1 + sum(1 for e in self._table if e.state is MemberState.ALIVE)
        if self._rng.random() > len(candidates) / alive:
            return
        address = candidates[self._rng.randrange(0, len(candidates))]
        self._stats["reconnects"] += 1
        self._start_join(address, "reconnect")

    def _on_stream_received(self, ev: StreamReceived, now: float) -> None:
        try:
            msg = codec.decode_stream_untrusted(ev.data)
        except BadPacket as e:
            self._reject(str(e), ev.source)
            self._out.append(ReplyStream(ev.conn_id, None))
            return
        reply: Message | None = None
        if isinstance(msg, Ping):
            if msg.target == self._id:
                reply = Ack(msg.seq)
        elif isinstance(msg, PushPull):
            self._stats["push_pulls_answered"] += 1
            if msg.members is None:
                state = tuple(self._local_state())
                mine = checksum(state)
                reply = PushPull(
                    join=False, checksum=mine, members=None if mine == msg.checksum else state
                )
            else:
                self._merge(msg.members, now)
                if msg.join:
                    # Reply after merging, so the joiner gets our refutations
                    # of anything its state said about us (heals faster).
                    state = tuple(self._local_state())
                    reply = PushPull(join=False, checksum=checksum(state), members=state)
        else:
            self._reject(f"unexpected {type(msg).__name__} on a stream", ev.source)
        self._out.append(
            ReplyStream(ev.conn_id, None if reply is None else codec.encode_stream(reply))
        )

    def _on_stream_result(self, ev: StreamResult, now: float) -> None:
        req = self._requests.pop(ev.request_id, None)
        if req is None:
            return
        kind = req.kind
        if kind == "push":
            return
        if kind == "ping":
            self._on_stream_ping_result(req, ev, now)
            return
        if ev.error is not None or ev.data is None:
            if kind == "join":
                self._out.append(JoinFailed(req.address, ev.error or "no reply"))
            self._stats[f"{kind}_failures"] += 1
            return
        try:
            msg = codec.decode_stream_untrusted(ev.data)
        except BadPacket as e:
            self._reject(str(e), req.address)
            if kind == "join":
                self._out.append(JoinFailed(req.address, f"bad reply: {e}"))
            return
        if not isinstance(msg, PushPull):
            self._reject(f"expected push-pull, got {type(msg).__name__}", req.address)
            if kind == "join":
                self._out.append(JoinFailed(req.address, "peer did not answer with its state"))
            return
        if msg.members is not None:
            self._merge(msg.members, now)
        if kind == "join":
            self._out.append(JoinSucceeded(req.address, len(msg.members or ())))
        elif kind == "push_pull" and msg.checksum != req.checksum:
            # The peer's table differs from ours: it sent its state (merged
            # above); now push ours so both sides converge.
            state = tuple(self._local_state())
            rid = self._new_request(_StreamRequest("push", req.address, peer=req.peer))
            self._out.append(
                OpenStream(
                    request_id=rid,
                    address=req.address,
                    data=codec.encode_stream(
                        PushPull(join=False, checksum=checksum(state), members=state)
                    ),
                    expect_reply=False,
                    timeout=self._config.tcp_timeout,
                    peer=req.peer,
                )
            )

    def _on_stream_ping_result(self, req: _StreamRequest, ev: StreamResult, now: float) -> None:
        p = self._probe
        if p is None or p.seq != req.seq:
            return  # the probe already ended
        if ev.data is not None:
            try:
                msg = codec.decode_stream_untrusted(ev.data)
            except BadPacket as e:
                self._reject(str(e), req.address)
                return
            if isinstance(msg, Ack) and msg.seq == p.seq:
                # Reachable over TCP but not over UDP: the network drops our
                # datagrams (memberlist: "network may be misconfigured").
                self._stats["probes_tcp_only"] += 1
                self._probe_succeeded(p, now, direct=False)
        elif ev.error == STREAM_REFUSED:
            # Nothing listens at the target's address: its process is gone.
            # Conclude now instead of waiting out the period; our own health
            # is not in question, so no penalty.
            self._probe_failed(p, now, penalize=False)

    def _merge(self, states: Iterable[PushNodeState], now: float) -> None:
        handlers = self._message_handlers
        for msg in to_messages(states):
            handlers[type(msg)](msg, self._address, now)

    def _local_state(self) -> Iterable[PushNodeState]:
        yield PushNodeState(
            self._id,
            self._address,
            self._incarnation,
            self._self_state(),
            self._meta,
            self._protocol,
        )
        for e in self._table:
            yield PushNodeState(e.node_id, e.address, e.incarnation, e.state, e.meta, e.protocol)

    # ================================================================ leave, reap

    def _check_leave(self, now: float) -> None:
        if (
            not self._queue.pending(self._id)
            or now >= self._leave_deadline
            # Everyone else is gone or leaving too: nobody left to tell.
            or not any(e.state in (MemberState.ALIVE, MemberState.SUSPECT) for e in self._table)
        ):
            self._finish_leave()

    def _finish_leave(self) -> None:
        self._leave_done = True
        self._out.append(LeaveCompleted())

    def _reap(self, now: float) -> None:
        timeout = self._config.reap_timeout
        gone = [
            e
            for e in self._table
            if e.state in (MemberState.DEAD, MemberState.LEFT)
            and now - e.state_changed_at >= timeout
        ]
        for e in gone:
            self._table.remove(e.node_id)
            self._ids.remove(e.node_id)
            if self._config.reconnect_interval > 0:
                # Keep the address: a dead member may be alive behind a
                # partition, a left one may come back after a reboot.
                self._reaped[e.node_id] = (
                    e.address,
                    e.state_changed_at + self._config.reconnect_timeout,
                )
            self._out.append(MemberReaped(e.snapshot()))

    # ================================================================ helpers

    def _learned(self, node: NodeId) -> None:
        self._ids.append(node)
        self._order.insert(node)

    def _k_random(self, k: int, eligible: Callable[[MemberEntry], bool]) -> list[MemberEntry]:
        """Up to ``k`` distinct random members passing ``eligible`` (memberlist kRandomNodes)."""
        ids = self._ids
        n = len(ids)
        if n == 0 or k <= 0:
            return []
        table = self._table
        if n <= 4 * k:
            pool = [e for e in map(table.get, ids) if e is not None and eligible(e)]
            return pool if len(pool) <= k else self._rng.sample(pool, k)
        picked: list[MemberEntry] = []
        seen: set[NodeId] = set()
        randrange = self._rng.randrange
        for _ in range(3 * n):
            node = ids[randrange(0, n)]
            if node in seen:
                continue
            seen.add(node)
            e = table.get(node)
            if e is not None and eligible(e):
                picked.append(e)
                if len(picked) == k:
                    break
        return picked

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _new_request(self, req: _StreamRequest) -> int:
        self._request_id += 1
        self._requests[self._request_id] = req
        return self._request_id

    def _reject(self, reason: str, source: Address) -> None:
        self._stats["packets_rejected"] += 1
        self._out.append(PacketRejected(reason, source))

    def _self_state(self) -> MemberState:
        return MemberState.LEFT if self._leaving else MemberState.ALIVE

    def _self_member(self) -> Member:
        return Member(
            node_id=self._id,
            address=self._address,
            incarnation=self._incarnation,
            state=self._self_state(),
            meta=self._meta,
            protocol=self._protocol,
            state_changed_at=self._started_at,
        )

    @staticmethod
    def _check_meta(meta: bytes, config: MembershipConfig) -> None:
        if len(meta) > config.meta_max_size:
            raise MetadataTooLarge(
                f"node metadata is {len(meta)} bytes but membership.meta_max_size is "
                f"{config.meta_max_size} bytes; publish fewer or shorter tags"
            )
