"""Stream security: mutual TLS 1.3 between nodes, anchored in the cluster secret or operator CA."""

# Trust model
# -----------
#
# Streams (push-pull, data transfer, plugin RPC) run inside TLS 1.3 with
# mutual authentication (DESIGN.md §5). The trust boundary matches gossip's:
#
# * Derived mode (default). Whoever holds the cluster secret is a member.
#   The cluster CA is computed from the secret, so holding the secret means
#   holding the CA key and being able to mint a certificate for ANY node id.
#   TLS here adds confidentiality, integrity and "the peer holds the secret";
#   it does not protect one member from another, exactly like Serf's gossip
#   key. Each node issues its own leaf under the derived CA.
# * PKI mode. The operator's CA is the anchor and the operator issues one
#   certificate per node; nodes never hold a CA key, so a node can only
#   prove the node id its certificate names. This is the mode to use when
#   members must not be able to impersonate each other.
#
# Why the CA is derived deterministically
# ---------------------------------------
#
# A CA needs distributing: one node would have to create it, and every other
# node would need it (and, to issue its own leaf, its key) before it could
# speak TLS at all. Deriving it removes that step: HKDF(secret, info="meshd
# ca v1" + cluster name) gives 32 bytes, which are an Ed25519 private key;
# the self-signed certificate is built only from fixed fields (no clock, no
# random serial) and Ed25519 signatures are deterministic (RFC 8032), so
# every node computes a byte-identical CA certificate, the same trust anchor,
# from the same secret, with no coordination. The cluster name is in the HKDF
# info and in the subject, so two clusters sharing a secret still get
# different CAs and refuse each other (DESIGN.md §5: other clusters are
# ignored). The leaf keys are random and stay on their node
# (state_dir/tls/node.key, 0600); only the CA key is shared knowledge.
#
# WARNING: every byte of the CA certificate is part of the protocol. Nodes
# whose code builds it differently do not trust each other, so a change here
# splits a cluster during a rolling upgrade. tests/runtime/test_tls.py pins
# the fingerprint; changing it needs a new info label ("meshd ca v2") and a
# plan for trusting both anchors during the upgrade.
#
# The CA follows the cluster secret FILE, not the gossip keyring: rotating
# gossip keys (`meshctl keys install|use|remove`) changes neither the CA nor
# any certificate. Replacing the secret file changes the CA; each node then
# reissues its leaf at start (derived_identity notices that node.crt is
# signed by another CA), and nodes on different secrets refuse each other
# until all have restarted.
#
# Why check_hostname is off and node ids are checked instead
# -----------------------------------------------------------
#
# Nodes dial each other by the address gossip reported (an IP that DHCP or a
# restart may change), not by a DNS name, so there is no hostname to check.
# What matters is WHICH MEMBER is on the other end. Every leaf names its node
# in a SAN URI, urn:meshd:node:<percent-encoded id>; after OpenSSL verified
# the chain to the anchor, the runtime compares that id with the member it
# meant to dial (client) or the member the peer claims to be (server), via
# check_peer(). A URI in our own namespace cannot be confused with a DNS or
# IP identity that the same operator CA may certify for other services. PKI
# certificates without the URI fall back to a subject CN equal to the node id
# (pki_identity and peer_node_id agree on this rule, _node_id_from_names).
#
# Why TLS 1.3 only
# ----------------
#
# Both ends are meshd, so there is no legacy peer to serve. TLS 1.3 encrypts
# the certificates (node ids are not visible to passive observers), has only
# AEAD suites and forward secrecy, no renegotiation, a 1-RTT handshake, and
# Ed25519 signatures are native to it. A TLS 1.2 peer is refused.
#
# Note on TLS 1.3 client authentication: the CLIENT finishes its handshake
# before the server has checked the client's certificate. A refused client
# learns it on its first read (an alert), not from do_handshake(). Servers
# therefore must not act on a connection before their own handshake
# completed, and clients see the refusal as a broken stream.
#
# Python's ssl can only load a certificate chain from a file. The key goes
# into an anonymous memfd (Linux) that no other process can open and that
# vanishes with its descriptor; where memfd is unavailable, into a 0600 file
# in a fresh 0700 temporary directory, removed right after loading.

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import ssl
import stat
import tempfile
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from meshd.config import Config

