"""The gossip keyring: installed AES-256 keys, one of them primary."""

# Strategy
#
# Semantics follow memberlist keyring.go, which Serf's `serf keys
# install|use|remove|list` drives and meshctl copies:
#
# * Only the primary key encrypts. Every installed key is tried to decrypt
#   (crypto.open_untrusted), so a cluster rotates without downtime:
#   1. `install` the new key everywhere  (everyone can now read it),
#   2. `use` it everywhere               (everyone now writes with it),
#   3. `remove` the old key everywhere   (nobody reads the old one any more).
#   Packets sealed with the old key keep opening until step 3 reaches the
#   receiver.
# * `keys` lists the primary first, then the others in install order
#   (memberlist's installKeys puts the primary at index 0).
# * Removing the primary is refused: a node must always be able to send.
# * Installing an installed key is a no-op (memberlist AddKey skips it).
#
# Differences from memberlist, on purpose:
#
# * Keys are exactly 32 bytes (AES-256 only; memberlist also takes 16/24).
# * An empty keyring is an error: "no encryption" is the absence of a
#   Keyring, not an empty one, so a node cannot end up unable to seal.
# * Each key has a non-secret fingerprint (shown by `meshctl keys list` and
#   `status` instead of the key, DESIGN.md §5) and a 4-byte key id, the
#   prefix of the same digest, carried in clear in every packet so the
#   receiver tries the right key first. Both are a domain-separated SHA-256
#   of the key: a one-way function of 256 bits of secret, so neither the
#   fingerprint nor the id reveals anything usable about the key.
#   Nothing stops two keys from sharing a 4-byte id (2^-32 per pair), so the
#   id is only a hint: crypto.open_untrusted falls back to every key.
# * The AES-GCM cipher object of each key is built once, here, and reused
#   for every packet.
#
# repr() shows fingerprints only; key bytes are never formatted, so a
# Keyring can appear in logs and tracebacks.
#
# This module is pure (no I/O): the runtime reads keys from the 0600 key
# file and hands them in; persisting changes is the runtime's job too.

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_ID_SIZE", "KEY_SIZE", "KeyBytes", "Keyring", "fingerprint", "key_id"]

#: What a key may be passed as; it is stored as ``bytes``.
KeyBytes = bytes | bytearray | memoryview

#: Bytes in a key: AES-256.
KEY_SIZE = 32
#: Bytes of the key id carried in every encrypted packet.
KEY_ID_SIZE = 4
#: Bytes of the digest shown as a fingerprint (16 hex digits).
_FINGERPRINT_SIZE = 8
#: Domain separation: this digest is used for nothing else.
_FINGERPRINT_DOMAIN = b"meshd key fingerprint v1"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).digest()


def _check_key(key: object) -> bytes:
    """``key`` as bytes, or an error that never echoes the key."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"a key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"a key must be exactly {KEY_SIZE} bytes (AES-256), got {len(key)}")
    return key


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for ``key``: 16 hex digits.

    The first 8 bytes of SHA-256(b"meshd key fingerprint v1" + key). Safe
    to log and display; the same key has the same fingerprint on every node.

    Raises:
        ValueError: ``key`` is not 32 bytes.
        TypeError: ``key`` is not bytes.
    """
    return _digest(_check_key(key))[:_FINGERPRINT_SIZE].hex()


def key_id(key: bytes) -> bytes:
    """The 4-byte hint carried in packets: the first 4 bytes of the fingerprint digest.

    Raises:
        ValueError: ``key`` is not 32 bytes.
        TypeError: ``key`` is not bytes.
    """
    return _digest(_check_key(key))[:KEY_ID_SIZE]


class _Entry:
    """What the keyring knows about one installed key."""

    __slots__ = ("cipher", "fingerprint", "key_id")

    def __init__(self, key: bytes) -> None:
        digest = _digest(key)
        self.fingerprint = digest[:_FINGERPRINT_SIZE].hex()
        self.key_id = digest[:KEY_ID_SIZE]
        self.cipher = AESGCM(key)


