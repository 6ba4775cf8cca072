"""The simulator's own mechanics, driven by a small fake core.

These tests do not exercise SWIM: ``FakeCore`` pings a random known peer on a
fixed schedule, acks pings, answers join streams and lets a test inject any
output at a chosen virtual instant (:func:`emit`). Scenario tests with the
real ``NodeCore`` live next to this file.

Every test that depends on randomness takes its seed as a parameter (it is
in the test id) and prints the trace, which pytest shows on failure.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from typing import TypeVar

import pytest

from meshd.core.config import MembershipConfig
from meshd.core.inputs import (
    Input,
    JoinRequested,
    LeaveRequested,
    MetadataChanged,
    PacketReceived,
    SendUserMessage,
    StreamReceived,
    StreamResult,
    Tick,
)
from meshd.core.outputs import (
    JoinFailed,
    JoinSucceeded,
    LeaveCompleted,
    OpenStream,
    Output,
    ReplyStream,
    SendPacket,
    UserMessageReceived,
)
from meshd.core.types import Address, Member, MemberState, NodeId
from meshd.testing import SimNetwork, SimNode, SlowSpec
from meshd.testing.sim import ERR_NO_REPLY, ERR_REFUSED, ERR_TIMEOUT, TraceEntry

_I = TypeVar("_I")

SEEDS = [pytest.param(s, id=f"seed={s}") for s in (1, 7, 2024)]


class FakeCore:
    """A ping/echo core with a log of everything it handled.

    - ``Tick`` at ``next_at``: ping one random known peer (if ``pinging``),
      then schedule the next tick exactly ``interval`` later.
    - ``PacketReceived`` of ``<kind> <sender> [<sent at>]``: report
      ``UserMessageReceived(sender, data)``; answer ``ping`` with ``ack``.
    - ``JoinRequested``: open a ``join`` stream to each address.
    - ``StreamReceived``: ``join <id>`` learns the peer and replies
      ``welcome <id>``; ``noreply`` closes without reply; ``silent`` never answers.
    - ``StreamResult`` of a join: ``JoinSucceeded`` / ``JoinFailed``.
    - ``SendUserMessage``: emit whatever the test put in ``outbox``.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        address: Address,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        meta: bytes,
        pinging: bool = True,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.rng = rng
        self.meta = meta
        self.pinging = pinging
        self.interval = config.probe_interval
        self.next_at: float | None = now + self.interval * rng.random()
        self.peers: dict[str, Address] = {}
        self.log: list[tuple[float, Input]] = []
        self.ticks: list[tuple[float, float | None]] = []  # (now, deadline it was armed for)
        self.outbox: list[Output] = []
        self.pending: dict[int, Address] = {}
        self.request_ids = itertools.count(1)

    def handle(self, event: Input, now: float) -> list[Output]:
        self.log.append((now, event))
        me = self.node_id.encode()
        out: list[Output] = []
        if isinstance(event, Tick):
            self.ticks.append((now, self.next_at))
            if self.next_at is not None and now >= self.next_at:
                if self.pinging and self.peers:
                    names = sorted(self.peers)
                    peer = self.peers[names[self.rng.randrange(len(names))]]
                    out.append(SendPacket(peer, b"ping %s %r" % (me, now)))
                self.next_at += self.interval
        elif isinstance(event, PacketReceived):
            kind, sender = [*event.data.split(b" "), b""][:2]
            out.append(UserMessageReceived(NodeId(sender.decode()), event.data))
            if kind == b"ping":
                out.append(SendPacket(event.source, b"ack %s %r" % (me, now)))
        elif isinstance(event, JoinRequested):
            for address in event.addresses:
                rid = next(self.request_ids)
                self.pending[rid] = address
                out.append(OpenStream(rid, address, b"join " + me, expect_reply=True, timeout=1.0))
        elif isinstance(event, StreamReceived):
            if event.data.startswith(b"join "):
                self.peers[event.data[5:].decode()] = event.source
                out.append(ReplyStream(event.conn_id, b"welcome " + me))
            elif event.data == b"noreply":
                out.append(ReplyStream(event.conn_id, None))
            elif event.data != b"silent":
                out.append(ReplyStream(event.conn_id, b"echo " + event.data))
        elif isinstance(event, StreamResult):
            if event.request_id in self.pending:
                address = self.pending.pop(event.request_id)
                if event.error is not None:
                    out.append(JoinFailed(address, event.error))
                else:
                    assert event.data is not None
                    self.peers[event.data.split(b" ", 1)[1].decode()] = address
                    out.append(JoinSucceeded(address, 1))
        elif isinstance(event, LeaveRequested):
            out.append(LeaveCompleted())
        elif isinstance(event, MetadataChanged):
            self.meta = event.meta
        elif isinstance(event, SendUserMessage):
            out.extend(self.outbox)
            self.outbox.clear()
        return out

    def next_deadline(self) -> float | None:
        return self.next_at

    def members(self) -> list[Member]:
        me = Member(self.node_id, self.address, 0, MemberState.ALIVE, self.meta)
        return [me] + [
            Member(NodeId(n), a, 0, MemberState.ALIVE) for n, a in sorted(self.peers.items())
        ]

    def seed_members(self, members: Iterable[Member], now: float) -> None:
        for m in members:
            self.peers[m.node_id] = m.address


