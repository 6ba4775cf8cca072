"""Request/response transport for application traffic: RPC sessions over the mutual-TLS streams."""

# Theory of operation
# -------------------
#
# The replicated KV store (issue 5) and plugin RPC (issue 6) need many small
# requests between members. The membership exchanges open one TLS connection
# per request (connect, a TLS 1.3 handshake with two Ed25519 certificates,
# one frame each way, close): fine for a push-pull every 30 s, but the
# handshake costs far more than a small request. So application traffic uses
# *sessions* (protocol/SPEC.md §3): a connection whose first frame is an
# ``app_request`` stays open and carries any number of ``app_request`` frames
# from the client and ``app_response`` frames from the server, in any order,
# matched by ``request_id``. A request then costs one round trip.
#
#   client (RpcClient)                         server (RpcServer)
#   one session per (peer, address)            one task tree per session
#   call() -> request id, frame to outbox  ->  reader: frame -> handler task
#   reader: response -> the waiting call   <-  handler -> response to outbox
#
# Rule 1: sends happen only in a session's writer task. trio's SSLStream is
# broken for good when a send_all is cancelled halfway, so a caller whose
# timeout expires must never be the one sending: callers append complete
# frames to the session's outbox and the writer sends them, joining whatever
# piled up meanwhile into one send_all (fewer TLS records and syscalls under
# load). A single writer is the send lock.
#
# Rule 2: nothing a peer sends, and no failure of a handler, raises out of
# this module into the daemon. Every task of a session catches the errors
# its I/O can raise and ends the session; handler exceptions become error
# responses. Only cancellation propagates.
#
# Rule 3: everything is bounded. The server reads at most
# ``max_in_flight`` requests of a session ahead of the responses it has
# written, then stops reading, so a fast client meets TCP backpressure
# instead of growing our memory; the client lets at most ``max_in_flight``
# calls wait on one session; frames are at most STREAM_MAX bytes; the
# server accepts at most ``max_sessions`` sessions at once.
#
# Idle sessions are closed: the client after ``idle_timeout`` (60 s) without
# a call, the server after twice that without a request (a client that went
# away silently). The client's timeout is the shorter on purpose: when it
# closes a session, nothing is in flight; had the server closed it first, a
# request sent at that moment would cross the close and fail. A failed or
# closed session is never reused; the next call connects again.
#
# Delivery is at most once: a call that fails with RpcUnavailable after its
# frame was queued (connection lost, timeout) may or may not have run on the
# peer. Callers that retry need idempotent requests (LWW puts are).

from __future__ import annotations

import logging
import socket as stdlib_socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from meshd.core import codec
from meshd.core.messages import AppRequest, AppResponse, MessageType
from meshd.core.types import Address, NodeId
from meshd.errors import BadPacket, LocalProtocolError, MeshError
from meshd.runtime import tls
from meshd.runtime.framing import FrameError, FrameReader, frame_bytes

__all__ = [
    "BODY_MAX",
    "ECHO_SERVICE",
    "Handler",
    "RpcClient",
    "RpcClientStatistics",
    "RpcError",
    "RpcServer",
    "RpcServerStatistics",
    "RpcUnavailable",
    "call_once",
    "session_request_untrusted",
]

log = logging.getLogger("meshd.rpc")

#: A service: called with the verified node id of the caller and the request
#: body, returns the response body. Raise :class:`RpcError` to refuse.
Handler = Callable[[NodeId, bytes], Awaitable[bytes]]

#: Built-in service that answers with the request body (empty for an empty
#: request): the raw ceiling of the transport, for benchmarks and checks.
ECHO_SERVICE = "_echo"
#: Largest request or response body. Leaves room in a STREAM_MAX frame for
#: the message around it (a 64-byte service, a 256-character error).
BODY_MAX = codec.STREAM_MAX - 2048
#: Longest error text on the wire (SPEC.md: app_response.error).
ERROR_MAX = 256

