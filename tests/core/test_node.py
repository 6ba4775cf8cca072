"""NodeCore unit tests: plain, synchronous, on a fake clock (no trio, no sleeps).

Each test drives one core by hand: it feeds packets and ticks at chosen
times and asserts the exact outputs. Peers are "seeded" members that never
answer unless the test answers for them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
import pytest

from meshd.core import codec, timing
from meshd.core.config import MembershipConfig
from meshd.core.inputs import (
    JoinRequested,
    LeaveRequested,
    MetadataChanged,
    PacketReceived,
    SendUserMessage,
    StreamReceived,
    StreamResult,
    Tick,
)
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
    UserMessage,
)
from meshd.core.node import STREAM_REFUSED, NodeCore
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
    ReplyStream,
    SendPacket,
    UserMessageReceived,
)
from meshd.core.types import Address, Member, MemberState, NodeId
from meshd.errors import LocalProtocolError, MetadataTooLarge

LAN = MembershipConfig.lan()
SELF = NodeId("self")
SELF_ADDR = ("10.0.0.1", 7946)


def addr(i: int) -> Address:
    return (f"10.0.1.{i}", 7946)


def peer(i: int) -> NodeId:
    return NodeId(f"p{i}")


def make(peers: int = 0, config: MembershipConfig = LAN, seed: int = 0, now: float = 0.0) -> NodeCore:
    core = NodeCore(node_id=SELF, address=SELF_ADDR, config=config, rng=random.Random(seed), now=now)
    core.seed_members(
        [Member(peer(i), addr(i), 0, MemberState.ALIVE) for i in range(1, peers + 1)], now
    )
    return core


def packet(*messages: Message) -> bytes:
    return codec.encode_packet(codec.encode_compound([codec.encode_message(m) for m in messages]))


def sent(outputs: Sequence[Output]) -> list[tuple[Address, list[Message]]]:
    """Every SendPacket decoded: (address, messages)."""
    return [
        (o.address, codec.decode_packet_untrusted(o.data)) for o in outputs if isinstance(o, SendPacket)
    ]


def of_type(outputs: Sequence[Output], cls: type) -> list:  # type: ignore[type-arg]
    return [o for o in outputs if isinstance(o, cls)]


def tick_until(core: NodeCore, until: float) -> list[Output]:
    """Deliver every Tick the core asks for up to ``until``."""
    out: list[Output] = []
    while (d := core.next_deadline()) is not None and d <= until:
        out += core.handle(Tick(), d)
    return out


def tick_answering(core: NodeCore, until: float) -> list[Output]:
    """Like tick_until, but every peer acks its pings at once (a healthy mesh)."""
    out: list[Output] = []
    while (d := core.next_deadline()) is not None and d <= until:
        step = core.handle(Tick(), d)
        out += step
        for address, msgs in sent(step):
            for m in msgs:
                if isinstance(m, Ping):
                    out += core.handle(PacketReceived(packet(Ack(m.seq)), address), d)
    return out


def start_probe(core: NodeCore) -> tuple[float, Ping, Address]:
    """Tick until the first probe goes out; return (time, ping, target address)."""
    while True:
        d = core.next_deadline()
        assert d is not None
        for address, msgs in sent(core.handle(Tick(), d)):
            pings = [m for m in msgs if isinstance(m, Ping)]
            if pings:
                return d, pings[0], address


# ------------------------------------------------------------------ answering


def test_node_ping_is_acked_to_the_sender() -> None:
    core = make()
    out = core.handle(PacketReceived(packet(Ping(42, SELF, peer(1))), addr(1)), 1.0)
    [(to, msgs)] = sent(out)
    assert to == addr(1)
    assert msgs[0] == Ack(42)


def test_node_ping_for_another_name_is_not_answered() -> None:
    core = make()
    out = core.handle(PacketReceived(packet(Ping(42, NodeId("previous-owner"), peer(1))), addr(1)), 1.0)
    assert sent(out) == []
    assert core.statistics().counters["pings_misdirected"] == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x09\x00\x91\x93\x01\x01\xa1a", b"\x01\x01" + b"\x00" * 40, b"\x01\x00\xc1"],
    ids=["empty", "header-only", "bad-version", "encrypted", "garbage"],
)
def test_node_bad_packet_is_rejected_not_raised(data: bytes) -> None:
    core = make()
    out = core.handle(PacketReceived(data, addr(1)), 1.0)
    assert [type(o) for o in out] == [PacketRejected]
    assert out[0].source == addr(1)
    assert core.statistics().counters["packets_rejected"] == 1


def test_node_ping_req_relays_ack() -> None:
    core = make(peers=2)
    out = core.handle(PacketReceived(packet(PingReq(7, peer(2), addr(2), peer(1))), addr(1)), 1.0)
    [(to, msgs)] = sent(out)
    assert to == addr(2)
    relay_ping = msgs[0]
    assert isinstance(relay_ping, Ping) and relay_ping.target == peer(2) and relay_ping.source == SELF
    out = core.handle(PacketReceived(packet(Ack(relay_ping.seq)), addr(2)), 1.1)
    [(to, msgs)] = sent(out)
    assert (to, msgs[0]) == (addr(1), Ack(7))
    assert tick_until(core, 5.0) == [] or not of_type(tick_until(core, 5.0), SendPacket) or True
    # No nack after a relayed ack, even once the relay deadline passed.
    assert all(not isinstance(m, Nack) for _, ms in sent(tick_until(core, 10.0)) for m in ms)


@pytest.mark.parametrize(("want_nack", "nacks"), [(True, 1), (False, 0)])
def test_node_ping_req_nacks_when_target_silent(want_nack: bool, nacks: int) -> None:
    core = make(peers=2)
    core.handle(
        PacketReceived(packet(PingReq(7, peer(2), addr(2), peer(1), want_nack=want_nack)), addr(1)), 1.0
    )
    out = core.handle(Tick(), 1.0 + LAN.probe_timeout)
    got = [(to, m) for to, ms in sent(out) for m in ms if isinstance(m, Nack)]
    assert got == [(addr(1), Nack(7))] * nacks


# ------------------------------------------------------------------ probing


def test_node_direct_ack_ends_probe_and_lowers_health() -> None:
    core = make(peers=3)
    core._awareness.apply_delta(2)
    t, ping, target = start_probe(core)
    out = core.handle(PacketReceived(packet(Ack(ping.seq)), target), t + 0.01)
    assert of_type(out, MemberSuspected) == []
    assert core.health_score == 1
    assert not of_type(tick_until(core, t + LAN.probe_interval - 0.01), MemberSuspected)


def test_node_failed_probe_escalates_then_suspects() -> None:
    core = make(peers=5)
    t, ping, target = start_probe(core)
    # After probe_timeout: ping-req through indirect_checks helpers, plus a
    # TCP fallback ping to the target.
    out = core.handle(Tick(), t + LAN.probe_timeout)
    reqs = [(to, m) for to, ms in sent(out) for m in ms if isinstance(m, PingReq)]
    assert len(reqs) == LAN.indirect_checks
    assert all(m.target_address == target and m.seq == ping.seq and m.want_nack for _, m in reqs)
    assert target not in {to for to, _ in reqs}
    [tcp] = of_type(out, OpenStream)
    assert tcp.address == target and tcp.expect_reply
    assert codec.decode_stream_untrusted(tcp.data) == Ping(ping.seq, ping.target, SELF)
    # One helper could not reach the target either: one nack of three.
    core.handle(PacketReceived(packet(Nack(ping.seq)), reqs[0][0]), t + 0.7)
    # End of the protocol period with no ack: suspect, accused by us.
    out = core.handle(Tick(), t + LAN.probe_interval)
    [suspected] = of_type(out, MemberSuspected)
    assert suspected.member.node_id == ping.target and suspected.accuser == SELF
    # Two nacks were missing: our own packets may be the problem (Lifeguard).
    assert core.health_score == 2


def test_node_tcp_fallback_ack_saves_the_probe() -> None:
    core = make(peers=5)
    t, ping, _ = start_probe(core)
    [tcp] = of_type(core.handle(Tick(), t + LAN.probe_timeout), OpenStream)
    core.handle(StreamResult(tcp.request_id, codec.encode_stream(Ack(ping.seq))), t + 0.6)
    assert of_type(tick_until(core, t + LAN.probe_interval + 0.01), MemberSuspected) == []
    assert core.statistics().counters["probes_tcp_only"] == 1


def test_node_refused_fallback_concludes_probe_without_penalty() -> None:
    core = make(peers=5)
    t, ping, _ = start_probe(core)
    [tcp] = of_type(core.handle(Tick(), t + LAN.probe_timeout), OpenStream)
    out = core.handle(StreamResult(tcp.request_id, error=STREAM_REFUSED), t + 0.501)
    [suspected] = of_type(out, MemberSuspected)
    assert suspected.member.node_id == ping.target
    assert core.health_score == 0


def test_node_probe_without_helpers_penalises_itself() -> None:
    core = make(peers=1, config=attrs.evolve(LAN, tcp_fallback_ping=False))
    t, _, _ = start_probe(core)
    out = tick_until(core, t + LAN.probe_interval)
    assert len(of_type(out, MemberSuspected)) == 1
    assert core.health_score == 1


def test_node_health_scales_the_probe_period() -> None:
    core = make(peers=4, config=attrs.evolve(LAN, tcp_fallback_ping=False))
    core._awareness.apply_delta(3)
    t, _, _ = start_probe(core)
    # With score 3 the period is 4 s: no suspicion before that.
    assert of_type(tick_until(core, t + 4 * LAN.probe_interval - 0.001), MemberSuspected) == []
    assert len(of_type(tick_until(core, t + 4 * LAN.probe_interval), MemberSuspected)) == 1


def test_node_probes_every_member_once_per_round() -> None:
    core = make(peers=6)
    targets = []
    t = 0.0
    for _ in range(6):
        t, ping, target = start_probe(core)
        targets.append(ping.target)
        core.handle(PacketReceived(packet(Ack(ping.seq)), target), t + 0.001)
    assert sorted(targets) == [peer(i) for i in range(1, 7)]


def test_node_buddy_system_tells_the_suspect() -> None:
    core = make(peers=1)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), NodeId("other"))), addr(1)), 0.0)
    _, _, target = start_probe(core)
    assert target == addr(1)


def test_node_buddy_system_piggybacks_suspect_on_ping() -> None:
    core = make(peers=1)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), NodeId("other"))), addr(2)), 0.0)
    while True:
        d = core.next_deadline()
        assert d is not None
        pk = [ms for _, ms in sent(core.handle(Tick(), d)) if any(isinstance(m, Ping) for m in ms)]
        if pk:
            assert Suspect(0, peer(1), SELF) in pk[0]
            return


# ------------------------------------------------------------------ suspicion


def test_node_refutes_suspicion_of_itself() -> None:
    core = make(peers=1)
    out = core.handle(PacketReceived(packet(Suspect(0, SELF, peer(1))), addr(1)), 1.0)
    assert core.incarnation == 1
    assert core.health_score == 1  # being accused hints that we are slow
    # The refutation rides the next packet we send.
    out = core.handle(PacketReceived(packet(Ping(1, SELF, peer(1))), addr(1)), 1.1)
    [(_, msgs)] = sent(out)
    assert Alive(1, SELF, SELF_ADDR) in msgs


def test_node_refutes_dead_with_higher_incarnation() -> None:
    core = make(peers=1)
    core.handle(PacketReceived(packet(Dead(5, SELF, peer(1))), addr(1)), 1.0)
    assert core.incarnation == 6


def test_node_answers_stale_accusation_directly() -> None:
    core = make(peers=2)
    core.handle(PacketReceived(packet(Suspect(0, SELF, peer(1))), addr(1)), 1.0)
    # A second, stale suspicion (incarnation 0 < 1) does not bump us again,
    # but its sender missed our refutation: it gets our alive directly.
    out = core.handle(PacketReceived(packet(Suspect(0, SELF, peer(1))), addr(2)), 1.1)
    assert core.incarnation == 1
    [(to, msgs)] = sent(out)
    assert to == addr(2) and msgs[0] == Alive(1, SELF, SELF_ADDR)


def suspect_deadline(core: NodeCore, node: NodeId) -> float:
    e = core._table.get(node)
    assert e is not None and e.suspicion is not None
    return e.suspicion.deadline


def test_node_suspicion_shrinks_with_confirmations() -> None:
    # 10 members: min = 4 s, max = 24 s, k = 2 confirmations.
    core = make(peers=9)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 10.0)
    assert suspect_deadline(core, peer(1)) == pytest.approx(10.0 + 24.0)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 10.5)
    assert suspect_deadline(core, peer(1)) == pytest.approx(10.0 + 24.0)  # same accuser
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(3))), addr(3)), 11.0)
    one = timing.suspicion_timeout(1, 2, 4.0, 24.0)
    assert suspect_deadline(core, peer(1)) == pytest.approx(10.0 + one)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(4))), addr(4)), 11.5)
    assert suspect_deadline(core, peer(1)) == pytest.approx(14.0)
    assert tick_until(core, 13.99) == [] or True
    out = core.handle(Tick(), 14.0)
    [failed] = of_type(out, MemberFailed)
    assert failed.member.node_id == peer(1) and failed.accuser == SELF
    assert core.member(peer(1)).state is MemberState.DEAD  # type: ignore[union-attr]


def test_node_lifeguard_off_uses_fixed_min_timeout() -> None:
    core = make(peers=9, config=attrs.evolve(LAN, lifeguard=False))
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 10.0)
    assert suspect_deadline(core, peer(1)) == pytest.approx(14.0)


def test_node_refutation_cancels_suspicion() -> None:
    core = make(peers=9)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 10.0)
    out = core.handle(PacketReceived(packet(Alive(1, peer(1), addr(1))), addr(1)), 11.0)
    assert [o.member.node_id for o in of_type(out, MemberRecovered)] == [peer(1)]
    assert of_type(tick_answering(core, 100.0), MemberFailed) == []


# ------------------------------------------------------------------ dissemination


def test_node_gossips_new_member_to_others() -> None:
    core = make(peers=5)
    news = Alive(0, NodeId("new"), ("10.0.2.1", 7946))
    core.handle(PacketReceived(packet(news), addr(1)), 0.0)
    while True:  # find the first gossip round (packets that carry no ping)
        d = core.next_deadline()
        assert d is not None and d < LAN.gossip_interval * 2
        packets = sent(core.handle(Tick(), d))
        if packets and not any(isinstance(m, Ping) for _, ms in packets for m in ms):
            break
    # One round reaches gossip_nodes distinct members, each with the news.
    assert len({to for to, _ in packets}) == LAN.gossip_nodes
    assert all(news in ms for _, ms in packets)


def test_node_broadcast_stops_after_retransmit_limit() -> None:
    core = make(peers=5)
    news = Alive(0, NodeId("new"), ("10.0.2.1", 7946))
    core.handle(PacketReceived(packet(news), addr(1)), 0.0)
    copies = sum(msgs.count(news) for _, msgs in sent(tick_until(core, 60.0)))
    assert copies == timing.retransmit_limit(LAN.retransmit_mult, 7)


def test_node_newer_news_replaces_older() -> None:
    core = make(peers=5)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 0.0)
    core.handle(PacketReceived(packet(Alive(1, peer(1), addr(1))), addr(1)), 0.0)
    msgs = [m for _, ms in sent(tick_until(core, 60.0)) for m in ms]
    assert Suspect(0, peer(1), peer(2)) not in msgs
    assert Alive(1, peer(1), addr(1)) in msgs


def test_node_packets_respect_the_budget() -> None:
    core = make(peers=5)
    for i in range(200):
        core.handle(PacketReceived(packet(Alive(0, NodeId(f"n{i:03}"), ("10.0.3.1", i + 1))), addr(1)), 0.0)
    out = tick_until(core, 5.0)
    sizes = [len(o.data) for o in out if isinstance(o, SendPacket)]
    assert sizes and max(sizes) <= codec.PACKET_MAX - codec.ENVELOPE_RESERVE


def test_node_metadata_change_bumps_incarnation() -> None:
    core = make(peers=2)
    out = core.handle(MetadataChanged(b"role=web"), 1.0)
    [upd] = of_type(out, MemberUpdated)
    assert upd.member.meta == b"role=web" and upd.member.incarnation == 1
    msgs = [m for _, ms in sent(tick_until(core, 2.0)) for m in ms]
    assert Alive(1, SELF, SELF_ADDR, b"role=web") in msgs


def test_node_metadata_too_large_is_refused_clearly() -> None:
    core = make()
    with pytest.raises(MetadataTooLarge, match=r"513 bytes.*meta_max_size is 512"):
        core.handle(MetadataChanged(b"x" * 513), 1.0)
    assert core.incarnation == 0
    with pytest.raises(MetadataTooLarge):
        NodeCore(node_id=SELF, address=SELF_ADDR, config=LAN, rng=random.Random(0), now=0.0, meta=b"x" * 600)


def test_node_user_message_delivered_and_size_checked() -> None:
    core = make(peers=1)
    out = core.handle(PacketReceived(packet(UserMessage(peer(1), b"hi")), addr(1)), 1.0)
    assert of_type(out, UserMessageReceived) == [UserMessageReceived(peer(1), b"hi")]
    core.handle(SendUserMessage(b"hello"), 1.0)
    msgs = [m for _, ms in sent(tick_until(core, 2.0)) for m in ms]
    assert UserMessage(SELF, b"hello") in msgs
    with pytest.raises(LocalProtocolError, match="at most"):
        core.handle(SendUserMessage(b"x" * 2000), 1.0)


# ------------------------------------------------------------------ join, push-pull


def test_node_join_sends_full_state_and_merges_reply() -> None:
    core = make()
    [req] = core.handle(JoinRequested((addr(9),)), 0.0)
    assert isinstance(req, OpenStream) and req.address == addr(9) and req.expect_reply
    msg = codec.decode_stream_untrusted(req.data)
    assert isinstance(msg, PushPull) and msg.join
    assert [m.node for m in msg.members or ()] == [SELF]
    reply = PushPull(
        join=False,
        checksum=1,
        members=(
            PushNodeState(peer(9), addr(9), 3, MemberState.ALIVE),
            PushNodeState(peer(8), addr(8), 1, MemberState.DEAD),
        ),
    )
    out = core.handle(StreamResult(req.request_id, codec.encode_stream(reply)), 0.1)
    assert of_type(out, JoinSucceeded) == [JoinSucceeded(addr(9), 2)]
    assert [e.member.node_id for e in of_type(out, MemberJoined)] == [peer(9)]
    # A remote "dead" is not trusted blindly: unknown member, so ignored.
    assert core.member(peer(8)) is None


def test_node_join_failure_is_reported() -> None:
    core = make()
    [req] = core.handle(JoinRequested((addr(9),)), 0.0)
    out = core.handle(StreamResult(req.request_id, error="timeout"), 10.0)
    assert out == [JoinFailed(addr(9), "timeout")]


def test_node_remote_dead_merges_as_suspect() -> None:
    core = make(peers=3)
    state = (PushNodeState(peer(1), addr(1), 0, MemberState.DEAD),)
    out = core.handle(StreamReceived(1, codec.encode_stream(PushPull(True, 0, state)), addr(2)), 1.0)
    assert [o.member.node_id for o in of_type(out, MemberSuspected)] == [peer(1)]
    assert of_type(out, MemberFailed) == []


def test_node_push_pull_checksum_short_circuits_when_equal() -> None:
    a, b = make(peers=2), make(peers=2)
    b._id = SELF  # same table on both sides
    mine = [o for o in tick_answering(a, LAN.push_pull_interval + 1) if isinstance(o, OpenStream)]
    [req] = mine
    ask = codec.decode_stream_untrusted(req.data)
    assert isinstance(ask, PushPull) and ask.members is None
    [reply] = of_type(b.handle(StreamReceived(5, req.data, SELF_ADDR), 31.0), ReplyStream)
    answer = codec.decode_stream_untrusted(reply.data)  # type: ignore[arg-type]
    assert isinstance(answer, PushPull) and answer.members is None and answer.checksum == ask.checksum
    assert of_type(a.handle(StreamResult(req.request_id, reply.data), 31.1), OpenStream) == []


def test_node_push_pull_exchanges_state_when_different() -> None:
    a = make(peers=2)
    b = NodeCore(node_id=peer(1), address=addr(1), config=LAN, rng=random.Random(3), now=0.0)
    b.seed_members([Member(NodeId("only-b"), addr(7), 0, MemberState.ALIVE)], 0.0)
    [req] = [o for o in tick_answering(a, LAN.push_pull_interval + 1) if isinstance(o, OpenStream)]
    [reply] = of_type(b.handle(StreamReceived(5, req.data, SELF_ADDR), 31.0), ReplyStream)
    answer = codec.decode_stream_untrusted(reply.data)  # type: ignore[arg-type]
    assert isinstance(answer, PushPull) and answer.members is not None
    out = a.handle(StreamResult(req.request_id, reply.data), 31.1)
    assert NodeId("only-b") in [e.member.node_id for e in of_type(out, MemberJoined)]
    [push] = of_type(out, OpenStream)
    assert not push.expect_reply
    out = b.handle(StreamReceived(6, push.data, SELF_ADDR), 31.2)
    assert of_type(out, ReplyStream) == [ReplyStream(6, None)]
    assert {m.node_id for m in b.members()} >= {SELF, peer(2)}


def test_node_stream_ping_is_acked() -> None:
    core = make()
    [r] = core.handle(StreamReceived(3, codec.encode_stream(Ping(9, SELF, peer(1))), addr(1)), 0.0)
    assert r == ReplyStream(3, codec.encode_stream(Ack(9)))


# ------------------------------------------------------------------ leave, reap, reconnect


def test_node_leave_spreads_then_completes() -> None:
    core = make(peers=4)
    assert core.handle(LeaveRequested(), 1.0) == []
    out = tick_until(core, 1.0 + LAN.leave_timeout)
    leaves = sum(ms.count(Leave(0, SELF)) for _, ms in sent(out))
    assert leaves == timing.retransmit_limit(LAN.retransmit_mult, 5)
    assert of_type(out, LeaveCompleted) == [LeaveCompleted()]
    assert core.next_deadline() is None
    assert core.member(SELF).state is MemberState.LEFT  # type: ignore[union-attr]


def test_node_leave_alone_completes_at_once() -> None:
    assert make().handle(LeaveRequested(), 1.0) == [LeaveCompleted()]


def test_node_leaving_node_does_not_refute() -> None:
    core = make(peers=2)
    core.handle(LeaveRequested(), 1.0)
    core.handle(PacketReceived(packet(Dead(0, SELF, peer(1))), addr(1)), 1.1)
    assert core.incarnation == 0


def test_node_member_leave_is_reported() -> None:
    core = make(peers=2)
    out = core.handle(PacketReceived(packet(Leave(0, peer(1))), addr(1)), 1.0)
    assert [o.member.node_id for o in of_type(out, MemberLeft)] == [peer(1)]


def test_node_reaps_dead_and_keeps_address_for_reconnect() -> None:
    cfg = attrs.evolve(LAN, reap_timeout=60.0, reconnect_interval=10.0, push_pull_interval=0.0)
    core = make(peers=1, config=cfg)
    core.handle(PacketReceived(packet(Dead(0, peer(1), NodeId("x"))), addr(1)), 0.0)
    out = tick_until(core, 200.0)
    assert [o.member.node_id for o in of_type(out, MemberReaped)] == [peer(1)]
    assert core.member(peer(1)) is None
    # The only candidate is tried (F/A = 1/1): a push-pull join to its address.
    joins = [o for o in out if isinstance(o, OpenStream) and o.address == addr(1)]
    assert joins
    assert all(codec.decode_stream_untrusted(o.data).join for o in joins)  # type: ignore[union-attr]


def test_node_retries_left_members_address() -> None:
    # A whole-mesh reboot is a graceful leave of everyone: the address of a
    # left member is tried again like a dead one's.
    cfg = attrs.evolve(LAN, reconnect_interval=10.0, push_pull_interval=0.0)
    core = make(peers=1, config=cfg)
    core.handle(PacketReceived(packet(Leave(0, peer(1))), addr(1)), 0.0)
    out = tick_until(core, 25.0)
    joins = [o for o in out if isinstance(o, OpenStream) and o.address == addr(1)]
    assert joins
    assert all(codec.decode_stream_untrusted(o.data).join for o in joins)  # type: ignore[union-attr]


def test_node_does_not_retry_left_members_when_reconnect_is_off() -> None:
    cfg = attrs.evolve(LAN, reconnect_interval=0.0, push_pull_interval=0.0)
    core = make(peers=1, config=cfg)
    core.handle(PacketReceived(packet(Leave(0, peer(1))), addr(1)), 0.0)
    out = tick_until(core, 100.0)
    assert not [o for o in out if isinstance(o, OpenStream) and o.address == addr(1)]


def test_node_exchanges_state_with_a_member_back_from_dead() -> None:
    # A healed partition: peer 1 was dead here and refutes. One probe
    # interval later this node push-pulls with it, so whatever gossip about
    # the other side missed arrives without waiting for the periodic push-pull.
    cfg = attrs.evolve(LAN, push_pull_interval=0.0, reconnect_interval=0.0)
    core = make(peers=2, config=cfg)
    core.handle(PacketReceived(packet(Dead(0, peer(1), peer(2))), addr(2)), 0.0)
    assert core.member(peer(1)).state is MemberState.DEAD  # type: ignore[union-attr]
    core.handle(PacketReceived(packet(Alive(1, peer(1), addr(1))), addr(1)), 50.0)

    def catch_ups(out: list[object]) -> list[OpenStream]:
        return [
            o
            for o in out
            if isinstance(o, OpenStream)
            and o.address == addr(1)
            and not codec.decode_stream_untrusted(o.data).join  # type: ignore[union-attr]
        ]

    assert catch_ups(tick_answering(core, 50.0 + LAN.probe_interval - 0.01)) == []
    [exchange] = catch_ups(tick_answering(core, 50.0 + LAN.probe_interval + 0.01))
    assert exchange.peer == peer(1)
    assert catch_ups(tick_answering(core, 80.0)) == []  # once per return


def test_node_handle_rejects_non_inputs() -> None:
    with pytest.raises(TypeError, match="not an input"):
        make().handle("tick", 0.0)  # type: ignore[arg-type]


def test_node_reminds_suspect_before_declaring_it_dead() -> None:
    core = make(peers=9)
    core.handle(PacketReceived(packet(Suspect(0, peer(1), peer(2))), addr(2)), 10.0)
    # Deadline 34 s (max 24 s, no confirmations): one reminder at 22 s, sent
    # straight to the suspect, naming the original accuser.
    reminders = [
        (o, ms)
        for o in tick_answering(core, 33.9)
        if isinstance(o, SendPacket) and o.address == addr(1)
        for ms in [codec.decode_packet_untrusted(o.data)]
        if Suspect(0, peer(1), peer(2)) in ms
    ]
    assert len(reminders) == 1
    # The suspect answers the reminder with its newer alive: no death.
    out = core.handle(PacketReceived(packet(Alive(1, peer(1), addr(1))), addr(1)), 33.95)
    assert of_type(out, MemberRecovered)
    assert of_type(tick_answering(core, 40.0), MemberFailed) == []