QUIET = functools.partial(FakeCore, pinging=False)


def make_net(
    seed: int = 1,
    names: Sequence[str] = ("a", "b", "c"),
    *,
    quiet: bool = True,
    mesh: bool = True,
    **kwargs: object,
) -> SimNetwork:
    """A network of fake cores, already full-meshed."""
    net = SimNetwork(seed, core_factory=QUIET if quiet else FakeCore, **kwargs)  # type: ignore[arg-type]
    for name in names:
        net.add_node(name)
    if mesh:
        net.bootstrap_full_mesh()
    return net


def core(net: SimNetwork, node_id: str) -> FakeCore:
    c = net.node(node_id).core
    assert isinstance(c, FakeCore)
    return c


def emit(net: SimNetwork, node_id: str, *outputs: Output) -> None:
    """Make ``node_id``'s core produce ``outputs`` right now."""
    core(net, node_id).outbox.extend(outputs)
    net.broadcast(node_id, b"")


def received(net: SimNetwork, node_id: str, cls: type[_I]) -> list[tuple[float, _I]]:
    """``(time, input)`` for every ``cls`` input ``node_id``'s current core handled."""
    return [(t, e) for t, e in core(net, node_id).log if isinstance(e, cls)]


def packets(net: SimNetwork, node_id: str) -> list[tuple[float, PacketReceived]]:
    return received(net, node_id, PacketReceived)


def addr(net: SimNetwork, node_id: str) -> Address:
    return net.node(node_id).address


def run_pinging(seed: int, loss: float = 0.1) -> SimNetwork:
    net = make_net(seed, [f"n{i}" for i in range(6)], quiet=False, loss=loss)
    net.set_latency(0.01, 0.2, src="n1")
    net.set_slow("n2", SlowSpec(0.05, 0.3))
    net.run_for(30.0)
    net.crash("n3")
    net.run_for(5.0)
    net.restart("n3", join_via=["n0"])
    net.run_for(10.0)
    print(net.format_trace(last=50))
    return net


# ------------------------------------------------------------ determinism


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_same_seed_same_trace_digest(seed: int) -> None:
    first, second = run_pinging(seed), run_pinging(seed)
    assert len(first.trace) > 100
    assert first.trace == second.trace
    assert first.trace_digest() == second.trace_digest()
    assert first.stats == second.stats


def test_sim_different_seed_different_trace_digest() -> None:
    digests = {run_pinging(seed).trace_digest() for seed in (1, 2, 3)}
    assert len(digests) == 3


def test_sim_trace_digest_of_empty_trace_is_stable() -> None:
    assert make_net().trace_digest() == make_net(seed=99).trace_digest()


