"""Moving records between replicas: Merkle anti-entropy and partition handoff, throttled."""

# Theory of operation
# -------------------
#
# Two things copy whole ranges between nodes, and both go through here:
#
# * Anti-entropy (Dynamo §4.7, Riak AAE): two replicas compare the Merkle
#   trees of the partitions both hold (core/merkle.py Rule 3) in a few
#   ``compare`` steps, then, for each differing partition, exchange the
#   (placement key -> digest) entries, push the records the peer lacks or
#   holds differently, and pull the peer's. Each side keeps the LWW winner
#   (store Rule 2), so pushing and pulling both ways is safe and converges.
#   Tombstones are records like any other, so deletes travel too and an
#   old value can never come back through here.
# * Handoff (rebalancing): a node pushes a partition to a new owner; first
#   it asks for the owner's entries of that partition, so only what the
#   owner lacks is sent (a joiner gets everything, an owner that already
#   has the data gets nothing).
#
# Rule 1: foreground requests come first. Every record moved costs tokens
#         of a RateLimit (bytes per second, its size plus a fixed overhead);
#         a transfer that runs out waits, and every batch yields to trio.
#         Batches are bounded in bytes and records, so one message never
#         holds the store's worker thread or a session for long.
# Rule 2: the peer is an authenticated member, but its bytes still go
#         through the *_untrusted decoders, and a record it returns for a
#         key that was not asked for is ignored.
# Rule 3: a comparison's responder keeps its snapshot between steps under
#         (caller, session) for a bounded time; a step for an unknown
#         session is refused and the initiator starts over next round.

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import attrs
import trio

from meshd.core import kvmessages as kvm
from meshd.core.merkle import MerkleSnapshot, compare_entries
from meshd.core.versioned import Record
from meshd.errors import BadPacket
from meshd.runtime.rpc import RpcError
from meshd.runtime.store import Store

__all__ = [
    "Ask",
    "CompareResponder",
    "RateLimit",
    "SyncResult",
    "anti_entropy",
    "push_partition",
    "record_cost",
]

log = logging.getLogger("meshd.kv")
_T = TypeVar("_T")

#: Send ``body`` to ``peer``'s kv service and return the reply body; raises
#: RpcError or RpcUnavailable like ``Daemon.call``.
Ask = Callable[[str, bytes], Awaitable[bytes]]

#: Bytes counted per record on top of its key and value (version, framing).
RECORD_OVERHEAD = 64
#: Most bytes of records in one write or fetch message.
BATCH_BYTES = 1 << 20
#: Most records in one write or fetch message.
BATCH_RECORDS = 1000
#: Partitions whose entries one message asks for.
ENTRIES_PER_MESSAGE = 32
#: Levels descended per compare step (core/merkle.py Rule 3).
STRIDE = 4
#: Most differing nodes carried to the next step; the rest wait for the
#: next round, so a replica that missed a lot is repaired over a few rounds
#: with bounded messages instead of one huge one.
MAX_DIFFERING = 1024


def record_cost(record: Record) -> int:
    """What moving ``record`` costs against a RateLimit, in bytes."""
    return RECORD_OVERHEAD + len(record.key) + len(record.value or b"")


class RateLimit:
    """A token bucket in bytes per second; bursts up to one second's worth (Rule 1).

    Args:
        rate: bytes per second.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self._tokens = self.rate
        self._at: float | None = None
        #: Seconds spent waiting for tokens, for statistics.
        self.waited = 0.0

    async def take(self, amount: int) -> None:
        """Spend ``amount`` bytes' worth, sleeping while the bucket is in debt."""
        now = trio.current_time()
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        if self._tokens < 0:
            pause = -self._tokens / self.rate
            self.waited += pause
            await trio.sleep(pause)
        else:
            await trio.lowlevel.checkpoint()


