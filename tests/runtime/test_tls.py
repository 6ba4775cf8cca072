"""Tests for meshd.runtime.tls: derived CA, leaf persistence, PKI mode, real TLS 1.3 handshakes.

Handshakes run over loopback TCP with trio.SSLStream; every network wait is
bounded by trio.fail_after, nothing sleeps.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
import tempfile
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.errors import ConfigError, MeshError
from meshd.runtime import tls
from meshd.runtime.tls import (
    NODE_URI_PREFIX,
    PeerMismatch,
    TlsIdentity,
    check_peer,
    client_context,
    derive_ca,
    derived_identity,
    peer_node_id,
    pki_identity,
    server_context,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
CLUSTER = "prod"
#: Every byte of the derived CA is protocol (see the WARNING in tls.py): if this
#: changes, nodes on the old and new code stop trusting each other.
GOLDEN_CA_SHA256 = "96dc71ce2a06e1fe7339aa076fabf290d8b91f4a238c222e96f2982a35488557"
TIMEOUT = 10.0


def _now() -> datetime:
    # Real handshakes check validity against the real clock.
    return datetime.now(UTC)


def _identity(
    state_dir: Path,
    node_id: str,
    *,
    secret: bytes = SECRET,
    cluster: str = CLUSTER,
    now: datetime | None = None,
) -> TlsIdentity:
    return derived_identity(secret, cluster, node_id, state_dir, now=now or _now())


########################################################################
# Loopback handshake harness
########################################################################


@attrs.define
class Side:
    """What one end of a connection saw."""

    handshake_done: bool = False
    handshake_ms: float | None = None
    peer: str | None = None
    checked: str | PeerMismatch | None = None
    version: str | None = None
    received: bytes | bytearray | None = None
    error: trio.BrokenResourceError | None = None


async def _serve_one(
    listener: trio.SocketListener, ctx: ssl.SSLContext, side: Side, expect: str | None
) -> None:
    tcp = await listener.accept()
    stream = trio.SSLStream(tcp, ctx, server_side=True)
    try:
        await stream.do_handshake()
        side.handshake_done = True
        side.peer = peer_node_id(stream)
        side.version = stream.version()
        try:
            side.checked = check_peer(stream, expect)
        except PeerMismatch as e:
            side.checked = e
        side.received = await stream.receive_some(1024)
        await stream.send_all(b"pong")
        await stream.aclose()
    except trio.BrokenResourceError as e:
        side.error = e
    finally:
        await trio.aclose_forcefully(stream)


async def _dial(port: int, ctx: ssl.SSLContext, side: Side, expect: str | None) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=None)
    try:
        started = trio.current_time()
        await stream.do_handshake()
        side.handshake_ms = (trio.current_time() - started) * 1000
        side.handshake_done = True
        side.peer = peer_node_id(stream)
        side.version = stream.version()
        try:
            side.checked = check_peer(stream, expect)
        except PeerMismatch as e:
            side.checked = e
        await stream.send_all(b"ping")
        side.received = await stream.receive_some(1024)
    except trio.BrokenResourceError as e:
        side.error = e
    finally:
        await trio.aclose_forcefully(stream)


async def connect(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_expects: str | None = None,
    client_expects: str | None = None,
) -> tuple[Side, Side]:
    """One connection over loopback: the client sends b"ping", the server answers b"pong"."""
    server, client = Side(), Side()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    try:
        port = listener.socket.getsockname()[1]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve_one, listener, server_ctx, server, server_expects)
                nursery.start_soon(_dial, port, client_ctx, client, client_expects)
    finally:
        for each in listeners:
            await each.aclose()
    return server, client


def _assert_refused(server: Side, client: Side) -> None:
    """The server refused the connection and no application data went through."""
    assert server.error is not None
    assert isinstance(server.error.__cause__, ssl.SSLError)
    assert not server.handshake_done
    assert server.received is None
    assert client.received in (None, b"")  # never b"pong"
    assert client.error is not None or client.received == b""


########################################################################
# Real handshakes, derived mode
########################################################################


@pytest.mark.parametrize(
    ("server_id", "client_id"),
    [
        ("alpha", "beta"),
        # Percent-encoding round trip, and an id too long for a CN (SAN only).
        ("host/1 ü:x%", "n" * 100),
    ],
)
async def test_derived_nodes_complete_mutual_tls13_and_learn_each_others_id(
    tmp_path: Path, server_id: str, client_id: str
) -> None:
    a = _identity(tmp_path / "a", server_id)
    b = _identity(tmp_path / "b", client_id)
    assert a.ca_pem == b.ca_pem  # derived independently, byte-identical anchor
    assert a.ca_fingerprint == b.ca_fingerprint
    assert a.cert_pem != b.cert_pem
    assert a.key_pem != b.key_pem

    server, client = await connect(
        server_context(a), client_context(b), server_expects=client_id, client_expects=server_id
    )

    assert server.error is None
    assert client.error is None
    assert server.version == client.version == "TLSv1.3"
    assert server.peer == server.checked == client_id
    assert client.peer == client.checked == server_id
    assert server.received == b"ping"
    assert client.received == b"pong"
    assert client.handshake_ms is not None


async def test_client_without_certificate_is_refused(tmp_path: Path) -> None:
    a = _identity(tmp_path / "a", "alpha")
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=a.ca_pem.decode())  # trusts the server, has no cert

    server, client = await connect(server_context(a), anonymous)

    _assert_refused(server, client)
    assert server.error is not None
    assert "certificate" in str(server.error.__cause__).lower()
    # TLS 1.3: the client's own handshake completes before the server checks
    # its (absent) certificate; the refusal reaches it as an alert on read.
    assert client.peer == "alpha"


@pytest.mark.parametrize(
    ("foreign_secret", "foreign_cluster"),
    [(OTHER_SECRET, CLUSTER), (SECRET, "staging")],
    ids=["other-secret", "other-cluster-name"],
)
@pytest.mark.parametrize(
    "foreign_trusts_us",
    [False, True],
    # True: the foreign node also trusts our (public) CA certificate, as an
    # attacker without the secret could; then OUR side must do the refusing.
    ids=["foreign-trusts-own-ca", "foreign-trusts-our-ca-too"],
)
@pytest.mark.parametrize("foreign_side", ["client", "server"])
async def test_node_of_another_cluster_is_refused_both_directions(
    tmp_path: Path,
    foreign_secret: bytes,
    foreign_cluster: str,
    foreign_trusts_us: bool,
    foreign_side: str,
) -> None:
    ours = _identity(tmp_path / "ours", "alpha")
    theirs = _identity(tmp_path / "theirs", "beta", secret=foreign_secret, cluster=foreign_cluster)
    assert ours.ca_pem != theirs.ca_pem
    if foreign_trusts_us:
        theirs = attrs.evolve(theirs, ca_pem=theirs.ca_pem + ours.ca_pem)
    if foreign_side == "client":
        server, client = await connect(server_context(ours), client_context(theirs))
    else:
        server, client = await connect(server_context(theirs), client_context(ours))

    _assert_refused(server, client)
    assert server.error is not None
    if foreign_side == "client" and foreign_trusts_us:
        # Our server checks the foreign client certificate and refuses it.
        assert isinstance(server.error.__cause__, ssl.SSLCertVerificationError)
        assert client.received in (None, b"")
    else:
        # The client checks the server's certificate first and aborts its own handshake.
        assert not client.handshake_done
        assert isinstance(client.error, trio.BrokenResourceError)
        assert isinstance(client.error.__cause__, ssl.SSLCertVerificationError)


async def test_check_peer_raises_when_a_node_claims_another_id(tmp_path: Path) -> None:
    beta = _identity(tmp_path / "b", "beta")
    alpha = _identity(tmp_path / "a", "alpha")

    server, client = await connect(
        server_context(beta), client_context(alpha), client_expects="gamma"
    )

    assert client.peer == "beta"
    assert isinstance(client.checked, PeerMismatch)
    assert isinstance(client.checked, MeshError)
    assert str(client.checked) == "peer presented node id 'beta', expected 'gamma'"
    assert server.checked == "alpha"  # expected=None accepts any named node


async def test_check_peer_raises_when_the_certificate_names_no_node(tmp_path: Path) -> None:
    # A secret holder can mint anything; a leaf without URI and CN names nobody.
    ca_pem, ca_key = derive_ca(SECRET, CLUSTER)
    ca = x509.load_pem_x509_certificate(ca_pem)
    key = Ed25519PrivateKey.generate()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nobody")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, None)
    )
    nobody = TlsIdentity(
        node_id="nobody",
        ca_pem=ca_pem,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
        ca_fingerprint="-",
    )
    alpha = _identity(tmp_path / "a", "alpha")

    _, client = await connect(server_context(nobody), client_context(alpha), client_expects="beta")

    assert client.peer is None
    assert isinstance(client.checked, PeerMismatch)
    assert "names no node id" in str(client.checked)


@pytest.mark.parametrize("refusing_side", ["server", "client"])
async def test_tls12_peer_is_refused(tmp_path: Path, refusing_side: str) -> None:
    a = _identity(tmp_path / "a", "alpha")
    b = _identity(tmp_path / "b", "beta")
    server_ctx, client_ctx = server_context(a), client_context(b)
    old = client_ctx if refusing_side == "server" else server_ctx
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2

    server, client = await connect(server_ctx, client_ctx)

    _assert_refused(server, client)
    assert not client.handshake_done
    assert isinstance(client.error, trio.BrokenResourceError)


########################################################################
# Derived CA
########################################################################


def test_derive_ca_is_byte_identical_and_pinned() -> None:
    pem1, key1 = derive_ca(SECRET, CLUSTER)
    pem2, key2 = derive_ca(bytearray(SECRET), CLUSTER)  # type: ignore[arg-type]
    assert pem1 == pem2
    assert _raw_private(key1) == _raw_private(key2)
    der = x509.load_pem_x509_certificate(pem1).public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == GOLDEN_CA_SHA256


def test_derive_ca_fields() -> None:
    pem, key = derive_ca(SECRET, CLUSTER)
    ca = x509.load_pem_x509_certificate(pem)
    expected_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "meshd cluster CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER),
        ]
    )
    assert ca.subject == ca.issuer == expected_name
    assert ca.not_valid_before_utc == datetime(2000, 1, 1, tzinfo=UTC)
    assert ca.not_valid_after_utc == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert 0 < ca.serial_number < 2**159
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    ca.verify_directly_issued_by(ca)  # self-signed with the derived key
    assert _public_raw(ca.public_key()) == _public_raw(key.public_key())


def test_derive_ca_differs_per_secret_and_cluster() -> None:
    base = derive_ca(SECRET, CLUSTER)[0]
    assert derive_ca(OTHER_SECRET, CLUSTER)[0] != base
    assert derive_ca(SECRET, "staging")[0] != base


@pytest.mark.parametrize(
    ("secret", "cluster", "message"),
    [(b"short", CLUSTER, "at least 16 bytes"), (SECRET, "", "cluster name")],
)
def test_derive_ca_rejects_weak_input(secret: bytes, cluster: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        derive_ca(secret, cluster)


########################################################################
# Derived leaf: persistence and reissue
########################################################################


def test_leaf_key_is_private_and_reused(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        first = _identity(tmp_path, "alpha")
    finally:
        os.umask(old_umask)
    tls_dir = tmp_path / "tls"
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tls_dir / "node.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in tls_dir.iterdir()) == ["node.crt", "node.key"]  # no temp files
    assert (tls_dir / "node.key").read_bytes() == first.key_pem
    assert (tls_dir / "node.crt").read_bytes() == first.cert_pem

    second = _identity(tmp_path, "alpha")
    assert second == first  # same key, same certificate: nothing reissued


def test_leaf_certificate_fields(tmp_path: Path) -> None:
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    ident = _identity(tmp_path, "host/1 ü", now=now)
    cert = x509.load_pem_x509_certificate(ident.cert_pem)
    ca = x509.load_pem_x509_certificate(ident.ca_pem)
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        NODE_URI_PREFIX + urllib.parse.quote("host/1 ü", safe="")
    ]
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host/1 ü")])
    assert cert.not_valid_before_utc == now - timedelta(hours=1)
    assert cert.not_valid_after_utc == now + timedelta(days=825)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    key = serialization.load_pem_private_key(ident.key_pem, None)
    assert isinstance(key, Ed25519PrivateKey)
    assert _public_raw(cert.public_key()) == _public_raw(key.public_key())
    assert (
        ident.ca_fingerprint
        == hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    )


@pytest.mark.parametrize(
    ("change", "reissued"),
    [
        ({}, False),
        ({"secret": OTHER_SECRET}, True),
        ({"cluster": "staging"}, True),
        ({"node_id": "beta"}, True),
        ({"now_offset": timedelta(days=794)}, False),  # 31 days left: keep
        ({"now_offset": timedelta(days=796)}, True),  # 29 days left: renew
        ({"now_offset": timedelta(hours=-2)}, True),  # clock went back: not valid yet
        ({"delete": True}, True),
        ({"corrupt": True}, True),
    ],
    ids=lambda v: repr(v),
)
def test_leaf_certificate_reissued_when_stale(
    tmp_path: Path, change: dict[str, object], reissued: bool
) -> None:
    now = datetime(2030, 6, 1, tzinfo=UTC)
    first = _identity(tmp_path, "alpha", now=now)
    cert_path = tmp_path / "tls" / "node.crt"
    if change.get("delete"):
        cert_path.unlink()
    if change.get("corrupt"):
        cert_path.write_bytes(b"garbage")
    secret = change.get("secret", SECRET)
    cluster = change.get("cluster", CLUSTER)
    node_id = change.get("node_id", "alpha")
    later = now + change.get("now_offset", timedelta(0))  # type: ignore[operator]
    assert isinstance(secret, bytes)
    assert isinstance(cluster, str)
    assert isinstance(node_id, str)

    second = _identity(tmp_path, node_id, secret=secret, cluster=cluster, now=later)

    assert second.key_pem == first.key_pem  # the key never changes
    assert (second.cert_pem != first.cert_pem) == reissued
    assert cert_path.read_bytes() == second.cert_pem
    cert = x509.load_pem_x509_certificate(second.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(second.ca_pem))
    assert tls._cert_node_id(cert) == node_id
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["node.crt", "node.key"]


def test_leaf_key_permissions_are_repaired(tmp_path: Path) -> None:
    _identity(tmp_path, "alpha")
    key_path = tmp_path / "tls" / "node.key"
    key_path.chmod(0o644)
    (tmp_path / "tls").chmod(0o755)
    _identity(tmp_path, "alpha")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700


def test_corrupt_leaf_key_is_a_config_error_not_overwritten(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(mode=0o700)
    (tls_dir / "node.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=r"node\.key: not an unencrypted Ed25519"):
        _identity(tmp_path, "alpha")
    assert (tls_dir / "node.key").read_bytes() == b"not a key"


def test_derived_identity_needs_aware_now(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        derived_identity(SECRET, CLUSTER, "alpha", tmp_path, now=datetime(2030, 1, 1))


def test_identity_repr_hides_the_key(tmp_path: Path) -> None:
    ident = _identity(tmp_path, "alpha")
    text = repr(ident)
    assert "PRIVATE" not in text
    assert "BEGIN" not in text
    assert ident.ca_fingerprint in text


########################################################################
# Contexts
########################################################################


def test_contexts_are_tls13_only_and_require_certificates(tmp_path: Path) -> None:
    ident = _identity(tmp_path, "alpha")
    for ctx in (server_context(ident), client_context(ident)):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
    assert server_context(ident).num_tickets == 0


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "tempfile"])
def test_key_never_lingers_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memfd: bool
) -> None:
    ident = _identity(tmp_path / "state", "alpha")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    if memfd:
        assert hasattr(os, "memfd_create"), "Linux has memfd_create"
    else:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    tls._self_handshake(ident)  # builds both contexts and handshakes in memory
    assert list(scratch.iterdir()) == []


########################################################################
# peer_node_id naming rule
########################################################################


@attrs.frozen
class FakePeer:
    cert: dict[str, object] | None
    ready: bool = True

    def getpeercert(self, binary_form: bool = False) -> dict[str, object] | None:
        if not self.ready:
            raise ValueError("handshake not done yet")
        return self.cert


def _peer(uris: Sequence[str] = (), cns: Sequence[str] = ()) -> FakePeer:
    return FakePeer(
        {
            "subject": tuple((("commonName", cn),) for cn in cns),
            "subjectAltName": tuple(("URI", u) for u in uris),
        }
    )


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (_peer([NODE_URI_PREFIX + "alpha"], ["ignored"]), "alpha"),
        (_peer([NODE_URI_PREFIX + "host%2F1%20%C3%BC"]), "host/1 ü"),
        (_peer(["spiffe://x/y", NODE_URI_PREFIX + "alpha"]), "alpha"),
        (_peer([NODE_URI_PREFIX + "a", NODE_URI_PREFIX + "a"]), "a"),
        (_peer([NODE_URI_PREFIX + "a", NODE_URI_PREFIX + "b"]), None),  # ambiguous
        (_peer([NODE_URI_PREFIX + "a%62"]), None),  # non-canonical spelling of "ab"
        (_peer([NODE_URI_PREFIX + "%ff"]), None),  # not UTF-8
        (_peer([NODE_URI_PREFIX]), None),  # empty id
        (_peer([NODE_URI_PREFIX + "bad"], ["cn-not-used"]), "bad"),
        (_peer([NODE_URI_PREFIX + "%zz"], ["cn"]), None),  # a bad URI does not fall back to CN
        (_peer([], ["alpha"]), "alpha"),  # PKI: CN when no node URI
        (_peer(["spiffe://x/y"], ["alpha"]), "alpha"),
        (_peer([], ["a", "b"]), None),
        (_peer(), None),
        (FakePeer({}), None),
        (FakePeer(None), None),
        (FakePeer(None, ready=False), None),
    ],
)
def test_peer_node_id(peer: FakePeer, expected: str | None) -> None:
    assert peer_node_id(peer) == expected


def test_check_peer_without_expectation_still_needs_a_node() -> None:
    assert check_peer(_peer([NODE_URI_PREFIX + "a"]), None) == "a"
    with pytest.raises(PeerMismatch, match="names no node id"):
        check_peer(_peer(), None)
    with pytest.raises(PeerMismatch, match=r"peer presented node id 'a', expected 'b'"):
        check_peer(_peer([NODE_URI_PREFIX + "a"]), "b")


########################################################################
# PKI mode
########################################################################


@attrs.frozen
class Pki:
    """A small operator CA for tests (ECDSA P-256, as operators commonly use)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "Operator Root CA", *, is_ca: bool = True) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, SHA256())
        )
        return cls(key, cert)

    def intermediate(self, name: str = "Operator Issuing CA") -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._aki(), critical=False)
            .sign(self.key, SHA256())
        )
        return Pki(key, cert)

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    def issue(
        self,
        *,
        uris: Sequence[str] = (),
        cn: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        eku: Sequence[x509.ObjectIdentifier] = (
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(hours=1))
            .not_valid_after(not_after or now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._aki(), critical=False)
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=not cn,
            )
        return builder.sign(self.key, SHA256()), key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _uri(node_id: str) -> str:
    return NODE_URI_PREFIX + urllib.parse.quote(node_id, safe="")


