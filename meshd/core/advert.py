"""What a node announces over mDNS, and the check a browser applies to it.

Each daemon registers one DNS-SD service instance of type
:data:`SERVICE_TYPE` on its gossip address. The TXT record carries what a
peer needs to decide, *before* any packet is exchanged, whether joining is
worth a try (RFC 6763 §6: short ``key=value`` strings):

=========  ====================================================  ============
key        value                                                 example
=========  ====================================================  ============
txtvers    version of this TXT layout                            ``1``
proto      protocol versions the node speaks, ``MIN-MAX``        ``1-1``
cluster    cluster name (``[cluster] name``)                     ``prod``
key        fingerprint of the primary gossip key (16 hex)        ``9f0c…``
id         node id                                               ``web-1``
port       gossip (UDP) port; the SRV record carries it too      ``7946``
stream     stream (TCP, mutual TLS) port                         ``7946``
=========  ====================================================  ============

The key fingerprint is a truncated hash of the key (``core/keyring.py``),
safe to publish: it lets a node ignore peers of another mesh that happens to
use the same cluster name, without learning anything about the key. It does
not *authenticate* anybody — a forged advertisement costs one failed,
authenticated join attempt, nothing more.

Pure: no zeroconf here; ``runtime/mdns.py`` does the I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Mapping, Sequence

import attrs

from meshd.core.types import PROTOCOL_MAX, PROTOCOL_MIN, Address

__all__ = [
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Advert",
    "BadAdvert",
    "Rejection",
    "check_advert",
    "decode_advert",
    "encode_txt",
    "instance_name",
    "server_name",
]

#: The DNS-SD service type every meshd daemon registers and browses.
SERVICE_TYPE = "_meshd._udp.local."

TXT_VERSION = 1

# A DNS label holds at most 63 bytes (RFC 1035 §2.3.4).
_LABEL_MAX = 63
_FINGERPRINT_HEX = 16


class BadAdvert(ValueError):
    """An mDNS advertisement that is not a well-formed meshd TXT record."""


@attrs.frozen
class Advert:
    """One node's advertisement.

    Attributes:
        node_id: the node's id.
        cluster: its cluster name.
        key_fingerprint: fingerprint of its primary gossip key.
        address: ``(ip, gossip port)``.
        stream_port: its TCP (stream) port.
        protocol_min: lowest protocol version it speaks.
        protocol_max: highest protocol version it speaks.
    """

    node_id: str
    cluster: str
    key_fingerprint: str
    address: Address
    stream_port: int
    protocol_min: int = PROTOCOL_MIN
    protocol_max: int = PROTOCOL_MAX


def encode_txt(advert: Advert) -> dict[str, str]:
    """The TXT properties for ``advert`` (zeroconf encodes them as UTF-8)."""
    return {
        "txtvers": str(TXT_VERSION),
        "proto": f"{advert.protocol_min}-{advert.protocol_max}",
        "cluster": advert.cluster,
        "key": advert.key_fingerprint,
        "id": advert.node_id,
        "port": str(advert.address[1]),
        "stream": str(advert.stream_port),
    }


def decode_advert(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str]
) -> Advert:
    """Parse a peer's TXT properties and resolved addresses.

    Args:
        properties: TXT properties as zeroconf gives them (bytes to bytes).
        addresses: the instance's addresses, as text; the first usable one
            is taken (a meshd node advertises exactly one).

    Raises:
        BadAdvert: a key is missing or malformed; the message names it.
    """
    txt: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii").lower()
            value = "" if raw_value is None else raw_value.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            raise BadAdvert("TXT record is not text") from None
        txt[key] = value
    version = _integer(txt, "txtvers", 1, 255)
    if version != TXT_VERSION:
        raise BadAdvert(f"TXT version {version} is not {TXT_VERSION}")
    proto = _required(txt, "proto")
    low_text, sep, high_text = proto.partition("-")
    if not sep or not low_text.isdigit() or not high_text.isdigit():
        raise BadAdvert(f"proto {proto!r} is not MIN-MAX")
    low, high = int(low_text), int(high_text)
    if not 0 < low <= high <= 255:
        raise BadAdvert(f"proto {proto!r} is not a version range")
    fingerprint = _required(txt, "key").lower()
    if len(fingerprint) != _FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in fingerprint):
        raise BadAdvert("key is not a 16-digit hex fingerprint")
    port = _integer(txt, "port", 1, 65535)
    stream = _integer(txt, "stream", 1, 65535)
    host = _first_address(addresses)
    return Advert(
        node_id=_required(txt, "id"),
        cluster=_required(txt, "cluster"),
        key_fingerprint=fingerprint,
        address=(host, port),
        stream_port=stream,
        protocol_min=low,
        protocol_max=high,
    )


class Rejection(str):
    """Why an advertisement is ignored (a short, counter-friendly reason)."""


SELF = Rejection("self")
OTHER_CLUSTER = Rejection("other_cluster")
OTHER_KEY = Rejection("other_key")
INCOMPATIBLE = Rejection("incompatible_protocol")


def check_advert(
    advert: Advert,
    *,
    node_id: str,
    cluster: str,
    fingerprints: Collection[str],
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_MAX,
) -> Rejection | None:
    """Whether this node should try to join the advertised peer.

    Returns:
        ``None`` to join; otherwise the reason to ignore it: another cluster
        name, a primary key this node does not hold (another mesh, or one
        that rotated keys without us), our own node id, or no protocol
        version in common.
    """
    # Node ids are unique within a mesh only: tell meshes apart first.
    if advert.cluster != cluster:
        return OTHER_CLUSTER
    if advert.key_fingerprint not in fingerprints:
        return OTHER_KEY
    if advert.node_id == node_id:
        return SELF
    if advert.protocol_max < protocol_min or advert.protocol_min > protocol_max:
        return INCOMPATIBLE
    return None


def instance_name(node_id: str, cluster: str, address: Address) -> str:
    """The DNS-SD instance name: ``node@cluster``, shortened to fit one label.

    Instance names must be unique on the link, and registration skips the
    uniqueness probe. Node ids are unique within a mesh only (two test
    meshes may both have a ``node-1``), so a short hash of the node's
    address is appended; a name over 63 bytes keeps its head and gains a
    hash of the whole.
    """
    name = f"{node_id}@{cluster}-{_short_hash(address)}"
    if len(name.encode()) <= _LABEL_MAX:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=5).hexdigest()
    head = name.encode()[: _LABEL_MAX - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def server_name(node_id: str, cluster: str, address: Address) -> str:
    """The host name in the SRV record (it owns the A record).

    Derived from node, cluster and address, not ``gethostname()``: hosts in
    containers or network namespaces often share one hostname.
    """
    seed = f"{cluster}\0{node_id}\0{address[0]}\0{address[1]}".encode()
    return f"meshd-{hashlib.blake2b(seed, digest_size=6).hexdigest()}.local."


def _short_hash(address: Address) -> str:
    return hashlib.blake2b(f"{address[0]}\0{address[1]}".encode(), digest_size=2).hexdigest()


def _required(txt: Mapping[str, str], key: str) -> str:
    value = txt.get(key)
    if not value:
        raise BadAdvert(f"TXT key {key!r} is missing")
    return value


def _integer(txt: Mapping[str, str], key: str, low: int, high: int) -> int:
    value = _required(txt, key)
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadAdvert(f"TXT key {key!r} = {value!r} is not a number in {low}..{high}")
    return int(value)


def _first_address(addresses: Sequence[str]) -> str:
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.is_unspecified or ip.is_multicast:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
            continue  # would need a scope id we cannot carry in an Address
        return str(ip)
    raise BadAdvert("no usable address in the advertisement")