#: Server: requests of one session read ahead of their written responses.
SERVER_MAX_IN_FLIGHT = 64
#: Server: sessions served at once; more are answered "server busy" and closed.
MAX_SESSIONS = 1024
#: Client: calls waiting on one session at once; more wait for room.
CLIENT_MAX_IN_FLIGHT = 1024
#: Client: seconds without a call after which a session is closed.
CLIENT_IDLE_TIMEOUT = 60.0
#: Server: seconds without a request (and nothing in flight) after which a
#: session is closed. Longer than the client's, see the theory above.
SERVER_IDLE_TIMEOUT = 2 * CLIENT_IDLE_TIMEOUT
#: Client: deadline of connect + TLS handshake + identity check.
CONNECT_TIMEOUT = 10.0
#: Seconds a graceful close (TLS close_notify) may take before the socket is
#: simply closed.
_CLOSE_TIMEOUT = 1.0
#: Bytes the writer joins into one send_all.
_BATCH_BYTES = 256 * 1024

# Errors reading or writing a session's stream can raise; each ends the
# session. (FrameError and BadPacket come from our own framing and codec.)
_IO_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
    OSError,
    FrameError,
)


class RpcError(MeshError):
    """The remote service refused or failed the request; the message is its reason."""


class RpcUnavailable(MeshError):
    """No answer: could not connect, TLS or identity failed, connection lost, or timed out.

    Attributes:
        kind: which, for callers that branch on it: ``"connect"`` (refused,
            unreachable), ``"tls"`` (handshake failed), ``"identity"`` (the
            peer's certificate names another node), ``"lost"`` (the session
            ended before the answer), ``"protocol"`` (the peer sent something
            invalid), ``"timeout"``, ``"stopped"`` (this client is not
            running) or ``"not_member"`` (set by the daemon: not an alive
            member).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Closable(Protocol):
    async def aclose(self) -> None: ...


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


def _describe(e: BaseException) -> str:
    """A readable reason: trio's BrokenResourceError has none of its own."""
    return str(e) or str(e.__cause__ or "") or type(e).__name__


def _where(peer: str, address: Address) -> str:
    host, port = address
    return f"{peer} at [{host}]:{port}" if ":" in host else f"{peer} at {host}:{port}"


def _check_service(service: str) -> None:
    if not isinstance(service, str):
        raise TypeError(f"service must be a str, not {type(service).__name__}")
    if not 1 <= len(service.encode()) <= codec.SERVICE_MAX:
        raise ValueError(f"service name must be 1..{codec.SERVICE_MAX} UTF-8 bytes")


def _check_body(body: bytes) -> None:
    if len(body) > BODY_MAX:
        raise LocalProtocolError(f"body of {len(body)} bytes exceeds {BODY_MAX}")


def _frame(msg: AppRequest | AppResponse) -> bytes:
    return frame_bytes(codec.encode_stream(msg))


async def _close(stream: _Closable) -> None:
    """Close gracefully if that is quick; trio closes the socket in any case."""
    with trio.move_on_after(_CLOSE_TIMEOUT):
        try:
            await stream.aclose()
        except _IO_ERRORS:
            pass


async def _connect(host: str, port: int) -> trio.SocketStream:
    # Member addresses are numeric (the core never sees DNS names), so one
    # plain connect does, and its errors (ECONNREFUSED above all) stay plain.
    family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
    sock = trio.socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def session_request_untrusted(frame: bytes) -> AppRequest | None:
    """The first frame of an inbound connection, if it opens an RPC session.

    The daemon calls this on every first frame, so frames of other types
    (push-pull, ping, key_op) are told apart from the first bytes without
    decoding them: a canonical frame is the version byte, a fixarray header
    and the type as a positive fixint. Anything else is decoded in full.

    Args:
        frame: a stream frame, length prefix removed.

    Returns:
        The request, or None when the frame is anything else, including an
        invalid app_request (the daemon's usual path rejects and counts it).
    """
    if (
        len(frame) >= 3
        and 0x90 <= frame[1] <= 0x9F
        and frame[2] < 0x80
        and frame[2] != MessageType.APP_REQUEST
    ):
        return None
    try:
        msg = codec.decode_stream_untrusted(frame)
    except BadPacket:
        return None
    return msg if isinstance(msg, AppRequest) else None


