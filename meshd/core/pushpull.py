"""Push-pull: full membership state exchanged over a stream (anti-entropy).

Gossip is probabilistic; push-pull repairs whatever it missed. Periodically
(``push_pull_interval``, stretched above 32 members) a node exchanges state
with one random alive member, and a join is a push-pull with the seed.

Strategy (a refinement over memberlist, after Ringpop's membership checksum):
a periodic exchange first sends only a 64-bit *checksum* of the sender's
table. The peer answers with its full state only when its checksum differs,
and the initiator then pushes its own full state. In a converged mesh the
exchange is a few dozen bytes instead of O(N), so the steady-state bytes a
member sends per second do not grow with the mesh size (the SWIM property).
A join always sends and receives the full state.

Rule 1 (memberlist mergeState): a remote "dead" or "suspect" is merged as a
*suspicion*, never as dead. The member gets a chance to refute; a stale view
from one peer cannot kill a healthy member. Unlike memberlist, which names
the merging node as the accuser, the merged suspicion names the member
itself as accuser: "origin unknown" (membership.py Rule 4). Otherwise one
slow member's suspicion, copied into a peer's state and merged by a third,
would come back as a fake independent confirmation and shrink the Lifeguard
timeout, which is how a healthy member gets declared dead.

Rule 2: a remote "left" is merged as a leave, a remote "alive" as an alive
message, through the same rules as gossip (``membership.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from meshd.core.messages import Alive, Leave, PushNodeState, Suspect
from meshd.core.types import MemberState

__all__ = ["checksum", "entry_digest", "to_messages"]

_MASK64 = (1 << 64) - 1


def entry_digest(state: PushNodeState) -> int:
    """64-bit digest of one member entry (BLAKE2b-64, big-endian).

    Covers everything a push-pull would correct: name, address, incarnation,
    state, metadata and protocol range.
    """
    h = hashlib.blake2b(digest_size=8)
    host, port = state.address
    p = state.protocol
    h.update(
        b"%s\x00%s\x00%d\x00%d\x00%d\x00%d.%d.%d\x00"
        % (
            state.node.encode(),
            host.encode(),
            port,
            state.incarnation,
            int(state.state),
            p.minimum,
            p.maximum,
            p.current,
        )
    )
    h.update(state.meta)
    return int.from_bytes(h.digest(), "big")


def checksum(states: Iterable[PushNodeState]) -> int:
    """Order-independent checksum of a membership table: XOR of entry digests.

    Two nodes with the same table compute the same value whatever the order
    in which they learned the members.
    """
    total = 0
    for state in states:
        total ^= entry_digest(state)
    return total & _MASK64


def to_messages(states: Iterable[PushNodeState]) -> Iterable[Alive | Suspect | Leave]:
    """Turn a remote table into the gossip messages that merge it (Rules 1–2).

    Args:
        states: the entries the peer sent.
    """
    for s in states:
        if s.state is MemberState.ALIVE:
            yield Alive(s.incarnation, s.node, s.address, s.meta, s.protocol)
        elif s.state is MemberState.LEFT:
            yield Leave(s.incarnation, s.node)
        else:  # SUSPECT or DEAD → suspicion of unknown origin (Rule 1)
            yield Suspect(s.incarnation, s.node, s.node)
