"""SWIM failure detection bookkeeping: probe order, the probe in flight, ping-req relays.

Theory of operation (SWIM §3–4, memberlist state.go probe/probeNode):

1. Every protocol period this node probes ONE member, chosen in
   *randomized round-robin* order: the member list is shuffled, walked once,
   then reshuffled. Compared with picking at random every time, this bounds
   the time until a failed member is first probed (at most 2N − 1 periods).
2. A probe sends a ping and waits for the ack until it is overdue by the
   member's measured round-trip time (``timing.escalation_timeout``: between
   ``probe_timeout_min`` and ``probe_timeout``). If none comes, it asks ``indirect_checks`` other members to ping the target for us
   (ping-req) and, in parallel, asks the runtime for a stream (TCP) ping,
   which tells "UDP is filtered" apart from "the node is down".
3. The probe fails if no ack arrived by the end of the (health-scaled)
   protocol period; the target becomes suspect.
4. A helper that cannot reach the target within its own probe timeout sends
   a nack (Lifeguard): a requester that hears no nacks learns that the
   problem is probably on its own side and raises its local health score.

This module only keeps the records; ``node.py`` sends the packets.
"""

from __future__ import annotations

import attrs

from meshd.core.types import Address, NodeId, Rng

__all__ = ["IndirectRelay", "Probe", "ProbeOrder"]


@attrs.define(eq=False, slots=True)
class Probe:
    """The one probe in flight (a node probes one member at a time)."""

    seq: int
    target: NodeId
    #: The target's incarnation when the probe started: a failed probe
    #: suspects exactly that incarnation, so a refutation that raced the
    #: probe is not overridden.
    incarnation: int
    address: Address
    started_at: float
    #: When to give up on a direct ack and start indirect probes.
    indirect_at: float
    #: End of the health-scaled protocol period: no ack by then → suspect.
    deadline: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    #: Request id of the stream (TCP) fallback ping, if one was asked for.
    stream_request: int | None = None


@attrs.define(eq=False, slots=True)
class IndirectRelay:
    """A ping we sent on behalf of another node's ping-req."""

    origin_seq: int
    origin_address: Address
    want_nack: bool
    deadline: float


class ProbeOrder:
    """Randomized round-robin over member ids (SWIM §4.3)."""

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._order: list[NodeId] = []
        self._index = 0

    def reset(self, members: list[NodeId]) -> None:
        """Start a new pass over ``members`` in a fresh random order."""
        self._order = list(members)
        self._rng.shuffle(self._order)
        self._index = 0

    def next(self) -> NodeId | None:
        """The next member of this pass, or None when the pass is complete."""
        if self._index >= len(self._order):
            return None
        node = self._order[self._index]
        self._index += 1
        return node

    def insert(self, node: NodeId) -> None:
        """Add a new member at a random place in the rest of this pass.

        Appending would make every new member wait for a full pass; a random
        slot keeps the expected time to its first probe the same as anyone's.
        """
        pos = self._rng.randrange(self._index, len(self._order) + 1)
        self._order.insert(pos, node)
