"""Tests for meshd.core.crypto: the AES-256-GCM envelope (kind 1) and replay protection."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import codec
from meshd.core.crypto import (
    COUNTERS_SIZE,
    NONCE_SIZE,
    OVERHEAD,
    TAG_SIZE,
    Opened,
    ReplayGuard,
    ReplayWindow,
    Verdict,
    open_untrusted,
    seal,
)
from meshd.core.keyring import KEY_ID_SIZE, Keyring, fingerprint, key_id
from meshd.core.messages import Ping
from meshd.core.types import NodeId
from meshd.errors import BadPacket, LocalProtocolError

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = b"\xff" * 32
CLUSTER = "prod"
NONCE = bytes(range(200, 212))
COMPOUND = codec.encode_compound(
    [codec.encode_message(Ping(seq=7, target=NodeId("b"), source=NodeId("a")))]
)

ACCEPT, REPLAY, STALE = Verdict.ACCEPT, Verdict.REPLAY, Verdict.STALE


def sealed(
    ring: Keyring | None = None,
    compound: bytes = COMPOUND,
    *,
    cluster: str = CLUSTER,
    epoch: int = 5,
    counter: int = 9,
    nonce: bytes = NONCE,
) -> bytes:
    return seal(ring or Keyring([K1]), cluster, compound, epoch=epoch, counter=counter, nonce=nonce)


# ---------------------------------------------------------------------------
# Layout and sizes


def test_overhead_fits_the_codec_reserve() -> None:
    assert OVERHEAD == 2 + KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE + COUNTERS_SIZE == 50
    assert len(sealed()) == len(COMPOUND) + OVERHEAD
    # codec keeps HEADER_SIZE + ENVELOPE_RESERVE bytes free around a compound;
    # the 2 header bytes are common to both envelopes, so envelope 1 needs 48
    # of the 50 reserved bytes.
    assert OVERHEAD - codec.HEADER_SIZE == 48 <= codec.ENVELOPE_RESERVE
    assert codec.COMPOUND_BUDGET + OVERHEAD <= codec.PACKET_MAX


def test_full_budget_compound_fits_in_a_packet() -> None:
    compound = b"\x91" + b"x" * (codec.COMPOUND_BUDGET - 1)
    packet = sealed(compound=compound)
    assert len(packet) == codec.COMPOUND_BUDGET + OVERHEAD <= codec.PACKET_MAX
    assert open_untrusted(Keyring([K1]), CLUSTER, packet).compound == compound


def test_compound_over_budget_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds the budget of 1348"):
        sealed(compound=b"x" * (codec.COMPOUND_BUDGET + 1))


def test_layout_matches_spec() -> None:
    """Decrypt with AESGCM directly, following only the SPEC text."""
    packet = sealed(epoch=0x0102030405060708, counter=0x1112131415161718)
    assert packet[0] == codec.WIRE_VERSION == 1
    assert packet[1] == codec.ENVELOPE_AES_GCM == 1
    assert packet[2:6] == key_id(K1)
    assert packet[6:18] == NONCE
    aad = packet[0:6] + CLUSTER.encode()
    plaintext = AESGCM(K1).decrypt(packet[6:18], packet[18:], aad)
    assert plaintext[:8] == bytes.fromhex("0102030405060708")
    assert plaintext[8:16] == bytes.fromhex("1112131415161718")
    assert plaintext[16:] == COMPOUND


def test_golden_vector() -> None:
    # Pins the byte layout; quoted in protocol/SPEC.md §2.1 (proposed).
    packet = seal(
        Keyring([bytes(range(32))]),
        "example",
        bytes.fromhex("91940107a162a161"),  # [[1, 7, "b", "a"]]: ping seq 7 a -> b
        epoch=1,
        counter=2,
        nonce=bytes(12),
    )
    assert packet.hex() == GOLDEN_HEX
    opened = open_untrusted(Keyring([bytes(range(32))]), "example", packet)
    assert (opened.epoch, opened.counter) == (1, 2)
    assert codec.decode_packet_untrusted(codec.encode_packet(opened.compound)) == [
        Ping(seq=7, target=NodeId("b"), source=NodeId("a"))
    ]


GOLDEN_HEX = (
    "0101"  # version 1, envelope 1
    "a44d4482"  # key id of bytes(range(32))
    "000000000000000000000000"  # nonce
    "0ebcb5deb52c83bc08a8a935182c919b43d7575489e3c14e"  # ciphertext (16 + 8 bytes)
    "438214f27a5d7dd1d32fea8937503233"  # tag
)


# ---------------------------------------------------------------------------
# Round trip


def test_round_trip() -> None:
    ring = Keyring([K1])
    opened = open_untrusted(ring, CLUSTER, sealed(ring, epoch=5, counter=9))
    assert opened == Opened(epoch=5, counter=9, compound=COMPOUND, key=K1)
    assert codec.decode_packet_untrusted(codec.encode_packet(opened.compound)) == [
        Ping(seq=7, target=NodeId("b"), source=NodeId("a"))
    ]


@pytest.mark.parametrize(("epoch", "counter"), [(0, 0), (2**64 - 1, 2**64 - 1), (1, 2**63)])
def test_round_trip_u64_extremes(epoch: int, counter: int) -> None:
    opened = open_untrusted(Keyring([K1]), CLUSTER, sealed(epoch=epoch, counter=counter))
    assert (opened.epoch, opened.counter) == (epoch, counter)


def test_round_trip_empty_compound_and_unicode_cluster() -> None:
    # Empty compounds are codec's business to reject; the envelope carries any bytes.
    packet = sealed(compound=b"", cluster="zürich-東京")
    assert len(packet) == OVERHEAD
    assert open_untrusted(Keyring([K1]), "zürich-東京", packet).compound == b""


def test_round_trip_accepts_bytearray_and_memoryview() -> None:
    packet = sealed()
    for view in (bytearray(packet), memoryview(packet)):
        assert open_untrusted(Keyring([K1]), CLUSTER, view).compound == COMPOUND


def test_different_nonces_give_different_packets() -> None:
    a = sealed(nonce=bytes(12))
    b = sealed(nonce=b"\x01" + bytes(11))
    assert a != b
    assert a[18:] != b[18:]


# ---------------------------------------------------------------------------
# Rejection


def test_tampering_any_byte_is_rejected() -> None:
    packet = sealed()
    ring = Keyring([K1])
    for i in range(len(packet)):
        for flip in (0x01, 0x80):
            bad = bytearray(packet)
            bad[i] ^= flip
            with pytest.raises(BadPacket):
                open_untrusted(ring, CLUSTER, bytes(bad))


def test_tampered_body_reports_no_key() -> None:
    bad = bytearray(sealed())
    bad[-1] ^= 1
    with pytest.raises(BadPacket, match=r"^no installed key could decrypt the packet$"):
        open_untrusted(Keyring([K1]), CLUSTER, bytes(bad))


def test_wrong_cluster_name_is_rejected() -> None:
    packet = sealed(cluster="prod")
    for other in ("staging", "Prod", "prod ", "", "prodx"):
        with pytest.raises(BadPacket, match="no installed key"):
            open_untrusted(Keyring([K1]), other, packet)


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(BadPacket, match="no installed key"):
        open_untrusted(Keyring([K2, K3]), CLUSTER, sealed(Keyring([K1])))


@pytest.mark.parametrize("size", range(2, OVERHEAD))
def test_truncated_envelope_is_rejected(size: int) -> None:
    with pytest.raises(BadPacket, match=r"^truncated envelope$"):
        open_untrusted(Keyring([K1]), CLUSTER, sealed()[:size])


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x01",
        b"\x00\x01" + bytes(60),  # wire version 0
        b"\x02\x01" + bytes(60),  # wire version 2
        b"\x01\x02" + bytes(60),  # unknown envelope
        codec.encode_packet(COMPOUND),  # a plain packet
    ],
)
def test_not_an_encrypted_packet(packet: bytes) -> None:
    with pytest.raises(BadPacket, match=r"^not an encrypted packet$"):
        open_untrusted(Keyring([K1]), CLUSTER, packet)


@pytest.mark.parametrize("packet", [None, 5, 2**80, "text", [1, 2], object()])
def test_non_bytes_input_is_rejected(packet: object) -> None:
    with pytest.raises(BadPacket, match="not an encrypted packet"):
        open_untrusted(Keyring([K1]), CLUSTER, packet)  # type: ignore[arg-type]


def test_oversized_packet_is_rejected() -> None:
    packet = sealed(compound=b"x" * codec.COMPOUND_BUDGET)
    big = packet + bytes(codec.PACKET_MAX + 1 - len(packet))
    with pytest.raises(BadPacket, match="exceeds 1400"):
        open_untrusted(Keyring([K1]), CLUSTER, big)


# ---------------------------------------------------------------------------
# Keys: rotation and the key id hint


def test_rotation_old_packets_open_while_old_key_installed() -> None:
    sender, receiver = Keyring([K1]), Keyring([K1])
    old = sealed(sender)
    # Step 1: install the new key everywhere.
    sender.install(K2)
    receiver.install(K2)
    # Step 2: use it; the sender now seals with K2.
    sender.use(K2)
    new = sealed(sender)
    assert new[2:6] == key_id(K2)
    assert open_untrusted(receiver, CLUSTER, new).key == K2  # receiver still has K1 primary
    assert open_untrusted(receiver, CLUSTER, old).key == K1
    receiver.use(K2)
    assert open_untrusted(receiver, CLUSTER, old).key == K1
    # Step 3: remove the old key; old packets stop opening.
    receiver.remove(K1)
    assert open_untrusted(receiver, CLUSTER, new).key == K2
    with pytest.raises(BadPacket, match="no installed key"):
        open_untrusted(receiver, CLUSTER, old)


def test_key_installed_later_decrypts() -> None:
    packet = sealed(Keyring([K3]))
    receiver = Keyring([K1])
    with pytest.raises(BadPacket):
        open_untrusted(receiver, CLUSTER, packet)
    receiver.install(K3)
    assert open_untrusted(receiver, CLUSTER, packet).key == K3


def _seal_with_hint(key: bytes, hint: bytes) -> bytes:
    """An envelope whose key id does not name the key that sealed it (authenticated as is)."""
    prefix = bytes([1, 1]) + hint
    plaintext = struct.pack(">QQ", 3, 4) + COMPOUND
    return prefix + NONCE + AESGCM(key).encrypt(NONCE, plaintext, prefix + CLUSTER.encode())


@pytest.mark.parametrize("hint", [b"\x00\x00\x00\x00", key_id(K1), key_id(K3)])
def test_key_id_mismatch_falls_back_to_all_keys(hint: bytes) -> None:
    receiver = Keyring([K1, K2, K3])
    opened = open_untrusted(receiver, CLUSTER, _seal_with_hint(K2, hint))
    assert (opened.key, opened.epoch, opened.counter) == (K2, 3, 4)


def test_opened_repr_shows_fingerprint_not_key() -> None:
    opened = open_untrusted(Keyring([K1]), CLUSTER, sealed())
    text = repr(opened)
    assert fingerprint(K1) in text
    assert K1.hex() not in text
    assert repr(K1) not in text


# ---------------------------------------------------------------------------
# seal argument checks


@pytest.mark.parametrize("nonce", [b"", bytes(11), bytes(13), bytes(16)])
def test_seal_bad_nonce_length(nonce: bytes) -> None:
    with pytest.raises(ValueError, match=f"nonce must be 12 bytes, got {len(nonce)}"):
        sealed(nonce=nonce)


def test_seal_nonce_must_be_bytes() -> None:
    with pytest.raises(ValueError, match="nonce must be 12 bytes, got str"):
        sealed(nonce="x" * 12)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 2**64, True, 1.0])
def test_seal_epoch_and_counter_are_u64(value: int) -> None:
    with pytest.raises(ValueError, match=r"epoch must be an int in 0\.\.2\*\*64-1"):
        sealed(epoch=value)
    with pytest.raises(ValueError, match=r"counter must be an int in 0\.\.2\*\*64-1"):
        sealed(counter=value)


def test_seal_cluster_must_encode() -> None:
    with pytest.raises(ValueError, match="cluster name"):
        sealed(cluster="\udcff")


# ---------------------------------------------------------------------------
# Hypothesis: only BadPacket escapes


@settings(max_examples=500)
@given(st.binary(max_size=codec.PACKET_MAX + 10))
def test_random_bytes_raise_only_bad_packet(data: bytes) -> None:
    with pytest.raises(BadPacket):
        open_untrusted(Keyring([K1, K2]), CLUSTER, data)


@settings(max_examples=500)
@given(st.binary(min_size=OVERHEAD - 2, max_size=200))
def test_random_bytes_behind_valid_header_raise_only_bad_packet(body: bytes) -> None:
    with pytest.raises(BadPacket):
        open_untrusted(Keyring([K1]), CLUSTER, bytes([1, 1]) + key_id(K1) + body)


_VALID = sealed(Keyring([K1]), COMPOUND + b"\x00" * 40)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "set" and data:
            data[i] = (data[i] + draw(st.integers(1, 255))) % 256
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=1000)
@given(mutations())
def test_mutated_valid_packet_raises_only_bad_packet(data: bytes) -> None:
    ring = Keyring([K1, K2])
    if data == _VALID:
        return  # mutations that cancelled out
    with pytest.raises(BadPacket):
        open_untrusted(ring, CLUSTER, data)


# ---------------------------------------------------------------------------
# ReplayWindow

# (window size, [(epoch, counter, expected verdict), ...]) applied in order.
REPLAY_CASES = {
    "in order": (8, [(1, 0, ACCEPT), (1, 1, ACCEPT), (1, 2, ACCEPT), (1, 3, ACCEPT)]),
    "first packet any counter": (8, [(1, 1000, ACCEPT), (1, 1001, ACCEPT)]),
    "duplicate": (8, [(1, 5, ACCEPT), (1, 5, REPLAY), (1, 5, REPLAY)]),
    "duplicate of older": (8, [(1, 5, ACCEPT), (1, 6, ACCEPT), (1, 5, REPLAY), (1, 6, REPLAY)]),
    "reorder within window": (
        8,
        [(1, 10, ACCEPT), (1, 7, ACCEPT), (1, 9, ACCEPT), (1, 8, ACCEPT), (1, 7, REPLAY)],
    ),
    "gap then fill": (8, [(1, 1, ACCEPT), (1, 5, ACCEPT), (1, 3, ACCEPT), (1, 4, ACCEPT)]),
    # Size 8 remembers top and the 7 below it: top - 7 is the oldest accepted.
    "edge: oldest in window": (8, [(1, 10, ACCEPT), (1, 3, ACCEPT), (1, 3, REPLAY)]),
    "edge: just below window": (8, [(1, 10, ACCEPT), (1, 2, STALE), (1, 0, STALE)]),
    "edge: top itself": (8, [(1, 10, ACCEPT), (1, 10, REPLAY)]),
    "slide drops old bits": (
        8,
        [(1, 0, ACCEPT), (1, 7, ACCEPT), (1, 0, REPLAY), (1, 8, ACCEPT), (1, 0, STALE)],
    ),
    "slide by exactly size": (8, [(1, 0, ACCEPT), (1, 8, ACCEPT), (1, 0, STALE), (1, 1, ACCEPT)]),
    "slide by size - 1 keeps old top": (8, [(1, 1, ACCEPT), (1, 8, ACCEPT), (1, 1, REPLAY)]),
    "huge jump": (
        8,
        [(1, 3, ACCEPT), (1, 2**64 - 1, ACCEPT), (1, 3, STALE), (1, 2**64 - 2, ACCEPT)],
    ),
    "size 1": (1, [(1, 5, ACCEPT), (1, 5, REPLAY), (1, 4, STALE), (1, 6, ACCEPT)]),
    "epoch bump resets": (
        8,
        [(1, 100, ACCEPT), (2, 0, ACCEPT), (2, 1, ACCEPT), (2, 0, REPLAY), (1, 101, STALE)],
    ),
    "older epoch is stale": (8, [(5, 0, ACCEPT), (4, 0, STALE), (4, 999, STALE), (5, 1, ACCEPT)]),
    "replay of previous epoch after restart": (
        8,
        [(1, 3, ACCEPT), (1, 4, ACCEPT), (2, 0, ACCEPT), (1, 4, STALE), (1, 3, STALE)],
    ),
}


@pytest.mark.parametrize(("size", "steps"), REPLAY_CASES.values(), ids=REPLAY_CASES.keys())
def test_replay_window(size: int, steps: list[tuple[int, int, Verdict]]) -> None:
    window = ReplayWindow(size)
    got = [window.check_and_update(epoch, counter) for epoch, counter, _ in steps]
    assert got == [verdict for _, _, verdict in steps]


def test_replay_window_default_size_edges() -> None:
    window = ReplayWindow()
    assert window.size == 1024
    assert window.check_and_update(7, 5000) is ACCEPT
    assert window.check_and_update(7, 5000 - 1023) is ACCEPT
    assert window.check_and_update(7, 5000 - 1024) is STALE
    assert (window.epoch, window.top) == (7, 5000)


def test_replay_window_rejected_packets_do_not_move_it() -> None:
    window = ReplayWindow(4)
    window.check_and_update(3, 10)
    window.check_and_update(3, 10)  # replay
    window.check_and_update(2, 50)  # stale epoch
    window.check_and_update(3, 1)  # stale counter
    assert (window.epoch, window.top) == (3, 10)
    assert window.check_and_update(3, 9) is ACCEPT


def test_replay_window_every_counter_accepted_once_under_reordering() -> None:
    window = ReplayWindow(64)
    order = [i ^ 0b10101 for i in range(256)]  # reorders within blocks of 32
    assert sorted(order) == list(range(256))
    assert all(window.check_and_update(1, c) is ACCEPT for c in order)
    assert all(window.check_and_update(1, c) is not ACCEPT for c in order)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_replay_window_bad_size(size: int) -> None:
    with pytest.raises(ValueError, match="replay window size"):
        ReplayWindow(size)


@settings(max_examples=200)
@given(
    st.integers(1, 64),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200)), max_size=80),
)
def test_replay_window_matches_reference_model(size: int, packets: list[tuple[int, int]]) -> None:
    """Against a set-based model: never accept twice; accept what a perfect cache would."""
    window = ReplayWindow(size)
    epoch: int | None = None
    top = 0
    seen: set[int] = set()
    for e, c in packets:
        if epoch is None or e > epoch:
            epoch, top, seen = e, c, {c}
            expected = ACCEPT
        elif e < epoch:
            expected = STALE
        elif c > top:
            top = c
            seen.add(c)
            expected = ACCEPT
        elif top - c >= size:
            expected = STALE
        elif c in seen:
            expected = REPLAY
        else:
            seen.add(c)
            expected = ACCEPT
        assert window.check_and_update(e, c) is expected


# ---------------------------------------------------------------------------
# ReplayGuard


def test_replay_guard_keeps_one_window_per_sender() -> None:
    guard = ReplayGuard()
    assert guard.check_and_update("a", 1, 1) is ACCEPT
    assert guard.check_and_update("b", 1, 1) is ACCEPT  # other sender, same numbers
    assert guard.check_and_update("a", 1, 1) is REPLAY
    assert guard.check_and_update("b", 1, 1) is REPLAY
    assert len(guard) == 2


def test_replay_guard_is_bounded_and_evicts_least_recent() -> None:
    guard = ReplayGuard(max_senders=3, window_size=16)
    for sender in ("a", "b", "c"):
        guard.check_and_update(sender, 1, 10)
    guard.check_and_update("a", 1, 11)  # "a" is now the most recent; "b" the least
    guard.check_and_update("d", 1, 10)
    assert len(guard) == 3
    assert "b" not in guard
    assert all(s in guard for s in ("a", "c", "d"))
    # A forgotten sender starts over (the documented one-time exposure).
    assert guard.check_and_update("b", 1, 10) is ACCEPT
    assert "c" not in guard
    assert guard.check_and_update("a", 1, 11) is REPLAY


def test_replay_guard_flood_stays_bounded() -> None:
    guard = ReplayGuard(max_senders=100)
    for i in range(10_000):
        guard.check_and_update(("fake", i), 1, i)
    assert len(guard) == 100
    assert ("fake", 9_999) in guard
    assert ("fake", 9_899) not in guard


def test_replay_guard_forget() -> None:
    guard = ReplayGuard()
    guard.check_and_update(NodeId("n1"), 2, 5)
    guard.forget(NodeId("n1"))
    guard.forget(NodeId("never-seen"))
    assert len(guard) == 0
    assert guard.check_and_update(NodeId("n1"), 2, 5) is ACCEPT


@pytest.mark.parametrize("kwargs", [{"max_senders": 0}, {"window_size": 0}])
def test_replay_guard_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be an int >= 1"):
        ReplayGuard(**kwargs)


def test_replay_guard_end_to_end_with_envelope() -> None:
    sender, receiver = Keyring([K1]), Keyring([K1])
    guard = ReplayGuard()
    packets = [sealed(sender, epoch=1, counter=c, nonce=bytes([c]) * 12) for c in range(3)]
    verdicts = []
    for packet in [*packets, packets[1], packets[0]]:
        opened = open_untrusted(receiver, CLUSTER, packet)
        verdicts.append(guard.check_and_update("a", opened.epoch, opened.counter))
    assert verdicts == [ACCEPT, ACCEPT, ACCEPT, REPLAY, REPLAY]