# ------------------------------------------------------------ latency and loss


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_latency_within_bounds(seed: int) -> None:
    net = make_net(seed, latency=(0.01, 0.05))
    net.set_latency(0.2, 0.3, src="a", dst="b")  # one directed link is slower
    net.set_latency(0.5, 0.5, dst="c")  # everything to c takes exactly 0.5 s
    for i in range(200):
        net.run_until(i * 0.01)
        emit(
            net,
            "a",
            SendPacket(addr(net, "b"), f"x {net.now!r}".encode()),
            SendPacket(addr(net, "c"), f"x {net.now!r}".encode()),
        )
        emit(net, "b", SendPacket(addr(net, "a"), f"x {net.now!r}".encode()))
    net.run_for(1.0)

    def delays(node_id: str) -> list[float]:
        return [t - float(e.data.split()[1]) for t, e in packets(net, node_id)]

    a_to_b, a_to_c, b_to_a = delays("b"), delays("c"), delays("a")
    assert len(a_to_b) == len(a_to_c) == len(b_to_a) == 200
    assert all(0.2 <= d <= 0.3 for d in a_to_b)
    assert all(d == pytest.approx(0.5) for d in a_to_c)
    assert all(0.01 <= d <= 0.05 for d in b_to_a)
    # Uniform, not constant: the draws spread over the range.
    assert min(b_to_a) < 0.015
    assert max(b_to_a) > 0.045


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_loss_rate_within_statistical_bounds(seed: int) -> None:
    n, p = 4000, 0.25
    net = make_net(seed, loss=p)
    for _ in range(n):
        emit(net, "a", SendPacket(addr(net, "b"), b"x a"))
    net.run_for(1.0)
    dropped = net.node_stats("a").packets_dropped
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 4 * sigma
    assert len(packets(net, "b")) == n - dropped


def test_sim_loss_rules_most_specific_wins() -> None:
    net = make_net(names=["a", "b", "c"])
    net.set_loss(1.0, src="a")  # a cannot send at all …
    net.set_loss(0.0, src="a", dst="b")  # … except to b
    net.set_loss(1.0, dst="c")  # nobody reaches c
    for src, dst in itertools.permutations("abc", 2):
        emit(net, src, SendPacket(addr(net, dst), f"x {src}".encode()))
    net.run_for(1.0)
    got = {(e.data.decode()[2], dst) for dst in "abc" for _, e in packets(net, dst)}
    assert got == {("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")}


def test_sim_rejects_bad_loss_and_latency() -> None:
    net = make_net()
    with pytest.raises(ValueError, match="loss"):
        net.set_loss(1.5)
    with pytest.raises(ValueError, match="latency"):
        net.set_latency(0.2, 0.1)
    with pytest.raises(KeyError):
        net.set_loss(0.1, src="nobody")
    with pytest.raises(ValueError, match="SlowSpec"):
        SlowSpec(-1.0, 0.0)


# ------------------------------------------------------------ partitions


def test_sim_partition_blocks_packets_and_streams_and_heal_restores() -> None:
    net = make_net(names=["a", "b", "c", "d"], latency=(0.01, 0.01))
    net.partition(["a"], ["b", "c"])  # d is unlisted: a group of its own
    for dst in "bcd":
        emit(net, "a", SendPacket(addr(net, dst), b"x a"))
    emit(net, "b", SendPacket(addr(net, "c"), b"x b"), SendPacket(addr(net, "d"), b"x b"))
    emit(net, "d", SendPacket(addr(net, "d"), b"x d"))
    net.join("a", ["b"])
    net.run_for(0.5)
    assert packets(net, "b") == []
    assert [e.data for _, e in packets(net, "c")] == [b"x b"]
    assert [e.data for _, e in packets(net, "d")] == [b"x d"]
    assert received(net, "b", StreamReceived) == []
    net.run_for(1.0)
    # The join stream timed out after its 1 s timeout.
    assert [(t, e.error) for t, e in received(net, "a", StreamResult)] == [(1.0, ERR_TIMEOUT)]
    assert net.node_stats("a").packets_dropped == 3
    assert net.node_stats("b").packets_dropped == 1

    net.heal()
    emit(net, "a", SendPacket(addr(net, "b"), b"x a"))
    net.join("a", ["b"])
    net.run_for(0.5)
    assert [e.data for _, e in packets(net, "b")] == [b"x a"]
    assert [e.data for _, e in received(net, "a", StreamResult)][-1] == b"welcome b"