@attrs.frozen
class PkiFiles:
    ca: Path
    cert: Path
    key: Path


def _write_pki(
    directory: Path,
    ca: x509.Certificate | Sequence[x509.Certificate],
    chain: x509.Certificate | Sequence[x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
    *,
    key_mode: int = 0o600,
    password: bytes | None = None,
) -> PkiFiles:
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    cas = [ca] if isinstance(ca, x509.Certificate) else list(ca)
    certs = [chain] if isinstance(chain, x509.Certificate) else list(chain)
    files = PkiFiles(directory / "ca.pem", directory / "node.pem", directory / "node.key")
    files.ca.write_bytes(b"".join(c.public_bytes(pem) for c in cas))
    files.cert.write_bytes(b"".join(c.public_bytes(pem) for c in certs))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    files.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, encryption)
    )
    files.key.chmod(key_mode)
    return files


def _load(files: PkiFiles, node_id: str) -> TlsIdentity:
    return pki_identity(files.ca, files.cert, files.key, node_id)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def test_pki_identity_accepts_a_node_certificate(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.issue(uris=[_uri("alpha")], cn="alpha.example.net")
    ident = _load(_write_pki(tmp_path, pki.cert, cert, key), "alpha")
    assert ident.node_id == "alpha"
    assert (
        ident.ca_fingerprint
        == hashlib.sha256(pki.cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    )
    assert x509.load_pem_x509_certificate(ident.cert_pem) == cert


def test_pki_identity_falls_back_to_cn_without_node_uri(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.issue(uris=["spiffe://example.net/alpha"], cn="alpha")
    assert _load(_write_pki(tmp_path, pki.cert, cert, key), "alpha").node_id == "alpha"


def test_pki_identity_accepts_a_chain_through_an_intermediate(tmp_path: Path, pki: Pki) -> None:
    issuing = pki.intermediate()
    cert, key = issuing.issue(uris=[_uri("alpha")])
    files = _write_pki(tmp_path, pki.cert, [cert, issuing.cert], key)
    ident = _load(files, "alpha")
    assert len(x509.load_pem_x509_certificates(ident.cert_pem)) == 2


async def test_pki_nodes_complete_mutual_tls13(tmp_path: Path, pki: Pki) -> None:
    issuing = pki.intermediate()
    cert_a, key_a = pki.issue(uris=[_uri("alpha")])
    cert_b, key_b = issuing.issue(cn="beta")  # CN only, through an intermediate
    a = _load(_write_pki(tmp_path / "a", pki.cert, cert_a, key_a), "alpha")
    b = _load(_write_pki(tmp_path / "b", pki.cert, [cert_b, issuing.cert], key_b), "beta")

    server, client = await connect(
        server_context(a), client_context(b), server_expects="beta", client_expects="alpha"
    )

    assert (server.checked, client.checked) == ("beta", "alpha")
    assert client.received == b"pong"


def _pki_case(tmp_path: Path, pki: Pki, case: str) -> PkiFiles:
    """Files that pki_identity(..., "alpha") must refuse."""
    now = _now()
    if case == "other-node-id":
        cert, key = pki.issue(uris=[_uri("beta")], cn="alpha")
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "other-cn":
        cert, key = pki.issue(cn="beta")
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "two-node-ids":
        cert, key = pki.issue(uris=[_uri("alpha"), _uri("beta")])
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "not-signed-by-ca":
        cert, key = Pki.create("Somebody Else").issue(uris=[_uri("alpha")])
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "same-name-other-ca":
        cert, key = Pki.create("Operator Root CA").issue(uris=[_uri("alpha")])
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "missing-intermediate":
        cert, key = pki.intermediate().issue(uris=[_uri("alpha")])
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "key-mismatch":
        cert, _ = pki.issue(uris=[_uri("alpha")])
        return _write_pki(tmp_path, pki.cert, cert, ec.generate_private_key(ec.SECP256R1()))
    if case == "expired":
        cert, key = pki.issue(
            uris=[_uri("alpha")],
            not_before=now - timedelta(days=10),
            not_after=now - timedelta(days=1),
        )
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "not-yet-valid":
        cert, key = pki.issue(uris=[_uri("alpha")], not_before=now + timedelta(days=1))
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "server-auth-only":
        cert, key = pki.issue(uris=[_uri("alpha")], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        return _write_pki(tmp_path, pki.cert, cert, key)
    if case == "anchor-is-not-a-ca":
        # Signatures check out; only OpenSSL's path validation (the in-memory
        # self-handshake) notices that the "CA" may not issue certificates.
        not_ca = Pki.create(is_ca=False)
        cert, key = not_ca.issue(uris=[_uri("alpha")])
        return _write_pki(tmp_path, not_ca.cert, cert, key)
    if case == "not-pem":
        cert, key = pki.issue(uris=[_uri("alpha")])
        files = _write_pki(tmp_path, pki.cert, cert, key)
        files.cert.write_bytes(b"hello")
        return files
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other-node-id", r"names node id 'beta' \(SAN URI\), but this node is 'alpha'"),
        ("other-cn", r"names node id 'beta' \(subject CN"),
        ("two-node-ids", "several node URIs"),
        ("not-signed-by-ca", "is not signed by the CA in"),
        ("same-name-other-ca", "is not signed by the CA in"),
        ("missing-intermediate", "append any intermediate"),
        ("key-mismatch", "not for the private key"),
        ("expired", "expired on"),
        ("not-yet-valid", "not valid before"),
        ("server-auth-only", "lacks clientAuth"),
        ("anchor-is-not-a-ca", "OpenSSL rejects this certificate for mutual TLS 1.3"),
        ("not-pem", "expected this node's certificate in PEM"),
    ],
)
def test_pki_identity_refuses_with_a_config_error_naming_cert_file(
    tmp_path: Path, pki: Pki, case: str, message: str
) -> None:
    files = _pki_case(tmp_path, pki, case)
    with pytest.raises(ConfigError, match=message) as info:
        _load(files, "alpha")
    assert str(info.value).startswith(f"[tls] cert_file = {files.cert}: ")


@pytest.mark.parametrize(
    ("case", "setting", "message"),
    [
        ("world-readable", "key_file", "accessible to every user"),
        ("encrypted", "key_file", "encrypted"),
        ("missing-ca", "ca_file", "cannot read"),
    ],
)
def test_pki_identity_refuses_bad_key_and_ca_files(
    tmp_path: Path, pki: Pki, case: str, setting: str, message: str
) -> None:
    cert, key = pki.issue(uris=[_uri("alpha")])
    files = _write_pki(
        tmp_path,
        pki.cert,
        cert,
        key,
        key_mode=0o644 if case == "world-readable" else 0o600,
        password=b"hunter2" if case == "encrypted" else None,
    )
    if case == "missing-ca":
        files.ca.unlink()
    with pytest.raises(ConfigError, match=message) as info:
        _load(files, "alpha")
    assert str(info.value).startswith(f"[tls] {setting} = ")


########################################################################
# helpers
########################################################################


def _key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _public_raw(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _isolated_request(secret: bytes, state_dir: Path, node: str = "alpha") -> dict[str, str]:
    import base64

    return {
        "mode": "derived",
        "secret": base64.b64encode(secret).decode(),
        "cluster": "meshd",
        "node_id": node,
        "state_dir": str(state_dir),
    }


def test_isolated_identity_runs_in_a_child_then_reuses_its_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    secret = bytes(range(32))
    first = tls.isolated_identity(_isolated_request(secret, tmp_path))
    assert first.node_id == "alpha"
    # Same inputs, fresh leaf: no child process the second time.
    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("the stamp should have made the child unnecessary")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert tls.isolated_identity(_isolated_request(secret, tmp_path)) == first
    # Another secret: the stamp does not match, so the child must run again.
    monkeypatch.undo()
    other = tls.isolated_identity(_isolated_request(bytes(range(1, 33)), tmp_path))
    assert other.ca_fingerprint != first.ca_fingerprint
    assert other.cert_pem != first.cert_pem


def test_isolated_identity_reports_config_errors(tmp_path: Path) -> None:
    request = _isolated_request(bytes(range(32)), tmp_path)
    request["mode"] = "pki"
    request.update(ca_file=str(tmp_path / "nope.pem"), cert_file=str(tmp_path / "c.pem"), key_file=str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match=r"\[tls\]"):
        tls.isolated_identity(request)
