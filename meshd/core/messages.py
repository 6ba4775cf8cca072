"""Gossip messages as values, and the append-only message-type table.

WARNING: ONLY APPEND TO :class:`MessageType`. The numbers are part of the wire
protocol (protocol/SPEC.md, "Message types"); renumbering breaks every peer.

Each message class is a frozen value with the fields listed in SPEC.md, in
wire order. Encoding and decoding live in ``codec.py`` so these classes stay
free of serialisation concerns (attrs: "your business model and your
serialization format should not be coupled").
"""

from __future__ import annotations

import enum

import attrs

from meshd.core.types import Address, MemberState, NodeId, ProtocolRange

__all__ = [
    "Ack",
    "Alive",
    "AppRequest",
    "AppResponse",
    "Dead",
    "KeyOp",
    "KeyOpResult",
    "Leave",
    "Message",
    "MessageType",
    "Nack",
    "Ping",
    "PingReq",
    "PushNodeState",
    "PushPull",
    "Suspect",
    "UserEvent",
    "UserMessage",
]


class MessageType(enum.IntEnum):
    """Message type numbers. Append only; never renumber or reuse."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    LEAVE = 8
    PUSH_PULL = 9
    USER = 10
    KEY_OP = 11
    KEY_OP_RESULT = 12
    APP_REQUEST = 13
    APP_RESPONSE = 14
    USER_EVENT = 15


@attrs.frozen
class Ping:
    """Direct probe. ``target`` lets a node that took over an address refuse it."""

    seq: int
    target: NodeId
    source: NodeId


@attrs.frozen
class PingReq:
    """Ask the receiver to ping ``target`` on our behalf (SWIM indirect probe)."""

    seq: int
    target: NodeId
    target_address: Address
    source: NodeId
    #: True when the requester wants a nack if the target does not answer
    #: (Lifeguard; lets the requester tell its own slowness from the target's).
    want_nack: bool = True


@attrs.frozen
class Ack:
    """Answer to a ping (or a relayed answer to a ping-req), matched by ``seq``."""

    seq: int
    payload: bytes = b""


@attrs.frozen
class Nack:
    """A ping-req helper could not reach the target within its probe timeout."""

    seq: int


@attrs.frozen
class Suspect:
    """``accuser`` suspects ``node`` at ``incarnation``."""

    incarnation: int
    node: NodeId
    accuser: NodeId


@attrs.frozen
class Alive:
    """``node`` is alive at ``incarnation``, with this address and metadata."""

    incarnation: int
    node: NodeId
    address: Address
    meta: bytes = b""
    protocol: ProtocolRange = ProtocolRange()


@attrs.frozen
class Dead:
    """``accuser`` declares ``node`` dead at ``incarnation``."""

    incarnation: int
    node: NodeId
    accuser: NodeId


@attrs.frozen
class Leave:
    """``node`` leaves the mesh gracefully at ``incarnation``."""

    incarnation: int
    node: NodeId


@attrs.frozen
class PushNodeState:
    """One member as carried in a push-pull exchange."""

    node: NodeId
    address: Address
    incarnation: int
    state: MemberState
    meta: bytes = b""
    protocol: ProtocolRange = ProtocolRange()


@attrs.frozen
class PushPull:
    """Full or summarised membership state, exchanged over a stream.

    A periodic exchange first sends only ``checksum`` (``members`` is None);
    the peer answers with its full state only when its checksum differs, so
    the steady-state cost does not grow with the mesh size. A join always
    carries the full state (``join`` is True).
    """

    join: bool
    checksum: int
    members: tuple[PushNodeState, ...] | None = None


@attrs.frozen
class UserMessage:
    """Opaque application payload from ``sender`` (plugins build on this)."""

    sender: NodeId
    payload: bytes


@attrs.frozen
class UserEvent:
    """A user event: an application broadcast that every member re-gossips once.

    Unlike :class:`UserMessage` (sent only by its origin), a receiver that
    sees ``(origin, ltime, payload)`` for the first time delivers it and
    queues it for gossip itself, so it reaches every member in about the
    time a membership update does (``core/userevents.py``). ``ltime`` is the
    origin's Lamport time for user events.
    """

    origin: NodeId
    ltime: int
    payload: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class KeyOp:
    """Keyring operation for the receiving node (stream only, mutual TLS).

    ``op`` is ``list``, ``install``, ``use`` or ``remove``; ``key`` is the
    32-byte key (empty for ``list``). Sent by the node an operator asked
    (``meshctl keys``) to every alive member.
    """

    op: str
    key: bytes = attrs.field(default=b"", repr=False)


@attrs.frozen
class KeyOpResult:
    """Answer to :class:`KeyOp`: whether it applied, why not, and the
    fingerprints of the keys installed afterwards (primary first)."""

    ok: bool
    error: str = ""
    fingerprints: tuple[str, ...] = ()


@attrs.frozen
class AppRequest:
    """One request of application traffic (stream only, mutual TLS).

    A connection whose first frame is an ``AppRequest`` becomes an RPC
    *session* (SPEC.md §3): it stays open and carries any number of requests
    and responses, matched by ``request_id``. ``service`` names the handler
    on the receiving node (1..64 UTF-8 bytes); ``body`` is opaque to the mesh.
    """

    request_id: int
    service: str
    body: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class AppResponse:
    """The answer to the :class:`AppRequest` with the same ``request_id``.

    ``ok`` false means the service refused or failed; ``error`` (at most 256
    characters, empty when ``ok``) says why and ``body`` is then empty.
    """

    request_id: int
    ok: bool
    body: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")
    error: str = ""


Message = (
    Ping
    | PingReq
    | Ack
    | Nack
    | Suspect
    | Alive
    | Dead
    | Leave
    | PushPull
    | UserMessage
    | KeyOp
    | KeyOpResult
    | AppRequest
    | AppResponse
    | UserEvent
)