def test_sim_partition_drops_packets_in_flight() -> None:
    net = make_net(latency=(0.1, 0.1))
    emit(net, "a", SendPacket(addr(net, "b"), b"x a"))
    net.run_for(0.05)
    net.partition(["a"], ["b"])
    net.run_for(0.5)
    assert packets(net, "b") == []
    assert net.node_stats("a").packets_dropped == 1


def test_sim_stream_to_crashed_node_across_partition_times_out() -> None:
    net = make_net(latency=(0.01, 0.01))
    emit(net, "a", OpenStream(1, addr(net, "b"), b"silent", expect_reply=True, timeout=2.0))
    net.run_for(0.5)
    net.partition(["a"], ["b", "c"])
    net.crash("b")  # the reset cannot cross the partition
    emit(net, "a", OpenStream(2, addr(net, "b"), b"hello", expect_reply=True, timeout=2.0))
    emit(net, "c", OpenStream(3, addr(net, "b"), b"hello", expect_reply=True, timeout=2.0))
    net.run_for(5.0)
    got = [(round(t, 9), e.request_id, e.error) for t, e in received(net, "a", StreamResult)]
    assert got == [(2.0, 1, ERR_TIMEOUT), (2.5, 2, ERR_TIMEOUT)]
    got = [(round(t, 9), e.request_id, e.error) for t, e in received(net, "c", StreamResult)]
    assert got == [(0.51, 3, ERR_REFUSED)]


def test_sim_partition_rejects_node_in_two_groups() -> None:
    net = make_net()
    with pytest.raises(ValueError, match="two partition groups"):
        net.partition(["a", "b"], ["b"])


# ------------------------------------------------------------ crash and restart


def test_sim_crash_drops_deliveries_and_refuses_streams() -> None:
    net = make_net(latency=(0.01, 0.02))
    emit(net, "a", SendPacket(addr(net, "b"), b"x a"))  # in flight when b dies
    emit(net, "c", OpenStream(1, addr(net, "b"), b"silent", expect_reply=True, timeout=5.0))
    net.run_for(0.005)
    net.crash("b")
    crashed_at = net.now
    assert net.alive_nodes() == ["a", "c"]
    with pytest.raises(ValueError, match="crashed"):
        net.view("b")
    # A stream opened to the dead process: refused after one latency.
    net.join("a", ["b"])
    net.run_for(1.0)
    assert net.node_stats("a").packets_dropped == 1
    assert net.node_stats("b").packets_received == 0
    ((t_a, res_a),) = received(net, "a", StreamResult)
    assert res_a.error == ERR_REFUSED
    assert 0.01 <= t_a - crashed_at <= 0.02
    # The stream c had open towards b (not yet answered) fails the same way.
    ((t_c, res_c),) = received(net, "c", StreamResult)
    assert res_c.error == ERR_REFUSED
    assert 0.01 <= t_c - crashed_at <= 0.02
    with pytest.raises(ValueError, match="already crashed"):
        net.crash("b")


def test_sim_crashed_node_stops_ticking() -> None:
    net = make_net(quiet=False)
    net.run_for(3.0)
    old = core(net, "b")
    ticks_before = len(old.ticks)
    net.crash("b")
    net.run_for(5.0)
    assert len(old.ticks) == ticks_before
    assert len(core(net, "a").ticks) > 5


def test_sim_requester_crash_drops_stream_result() -> None:
    net = make_net(latency=(0.1, 0.1))
    emit(net, "a", OpenStream(1, addr(net, "b"), b"hello", expect_reply=True, timeout=5.0))
    old = core(net, "a")
    net.run_for(0.15)  # b got the frame and replied; the reply is in flight
    assert received(net, "b", StreamReceived)
    net.crash("a")
    net.restart("a", join_via=[])
    net.run_for(10.0)
    assert received(net, "a", StreamResult) == []
    assert [e for _, e in old.log if isinstance(e, StreamResult)] == []


def test_sim_restart_uses_new_core_and_drops_old_deliveries() -> None:
    net = make_net(latency=(0.1, 0.1))
    old = core(net, "b")
    emit(net, "a", SendPacket(addr(net, "b"), b"x a"))  # arrives after the restart
    net.run_for(0.05)
    net.restart("b", join_via=["c"])
    new = core(net, "b")
    assert new is not old
    assert net.node("b").generation == 1
    assert new.rng.random() != random.Random("1/b/0").random()  # a fresh rng stream
    assert new.log[0] == (0.05, JoinRequested((addr(net, "c"),)))
    net.run_for(1.0)
    assert packets(net, "b") == []
    assert [e for _, e in old.log if isinstance(e, PacketReceived)] == []
    assert net.node_stats("a").packets_dropped == 1
    assert [type(e.event) for e in net.trace if e.observer == "b"] == [JoinSucceeded]


