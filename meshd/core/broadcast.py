"""Transmit-limited broadcast queue: what to piggyback on the next packet."""

# Strategy
#
# SWIM disseminates membership updates "infection-style" (SWIM §4.1): each
# update is piggybacked on the pings, acks and gossip packets a node sends
# anyway, a limited number of times, and every receiver does the same. This
# module is the queue of updates waiting to be piggybacked. It follows
# memberlist queue.go (TransmitLimitedQueue) and broadcast.go, but is
# rebuilt for Python: memberlist keeps a B-tree ordered by
# (transmits, size, id); here each transmit count has its own insertion-
# ordered dict, so the common operations cost O(1) dict work per entry
# touched instead of tree walks.
#
# Why fewest-transmits-first: an update sent 0 times is known only to us;
# one sent 10 times is already spreading on its own through the nodes that
# received it. Sending the least-sent updates first makes *new* information
# spread fastest, and spreads the packet budget over many updates instead
# of repeating a few. Among updates sent equally often the newest wins, for
# the same reason.
#
# Why invalidation: an update about a member (alive, suspect, dead, left)
# is superseded by any later update about the same member; the receiver
# would ignore the stale one anyway once it has the newer. Keeping both
# wastes packet space and can deliver them out of order. So each broadcast
# may carry a key (the member's node id) and queueing a new broadcast with
# the same key drops the old one at once, sent or not. memberlist does this
# with NamedBroadcast / Invalidates(); user messages are "unique" (key None)
# and never replaced.
#
# Why a transmit limit: after timing.retransmit_limit(retransmit_mult, N)
# = retransmit_mult * ceil(log10(N + 1)) sends, an update has reached
# everyone with high probability (after λ·log N rounds only about
# N^-(2λ-2) members have not heard it); sending more only costs bandwidth. The
# limit is computed from the N passed to each get_broadcasts() call, since
# N changes while an update is queued.
#
# Rule 1: every queued entry lives in exactly one bucket, the one for its
#         transmit count, and (if keyed) is the one entry in the key index
#         for its key. _remove() and _add_to_bucket() are the only places
#         that change that, so the two structures cannot disagree.
# Rule 2: inside a bucket, entries are in ascending id (queue order), so
#         reversed() yields newest first. Entries moved up from a lower
#         tier can break that; the bucket is then marked and re-sorted
#         lazily, the next time a scan needs it.
# Rule 3: one get_broadcasts() call returns an entry at most once: picked
#         entries move up a tier only after the scan, otherwise the scan of
#         the next tier would find them again (memberlist's `reinsert`).
# Rule 4: a scan stops as soon as the space left is smaller than the
#         cheapest entry could possibly cost (overhead + shortest payload
#         queued). That is what keeps a call cheap when the queue is long:
#         it touches the entries it returns plus the ones that did not fit.
#
# Differences from memberlist, on purpose: ties are broken newest-first
# rather than largest-first (the spec for meshd; packing by size is a
# knapsack heuristic, and freshness matters more for membership), and
# there is no Finished() callback: the core asks pending(key) instead,
# e.g. to know when a leave notice has been sent its full count.

from __future__ import annotations

import attrs

from meshd.core import timing

__all__ = ["TransmitLimitedQueue"]


@attrs.define(eq=False)
class _Entry:
    # One queued broadcast. A plain slotted record: get_broadcasts() reads
    # these fields in its inner loop.
    payload: bytes
    key: str | None
    id: int
    # Times this payload has been handed out by get_broadcasts().
    transmits: int = 0


