"""Tests for meshd.runtime.rpc: RPC sessions over real mutual TLS 1.3 on loopback.

Each :class:`Node` is an RpcServer behind a TCP listener on 127.0.0.1 that
accepts connections the way the daemon does (handshake, check_peer, first
frame, session_request_untrusted, serve_session), plus an RpcClient. Tests
with real sockets wait on events and bound every wait with fail_after;
they never sleep to wait for something. The autojump clock is used only
with in-memory streams.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import attrs
import msgpack
import pytest
import trio
import trio.testing

from meshd.core import codec
from meshd.core.messages import AppRequest, AppResponse, Ping, PushPull
from meshd.core.types import NodeId
from meshd.runtime import tls
from meshd.runtime.framing import FrameError, FrameReader, frame_bytes, receive_frame
from meshd.runtime.rpc import (
    ECHO_SERVICE,
    RpcClient,
    RpcError,
    RpcServer,
    RpcUnavailable,
    call_once,
    session_request_untrusted,
)

SECRET = bytes(range(32))
CLUSTER = "rpc-test"
#: Bound on every wait that involves real sockets.
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.TlsIdentity]:
    base = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    return {
        name: tls.derived_identity(SECRET, CLUSTER, name, base / name, now=now)
        for name in ("a", "b", "c")
    }


########################################################################
# Harness: a node = listener + RpcServer + RpcClient
########################################################################


@attrs.define(eq=False)
class Node:
    """One node's RPC side, serving on 127.0.0.1 like the daemon's stream server."""

    name: str
    identity: tls.TlsIdentity
    server: RpcServer
    client: RpcClient
    port: int = 0
    #: TCP connections accepted so far.
    accepted: int = 0
    #: Set (and replaced by the test) when a session ends on this server.
    session_ended: trio.Event = attrs.field(factory=trio.Event)
    _scope: trio.CancelScope | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until :meth:`stop`; the port stays the same across restarts."""
        ctx = tls.server_context(self.identity)
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    while True:
                        tcp = await listeners[0].accept()
                        self.accepted += 1
                        nursery.start_soon(self._handle, tcp, ctx)
        finally:
            for listener in listeners:
                await listener.aclose()

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, tcp: trio.SocketStream, ctx: ssl.SSLContext) -> None:
        # The daemon's _handle_stream, RPC part: handshake and first frame
        # under a deadline, then the session without one.
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        first = None
        try:
            with trio.fail_after(TIMEOUT):
                await stream.do_handshake()
                peer = tls.check_peer(stream, None)
                first = session_request_untrusted(await receive_frame(stream, codec.STREAM_MAX))
        except (trio.BrokenResourceError, trio.TooSlowError, tls.PeerMismatch, FrameError):
            pass
        finally:
            if first is None:
                await trio.aclose_forcefully(stream)
        if first is not None:
            await self.server.serve_session(stream, NodeId(peer), first)
            self.session_ended.set()


