"""Process-level tests: real ``python -m meshd run`` daemons on 127.0.0.1.

Nothing is mocked. Each daemon is its own process with its own UDP and TCP
sockets, encryption, mutual TLS and control socket; the tests talk to them
through the control socket (``LocalCluster.request``), ``meshctl`` run as a
subprocess, and plain sockets that play an attacker on loopback.

Waiting is always polling with a deadline (``LocalCluster.wait_until``), never
a fixed sleep; "nothing happens" is checked by polling for a stated time.

Bounds used below (lan profile: probe interval 1 s, probe timeout 0.5 s,
suspicion_mult 4, so for N = 5 the minimum suspicion timeout is
4 * max(1, log10(5)) * 1 s = 4 s and Lifeguard starts the timer at
6 * 4 = 24 s, shortened by independent confirmations):

* CONVERGE_S: every node sees every node alive, counted from the moment all
  control sockets answer.
* FAILURE_DETECT_S: every survivor marks a SIGKILLed node dead.
* GOSSIP_S: a change (leave, tags, rejoin) reaches every member.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import os
import random
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from meshd.cli.meshctl import HINT_UNAVAILABLE
from meshd.config import generate_secret, read_secret, write_init
from meshd.core import codec, crypto
from meshd.core.keyring import KEY_ID_SIZE, Keyring, fingerprint
from meshd.core.messages import Ack, Ping, PushNodeState, PushPull
from meshd.core.types import MemberState, NodeId
from meshd.runtime import tls
from meshd.testing.cluster import LocalCluster, free_ports

CONVERGE_S = 10.0
FAILURE_DETECT_S = 20.0
GOSSIP_S = 10.0
#: How long "X never happens" is watched.
QUIET_S = 5.0
#: How long to wait for an ack that should come (loopback: milliseconds).
ACK_S = 3.0
#: How long to wait for an ack that must NOT come.
NO_ACK_S = 1.0
#: Time limit for one meshctl or meshd subprocess.
SUBPROCESS_S = 30.0

#: The UDP envelope is version 1, kind 0 (plain) before sealing.
_PLAIN = bytes([codec.WIRE_VERSION, codec.ENVELOPE_PLAIN])


# ==================================================================== helpers


def members(c: LocalCluster, observer: str) -> dict[str, dict[str, Any]]:
    """``observer``'s member list: name -> member JSON."""
    return {m["name"]: m for m in c.request(observer, "members")["members"]}


def counters(c: LocalCluster, name: str) -> dict[str, int]:
    result: dict[str, int] = c.request(name, "status")["counters"]
    return result


def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def converged(c: LocalCluster, names: Iterable[str]) -> bool:
    """Every node in ``names`` sees every node in ``names`` alive."""
    names = list(names)
    return all(all(c.view(o).get(m) == "alive" for m in names) for o in names)


