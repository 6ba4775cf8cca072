"""What the runtime (or the simulator) feeds into :class:`~meshd.core.node.NodeCore`.

Each input is a frozen value handed to ``NodeCore.handle(input, now)``.
I/O results come back as inputs too (``StreamResult``), so the core never
waits on anything.
"""

from __future__ import annotations

import attrs

from meshd.core.types import Address

__all__ = [
    "Input",
    "JoinRequested",
    "LeaveRequested",
    "MetadataChanged",
    "PacketReceived",
    "SendUserEvent",
    "SendUserMessage",
    "StreamReceived",
    "StreamResult",
    "Tick",
]


@attrs.frozen
class PacketReceived:
    """A datagram arrived on the gossip socket from ``source``."""

    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    source: Address


@attrs.frozen
class Tick:
    """Time passed; fire whatever deadline is due at ``now``.

    The runtime sends one when ``NodeCore.next_deadline()`` is reached. Extra
    ticks are harmless.
    """


@attrs.frozen
class JoinRequested:
    """Join the mesh through any of ``addresses`` (push-pull with each)."""

    addresses: tuple[Address, ...]


@attrs.frozen
class LeaveRequested:
    """Leave gracefully: broadcast a leave notice, then report ``LeaveCompleted``."""


@attrs.frozen
class MetadataChanged:
    """Publish new node metadata (tags). Raises ``MetadataTooLarge`` when too big."""

    meta: bytes


@attrs.frozen
class SendUserMessage:
    """Broadcast an opaque payload to every member through gossip."""

    payload: bytes


@attrs.frozen
class SendUserEvent:
    """Broadcast a user event: every member delivers it once and re-gossips it.

    The core stamps it with this node's next Lamport time and reports it
    back at once as ``UserEventReceived`` (the origin delivers its own
    events too, as Serf does). Raises ``LocalProtocolError`` when the event
    does not fit in one gossip packet.
    """

    payload: bytes


@attrs.frozen
class StreamReceived:
    """A peer opened a stream and sent one frame.

    ``conn_id`` is chosen by the runtime; the core answers with
    ``ReplyStream(conn_id, ...)``.
    """

    conn_id: int
    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    source: Address


@attrs.frozen
class StreamResult:
    """The outcome of an ``OpenStream`` the core asked for.

    ``data`` is the peer's reply frame (None when no reply was expected or
    the exchange failed); ``error`` says why it failed (None on success).
    """

    request_id: int
    data: bytes | None = attrs.field(default=None, repr=lambda b: "None" if b is None else f"<{len(b)} bytes>")
    error: str | None = None


Input = (
    PacketReceived
    | Tick
    | JoinRequested
    | LeaveRequested
    | MetadataChanged
    | SendUserMessage
    | SendUserEvent
    | StreamReceived
    | StreamResult
)
