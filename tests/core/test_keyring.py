"""Tests for meshd.core.keyring: memberlist keyring semantics, fingerprints, no key leaks."""

from __future__ import annotations

import hashlib

import pytest

from meshd.core import keyring as keyring_module
from meshd.core.keyring import KEY_ID_SIZE, KEY_SIZE, Keyring, fingerprint, key_id

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = b"\xff" * 32


def test_keyring_primary_defaults_to_first_key() -> None:
    ring = Keyring([K1, K2])
    assert ring.primary == K1
    assert ring.keys == (K1, K2)
    assert len(ring) == 2


def test_keyring_explicit_primary_is_listed_first() -> None:
    ring = Keyring([K1, K2, K3], primary=K3)
    assert ring.primary == K3
    assert ring.keys == (K3, K1, K2)


def test_keyring_ignores_duplicate_keys() -> None:
    ring = Keyring([K1, K2, K1])
    assert ring.keys == (K1, K2)


def test_keyring_accepts_bytearray_and_stores_bytes() -> None:
    ring = Keyring([bytearray(K1)])
    assert ring.primary == K1
    assert type(ring.primary) is bytes


def test_keyring_empty_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        Keyring([])


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_keyring_wrong_key_length_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"exactly 32 bytes \\(AES-256\\), got {size}"):
        Keyring([b"k" * size])


def test_keyring_non_bytes_key_is_refused() -> None:
    with pytest.raises(TypeError, match="must be bytes, not str"):
        Keyring(["x" * 32])  # type: ignore[list-item]


def test_keyring_primary_not_installed_is_refused() -> None:
    with pytest.raises(ValueError, match=f"primary key {fingerprint(K3)} is not among"):
        Keyring([K1, K2], primary=K3)


def test_keyring_install_appends_and_is_idempotent() -> None:
    ring = Keyring([K1])
    ring.install(K2)
    ring.install(K2)
    ring.install(K1)
    assert ring.keys == (K1, K2)
    assert K2 in ring
    assert K3 not in ring


def test_keyring_install_wrong_length_is_refused() -> None:
    ring = Keyring([K1])
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        ring.install(b"short")
    assert ring.keys == (K1,)


def test_keyring_use_moves_key_to_front() -> None:
    ring = Keyring([K1, K2, K3])
    ring.use(K3)
    assert ring.primary == K3
    assert ring.keys == (K3, K1, K2)
    ring.use(K1)
    assert ring.keys == (K1, K2, K3)


def test_keyring_use_requires_installed_key() -> None:
    ring = Keyring([K1])
    with pytest.raises(ValueError, match="not installed; install it before using it"):
        ring.use(K2)
    assert ring.primary == K1


def test_keyring_remove_non_primary() -> None:
    ring = Keyring([K1, K2])
    ring.remove(K2)
    assert ring.keys == (K1,)
    ring.remove(K2)  # not installed: no-op, like memberlist
    assert ring.keys == (K1,)


def test_keyring_remove_primary_is_refused() -> None:
    ring = Keyring([K1, K2])
    with pytest.raises(ValueError, match=r"cannot remove the primary key .*use another key first"):
        ring.remove(K1)
    assert ring.keys == (K1, K2)


def test_keyring_full_rotation() -> None:
    ring = Keyring([K1])
    ring.install(K2)
    ring.use(K2)
    ring.remove(K1)
    assert ring.keys == (K2,)
    assert ring.primary == K2


def test_fingerprint_definition() -> None:
    digest = hashlib.sha256(b"meshd key fingerprint v1" + K1).digest()
    assert fingerprint(K1) == digest[:8].hex()
    assert len(fingerprint(K1)) == 16
    assert key_id(K1) == digest[:KEY_ID_SIZE]
    assert fingerprint(K1).startswith(key_id(K1).hex())


def test_fingerprint_is_not_a_plain_hash_of_the_key() -> None:
    # Domain-separated: not the prefix of sha256(key), which other tools may show.
    assert fingerprint(K1) != hashlib.sha256(K1).hexdigest()[:16]
    assert fingerprint(K1) != fingerprint(K2)


def test_keyring_fingerprint_and_key_id_match_module_functions() -> None:
    ring = Keyring([K1, K2])
    for k in (K1, K2, K3):  # installed or not
        assert ring.fingerprint(k) == fingerprint(k)
        assert ring.key_id(k) == key_id(k)
    assert ring.fingerprints() == [fingerprint(K1), fingerprint(K2)]


def test_fingerprint_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        fingerprint(b"\x00" * 16)


def test_keyring_candidates_put_hinted_key_first() -> None:
    ring = Keyring([K1, K2, K3])
    assert [k for k, _ in ring.candidates(key_id(K3))] == [K3, K1, K2]
    assert [k for k, _ in ring.candidates(key_id(K1))] == [K1, K2, K3]
    assert [k for k, _ in ring.candidates(b"\x00\x00\x00\x00")] == [K1, K2, K3]


def test_keyring_cipher_is_cached_and_requires_installed_key() -> None:
    ring = Keyring([K1])
    assert ring.cipher(K1) is ring.cipher(K1)
    with pytest.raises(KeyError, match=fingerprint(K2)):
        ring.cipher(K2)


@pytest.mark.parametrize("key", [K1, K2, K3])
def test_keyring_repr_never_shows_key_bytes(key: bytes) -> None:
    ring = Keyring([K1, K2, K3], primary=key)
    text = repr(ring) + str(ring)
    for k in (K1, K2, K3):
        assert k.hex() not in text
        assert k.hex()[:16] not in text
        assert repr(k) not in text
        assert fingerprint(k) in text
    assert f"primary={fingerprint(key)}" in text


def test_keyring_error_messages_never_show_key_bytes() -> None:
    ring = Keyring([K1, K2])
    messages = []
    for action in (lambda: ring.remove(K1), lambda: ring.use(K3), lambda: ring.cipher(K3)):
        with pytest.raises((ValueError, KeyError)) as info:
            action()
        messages.append(str(info.value))
    with pytest.raises(ValueError, match="primary key") as info:
        Keyring([K1], primary=K3)
    messages.append(str(info.value))
    for text in messages:
        for k in (K1, K2, K3):
            assert k.hex() not in text
            assert repr(k) not in text


def test_keyring_constants() -> None:
    assert KEY_SIZE == 32
    assert KEY_ID_SIZE == 4
    assert set(keyring_module.__all__) >= {"Keyring", "fingerprint", "key_id"}
