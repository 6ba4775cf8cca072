"""Plain values shared by every core module: node ids, addresses, member records.

Rule: everything here is an immutable value. State machines live in their own
modules (``membership.py``, ``suspicion.py`` …) and hold these values.
"""

from __future__ import annotations

import enum
from collections.abc import MutableSequence, Sequence
from typing import NewType, Protocol, TypeVar

import attrs

__all__ = [
    "PROTOCOL_MAX",
    "PROTOCOL_MIN",
    "Address",
    "Member",
    "MemberState",
    "NodeId",
    "ProtocolRange",
    "Rng",
]

#: A node's name in the mesh. Unique per mesh; 1..128 bytes of UTF-8.
NodeId = NewType("NodeId", str)

#: Where a node's gossip (UDP) and stream (TCP) listeners live: ``(host, port)``.
#: The core treats it as opaque; only the runtime resolves it.
Address = tuple[str, int]

#: Wire protocol versions this build speaks. See protocol/SPEC.md "Versions".
PROTOCOL_MIN = 1
PROTOCOL_MAX = 1

_T = TypeVar("_T")


class Rng(Protocol):
    """The slice of :class:`random.Random` the core uses.

    The core never imports :mod:`random`; the runtime passes a
    ``random.Random()`` and the simulator a seeded one, so a simulation with
    the same seed replays exactly.
    """

    def random(self) -> float: ...

    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...

    def shuffle(self, x: MutableSequence[_T]) -> None: ...  # type: ignore[misc]

    def sample(self, population: Sequence[_T], k: int) -> list[_T]: ...  # type: ignore[misc]


class MemberState(enum.IntEnum):
    """Where a member is in the SWIM life cycle. The numbers are on the wire."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@attrs.frozen
class ProtocolRange:
    """Protocol versions a node can speak (``minimum..maximum``) and the one it uses."""

    minimum: int = PROTOCOL_MIN
    maximum: int = PROTOCOL_MAX
    current: int = PROTOCOL_MAX


@attrs.frozen
class Member:
    """One row of a node's membership table, as seen by that node.

    Attributes:
        node_id: the member's name.
        address: its gossip/stream address.
        incarnation: the member's own counter; only the member raises it,
            to refute suspicion or publish new metadata (SWIM §4.2).
        state: alive, suspect, dead or left.
        meta: opaque node metadata (tags), at most ``meta_max_size`` bytes.
        protocol: versions the member advertised in its alive message.
        state_changed_at: local ``now`` when ``state`` last changed.
    """

    node_id: NodeId
    address: Address
    incarnation: int
    state: MemberState
    meta: bytes = attrs.field(default=b"", repr=lambda b: b.hex())
    protocol: ProtocolRange = ProtocolRange()
    state_changed_at: float = 0.0