########################################################################
# Outbox: the one writer of a session
########################################################################


@attrs.define(eq=False)
class _Outbox:
    """Complete frames waiting for the session's writer task (Rule 1)."""

    frames: list[bytes] = attrs.field(factory=list)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def put(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self.lot:
            self.lot.unpark()

    async def write_forever(
        self, stream: trio.abc.SendStream, on_written: Callable[[int], None]
    ) -> None:
        """Send frames as they come, several per send_all; ``on_written(n)`` after each."""
        while True:
            frames = self.frames
            if not frames:
                await self.lot.park()
                continue
            size = 0
            count = 0
            for f in frames:
                size += len(f)
                count += 1
                if size >= _BATCH_BYTES:
                    break
            if count == len(frames):
                self.frames = []
            else:
                self.frames = frames[count:]
                frames = frames[:count]
            await stream.send_all(frames[0] if count == 1 else b"".join(frames))
            on_written(count)


########################################################################
# Server
########################################################################


@attrs.frozen
class RpcServerStatistics:
    """A snapshot of :class:`RpcServer`'s state and counters."""

    sessions_active: int
    services: tuple[str, ...]
    sessions_accepted: int
    sessions_refused_busy: int
    sessions_idle_closed: int
    requests: int
    errors: int
    unknown_service: int
    handler_exceptions: int
    bad_frames: int


@attrs.define(eq=False)
class _ServerSession:
    peer: NodeId
    stream: trio.abc.Stream
    slots: trio.Semaphore
    outbox: _Outbox = attrs.field(factory=_Outbox)
    #: Requests read whose response is not written yet.
    in_flight: int = 0
    last_active: float = attrs.field(factory=trio.current_time)


class RpcServer:
    """Serves RPC sessions: dispatches each request to its registered service.

    The built-in :data:`ECHO_SERVICE` is always registered.

    Args:
        max_in_flight: requests per session handled at once; beyond that the
            session stops reading (backpressure).
        idle_timeout: seconds a session with nothing in flight may stay
            silent before it is closed.
        max_sessions: sessions served at once.
        counters: where to count (``rpc_server_*`` keys); the daemon passes
            its own so the counts show in ``meshctl status``.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = SERVER_MAX_IN_FLIGHT,
        idle_timeout: float = SERVER_IDLE_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        counters: Counter[str] | None = None,
    ) -> None:
        if max_in_flight < 1 or max_sessions < 1 or not idle_timeout > 0:
            raise ValueError("max_in_flight, max_sessions and idle_timeout must be positive")
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._handlers: dict[str, Handler] = {ECHO_SERVICE: _echo}
        self._sessions: set[_ServerSession] = set()

    def register(self, service: str, handler: Handler) -> None:
        """Serve ``service`` with ``handler``.

        The handler runs in its own task, concurrently with the other
        requests of the session; it receives the caller's node id as
        verified by TLS. Raising :class:`RpcError` answers with its message;
        any other exception answers "internal error in service X" and is
        logged with its traceback.

        Raises:
            ValueError: the name is not 1..64 UTF-8 bytes, starts with ``_``
                (reserved for built-ins), or is already registered.
        """
        _check_service(service)
        if service.startswith("_"):
            raise ValueError(f"service names starting with '_' are reserved: {service!r}")
        if service in self._handlers:
            raise ValueError(f"service {service!r} is already registered")
        self._handlers[service] = handler

    def unregister(self, service: str) -> None:
        """Stop serving ``service``; later requests get "unknown service". No-op if absent."""
        if not service.startswith("_"):
            self._handlers.pop(service, None)

    def statistics(self) -> RpcServerStatistics:
        c = self.counters
        return RpcServerStatistics(
            sessions_active=len(self._sessions),
            services=tuple(sorted(self._handlers)),
            sessions_accepted=c["rpc_server_sessions_accepted"],
            sessions_refused_busy=c["rpc_server_sessions_refused_busy"],
            sessions_idle_closed=c["rpc_server_sessions_idle_closed"],
            requests=c["rpc_server_requests"],
            errors=c["rpc_server_errors"],
            unknown_service=c["rpc_server_unknown_service"],
            handler_exceptions=c["rpc_server_handler_exceptions"],
            bad_frames=c["rpc_server_bad_frames"],
        )

    async def call_local(self, peer: NodeId, service: str, body: bytes) -> bytes:
        """Run ``service`` here, as a request from ``peer`` would (no network).

        For a node that is itself one of the members it calls (a KV
        coordinator that is also a replica).

        Raises:
            RpcError: the service refused or failed, or is unknown.
        """
        response = await self._dispatch(peer, AppRequest(0, service, body))
        if response.ok:
            return response.body
        raise RpcError(response.error)

    async def serve_session(self, stream: trio.abc.Stream, peer: NodeId, first: AppRequest) -> None:
        """Serve one session until the client closes it, it idles out or breaks.

        Takes ownership of ``stream`` (a TLS stream after the handshake,
        whose peer certificate named ``peer``) and closes it before
        returning. Never raises, except trio.Cancelled.

        Args:
            stream: the connection, already past its first frame.
            peer: the client's verified node id.
            first: the request that opened the session.
        """
        c = self.counters
        if len(self._sessions) >= self.max_sessions:
            c["rpc_server_sessions_refused_busy"] += 1
            refusal = AppResponse(first.request_id, False, b"", "server busy: too many sessions")
            with trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await stream.send_all(_frame(refusal))
                except _IO_ERRORS:
                    pass
            await _close(stream)
            return
        c["rpc_server_sessions_accepted"] += 1
        session = _ServerSession(peer, stream, trio.Semaphore(self.max_in_flight))
        self._sessions.add(session)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, session, nursery.cancel_scope)
                nursery.start_soon(self._watch_idle, session, nursery.cancel_scope)
                session.slots.acquire_nowait()
                self._start(nursery, session, first)
                await self._read(session, nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._sessions.discard(session)
            await _close(stream)

    def _start(self, nursery: trio.Nursery, session: _ServerSession, req: AppRequest) -> None:
        session.in_flight += 1
        session.last_active = trio.current_time()
        self.counters["rpc_server_requests"] += 1
        nursery.start_soon(self._answer, session, req)

    async def _read(self, session: _ServerSession, nursery: trio.Nursery) -> None:
        reader = FrameReader(session.stream, codec.STREAM_MAX)
        slots = session.slots
        while True:
            # A slot per request read ahead of its written response: when
            # they run out we stop reading and TCP pushes back (Rule 3).
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                self.counters["rpc_server_backpressure"] += 1
                await slots.acquire()
            try:
                data = await reader.receive()
            except _IO_ERRORS as e:
                log.debug("rpc session from %s ended: %s", session.peer, _describe(e))
                return
            if data is None:
                return  # the client closed the session
            try:
                msg = codec.decode_stream_untrusted(data)
            except BadPacket as e:
                self.counters["rpc_server_bad_frames"] += 1
                log.debug("rpc session from %s: bad frame: %s", session.peer, e)
                return
            if not isinstance(msg, AppRequest):
                self.counters["rpc_server_bad_frames"] += 1
                log.debug("rpc session from %s: unexpected %s", session.peer, type(msg).__name__)
                return
            self._start(nursery, session, msg)

    async def _answer(self, session: _ServerSession, req: AppRequest) -> None:
        response = await self._dispatch(session.peer, req)
        try:
            data = _frame(response)
        except LocalProtocolError:  # pragma: no cover - bodies are checked in _dispatch
            data = _frame(AppResponse(req.request_id, False, b"", "response too large"))
        session.outbox.put(data)

    async def _dispatch(self, peer: NodeId, req: AppRequest) -> AppResponse:
        c = self.counters
        handler = self._handlers.get(req.service)
        if handler is None:
            c["rpc_server_unknown_service"] += 1
            c["rpc_server_errors"] += 1
            error = _clip(f"unknown service {req.service!r}")
            return AppResponse(req.request_id, False, b"", error)
        try:
            body = await handler(peer, req.body)
            if not isinstance(body, bytes):
                if not isinstance(body, (bytearray, memoryview)):
                    raise TypeError(f"handler returned {type(body).__name__}, not bytes")
                body = bytes(body)
            _check_body(body)
        except RpcError as e:
            c["rpc_server_errors"] += 1
            return AppResponse(req.request_id, False, b"", _clip(str(e)))
        except Exception:
            # Rule 2: a failing handler answers, it does not take the session
            # (let alone the daemon) down. BaseExceptions (Cancelled,
            # KeyboardInterrupt) are not caught.
            c["rpc_server_errors"] += 1
            c["rpc_server_handler_exceptions"] += 1
            log.exception("service %r failed on a request from %s", req.service, peer)
            return AppResponse(
                req.request_id, False, b"", _clip(f"internal error in service {req.service!r}")
            )
        return AppResponse(req.request_id, True, body, "")

    async def _write(self, session: _ServerSession, scope: trio.CancelScope) -> None:
        def written(count: int) -> None:
            session.in_flight -= count
            session.last_active = trio.current_time()
            for _ in range(count):
                session.slots.release()

        try:
            await session.outbox.write_forever(session.stream, written)
        except _IO_ERRORS as e:
            log.debug("rpc session from %s: write failed: %s", session.peer, _describe(e))
            scope.cancel()

    async def _watch_idle(self, session: _ServerSession, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep_until(session.last_active + self.idle_timeout)
            now = trio.current_time()
            if session.in_flight:
                session.last_active = now  # a slow handler is not idleness
            elif now >= session.last_active + self.idle_timeout:
                self.counters["rpc_server_sessions_idle_closed"] += 1
                log.debug("rpc session from %s idle, closing", session.peer)
                scope.cancel()
                return


async def _echo(peer: NodeId, body: bytes) -> bytes:
    return body


########################################################################
# Client
########################################################################


@attrs.frozen
class RpcClientStatistics:
    """A snapshot of :class:`RpcClient`'s state and counters."""

    sessions_active: int
    calls: int
    errors: int
    unavailable: int
    timeouts: int
    connects: int
    connect_failures: int
    sessions_lost: int
    sessions_idle_closed: int
    late_responses: int


@attrs.define(eq=False)
class _Call:
    """One call waiting for its response."""

    done: trio.Event = attrs.field(factory=trio.Event)
    response: AppResponse | None = None
    error: tuple[str, str] | None = None  # (kind, message) of RpcUnavailable


@attrs.define(eq=False)
class _ClientSession:
    peer: NodeId
    address: Address
    stream: trio.SSLStream[trio.SocketStream]
    outbox: _Outbox = attrs.field(factory=_Outbox)
    pending: dict[int, _Call] = attrs.field(factory=dict)
    next_id: int = 0
    #: Calls waiting for room (more than max_in_flight pending).
    room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    closed: bool = False
    error: tuple[str, str] = ("lost", "")
    last_active: float = attrs.field(factory=trio.current_time)
    scope: trio.CancelScope | None = None


@attrs.define(eq=False)
class _Dial:
    """A connection being established; concurrent first calls share it."""

    done: trio.Event = attrs.field(factory=trio.Event)
    session: _ClientSession | None = None
    error: tuple[str, str] = ("stopped", "the RPC client stopped")


class _DialFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class RpcClient:
    """Calls services on other nodes over persistent, multiplexed sessions.

    One session per peer (per ``(peer, address)``: a member that moved gets
    a new one), opened by the first call and shared by every call after it,
    from any task; concurrent first calls share one connection attempt.
    Background work (connecting, reading responses, writing requests) runs
    in :meth:`run`, which must be started first::

        client = RpcClient(tls.client_context(identity))
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            body = await client.call(peer, address, "kv", request, timeout=2.0)

    Args:
        ssl_context: this node's client context (:func:`tls.client_context`).
        connect_timeout: deadline of connect + TLS handshake + identity check.
        idle_timeout: seconds without a call after which a session closes.
        max_in_flight: calls waiting on one session at once.
        counters: where to count (``rpc_client_*`` keys).
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        idle_timeout: float = CLIENT_IDLE_TIMEOUT,
        max_in_flight: int = CLIENT_MAX_IN_FLIGHT,
        counters: Counter[str] | None = None,
    ) -> None:
        if max_in_flight < 1 or not connect_timeout > 0 or not idle_timeout > 0:
            raise ValueError("max_in_flight, connect_timeout and idle_timeout must be positive")
        self._ctx = ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_in_flight = max_in_flight
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._nursery: trio.Nursery | None = None
        self._sessions: dict[tuple[NodeId, Address], _ClientSession] = {}
        self._dials: dict[tuple[NodeId, Address], _Dial] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the client's sessions until cancelled; then close them all.

        Calls fail with RpcUnavailable (``"stopped"``) before this started
        and after it ended.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def statistics(self) -> RpcClientStatistics:
        c = self.counters
        return RpcClientStatistics(
            sessions_active=len(self._sessions),
            calls=c["rpc_client_calls"],
            errors=c["rpc_client_errors"],
            unavailable=c["rpc_client_unavailable"],
            timeouts=c["rpc_client_timeouts"],
            connects=c["rpc_client_connects"],
            connect_failures=c["rpc_client_connect_failures"],
            sessions_lost=c["rpc_client_sessions_lost"],
            sessions_idle_closed=c["rpc_client_sessions_idle_closed"],
            late_responses=c["rpc_client_late_responses"],
        )

    async def call(
        self, peer: NodeId, address: Address, service: str, body: bytes, *, timeout: float
    ) -> bytes:
        """Call ``service`` on ``peer`` (reached at ``address``) and return its answer.

        Args:
            peer: the node id the server's certificate must name.
            address: its stream (TCP) address, the member's address.
            service: the service name, 1..64 UTF-8 bytes.
            body: the request, at most :data:`BODY_MAX` bytes.
            timeout: seconds for everything: connecting if needed, waiting
                for room, and the answer.

        Returns:
            The response body.

        Raises:
            RpcError: the service refused or failed (its message), or is
                unknown there.
            RpcUnavailable: no answer; ``kind`` and the message say why.
                The request may or may not have run on the peer.
            ValueError, TypeError: a bad service name.
            LocalProtocolError: ``body`` is too large.
        """
        _check_service(service)
        _check_body(body)
        c = self.counters
        c["rpc_client_calls"] += 1
        key = (peer, address)
        call = _Call()
        phase = "connecting to"
        try:
            with trio.move_on_after(timeout):
                session = self._sessions.get(key)
                if session is None:
                    session = await self._open(key)
                while len(session.pending) >= self.max_in_flight and not session.closed:
                    phase = "waiting for room on the session to"
                    await session.room.park()
                if len(session.outbox.frames) >= self.max_in_flight:
                    # The writer is stuck: the peer stopped reading but the
                    # connection is up. Frames of calls that timed out would
                    # pile up here; give up on the session (Rule 3).
                    self._lost(session, "the peer stopped reading")
                if session.closed:
                    raise RpcUnavailable(*session.error)
                phase = "waiting for"
                rid = session.next_id
                session.next_id = rid + 1
                session.pending[rid] = call
                session.last_active = trio.current_time()
                session.outbox.put(_frame(AppRequest(rid, service, body)))
                try:
                    await call.done.wait()
                finally:
                    # Still pending: timed out or cancelled; forget it (a late
                    # answer is counted and dropped).
                    if session.pending.pop(rid, None) is not None and session.room:
                        session.room.unpark()
        except RpcUnavailable:
            c["rpc_client_unavailable"] += 1
            raise
        response = call.response
        if response is not None:
            if response.ok:
                return response.body
            c["rpc_client_errors"] += 1
            raise RpcError(response.error)
        c["rpc_client_unavailable"] += 1
        if call.error is not None:
            raise RpcUnavailable(*call.error)
        c["rpc_client_timeouts"] += 1
        raise RpcUnavailable(
            "timeout", f"timeout after {timeout:g} s {phase} {_where(peer, address)} ({service!r})"
        )

    # ------------------------------------------------------------ sessions

    async def _open(self, key: tuple[NodeId, Address]) -> _ClientSession:
        nursery = self._nursery
        if nursery is None:
            raise RpcUnavailable("stopped", "the RPC client is not running")
        dial = self._dials.get(key)
        if dial is None:
            # Single flight: the attempt runs in its own task with its own
            # deadline, so a caller's short timeout or cancellation does not
            # spoil it for the others waiting on it.
            dial = self._dials[key] = _Dial()
            nursery.start_soon(self._dial_and_serve, key, dial)
        await dial.done.wait()
        if dial.session is None:
            raise RpcUnavailable(*dial.error)
        return dial.session

    async def _dial_and_serve(self, key: tuple[NodeId, Address], dial: _Dial) -> None:
        session = None
        try:
            stream = await self._dial(*key)
        except _DialFailed as e:
            self.counters["rpc_client_connect_failures"] += 1
            log.debug("rpc: %s", e.message)
            dial.error = (e.kind, e.message)
        else:
            self.counters["rpc_client_connects"] += 1
            session = _ClientSession(key[0], key[1], stream)
            self._sessions[key] = session
            dial.session = session
        finally:
            if self._dials.get(key) is dial:
                del self._dials[key]
            dial.done.set()
        if session is not None:
            await self._serve(session)

    async def _dial(self, peer: NodeId, address: Address) -> trio.SSLStream[trio.SocketStream]:
        where = _where(peer, address)
        stream = None
        try:
            with trio.fail_after(self.connect_timeout):
                try:
                    tcp = await _connect(*address)
                except OSError as e:
                    raise _DialFailed(
                        "connect", f"cannot connect to {where}: {e.strerror or e}"
                    ) from None
                stream = trio.SSLStream(tcp, self._ctx, server_hostname=None)
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
                    raise _DialFailed(
                        "tls", f"TLS handshake with {where} failed: {_describe(e)}"
                    ) from None
                try:
                    tls.check_peer(stream, peer)
                except tls.PeerMismatch as e:
                    log.warning("rpc: refused %s: %s", where, e)
                    raise _DialFailed("identity", f"refused {where}: {e}") from None
            return stream
        except BaseException as e:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if isinstance(e, trio.TooSlowError):
                raise _DialFailed(
                    "timeout", f"timeout connecting to {where} ({self.connect_timeout:g} s)"
                ) from None
            raise

    async def _serve(self, session: _ClientSession) -> None:
        try:
            async with trio.open_nursery() as nursery:
                session.scope = nursery.cancel_scope
                if session.closed:  # ended before it got here
                    return
                nursery.start_soon(self._write, session)
                nursery.start_soon(self._watch_idle, session)
                await self._read(session)
        finally:
            self._end(session, "stopped", "the RPC client stopped")
            await _close(session.stream)

    def _end(self, session: _ClientSession, kind: str, message: str) -> None:
        """Retire ``session``: no new calls, pending ones fail with ``message``. Idempotent."""
        if session.closed:
            return
        session.closed = True
        session.error = (kind, message)
        key = (session.peer, session.address)
        if self._sessions.get(key) is session:
            del self._sessions[key]
        pending, session.pending = session.pending, {}
        for call in pending.values():
            call.error = (kind, message)
            call.done.set()
        session.room.unpark_all()
        if session.scope is not None:
            session.scope.cancel()

    def _lost(self, session: _ClientSession, reason: str) -> None:
        if not session.closed:
            self.counters["rpc_client_sessions_lost"] += 1
            log.debug("rpc session to %s lost: %s", session.peer, reason)
        where = _where(session.peer, session.address)
        self._end(session, "lost", f"connection to {where} lost: {reason}")

    async def _read(self, session: _ClientSession) -> None:
        reader = FrameReader(session.stream, codec.STREAM_MAX)
        while True:
            try:
                data = await reader.receive()
            except _IO_ERRORS as e:
                self._lost(session, _describe(e))
                return
            if data is None:
                self._lost(session, "closed by the peer")
                return
            try:
                msg = codec.decode_stream_untrusted(data)
                if not isinstance(msg, AppResponse):
                    raise BadPacket(f"unexpected {type(msg).__name__} in a session")
            except BadPacket as e:
                self.counters["rpc_client_sessions_lost"] += 1
                where = _where(session.peer, session.address)
                self._end(session, "protocol", f"protocol error from {where}: {e}")
                return
            call = session.pending.pop(msg.request_id, None)
            if call is None:
                self.counters["rpc_client_late_responses"] += 1
                continue
            call.response = msg
            call.done.set()
            if session.room:
                session.room.unpark()

    async def _write(self, session: _ClientSession) -> None:
        try:
            await session.outbox.write_forever(session.stream, lambda count: None)
        except _IO_ERRORS as e:
            self._lost(session, _describe(e))

    async def _watch_idle(self, session: _ClientSession) -> None:
        while True:
            await trio.sleep_until(session.last_active + self.idle_timeout)
            now = trio.current_time()
            if session.pending:
                session.last_active = now
            elif now >= session.last_active + self.idle_timeout:
                self.counters["rpc_client_sessions_idle_closed"] += 1
                self._end(session, "lost", "session closed after being idle")
                return


async def call_once(
    ssl_context: ssl.SSLContext,
    peer: NodeId,
    address: Address,
    service: str,
    body: bytes,
    *,
    timeout: float,
) -> bytes:
    """One request on a connection of its own: connect, handshake, ask, close.

    What every request would cost without sessions (the one-shot exchange
    the membership protocol uses); ``bench/rpc.py`` measures it as the
    baseline. Prefer :meth:`RpcClient.call`.

    Raises:
        RpcError, RpcUnavailable: as :meth:`RpcClient.call`.
    """
    _check_service(service)
    _check_body(body)
    where = _where(peer, address)
    try:
        with trio.fail_after(timeout):
            try:
                tcp = await _connect(*address)
            except OSError as e:
                raise RpcUnavailable(
                    "connect", f"cannot connect to {where}: {e.strerror or e}"
                ) from None
            async with trio.SSLStream(tcp, ssl_context, server_hostname=None) as stream:
                try:
                    await stream.do_handshake()
                except _IO_ERRORS as e:
                    raise RpcUnavailable(
                        "tls", f"TLS handshake with {where} failed: {_describe(e)}"
                    ) from None
                try:
                    tls.check_peer(stream, peer)
                except tls.PeerMismatch as e:
                    raise RpcUnavailable("identity", f"refused {where}: {e}") from None
                await stream.send_all(_frame(AppRequest(0, service, body)))
                data = await FrameReader(stream, codec.STREAM_MAX).receive()
                if data is None:
                    raise RpcUnavailable("lost", f"connection to {where} lost: closed by the peer")
                try:
                    msg = codec.decode_stream_untrusted(data)
                except BadPacket as e:
                    raise RpcUnavailable("protocol", f"protocol error from {where}: {e}") from None
    except trio.TooSlowError:
        raise RpcUnavailable("timeout", f"timeout after {timeout:g} s calling {where}") from None
    except _IO_ERRORS as e:
        raise RpcUnavailable("lost", f"connection to {where} lost: {_describe(e)}") from None
    if not isinstance(msg, AppResponse) or msg.request_id != 0:
        raise RpcUnavailable("protocol", f"protocol error from {where}: not the answer")
    if not msg.ok:
        raise RpcError(msg.error)
    return msg.body