from meshd.errors import ConfigError, RemoteProtocolError


def _load_crypto() -> None:
    """Import the X.509 machinery on first use.

    Only certificate work (deriving the CA, issuing or checking a leaf,
    checking operator PKI files) needs it. The daemon does that work in a
    short-lived child process (:func:`isolated_identity`), so the long-running
    process never loads ``cryptography.x509`` (about 2-3 MiB of resident
    memory); building contexts and checking peers needs only :mod:`ssl`.
    """
    if "x509" in globals():
        return
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    globals().update(
        x509=x509,
        InvalidSignature=InvalidSignature,
        UnsupportedAlgorithm=UnsupportedAlgorithm,
        hashes=hashes,
        serialization=serialization,
        Ed25519PrivateKey=Ed25519PrivateKey,
        HKDF=HKDF,
        ExtendedKeyUsageOID=ExtendedKeyUsageOID,
        NameOID=NameOID,
    )


__all__ = [
    "NODE_URI_PREFIX",
    "PeerMismatch",
    "TlsIdentity",
    "check_peer",
    "client_context",
    "derive_ca",
    "derived_identity",
    "peer_node_id",
    "pki_identity",
    "server_context",
]

logger = logging.getLogger(__name__)

#: Scheme of the SAN URI that names a node: NODE_URI_PREFIX + quote(node_id, safe="").
NODE_URI_PREFIX = "urn:meshd:node:"

#: HKDF info label of the derived CA; the cluster name (UTF-8) follows it.
CA_HKDF_INFO = b"meshd ca v1"
#: Domain label of the CA serial number (a digest of the HKDF output).
CA_SERIAL_LABEL = b"meshd ca serial v1"
CA_COMMON_NAME = "meshd cluster CA"
CA_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
#: RFC 5280 §4.1.2.5: 99991231235959Z means "no well-defined expiration".
CA_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

#: Leaf notBefore is backdated so that peers whose clock is a little behind accept it.
LEAF_BACKDATE = timedelta(hours=1)
#: 825 days: the longest lifetime browsers accepted for leaves (CA/B Forum, 2018).
LEAF_LIFETIME = timedelta(days=825)
#: A persisted leaf that expires within this margin is reissued at start.
LEAF_RENEW_MARGIN = timedelta(days=30)

#: Below 128 bits, the secret could be guessed and the CA key with it.
MIN_SECRET_SIZE = 16
#: RFC 5280 upper bound of a CN; longer node ids get an empty subject (SAN only).
_CN_MAX_BYTES = 64

TLS_DIR_NAME = "tls"
KEY_FILE_NAME = "node.key"
CERT_FILE_NAME = "node.crt"


class PeerMismatch(RemoteProtocolError):
    """The peer's verified certificate names another node id, or none."""


@attrs.frozen
class TlsIdentity:
    """Everything one node needs to build its TLS contexts.

    Attributes:
        node_id: this node's id, as named by ``cert_pem``.
        ca_pem: the trust anchor(s), PEM.
        cert_pem: this node's leaf (PKI mode: followed by any intermediates), PEM.
        key_pem: the leaf's private key, unencrypted PKCS#8 PEM. Never in repr.
        ca_fingerprint: first 16 hex digits of SHA-256 over the CA certificate's
            DER, safe for status output and logs.
    """

    node_id: str
    ca_pem: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes PEM>")
    cert_pem: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes PEM>")
    key_pem: bytes = attrs.field(repr=False)
    ca_fingerprint: str


