"""What :class:`~meshd.core.node.NodeCore` asks the world to do, and what it reports.

Outputs come in two kinds. *Actions* (imperative names) are for the runtime
to perform: send a datagram, open a stream, answer a stream. *Events*
(past-tense names) are facts for observers: membership changes, rejected
packets, a completed leave.
"""

from __future__ import annotations

import attrs

from meshd.core.types import Address, Member, NodeId

__all__ = [
    "Action",
    "Event",
    "JoinFailed",
    "JoinSucceeded",
    "LeaveCompleted",
    "MemberFailed",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberRecovered",
    "MemberSuspected",
    "MemberUpdated",
    "OpenStream",
    "Output",
    "PacketRejected",
    "ProbeCompleted",
    "ReplyStream",
    "SendPacket",
    "UserEventReceived",
    "UserMessageReceived",
]


# ---------------------------------------------------------------- actions


@attrs.frozen
class SendPacket:
    """Send ``data`` (a complete packet, at most 1400 bytes) to ``address`` over UDP."""

    address: Address
    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class OpenStream:
    """Open a stream to ``address``, send ``data`` as one frame, read one reply
    frame when ``expect_reply``, all within ``timeout`` seconds; then report a
    ``StreamResult(request_id, ...)``."""

    request_id: int
    address: Address
    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    expect_reply: bool
    timeout: float
    #: The member expected at ``address`` (None for joins, where it is not
    #: known yet). The runtime refuses a peer whose authenticated identity
    #: differs.
    peer: NodeId | None = None


@attrs.frozen
class ReplyStream:
    """Answer the stream ``conn_id`` with one frame (None: close without answer)."""

    conn_id: int
    data: bytes | None = attrs.field(repr=lambda b: "None" if b is None else f"<{len(b)} bytes>")


Action = SendPacket | OpenStream | ReplyStream


# ---------------------------------------------------------------- events


@attrs.frozen
class MemberJoined:
    """A member became known (or came back after being dead or left)."""

    member: Member


@attrs.frozen
class MemberUpdated:
    """A member published new metadata or a new address."""

    member: Member


@attrs.frozen
class MemberSuspected:
    """``accuser`` suspects ``member``; it becomes dead unless it refutes in time."""

    member: Member
    accuser: NodeId


@attrs.frozen
class MemberRecovered:
    """A suspect member refuted the suspicion (raised its incarnation)."""

    member: Member


@attrs.frozen
class MemberFailed:
    """``member`` is dead. ``accuser`` is the node whose suspicion timer fired;
    when it equals this node's id, this node made the declaration."""

    member: Member
    accuser: NodeId


@attrs.frozen
class MemberLeft:
    """``member`` left gracefully."""

    member: Member


@attrs.frozen
class MemberReaped:
    """A dead or left member was removed from the table after ``reap_timeout``."""

    member: Member


@attrs.frozen
class PacketRejected:
    """Bytes from ``source`` were dropped; ``reason`` is a short fixed phrase."""

    reason: str
    source: Address


@attrs.frozen
class JoinSucceeded:
    """A push-pull join through ``address`` completed; ``members`` were learned."""

    address: Address
    members: int


@attrs.frozen
class JoinFailed:
    """A push-pull join through ``address`` failed with ``error``."""

    address: Address
    error: str


@attrs.frozen
class LeaveCompleted:
    """The leave notice went out (or ``leave_timeout`` passed): safe to exit."""


@attrs.frozen
class ProbeCompleted:
    """A probe of ``node`` was acknowledged ``rtt`` seconds after the ping
    went out (directly or through ping-req): for the probe-duration metric."""

    node: NodeId
    rtt: float


@attrs.frozen
class UserMessageReceived:
    """A user message broadcast by ``sender`` arrived."""

    sender: NodeId
    payload: bytes


@attrs.frozen
class UserEventReceived:
    """A user event arrived for the first time (or was sent by this node).

    ``origin`` is the member that sent it (as it claims: gossip is
    authenticated as a whole, by the cluster key, not per member);
    ``ltime`` is its Lamport time; each ``(origin, ltime, payload)`` is
    reported once per node.
    """

    origin: NodeId
    ltime: int
    payload: bytes


Event = (
    MemberJoined
    | MemberUpdated
    | MemberSuspected
    | MemberRecovered
    | MemberFailed
    | MemberLeft
    | MemberReaped
    | PacketRejected
    | JoinSucceeded
    | JoinFailed
    | LeaveCompleted
    | ProbeCompleted
    | UserMessageReceived
    | UserEventReceived
)

Output = Action | Event
