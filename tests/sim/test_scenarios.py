"""Membership scenarios on the deterministic simulator with real NodeCores.

Every scenario has a fixed seed (in its test id); on failure the assertion
message carries the seed and the tail of the event trace, so the run can be
replayed exactly.
"""

from __future__ import annotations

import random

import attrs
import pytest

from meshd.core.config import MembershipConfig
from meshd.core.outputs import (
    Event,
    MemberFailed,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
)
from meshd.core.types import MemberState
from meshd.testing.sim import SimNetwork, SlowSpec

LAN = MembershipConfig.lan()


def why(net: SimNetwork) -> str:
    return net.format_trace(last=40)


def mesh(n: int, seed: int, config: MembershipConfig = LAN, **kw: object) -> SimNetwork:
    """n nodes, each joined through a random earlier node, converged."""
    net = SimNetwork(seed, **kw)  # type: ignore[arg-type]
    rng = random.Random(seed)
    names = [f"n{i:03}" for i in range(n)]
    for i, name in enumerate(names):
        net.add_node(name, config=config)
        if i:
            net.join(name, [names[rng.randrange(i)]])
    assert net.run_until_true(net.converged, timeout=120.0, check_every=0.5), why(net)
    return net


def failures(net: SimNetwork) -> list[tuple[float, str, MemberFailed]]:
    found: list[tuple[float, str, MemberFailed]] = []

    def listen(t: float, observer: str, ev: Event) -> None:
        if isinstance(ev, MemberFailed):
            found.append((t, observer, ev))

    net.listeners.append(listen)
    return found


@pytest.mark.parametrize("seed", [1, 2])
def test_sim_100_node_join_converges(seed: int) -> None:
    # Joins through push-pull with a seed, the rest by gossip and push-pull.
    net = SimNetwork(seed, record_trace=False)
    names = [f"n{i:03}" for i in range(100)]
    rng = random.Random(seed)
    for i, name in enumerate(names):
        net.add_node(name)
        if i:
            net.join(name, [names[rng.randrange(i)]])
        net.run_for(0.05)
    start = net.now
    assert net.run_until_true(net.converged, timeout=60.0, check_every=1.0), f"seed {seed}"
    # Bound: a few gossip rounds after the last join, far below the 30 s
    # push-pull interval, so gossip (not anti-entropy) did the work.
    assert net.now - start < 15.0
    assert all(len(net.view(n)) == 100 for n in names)


@pytest.mark.parametrize("seed", [3, 4])
def test_sim_crashed_node_marked_dead_by_every_member(seed: int) -> None:
    net = mesh(20, seed)
    died = failures(net)
    crash_at = net.now
    net.crash("n007")
    others = [n for n in net.alive_nodes()]
    assert net.run_until_true(
        lambda: all(net.view(n)["n007"] is MemberState.DEAD for n in others), timeout=30.0
    ), why(net)
    # Detected within the suspicion bounds: N=20 gives min 5.2 s, max 31 s;
    # with every member probing, confirmations arrive and min applies.
    assert net.now - crash_at < 12.0
    assert {obs for _, obs, ev in died if ev.member.node_id == "n007"} == set(others)
    # Nobody else died.
    assert {ev.member.node_id for _, _, ev in died} == {"n007"}


