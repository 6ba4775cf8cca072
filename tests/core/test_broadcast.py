"""Tests for meshd.core.broadcast.TransmitLimitedQueue (after memberlist queue_test.go)."""

from __future__ import annotations

from collections import Counter

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import timing
from meshd.core.broadcast import TransmitLimitedQueue

# Big enough that no test entry reaches its limit unless the test wants it.
MANY = 10**6


def get_all(
    q: TransmitLimitedQueue, limit: int = 10_000, overhead: int = 0, num_nodes: int = MANY
) -> list[bytes]:
    return q.get_broadcasts(overhead, limit, num_nodes)


# -- ordering -----------------------------------------------------------------

# Each case: the ops to run, then the expected result of the final
# get_broadcasts(overhead=0, limit, MANY). "q:<payload>" queues with no key,
# "g:<limit>" is an earlier get whose result is not checked.
ORDERING_CASES = [
    ("empty", [], 100, []),
    ("one", ["q:a"], 100, [b"a"]),
    ("newest first among never-sent", ["q:a", "q:b", "q:c"], 100, [b"c", b"b", b"a"]),
    # After a get with room for one, "c" has 1 transmit: it goes last.
    ("fewest transmits first", ["q:a", "q:b", "q:c", "g:1"], 100, [b"b", b"a", b"c"]),
    # Two gets with room for one: c then b have 1 transmit each; among them
    # newest (c, queued last) first.
    (
        "newest first among equal transmits",
        ["q:a", "q:b", "q:c", "g:1", "g:1"],
        100,
        [b"a", b"c", b"b"],
    ),
    # A new message jumps ahead of everything already sent.
    ("new beats sent", ["q:a", "g:1", "q:b"], 100, [b"b", b"a"]),
    # Limit 2 with 1-byte payloads: only the first two in order fit.
    ("limit cuts the tail", ["q:a", "q:b", "q:c"], 2, [b"c", b"b"]),
    # a, b, c each sent once, but in the order c, b, a: the tier-1 bucket
    # must still be ordered by queue time (c newest), not by move time.
    (
        "queue order kept across tiers",
        ["q:a", "q:b", "q:c", "g:1", "g:1", "g:1"],
        100,
        [b"c", b"b", b"a"],
    ),
]


@pytest.mark.parametrize(
    ("ops", "limit", "expected"),
    [c[1:] for c in ORDERING_CASES],
    ids=[c[0] for c in ORDERING_CASES],
)
def test_broadcast_ordering(ops: list[str], limit: int, expected: list[bytes]) -> None:
    q = TransmitLimitedQueue(MANY)
    for op in ops:
        kind, arg = op.split(":")
        if kind == "q":
            q.queue(arg.encode())
        else:
            q.get_broadcasts(0, int(arg), MANY)
    assert q.get_broadcasts(0, limit, MANY) == expected


def test_broadcast_tier_resorted_after_out_of_order_moves() -> None:
    # Entries move to tier 1 in the order 3, 2, 1 (newest sent first), one per
    # call; tier 1 must then still yield newest first.
    q = TransmitLimitedQueue(MANY)
    for p in (b"1", b"2", b"3", b"4"):
        q.queue(p)
    assert get_all(q, limit=1) == [b"4"]
    assert get_all(q, limit=1) == [b"3"]
    assert get_all(q, limit=1) == [b"2"]
    assert get_all(q, limit=1) == [b"1"]
    assert get_all(q) == [b"4", b"3", b"2", b"1"]


# -- invalidation -------------------------------------------------------------


def test_broadcast_key_replaces_older() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"alive-1", key="node-a")
    q.queue(b"user", key=None)
    q.queue(b"suspect-1", key="node-a")
    assert len(q) == 2
    assert get_all(q) == [b"suspect-1", b"user"]


def test_broadcast_replaced_is_never_returned_again() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"alive-1", key="node-a")
    assert get_all(q) == [b"alive-1"]  # sent once, now in tier 1
    q.queue(b"dead-1", key="node-a")
    for _ in range(20):
        out = get_all(q)
        assert out == [b"dead-1"]
    assert b"alive-1" not in get_all(q)


def test_broadcast_replacement_resets_transmits() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"old", key="k")
    q.queue(b"other")
    get_all(q)
    get_all(q)  # both at 2 transmits
    q.queue(b"new", key="k")
    # The replacement is fresh (0 transmits) so it goes first even though
    # "other" is equally keyed-away from it.
    assert get_all(q, limit=3) == [b"new"]


def test_broadcast_none_key_never_invalidated() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"x")
    q.queue(b"x")
    q.queue(b"y", key=None)
    assert len(q) == 3
    # Two separately queued entries with equal bytes are two entries.
    assert Counter(get_all(q)) == Counter({b"x": 2, b"y": 1})


def test_broadcast_keys_are_independent() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"a1", key="a")
    q.queue(b"b1", key="b")
    q.queue(b"a2", key="a")
    assert get_all(q) == [b"a2", b"b1"]