def wait_for(c: LocalCluster, predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` up to ``timeout`` s; fail naming ``what``; return the seconds taken."""
    start = time.monotonic()
    assert c.wait_until(predicate, timeout), f"not within {timeout} s: {what}"
    return time.monotonic() - start


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run meshctl as a subprocess (the console script's code, whatever the venv)."""
    env = {k: v for k, v in os.environ.items() if k != "MESHCTL_SOCKET"}
    return subprocess.run(
        [sys.executable, "-c", "from meshd.cli.meshctl import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def meshctl_json(*args: str) -> dict[str, Any]:
    proc = meshctl(*args)
    assert proc.returncode == 0, f"meshctl {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


class Spy:
    """A plain UDP socket on 127.0.0.1 that holds the cluster key but is no member.

    It seals packets itself (``crypto.seal`` with its own boot epoch) and
    opens what comes back, exactly as a daemon would.
    """

    def __init__(self, c: LocalCluster, target: str = "node-1") -> None:
        self.cluster_name = tomllib.loads(c.configs[target].read_text())["cluster"]["name"]
        self.keyring = Keyring([read_secret(c.secret_file)])
        self.target = target
        self.address = ("127.0.0.1", c.ports[target])
        self.epoch = int.from_bytes(os.urandom(8), "big")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._seq = random.Random(os.urandom(8)).randrange(1, 2**31)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self, counter: int, *, epoch: int | None = None) -> tuple[int, bytes]:
        """A sealed Ping for the target: (its seq, the datagram)."""
        self._seq += 1
        compound = codec.encode_packet(
            codec.encode_compound(
                [codec.encode_message(Ping(self._seq, NodeId(self.target), NodeId("spy")))]
            )
        )[2:]
        packet = crypto.seal(
            self.keyring,
            self.cluster_name,
            compound,
            epoch=self.epoch if epoch is None else epoch,
            counter=counter,
            nonce=os.urandom(crypto.NONCE_SIZE),
        )
        return self._seq, packet

    def send(self, packet: bytes) -> None:
        self.sock.sendto(packet, self.address)

    def wait_ack(self, seq: int, timeout: float) -> Ack | None:
        """The Ack for ``seq`` if one arrives within ``timeout`` s (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return None
            opened = crypto.open_untrusted(self.keyring, self.cluster_name, data)
            for msg in codec.decode_packet_untrusted(_PLAIN + opened.compound):
                if isinstance(msg, Ack) and msg.seq == seq:
                    return msg
        return None


def tls_exchange(
    address: tuple[str, int], ctx: ssl.SSLContext, frame: bytes | None, timeout: float = 10.0
) -> bytes | None:
    """Connect, handshake, send one length-prefixed ``frame``, read one reply frame.

    Returns the reply, or None when the server refused: the handshake, the
    write or the first read failed, or the server closed without answering
    (TLS 1.3: a refused client certificate shows up only at the first read).
    """
    with socket.create_connection(address, timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=None) as s:
                if frame is not None:
                    s.sendall(len(frame).to_bytes(4, "big") + frame)
                buffer = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    buffer += chunk
                    if len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                        return buffer[4 : 4 + int.from_bytes(buffer[:4], "big")]
        except (ssl.SSLError, ConnectionError):
            return None


def no_cert_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def wait_counter(
    c: LocalCluster,
    name: str,
    before: dict[str, int],
    key: str,
    at_least: int,
    timeout: float = 5.0,
) -> int:
    """Wait until ``name``'s counter ``key`` grew by ``at_least``; return the growth."""
    seen = 0

    def grown() -> bool:
        nonlocal seen
        seen = delta(counters(c, name), before, key)
        return seen >= at_least

    c.wait_until(grown, timeout)
    assert seen >= at_least, f"{name}: {key} grew by {seen}, expected at least {at_least}"
    return seen


# ==================================================================== membership


@pytest.mark.slow
def test_five_daemons_converge(cluster: Callable[..., LocalCluster]) -> None:
    """Five daemons started at once: every one sees all five alive within CONVERGE_S.

    All start together, so some try to join node-1 before it listens and
    retry after ``[join] retry_interval`` (5 s): the bound covers that.
    """
    c = cluster(5, seed_first=False)
    took = wait_for(c, c.converged, CONVERGE_S, "every node sees all 5 alive")
    for name in c.names:
        info = c.request(name, "info")
        assert info["name"] == name
        assert info["members"] == 5
        view = members(c, name)
        assert sorted(view) == sorted(c.names)
        assert {m["addr"] for m in view.values()} == {f"127.0.0.1:{p}" for p in c.ports.values()}
    print(f"converged {took:.2f} s after all control sockets answered")


@pytest.mark.slow
def test_sigkill_detected_then_restart_rejoins_with_higher_incarnation(
    cluster: Callable[..., LocalCluster],
) -> None:
    c = cluster(5)
    wait_for(c, c.converged, CONVERGE_S, "initial convergence")
    victim = "node-3"
    survivors = [n for n in c.names if n != victim]
    before = c.incarnation("node-1", victim)

    c.kill(victim)
    took = wait_for(
        c,
        lambda: c.all_see(victim, "dead", survivors),
        FAILURE_DETECT_S,
        f"every survivor marks {victim} dead after SIGKILL",
    )
    print(f"{victim} declared dead everywhere {took:.2f} s after SIGKILL")
    dead_at = max(c.incarnation(o, victim) for o in survivors)

    c.start(victim)
    assert c.request(victim, "info")["name"] == victim  # same node id after the restart
    wait_for(
        c,
        lambda: (
            c.all_see(victim, "alive", c.names)
            and all(c.incarnation(o, victim) > dead_at for o in survivors)
        ),
        GOSSIP_S,
        f"restarted {victim} is alive everywhere with an incarnation above {dead_at}",
    )
    assert c.request(victim, "info")["incarnation"] > max(before, dead_at)
    for o in c.names:
        listed = [m for m in c.request(o, "members")["members"] if m["id"] == victim]
        assert len(listed) == 1, f"{o} lists {victim} {len(listed)} times"
    assert c.converged()


@pytest.mark.slow
def test_sigterm_exits_0_and_others_see_left_never_dead(
    cluster: Callable[..., LocalCluster],
) -> None:
    c = cluster(5)
    wait_for(c, c.converged, CONVERGE_S, "initial convergence")
    leaver = "node-5"
    others = [n for n in c.names if n != leaver]

    assert c.terminate(leaver) == 0
    wait_for(c, lambda: c.all_see(leaver, "left", others), GOSSIP_S, f"everyone sees {leaver} left")
    failure = LocalCluster.holds_for(lambda: c.all_see(leaver, "left", others), QUIET_S)
    assert failure is None, f"{leaver} did not stay 'left' everywhere: {failure}: " + str(
        {o: c.view(o).get(leaver) for o in others}
    )
    assert converged(c, others)


# ==================================================================== security


@contextlib.contextmanager
def intruder(c: LocalCluster) -> Iterator[str]:
    """A daemon with ANOTHER secret in ``c``'s root, seeded with node-1; stopped on exit.

    Its config is written by ``meshd init``'s code (write_init) and
    registered in ``c.configs`` (so its log shows up in failure reports); it
    is stopped with SIGTERM at the end and must exit 0.
    """
    n = next(_intruders)
    name = f"intruder-{n}"
    secret = c.root / f"{name}-secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_secret() + "\n")
    (port,) = free_ports(1)
    c.configs[name] = write_init(
        c.root / name,
        name=name,
        bind=("127.0.0.1", port),
        seeds=[("127.0.0.1", c.ports["node-1"])],
        secret_file=secret,
    )
    c.start(name)
    try:
        yield name
    finally:
        assert c.terminate(name) == 0


_intruders = itertools.count(1)


def join_failures(c: LocalCluster, name: str) -> list[str]:
    """The reasons in ``name``'s "join through ADDR failed: REASON" log lines."""
    return re.findall(r"join through \S+ failed: (.*)$", c.log_path(name).read_text(), re.MULTILINE)


def test_daemon_with_another_secret_never_joins(shared_cluster: LocalCluster) -> None:
    """Its join (a push-pull over mutual TLS) is refused by node-1 and nobody lists it.

    What node-1 counts: the intruder knows no member, so all it sends are
    join attempts over TCP; they fail in the TLS handshake (neither side
    trusts the other's CA): ``streams_refused``. It sends no gossip, so
    ``rejected_undecryptable`` is not what shows it.
    """
    c = shared_cluster
    before = counters(c, "node-1")
    with intruder(c) as name:
        wait_counter(c, "node-1", before, "streams_refused", 1, timeout=10.0)
        c.wait_until(lambda: bool(join_failures(c, name)), 5.0)
        assert join_failures(c, name), "the intruder did not log its failed join"

        def nobody_lists_it() -> bool:
            return all(name not in c.view(n) for n in c.names) and set(c.view(name)) == {name}

        # The join retry interval is 5 s: watch long enough for a retry.
        failure = LocalCluster.holds_for(nobody_lists_it, QUIET_S + 1.0)
        assert failure is None, f"the intruder got into a member list: {failure}"
        assert converged(c, c.names)
        after = counters(c, "node-1")
        assert delta(after, before, "streams_refused") >= 2, "the join was not retried"


def test_failed_join_logs_a_reason(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    with intruder(c) as name:
        assert c.wait_until(lambda: bool(join_failures(c, name)), 10.0)
        reasons = join_failures(c, name)
    for reason in reasons:
        assert reason.removeprefix("stream failed:").strip(), f"no reason given: {reason!r}"


def test_replayed_and_stale_packets_are_dropped(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    with Spy(c) as spy:
        before = counters(c, "node-1")
        seq, packet = spy.ping(counter=5000)
        spy.send(packet)
        ack = spy.wait_ack(seq, ACK_S)
        assert ack is not None, "node-1 did not answer a valid sealed ping"

        spy.send(packet)  # the very same bytes again
        assert spy.wait_ack(seq, NO_ACK_S) is None, "node-1 answered a replayed packet"
        wait_counter(c, "node-1", before, "rejected_replay", 1)

        seq_old, old = spy.ping(counter=5000 - 2000)  # far below the window (1024)
        spy.send(old)
        assert spy.wait_ack(seq_old, NO_ACK_S) is None, "node-1 answered a stale packet"
        wait_counter(c, "node-1", before, "rejected_stale", 1)

        # A fresh counter is still accepted: the silence above was the window.
        seq_new, fresh = spy.ping(counter=5001)
        spy.send(fresh)
        assert spy.wait_ack(seq_new, ACK_S) is not None
        after = counters(c, "node-1")
        assert delta(after, before, "rejected_replay") == 1
        assert delta(after, before, "rejected_stale") == 1
    assert converged(c, c.names)


def test_bit_flipped_packets_are_undecryptable(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    with Spy(c) as spy:
        before = counters(c, "node-1")
        incarnation = c.request("node-1", "info")["incarnation"]
        seq, packet = spy.ping(counter=1)
        # One flipped bit in each part of the envelope (crypto.py "Layout"):
        # version, kind, key id, nonce, ciphertext (the counters, then the
        # compound), tag.
        key_id_at = codec.HEADER_SIZE
        nonce_at = key_id_at + KEY_ID_SIZE
        body_at = nonce_at + crypto.NONCE_SIZE
        tag_at = len(packet) - crypto.TAG_SIZE
        positions = [0, 1, key_id_at, nonce_at + 5, body_at + 9, tag_at - 1, tag_at + 7]
        for pos in positions:
            flipped = bytearray(packet)
            flipped[pos] ^= 0x10
            spy.send(bytes(flipped))
        assert spy.wait_ack(seq, NO_ACK_S) is None, "node-1 answered a corrupted packet"
        wait_counter(c, "node-1", before, "rejected_undecryptable", len(positions))
        # The corrupted copies did not use up the counter: the original still passes.
        spy.send(packet)
        assert spy.wait_ack(seq, ACK_S) is not None
        after = counters(c, "node-1")
        assert delta(after, before, "rejected_undecryptable") == len(positions)
        assert delta(after, before, "rejected_replay") == 0
    assert converged(c, c.names)
    assert c.request("node-1", "info")["incarnation"] == incarnation


def test_tls_streams_refuse_strangers_and_impostors(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    address = ("127.0.0.1", c.ports["node-1"])
    secret = read_secret(c.secret_file)
    cluster_name = tomllib.loads(c.configs["node-1"].read_text())["cluster"]["name"]
    now = datetime.now(UTC)
    ask_state = codec.encode_stream(PushPull(join=False, checksum=0, members=None))
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        # 1. No client certificate at all.
        before = counters(c, "node-1")
        assert tls_exchange(address, no_cert_context(), ask_state) is None
        wait_counter(c, "node-1", before, "streams_refused", 1)

        # 2. A certificate from another cluster's derived CA (the client does
        #    not check the server, so the refusal is node-1's).
        stranger = tls.derived_identity(
            os.urandom(32), cluster_name, "node-9", Path(tmp, "other"), now=now
        )
        ctx = tls.client_context(stranger)
        ctx.verify_mode = ssl.CERT_NONE
        before = counters(c, "node-1")
        assert tls_exchange(address, ctx, ask_state) is None
        wait_counter(c, "node-1", before, "streams_refused", 1)
        # With verification on, the stranger refuses node-1 as well.
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(address, timeout=10) as raw:
                tls.client_context(stranger).wrap_socket(raw, server_hostname=None).close()

        # 3. A valid certificate of this cluster (node id "node-9").
        member = tls.derived_identity(secret, cluster_name, "node-9", Path(tmp, "real"), now=now)
        ctx = tls.client_context(member)
        reply = tls_exchange(address, ctx, ask_state)
        assert reply is not None, "a valid cluster certificate was refused"
        state = codec.decode_stream_untrusted(reply)
        assert isinstance(state, PushPull)
        assert state.members is not None
        assert {m.node for m in state.members} == set(c.names)

        #    ... whose push-pull claims to come from node-2 and declares node-3 dead.
        node2_inc = c.incarnation("node-1", "node-2")
        forged = PushPull(
            join=False,
            checksum=0,
            members=(
                PushNodeState(
                    NodeId("node-2"),
                    ("127.0.0.1", c.ports["node-2"]),
                    node2_inc + 100,
                    MemberState.ALIVE,
                ),
                PushNodeState(
                    NodeId("node-3"), ("127.0.0.1", c.ports["node-3"]), 1000, MemberState.DEAD
                ),
            ),
        )
        before = counters(c, "node-1")
        assert tls_exchange(address, ctx, codec.encode_stream(forged)) is None
        wait_counter(c, "node-1", before, "stream_identity_mismatch", 1)
        #    ... and a stream ping that names node-2 as its source.
        ping = Ping(7, NodeId("node-1"), NodeId("node-2"))
        assert tls_exchange(address, ctx, codec.encode_stream(ping)) is None
        wait_counter(c, "node-1", before, "stream_identity_mismatch", 2)

    assert c.incarnation("node-1", "node-2") == node2_inc
    failure = LocalCluster.holds_for(lambda: converged(c, c.names), 1.0)
    assert failure is None, f"the forged push-pull changed the membership: {failure}"


def test_random_datagram_flood_is_rejected_and_mesh_stays_converged(
    shared_cluster: LocalCluster,
) -> None:
    """10,000 random datagrams (0..1500 bytes, seeded) to node-1's gossip port.

    Sent in bursts as fast as a plain socket goes, at most WINDOW datagrams
    ahead of what node-1 has counted: loopback delivers without loss, but the
    kernel drops whatever overflows node-1's receive buffer (~200 KB), and
    the point is that every datagram reaches the daemon's code.
    """
    c = shared_cluster
    total, window = 10_000, 64
    rng = random.Random(20240608)
    address = ("127.0.0.1", c.ports["node-1"])
    before = counters(c, "node-1")

    def caught_up(count: int) -> bool:
        return delta(counters(c, "node-1"), before, "rejected_undecryptable") >= count

    started = time.monotonic()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while sent < total:
            burst = min(window, total - sent)
            for _ in range(burst):
                s.sendto(rng.randbytes(rng.randint(0, 1500)), address)
            sent += burst
            # Bounded: wait (at most 5 s) until node-1 counted this burst.
            c.wait_until(functools.partial(caught_up, sent), 5.0, 0.002)
    took = time.monotonic() - started
    rejected = wait_counter(c, "node-1", before, "rejected_undecryptable", total, timeout=10.0)
    after = counters(c, "node-1")
    print(f"{total} datagrams sent and rejected in {took:.2f} s")
    assert rejected == total
    assert delta(after, before, "udp_packets_received") >= total
    assert c.request("node-1", "status")["self"] == "node-1"
    wait_for(c, lambda: converged(c, c.names), CONVERGE_S, "all 5 alive everywhere after the flood")
    for o in c.names:
        assert "dead" not in c.view(o).values()


# ==================================================================== files and tools


def test_file_modes(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    for name in c.names:
        sock = c.socket_path(name)
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660, f"{sock}: {oct(stat.S_IMODE(st.st_mode))}"
        state = c.configs[name].parent / "state"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(state / "tls" / "node.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(c.secret_file).st_mode) == 0o600


def test_meshctl_against_a_running_daemon(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    document = meshctl_json("--socket", str(c.socket_path("node-2")), "members", "--json")
    assert document["v"] == 1
    assert document["self"] == "node-2"
    assert sorted(m["name"] for m in document["members"]) == sorted(c.names)
    for m in document["members"]:
        assert {"name", "id", "addr", "status", "incarnation", "tags"} <= set(m)
        assert m["id"] == m["name"]
        assert m["addr"] == f"127.0.0.1:{c.ports[m['name']]}"
        assert m["status"] == "alive"
        assert isinstance(m["incarnation"], int)
        assert isinstance(m["tags"], dict)

    missing = meshctl("--socket", "/nonexistent/meshd.sock", "status")
    assert missing.returncode == 69
    assert HINT_UNAVAILABLE in missing.stderr
    assert missing.stdout == ""

    by_config = meshctl("--config", str(c.configs["node-3"]), "status")
    assert by_config.returncode == 0, by_config.stderr
    assert "self=node-3" in by_config.stdout
    assert "Alive:5" in by_config.stdout
    document = meshctl_json("--config", str(c.configs["node-3"]), "status", "--json")
    assert document["v"] == 1
    assert document["self"] == "node-3"


def test_sighup_reload_publishes_new_tags(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    name = "node-4"
    tags = {"role": "reloaded", "zone": f"z{random.randrange(10**6)}"}
    path = c.configs[name]
    data = tomllib.loads(path.read_text())
    data["node"]["tags"] = tags
    path.write_text(tomli_w.dumps(data))
    proc = c.procs[name]
    proc.send_signal(signal.SIGHUP)
    wait_for(
        c,
        lambda: all(members(c, o)[name]["tags"] == tags for o in c.names),
        GOSSIP_S,
        f"every member sees {name}'s new tags",
    )
    assert proc.poll() is None
    assert c.request(name, "info")["name"] == name
    assert converged(c, c.names)


@pytest.mark.slow
def test_key_rotation_across_the_cluster(cluster: Callable[..., LocalCluster]) -> None:
    c = cluster(5)
    wait_for(c, c.converged, CONVERGE_S, "initial convergence")
    sock = str(c.socket_path("node-1"))
    old_key = base64.b64encode(read_secret(c.secret_file)).decode()
    new_key = generate_secret()
    old_fp, new_fp = fingerprint(base64.b64decode(old_key)), fingerprint(base64.b64decode(new_key))
    assert c.request("node-1", "info")["primary_key"] == old_fp

    def undecryptable() -> int:
        return sum(counters(c, n).get("rejected_undecryptable", 0) for n in c.names)

    def key_list() -> dict[str, tuple[bool, int]]:
        document = meshctl_json("--socket", sock, "keys", "list", "--json")
        assert document["responded"] == 5, document
        assert not document["failed"], document
        return {k["fingerprint"]: (k["primary"], k["members"]) for k in document["keys"]}

    rejected_before = undecryptable()

    proc = meshctl("--socket", sock, "keys", "install", new_key)
    assert proc.returncode == 0, proc.stderr
    assert key_list() == {old_fp: (True, 5), new_fp: (False, 5)}

    proc = meshctl("--socket", sock, "keys", "use", new_key)
    assert proc.returncode == 0, proc.stderr
    for n in c.names:
        assert c.request(n, "info")["primary_key"] == new_fp
    # Everyone now seals with the new key; gossip keeps flowing and opening.
    received = {n: counters(c, n).get("packets_received", 0) for n in c.names}
    failure = LocalCluster.holds_for(lambda: converged(c, c.names), 3.0)
    assert failure is None, f"membership broke after 'keys use': {failure}"
    for n in c.names:
        assert counters(c, n).get("packets_received", 0) > received[n], f"{n} received nothing"

    proc = meshctl("--socket", sock, "keys", "remove", old_key)
    assert proc.returncode == 0, proc.stderr
    assert key_list() == {new_fp: (True, 5)}
    failure = LocalCluster.holds_for(lambda: converged(c, c.names), 2.0)
    assert failure is None, f"membership broke after 'keys remove': {failure}"
    assert undecryptable() == rejected_before, (
        "some node could not open a packet during the rotation"
    )

    # The keyring is persisted: a restarted node still holds only the new key.
    restarted = "node-4"
    keyring_file = c.configs[restarted].parent / "state" / "keyring.json"
    assert stat.S_IMODE(os.stat(keyring_file).st_mode) == 0o600
    saved = json.loads(keyring_file.read_text())
    assert saved == {"primary": new_key, "keys": [new_key]}
    assert c.terminate(restarted) == 0
    c.start(restarted)
    assert c.request(restarted, "info")["key_fingerprints"] == [new_fp]
    wait_for(c, c.converged, GOSSIP_S, f"restarted {restarted} rejoins with the rotated key")


# ==================================================================== startup errors


def test_port_in_use_exits_78_naming_node_bind() -> None:
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="meshd-", dir="/tmp") as tmp:
        config = write_init(
            Path(tmp) / "n", name="busy", bind=("127.0.0.1", port), seeds=[], secret_file=None
        )
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind(("127.0.0.1", port))
            tcp.bind(("127.0.0.1", port))
            tcp.listen(1)
            proc = subprocess.run(
                [sys.executable, "-m", "meshd", "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=SUBPROCESS_S,
                stdin=subprocess.DEVNULL,
            )
    assert proc.returncode == 78, proc.stderr
    # stderr is also the daemon's log stream (timestamped lines, e.g. the TLS
    # key it generated before binding); the error is the one other line.
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
    message = [line for line in proc.stderr.splitlines() if line and not log_line.match(line)]
    assert len(message) == 1, proc.stderr
    assert "[node] bind" in message[0]
    assert f"127.0.0.1:{port}" in message[0]
    assert "in use" in message[0]
    assert "Traceback" not in proc.stderr