@pytest.fixture
async def nodes(
    identities: dict[str, tls.TlsIdentity],
) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory: ``await make("a", server=..., client=...)`` starts a serving node."""
    async with trio.open_nursery() as nursery:

        async def make(
            name: str, *, server: RpcServer | None = None, client: RpcClient | None = None
        ) -> Node:
            ident = identities[name]
            node = Node(
                name,
                ident,
                server or RpcServer(),
                client or RpcClient(tls.client_context(ident)),
            )
            await nursery.start(node.serve)
            await nursery.start(node.client.run)
            return node

        yield make
        nursery.cancel_scope.cancel()


async def restart(node: Node, nursery: trio.Nursery) -> None:
    await nursery.start(node.serve)


########################################################################
# Round trips and multiplexing
########################################################################


async def test_round_trip_reaches_the_service_with_the_verified_sender(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")

    async def greet(peer: NodeId, body: bytes) -> bytes:
        return b"hello " + peer.encode() + b": " + body

    a.server.register("greet", greet)
    with trio.fail_after(TIMEOUT):
        assert await b.client.call(NodeId("a"), a.address, "greet", b"hi", timeout=5) == (
            b"hello b: hi"
        )
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"", timeout=5) == b""
        # The other direction is another session, on b's server.
        b.server.register("greet", greet)
        assert await a.client.call(NodeId("b"), b.address, "greet", b"", timeout=5) == b"hello a: "
    assert (a.accepted, b.accepted) == (1, 1)
    assert a.server.statistics().requests == 2
    assert b.client.statistics().calls == 2


async def test_large_bodies_cross_in_both_directions(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    big = bytes(range(256)) * 8192  # 2 MiB: many TLS records, many reads
    with trio.fail_after(TIMEOUT):
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, big, timeout=5) == big


async def test_concurrent_calls_are_multiplexed_on_one_connection(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    calls = 200
    together = 10
    running = 0
    most = 0
    gate = trio.Event()

    async def slow_echo(peer: NodeId, body: bytes) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running >= together:
            gate.set()
        # The first requests wait until `together` handlers run at once:
        # proof that the session carries requests concurrently.
        await gate.wait()
        running -= 1
        return body[::-1]

    a.server.register("slow_echo", slow_echo)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        body = f"request {i}".encode()
        results[i] = await b.client.call(NodeId("a"), a.address, "slow_echo", body, timeout=5)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            # All start before the first connection exists: one dial for all.
            for i in range(calls):
                nursery.start_soon(one, i)

    assert results == {i: f"request {i}".encode()[::-1] for i in range(calls)}
    assert most >= together
    assert a.accepted == 1  # one TCP connection carried all 200 calls
    stats = b.client.statistics()
    assert (stats.connects, stats.calls, stats.sessions_active) == (1, calls, 1)
    assert a.server.statistics().sessions_accepted == 1


########################################################################
# Errors from the service
########################################################################


async def test_rpc_error_from_handler_reaches_the_caller(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")

    async def refuse(peer: NodeId, body: bytes) -> bytes:
        raise RpcError(f"no such key: {body.decode()}")

    a.server.register("kv", refuse)
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError, match=r"^no such key: k1$"):
        await b.client.call(NodeId("a"), a.address, "kv", b"k1", timeout=5)
    assert b.client.statistics().errors == 1
    assert a.server.statistics().errors == 1


async def test_unknown_service_is_an_error_not_a_hang(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    with trio.fail_after(TIMEOUT), pytest.raises(RpcError, match=r"^unknown service 'nope'$"):
        await b.client.call(NodeId("a"), a.address, "nope", b"", timeout=5)
    assert a.server.statistics().unknown_service == 1


async def test_handler_exception_is_internal_error_and_server_keeps_serving(
    nodes, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await nodes("a"), await nodes("b")

    async def boom(peer: NodeId, body: bytes) -> bytes:
        raise ZeroDivisionError("secret detail")

    async def wrong_type(peer: NodeId, body: bytes) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    a.server.register("boom", boom)
    a.server.register("wrong_type", wrong_type)
    with trio.fail_after(TIMEOUT):
        with caplog.at_level(logging.ERROR, logger="meshd.rpc"):
            with pytest.raises(RpcError) as caught:
                await b.client.call(NodeId("a"), a.address, "boom", b"", timeout=5)
            with pytest.raises(RpcError, match="internal error in service 'wrong_type'"):
                await b.client.call(NodeId("a"), a.address, "wrong_type", b"", timeout=5)
        # Same session, still serving.
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"x", timeout=5) == b"x"
    assert str(caught.value) == "internal error in service 'boom'"
    assert "secret detail" not in str(caught.value)  # details stay in the server's log
    [record, _] = [r for r in caplog.records if r.name == "meshd.rpc"]
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError
    assert "'boom'" in record.getMessage()
    assert "from b" in record.getMessage()
    assert a.accepted == 1
    assert a.server.statistics().handler_exceptions == 2


def test_register_rejects_bad_and_reserved_names() -> None:
    server = RpcServer()

    async def h(peer: NodeId, body: bytes) -> bytes:
        return body

    server.register("kv", h)
    with pytest.raises(ValueError, match="already registered"):
        server.register("kv", h)
    with pytest.raises(ValueError, match="reserved"):
        server.register("_mine", h)
    with pytest.raises(ValueError, match=r"1\.\.64"):
        server.register("", h)
    with pytest.raises(ValueError, match=r"1\.\.64"):
        server.register("é" * 33, h)
    server.unregister("kv")
    server.unregister(ECHO_SERVICE)  # built-ins stay
    assert server.statistics().services == (ECHO_SERVICE,)


########################################################################
# Unavailability: identity, connection loss, reconnect, timeout
########################################################################


async def test_peer_identity_mismatch_is_refused(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    with trio.fail_after(TIMEOUT), pytest.raises(RpcUnavailable) as caught:
        # a's address, but we mean to reach c.
        await b.client.call(NodeId("c"), a.address, ECHO_SERVICE, b"", timeout=5)
    assert caught.value.kind == "identity"
    assert "expected 'c'" in str(caught.value)
    assert "'a'" in str(caught.value)
    assert a.server.statistics().requests == 0  # nothing was sent
    assert b.client.statistics().sessions_active == 0


async def test_server_gone_is_unavailable_and_a_later_call_reconnects(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    started = trio.Event()

    async def forever(peer: NodeId, body: bytes) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    a.server.register("forever", forever)
    with trio.fail_after(TIMEOUT):
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"1", timeout=5) == b"1"
        outcome: list[BaseException] = []

        async def waiting_call() -> None:
            try:
                await b.client.call(NodeId("a"), a.address, "forever", b"", timeout=60)
            except RpcUnavailable as e:
                outcome.append(e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_call)
            await started.wait()
            a.stop()  # the server goes away with a call in flight
        # The in-flight call failed at once (connection lost), not at its 60 s timeout.
        [lost] = outcome
        assert isinstance(lost, RpcUnavailable)
        assert lost.kind == "lost"
        assert "connection to a at 127.0.0.1:" in str(lost)

        with pytest.raises(RpcUnavailable) as refused:
            await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"2", timeout=5)
        assert refused.value.kind == "connect"
        assert "cannot connect to a at 127.0.0.1:" in str(refused.value)
        assert "refused" in str(refused.value).lower()

        async with trio.open_nursery() as nursery:
            await restart(a, nursery)  # same port
            assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"3", timeout=5) == (
                b"3"
            )
            stats = b.client.statistics()
            assert (stats.connects, stats.connect_failures, stats.sessions_lost) == (2, 1, 1)
            nursery.cancel_scope.cancel()


async def test_timeout_leaves_the_session_usable(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    gate = trio.Event()

    async def stuck(peer: NodeId, body: bytes) -> bytes:
        await gate.wait()
        return b"late"

    a.server.register("stuck", stuck)
    with trio.fail_after(TIMEOUT):
        before = trio.current_time()
        with pytest.raises(RpcUnavailable) as caught:
            await b.client.call(NodeId("a"), a.address, "stuck", b"", timeout=0.3)
        assert trio.current_time() - before >= 0.3
        assert caught.value.kind == "timeout"
        assert "timeout after 0.3 s waiting for a at 127.0.0.1:" in str(caught.value)
        gate.set()  # the late answer arrives before the next one, and is dropped
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"ok", timeout=5) == b"ok"
    stats = b.client.statistics()
    assert (stats.timeouts, stats.late_responses, stats.connects) == (1, 1, 1)
    assert a.accepted == 1


async def test_peer_that_stops_reading_ends_the_session(nodes, identities) -> None:
    b = await nodes("b", client=RpcClient(tls.client_context(identities["b"]), max_in_flight=4))
    ctx = tls.server_context(identities["a"])
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    hold = trio.Event()

    async def deaf() -> None:
        # Completes the handshake, then never reads: the client's sends
        # fill the socket buffers and its writer blocks.
        tcp = await listeners[0].accept()
        async with trio.SSLStream(tcp, ctx, server_side=True) as stream:
            await stream.do_handshake()
            await hold.wait()

    body = bytes(4 << 20)
    failures: list[RpcUnavailable] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deaf)
            for _ in range(40):
                try:
                    await b.client.call(NodeId("a"), address, ECHO_SERVICE, body, timeout=0.2)
                except RpcUnavailable as e:
                    failures.append(e)
                    if e.kind == "lost":
                        break
            hold.set()
    kinds = [e.kind for e in failures]
    assert "the peer stopped reading" in str(failures[-1])
    for listener in listeners:
        await listener.aclose()
    # Timeouts while the kernel buffers filled and the outbox grew to 4
    # frames, then the session was given up instead of growing further.
    assert kinds[-1] == "lost"
    assert set(kinds[:-1]) == {"timeout"}
    assert 4 < len(kinds) < 40
    assert b.client.statistics().sessions_active == 0


async def test_call_before_run_is_unavailable(identities) -> None:
    client = RpcClient(tls.client_context(identities["a"]))
    with pytest.raises(RpcUnavailable, match="not running") as caught:
        await client.call(NodeId("b"), ("127.0.0.1", 1), ECHO_SERVICE, b"", timeout=1)
    assert caught.value.kind == "stopped"


async def test_bad_arguments_raise_before_anything_is_sent(nodes) -> None:
    b = await nodes("b")
    with pytest.raises(ValueError, match=r"1\.\.64"):
        await b.client.call(NodeId("a"), ("127.0.0.1", 1), "", b"", timeout=1)
    with pytest.raises(TypeError):
        await b.client.call(NodeId("a"), ("127.0.0.1", 1), b"kv", b"", timeout=1)
    assert b.client.statistics().calls == 0


########################################################################
# Idle sessions
########################################################################


async def test_idle_client_session_is_closed_and_the_next_call_reconnects(
    nodes, identities
) -> None:
    client = RpcClient(tls.client_context(identities["b"]), idle_timeout=0.2)
    a, b = await nodes("a"), await nodes("b", client=client)
    with trio.fail_after(TIMEOUT):
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"", timeout=5) == b""
        await a.session_ended.wait()  # the client closed it
        assert b.client.statistics().sessions_idle_closed == 1
        assert b.client.statistics().sessions_active == 0
        assert await b.client.call(NodeId("a"), a.address, ECHO_SERVICE, b"", timeout=5) == b""
    assert a.accepted == 2
    assert a.server.statistics().sessions_idle_closed == 0


async def test_idle_server_session_is_closed(nodes, identities) -> None:
    a = await nodes("a", server=RpcServer(idle_timeout=0.2))
    ctx = tls.client_context(identities["b"])
    with trio.fail_after(TIMEOUT):
        tcp = await trio.open_tcp_stream(*a.address)
        async with trio.SSLStream(tcp, ctx, server_hostname=None) as stream:
            await stream.do_handshake()
            await stream.send_all(frame_bytes(codec.encode_stream(AppRequest(5, "_echo", b"x"))))
            reader = FrameReader(stream, codec.STREAM_MAX)
            answer = await reader.receive()
            assert answer is not None
            assert codec.decode_stream_untrusted(answer) == AppResponse(5, True, b"x", "")
            # Silent from here on: the server closes the session (clean EOF).
            assert await reader.receive() is None
    assert a.server.statistics().sessions_idle_closed == 1


########################################################################
# Baseline path
########################################################################


async def test_call_once_uses_a_connection_per_request(nodes, identities) -> None:
    a = await nodes("a")
    ctx = tls.client_context(identities["b"])
    with trio.fail_after(TIMEOUT):
        for i in range(3):
            body = bytes([i])
            assert await call_once(ctx, NodeId("a"), a.address, ECHO_SERVICE, body, timeout=5) == (
                body
            )
        with pytest.raises(RpcError, match="unknown service"):
            await call_once(ctx, NodeId("a"), a.address, "nope", b"", timeout=5)
        with pytest.raises(RpcUnavailable) as caught:
            await call_once(ctx, NodeId("c"), a.address, ECHO_SERVICE, b"", timeout=5)
        assert caught.value.kind == "identity"
    assert a.accepted == 5


########################################################################
# Sessions on memory streams (no sockets: autojump clock)
########################################################################


def _request(rid: int, service: str = "gated", body: bytes = b"") -> bytes:
    return frame_bytes(codec.encode_stream(AppRequest(rid, service, body)))


async def test_server_stops_reading_beyond_max_in_flight_then_idles_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = RpcServer(max_in_flight=2, idle_timeout=30.0)
    gate = trio.Event()
    started: list[bytes] = []

    async def gated(peer: NodeId, body: bytes) -> bytes:
        started.append(body)
        await gate.wait()
        return body

    server.register("gated", gated)
    client_end, server_end = trio.testing.memory_stream_pair()
    ended = trio.Event()

    async def serve() -> None:
        await server.serve_session(server_end, NodeId("peer"), AppRequest(0, "gated", b"0"))
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_end.send_all(b"".join(_request(i, body=bytes([48 + i])) for i in range(1, 5)))
        await trio.testing.wait_all_tasks_blocked()
        # Request 0 and 1 run; 2..4 stay unread in the stream.
        assert started == [b"0", b"1"]
        assert server.counters["rpc_server_backpressure"] == 1
        gate.set()
        reader = FrameReader(client_end, codec.STREAM_MAX)
        answers = set()
        for _ in range(5):
            frame = await reader.receive()
            assert frame is not None
            msg = codec.decode_stream_untrusted(frame)
            assert isinstance(msg, AppResponse)
            assert msg.ok
            answers.add(msg.request_id)
        assert answers == {0, 1, 2, 3, 4}
        start = trio.current_time()
        await ended.wait()
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.01)
        assert await reader.receive() is None  # closed
    assert server.statistics().sessions_idle_closed == 1


async def test_slow_handler_is_not_idleness(autojump_clock: trio.testing.MockClock) -> None:
    server = RpcServer(idle_timeout=1.0)

    async def slow(peer: NodeId, body: bytes) -> bytes:
        await trio.sleep(10.0)
        return b"done"

    server.register("slow", slow)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            server.serve_session, server_end, NodeId("p"), AppRequest(9, "slow", b"")
        )
        frame = await FrameReader(client_end, codec.STREAM_MAX).receive()
        assert frame is not None
        assert codec.decode_stream_untrusted(frame) == AppResponse(9, True, b"done", "")
        assert trio.current_time() == pytest.approx(10.0, abs=0.01)
        nursery.cancel_scope.cancel()
    assert server.statistics().sessions_idle_closed == 0


@pytest.mark.parametrize(
    "bad",
    [
        frame_bytes(codec.encode_stream(AppResponse(1, True, b"", ""))),  # wrong direction
        frame_bytes(b"\x01\xc1"),  # invalid msgpack
        frame_bytes(codec.encode_stream(Ping(1, NodeId("x"), NodeId("y")))),
        b"\xff\xff\xff\xff",  # a 4 GiB frame announced
    ],
    ids=["response", "garbage", "ping", "oversized"],
)
async def test_server_closes_a_session_that_breaks_the_protocol(
    autojump_clock: trio.testing.MockClock, bad: bytes
) -> None:
    server = RpcServer()
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            server.serve_session, server_end, NodeId("p"), AppRequest(1, "_echo", b"")
        )
        reader = FrameReader(client_end, codec.STREAM_MAX)
        assert await reader.receive() is not None  # the answer to the first request
        await client_end.send_all(bad + _request(2, "_echo"))
        assert await reader.receive() is None  # closed, request 2 not answered
    assert trio.current_time() < 1.0


async def test_server_refuses_sessions_beyond_its_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = RpcServer(max_sessions=1)
    _, first_server = trio.testing.memory_stream_pair()
    second_client, second_server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            server.serve_session, first_server, NodeId("p"), AppRequest(1, "_echo", b"")
        )
        await trio.testing.wait_all_tasks_blocked()
        await server.serve_session(second_server, NodeId("q"), AppRequest(7, "_echo", b""))
        reader = FrameReader(second_client, codec.STREAM_MAX)
        frame = await reader.receive()
        assert frame is not None
        assert codec.decode_stream_untrusted(frame) == AppResponse(
            7, False, b"", "server busy: too many sessions"
        )
        assert await reader.receive() is None
        nursery.cancel_scope.cancel()
    assert server.statistics().sessions_refused_busy == 1


async def test_call_local_runs_the_service_without_network() -> None:
    server = RpcServer()

    async def who(peer: NodeId, body: bytes) -> bytes:
        return peer.encode()

    server.register("who", who)
    assert await server.call_local(NodeId("self"), "who", b"") == b"self"
    with pytest.raises(RpcError, match="unknown service 'x'"):
        await server.call_local(NodeId("self"), "x", b"")


########################################################################
# First-frame routing
########################################################################


def test_session_request_untrusted_picks_out_app_requests() -> None:
    request = AppRequest(3, "kv", b"\x00")
    assert session_request_untrusted(codec.encode_stream(request)) == request
    # A non-canonical but valid encoding (type as uint8) still opens a session.
    odd = b"\x01" + msgpack.packb([13, 3, "kv", b"\x00"], use_bin_type=True).replace(
        b"\x94\x0d", b"\x94\xcc\x0d", 1
    )
    assert session_request_untrusted(odd) == request
    assert session_request_untrusted(codec.encode_stream(Ping(1, NodeId("a"), NodeId("b")))) is None
    assert session_request_untrusted(codec.encode_stream(PushPull(False, 1, None))) is None
    assert session_request_untrusted(codec.encode_stream(AppResponse(1, True))) is None
    assert session_request_untrusted(b"\x01\x94\x0d\x01") is None  # truncated app_request
    assert session_request_untrusted(b"") is None