# -- limit and skip-and-continue ----------------------------------------------

# (payload sizes in queue order, overhead, limit, expected picked sizes).
FILL_CASES = [
    # Newest (30) does not fit in 25; skip it and keep looking.
    ([10, 30], 0, 25, [10]),
    ([10, 5, 30], 0, 25, [5, 10]),
    # Overhead counts per payload: 10+2 and 5+2 fit in 20, 30+2 does not.
    ([10, 5, 30], 2, 20, [5, 10]),
    ([10, 5, 30], 2, 18, [5]),  # 7 used, 11 left < 12
    # Exactly full.
    ([10, 10], 1, 22, [10, 10]),
    ([10, 10], 1, 21, [10]),
    # Nothing fits.
    ([10, 20], 0, 9, []),
    ([10], 0, 0, []),
    ([10], 0, -5, []),
    # Zero-length payloads cost only the overhead.
    ([0, 0], 3, 6, [0, 0]),
]


@pytest.mark.parametrize(("sizes", "overhead", "limit", "expected"), FILL_CASES)
def test_broadcast_fill_respects_limit(
    sizes: list[int], overhead: int, limit: int, expected: list[int]
) -> None:
    q = TransmitLimitedQueue(MANY)
    for i, size in enumerate(sizes):
        q.queue(bytes([65 + i]) * size)
    out = q.get_broadcasts(overhead, limit, MANY)
    assert [len(p) for p in out] == expected
    assert sum(len(p) + overhead for p in out) <= max(limit, 0)


def test_broadcast_skip_continues_into_later_tiers() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"s" * 5)
    get_all(q)  # small one now at 1 transmit
    q.queue(b"B" * 50)  # big, fresh
    # Big (tier 0) does not fit; the small one from tier 1 still does.
    assert get_all(q, limit=20) == [b"s" * 5]


def test_broadcast_negative_overhead_rejected() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(b"x")
    with pytest.raises(ValueError, match="overhead"):
        q.get_broadcasts(-1, 100, 10)


# -- transmit limit -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mult", "num_nodes", "expected_limit"),
    [
        (4, 1, 4),
        (4, 10, 8),
        (4, 100, 12),
        (4, 1000, 16),
        (4, 10000, 20),
        (2, 9, 2),
        (3, 99, 6),
    ],
)
def test_broadcast_removed_at_exactly_the_limit(
    mult: int, num_nodes: int, expected_limit: int
) -> None:
    assert timing.retransmit_limit(mult, num_nodes) == expected_limit
    q = TransmitLimitedQueue(mult)
    q.queue(b"update", key="n")
    for i in range(expected_limit):
        assert q.pending("n"), f"send {i}"
        assert q.get_broadcasts(0, 100, num_nodes) == [b"update"], f"send {i}"
    assert len(q) == 0
    assert not q.pending("n")
    assert q.get_broadcasts(0, 100, num_nodes) == []


def test_broadcast_zero_nodes_sends_once() -> None:
    # retransmit_limit is 0 for num_nodes 0: the entry still goes out on the
    # call that picks it, then is gone (memberlist: transmits+1 >= limit).
    q = TransmitLimitedQueue(4)
    q.queue(b"x")
    assert q.get_broadcasts(0, 100, 0) == [b"x"]
    assert len(q) == 0


def test_broadcast_limit_follows_current_num_nodes() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(b"x")
    for _ in range(5):
        q.get_broadcasts(0, 100, 1000)  # limit 16: 5 sends
    # The mesh shrinks to 1 member: limit 4 < 6, so the next send is the last.
    assert q.get_broadcasts(0, 100, 1) == [b"x"]
    assert len(q) == 0


def test_broadcast_never_returns_an_entry_twice_per_call() -> None:
    q = TransmitLimitedQueue(MANY)
    q.queue(b"a")
    q.queue(b"b")
    # Plenty of room: each entry once, even though after being picked it
    # would belong to the next tier.
    assert get_all(q) == [b"b", b"a"]


# -- pending, prune, clear ----------------------------------------------------


def test_broadcast_pending() -> None:
    q = TransmitLimitedQueue(1)
    assert not q.pending("a")
    q.queue(b"1", key="a")
    assert q.pending("a")
    q.queue(b"2", key="a")
    assert q.pending("a")
    assert q.get_broadcasts(0, 100, 5) == [b"2"]  # limit 1: sent and gone
    assert not q.pending("a")


# (transmit counts of entries 0..n-1 in queue order, max_retain, survivors)
PRUNE_CASES = [
    ([0, 0, 0], 5, [0, 1, 2]),
    ([0, 0, 0], 3, [0, 1, 2]),
    ([0, 0, 0], 1, [2]),  # oldest go first
    ([0, 0, 0], 0, []),
    ([2, 0, 1], 1, [1]),  # most transmitted go first
    ([2, 0, 1], 2, [1, 2]),
    ([1, 1, 0, 0], 3, [1, 2, 3]),  # oldest of the most transmitted
    ([1, 1, 0, 0], 2, [2, 3]),
]


