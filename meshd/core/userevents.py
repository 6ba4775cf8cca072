"""User events: Lamport-stamped broadcasts that every member delivers once and re-gossips."""

# Strategy
#
# A plain ``user`` message (type 10) is piggybacked by its sender only, a
# limited number of times (the broadcast queue's transmit limit), to random
# members: in a mesh of N it misses some members with a probability that
# does not shrink with N, and a member that was probed by nobody in those
# rounds never hears it. Membership updates do not have that problem
# because every receiver queues the update again (SWIM §4.1,
# infection-style). User events (type 15) get the same treatment, as Serf's
# user events do on top of memberlist:
#
#   origin:   ltime = clock.tick(); remember (origin, ltime, payload);
#             queue it; deliver it locally.
#   receiver: clock.witness(ltime); if (origin, ltime, payload) is new:
#             remember it, deliver it, queue it again (unkeyed: events never
#             invalidate each other). Otherwise drop it (a duplicate).
#
# So an event spreads exactly like an alive message and reaches every member
# in the membership dissemination time, at the cost of each member sending
# it retransmit-limit times (N * limit packets' worth of room in total).
#
# Rule 1: an event is identified by (origin, ltime, digest of the payload).
#         The Lamport time alone is not enough: a restarted origin starts
#         its clock again, and two origins can stamp the same time. Keeping
#         a 64-bit BLAKE2b digest instead of the payload bounds the memory of
#         the seen-set by its capacity, not by payload sizes.
# Rule 2: the seen-set forgets an event after SEEN_TTL seconds, or earlier
#         when it holds SEEN_CAPACITY events (oldest first). A copy that
#         arrives after its entry was forgotten is delivered again; copies
#         stop once every member has sent its retransmit-limit copies, which
#         on a LAN takes seconds, so SEEN_TTL leaves two orders of magnitude
#         of margin. Consumers that must never see a repeat de-duplicate on
#         (origin, ltime) themselves.
# Rule 3: the Lamport clock orders events causally (an event sent after
#         receiving another has a larger ltime) but is not persisted: after a
#         restart a node's clock starts at 0 and catches up with the first
#         event it witnesses. Events of one origin are never reordered by a
#         receiver; they are delivered in arrival order (as Serf does).
#
# Why not Serf's "too old" rule (drop ltime < clock - buffer size): it needs
# every member's clock in step, which Serf gets by exchanging clocks in
# push-pull; without that a member that joined recently would have its first
# events dropped by everybody.

from __future__ import annotations

from hashlib import blake2b

import attrs

__all__ = ["SEEN_CAPACITY", "SEEN_TTL", "LamportClock", "SeenEvents"]

#: Seconds an event is remembered as seen (Rule 2).
SEEN_TTL = 300.0
#: Events remembered at most; beyond this the oldest are forgotten (Rule 2).
SEEN_CAPACITY = 8192


@attrs.define(eq=False)
class LamportClock:
    """A Lamport clock (Lamport 1978): ``tick`` for a send, ``witness`` for a receive.

    Attributes:
        time: the last time stamped or witnessed; 0 before any.
    """

    time: int = 0

    def tick(self) -> int:
        """The time for a new local event: one more than anything seen so far."""
        self.time += 1
        return self.time

    def witness(self, ltime: int) -> None:
        """Account for a remote event stamped ``ltime``: later ticks exceed it."""
        if ltime > self.time:
            self.time = ltime


_Key = tuple[str, int, bytes]


@attrs.define(eq=False)
class SeenEvents:
    """The user events seen recently, for de-duplication (Rules 1 and 2).

    Args:
        ttl: seconds an event is remembered.
        capacity: events remembered at most.
    """

    ttl: float = SEEN_TTL
    capacity: int = SEEN_CAPACITY
    # key -> when first seen. Insertion order is time order, since ``now``
    # never goes backwards: expiry and eviction pop from the front.
    _seen: dict[_Key, float] = attrs.field(init=False, factory=dict)
    #: Events forgotten early because the set was full.
    evicted: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if not self.ttl > 0 or self.capacity < 1:
            raise ValueError("ttl and capacity must be positive")

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, origin: str, ltime: int, payload: bytes, now: float) -> bool:
        """Record the event; True the first time it is seen, False for a duplicate.

        Args:
            origin: the node that sent it.
            ltime: its Lamport time.
            payload: its bytes.
            now: the current time (seconds, the core's clock).
        """
        seen = self._seen
        # Expire from the front (oldest first).
        horizon = now - self.ttl
        while seen:
            first = next(iter(seen))
            if seen[first] >= horizon:
                break
            del seen[first]
        key = (origin, ltime, blake2b(payload, digest_size=8).digest())
        if key in seen:
            return False
        if len(seen) >= self.capacity:
            del seen[next(iter(seen))]
            self.evicted += 1
        seen[key] = now
        return True
