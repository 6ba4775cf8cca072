"""Bodies of the kv RPC service (meshd/core/kvmessages.py): round trips and rejection."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core import kvmessages as kvm
from meshd.core.hlc import Timestamp
from meshd.core.merkle import MerkleTree
from meshd.core.versioned import Record
from meshd.errors import BadPacket

R1 = Record("default", b"key", b"value", Timestamp.of(1_700_000_000_000, 3), "node-1")
R2 = Record("plugin.x", b"\x00\xff", None, Timestamp.of(5), "node-2")
TREE = MerkleTree.build([(b"\x01ak", b"d" * 16), (b"\x01ab", b"e" * 16)], 8)
SUMMARY = TREE.snapshot().summary(4)

REQUESTS = [
    kvm.WriteRequest((R1, R2), fresh=True),
    kvm.WriteRequest((R1,), hint_for="node-3"),
    kvm.WriteRequest(()),
    kvm.ReadRequest("default", b"key"),
    kvm.StatsRequest(),
    kvm.CompareRequest(2**63 + 5, kvm.bitmap_of([0, 9, 255], 8), SUMMARY),
    kvm.CompareRequest(1, None, SUMMARY),
    kvm.EntriesRequest((1, 2, 65535)),
    kvm.FetchRequest((b"\x07defaultkey",)),
    kvm.ScanRequest("default", b"user/", 100),
    kvm.ScanRequest("plugin:hello", b"", 1, b"user/05"),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_kvmessages_requests_round_trip(message: object) -> None:
    assert kvm.decode_request_untrusted(kvm.encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "decode"),
    [
        (kvm.WriteReply(3, 1), kvm.decode_write_reply_untrusted),
        (kvm.ReadReply(R1), kvm.decode_read_reply_untrusted),
        (kvm.ReadReply(None), kvm.decode_read_reply_untrusted),
        (kvm.StatsReply(1, 2, 3, 4, 5, 6), kvm.decode_stats_reply_untrusted),
        (kvm.CompareReply(equal=True), kvm.decode_compare_reply_untrusted),
        (kvm.CompareReply(summary=SUMMARY), kvm.decode_compare_reply_untrusted),
        (kvm.CompareReply(buckets=(3, 4)), kvm.decode_compare_reply_untrusted),
        (
            kvm.EntriesReply({7: {b"\x01ak": b"d" * 16}, 8: {}}),
            kvm.decode_entries_reply_untrusted,
        ),
        (kvm.FetchReply((R1, R2)), kvm.decode_fetch_reply_untrusted),
    ],
    ids=lambda m: type(m).__name__,
)
def test_kvmessages_replies_round_trip(message: object, decode: object) -> None:
    assert decode(kvm.encode(message)) == message  # type: ignore[operator, arg-type]


def test_kvmessages_wire_form_is_positional() -> None:
    # protocol/SPEC.md §10 pins this layout.
    body = kvm.encode(kvm.WriteRequest((R1,), fresh=True))
    assert msgpack.unpackb(body) == [
        1,
        1,
        None,
        [["default", b"key", b"value", R1.timestamp.packed, "node-1"]],
    ]
    assert msgpack.unpackb(kvm.encode(kvm.ReadRequest("ns", b"k"))) == [2, "ns", b"k"]


def test_kvmessages_extra_trailing_fields_are_ignored() -> None:
    body = msgpack.packb([2, "ns", b"k", "from a newer peer"], use_bin_type=True)
    assert kvm.decode_request_untrusted(body) == kvm.ReadRequest("ns", b"k")


def _record(**change: object) -> list[object]:
    fields: dict[str, object] = {
        "ns": "default",
        "key": b"k",
        "value": b"v",
        "ts": 1,
        "writer": "w",
    }
    fields.update(change)
    return list(fields.values())


BAD = [
    ("not msgpack", b"\xc1"),
    ("not an array", msgpack.packb({"op": 1})),
    ("empty", msgpack.packb([])),
    ("unknown op", msgpack.packb([99])),
    ("op is bool", msgpack.packb([True])),
    ("write without records", msgpack.packb([1, 0, None])),
    ("records not a list", msgpack.packb([1, 0, None, "x"])),
    ("short record", msgpack.packb([1, 0, None, [["ns", b"k"]]], use_bin_type=True)),
    ("key is text", msgpack.packb([1, 0, None, [_record(key="k")]], use_bin_type=True)),
    ("empty key", msgpack.packb([1, 0, None, [_record(key=b"")]], use_bin_type=True)),
    (
        "key too long",
        msgpack.packb([1, 0, None, [_record(key=b"k" * 1025)]], use_bin_type=True),
    ),
    (
        "value too long",
        msgpack.packb([1, 0, None, [_record(value=b"v" * (1 << 20 | 1))]], use_bin_type=True),
    ),
    ("negative ts", msgpack.packb([1, 0, None, [_record(ts=-1)]], use_bin_type=True)),
    ("ts too big", msgpack.packb([1, 0, None, [_record(ts=2**63)]], use_bin_type=True)),
    ("empty namespace", msgpack.packb([1, 0, None, [_record(ns="")]], use_bin_type=True)),
    ("empty writer", msgpack.packb([1, 0, None, [_record(writer="")]], use_bin_type=True)),
    ("hint_for is bytes", msgpack.packb([1, 0, b"x", []], use_bin_type=True)),
    ("read key missing", msgpack.packb([2, "ns"])),
    ("compare digest size", msgpack.packb([4, 1, None, 0, 0, [0], [[0, b"x"]]], use_bin_type=True)),
    ("compare under_depth > depth", msgpack.packb([4, 1, None, 1, 2, [0], []])),
    (
        "compare node outside",
        msgpack.packb([4, 1, None, 2, 1, [0], [[3, b"d" * 16]]], use_bin_type=True),
    ),
    ("compare under unsorted", msgpack.packb([4, 1, None, 2, 1, [1, 0], []])),
    ("entries not ints", msgpack.packb([5, ["a"]])),
    ("fetch key text", msgpack.packb([6, ["a"]])),
]


@pytest.mark.parametrize("body", [b for _, b in BAD], ids=[n for n, _ in BAD])
def test_kvmessages_bad_requests_raise_only_badpacket(body: bytes) -> None:
    with pytest.raises(BadPacket):
        kvm.decode_request_untrusted(body)


@given(st.binary(max_size=200))
def test_kvmessages_fuzz_raises_only_badpacket(data: bytes) -> None:
    for decode in (
        kvm.decode_request_untrusted,
        kvm.decode_write_reply_untrusted,
        kvm.decode_read_reply_untrusted,
        kvm.decode_stats_reply_untrusted,
        kvm.decode_compare_reply_untrusted,
        kvm.decode_entries_reply_untrusted,
        kvm.decode_fetch_reply_untrusted,
    ):
        try:
            decode(data)
        except BadPacket:
            pass


@given(st.sets(st.integers(0, 2**16 - 1), max_size=300))
def test_kvmessages_bitmap_round_trip(partitions: set[int]) -> None:
    bitmap = kvm.bitmap_of(partitions, 16)
    assert len(bitmap) == 8192
    assert kvm.partitions_of_bitmap(bitmap) == sorted(partitions)


def test_kvmessages_bitmap_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        kvm.bitmap_of([256], 8)
