"""User events (core/userevents.py and their handling in NodeCore): plain, synchronous.

The Lamport clock and the seen-set are tested as tables; NodeCore is driven
by hand as in test_node.py; the last tests run whole meshes on the
simulator to show that every member re-gossips an event, so it reaches all
of them about as fast as a membership update, also under packet loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from meshd.core import codec
from meshd.core.config import MembershipConfig
from meshd.core.inputs import PacketReceived, SendUserEvent, Tick
from meshd.core.messages import Message, UserEvent
from meshd.core.node import NodeCore
from meshd.core.outputs import MemberUpdated, Output, SendPacket, UserEventReceived
from meshd.core.types import Address, Member, MemberState, NodeId
from meshd.core.userevents import LamportClock, SeenEvents
from meshd.errors import LocalProtocolError
from meshd.testing.sim import SimNetwork

LAN = MembershipConfig.lan()
SELF = NodeId("self")
SELF_ADDR = ("10.0.0.1", 7946)


def addr(i: int) -> Address:
    return (f"10.0.1.{i}", 7946)


def peer(i: int) -> NodeId:
    return NodeId(f"p{i}")


def make(peers: int = 3) -> NodeCore:
    core = NodeCore(node_id=SELF, address=SELF_ADDR, config=LAN, rng=random.Random(0), now=0.0)
    core.seed_members(
        [Member(peer(i), addr(i), 0, MemberState.ALIVE) for i in range(1, peers + 1)], 0.0
    )
    return core


def packet(*messages: Message) -> bytes:
    return codec.encode_packet(codec.encode_compound([codec.encode_message(m) for m in messages]))


def gossiped(core: NodeCore, until: float) -> list[Message]:
    """Every message this core sends on its own timers up to ``until``."""
    out: list[Output] = []
    while (d := core.next_deadline()) is not None and d <= until:
        out += core.handle(Tick(), d)
    return [
        m for o in out if isinstance(o, SendPacket) for m in codec.decode_packet_untrusted(o.data)
    ]


def events(outputs: Sequence[Output]) -> list[UserEventReceived]:
    return [o for o in outputs if isinstance(o, UserEventReceived)]


# ------------------------------------------------------------------ LamportClock


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("tick",), ("tick",)], [1, 2]),
        ([("witness", 10), ("tick",)], [11]),
        ([("tick",), ("witness", 0), ("tick",)], [1, 2]),  # an older time changes nothing
        ([("witness", 5), ("witness", 3), ("tick",)], [6]),
    ],
)
def test_LamportClock_ticks_past_everything_witnessed(
    steps: list[tuple[object, ...]], expected: list[int]
) -> None:
    clock = LamportClock()
    ticks = []
    for step in steps:
        if step[0] == "tick":
            ticks.append(clock.tick())
        else:
            clock.witness(int(step[1]))  # type: ignore[call-overload]
    assert ticks == expected


# ------------------------------------------------------------------ SeenEvents


def test_SeenEvents_first_time_then_duplicate() -> None:
    seen = SeenEvents()
    assert seen.first_time("a", 1, b"x", 0.0)
    assert not seen.first_time("a", 1, b"x", 1.0)
    # Another origin, time or payload is another event (Rule 1).
    assert seen.first_time("b", 1, b"x", 1.0)
    assert seen.first_time("a", 2, b"x", 1.0)
    assert seen.first_time("a", 1, b"y", 1.0)
    assert len(seen) == 4


def test_SeenEvents_forgets_after_ttl() -> None:
    seen = SeenEvents(ttl=10.0)
    assert seen.first_time("a", 1, b"", 0.0)
    assert not seen.first_time("a", 1, b"", 10.0)  # still remembered at exactly ttl
    assert seen.first_time("b", 1, b"", 10.5)
    assert seen.first_time("a", 1, b"", 10.5)  # forgotten: delivered again
    assert len(seen) == 2


def test_SeenEvents_capacity_evicts_oldest() -> None:
    seen = SeenEvents(capacity=2)
    for ltime in (1, 2, 3):
        assert seen.first_time("a", ltime, b"", 0.0)
    assert seen.evicted == 1
    assert seen.first_time("a", 1, b"", 0.0)  # the oldest went first
    assert not seen.first_time("a", 3, b"", 0.0)


def test_SeenEvents_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        SeenEvents(ttl=0)
    with pytest.raises(ValueError, match="positive"):
        SeenEvents(capacity=0)


# ------------------------------------------------------------------ NodeCore


def test_node_user_event_sent_is_delivered_locally_and_gossiped() -> None:
    core = make()
    out = core.handle(SendUserEvent(b"deploy"), 1.0)
    assert events(out) == [UserEventReceived(SELF, 1, b"deploy")]
    assert UserEvent(SELF, 1, b"deploy") in gossiped(core, 2.0)
    assert core.handle(SendUserEvent(b"again"), 2.0)[0] == UserEventReceived(SELF, 2, b"again")
    assert core.statistics().counters["user_events_sent"] == 2


def test_node_user_event_received_once_and_regossiped() -> None:
    core = make()
    event = UserEvent(peer(1), 7, b"hello")
    out = core.handle(PacketReceived(packet(event), addr(1)), 1.0)
    assert events(out) == [UserEventReceived(peer(1), 7, b"hello")]
    # Infection-style: this node passes it on.
    assert event in gossiped(core, 2.0)
    # The same event again (from anyone) is a duplicate: not delivered, not queued.
    again = core.handle(PacketReceived(packet(event), addr(2)), 2.5)
    assert events(again) == []
    assert event not in gossiped(core, 10.0)
    counters = core.statistics().counters
    assert (counters["user_events_received"], counters["user_events_duplicate"]) == (1, 1)


def test_node_user_event_clock_witnesses_received_times() -> None:
    core = make()
    core.handle(PacketReceived(packet(UserEvent(peer(1), 41, b"")), addr(1)), 1.0)
    [mine] = events(core.handle(SendUserEvent(b"after"), 1.0))
    assert mine.ltime == 42  # causally after the event it saw


def test_node_user_event_own_echo_is_dropped() -> None:
    core = make()
    core.handle(SendUserEvent(b"x"), 1.0)
    out = core.handle(PacketReceived(packet(UserEvent(SELF, 1, b"x")), addr(1)), 1.5)
    assert events(out) == []


def test_node_user_event_too_large_is_refused_without_ticking_the_clock() -> None:
    core = make()
    with pytest.raises(LocalProtocolError, match="at most"):
        core.handle(SendUserEvent(b"x" * 2000), 1.0)
    [ok] = events(core.handle(SendUserEvent(b"small"), 1.0))
    assert ok.ltime == 1


# ------------------------------------------------------------------ simulated meshes


def _first_seen(net: SimNetwork, match: type, at: float) -> dict[str, float]:
    """observer -> when it first reported an event of type ``match`` after ``at``."""
    seen: dict[str, float] = {}
    for entry in net.trace:
        if entry.time >= at and isinstance(entry.event, match):
            seen.setdefault(entry.observer, entry.time)
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_sim_user_event_reaches_every_member_under_loss(seed: int) -> None:
    # 10 members, 10 % packet loss: each member re-gossips the event, so it
    # reaches all of them, in about the time a metadata update takes.
    net = SimNetwork(seed=seed, loss=0.1, record_trace=True)
    names = [f"n{i}" for i in range(10)]
    for name in names:
        net.add_node(name)
    net.bootstrap_full_mesh()
    net.run_for(2.0)

    start = net.now
    net.user_event("n0", b"deploy v2")
    net.set_meta("n0", b"role=web")
    net.run_for(10.0)
    events_at = _first_seen(net, UserEventReceived, start)
    updates_at = _first_seen(net, MemberUpdated, start)
    assert sorted(events_at) == names, f"seed {seed}: missed {set(names) - set(events_at)}"
    event_time = max(events_at.values()) - start
    update_time = max(t for n, t in updates_at.items() if n != "n0") - start
    # The same mechanism as the update (each member queues it again), so
    # about the same time; a loose bound keeps the test about the mechanism.
    assert event_time <= 2 * update_time + 0.5, (seed, event_time, update_time)
    delivered = [e for e in net.trace if isinstance(e.event, UserEventReceived) and e.time >= start]
    assert len(delivered) == 10  # once per member, duplicates dropped