class Keyring:
    """An ordered set of AES-256 keys with one primary (memberlist keyring semantics).

    Args:
        keys: the installed keys, 32 bytes each; duplicates are ignored.
        primary: the key that encrypts; must be one of ``keys``. Defaults to
            ``keys[0]``.

    Raises:
        ValueError: no keys, a key that is not 32 bytes, or a primary that
            is not among ``keys``.
        TypeError: a key that is not bytes.
    """

    __slots__ = ("_entries", "_primary")

    def __init__(self, keys: Sequence[KeyBytes], primary: KeyBytes | None = None) -> None:
        checked = [_check_key(k) for k in keys]
        if not checked:
            raise ValueError("a keyring needs at least one key")
        first = checked[0] if primary is None else _check_key(primary)
        if first not in checked:
            raise ValueError(f"primary key {fingerprint(first)} is not among the installed keys")
        # Insertion order is install order; the primary is kept separately.
        self._entries: dict[bytes, _Entry] = {}
        for k in checked:
            if k not in self._entries:
                self._entries[k] = _Entry(k)
        self._primary = first

    # -- queries --------------------------------------------------------

    @property
    def primary(self) -> bytes:
        """The key that encrypts outgoing packets."""
        return self._primary

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every installed key: the primary first, then the others in install order."""
        return (self._primary, *(k for k in self._entries if k != self._primary))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes | bytearray | memoryview) and bytes(key) in self._entries

    def fingerprint(self, key: bytes) -> str:
        """The fingerprint of ``key`` (installed or not); see :func:`fingerprint`."""
        entry = self._entries.get(_check_key(key))
        return entry.fingerprint if entry is not None else fingerprint(key)

    def key_id(self, key: bytes) -> bytes:
        """The 4-byte key id of ``key`` (installed or not); see :func:`key_id`."""
        entry = self._entries.get(_check_key(key))
        return entry.key_id if entry is not None else key_id(key)

    def fingerprints(self) -> list[str]:
        """Fingerprints of :attr:`keys`, primary first: what ``meshctl keys list`` shows."""
        return [self._entries[k].fingerprint for k in self.keys]

    def cipher(self, key: bytes) -> AESGCM:
        """The (cached) AES-GCM cipher of an installed key. Used by :mod:`meshd.core.crypto`.

        Raises:
            KeyError: ``key`` is not installed (the message names its fingerprint).
        """
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"key {fingerprint(key)} is not installed")
        return entry.cipher

    def candidates(self, hint: bytes) -> Iterable[tuple[bytes, AESGCM]]:
        """``(key, cipher)`` pairs in the order a receiver should try them.

        Keys whose key id equals ``hint`` come first (normally exactly one),
        then every other key in :attr:`keys` order, so a wrong or colliding
        hint only costs extra attempts.
        """
        ordered = self.keys
        hinted = [k for k in ordered if self._entries[k].key_id == hint]
        for k in hinted:
            yield k, self._entries[k].cipher
        for k in ordered:
            if k not in hinted:
                yield k, self._entries[k].cipher

    # -- changes --------------------------------------------------------

    def install(self, key: KeyBytes) -> None:
        """Add ``key`` to the keys tried on receive. Installing it again is a no-op.

        Raises:
            ValueError: ``key`` is not 32 bytes.
            TypeError: ``key`` is not bytes.
        """
        key = _check_key(key)
        if key not in self._entries:
            self._entries[key] = _Entry(key)

    def use(self, key: KeyBytes) -> None:
        """Make an installed key the primary (the one that encrypts).

        Raises:
            ValueError: ``key`` is not installed, or not 32 bytes.
            TypeError: ``key`` is not bytes.
        """
        key = _check_key(key)
        if key not in self._entries:
            raise ValueError(f"key {fingerprint(key)} is not installed; install it before using it")
        self._primary = key

    def remove(self, key: KeyBytes) -> None:
        """Stop trying ``key`` on receive. Removing a key that is not installed is a no-op.

        Raises:
            ValueError: ``key`` is the primary (``use`` another key first),
                or not 32 bytes.
            TypeError: ``key`` is not bytes.
        """
        key = _check_key(key)
        if key == self._primary:
            raise ValueError(
                f"cannot remove the primary key {self._entries[key].fingerprint}; "
                "use another key first"
            )
        self._entries.pop(key, None)

    def __repr__(self) -> str:
        primary = self._entries[self._primary].fingerprint
        return f"Keyring(primary={primary}, keys={self.fingerprints()})"