def test_sim_restart_without_via_reuses_last_join() -> None:
    net = make_net(mesh=False)
    net.join("b", ["a"])
    net.join("c", ["a"])
    net.run_for(1.0)
    net.crash("c")
    net.run_for(1.0)
    net.restart("c")
    assert core(net, "c").log[0][1] == JoinRequested((addr(net, "a"),))


# ------------------------------------------------------------ streams


def test_sim_stream_reply_variants() -> None:
    net = make_net(latency=(0.1, 0.1))
    b = addr(net, "b")
    emit(
        net,
        "a",
        OpenStream(1, b, b"hello", expect_reply=True, timeout=5.0),
        OpenStream(2, b, b"fire and forget", expect_reply=False, timeout=5.0),
        OpenStream(3, b, b"noreply", expect_reply=True, timeout=5.0),
        OpenStream(4, b, b"silent", expect_reply=True, timeout=2.0),
        OpenStream(5, ("192.0.2.1", 7946), b"hello", expect_reply=True, timeout=5.0),
    )
    net.run_for(10.0)
    results = {
        e.request_id: (round(t, 9), e.data, e.error) for t, e in received(net, "a", StreamResult)
    }
    assert results == {
        1: (0.2, b"echo hello", None),
        2: (0.1, None, None),  # as soon as the frame is delivered
        3: (0.2, None, ERR_NO_REPLY),
        4: (2.0, None, ERR_TIMEOUT),
        5: (0.1, None, ERR_REFUSED),
    }
    frames = [(e.conn_id, e.data, e.source) for _, e in received(net, "b", StreamReceived)]
    assert [f[1] for f in frames] == [b"hello", b"fire and forget", b"noreply", b"silent"]
    assert {f[2] for f in frames} == {addr(net, "a")}
    assert len({f[0] for f in frames}) == 4


def test_sim_slow_reply_times_out() -> None:
    net = make_net(latency=(0.01, 0.01))
    net.set_slow("b", SlowSpec(3.0, 3.0))
    emit(net, "a", OpenStream(1, addr(net, "b"), b"hello", expect_reply=True, timeout=1.0))
    net.run_for(10.0)
    assert [(t, e.error) for t, e in received(net, "a", StreamResult)] == [(1.0, ERR_TIMEOUT)]
    assert [round(t, 9) for t, _ in received(net, "b", StreamReceived)] == [3.01]


# ------------------------------------------------------------ slow nodes


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_slow_node_processes_fifo_with_delay(seed: int) -> None:
    net = make_net(seed, latency=(0.01, 0.01))
    net.set_slow("b", SlowSpec(0.1, 0.3))
    emit(net, "a", *(SendPacket(addr(net, "b"), f"x {i}".encode()) for i in range(20)))
    net.run_for(0.05)
    emit(net, "c", OpenStream(1, addr(net, "b"), b"hello", expect_reply=True, timeout=60.0))
    net.run_for(20.0)
    log = [(t, e) for t, e in core(net, "b").log if isinstance(e, (PacketReceived, StreamReceived))]
    times = [t for t, _ in log]
    # FIFO: arrival order (here: send order), processing times never decrease.
    assert [e.data for _, e in log[:20]] == [f"x {i}".encode() for i in range(20)]
    assert isinstance(log[20][1], StreamReceived)
    assert times == sorted(times)
    assert 0.11 <= times[0] <= 0.31
    assert all(t2 - t1 <= 0.3 for t1, t2 in itertools.pairwise(times))
    # Each item waits at least min_delay after it arrived (0.01 for the
    # packets, 0.06 for the stream frame).
    assert all(t >= 0.11 for t in times[:20])
    assert times[20] >= 0.16
    # A delay, not a throughput cap: nothing waits longer than max_delay
    # beyond the item before it or its own arrival.
    assert times[19] <= 0.31
    assert times[20] <= 0.36