class _HasPeerCert(Protocol):
    """ssl.SSLObject, ssl.SSLSocket and trio.SSLStream (which forwards the call)."""

    def getpeercert(self) -> Any: ...


########################################################################
# Derived mode
########################################################################


def derive_ca(secret: bytes, cluster: str) -> tuple[bytes, Ed25519PrivateKey]:
    """Derive the cluster CA from the cluster secret.

    Every node holding ``secret`` for cluster ``cluster`` gets the same
    key and a byte-identical certificate.

    Args:
        secret: the cluster secret (the content of the secret file), at
            least 16 bytes.
        cluster: the cluster name.

    Returns:
        The CA certificate as PEM, and its private key.

    Raises:
        ValueError: the secret is too short or the cluster name is empty.
    """
    _load_crypto()
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"cluster secret must be at least {MIN_SECRET_SIZE} bytes")
    if not cluster:
        raise ValueError("cluster name must not be empty")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=CA_HKDF_INFO + cluster.encode("utf-8"),
    ).derive(secret)
    key = Ed25519PrivateKey.from_private_bytes(okm)
    # A one-way digest of the key material: deterministic, reveals nothing.
    # 16 bytes, positive and nonzero: within RFC 5280's 20-octet limit.
    serial = int.from_bytes(hashlib.sha256(CA_SERIAL_LABEL + okm).digest()[:16], "big") | 1
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(CA_NOT_BEFORE)
        .not_valid_after(CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, None)  # Ed25519 takes no separate hash; the signature is deterministic
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def derived_identity(
    secret: bytes, cluster: str, node_id: str, state_dir: Path, *, now: datetime
) -> TlsIdentity:
    """This node's identity under the CA derived from the cluster secret.

    The leaf key is generated once and kept in ``state_dir/tls/node.key``
    (0600, directory 0700). The leaf certificate in ``state_dir/tls/node.crt``
    is reused, and reissued when it is missing or unreadable, expires within
    30 days (or is not valid yet), names another node id, belongs to another
    key, or was signed by another CA (the secret or cluster name changed).

    Args:
        secret: the cluster secret.
        cluster: the cluster name.
        node_id: this node's id.
        state_dir: meshd's state directory.
        now: the wall-clock time, timezone-aware.

    Returns:
        The identity to build TLS contexts from.

    Raises:
        ValueError: bad secret, cluster name, node id or naive ``now``.
        ConfigError: the key file is not an Ed25519 key, or the state
            directory cannot be written.
    """
    _load_crypto()
    if not node_id:
        raise ValueError("node id must not be empty")
    _require_aware(now)
    ca_pem, ca_key = derive_ca(secret, cluster)
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    tls_dir = state_dir / TLS_DIR_NAME
    key_path = tls_dir / KEY_FILE_NAME
    cert_path = tls_dir / CERT_FILE_NAME
    try:
        _ensure_private_dir(tls_dir)
        leaf_key = _load_or_create_leaf_key(key_path)
        try:
            cert_pem: bytes | None = cert_path.read_bytes()
        except FileNotFoundError:
            cert_pem = None
        problem = (
            "missing"
            if cert_pem is None
            else _leaf_problem(cert_pem, ca_cert, leaf_key, node_id, now)
        )
        if problem is not None:
            cert_pem = _issue_leaf(ca_cert, ca_key, leaf_key, node_id, now)
            _replace_file(cert_path, cert_pem, 0o644)
            logger.info("issued TLS certificate for node %r (previous one: %s)", node_id, problem)
    except OSError as e:
        path = e.filename or tls_dir
        raise ConfigError(
            f"{path}: {e.strerror or e}; meshd keeps its TLS key and certificate in "
            f"{tls_dir} and must be able to create and write it (check the state "
            "directory's owner and permissions)"
        ) from e
    assert cert_pem is not None
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsIdentity(
        node_id=node_id,
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        ca_fingerprint=_fingerprint(ca_cert),
    )


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: Ed25519PrivateKey,
    leaf_key: Ed25519PrivateKey,
    node_id: str,
    now: datetime,
) -> bytes:
    uri = NODE_URI_PREFIX + urllib.parse.quote(node_id, safe="")
    if len(node_id.encode("utf-8")) <= _CN_MAX_BYTES:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
        san_critical = False
    else:
        # RFC 5280 §4.2.1.6: an empty subject requires a critical SAN.
        subject = x509.Name([])
        san_critical = True
    public = leaf_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - LEAF_BACKDATE)
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
            critical=san_critical,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf_problem(
    cert_pem: bytes,
    ca_cert: x509.Certificate,
    leaf_key: Ed25519PrivateKey,
    node_id: str,
    now: datetime,
) -> str | None:
    """Why the persisted leaf cannot be reused, or None if it can."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unreadable"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "signed by another CA (cluster secret or name changed)"
    if _public_der(cert.public_key()) != _public_der(leaf_key.public_key()):
        return f"not for the key in {KEY_FILE_NAME}"
    named = _cert_node_id(cert)
    if named != node_id:
        return f"names node id {named!r}"
    if cert.not_valid_before_utc > now:
        return "not valid yet"
    if cert.not_valid_after_utc - now < LEAF_RENEW_MARGIN:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def _load_or_create_leaf_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _create_exclusive(path, pem, 0o600):
            logger.info("generated TLS key %s", path)
            return key
        data = path.read_bytes()  # another process won the race: use its key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("%s was mode %04o; setting 0600", path, mode)
        os.chmod(path, 0o600)
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        loaded = None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(
            f"{path}: not an unencrypted Ed25519 private key in PEM; move the file "
            "aside and restart meshd, which generates a new key and certificate"
        )
    return loaded


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: not a directory; remove it so that meshd can create it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data``, atomically; False if it already exists.

    The data goes to a fresh O_EXCL file first and is then hard-linked into
    place: link() fails if ``path`` exists (like O_EXCL), and nobody ever
    sees a half-written file, even after a crash.
    """
    tmp = _tmp_sibling(path)
    _write_new(tmp, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    tmp = _tmp_sibling(path)
    _write_new(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


########################################################################
# PKI mode
########################################################################


def pki_identity(
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    node_id: str,
    *,
    now: datetime | None = None,
) -> TlsIdentity:
    """This node's identity from operator-supplied PEM files.

    Checks, with a message that says what to do: the files can be read and
    parsed; the key is unencrypted, not world-accessible and matches the
    certificate; the certificate chains to a CA in ``ca_file`` (through any
    intermediates that follow it in ``cert_file``); it names ``node_id`` in
    a SAN URI (or, with no such URI, in its CN); it is valid at ``now``; its
    extended key usage allows both TLS server and client. Finally a TLS 1.3
    handshake of the identity with itself, in memory, proves that OpenSSL
    accepts what peers will see.

    Args:
        ca_file: PEM with the operator's CA certificate(s): the trust anchors.
        cert_file: PEM with this node's certificate, then any intermediates.
        key_file: PEM with the certificate's private key, unencrypted.
        node_id: this node's id.
        now: the wall-clock time (timezone-aware); defaults to the current time.

    Returns:
        The identity to build TLS contexts from.

    Raises:
        ConfigError: naming the ``[tls]`` setting at fault.
    """
    _load_crypto()
    when = datetime.now(UTC) if now is None else _require_aware(now)
    ca_where = f"[tls] ca_file = {ca_file}"
    cert_where = f"[tls] cert_file = {cert_file}"
    key_where = f"[tls] key_file = {key_file}"

    anchors = _read_certs(ca_file, ca_where, "the operator CA certificate")
    chain = _read_certs(cert_file, cert_where, "this node's certificate")
    key_pem = _read_file(key_file, key_where)
    try:
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
    except OSError as e:
        raise ConfigError(f"{key_where}: cannot read ({e.strerror or e})") from e
    if mode & 0o007:
        raise ConfigError(
            f"{key_where}: private key is accessible to every user (mode {mode:04o}); "
            f"run `chmod 600 {key_file}` (or 640 with group meshd)"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as e:
        raise ConfigError(
            f"{key_where}: the private key is encrypted; meshd needs it unencrypted, "
            f"readable only by meshd (e.g. `openssl pkey -in {key_file} -out KEY`)"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{key_where}: not a PEM private key ({e})") from e

    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise ConfigError(
            f"{cert_where}: the certificate is not for the private key in {key_where} "
            "(the first certificate in cert_file must be this node's, issued for that key)"
        )
    _verify_chain(chain, anchors, cert_where, ca_where)

    uri_ids = _uri_node_ids(leaf)
    named = _cert_node_id(leaf)
    if named != node_id:
        if len(uri_ids) > 1:
            found = f"several node URIs ({', '.join(sorted(map(repr, uri_ids)))})"
        elif uri_ids:
            found = f"node id {uri_ids[0]!r} (SAN URI)"
        elif named is not None:
            found = f"node id {named!r} (subject CN, no {NODE_URI_PREFIX} SAN URI)"
        else:
            found = f"no node id (no {NODE_URI_PREFIX} SAN URI, no single CN)"
        raise ConfigError(
            f"{cert_where}: the certificate names {found}, but this node is {node_id!r}; "
            f"issue it with SAN URI {NODE_URI_PREFIX}{urllib.parse.quote(node_id, safe='')} "
            "or set this node's id to the one it names"
        )
    if leaf.not_valid_before_utc > when:
        raise ConfigError(
            f"{cert_where}: the certificate is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}; check this host's clock "
            "or reissue it"
        )
    if leaf.not_valid_after_utc <= when:
        raise ConfigError(
            f"{cert_where}: the certificate expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}; issue a new one from the CA"
        )
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        missing = [
            name
            for oid, name in (
                (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
            )
            if oid not in eku
        ]
        if missing:
            raise ConfigError(
                f"{cert_where}: extended key usage lacks {' and '.join(missing)}; every "
                "node is both TLS client and server, so issue it with serverAuth and clientAuth"
            )

    pem = serialization.Encoding.PEM
    identity = TlsIdentity(
        node_id=node_id,
        ca_pem=b"".join(c.public_bytes(pem) for c in anchors),
        cert_pem=b"".join(c.public_bytes(pem) for c in chain),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        ca_fingerprint=_fingerprint(anchors[0]),
    )
    try:
        _self_handshake(identity)
    except ssl.SSLError as e:
        detail = getattr(e, "verify_message", None) or e.reason or str(e)
        raise ConfigError(
            f"{cert_where}: OpenSSL rejects this certificate for mutual TLS 1.3 ({detail}); "
            "peers would refuse it too: reissue it from the CA in [tls] ca_file"
        ) from e
    return identity


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{where}: cannot read ({e.strerror or e}); check the path and that "
            "the meshd user may read it"
        ) from e


def _read_certs(path: Path, where: str, what: str) -> list[x509.Certificate]:
    data = _read_file(path, where)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{where}: expected {what} in PEM ({e})") from e
    return certs


def _verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    cert_where: str,
    ca_where: str,
) -> None:
    """Follow signatures from the leaf through ``chain`` to one of ``anchors``."""
    current = chain[0]
    unused = list(chain[1:])
    while True:
        if any(_issued_by(current, ca) for ca in anchors):
            return
        parent = next((c for c in unused if _issued_by(current, c)), None)
        if parent is None:
            raise ConfigError(
                f"{cert_where}: the certificate (issuer: {current.issuer.rfc4514_string()!r}) "
                f"is not signed by the CA in {ca_where} "
                f"({', '.join(repr(a.subject.rfc4514_string()) for a in anchors)}); "
                "set ca_file to the CA that issued it, append any intermediate "
                "certificates to cert_file, or reissue the certificate from this CA"
            )
        unused.remove(parent)
        current = parent


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _self_handshake(identity: TlsIdentity) -> None:
    """Run a TLS handshake between a client and a server of ``identity``, in memory.

    Raises:
        ssl.SSLError: OpenSSL refused the certificate (either side's verdict).
    """
    _load_crypto()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(identity).wrap_bio(client_in, client_out, server_side=False)
    server = server_context(identity).wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    # A TLS 1.3 handshake with client auth takes 2 flights each way; 4 rounds is plenty.
    for _ in range(4):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        client_in.write(server_out.read())
        if client_done and server_done:
            break
    else:  # pragma: no cover - OpenSSL finishes in 2 rounds
        raise ssl.SSLError("in-memory handshake did not complete")
    if peer_node_id(server) != identity.node_id or peer_node_id(client) != identity.node_id:
        raise ssl.SSLError("peers would not read this node's id from the certificate")


########################################################################
# Contexts and peer identity
########################################################################


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """The context a node accepts streams with: TLS 1.3, client certificate required.

    Build it once per identity and reuse it: loading is ~1 ms.

    Raises:
        ssl.SSLError: the identity's PEMs do not load.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, identity)
    # No session tickets: streams are not resumed (a resumed session would
    # also skip the client certificate), so tickets would be wasted bytes.
    ctx.num_tickets = 0
    return ctx


def client_context(identity: TlsIdentity) -> ssl.SSLContext:
    """The context a node dials streams with: TLS 1.3, presents its certificate.

    Hostnames are not checked: call :func:`check_peer` with the node id you
    meant to reach after the handshake. Wrap with ``server_hostname=None``.

    Raises:
        ssl.SSLError: the identity's PEMs do not load.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # before verify_mode: identity is the node id, see above
    _configure(ctx, identity)
    return ctx


def _configure(ctx: ssl.SSLContext, identity: TlsIdentity) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # The flags Python 3.13's create_default_context() sets: RFC 5280 strict
    # checks, and the anchor may be an intermediate (the operator's "CA").
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    _load_chain(ctx, identity)


def _load_chain(ctx: ssl.SSLContext, identity: TlsIdentity) -> None:
    """ctx.load_cert_chain() from memory: it only takes a path."""
    pem = identity.cert_pem.rstrip(b"\n") + b"\n" + identity.key_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("meshd-tls", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                _write_all(fd, pem)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
                return
            except ssl.SSLError:
                raise
            except OSError:
                pass  # no /proc (a chroot, ProtectProc=): fall back to a file
            finally:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="meshd-tls-") as tmp:  # mkdtemp: 0700
        path = Path(tmp) / "chain.pem"
        try:
            _write_new(path, pem, 0o600)
            ctx.load_cert_chain(path)
        finally:
            path.unlink(missing_ok=True)


def peer_node_id(ssl_object: _HasPeerCert) -> str | None:
    """The node id named by the peer's verified certificate.

    The id comes from the single ``urn:meshd:node:`` SAN URI (unquoted; a
    non-canonical encoding or several different ids name no node); a
    certificate without such a URI names the node of its single subject CN.

    Args:
        ssl_object: an ssl.SSLObject or ssl.SSLSocket after the handshake,
            or a trio.SSLStream (which forwards getpeercert).

    Returns:
        The node id, or None if the certificate names none (or there is no
        verified peer certificate yet).
    """
    try:
        cert = ssl_object.getpeercert()
    except ValueError:  # handshake not done
        return None
    if not cert:
        return None
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    cns = [value for rdn in cert.get("subject", ()) for kind, value in rdn if kind == "commonName"]
    return _node_id_from_names(uris, cns)


def check_peer(ssl_object: _HasPeerCert, expected: str | None) -> str:
    """The peer's verified node id, checked against the node we meant to talk to.

    Args:
        ssl_object: as for :func:`peer_node_id`.
        expected: the node id the peer must have, or None to accept any.

    Returns:
        The peer's node id.

    Raises:
        PeerMismatch: the certificate names no node, or another one.
    """
    found = peer_node_id(ssl_object)
    if found is None:
        raise PeerMismatch(
            f"peer certificate names no node id, expected {expected!r}"
            if expected is not None
            else "peer certificate names no node id"
        )
    if expected is not None and found != expected:
        raise PeerMismatch(f"peer presented node id {found!r}, expected {expected!r}")
    return found


def _node_id_from_names(uris: Sequence[str], cns: Sequence[str]) -> str | None:
    """The one naming rule, shared by peer_node_id (ssl dict) and pki_identity (x509)."""
    node_uris = [u for u in uris if u.startswith(NODE_URI_PREFIX)]
    if node_uris:
        ids = {_decode_node_uri(u) for u in node_uris}
        if len(ids) != 1:
            return None
        return ids.pop()
    if len(cns) == 1 and cns[0]:
        return cns[0]
    return None


def _decode_node_uri(uri: str) -> str | None:
    encoded = uri[len(NODE_URI_PREFIX) :]
    try:
        node_id = urllib.parse.unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
    # One spelling per id: "a%62" is not "ab".
    if not node_id or urllib.parse.quote(node_id, safe="") != encoded:
        return None
    return node_id


def _uri_node_ids(cert: x509.Certificate) -> list[str]:
    """Every node URI's id (or, if it does not decode, the URI itself), for messages."""
    uris = [u for u in _san_uris(cert) if u.startswith(NODE_URI_PREFIX)]
    return sorted({_decode_node_uri(u) or u for u in uris})


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _cert_node_id(cert: x509.Certificate) -> str | None:
    _load_crypto()
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return _node_id_from_names(_san_uris(cert), cns)


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


def _require_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    return now


########################################################################
# Certificate work in a child process
########################################################################


def identity_request(config: Config, node_id: str, secret: bytes) -> dict[str, str]:
    """What :func:`isolated_identity` needs for this node, from its configuration."""
    import base64

    if config.tls.mode == "pki":
        assert config.tls.ca_file and config.tls.cert_file and config.tls.key_file
        return {
            "mode": "pki",
            "ca_file": str(config.tls.ca_file),
            "cert_file": str(config.tls.cert_file),
            "key_file": str(config.tls.key_file),
            "node_id": node_id,
        }
    return {
        "mode": "derived",
        "secret": base64.b64encode(secret).decode(),
        "cluster": config.cluster.name,
        "node_id": node_id,
        "state_dir": str(config.state.dir),
    }


def isolated_identity(request: dict[str, str]) -> TlsIdentity:
    """Build this node's identity in a short-lived child process.

    Same result as :func:`derived_identity` (``request["mode"] == "derived"``,
    with ``secret`` in base64, ``cluster``, ``node_id``, ``state_dir``) or
    :func:`pki_identity` (``"pki"``, with ``ca_file``, ``cert_file``,
    ``key_file``, ``node_id``), but the X.509 code never loads into the
    calling process. The request (which holds the secret) travels on the
    child's stdin, never on its command line. The child's log lines are
    relayed to this process's log.

    Raises:
        ConfigError: the child reported a configuration problem, or failed.
    """
    import json
    import subprocess
    import sys

    cached = _cached_identity(request)
    if cached is not None:
        return cached
    proc = subprocess.run(
        [sys.executable, "-m", "meshd.runtime.tls"],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    for line in proc.stderr.decode(errors="replace").splitlines():
        logger.info("%s", line)
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        raise ConfigError(
            f"the TLS identity helper failed (exit status {proc.returncode}); see the log above"
        ) from None
    if not reply.get("ok"):
        raise ConfigError(str(reply.get("error", "the TLS identity helper failed")))
    ident = reply["identity"]
    return TlsIdentity(
        node_id=ident["node_id"],
        ca_pem=ident["ca_pem"].encode(),
        cert_pem=ident["cert_pem"].encode(),
        key_pem=ident["key_pem"].encode(),
        ca_fingerprint=ident["ca_fingerprint"],
    )


# After the child has derived or checked a node's certificate it leaves a
# stamp (tls/identity.json, no secrets in it: the CA and leaf certificates
# are public, the key stays in node.key). A restart with the same secret,
# cluster and node id, and a leaf that is still far from expiry, then skips
# the child process (and its X.509 imports) altogether.
_STAMP_NAME = "identity.json"


def _stamp_inputs(request: dict[str, str]) -> str:
    # A one-way digest of what the identity was derived from: a changed
    # secret, cluster name or node id never matches an old stamp.
    fields = [request["mode"], request["secret"], request["cluster"], request["node_id"]]
    return hashlib.sha256("\0".join(fields).encode()).hexdigest()


def _cached_identity(request: dict[str, str]) -> TlsIdentity | None:
    import json

    if request.get("mode") != "derived":
        return None  # operator PKI files may change at any time: always check
    tls_dir = Path(request["state_dir"]) / TLS_DIR_NAME
    try:
        stamp = json.loads((tls_dir / _STAMP_NAME).read_text())
        cert_pem = (tls_dir / CERT_FILE_NAME).read_bytes()
        key_pem = (tls_dir / KEY_FILE_NAME).read_bytes()
        fresh_until = datetime.fromisoformat(stamp["renew_after"])
        if (
            stamp["inputs"] != _stamp_inputs(request)
            or stamp["cert_sha256"] != hashlib.sha256(cert_pem).hexdigest()
            or datetime.now(UTC) >= fresh_until
        ):
            return None
        return TlsIdentity(
            node_id=request["node_id"],
            ca_pem=stamp["ca_pem"].encode(),
            cert_pem=cert_pem,
            key_pem=key_pem,
            ca_fingerprint=stamp["ca_fingerprint"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_stamp(request: dict[str, str], identity: TlsIdentity) -> None:
    import json

    _load_crypto()
    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    stamp = {
        "inputs": _stamp_inputs(request),
        "cert_sha256": hashlib.sha256(identity.cert_pem).hexdigest(),
        "renew_after": (cert.not_valid_after_utc - LEAF_RENEW_MARGIN).isoformat(),
        "ca_pem": identity.ca_pem.decode(),
        "ca_fingerprint": identity.ca_fingerprint,
    }
    _replace_file(
        Path(request["state_dir"]) / TLS_DIR_NAME / _STAMP_NAME, json.dumps(stamp).encode(), 0o644
    )


def _main() -> int:
    """``python -m meshd.runtime.tls``: the child side of :func:`isolated_identity`."""
    import base64
    import json
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    request = json.load(sys.stdin)
    try:
        if request["mode"] == "pki":
            identity = pki_identity(
                Path(request["ca_file"]),
                Path(request["cert_file"]),
                Path(request["key_file"]),
                request["node_id"],
            )
        else:
            identity = derived_identity(
                base64.b64decode(request["secret"]),
                request["cluster"],
                request["node_id"],
                Path(request["state_dir"]),
                now=datetime.now(UTC),
            )
    except (ConfigError, ValueError) as exc:
        json.dump({"ok": False, "error": str(exc)}, sys.stdout)
        return 78
    if request["mode"] == "derived":
        try:
            _write_stamp(request, identity)
        except OSError as exc:  # only an optimisation for the next start
            logger.warning("could not write the TLS identity stamp: %s", exc)
    json.dump(
        {
            "ok": True,
            "identity": {
                "node_id": identity.node_id,
                "ca_pem": identity.ca_pem.decode(),
                "cert_pem": identity.cert_pem.decode(),
                "key_pem": identity.key_pem.decode(),
                "ca_fingerprint": identity.ca_fingerprint,
            },
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
