"""The membership table and the rules that move a member between states.

Theory of operation (SWIM §4.2, memberlist state.go aliveNode/suspectNode/deadNode):
every fact about a member arrives as an alive, suspect, dead or leave message
carrying the member's *incarnation*. Only the member itself raises its
incarnation, so a higher incarnation is always newer news. The rules below
decide whether a message changes our table; ``node.py`` performs the side
effects (rebroadcast, events, timers) according to the returned ``Outcome``.

Rule 1: every transition of another member's state happens in this file.
Messages about *this* node never reach these functions: ``node.py`` answers
them by refuting (raising its own incarnation).

Rule 2: incarnations only move forward. A message with a lower incarnation
than the table's is stale and ignored; at an equal incarnation, suspect
overrides alive, dead and left override both, and alive overrides nothing
(refutation needs a *higher* incarnation).

Rule 3: a member that is alive or suspect keeps its address. An alive message
naming another address is a name conflict (two processes claim one name)
and is ignored; once the member is dead or left, a new address is accepted
so a restarted node may come back from elsewhere (memberlist's dead-node
reclaim, with no waiting time).

Rule 4: a suspect message whose accuser is the suspected member itself
carries a suspicion of unknown origin (merged from a push-pull, see
``pushpull.py``). It starts a suspicion where there is none, so the member
hears of it and refutes, but it never counts as an independent confirmation:
Lifeguard's shorter timeouts must rest on members that failed to reach the
suspect themselves, not on one member's suspicion echoed back through a
state exchange.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import attrs

from meshd.core.messages import Alive, Dead, Leave, Suspect
from meshd.core.suspicion import Suspicion
from meshd.core.types import Address, Member, MemberState, NodeId, ProtocolRange

__all__ = ["MemberEntry", "MemberTable", "Outcome", "SuspicionParams"]


class Outcome(enum.Enum):
    """What applying a message did to the table."""

    #: Nothing changed (stale, duplicate, unknown member, or a conflict).
    IGNORED = enum.auto()
    #: A member we did not know was added.
    JOINED = enum.auto()
    #: A dead or left member is alive again.
    REJOINED = enum.auto()
    #: A suspect member refuted the suspicion.
    RECOVERED = enum.auto()
    #: An alive member changed its metadata or address.
    UPDATED = enum.auto()
    #: A newer incarnation with nothing else to report; still worth gossiping.
    REFRESHED = enum.auto()
    #: An alive member became suspect.
    SUSPECTED = enum.auto()
    #: Another node independently confirmed an existing suspicion.
    CONFIRMED = enum.auto()
    #: A member became dead.
    FAILED = enum.auto()
    #: A member left gracefully.
    LEFT = enum.auto()
    #: Alive message names a new address for a live member: refused.
    CONFLICT = enum.auto()


@attrs.frozen
class SuspicionParams:
    """How a new suspicion timer is set up (computed by node.py from timing.py)."""

    k: int
    min_timeout: float
    max_timeout: float


@attrs.define(eq=False, slots=True)
class MemberEntry:
    """Mutable row of the table. Events carry frozen :class:`Member` snapshots."""

    node_id: NodeId
    address: Address
    incarnation: int
    state: MemberState
    meta: bytes
    protocol: ProtocolRange
    state_changed_at: float
    #: Running suspicion timer while ``state`` is SUSPECT, else None.
    suspicion: Suspicion | None = None
    #: Smoothed round-trip time of direct pings to this member and its mean
    #: deviation (``timing.rtt_update``); None until the first direct ack.
    srtt: float | None = None
    rttvar: float = 0.0

    def snapshot(self) -> Member:
        return Member(
            node_id=self.node_id,
            address=self.address,
            incarnation=self.incarnation,
            state=self.state,
            meta=self.meta,
            protocol=self.protocol,
            state_changed_at=self.state_changed_at,
        )

    def _set_state(self, state: MemberState, now: float) -> None:
        if state is not self.state:
            self.state = state
            self.state_changed_at = now
        if state is not MemberState.SUSPECT:
            self.suspicion = None


class MemberTable:
    """Every member this node knows about, except itself."""

    def __init__(self) -> None:
        self._entries: dict[NodeId, MemberEntry] = {}
        #: Members with a running suspicion timer; kept apart so the node can
        #: find the next suspicion deadline without scanning the whole table.
        self.suspects: dict[NodeId, MemberEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def __iter__(self) -> Iterator[MemberEntry]:
        return iter(self._entries.values())

    def get(self, node_id: NodeId) -> MemberEntry | None:
        return self._entries.get(node_id)

    def add(self, entry: MemberEntry) -> None:
        self._entries[entry.node_id] = entry

    def remove(self, node_id: NodeId) -> MemberEntry | None:
        self.suspects.pop(node_id, None)
        return self._entries.pop(node_id, None)

    def count(self, state: MemberState) -> int:
        return sum(1 for e in self._entries.values() if e.state is state)

    # ------------------------------------------------------------ the rules

    def apply_alive(self, msg: Alive, now: float) -> Outcome:
        entry = self._entries.get(msg.node)
        if entry is None:
            self._entries[msg.node] = MemberEntry(
                node_id=msg.node,
                address=msg.address,
                incarnation=msg.incarnation,
                state=MemberState.ALIVE,
                meta=msg.meta,
                protocol=msg.protocol,
                state_changed_at=now,
            )
            return Outcome.JOINED
        moved = msg.address != entry.address
        if moved and entry.state in (MemberState.ALIVE, MemberState.SUSPECT):
            return Outcome.CONFLICT  # Rule 3
        if msg.incarnation <= entry.incarnation and not moved:
            return Outcome.IGNORED  # Rule 2
        previous = entry.state
        changed = moved or msg.meta != entry.meta
        entry.incarnation = max(msg.incarnation, entry.incarnation) if moved else msg.incarnation
        entry.address = msg.address
        entry.meta = msg.meta
        entry.protocol = msg.protocol
        entry._set_state(MemberState.ALIVE, now)
        self.suspects.pop(msg.node, None)
        if previous in (MemberState.DEAD, MemberState.LEFT):
            return Outcome.REJOINED
        if previous is MemberState.SUSPECT:
            return Outcome.RECOVERED
        return Outcome.UPDATED if changed else Outcome.REFRESHED

    def apply_suspect(self, msg: Suspect, now: float, params: SuspicionParams) -> Outcome:
        entry = self._entries.get(msg.node)
        if entry is None or msg.incarnation < entry.incarnation:
            return Outcome.IGNORED
        if entry.suspicion is not None:
            # Already suspect: a suspicion from someone else is an independent
            # confirmation that shortens the timer (Lifeguard LHA-Suspicion).
            # Rule 4: a suspicion "accused by the member itself" was relayed
            # from a push-pull; its origin is unknown (maybe the very accuser
            # we already count), so it never confirms.
            if msg.accuser == msg.node:
                return Outcome.IGNORED
            return Outcome.CONFIRMED if entry.suspicion.confirm(msg.accuser) else Outcome.IGNORED
        if entry.state is not MemberState.ALIVE:
            return Outcome.IGNORED
        entry.incarnation = msg.incarnation
        entry._set_state(MemberState.SUSPECT, now)
        entry.suspicion = Suspicion(
            accuser=msg.accuser,
            k=params.k,
            min_timeout=params.min_timeout,
            max_timeout=params.max_timeout,
            started_at=now,
        )
        self.suspects[msg.node] = entry
        return Outcome.SUSPECTED

    def apply_dead(self, msg: Dead, now: float) -> Outcome:
        entry = self._entries.get(msg.node)
        if entry is None or msg.incarnation < entry.incarnation:
            return Outcome.IGNORED
        if entry.state in (MemberState.DEAD, MemberState.LEFT):
            return Outcome.IGNORED
        entry.incarnation = msg.incarnation
        entry._set_state(MemberState.DEAD, now)
        self.suspects.pop(msg.node, None)
        return Outcome.FAILED

    def apply_leave(self, msg: Leave, now: float) -> Outcome:
        entry = self._entries.get(msg.node)
        if entry is None or msg.incarnation < entry.incarnation:
            return Outcome.IGNORED
        if entry.state in (MemberState.DEAD, MemberState.LEFT):
            return Outcome.IGNORED
        entry.incarnation = msg.incarnation
        entry._set_state(MemberState.LEFT, now)
        self.suspects.pop(msg.node, None)
        return Outcome.LEFT
