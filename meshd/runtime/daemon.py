"""The daemon: a trio shell that performs the NodeCore's I/O.

Theory of operation. One :class:`Daemon` owns one nursery with these tasks,
each started with ``nursery.start`` so the daemon is ready only when all of
them are:

* the **datagram loop** receives UDP packets, opens the AES-256-GCM envelope
  (``core/crypto.py``), drops replays through the per-sender window, and feeds
  the compound to the core;
* the **sender** drains a bounded queue of sealed datagrams to the socket;
  a full queue drops and counts instead of blocking the protocol;
* the **timer** sleeps until ``core.next_deadline()`` (or until an input
  moved it) and feeds ``Tick``;
* the **stream server** accepts TCP connections, runs the mutual-TLS 1.3
  handshake, checks that the authenticated node id matches what the frame
  claims, and answers one frame per connection;
* the **control server** answers ``meshctl`` on a unix socket (JSON lines);
* the **seed joiner** joins the configured seeds and the members kept in the
  snapshot (``members.json`` in the state directory), retrying with backoff
  until one answers or somebody joins us;
* **mDNS** (``runtime/mdns.py``) announces this node and reports peers of the
  same mesh; the **mDNS joiner** batches them into joins;
* the **snapshot writer** keeps ``members.json`` current (at most once a
  second), so a reboot of every host re-forms the mesh;
* the **metrics server** answers ``GET /metrics`` on ``[metrics] listen``
  (``runtime/metrics.py``), and systemd hears from ``runtime/sdnotify.py``:
  READY once everything above runs and the first join went out, STATUS
  when the member counts or health change, WATCHDOG from this loop.

Every core output is performed by :meth:`Daemon._perform`: datagrams are
sealed and queued, stream requests become short-lived tasks with a deadline
on connect, handshake and exchange, replies go back to the waiting
connection, events are logged and handed to waiters.

Rule 1: only this package imports trio; the core never waits. Every network
operation has a deadline (``membership.tcp_timeout`` for streams).

Rule 2: bytes from the network never raise out of a loop: each failure is a
counter (see :attr:`Daemon.counters`) and, at debug level, a log line.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import math
import os
import random
import signal
import socket as stdlib_socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

from meshd import __version__, control
from meshd.config import Config, format_address, parse_address
from meshd.core import codec, crypto, kvmessages
from meshd.core.advert import Advert, check_advert
from meshd.core.discovery import BadSnapshot, Snapshot, Source, SourceBook
from meshd.core.inputs import (
    Input,
    JoinRequested,
    LeaveRequested,
    MetadataChanged,
    PacketReceived,
    SendUserEvent,
    StreamReceived,
    StreamResult,
    Tick,
)
from meshd.core.keyring import Keyring, fingerprint
from meshd.core.messages import AppRequest, KeyOp, KeyOpResult, Ping, PushPull
from meshd.core.node import STREAM_REFUSED, NodeCore
from meshd.core.outputs import (
    Event,
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
)
from meshd.core.split import SplitDetector
from meshd.core.types import Address, Member, MemberState, NodeId
from meshd.errors import BadPacket, ConfigError, MeshError
from meshd.runtime import rpc, tls
from meshd.runtime.framing import FrameError, receive_frame, send_frame
from meshd.runtime.kv import KvService, KvUnavailable
from meshd.runtime.loadgen import run_load
from meshd.runtime.mdns import Mdns
from meshd.runtime.plugins import PluginCommandFailed, PluginManager
from meshd.runtime.sdnotify import Notifier
from meshd.runtime.store import DB_FILE_NAME, Store, StoreError

__all__ = [
    "SNAPSHOT_FILE",
    "Daemon",
    "decode_tags",
    "encode_tags",
    "load_keyring",
    "load_snapshot",
    "save_keyring",
    "save_snapshot",
]

log = logging.getLogger("meshd")

_PLAIN_HEADER = bytes([codec.WIRE_VERSION, codec.ENVELOPE_PLAIN])
_RECV_SIZE = 65536
#: Datagrams waiting for the socket; beyond this they are dropped and counted.
_SEND_QUEUE = 1024
#: Concurrent inbound stream connections (memberlist allows 128 push-pulls).
_MAX_INBOUND_STREAMS = 128
#: Concurrent control connections.
_MAX_CONTROL_CONNECTIONS = 32
_CONTROL_TIMEOUT = 30.0
#: First pause before retrying the seeds; doubles up to [join] retry_interval.
_FIRST_JOIN_RETRY = 0.25
#: Snapshot members tried per join attempt at start (most recently alive first).
_REJOIN_BATCH = 8
#: Minimum seconds between two writes of the member snapshot.
_SNAPSHOT_EVERY = 1.0
#: Seconds the mDNS joiner waits to batch peers announced together.
_MDNS_BATCH_WAIT = 0.05
SNAPSHOT_FILE = "members.json"
#: Largest value ``kv_get`` returns over the control socket: its base64 must
#: fit a control line (``control.MAX_LINE``) with room for the rest.
_KV_CONTROL_VALUE_MAX = (control.MAX_LINE - 4096) // 4 * 3
#: ``meshd_member_events_total{event}`` labels.
_MEMBER_EVENT_LABELS: dict[type, str] = {
    MemberJoined: "join",
    MemberSuspected: "suspect",
    MemberRecovered: "recover",
    MemberFailed: "fail",
    MemberLeft: "leave",
    MemberUpdated: "update",
    MemberReaped: "reap",
}


def encode_tags(tags: dict[str, str]) -> bytes:
    """Node tags as metadata bytes: a msgpack map, keys sorted (stable bytes)."""
    if not tags:
        return b""
    packed: bytes = msgpack.packb(dict(sorted(tags.items())), use_bin_type=True)
    return packed


def decode_tags(meta: bytes) -> dict[str, str]:
    """Best-effort inverse of :func:`encode_tags` for display; {} if not tags."""
    if not meta:
        return {}
    try:
        value = msgpack.unpackb(meta, raw=False)
    except Exception:  # metadata is opaque bytes to the protocol
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {}


def load_keyring(path: Path, secret: bytes) -> Keyring:
    """The persisted keyring, or a new one holding only the cluster secret."""
    try:
        raw = json.loads(path.read_text())
        keys = [base64.b64decode(k, validate=True) for k in raw["keys"]]
        primary = base64.b64decode(raw["primary"], validate=True)
        return Keyring(keys, primary=primary)
    except FileNotFoundError:
        return Keyring([secret])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"keyring file {path} is unreadable or corrupt ({e}); move it away to start "
            "again from the cluster secret"
        ) from None


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Write the keyring atomically, mode 0600."""
    data = json.dumps(
        {
            "primary": base64.b64encode(keyring.primary).decode(),
            "keys": [base64.b64encode(k).decode() for k in keyring.keys],
        }
    ).encode()
    _write_atomically(path, data, 0o600)


def load_snapshot(path: Path) -> Snapshot:
    """The member snapshot, or an empty one.

    A corrupt file is moved aside to ``members.json.bad`` (and logged): the
    snapshot only speeds up rejoining, so it must never stop a start.
    """
    try:
        return Snapshot.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return Snapshot()
    except (OSError, ValueError, BadSnapshot) as e:
        log.warning("member snapshot %s is unreadable (%s); starting without it", path, e)
        try:
            os.replace(path, path.with_name(path.name + ".bad"))
        except OSError:
            pass
        return Snapshot()