def _loss_and_overload(n: int, seed: int, lifeguard: bool, seconds: float) -> tuple[int, set[str]]:
    config = attrs.evolve(LAN, lifeguard=lifeguard)
    net = SimNetwork(seed, loss=0.10, record_trace=False)
    names = [f"n{i:03}" for i in range(n)]
    for name in names:
        net.add_node(name, config=config)
    net.bootstrap_full_mesh()
    slow = set(random.Random(seed).sample(names, max(1, n // 20)))  # 5 %
    for s in sorted(slow):
        net.set_slow(s, SlowSpec(min_delay=0.5, max_delay=16.0))
    died = failures(net)
    net.run_for(seconds)
    # A false death: a member that is up and not slow, declared dead where
    # the declaring member's suspicion timer fired.
    healthy_deaths = [
        ev for _, obs, ev in died if ev.accuser == obs and ev.member.node_id not in slow
    ]
    return len(healthy_deaths), slow


@pytest.mark.slow
@pytest.mark.parametrize("seed", [5, 6])
def test_sim_lifeguard_prevents_false_deaths_under_loss_and_slow_nodes(seed: int) -> None:
    deaths, slow = _loss_and_overload(40, seed, lifeguard=True, seconds=600.0)
    assert slow  # the scenario really has overloaded members
    assert deaths == 0, f"seed {seed}: {deaths} healthy members declared dead with Lifeguard on"


@pytest.mark.slow
def test_sim_same_scenario_without_lifeguard_has_false_deaths() -> None:
    # The control: the scenario above is harsh enough to hurt plain SWIM,
    # so its zero with Lifeguard on is a real result.
    deaths, _ = _loss_and_overload(40, 5, lifeguard=False, seconds=600.0)
    assert deaths > 0


@pytest.mark.parametrize("seed", [7, 8])
def test_sim_two_way_partition_heals_into_one_mesh(seed: int) -> None:
    cfg = attrs.evolve(LAN, reconnect_interval=10.0)
    net = mesh(16, seed, cfg)
    names = net.node_ids
    left, right = names[:8], names[8:]
    net.partition(left, right)
    # Each side marks the other dead.
    assert net.run_until_true(
        lambda: all(net.view(a)[b] is MemberState.DEAD for a in left for b in right)
        and all(net.view(b)[a] is MemberState.DEAD for a in left for b in right),
        timeout=120.0,
    ), why(net)
    assert net.converged(left) and net.converged(right)
    net.heal()
    healed_at = net.now
    # No operator action: reconnect attempts to dead members' addresses
    # (every reconnect_interval) merge the halves.
    assert net.run_until_true(net.converged, timeout=60.0, check_every=0.5), why(net)
    assert net.now - healed_at <= 3 * cfg.reconnect_interval


@pytest.mark.parametrize("seed", [9, 10])
def test_sim_refuted_suspicion_never_becomes_dead(seed: int) -> None:
    net = mesh(10, seed)
    died = failures(net)
    suspected, recovered = [], []

    def listen(t: float, observer: str, ev: Event) -> None:
        if isinstance(ev, MemberSuspected) and ev.member.node_id == "n004":
            suspected.append(observer)
        if isinstance(ev, MemberRecovered) and ev.member.node_id == "n004":
            recovered.append(observer)

    net.listeners.append(listen)
    # n004 stalls: for 3 s everything it receives waits 2 s. Its acks come
    # too late, so its probers suspect it; it refutes when it catches up.
    net.set_slow("n004", SlowSpec(min_delay=2.0, max_delay=2.0))
    net.run_for(3.0)
    net.set_slow("n004", None)
    net.run_for(60.0)
    assert suspected, f"seed {seed}: the stall did not cause a suspicion"
    assert set(recovered) >= set(suspected) - {"n004"}
    assert [ev for _, _, ev in died if ev.member.node_id == "n004"] == []
    assert net.node("n004").core.incarnation > 0  # type: ignore[union-attr]
    assert net.converged()


def test_sim_graceful_leave_is_not_a_failure() -> None:
    net = mesh(12, 11)
    died = failures(net)
    left: set[str] = set()
    net.listeners.append(
        lambda t, obs, ev: left.add(obs) if isinstance(ev, MemberLeft) and ev.member.node_id == "n005" else None
    )
    net.leave("n005")
    assert net.run_until_true(lambda: len(left) == 11, timeout=10.0), why(net)
    net.run_for(60.0)
    assert died == []
    assert all(net.view(n)["n005"] is MemberState.LEFT for n in net.alive_nodes() if n != "n005")


def test_sim_metadata_update_reaches_everyone() -> None:
    net = mesh(30, 12)
    seen: set[str] = set()
    net.listeners.append(
        lambda t, obs, ev: seen.add(obs)
        if isinstance(ev, MemberUpdated) and ev.member.node_id == "n010" and ev.member.meta == b"role=db"
        else None
    )
    net.set_meta("n010", b"role=db")
    assert net.run_until_true(lambda: len(seen) >= 29, timeout=5.0), why(net)


@pytest.mark.parametrize("seed", [13, 14])
def test_sim_same_seed_same_trace(seed: int) -> None:
    def run() -> str:
        net = mesh(8, seed, loss=0.05)
        net.crash("n003")
        net.run_for(20.0)
        net.restart("n003")
        net.run_for(20.0)
        return net.trace_digest()

    assert run() == run()


def test_sim_different_seed_different_trace() -> None:
    def run(seed: int) -> str:
        net = mesh(8, seed, loss=0.05)
        net.run_for(20.0)
        return net.trace_digest()

    assert run(15) != run(16)


def test_sim_restarted_node_refutes_its_death_and_rejoins() -> None:
    net = mesh(10, 17)
    net.crash("n002")
    assert net.run_until_true(
        lambda: all(net.view(n)["n002"] is MemberState.DEAD for n in net.alive_nodes()), timeout=30.0
    ), why(net)
    net.restart("n002", join_via=["n000"])
    assert net.run_until_true(net.converged, timeout=10.0), why(net)
    # The fresh process started at incarnation 0 and out-bid its own death.
    assert net.node("n002").core.incarnation >= 1  # type: ignore[union-attr]