def test_sim_slow_node_ticks_stay_on_time() -> None:
    net = make_net(names=["a", "b", "c", "d"], quiet=False, latency=(0.001, 0.002))
    net.set_slow("b", SlowSpec(0.5, 1.5))
    net.run_for(30.0)
    ticks = core(net, "b").ticks
    assert len(ticks) >= 29
    assert all(now == armed for now, armed in ticks)
    assert net.node_stats("b").packets_sent >= 29  # one ping per tick, plus acks
    # Meanwhile every packet it got was processed 0.5 s or more after it was sent …
    lags = [t - float(e.data.split()[2]) for t, e in packets(net, "b")]
    assert len(lags) > 20
    assert all(lag >= 0.501 for lag in lags)
    # … while the healthy nodes process theirs within the latency bound.
    lags = [t - float(e.data.split()[2]) for t, e in packets(net, "a")]
    assert lags
    assert all(lag <= 0.002 for lag in lags)


def test_sim_set_slow_none_keeps_backlog_order() -> None:
    net = make_net(latency=(0.01, 0.01))
    net.set_slow("b", SlowSpec(1.0, 1.0))
    emit(net, "a", SendPacket(addr(net, "b"), b"x 1"))
    net.run_for(0.5)
    net.set_slow("b", None)
    emit(net, "a", SendPacket(addr(net, "b"), b"x 2"))  # arrives before x 1 is processed
    net.run_for(2.0)
    got = [(round(t, 9), e.data) for t, e in packets(net, "b")]
    assert got == [(1.01, b"x 1"), (1.01, b"x 2")]


# ------------------------------------------------------------ ticks


def test_sim_tick_in_the_past_is_clamped_to_now() -> None:
    net = make_net(names=["a"])
    a = core(net, "a")
    net.run_for(5.0)
    a.next_at = 1.0  # a deadline that already passed
    net.broadcast("a", b"")  # any input makes the network re-read the deadline
    net.run_for(0.0)
    # The fake core catches up one interval per tick, all at "now".
    assert [tick for tick in a.ticks if tick[1] is not None and tick[1] <= 5.0][-5:] == [
        (5.0, 1.0),
        (5.0, 2.0),
        (5.0, 3.0),
        (5.0, 4.0),
        (5.0, 5.0),
    ]


def test_sim_superseded_tick_does_not_fire() -> None:
    net = make_net(names=["a"])
    a = core(net, "a")
    a.next_at = 10.0
    net.broadcast("a", b"")
    a.next_at = 3.0
    net.broadcast("a", b"")
    a.next_at = None
    net.broadcast("a", b"")
    net.run_for(20.0)
    assert a.ticks == []


def test_sim_core_stuck_on_one_deadline_raises() -> None:
    net = make_net(names=["a"])
    a = core(net, "a")
    a.interval = 0.0  # never advances
    with pytest.raises(RuntimeError, match="next_deadline"):
        net.run_for(5.0)


# ------------------------------------------------------------ observation


def test_sim_events_go_to_trace_and_listeners_in_order() -> None:
    net = make_net(quiet=False, latency=(0.01, 0.01))
    heard: list[tuple[float, str, object]] = []
    net.listeners.append(lambda t, who, ev: heard.append((t, who, ev)))
    net.run_for(5.0)
    net.leave("c")
    assert heard == [(e.time, e.observer, e.event) for e in net.trace]
    assert all(isinstance(e, TraceEntry) for e in net.trace)
    assert [e.time for e in net.trace] == sorted(e.time for e in net.trace)
    assert net.trace[-1] == TraceEntry(5.0, "c", LeaveCompleted())
    assert not any(isinstance(e.event, (SendPacket, OpenStream, ReplyStream)) for e in net.trace)


def test_sim_trace_can_be_turned_off() -> None:
    net = make_net(quiet=False, record_trace=False)
    count = [0]
    net.listeners.append(lambda t, who, ev: count.__setitem__(0, count[0] + 1))
    net.run_for(5.0)
    assert net.trace == []
    assert count[0] > 0