@attrs.define(eq=False)
class TransmitLimitedQueue:
    """Broadcasts waiting to be piggybacked, each sent a limited number of times.

    Args:
        retransmit_mult: ``MembershipConfig.retransmit_mult``; with the
            member count it gives the transmit limit
            (:func:`meshd.core.timing.retransmit_limit`).
    """

    retransmit_mult: int

    # transmit count -> {entry id: entry}, each inner dict ascending by id
    # (Rule 2). Empty buckets are deleted so iteration only sees live tiers.
    _buckets: dict[int, dict[int, _Entry]] = attrs.field(init=False, factory=dict)
    # Tiers whose inner dict is out of id order (Rule 2).
    _unsorted: set[int] = attrs.field(init=False, factory=set)
    # Invalidation key -> the one queued entry with that key (Rule 1).
    _by_key: dict[str, _Entry] = attrs.field(init=False, factory=dict)
    # Payload length -> number of queued entries of that length; its
    # smallest key bounds the cheapest possible pick (Rule 4). A handful of
    # distinct lengths in practice, so min() over it is cheap.
    _sizes: dict[int, int] = attrs.field(init=False, factory=dict)
    # Monotonic id source; higher id = queued later = newer.
    _next_id: int = attrs.field(init=False, default=0)
    _count: int = attrs.field(init=False, default=0)

    def __len__(self) -> int:
        """Number of broadcasts queued."""
        return self._count

    def queue(self, payload: bytes, key: str | None = None) -> None:
        """Queue one already-encoded message for piggybacking.

        Args:
            payload: the encoded message, sent as is.
            key: invalidation key, e.g. the node id an alive, suspect,
                dead or leave message is about. A queued broadcast with the
                same key is dropped, whether or not it was ever sent. None
                means the broadcast is never replaced (user messages).
        """
        if key is not None:
            old = self._by_key.get(key)
            if old is not None:
                self._remove(old)
        self._next_id += 1
        entry = _Entry(payload, key, self._next_id)
        if key is not None:
            self._by_key[key] = entry
        size = len(payload)
        self._sizes[size] = self._sizes.get(size, 0) + 1
        self._count += 1
        # The new id is the largest yet, so appending keeps tier 0 sorted.
        bucket = self._buckets.get(0)
        if bucket is None:
            self._buckets[0] = {entry.id: entry}
        else:
            bucket[entry.id] = entry

    def get_broadcasts(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Pick payloads to piggyback into ``limit`` bytes.

        Each payload costs ``len(payload) + overhead``. Entries are taken
        fewest transmits first and, among equal transmits, newest first; an
        entry that does not fit in the space left is skipped and the scan
        goes on. Every picked entry's transmit count goes up by one, and an
        entry that has now been sent
        ``timing.retransmit_limit(retransmit_mult, num_nodes)`` times is
        removed (it is still returned this time, even when the limit is 0).

        Args:
            overhead: bytes of framing added per payload (e.g. the length
                prefix inside a compound message); 0 or more.
            limit: bytes available in the packet for payloads and overhead.
            num_nodes: members known, this node included (sets the limit).

        Returns:
            The picked payloads, in pick order; each queued entry at most
            once. Empty when nothing fits or nothing is queued.

        Raises:
            ValueError: ``overhead`` is negative.
        """
        # Fast path: an empty queue is the steady state of a quiet mesh, and
        # every outgoing packet asks.
        if not self._count:
            return []
        if overhead < 0:
            raise ValueError(f"overhead must be >= 0, got {overhead!r}")
        # Lower bound on any entry's cost for the whole call: entries only
        # leave during a call, which can only raise the true minimum.
        min_cost = overhead + min(self._sizes)
        remaining = limit
        if remaining < min_cost:
            return []

        buckets = self._buckets
        unsorted = self._unsorted
        out: list[bytes] = []
        picked: list[_Entry] = []
        for tier in sorted(buckets):
            bucket = buckets[tier]
            if tier in unsorted:
                bucket = buckets[tier] = dict(sorted(bucket.items()))
                unsorted.discard(tier)
            first_pick = len(picked)
            for entry in reversed(bucket.values()):
                cost = len(entry.payload) + overhead
                if cost <= remaining:
                    out.append(entry.payload)
                    picked.append(entry)
                    remaining -= cost
                    if remaining < min_cost:
                        break
            # Take this tier's picks out now (not while iterating the dict);
            # they are re-added one tier up after the scan (Rule 3).
            if len(picked) > first_pick:
                for i in range(first_pick, len(picked)):
                    del bucket[picked[i].id]
                if not bucket:
                    del buckets[tier]
            if remaining < min_cost:
                break

        if picked:
            transmit_limit = timing.retransmit_limit(self.retransmit_mult, num_nodes)
            # reversed(): highest source tier first and, within a tier,
            # ascending id, so each destination bucket receives ids in order.
            for entry in reversed(picked):
                entry.transmits += 1
                if entry.transmits >= transmit_limit:
                    self._forget(entry)
                else:
                    self._add_to_bucket(entry)
        return out

    def pending(self, key: str) -> bool:
        """Whether a broadcast with this invalidation key is still queued.

        Args:
            key: the key given to :meth:`queue`.

        Returns:
            True until that broadcast is replaced, reaches its transmit
            limit, is pruned or cleared.
        """
        return key in self._by_key

    def prune(self, max_retain: int) -> int:
        """Drop broadcasts until at most ``max_retain`` remain.

        The most-transmitted go first (they have spread the furthest and
        are the closest to their limit anyway), and among equals the
        oldest. memberlist calls this from a periodic queue-depth check so
        a flood of updates cannot grow memory without bound.

        Args:
            max_retain: entries to keep; 0 or more.

        Returns:
            How many entries were dropped.

        Raises:
            ValueError: ``max_retain`` is negative.
        """
        if max_retain < 0:
            raise ValueError(f"max_retain must be >= 0, got {max_retain!r}")
        dropped = 0
        for tier in sorted(self._buckets, reverse=True):
            if self._count <= max_retain:
                break
            bucket = self._buckets[tier]
            if tier in self._unsorted:
                bucket = self._buckets[tier] = dict(sorted(bucket.items()))
                self._unsorted.discard(tier)
            # Oldest first: the bucket is ascending by id (Rule 2). Copy the
            # victims first since _remove() mutates the bucket.
            excess = self._count - max_retain
            victims = []
            for entry in bucket.values():
                victims.append(entry)
                if len(victims) == excess:
                    break
            for entry in victims:
                self._remove(entry)
            dropped += len(victims)
        return dropped

    def clear(self) -> None:
        """Drop every queued broadcast."""
        self._buckets.clear()
        self._unsorted.clear()
        self._by_key.clear()
        self._sizes.clear()
        self._count = 0

    # -- internals ---------------------------------------------------------

    def _add_to_bucket(self, entry: _Entry) -> None:
        # Put an entry (already counted, indexed and sized) into the bucket
        # for its transmit count, noting when that breaks the id order.
        bucket = self._buckets.get(entry.transmits)
        if bucket is None:
            self._buckets[entry.transmits] = {entry.id: entry}
            return
        if next(reversed(bucket)) > entry.id:
            self._unsorted.add(entry.transmits)
        bucket[entry.id] = entry

    def _remove(self, entry: _Entry) -> None:
        # Take a queued entry out of its bucket and forget it entirely.
        tier = entry.transmits
        bucket = self._buckets[tier]
        del bucket[entry.id]
        if not bucket:
            del self._buckets[tier]
            self._unsorted.discard(tier)
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        # Drop an entry that is in no bucket from the index, sizes and count.
        if entry.key is not None and self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        size = len(entry.payload)
        left = self._sizes[size] - 1
        if left:
            self._sizes[size] = left
        else:
            del self._sizes[size]
        self._count -= 1