def _batches(records: Sequence[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    size = 0
    for record in records:
        cost = record_cost(record)
        if batch and (size + cost > BATCH_BYTES or len(batch) >= BATCH_RECORDS):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += cost
    if batch:
        yield batch


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


async def _push(ask: Ask, peer: str, records: Sequence[Record], rate: RateLimit) -> int:
    sent = 0
    for batch in _batches(records):
        await rate.take(sum(record_cost(r) for r in batch))
        kvm.decode_write_reply_untrusted(
            await ask(peer, kvm.encode(kvm.WriteRequest(tuple(batch))))
        )
        sent += len(batch)
    return sent


async def _entries(ask: Ask, peer: str, partitions: Sequence[int]) -> dict[int, dict[bytes, bytes]]:
    reply = kvm.decode_entries_reply_untrusted(
        await ask(peer, kvm.encode(kvm.EntriesRequest(tuple(partitions))))
    )
    return {p: dict(reply.entries.get(p, {})) for p in partitions}


@attrs.frozen
class SyncResult:
    """What one anti-entropy exchange found and moved.

    Attributes:
        buckets: partitions whose contents differed.
        pushed: records sent to the peer.
        pulled: records received and stored here.
        messages: compare steps exchanged.
    """

    buckets: int
    pushed: int
    pulled: int
    messages: int


async def push_partition(store: Store, ask: Ask, peer: str, partition: int, rate: RateLimit) -> int:
    """Send ``peer`` the records of ``partition`` it lacks or holds differently (handoff).

    Returns:
        Records sent.

    Raises:
        RpcError, RpcUnavailable: the peer refused or did not answer.
        BadPacket: the peer's answer did not decode.
        StoreError: the local store failed.
    """
    theirs = (await _entries(ask, peer, [partition]))[partition]
    mine = await store.partition_records(partition)
    send = [r for r in mine if theirs.get(r.placement_key) != r.digest()]
    return await _push(ask, peer, send, rate)


async def compare(
    store: Store,
    ask: Ask,
    peer: str,
    partitions: Sequence[int],
    session: int,
) -> tuple[tuple[int, ...], int]:
    """Find the partitions whose contents differ between this node and ``peer``.

    Returns:
        The differing partitions (at most :data:`MAX_DIFFERING` of them per
        round), and the number of compare steps it took.
    """
    snapshot = await store.merkle_snapshot(partitions)
    bitmap = kvm.bitmap_of(partitions, store.partition_bits)
    request = kvm.CompareRequest(session, bitmap, snapshot.summary(0))
    steps = 0
    while True:
        steps += 1
        reply = kvm.decode_compare_reply_untrusted(await ask(peer, kvm.encode(request)))
        if reply.equal:
            return (), steps
        if reply.buckets is not None:
            return reply.buckets[:MAX_DIFFERING], steps
        summary = reply.summary
        if summary is None or summary.depth > snapshot.depth:
            raise BadPacket("kv: compare reply with an invalid summary")
        differing = snapshot.differing(summary)[:MAX_DIFFERING]
        if not differing:
            return (), steps
        if summary.depth == snapshot.depth:
            return differing, steps
        depth = min(summary.depth + STRIDE, snapshot.depth)
        request = kvm.CompareRequest(
            session, None, snapshot.summary(depth, differing, summary.depth)
        )


async def reconcile(
    store: Store, ask: Ask, peer: str, buckets: Iterable[int], rate: RateLimit
) -> tuple[int, int]:
    """Exchange the differing records of ``buckets`` with ``peer``, both ways.

    Returns:
        (records pushed, records pulled).
    """
    pushed = pulled = 0
    for chunk in _chunks(sorted(set(buckets)), ENTRIES_PER_MESSAGE):
        theirs = await _entries(ask, peer, chunk)
        push_keys: list[bytes] = []
        pull_keys: list[bytes] = []
        for bucket in chunk:
            ours = await store.merkle_entries(bucket)
            for key in compare_entries(ours, theirs[bucket]):
                if key in ours:
                    push_keys.append(key)
                if key in theirs[bucket]:
                    pull_keys.append(key)
        for keys in _chunks(push_keys, BATCH_RECORDS):
            pushed += await _push(ask, peer, await store.records_for(keys), rate)
        for keys in _chunks(pull_keys, BATCH_RECORDS):
            wanted = set(keys)
            reply = kvm.decode_fetch_reply_untrusted(
                await ask(peer, kvm.encode(kvm.FetchRequest(tuple(keys))))
            )
            records = [r for r in reply.records if r.placement_key in wanted]  # Rule 2
            if records:
                await rate.take(sum(record_cost(r) for r in records))
                await store.apply(records)
                pulled += len(records)
    return pushed, pulled


async def anti_entropy(
    store: Store,
    ask: Ask,
    peer: str,
    partitions: Sequence[int],
    rate: RateLimit,
    session: int,
) -> SyncResult:
    """One anti-entropy exchange with ``peer`` over the ``partitions`` both replicate.

    Raises:
        RpcError, RpcUnavailable: the peer refused or did not answer.
        BadPacket: the peer's answer did not decode.
        StoreError: the local store failed.
    """
    if not partitions:
        return SyncResult(0, 0, 0, 0)
    buckets, steps = await compare(store, ask, peer, partitions, session)
    allowed = set(partitions)
    buckets = tuple(b for b in buckets if b in allowed)
    if not buckets:
        return SyncResult(0, 0, 0, steps)
    pushed, pulled = await reconcile(store, ask, peer, buckets, rate)
    return SyncResult(len(buckets), pushed, pulled, steps)


class CompareResponder:
    """The responder's side of :func:`compare`: snapshots kept between steps (Rule 3).

    Args:
        store: the local store.
        ttl: seconds a session's snapshot is kept after its last step.
        max_sessions: sessions kept at once; the oldest goes first.
    """

    def __init__(self, store: Store, *, ttl: float = 60.0, max_sessions: int = 64) -> None:
        self.store = store
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: dict[tuple[str, int], tuple[MerkleSnapshot, float]] = {}

    async def answer(self, peer: str, request: kvm.CompareRequest) -> kvm.CompareReply:
        """One compare step from ``peer``.

        Raises:
            RpcError: an unknown or expired session, or a malformed summary.
        """
        now = trio.current_time()
        for key, (_, expires) in list(self._sessions.items()):
            if expires < now:
                del self._sessions[key]
        key = (peer, request.session)
        if request.partitions is not None:
            limit = 1 << self.store.partition_bits
            partitions = [p for p in kvm.partitions_of_bitmap(request.partitions) if p < limit]
            snapshot = await self.store.merkle_snapshot(partitions)
            while len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
                del self._sessions[oldest]
        else:
            found = self._sessions.get(key)
            if found is None:
                raise RpcError("unknown or expired anti-entropy session; start again")
            snapshot = found[0]
        summary = request.summary
        if summary.depth > snapshot.depth:
            raise RpcError(f"summary depth {summary.depth} is below this node's tree")
        differing = snapshot.differing(summary)[:MAX_DIFFERING]
        if not differing:
            self._sessions.pop(key, None)
            return kvm.CompareReply(equal=True)
        if summary.depth == snapshot.depth:
            self._sessions.pop(key, None)
            return kvm.CompareReply(buckets=differing)
        self._sessions[key] = (snapshot, now + self.ttl)
        depth = min(summary.depth + STRIDE, snapshot.depth)
        return kvm.CompareReply(summary=snapshot.summary(depth, differing, summary.depth))