def save_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Write the member snapshot atomically, mode 0600."""
    _write_atomically(path, json.dumps(snapshot.to_json(), indent=1).encode(), 0o600)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@attrs.define(eq=False)
class _Waiter:
    """An event the control server waits for (join results, leave)."""

    match: Callable[[Event], bool]
    event: trio.Event = attrs.field(factory=trio.Event)
    result: Event | None = None


class Daemon:
    """One meshd node on the network.

    Args:
        config: the validated configuration.
        node_id: this node's persistent id.
        secret: the cluster secret (seeds the keyring and the TLS CA).
    """

    def __init__(
        self,
        config: Config,
        *,
        node_id: str,
        secret: bytes,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier(environ={})
        self.node_id = NodeId(node_id)
        self.cluster = config.cluster.name
        state_dir = config.state.dir
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._keyring_path = state_dir / "keyring.json"
        self.keyring = load_keyring(self._keyring_path, secret)
        # Certificate work runs in a child process (tls.isolated_identity):
        # the daemon itself never loads the X.509 code.
        request = tls.identity_request(config, node_id, secret)
        self.tls = tls.isolated_identity(request)
        self._server_ctx = tls.server_context(self.tls)
        self._client_ctx = tls.client_context(self.tls)
        # --- plugins (runtime/plugins.py; issue 6): loaded and checked here,
        # so a bad [plugins] section stops the start (exit 78); run in run().
        self.plugins = PluginManager(self, config)
        self.meta = encode_tags(self.node_tags(config))
        self.counters: Counter[str] = Counter()
        # Replay protection: a random 64-bit boot epoch identifies this
        # process; receivers keep one window per epoch (see core/crypto.py).
        self._epoch = int.from_bytes(os.urandom(8), "big")
        self._counter = 0
        self._replay = crypto.ReplayGuard()
        self._core: NodeCore | None = None
        self._udp: trio.socket.SocketType | None = None
        self._send_in, self._send_out = trio.open_memory_channel[tuple[bytes, Address]](_SEND_QUEUE)
        self._wake = trio.Event()
        self._replies: dict[int, bytes | None] = {}
        self._conn_ids = 0
        self._waiters: list[_Waiter] = []
        self._joined = trio.Event()
        self._left = trio.Event()
        self._stop = trio.Event()
        self._started_at = time.monotonic()
        self._nursery: trio.Nursery | None = None
        self._stream_slots = trio.Semaphore(_MAX_INBOUND_STREAMS)
        # Discovery: where members came from, whom to try at start, and
        # whether a burst of failures looks like a split (core/discovery.py,
        # core/split.py).
        self._sources = SourceBook()
        self._snapshot_path = state_dir / SNAPSHOT_FILE
        self._snapshot = load_snapshot(self._snapshot_path)
        self._snapshot_dirty = trio.Event()
        m = config.membership
        self._split = SplitDetector(
            window=m.suspicion_mult * m.suspicion_max_timeout_mult * m.probe_interval
        )
        self._connected = trio.Event()  # joined someone, or someone joined us
        self._mdns: Mdns | None = None
        self._mdns_pending: set[Address] = set()
        self._mdns_wake = trio.Event()
        self._joining: set[Address] = set()
        self._status_line = ""
        self._metrics: Any = None  # runtime.metrics.Metrics, imported only when served
        # --- RPC (runtime/rpc.py; issues 5 and 6): application traffic in
        # persistent sessions over the same mutual-TLS streams. Services
        # register on rpc_server; calls go through self.call().
        self.rpc_server = rpc.RpcServer(counters=self.counters)
        self.rpc = rpc.RpcClient(
            self._client_ctx,
            connect_timeout=config.membership.tcp_timeout,
            counters=self.counters,
        )
        # --- KV (runtime/kv; issue 5): the replicated store, started in run().
        self.kv: KvService | None = None
        # Set once this node may coordinate KV requests: it joined the mesh
        # (or has nobody to join) and its ring was rebuilt from that view. A
        # node that just started knows only itself; answering from that ring
        # would read "not found" and write to the wrong replicas.
        self._kv_ready = trio.Event()

    # ================================================================ life cycle

    @property
    def core(self) -> NodeCore:
        assert self._core is not None, "daemon not started"
        return self._core

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the replica store, bind, start every task, report ready, and run until stopped.

        Raises:
            ConfigError: a socket could not be bound (port in use, bad address),
                or the replica store cannot be opened (corrupt, locked by
                another meshd, unreadable); the message names the file.
        """
        store = await self._open_store()
        try:
            await self._run(store, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    async def _open_store(self) -> Store:
        # --- KV: a store that cannot be opened stops the daemon with the
        # store's own message (StoreCorrupt names the file and what to do):
        # exit status 78, like any configuration problem, so a supervisor
        # does not restart into the same damage.
        path = self.config.state.dir / DB_FILE_NAME
        try:
            return await Store.open(
                path, synchronous="FULL" if self.config.kv.synchronous == "full" else "NORMAL"
            )
        except StoreError as e:
            raise ConfigError(f"[kv] replica store: {e}") from None

    async def _run(self, store: Store, task_status: trio.TaskStatus[Daemon]) -> None:
        host, port = self.config.node.bind
        udp = trio.socket.socket(_family(host), stdlib_socket.SOCK_DGRAM)
        try:
            await udp.bind((host, port))
        except OSError as e:
            udp.close()
            raise ConfigError(
                f"[node] bind {host}:{port}: cannot bind UDP ({e.strerror})"
            ) from None
        self._udp = udp
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            udp.close()
            raise ConfigError(
                f"[node] bind {host}:{port}: cannot bind TCP ({e.strerror})"
            ) from None
        control_listener = await self._bind_control_socket()
        self._core = NodeCore(
            node_id=self.node_id,
            address=self.config.node.advertise,
            config=self.config.membership,
            rng=random.Random(),
            now=trio.current_time(),
            meta=self.meta,
        )
        self.kv = KvService(
            node_id=self.node_id,
            store=store,
            config=self.config.kv,
            member_state=self._member_state,
            members=self.core.members,
            call=self.call,
            on_request=self._observe_kv_request,
            serving=False,  # opened by _gate_kv once joined
        )
        self.rpc_server.register(kvmessages.SERVICE, self.kv.handle)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._datagram_loop)
                await nursery.start(self._sender)
                await nursery.start(self._timer)
                await nursery.start(self.rpc.run)  # --- RPC: the client's sessions
                await nursery.start(self.kv.run)  # --- KV: ring, repair, handoff
                await nursery.start(self._serve_streams, listeners)
                await nursery.start(self._serve_control, control_listener)
                await nursery.start(self.plugins.run)  # --- plugins: one supervisor each
                await nursery.start(self._write_snapshots)
                if self.config.discovery.mdns:
                    await nursery.start(self._run_mdns)
                await nursery.start(self._join_seeds)
                nursery.start_soon(self._gate_kv)  # --- KV
                if self.config.metrics.listen is not None:
                    await nursery.start(self._serve_metrics)
                self.notifier.ready(self.status_line())
                log.info(
                    "meshd %s: node %s listening on %s (cluster %s, key %s)",
                    __version__,
                    self.node_id,
                    format_address(self.config.node.bind),
                    self.cluster,
                    self.keyring.fingerprint(self.keyring.primary),
                )
                task_status.started(self)
                _return_startup_memory()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            udp.close()
            self._save_snapshot()
            with trio.CancelScope(shield=True):
                for listener in [*listeners, control_listener]:
                    await listener.aclose()
            try:
                self.config.control.socket.unlink()
            except OSError:
                pass

    def status_line(self) -> str:
        """One line for systemd's STATUS=: member counts and health."""
        stats = self.core.statistics()
        counts = stats.members
        parts = [f"{counts.get('alive', 0)} alive"]
        parts += [f"{counts[s]} {s}" for s in ("suspect", "dead") if counts.get(s)]
        line = ", ".join(parts) + f"; health {stats.health_score}"
        if self._split_report() is not None:
            line += "; the mesh may be split"
        return line

    def _update_status(self) -> None:
        line = self.status_line()
        if line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    async def _serve_metrics(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listen = self.config.metrics.listen
        assert listen is not None
        metrics = self._metrics_registry()
        from meshd.runtime.metrics import serve_metrics

        try:
            listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
        except OSError as e:
            raise ConfigError(
                f"[metrics] listen {format_address(listen)}: cannot bind ({e.strerror}) — stop "
                'the other process, choose another port, or set listen = "" to turn it off'
            ) from None
        for listener in listeners:
            await listener.aclose()
        await serve_metrics(metrics.registry, listen[0], listen[1], task_status=task_status)

    def _metrics_registry(self) -> Any:
        if self._metrics is None:
            from meshd.runtime.metrics import Metrics, snapshot_from_counters

            def snapshot() -> Any:
                kv = self.kv
                return snapshot_from_counters(
                    self.core.statistics(),
                    self.counters,
                    kv_requests=None if kv is None else kv.requests,
                    hints_pending=0 if kv is None else kv.hints_pending,
                    plugin_restarts=self.plugins.restarts(),
                )

            self._metrics = Metrics(snapshot)
            self._metrics.registry.register(self.plugins.collector())  # --- plugins
        return self._metrics

    async def _gate_kv(self) -> None:
        """--- KV: open KV requests once joined and the ring reflects the join."""
        if self._kv_ready.is_set():
            return
        await self._connected.wait()
        # The join's push-pull brought the whole table; the ring follows
        # after its debounce. Bounded: a mesh of one (everyone else gone)
        # still opens.
        with trio.move_on_after(5.0):
            if self.kv is not None:
                await self.kv.wait_for_ring(2)
            await trio.sleep(0.3)  # a rebuild started by the same join settles
        log.info("KV requests are open")
        self._kv_ready.set()
        if self.kv is not None:
            self.kv.open()

    def _observe_kv_request(self, op: str, consistency: str, result: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.kv_request_duration.observe(seconds)

    def _member_state(self, node_id: str) -> MemberState | None:
        member = self.core.member(NodeId(node_id))
        return None if member is None else member.state

    def _all_counters(self) -> dict[str, int]:
        counters = {**self.core.statistics().counters, **self.counters}
        if self.kv is not None:
            counters.update(self.kv.counters)
        return counters

    def stop(self) -> None:
        """Stop at once, without a leave (the others will detect a failure)."""
        self._stop.set()

    async def leave(self) -> None:
        """Leave gracefully: broadcast the leave, wait until it spread, stop."""
        if self._core is not None and not self._left.is_set():
            log.info("leaving the mesh")
            self._feed(LeaveRequested())
            limit = self.config.membership.leave_timeout + 1.0
            with trio.move_on_after(limit):
                await self._left.wait()
        self.stop()

    def reload(self, config: Config) -> list[str]:
        """Apply what can change without a restart; return what could not."""
        ignored = []
        for section in ("cluster", "tls", "state", "control", "discovery", "metrics", "kv"):
            if getattr(config, section) != getattr(self.config, section):
                ignored.append(f"[{section}]")
        if (
            config.node.bind != self.config.node.bind
            or config.node.advertise != self.config.node.advertise
        ):
            ignored.append("[node] bind/advertise")
        if config.node.name not in (None, self.node_id):
            ignored.append("[node] name")
        if config.membership != self.config.membership:
            ignored.append("[membership]")
        logging.getLogger().setLevel(config.log.level.upper())
        meta = encode_tags(self.node_tags(config))
        if meta != self.meta:
            try:
                self._feed(MetadataChanged(meta))
                self.meta = meta
                log.info("published new tags")
            except MeshError as e:
                ignored.append(f"[node] tags ({e})")
        self.config = attrs.evolve(
            self.config,
            join=config.join,
            log=config.log,
            node=attrs.evolve(self.config.node, tags=config.node.tags),
            plugins=config.plugins,
        )
        self.plugins.reload(config)  # --- plugins: problems are logged, never fatal
        return ignored

    # ================================================================ the core

    def _feed(self, inp: Input) -> list[Output]:
        outputs = self.core.handle(inp, trio.current_time())
        for out in outputs:
            self._perform(out)
        self._wake.set()
        return outputs

    def _perform(self, out: Output) -> None:
        if isinstance(out, SendPacket):
            self._queue_datagram(out)
        elif isinstance(out, OpenStream):
            assert self._nursery is not None
            self._nursery.start_soon(self._open_stream, out)
        elif isinstance(out, ReplyStream):
            self._replies[out.conn_id] = out.data
        else:
            self._on_event(out)

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, ProbeCompleted):
            if self._metrics is not None:
                self._metrics.probe_duration.observe(ev.rtt)
            return
        label = _MEMBER_EVENT_LABELS.get(type(ev))
        if label is not None:
            self.counters[f"member_events_{label}"] += 1
        if isinstance(ev, MemberJoined):
            source = self._sources.joined(ev.member.node_id, ev.member.address)
            self._split.cleared(ev.member.node_id)
            self._connected.set()
            log.info(
                "member %s joined (%s, via %s)",
                ev.member.node_id,
                _addr(ev.member.address),
                source.value,
            )
        elif isinstance(ev, MemberSuspected):
            log.info("member %s suspected by %s", ev.member.node_id, ev.accuser)
        elif isinstance(ev, MemberRecovered):
            self._split.cleared(ev.member.node_id)
            log.info("member %s refuted its suspicion", ev.member.node_id)
        elif isinstance(ev, MemberFailed):
            self._split.failed(ev.member.node_id, trio.current_time())
            log.info("member %s failed (declared by %s)", ev.member.node_id, ev.accuser)
            self._warn_if_split()
        elif isinstance(ev, MemberLeft):
            self._split.cleared(ev.member.node_id)
            log.info("member %s left", ev.member.node_id)
        elif isinstance(ev, MemberUpdated):
            log.info("member %s updated its tags", ev.member.node_id)
        elif isinstance(ev, MemberReaped):
            self._split.cleared(ev.member.node_id)
            self._sources.forget(ev.member.node_id)
            log.info("member %s reaped", ev.member.node_id)
        elif isinstance(ev, PacketRejected):
            self.counters[f"rejected_{_reason_key(ev.reason)}"] += 1
            log.debug("rejected bytes from %s: %s", _addr(ev.source), ev.reason)
        elif isinstance(ev, JoinSucceeded):
            self._joining.discard(ev.address)
            for m in self.core.members()[1:]:
                if m.address == ev.address:  # the member we joined through
                    self._sources.joined(m.node_id, m.address)
            log.info("joined through %s (%d members)", _addr(ev.address), ev.members)
            self._joined.set()
            self._connected.set()
        elif isinstance(ev, JoinFailed):
            self._joining.discard(ev.address)
            log.warning("join through %s failed: %s", _addr(ev.address), ev.error)
        elif isinstance(ev, LeaveCompleted):
            self._left.set()
        if isinstance(ev, (MemberJoined, MemberFailed, MemberLeft, MemberReaped, MemberRecovered)):
            self._snapshot_dirty.set()
        if label is not None and self.kv is not None:
            self.kv.member_event(ev)  # --- KV: the ring follows the membership
        self.plugins.on_event(ev)  # --- plugins: membership and user events
        if label is not None:
            self._update_status()
        for w in self._waiters:
            if not w.event.is_set() and w.match(ev):
                w.result = ev
                w.event.set()

    async def _timer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            deadline = self.core.next_deadline()
            self._wake = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            if deadline is not None and trio.current_time() >= deadline:
                self._feed(Tick())

    # ================================================================ datagrams

    def _queue_datagram(self, out: SendPacket) -> None:
        data = out.data
        if data[:2] != _PLAIN_HEADER:  # the core only emits plain packets
            self.counters["send_malformed"] += 1
            return
        self._counter += 1
        sealed = crypto.seal(
            self.keyring,
            self.cluster,
            data[2:],
            epoch=self._epoch,
            counter=self._counter,
            nonce=os.urandom(crypto.NONCE_SIZE),
        )
        try:
            self._send_in.send_nowait((sealed, out.address))
        except trio.WouldBlock:
            self.counters["send_queue_full"] += 1

    async def _sender(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._udp is not None
        task_status.started()
        async for data, address in self._send_out:
            try:
                await self._udp.sendto(data, address)
                self.counters["udp_packets_sent"] += 1
                self.counters["udp_bytes_sent"] += len(data)
            except OSError as e:
                self.counters["send_errors"] += 1
                log.debug("send to %s failed: %s", _addr(address), e)

    async def _datagram_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._udp is not None
        udp = self._udp
        task_status.started()
        while True:
            try:
                data, source = await udp.recvfrom(_RECV_SIZE)
            except OSError as e:  # e.g. ICMP port unreachable surfacing on Linux
                self.counters["receive_errors"] += 1
                log.debug("receive failed: %s", e)
                continue
            self.counters["udp_packets_received"] += 1
            self.counters["udp_bytes_received"] += len(data)
            try:
                opened = crypto.open_untrusted(self.keyring, self.cluster, data)
            except BadPacket:
                self.counters["rejected_undecryptable"] += 1
                continue
            verdict = self._replay.check_and_update(opened.epoch, opened.epoch, opened.counter)
            if verdict is not crypto.Verdict.ACCEPT:
                self.counters[f"rejected_{verdict.name.lower()}"] += 1
                continue
            self._feed(PacketReceived(_PLAIN_HEADER + opened.compound, (source[0], source[1])))

    # ================================================================ streams

    async def _open_stream(self, req: OpenStream) -> None:
        result = await self._exchange(req)
        if self._core is not None:
            self._feed(result)

    async def _exchange(self, req: OpenStream) -> StreamResult:
        host, port = req.address
        try:
            with trio.fail_after(max(req.timeout, 0.001)):
                tcp = await _connect(host, port)
                async with trio.SSLStream(tcp, self._client_ctx, server_hostname=None) as stream:
                    await stream.do_handshake()
                    tls.check_peer(stream, req.peer)
                    await send_frame(stream, req.data)
                    self.counters["stream_frames_sent"] += 1
                    reply = None
                    if req.expect_reply:
                        reply = await receive_frame(stream, codec.STREAM_MAX)
                        self.counters["stream_frames_received"] += 1
                        self.counters["stream_bytes_received"] += len(reply)
                    self.counters["stream_bytes_sent"] += len(req.data) + 4
            return StreamResult(req.request_id, data=reply)
        except trio.TooSlowError:
            self.counters["stream_timeouts"] += 1
            return StreamResult(req.request_id, error="timeout")
        except tls.PeerMismatch as e:
            self.counters["stream_identity_mismatch"] += 1
            log.warning("refused stream peer at %s: %s", _addr(req.address), e)
            return StreamResult(req.request_id, error=str(e))
        except OSError as e:
            if _refused(e):
                return StreamResult(req.request_id, error=STREAM_REFUSED)
            self.counters["stream_errors"] += 1
            log.debug("stream to %s failed: %r", _addr(req.address), e)
            return StreamResult(req.request_id, error=e.strerror or str(e))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, FrameError) as e:
            self.counters["stream_errors"] += 1
            log.debug("stream to %s failed: %s", _addr(req.address), _describe(e))
            return StreamResult(req.request_id, error=f"stream failed: {_describe(e)}")

    async def _serve_streams(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as e:
                    # EMFILE and friends: back off instead of spinning.
                    self.counters["accept_errors"] += 1
                    log.warning("accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                if self._stream_slots.value == 0:
                    self.counters["streams_refused_busy"] += 1
                    await tcp.aclose()
                    continue
                nursery.start_soon(self._handle_stream, tcp)

    async def _handle_stream(self, tcp: trio.SocketStream) -> None:
        # --- RPC: set when the first frame opens a session (SPEC.md §3); the
        # stream is then handed over instead of closed here.
        session: tuple[trio.SSLStream[trio.SocketStream], str, AppRequest] | None = None
        async with self._stream_slots:
            try:
                source = tcp.socket.getpeername()
                with trio.fail_after(self.config.membership.tcp_timeout):
                    stream = trio.SSLStream(tcp, self._server_ctx, server_side=True)
                    try:
                        await stream.do_handshake()
                        peer = tls.check_peer(stream, None)
                        data = await receive_frame(stream, codec.STREAM_MAX)
                        self.counters["stream_frames_received"] += 1
                        self.counters["stream_bytes_received"] += len(data) + 4
                        first = rpc.session_request_untrusted(data)  # --- RPC
                        if first is not None:
                            session = (stream, peer, first)
                        else:
                            reply = self._answer_stream(peer, data, (source[0], source[1]))
                            if reply is not None:
                                await send_frame(stream, reply)
                                self.counters["stream_frames_sent"] += 1
                                self.counters["stream_bytes_sent"] += len(reply) + 4
                    finally:
                        if session is None:
                            await stream.aclose()
            except tls.PeerMismatch as e:
                self.counters["stream_identity_mismatch"] += 1
                log.warning("refused stream: %s", e)
            except trio.TooSlowError:
                self.counters["stream_timeouts"] += 1
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                ssl.SSLError,
                FrameError,
            ) as e:
                self.counters["streams_refused"] += 1
                log.debug("inbound stream failed: %s", _describe(e))
        if session is not None:
            # --- RPC: sessions are long-lived, so they run outside the slot
            # (RpcServer caps them itself) and outside the tcp_timeout deadline.
            stream, peer, first = session
            await self.rpc_server.serve_session(stream, NodeId(peer), first)

    def _answer_stream(self, peer: str, data: bytes, source: Address) -> bytes | None:
        """One inbound frame from an authenticated ``peer``: check, route, answer."""
        try:
            msg = codec.decode_stream_untrusted(data)
        except BadPacket:
            msg = None  # the core rejects and counts it
        # The frame's claims must match the TLS identity: a push-pull's first
        # entry is its sender, a stream ping names its source.
        claimed: str | None = None
        if isinstance(msg, PushPull) and msg.members:
            claimed = msg.members[0].node
        elif isinstance(msg, Ping):
            claimed = msg.source
        if claimed is not None and claimed != peer:
            raise tls.PeerMismatch(f"peer {peer!r} sent a frame claiming to be {claimed!r}")
        if isinstance(msg, KeyOp):
            return codec.encode_stream(self._apply_key_op(msg, by=peer))
        self._conn_ids += 1
        conn_id = self._conn_ids
        self._feed(StreamReceived(conn_id, data, source))
        return self._replies.pop(conn_id, None)

    # ================================================================ RPC

    async def call(self, node_id: str, service: str, body: bytes, timeout: float) -> bytes:
        """Call ``service`` on member ``node_id`` and return its answer (runtime/rpc.py).

        The member must be alive in this node's view; its address comes from
        the membership table. A call to this node itself runs the service
        here, without the network.

        Args:
            node_id: the member to ask.
            service: a service registered on its ``rpc_server``.
            body: the request body (at most ``rpc.BODY_MAX`` bytes).
            timeout: seconds for connecting (if needed) and the answer.

        Returns:
            The response body.

        Raises:
            rpc.RpcError: the service refused or failed (its message).
            rpc.RpcUnavailable: no answer (``kind`` says why; ``"not_member"``
                when ``node_id`` is not an alive member).
        """
        member = self.core.member(NodeId(node_id))
        if member is None or member.state is not MemberState.ALIVE:
            raise rpc.RpcUnavailable("not_member", f"{node_id!r} is not an alive member")
        if member.node_id == self.node_id:
            with trio.move_on_after(timeout):
                return await self.rpc_server.call_local(self.node_id, service, body)
            raise rpc.RpcUnavailable(
                "timeout", f"timeout after {timeout:g} s calling {service!r} on this node"
            )
        return await self.rpc.call(member.node_id, member.address, service, body, timeout=timeout)

    # ================================================================ keys

    def _apply_key_op(self, op: KeyOp, *, by: str) -> KeyOpResult:
        kr = self.keyring
        try:
            if op.op == "install":
                kr.install(op.key)
            elif op.op == "use":
                kr.use(op.key)
            elif op.op == "remove":
                kr.remove(op.key)
        except ValueError as e:
            return KeyOpResult(False, str(e)[:256], tuple(kr.fingerprints()))
        if op.op != "list":
            save_keyring(self._keyring_path, kr)
            log.info("keyring: %s %s (requested by %s)", op.op, fingerprint(op.key), by)
        if op.op == "use" and self._mdns is not None and self._nursery is not None:
            # mDNS peers match on the primary key's fingerprint.
            self._nursery.start_soon(self._mdns.update, self._advert())
        return KeyOpResult(True, "", tuple(kr.fingerprints()))

    async def _key_op_everywhere(self, op: KeyOp) -> tuple[dict[str, KeyOpResult], dict[str, str]]:
        """Apply ``op`` here and on every alive member (over mutual TLS)."""
        results: dict[str, KeyOpResult] = {self.node_id: self._apply_key_op(op, by=self.node_id)}
        failed: dict[str, str] = {}
        data = codec.encode_stream(op)
        timeout = self.config.membership.tcp_timeout

        async def ask(member: Member) -> None:
            req = OpenStream(
                0, member.address, data, expect_reply=True, timeout=timeout, peer=member.node_id
            )
            res = await self._exchange(req)
            try:
                if res.data is None:
                    raise BadPacket(res.error or "no reply")
                reply = codec.decode_stream_untrusted(res.data)
                if not isinstance(reply, KeyOpResult):
                    raise BadPacket("unexpected reply")
                results[member.node_id] = reply
            except BadPacket as e:
                failed[member.node_id] = str(e)

        async with trio.open_nursery() as nursery:
            for m in self.core.members()[1:]:
                if m.state is MemberState.ALIVE:
                    nursery.start_soon(ask, m)
        return results, failed

    # ================================================================ seeds

    async def _join_seeds(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the seeds and the snapshot's members until one answers.

        Stops as soon as this node is connected: a join succeeded, or
        another member (found by mDNS, say) joined us.
        """
        task_status.started()
        seeds = self.config.join.seeds
        rejoin: list[Address] = []
        if self.config.discovery.rejoin:
            rejoin = self._snapshot.rejoin_candidates(
                now_wall=time.time(),
                max_age=self.config.membership.reconnect_timeout,
                exclude=[self.config.node.advertise],
            )[:_REJOIN_BATCH]
        if not seeds and not rejoin:
            self._kv_ready.set()  # --- KV: nobody to wait for
            if self.kv is not None:
                self.kv.open()
            return
        if rejoin:
            log.info("trying %d member(s) from the snapshot", len(rejoin))
        delay = min(_FIRST_JOIN_RETRY, self.config.join.retry_interval)
        while not self._connected.is_set():
            addresses: list[Address] = []
            for host, port in seeds:
                # DNS names are resolved at every attempt: a seed's address may change.
                try:
                    infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
                except OSError as e:
                    log.warning("seed %s:%d: cannot resolve (%s)", host, port, e)
                    continue
                for info in infos[:1]:
                    address = (info[4][0], info[4][1])
                    self._sources.expect(address, Source.SEED)
                    addresses.append(address)
            for address in rejoin:
                self._sources.expect(address, Source.SNAPSHOT)
                addresses.append(address)
            addresses = list(dict.fromkeys(a for a in addresses if a != self.config.node.advertise))
            if self._connected.is_set():
                return
            if addresses:
                self._joining.update(addresses)
                self._feed(JoinRequested(tuple(addresses)))
            # Back off from a quick first retry (seeds started at the same
            # moment as this node are often a fraction of a second behind)
            # to [join] retry_interval.
            with trio.move_on_after(delay):
                await self._connected.wait()
            delay = min(delay * 2, self.config.join.retry_interval)

    # ================================================================ mDNS

    def _advert(self) -> Advert:
        host, port = self.config.node.advertise
        return Advert(
            node_id=self.node_id,
            cluster=self.cluster,
            key_fingerprint=self.keyring.fingerprint(self.keyring.primary),
            address=(host, port),
            stream_port=port,
        )

    async def _run_mdns(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        interfaces = list(self.config.discovery.interfaces)
        if not interfaces:
            host = self.config.node.advertise[0]
            if ":" in host:
                log.warning(
                    "mDNS is off: [node] advertise %s is IPv6 — set [discovery] interfaces "
                    "to this host's IPv4 address(es) to use it",
                    host,
                )
                task_status.started()
                return
            interfaces = [host]

        def check(advert: Advert) -> str | None:
            return check_advert(
                advert,
                node_id=self.node_id,
                cluster=self.cluster,
                fingerprints=self.keyring.fingerprints(),
            )

        self._mdns = Mdns(
            interfaces=interfaces, advert=self._advert(), check=check, on_peer=self._on_mdns_peer
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self._mdns.run)
            nursery.start_soon(self._join_mdns_peers)
            task_status.started()

    def _on_mdns_peer(self, advert: Advert) -> None:
        self._sources.named(NodeId(advert.node_id), Source.MDNS)
        member = self.core.member(NodeId(advert.node_id))
        if (
            member is not None
            and member.state in (MemberState.ALIVE, MemberState.SUSPECT)
            and member.address == advert.address
        ):
            return  # already a member: nothing to do
        self._mdns_pending.add(advert.address)
        self._mdns_wake.set()

    async def _join_mdns_peers(self) -> None:
        """Join peers found by mDNS, batched: peers often announce together."""
        while True:
            await self._mdns_wake.wait()
            await trio.sleep(_MDNS_BATCH_WAIT)
            self._mdns_wake = trio.Event()
            batch, self._mdns_pending = self._mdns_pending, set()
            alive = {
                m.address
                for m in self.core.members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)
            }
            addresses = sorted(a for a in batch if a not in alive and a not in self._joining)
            if not addresses:
                continue
            for address in addresses:
                self._sources.expect(address, Source.MDNS)
            self._joining.update(addresses)
            self.counters["mdns_joins"] += len(addresses)
            self._feed(JoinRequested(tuple(addresses)))

    # ================================================================ snapshot

    async def _write_snapshots(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self._snapshot_dirty.wait()
            self._snapshot_dirty = trio.Event()
            self._save_snapshot()
            await trio.sleep(_SNAPSHOT_EVERY)

    def _save_snapshot(self) -> None:
        if self._core is None:
            return
        self._snapshot = Snapshot.of(
            self.core.members(),
            self_id=self.node_id,
            now_wall=time.time(),
            previous=self._snapshot,
            keep_for=self.config.membership.reconnect_timeout,
        )
        try:
            save_snapshot(self._snapshot_path, self._snapshot)
        except OSError as e:
            self.counters["snapshot_errors"] += 1
            log.warning("cannot write the member snapshot %s: %s", self._snapshot_path, e)

    # ================================================================ split

    def _split_report(self) -> dict[str, Any] | None:
        stats = self.core.statistics()
        live = stats.members.get("alive", 0) + stats.members.get("suspect", 0)
        found = self._split.suspicion(live_members=live)
        if found is None:
            return None
        return {
            "failed": list(found.failed),
            "known": found.known,
            "within_s": round(found.last_failure - found.first_failure, 3),
            "since_s": round(trio.current_time() - found.first_failure, 3),
            "reconnect_interval_s": self.config.membership.reconnect_interval,
        }

    def _warn_if_split(self) -> None:
        report = self._split_report()
        if report is not None:
            log.warning(
                "the mesh may be split: %d of %d members failed within %.0f s (%s); their "
                "addresses are retried every %.0f s — check the network between this host "
                "and them",
                len(report["failed"]),
                report["known"],
                report["within_s"],
                ", ".join(report["failed"][:5]),
                report["reconnect_interval_s"],
            )

    # ================================================================ control socket

    async def _bind_control_socket(self) -> trio.SocketListener:
        path = self.config.control.socket
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if await _socket_alive(path):
                raise ConfigError(
                    f"[control] socket {path}: another meshd is running there; stop it or "
                    "choose another socket path"
                )
            path.unlink()
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        await sock.bind(str(path))
        # chmod after bind: the umask decides the initial mode.
        os.chmod(path, 0o660)
        sock.listen(16)
        return trio.SocketListener(sock)

    async def _serve_control(
        self,
        listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        slots = trio.Semaphore(_MAX_CONTROL_CONNECTIONS)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn = await listener.accept()
                if slots.value == 0:
                    await conn.aclose()
                    continue
                nursery.start_soon(self._control_connection, conn, slots)

    async def _control_connection(self, conn: trio.SocketStream, slots: trio.Semaphore) -> None:
        async with slots, conn:
            uid = _peer_uid(conn)
            buffer = b""
            try:
                while True:
                    with trio.fail_after(_CONTROL_TIMEOUT):
                        chunk = await conn.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    if len(buffer) > control.MAX_LINE and b"\n" not in buffer:
                        await conn.send_all(
                            control.encode_response_error(
                                None, control.BAD_REQUEST, "line too long"
                            )
                        )
                        return
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        await conn.send_all(await self._control_request(line, uid))
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _control_request(self, line: bytes, uid: int | None) -> bytes:
        try:
            req = control.decode_request_untrusted(line)
        except BadPacket as e:
            code = getattr(e, "code", control.BAD_REQUEST)
            return control.encode_response_error(getattr(e, "request_id", None), code, str(e))
        rid, cmd, args = req["id"], req["cmd"], req.get("args") or {}
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            return control.encode_response_error(
                rid, control.UNKNOWN_COMMAND, f"unknown command {cmd!r}"
            )
        if cmd in ("join", "leave", "keys") and not (cmd == "keys" and args.get("op") == "list"):
            log.info("control: %s %s requested by uid %s", cmd, args.get("op", ""), uid)
        try:
            result = await handler(args)
        except _CommandFailed as e:
            return control.encode_response_error(rid, control.FAILED, str(e))
        except (KeyError, TypeError, ValueError) as e:
            return control.encode_response_error(rid, control.BAD_REQUEST, f"bad arguments: {e}")
        except MeshError as e:  # e.g. a store error under a KV command: answer, never crash
            log.warning("control: %s failed: %s", cmd, e)
            return control.encode_response_error(rid, control.FAILED, str(e))
        try:
            return control.encode_response_ok(rid, result)
        except ValueError as e:  # larger than a control line
            return control.encode_response_error(rid, control.FAILED, f"answer too large: {e}")

    # --------------------------------------------------------------- commands

    def _member_json(self, m: Member) -> dict[str, Any]:
        return {
            "name": m.node_id,
            "id": m.node_id,
            "addr": format_address(m.address),
            "status": m.state.name.lower(),
            "incarnation": m.incarnation,
            "tags": decode_tags(m.meta),
            "via": self._via(m),
            "protocol": {
                "min": m.protocol.minimum,
                "max": m.protocol.maximum,
                "version": m.protocol.current,
            },
        }

    def _via(self, m: Member) -> str | None:
        """How ``m`` was discovered (``self`` for this node)."""
        if m.node_id == self.node_id:
            return "self"
        source = self._sources.source(m.node_id)
        return None if source is None else source.value

    def _discovery_json(self) -> dict[str, Any]:
        return {
            "mdns": (
                self._mdns.describe()
                if self._mdns is not None
                else {"state": "off" if not self.config.discovery.mdns else "starting"}
            ),
            "sources": self._sources.counts(),
            "rejoin": self.config.discovery.rejoin,
            "snapshot": str(self._snapshot_path),
            "reconnect_interval_s": self.config.membership.reconnect_interval,
        }

    async def _cmd_members(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "self": self.node_id,
            "members": [self._member_json(m) for m in self.core.members()],
        }

    async def _cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        stats = self.core.statistics()
        members = self.core.members()
        counts = {
            s: sum(1 for m in members if m.state.name.lower() == s) for s in control.MEMBER_STATUSES
        }
        rows = [self._member_json(m) for m in members]
        for row in rows:  # --- plugins: what each member runs (its "plugins" tag)
            if row["tags"].get("plugins"):
                row["plugins"] = row["tags"]["plugins"].split(",")
        data = await self._kv_status(rows)
        return {
            **data,
            "self": self.node_id,
            "cluster": self.cluster,
            "key_fingerprint": self.keyring.fingerprint(self.keyring.primary),
            "address": format_address(self.config.node.advertise),
            "incarnation": stats.incarnation,
            "health": stats.health_score,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "members": rows,
            "counts": counts,
            "split": self._split_report(),
            "mdns": self._discovery_json()["mdns"]["state"],
            "counters": self._all_counters(),
            "local_plugins": self.plugins.summary(),  # --- plugins: state, restarts, errors
        }

    async def _kv_status(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """--- KV: add ``load`` (bytes) and ``owns`` (0..1) to member rows; the data footer.

        Load comes from each member's ``stats`` answer, cached for a few
        seconds (``KvTuning.stats_ttl``) so ``status --watch`` does not flood
        the mesh; a member that does not answer shows its last known load.
        Owns is the member's effective ownership: the share of the keys it
        holds a replica of (Cassandra's "Owns (effective)").
        """
        kv = self.kv
        view = None if kv is None else kv.view
        if kv is None or view is None:
            return {}
        try:
            loads = await kv.member_stats([row["name"] for row in rows])
        except StoreError as e:  # status still answers with a broken store
            log.warning("status: the replica store failed: %s", e)
            return {}
        # Owns only from a ring of the current view: right after a join the
        # ring still lists this node alone for a moment (its rebuild is debounced).
        current = kv.ring_is_current
        for row in rows:
            load = loads.get(row["name"])
            if load is not None:
                row["load"] = load.bytes
            if current and row["name"] in view.effective:
                row["owns"] = round(view.effective[row["name"]], 6)
        return {
            "under_replicated": await kv.under_replicated(),
            "hints_pending": kv.hints_pending,
            "handoffs": kv.handoffs_pending,
        }

    async def _cmd_info(self, args: dict[str, Any]) -> dict[str, Any]:
        stats = self.core.statistics()
        return {
            "name": self.node_id,
            "version": __version__,
            "address": format_address(self.config.node.advertise),
            "cluster": self.cluster,
            "incarnation": stats.incarnation,
            "health": stats.health_score,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "config_path": str(self.config.path),
            "state_dir": str(self.config.state.dir),
            "members": len(self.core.members()),
            "key_fingerprints": self.keyring.fingerprints(),
            "primary_key": self.keyring.fingerprint(self.keyring.primary),
            "tls_ca": self.tls.ca_fingerprint,
            "discovery": self._discovery_json(),
            "counters": self._all_counters(),
        }

    async def _cmd_join(self, args: dict[str, Any]) -> dict[str, Any]:
        texts = args["addresses"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("addresses must be a non-empty list of HOST:PORT strings")
        joined: list[str] = []
        failed: dict[str, str] = {}
        for text in texts:
            try:
                host, port = parse_address(text)
                infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
                address: Address = (infos[0][4][0], infos[0][4][1])
            except (ConfigError, OSError) as e:
                failed[text] = str(e)
                continue
            waiter = _Waiter(
                lambda ev, a=address: (
                    isinstance(ev, (JoinSucceeded, JoinFailed)) and ev.address == a
                )
            )
            self._waiters.append(waiter)
            self._sources.expect(address, Source.JOIN)
            try:
                self._feed(JoinRequested((address,)))
                with trio.move_on_after(self.config.membership.tcp_timeout + 1):
                    await waiter.event.wait()
            finally:
                self._waiters.remove(waiter)
            if isinstance(waiter.result, JoinSucceeded):
                joined.append(text)
            else:
                failed[text] = (
                    waiter.result.error if isinstance(waiter.result, JoinFailed) else "timeout"
                )
        if not joined:
            raise _CommandFailed("; ".join(f"{a}: {e}" for a, e in failed.items()))
        return {"joined": joined, "failed": failed}

    async def _cmd_metrics(self, args: dict[str, Any]) -> dict[str, Any]:
        """The Prometheus text, as ``/metrics`` serves it (also when that is off)."""
        return {"text": self._metrics_registry().text().decode()}

    async def _cmd_leave(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self._nursery is not None
        self._nursery.start_soon(self.leave)
        return {"left": True}

    async def _cmd_keys(self, args: dict[str, Any]) -> dict[str, Any]:
        op = args.get("op")
        if op not in control.KEY_OPS:
            raise ValueError(f"op must be one of {', '.join(control.KEY_OPS)}")
        key = b""
        if op != "list":
            try:
                key = base64.b64decode(args["key"], validate=True)
            except (ValueError, TypeError):
                raise ValueError("key must be base64") from None
            if len(key) != 32:
                raise ValueError("key must be 32 bytes (generate one with: meshd keygen)")
        results, failed = await self._key_op_everywhere(KeyOp(op, key))
        for node, res in results.items():
            if not res.ok:
                failed[node] = res.error
        if op == "list":
            holders: Counter[str] = Counter()
            for res in results.values():
                holders.update(res.fingerprints)
            primary = self.keyring.fingerprint(self.keyring.primary)
            keys = [
                {"fingerprint": fp, "primary": fp == primary, "members": n}
                for fp, n in holders.most_common()
            ]
            return {"keys": keys, "responded": len(results), "failed": failed}
        succeeded = sum(1 for r in results.values() if r.ok)
        if results[self.node_id].ok is False:
            raise _CommandFailed(results[self.node_id].error)
        return {"op": op, "fingerprint": fingerprint(key), "succeeded": succeeded, "failed": failed}

    # --------------------------------------------------------------- KV (issue 5)

    def _kv(self, *, serving: bool = True) -> KvService:
        """The KV service; with ``serving``, only once it may coordinate requests."""
        if self.kv is None or self.kv.view is None:
            raise _CommandFailed("the KV store is starting; retry in a moment")
        if serving and not self._kv_ready.is_set():
            raise _CommandFailed(
                "the KV store is starting: this node has not joined the mesh yet "
                "(see `meshctl status`); retry in a moment"
            )
        return self.kv

    async def _kv_call(self, action: Any) -> Any:
        try:
            return await action
        except KvUnavailable as e:
            raise _CommandFailed(str(e)) from None

    async def _cmd_kv_put(self, args: dict[str, Any]) -> dict[str, Any]:
        """Store a value: ``ns``, ``key``/``key_b64``, ``value``/``value_b64``,
        ``consistency``, ``timeout`` (seconds)."""
        kv = self._kv()
        ns, key = _kv_namespace(args), _kv_bytes(args, "key")
        value = _kv_bytes(args, "value", empty=True)
        outcome = await self._kv_call(
            kv.put(ns, key, value, consistency=args.get("consistency"), timeout=args.get("timeout"))
        )
        return _write_json(ns, key, outcome)

    async def _cmd_kv_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Delete a key (a tombstone): ``ns``, ``key``/``key_b64``, ``consistency``, ``timeout``."""
        kv = self._kv()
        ns, key = _kv_namespace(args), _kv_bytes(args, "key")
        outcome = await self._kv_call(
            kv.delete(ns, key, consistency=args.get("consistency"), timeout=args.get("timeout"))
        )
        return _write_json(ns, key, outcome)

    async def _cmd_kv_get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Read a key: ``found`` false when absent or deleted; the value in
        ``value_b64`` (and ``value`` when it is UTF-8 text)."""
        kv = self._kv()
        ns, key = _kv_namespace(args), _kv_bytes(args, "key")
        outcome = await self._kv_call(
            kv.get(ns, key, consistency=args.get("consistency"), timeout=args.get("timeout"))
        )
        record = outcome.record
        value = outcome.value
        if value is not None and len(value) > _KV_CONTROL_VALUE_MAX:
            raise _CommandFailed(
                f"the value is {len(value)} bytes; the control socket carries values up to "
                f"{_KV_CONTROL_VALUE_MAX} bytes (a control line is at most {control.MAX_LINE})"
            )
        result: dict[str, Any] = {
            "ns": ns,
            "key": _text_or_none(key),
            "key_b64": base64.b64encode(key).decode(),
            "found": value is not None,
            "deleted": record is not None and record.value is None,
            "value_b64": None if value is None else base64.b64encode(value).decode(),
            "value": None if value is None or len(value) > 65536 else _text_or_none(value),
            "version": None if record is None else _version_json(record),
            "replicas": list(outcome.replicas),
            "answered": list(outcome.answered),
        }
        return result

    async def _cmd_ring(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ring: owners per member (primary and effective ownership), keys,
        bytes, hints and handoffs per member, and whether a rebalance is running."""
        kv = self._kv(serving=False)
        view = kv.view
        assert view is not None
        names = list(view.ring.members)
        loads = await kv.member_stats(names)
        rows = []
        for name in names:
            member = self.core.member(NodeId(name))
            load = loads.get(name)
            rows.append(
                {
                    "name": name,
                    "status": member.state.name.lower() if member is not None else "unknown",
                    "owns_primary": round(view.primary.get(name, 0.0), 6),
                    "owns": round(view.effective.get(name, 0.0), 6),
                    "keys": None if load is None else load.keys,
                    "tombstones": None if load is None else load.tombstones,
                    "bytes": None if load is None else load.bytes,
                    "hints": None if load is None else load.hints,
                    "handoffs": None if load is None else load.handoffs,
                }
            )
        return {
            "self": self.node_id,
            "fingerprint": view.ring.fingerprint,
            "replicas": view.ring.replicas,
            "partitions": view.ring.partition_count,
            "members": rows,
            "handoffs": kv.handoffs_pending,
            "rebalancing": kv.rebalancing,
            "serving": self._kv_ready.is_set(),
            "hints_pending": kv.hints_pending,
            "under_replicated": await kv.under_replicated(),
        }

    async def _cmd_kv_merkle(self, args: dict[str, Any]) -> dict[str, Any]:
        """Per peer, the Merkle root of the partitions both replicate: two
        nodes have converged when each shows the same root for the other."""
        kv = self._kv(serving=False)
        view = kv.view
        assert view is not None
        return {
            "self": self.node_id,
            "fingerprint": view.ring.fingerprint,
            "roots": await kv.shared_roots(),
        }

    async def _cmd_kv_anti_entropy(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run one anti-entropy round now (with the peers this node initiates with)."""
        log.info("control: kv_anti_entropy requested")
        results = await self._kv().anti_entropy_round()
        return {
            "peers": {
                peer: {"buckets": r.buckets, "pushed": r.pushed, "pulled": r.pulled}
                for peer, r in results.items()
            }
        }

    async def _cmd_bench_kv(self, args: dict[str, Any]) -> dict[str, Any]:
        """BENCHMARK AID (bench/data.py), not a product command.

        Runs ``count`` requests of ``op`` (``put``, ``get`` or ``raw``: an
        empty ``_echo`` to each member of the key's preference list, waiting
        for as many as the level needs, i.e. the same round trips without the
        KV work) at ``consistency``, ``concurrency`` at a time, over ``keys``
        distinct keys in namespace ``bench`` with values of ``size`` bytes;
        ``coalesce`` false sends one message per write and replica.
        Refused unless the daemon was started with ``MESHD_BENCH=1``.
        """
        if os.environ.get("MESHD_BENCH") != "1":
            raise _CommandFailed("bench_kv is a benchmark aid: start meshd with MESHD_BENCH=1")
        kv = self._kv()
        op = args.get("op", "put")
        if op not in ("put", "get", "raw"):
            raise ValueError("op must be put, get or raw")
        count, concurrency = int(args["count"]), int(args.get("concurrency", 1))
        keys, size = int(args.get("keys", count)), int(args.get("size", 16))
        consistency = str(args.get("consistency", "quorum"))
        timeout = float(args.get("timeout", 10.0))
        coalesce = bool(args.get("coalesce", True))
        if not (1 <= count <= 1_000_000 and 1 <= concurrency <= 1024 and 1 <= keys <= count):
            raise ValueError("need 1 <= count <= 1e6, 1 <= concurrency <= 1024, 1 <= keys <= count")
        if not 0 <= size <= kvmessages.MAX_VALUE_BYTES:
            raise ValueError("size must be 0..1 MiB")
        value = os.urandom(size)

        async def one(i: int) -> None:
            key = b"bench-%08d" % (i % keys)
            if op == "put":
                await kv.put("bench", key, value, consistency=consistency, timeout=timeout)
            elif op == "get":
                await kv.get("bench", key, consistency=consistency, timeout=timeout)
            else:
                await kv.echo_fanout(key, consistency, timeout)

        was = kv.coalesce_writes
        kv.coalesce_writes = coalesce
        try:
            result = await run_load(
                one, count=count, concurrency=concurrency, expected_errors=(KvUnavailable,)
            )
        finally:
            kv.coalesce_writes = was
        return {"coalesce": coalesce, "op": op, "consistency": consistency, **result}

    # ================================================================ plugins (issue 6)

    def node_tags(self, config: Config | None = None) -> dict[str, str]:
        """The tags this node gossips: ``[node] tags`` plus the plugins' (runtime/plugins.py)."""
        return self.plugins.node_tags((config or self.config).node.tags)

    def publish_tags(self) -> None:
        """Gossip this node's tags if they changed (a plugin published some).

        Raises:
            MetadataTooLarge: they exceed ``membership.meta_max_size``; nothing changed.
        """
        meta = encode_tags(self.node_tags())
        if meta != self.meta:
            self._feed(MetadataChanged(meta))
            self.meta = meta

    def send_user_event(self, payload: bytes) -> int:
        """Broadcast a user event (core/userevents.py); plugins' broadcasts come here.

        Returns:
            Its Lamport time.

        Raises:
            LocalProtocolError: it does not fit in a gossip packet, or this node left.
        """
        for out in self._feed(SendUserEvent(payload)):
            if isinstance(out, UserEventReceived):
                return out.ltime
        return 0  # pragma: no cover - the core always reports its own event

    async def _cmd_plugins(self, args: dict[str, Any]) -> dict[str, Any]:
        """``meshctl plugins [reload [NAME]]``: the plugins' state, or apply the config file."""
        if args.get("op") == "reload":
            log.info("control: plugins reload %s", args.get("name") or "")
        try:
            return await self.plugins.command_plugins(args)
        except PluginCommandFailed as e:
            raise _CommandFailed(str(e)) from None

    async def _cmd_plugin(self, args: dict[str, Any]) -> dict[str, Any]:
        """``meshctl plugins call PLUGIN COMMAND`` (also ``meshctl event`` and ``services``)."""
        try:
            return await self.plugins.command(args)
        except PluginCommandFailed as e:
            raise _CommandFailed(str(e)) from None

    async def _cmd_bench_plugin_rpc(self, args: dict[str, Any]) -> dict[str, Any]:
        """BENCHMARK AID (bench/plugins.py), like ``bench_rpc`` but through a plugin's RPC."""
        try:
            return await self.plugins.bench_rpc(args)
        except PluginCommandFailed as e:
            raise _CommandFailed(str(e)) from None

    # --------------------------------------------------------------- benchmark aid

    async def _cmd_bench_rpc(self, args: dict[str, Any]) -> dict[str, Any]:
        """BENCHMARK AID (bench/rpc.py), not a product command.

        Runs ``count`` calls of ``service`` (default ``_echo``) with a body of
        ``size`` bytes to member ``node``, ``concurrency`` at a time, and
        returns rates and latencies. ``mode`` ``session`` uses the persistent
        sessions (:meth:`call`); ``oneshot`` opens a fresh TLS connection per
        call (``rpc.call_once``), the baseline. Refused unless the daemon was
        started with ``MESHD_BENCH=1`` in its environment.
        """
        if os.environ.get("MESHD_BENCH") != "1":
            raise _CommandFailed("bench_rpc is a benchmark aid: start meshd with MESHD_BENCH=1")
        node = str(args["node"])
        count, concurrency = int(args["count"]), int(args.get("concurrency", 1))
        size = int(args.get("size", 0))
        service = str(args.get("service", rpc.ECHO_SERVICE))
        mode = args.get("mode", "session")
        timeout = float(args.get("timeout", 10.0))
        if not (1 <= count <= 1_000_000 and 1 <= concurrency <= 1024 and 0 <= size <= 1 << 20):
            raise ValueError("need 1 <= count <= 1e6, 1 <= concurrency <= 1024, size <= 1 MiB")
        if mode not in ("session", "oneshot"):
            raise ValueError("mode must be session or oneshot")
        member = self.core.member(NodeId(node))
        if member is None or member.state is not MemberState.ALIVE:
            raise _CommandFailed(f"{node!r} is not an alive member")
        body = bytes(size)

        async def one(_: int) -> None:
            if mode == "session":
                await self.call(node, service, body, timeout)
            else:
                await rpc.call_once(
                    self._client_ctx, member.node_id, member.address, service, body, timeout=timeout
                )

        result = await run_load(
            one,
            count=count,
            concurrency=concurrency,
            expected_errors=(rpc.RpcError, rpc.RpcUnavailable),
        )
        return {"mode": mode, **result}


class _CommandFailed(Exception):
    """A control command could not be carried out; the message says why."""


# --- KV: control arguments and answers


def _kv_namespace(args: dict[str, Any]) -> str:
    from meshd.core.replication import DEFAULT_NAMESPACE, check_namespace

    return check_namespace(args.get("ns", DEFAULT_NAMESPACE))


def _kv_bytes(args: dict[str, Any], name: str, *, empty: bool = False) -> bytes:
    """``args[name]`` (text, UTF-8 encoded) or ``args[name + "_b64"]`` (base64)."""
    encoded = args.get(f"{name}_b64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ValueError(f"{name}_b64 must be a base64 string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ValueError(f"{name}_b64 is not valid base64") from None
    else:
        text = args.get(name)
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string (or give {name}_b64)")
        try:
            raw = text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{name} is not valid UTF-8 text; use {name}_b64") from None
    if not raw and not empty:
        raise ValueError(f"{name} must not be empty")
    return raw


def _text_or_none(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _version_json(record: Any) -> dict[str, Any]:
    return {
        "timestamp": str(record.timestamp),
        "wall_ms": record.timestamp.wall_ms,
        "writer": record.writer,
    }


def _write_json(ns: str, key: bytes, outcome: Any) -> dict[str, Any]:
    return {
        "ns": ns,
        "key": _text_or_none(key),
        "key_b64": base64.b64encode(key).decode(),
        "deleted": outcome.record.value is None,
        "version": _version_json(outcome.record),
        "replicas": list(outcome.replicas),
        "acked": list(outcome.acked),
        "hinted": dict(outcome.hinted),
    }


# ==================================================================== helpers


def _return_startup_memory() -> None:
    """Give the heap freed after start-up (imports, TLS set-up) back to the OS.

    An idle daemon should cost its host little: glibc keeps freed pages
    unless asked; malloc_trim hands them back (about 1 MiB). Elsewhere a no-op.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        name = ctypes.util.find_library("c")
        if name is None:
            return
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            return
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def _describe(e: BaseException) -> str:
    """A readable reason: trio's BrokenResourceError has none of its own."""
    return str(e) or str(e.__cause__ or "") or type(e).__name__


def _family(host: str) -> int:
    return stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET


def _addr(address: Address) -> str:
    return format_address(address)


async def _connect(host: str, port: int) -> trio.SocketStream:
    # Member addresses are numeric (the core never sees DNS names), so one
    # plain connect does: its errors (ECONNREFUSED above all) stay unwrapped.
    sock = trio.socket.socket(_family(host), stdlib_socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _refused(e: OSError) -> bool:
    return e.errno == errno.ECONNREFUSED


def _reason_key(reason: str) -> str:
    head = reason.split(":", 1)[0].strip().lower()
    return "".join(c if c.isalnum() else "_" for c in head)[:40] or "malformed"


def _peer_uid(conn: trio.SocketStream) -> int | None:
    try:
        creds = conn.socket.getsockopt(
            stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, struct.calcsize("3i")
        )
        return int(struct.unpack("3i", creds)[1])
    except (OSError, AttributeError):
        return None


async def _socket_alive(path: Path) -> bool:
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        with trio.move_on_after(1.0):
            await sock.connect(str(path))
            return True
        return False
    except OSError:
        return False
    finally:
        sock.close()


# ==================================================================== entry point


async def serve(config: Config, *, node_id: str, secret: bytes) -> int:
    """Run a daemon until SIGTERM/SIGINT (graceful leave) or a leave command.

    SIGHUP reloads the configuration file.
    """
    from meshd.config import load_config
    from meshd.runtime import sdnotify

    notifier = sdnotify.Notifier()
    daemon = Daemon(config, node_id=node_id, secret=secret, notifier=notifier)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            # The watchdog runs in this loop: a blocked loop stops feeding it.
            await nursery.start(sdnotify.watchdog, notifier)
            await nursery.start(daemon.run)

            async def watch_signals() -> None:
                async for sig in signals:
                    if sig == signal.SIGHUP:
                        notifier.reloading("reloading the configuration")
                        try:
                            fresh = load_config(config.path)
                        except ConfigError as e:
                            log.error("reload failed, keeping the running configuration: %s", e)
                        else:
                            ignored = daemon.reload(fresh)
                            if ignored:
                                log.warning(
                                    "reloaded; these need a restart to change: %s",
                                    ", ".join(ignored),
                                )
                            else:
                                log.info("reloaded the configuration")
                        # Always READY again: `systemctl reload` waits for it.
                        notifier.ready(daemon.status_line())
                    else:
                        log.info("received %s", signal.Signals(sig).name)
                        notifier.stopping("leaving the mesh")
                        await daemon.leave()
                        return

            nursery.start_soon(watch_signals)
            await daemon._stop.wait()
            nursery.cancel_scope.cancel()
    return 0