@pytest.mark.parametrize(("transmits", "max_retain", "survivors"), PRUNE_CASES)
def test_broadcast_prune(transmits: list[int], max_retain: int, survivors: list[int]) -> None:
    q = TransmitLimitedQueue(MANY)
    keys = [f"k{i}" for i in range(len(transmits))]
    # Stage the transmit counts through the public API: entry i is smaller
    # than every entry queued before it, so a get with limit == its size
    # can only pick entry i.
    for i, t in enumerate(transmits):
        size = 50 - i
        q.queue(str(i).encode().ljust(size, b"."), key=keys[i])
        for _ in range(t):
            assert len(q.get_broadcasts(0, size, MANY)) == 1
    dropped = q.prune(max_retain)
    assert dropped == len(transmits) - len(survivors)
    assert len(q) == len(survivors)
    assert [i for i in range(len(transmits)) if q.pending(keys[i])] == survivors


def test_broadcast_prune_negative_rejected() -> None:
    with pytest.raises(ValueError, match="max_retain"):
        TransmitLimitedQueue(4).prune(-1)


def test_broadcast_clear() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(b"a", key="a")
    q.queue(b"b")
    get_all(q, num_nodes=10)
    q.clear()
    assert len(q) == 0
    assert not q.pending("a")
    assert get_all(q) == []
    q.queue(b"c", key="a")
    assert get_all(q) == [b"c"]


# -- property test against a naive reference model ------------------------------


@attrs.define
class _RefEntry:
    payload: bytes
    key: str | None
    id: int
    transmits: int = 0


@attrs.define
class _RefQueue:
    """The queue spec implemented the obvious way: sort everything every call."""

    mult: int
    entries: list[_RefEntry] = attrs.Factory(list)
    next_id: int = 0

    def queue(self, payload: bytes, key: str | None) -> None:
        if key is not None:
            self.entries = [e for e in self.entries if e.key != key]
        self.next_id += 1
        self.entries.append(_RefEntry(payload, key, self.next_id))

    def get(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        remaining = limit
        picked = []
        for e in sorted(self.entries, key=lambda e: (e.transmits, -e.id)):
            cost = len(e.payload) + overhead
            if cost <= remaining:
                picked.append(e)
                remaining -= cost
        tl = timing.retransmit_limit(self.mult, num_nodes)
        for e in picked:
            e.transmits += 1
        self.entries = [e for e in self.entries if not (e in picked and e.transmits >= tl)]
        return [e.payload for e in picked]

    def prune(self, max_retain: int) -> int:
        if len(self.entries) <= max_retain:
            return 0
        keep = sorted(self.entries, key=lambda e: (e.transmits, -e.id))[:max_retain]
        dropped = len(self.entries) - len(keep)
        self.entries = [e for e in self.entries if e in keep]
        return dropped


_KEYS = st.sampled_from([None, None, "a", "b", "c", "d"])
# Small payloads and tight limits, so most gets must choose (that is where
# ordering, skipping and tier bookkeeping can go wrong); payloads carry the
# op index, so the shortest is about 3 bytes.
_OPS = st.one_of(
    st.tuples(st.just("queue"), st.integers(0, 12), _KEYS),
    st.tuples(st.just("get"), st.integers(0, 3), st.integers(-2, 30), st.integers(0, 200)),
    st.tuples(st.just("prune"), st.integers(0, 8)),
)


@settings(max_examples=500, deadline=None)
@given(mult=st.integers(1, 4), ops=st.lists(_OPS, min_size=20, max_size=120))
def test_broadcast_matches_reference_model(mult: int, ops: list[tuple[object, ...]]) -> None:
    q = TransmitLimitedQueue(mult)
    ref = _RefQueue(mult)
    for n, op in enumerate(ops):
        if op[0] == "queue":
            _, size, key = op
            assert isinstance(size, int)
            assert key is None or isinstance(key, str)
            # Unique, recognisable content of (about) the requested length.
            payload = (f"{n}:" + "x" * size).encode()[: max(size, len(f"{n}:"))]
            q.queue(payload, key)
            ref.queue(payload, key)
        elif op[0] == "get":
            _, overhead, limit, num_nodes = op
            assert isinstance(overhead, int)
            assert isinstance(limit, int)
            assert isinstance(num_nodes, int)
            got = q.get_broadcasts(overhead, limit, num_nodes)
            want = ref.get(overhead, limit, num_nodes)
            assert Counter(got) == Counter(want), f"op {n}: {op}"
            assert got == want, f"op {n}: pick order"
            assert sum(len(p) + overhead for p in got) <= max(limit, 0)
            # Payloads are unique per queue op: no entry came back twice.
            assert len(set(got)) == len(got)
        else:
            _, max_retain = op
            assert isinstance(max_retain, int)
            assert q.prune(max_retain) == ref.prune(max_retain)
        assert len(q) == len(ref.entries)
        for key in ("a", "b", "c", "d"):
            assert q.pending(key) == any(e.key == key for e in ref.entries)