def test_sim_view_and_converged() -> None:
    net = make_net(mesh=False)
    assert not net.converged()
    net.join("b", ["a"])
    net.join("c", ["a"])
    net.run_for(1.0)
    assert net.view("a") == {n: MemberState.ALIVE for n in "abc"}
    assert not net.converged()  # b does not know c (the fake core does not gossip)
    assert net.converged(["a", "b"])
    net.join("c", ["b"])
    assert net.run_until_true(net.converged, timeout=5.0)
    net.leave("c")
    # c left but the fake core keeps seeing it alive: not converged.
    assert not net.converged()
    assert net.converged(["a", "b"])


def test_sim_run_until_true_times_out_and_respects_check_every() -> None:
    net = make_net()
    calls: list[float] = []

    def never() -> bool:
        calls.append(net.now)
        return False

    assert not net.run_until_true(never, timeout=1.0, check_every=0.25)
    assert calls == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert net.run_until_true(lambda: net.now >= 1.5, timeout=2.0)
    assert net.now == pytest.approx(1.5)
    with pytest.raises(ValueError, match="back in time"):
        net.run_until(0.5)


def test_sim_add_node_assigns_addresses_deterministically() -> None:
    net = SimNetwork(1, core_factory=QUIET)
    nodes = [net.add_node(f"n{i}") for i in range(600)]
    assert nodes[0].address == ("10.0.0.1", 7946)
    assert nodes[253].address == ("10.0.0.254", 7946)
    assert nodes[254].address == ("10.0.1.1", 7946)
    assert len({n.address for n in nodes}) == 600
    assert isinstance(nodes[0], SimNode)
    assert nodes[0].running
    with pytest.raises(ValueError, match="already exists"):
        net.add_node("n0")
    with pytest.raises(KeyError):
        net.node("nobody")


def test_sim_bootstrap_full_mesh_seeds_every_other_member() -> None:
    net = make_net(names=["a", "b", "c"], mesh=False, quiet=False)
    net.crash("c")
    net.bootstrap_full_mesh()
    assert sorted(core(net, "a").peers) == ["b"]
    assert sorted(core(net, "b").peers) == ["a"]
    assert net.trace == []


def test_sim_set_meta_reaches_core_and_survives_restart() -> None:
    net = make_net()
    net.set_meta("a", b"rack=1")
    assert core(net, "a").meta == b"rack=1"
    net.restart("a", join_via=[])
    assert core(net, "a").meta == b"rack=1"


# ------------------------------------------------------------ stats


def test_sim_stats_count_packets_bytes_and_streams() -> None:
    net = make_net(names=["a", "b", "c"], latency=(0.01, 0.01))
    net.partition(["a", "b"], ["c"])
    emit(
        net,
        "a",
        SendPacket(addr(net, "b"), b"x a 1234"),  # 8 bytes, delivered
        SendPacket(addr(net, "c"), b"x a"),  # 3 bytes, partitioned
        SendPacket(("192.0.2.9", 1), b"x"),  # 1 byte, unknown address
        OpenStream(1, addr(net, "b"), b"hello", expect_reply=True, timeout=1.0),
    )
    net.run_for(1.0)
    a, b = net.node_stats("a"), net.node_stats("b")
    assert (a.packets_sent, a.bytes_sent, a.packets_delivered, a.packets_dropped) == (3, 12, 1, 2)
    assert (b.packets_received, b.packets_sent) == (1, 0)
    assert (a.streams_opened, a.stream_bytes_sent) == (1, 5)
    assert b.stream_bytes_sent == len(b"echo hello")
    total = net.stats.total
    assert total.packets_sent == 3
    assert total.stream_bytes_sent == 15
    assert total.packets_sent == total.packets_delivered + total.packets_dropped
    assert net.stats.events_processed > 0
    net.reset_stats()
    assert net.stats.total == type(total)()
    assert net.stats.events_processed == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_stats_sent_equals_delivered_plus_dropped(seed: int) -> None:
    net = run_pinging(seed)
    net.run_for(5.0)  # drain: nothing in flight is older than the max latency
    total = net.stats.total
    in_flight = total.packets_sent - total.packets_delivered - total.packets_dropped
    assert 0 <= in_flight <= 12
    assert total.packets_received == total.packets_delivered
    assert total.packets_dropped > 0
