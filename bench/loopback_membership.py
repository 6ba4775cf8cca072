#!/usr/bin/env python3
"""Membership benchmark with real daemons on 127.0.0.1, side by side with HashiCorp Serf.

For each mesh size N (LAN profile, one process per member, nothing mocked) it
measures, first for meshd and then, where the ``serf`` binary is installed,
for Serf agents with the same N on the same machine in the same run:

* join — seconds from spawning the seed (``node-1``) until every member's
  membership list shows all N members alive. The seed is spawned first and
  the others are spawned as soon as it answers (its control socket, or
  Serf's RPC), because ``serf agent -join`` exits when the seed is not up yet
  and meshd waits a back-off before it retries a seed: starting all at once
  would time a start-up race, not the protocol.
  Process start-up (the Python interpreter for meshd) counts. Also reported:
  *join after ready*, from the last member answering to convergence. Both
  are medians over ``--joins`` fresh meshes (3); the last one stays up for
  the measurements below;
* detection — seconds from SIGKILL of a random non-seed member until every
  survivor marks it dead (meshd ``dead``, Serf ``failed``), p50 and p90 over
  ``--kills`` kills; the victim is restarted and the mesh re-converges
  between kills. ``--signal STOP`` freezes the victim instead (its sockets
  stay open: no TCP reset tells anyone it is gone);
* idle CPU — mean CPU time per member process (utime + stime from
  /proc/PID/stat) over an idle window after convergence, in % of one core,
  and mean resident memory (VmRSS; also PSS, shared pages split among the
  processes that map them) per member. Both meshd and Serf
  push-pull (TCP) every 30 s per member, meshd first 0-30 s after start,
  memberlist 30-60 s after start; so the window opens 61 s after the last
  spawn and lasts a multiple of 30 s (60 s at N = 10, 30 s at N = 30): one
  push-pull per member per 30 s, whatever their phases. ``--quick`` uses a
  10 s window 3 s after convergence and says that its bytes are not steady
  state;
* gossip bytes — bytes per second per member during the same window, counted
  by the kernel for both meshd and Serf: nftables counters on ``lo`` (IP
  packets, headers included) for UDP sent from the members' ports and TCP
  to or from them, in a table this script creates and deletes
  (``meshd_bench_<pid>``). Without a usable ``nft`` it falls back to meshd's
  own counters (UDP + stream payload bytes) and Serf's bytes are n/a;
* packets/s — valid sealed gossip packets (pings addressed to ``node-1``
  from a made-up sender, fresh packet counters, sealed with the cluster
  key) that one meshd daemon opens, decodes and handles (it answers each
  with a sealed ack) per second, closed loop with a bounded window of
  packets in flight, measured by the daemon's own counters over wall time.
  Serf: n/a (no equivalent without its key API).

No polling happens during the idle window. Every process, temporary
directory and nftables table is removed at the end, also on errors and ^C.

Prints a table; with ``--json`` the last line is one JSON object whose
metric keys map N (as a string) to a number (null when a measurement
failed): ``join_s``, ``join_after_ready_s``, ``detection_p50_s``,
``detection_p90_s``, ``idle_cpu_pct``, ``idle_rss_mib``, ``idle_pss_mib``,
``bytes_per_member_s``, ``packets_per_s``, the same keys prefixed ``serf_``
when Serf ran (no ``serf_packets_per_s``), a ``targets`` object with one
boolean per N = 10 target (null when it cannot be judged) and a ``meta``
object describing the run. ``--quick`` runs N = 10 only with 3 kills and a
short idle window (under ~2 minutes); the full run takes about 10 minutes.

Members' ports (meshd and Serf) are taken below the kernel's ephemeral port
range, so a killed member's port cannot be grabbed as the source port of
some other connection before it restarts.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import msgpack

import meshd.testing.cluster
from meshd import control
from meshd.core import codec, crypto
from meshd.core.keyring import Keyring
from meshd.core.messages import Ping
from meshd.core.types import NodeId
from meshd.testing.cluster import LocalCluster

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEED_NAME = "node-1"


# ==================================================================== plans


@attrs.define
class Plan:
    sizes: list[int]
    kills: int
    idle: dict[int, float]
    settle: float
    steady_after: float
    pps_packets: int
    joins: int = 3


#: Both meshd and Serf exchange push-pull (TCP) every 30 s per member at N <= 32.
PUSH_PULL_PERIOD = 30.0
#: meshd's first push-pull comes 0-30 s after start, memberlist's (Serf) 30-60 s
#: after start: from 61 s after the last spawn both are in their steady cycle,
#: and a window that is a multiple of 30 s then holds one push-pull per member
#: per 30 s whatever their phases.
STEADY_AFTER = 2 * PUSH_PULL_PERIOD + 1.0

FULL = Plan(
    sizes=[10, 30],
    kills=5,
    idle={10: 60.0, 30: 30.0},
    settle=5.0,
    steady_after=STEADY_AFTER,
    pps_packets=20_000,
)
QUICK = Plan(sizes=[10], kills=3, idle={10: 10.0}, settle=3.0, steady_after=0.0, pps_packets=10_000)


# ==================================================================== /proc


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` (all its threads), in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages split among the processes mapping them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def source_revision() -> str:
    """The checkout's commit (read-only git), "+dirty" if meshd/ has local changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "meshd"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def low_ports(count: int, rng: random.Random, taken: Iterable[int] = ()) -> list[int]:
    """Ports free for UDP and TCP on 127.0.0.1, below the kernel's ephemeral range.

    A member's port inside that range can be taken, while the member is
    down, as the source port of some other outgoing connection; restarting
    the member then fails with EADDRINUSE (seen with kill-and-restart).
    """
    high = max(_ephemeral_low(), 12000)
    low = 20000 if high > 24000 else 10000
    avoid = set(taken)
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(low, high)
        if port in ports or port in avoid:
            continue
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            ports.append(port)
    return ports


# ==================================================================== nftables byte counters


class NftCounter:
    """Kernel byte counters for the traffic of a set of loopback ports.

    One inet table ``meshd_bench_<pid>`` with an output-hook chain on ``lo``:
    UDP datagrams whose source port is a member's port, and TCP segments
    from or to a member's port (each counted once: the first TCP rule
    accepts, which ends only this chain). Bytes are IP packet lengths.
    """

    def __init__(self) -> None:
        self.table = f"meshd_bench_{os.getpid()}"
        self.active = False

    @staticmethod
    def available() -> str | None:
        """None if nft works here, else why not."""
        if shutil.which("nft") is None:
            return "nft not installed"
        probe = NftCounter()
        try:
            probe.install([1])
            probe.read()
        except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
            return f"nft unusable ({e})"
        finally:
            probe.remove()
        return None

    def install(self, ports: Iterable[int]) -> None:
        self.remove()
        elements = ", ".join(str(p) for p in sorted(set(ports)))
        script = f"""
table inet {self.table} {{
    set ports {{ type inet_service; elements = {{ {elements} }} }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oif "lo" udp sport @ports counter comment "udp"
        oif "lo" tcp sport @ports counter accept comment "tcp_from"
        oif "lo" tcp dport @ports counter comment "tcp_to"
    }}
}}
"""
        self.active = True
        subprocess.run(
            ["nft", "-f", "-"], input=script.encode(), check=True, capture_output=True, timeout=10
        )

    def read(self) -> dict[str, int]:
        """Bytes so far: {"udp": …, "tcp": …}."""
        out = subprocess.run(
            ["nft", "-j", "list", "table", "inet", self.table],
            check=True,
            capture_output=True,
            timeout=10,
        ).stdout
        totals = {"udp": 0, "tcp": 0}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            counted = [
                e["counter"]["bytes"]
                for e in rule["expr"]
                if isinstance(e, dict) and "counter" in e
            ]
            kind = "udp" if rule.get("comment") == "udp" else "tcp"
            totals[kind] += sum(counted)
        return totals

    def remove(self) -> None:
        if not self.active:
            return
        subprocess.run(
            ["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10
        )
        self.active = False


# ==================================================================== clients


class MeshdClient:
    """A persistent connection to one daemon's control socket (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""
        self.ids = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def _once(self, cmd: str, timeout: float) -> dict[str, Any]:
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(str(self.path))
            except OSError:
                s.close()
                raise
            self.sock = s
        self.sock.settimeout(timeout)
        self.ids += 1
        self.sock.sendall(control.encode_request(self.ids, cmd, {}))
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = control.decode_response_untrusted(line + b"\n")
        if not reply["ok"]:
            raise ConnectionError(reply["error"]["message"])
        result: dict[str, Any] = reply["result"]
        return result

    def request(self, cmd: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """The result, or None if the daemon does not answer (one reconnect)."""
        for _ in range(2):
            try:
                return self._once(cmd, timeout)
            except Exception:  # any failure means "not answering"
                fresh = self.sock is not None
                self.close()
                if not fresh:
                    return None
        return None


class SerfClient:
    """A persistent connection to one Serf agent's RPC (msgpack over TCP)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.unpacker = msgpack.Unpacker(raw=True)
        self.seq = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.unpacker = msgpack.Unpacker(raw=True)

    def _next(self) -> Any:
        assert self.sock is not None
        while True:
            for obj in self.unpacker:
                return obj
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.unpacker.feed(chunk)

    def _call(self, command: str, body: Any | None, timeout: float) -> dict[bytes, Any]:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        seq = self.seq
        self.seq += 1
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body)
        self.sock.sendall(data)
        header = self._next()
        if header.get(b"Seq") != seq:
            raise ConnectionError(f"unexpected RPC header {header!r}")
        if header.get(b"Error"):
            raise ConnectionError(header[b"Error"].decode(errors="replace"))
        result: dict[bytes, Any] = header
        return result

    def _members(self, timeout: float) -> dict[str, str]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
            self.seq = 0
            self._call("handshake", {"Version": 1}, timeout)
        self._call("members", None, timeout)
        body = self._next()
        return {m[b"Name"].decode(): m[b"Status"].decode() for m in body[b"Members"]}

    def members(self, timeout: float = 5.0) -> dict[str, str] | None:
        for _ in range(2):
            try:
                return self._members(timeout)
            except (OSError, ValueError, ConnectionError, KeyError, AttributeError):
                fresh = self.sock is not None
                self.close()
                if not fresh:
                    return None
        return None


# ==================================================================== meshes


class Mesh:
    """What the measurements need from N members on loopback."""

    kind = "?"
    dead_status = "dead"

    def __init__(self, size: int) -> None:
        self.names = [f"node-{i}" for i in range(1, size + 1)]
        self.gossip_ports: list[int] = []
        #: monotonic time of the latest spawn (steady-state push-pull starts from it).
        self.last_spawn = 0.0

    def spawn(self, name: str) -> None:
        raise NotImplementedError

    def view(self, name: str) -> dict[str, str] | None:
        """``name``'s members (member → normalised status); None if it does not answer."""
        raise NotImplementedError

    def kill(self, name: str) -> None:
        raise NotImplementedError

    def exited(self, name: str) -> bool:
        """Whether ``name``'s latest process has exited by itself."""
        raise NotImplementedError

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process hangs; its sockets stay open (no RST, no ICMP)."""
        os.kill(self.pids()[name], signal.SIGSTOP)

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def own_bytes(self) -> int | None:
        """Bytes the members say they sent (None if they do not count)."""
        return None

    def close(self) -> None:
        raise NotImplementedError


class MeshdMesh(Mesh):
    kind = "meshd"
    dead_status = "dead"

    def __init__(self, size: int, root: Path) -> None:
        super().__init__(size)
        root.mkdir(parents=True, exist_ok=True)
        # LocalCluster draws ports from 20000-60000, most of it inside the
        # ephemeral range; take them below it instead (see low_ports).
        original = meshd.testing.cluster.free_ports

        def free_low(count: int, rng: random.Random | None = None) -> list[int]:
            return low_ports(count, rng or random.Random())

        meshd.testing.cluster.free_ports = free_low
        try:
            self.cluster = LocalCluster(root, size, membership={"profile": "lan"})
        finally:
            meshd.testing.cluster.free_ports = original
        self.gossip_ports = list(self.cluster.ports.values())
        self.clients = {n: MeshdClient(self.cluster.socket_path(n)) for n in self.names}

    def spawn(self, name: str) -> None:
        self.clients[name].close()
        self.last_spawn = time.monotonic()
        self.cluster.start(name, wait=False)

    def view(self, name: str) -> dict[str, str] | None:
        proc = self.cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            return None
        result = self.clients[name].request("members")
        if result is None:
            return None
        return {m["name"]: m["status"] for m in result["members"]}

    def status(self, name: str) -> dict[str, Any] | None:
        return self.clients[name].request("status")

    def kill(self, name: str) -> None:
        self.clients[name].close()
        self.cluster.kill(name)

    def exited(self, name: str) -> bool:
        proc = self.cluster.procs.get(name)
        return proc is not None and proc.poll() is not None

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.cluster.procs.items() if p.poll() is None}

    def own_bytes(self) -> int | None:
        total = 0
        for name in self.names:
            st = self.status(name)
            if st is None:
                return None
            c = st["counters"]
            # The daemon's sealed datagram bytes: "udp_bytes_sent" (older
            # daemons reported them as "bytes_sent").
            udp = c.get("udp_bytes_sent", c.get("bytes_sent", 0))
            total += int(udp) + int(c.get("stream_bytes_sent", 0))
        return total

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for proc in self.cluster.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.cluster.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.cluster.procs.clear()


class SerfMesh(Mesh):
    kind = "serf"
    dead_status = "dead"  # Serf's "failed", normalised

    def __init__(self, size: int, root: Path, rng: random.Random, encrypt_key: str | None) -> None:
        super().__init__(size)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        ports = low_ports(2 * size, rng)
        self.ports = dict(zip(self.names, ports[:size], strict=True))
        self.rpc_ports = dict(zip(self.names, ports[size:], strict=True))
        self.gossip_ports = list(self.ports.values())
        self.encrypt_key = encrypt_key
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.clients = {n: SerfClient(self.rpc_ports[n]) for n in self.names}

    def command(self, name: str) -> list[str]:
        cmd = [
            "serf",
            "agent",
            "-node",
            name,
            "-bind",
            f"127.0.0.1:{self.ports[name]}",
            "-rpc-addr",
            f"127.0.0.1:{self.rpc_ports[name]}",
            "-log-level=warn",
        ]
        if self.encrypt_key:
            cmd += ["-encrypt", self.encrypt_key]
        if name != SEED_NAME:
            cmd += ["-join", f"127.0.0.1:{self.ports[SEED_NAME]}"]
        return cmd

    def spawn(self, name: str) -> None:
        self.clients[name].close()
        self.last_spawn = time.monotonic()
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                self.command(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )

    def view(self, name: str) -> dict[str, str] | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return None
        members = self.clients[name].members()
        if members is None:
            return None
        return {m: ("dead" if s == "failed" else s) for m, s in members.items()}

    def kill(self, name: str) -> None:
        self.clients[name].close()
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def exited(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is not None

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


# ==================================================================== measurements


def _all_alive(view: dict[str, str] | None, names: list[str]) -> bool:
    return view is not None and all(view.get(m) == "alive" for m in names)


def converge(mesh: Mesh, timeout: float, interval: float) -> tuple[float, float] | None:
    """Poll every member until each one's list shows all members alive.

    Members already complete are not polled again until a final sweep
    confirms them all. Returns (monotonic time the last member first
    answered, monotonic time the last member was first seen complete), or
    None on timeout.
    """
    names = mesh.names
    deadline = time.monotonic() + timeout
    ready: dict[str, float] = {}
    complete: dict[str, float] = {}
    while True:
        tick = time.monotonic()
        for name in names:
            if name in complete:
                continue
            view = mesh.view(name)
            now = time.monotonic()
            if view is None:
                continue
            ready.setdefault(name, now)
            if _all_alive(view, names):
                complete[name] = now
        if len(complete) == len(names):
            bad = [n for n in names if not _all_alive(mesh.view(n), names)]
            if not bad:
                return max(ready.values()), max(complete.values())
            for n in bad:
                del complete[n]
        if time.monotonic() >= deadline:
            return None
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))


def wait_answering(mesh: Mesh, name: str, timeout: float, interval: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mesh.view(name) is not None:
            return time.monotonic()
        time.sleep(interval)
    return None


def restart(
    mesh: Mesh, name: str, timeout: float, interval: float, log: Callable[[str], None]
) -> bool:
    """Spawn ``name`` again, and again if it exits by itself (e.g. its port
    is still held), until it answers or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mesh.spawn(name)
        while time.monotonic() < deadline:
            if mesh.view(name) is not None:
                return True
            if mesh.exited(name):
                log(f"  {mesh.kind}: restarted {name} exited at once; retrying in 1 s")
                time.sleep(1.0)
                break
            time.sleep(interval)
    return False


@attrs.define
class Join:
    join_s: float | None
    after_ready_s: float | None
    seed_ready_s: float | None
    last_ready_s: float | None = None


def measure_join(mesh: Mesh, interval: float, timeout: float) -> Join:
    t0 = time.monotonic()
    mesh.spawn(SEED_NAME)
    seed_ready = wait_answering(mesh, SEED_NAME, timeout, interval)
    if seed_ready is None:
        return Join(None, None, None)
    for name in mesh.names[1:]:
        mesh.spawn(name)
    result = converge(mesh, timeout, interval)
    if result is None:
        return Join(None, None, seed_ready - t0)
    last_ready, converged = result
    return Join(converged - t0, max(0.0, converged - last_ready), seed_ready - t0, last_ready - t0)


@attrs.define
class Detection:
    samples: list[float]
    rejoin: list[float]
    failures: int

    @property
    def p50(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def p90(self) -> float | None:
        if len(self.samples) < 2:
            return self.samples[0] if self.samples else None
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]


def measure_detection(
    mesh: Mesh,
    kills: int,
    rng: random.Random,
    interval: float,
    timeout: float,
    log: Callable[[str], None],
    freeze: bool = False,
) -> Detection:
    """SIGKILL (or, with ``freeze``, SIGSTOP) a random non-seed member ``kills`` times."""
    det = Detection([], [], 0)
    for k in range(kills):
        if converge(mesh, timeout, interval) is None:
            log(f"  {mesh.kind}: mesh did not converge before kill {k + 1}; stopping")
            det.failures += kills - k
            break
        victim = rng.choice(mesh.names[1:])
        survivors = [n for n in mesh.names if n != victim]
        t_kill = time.monotonic()
        if freeze:
            mesh.freeze(victim)
        else:
            mesh.kill(victim)
        marked: dict[str, float] = {}
        deadline = t_kill + timeout
        while len(marked) < len(survivors) and time.monotonic() < deadline:
            tick = time.monotonic()
            for s in survivors:
                if s in marked:
                    continue
                view = mesh.view(s)
                if view is not None and view.get(victim) == mesh.dead_status:
                    marked[s] = time.monotonic()
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        if len(marked) == len(survivors):
            det.samples.append(max(marked.values()) - t_kill)
            log(
                f"  {mesh.kind}: kill {k + 1}/{kills} ({victim}): "
                f"all {len(survivors)} survivors mark it dead after {det.samples[-1]:.2f} s"
            )
        else:
            det.failures += 1
            log(
                f"  {mesh.kind}: kill {k + 1}/{kills} ({victim}): "
                f"only {len(marked)}/{len(survivors)} marked it dead within {timeout:.0f} s"
            )
        if freeze:
            mesh.kill(victim)
        t_restart = time.monotonic()
        if not restart(mesh, victim, 70.0, interval, log):
            det.failures += kills - k - 1
            log(f"  {mesh.kind}: {victim} could not be restarted; stopping the kills")
            break
        result = converge(mesh, timeout, interval)
        if result is not None:
            det.rejoin.append(result[1] - t_restart)
    return det


@attrs.define
class Idle:
    window_s: float
    cpu_pct: float | None
    rss_mib: float | None
    pss_mib: float | None
    bytes_per_member_s: float | None
    udp_per_member_s: float | None
    tcp_per_member_s: float | None
    own_bytes_per_member_s: float | None


def measure_idle(mesh: Mesh, window: float, nft: NftCounter | None) -> Idle:
    pids = mesh.pids()
    n = len(mesh.names)
    own0 = mesh.own_bytes()
    if nft is not None:
        nft.install(mesh.gossip_ports)
    try:
        ticks0 = {name: cpu_ticks(pid) for name, pid in pids.items()}
        nft0 = nft.read() if nft is not None else None
        t0 = time.monotonic()
        time.sleep(window)
        nft1 = nft.read() if nft is not None else None
        t1 = time.monotonic()
        ticks1 = {name: cpu_ticks(pid) for name, pid in pids.items()}
    finally:
        if nft is not None:
            nft.remove()
    elapsed = t1 - t0
    own1 = mesh.own_bytes()
    usage = [
        (ticks1[name] - ticks0[name]) / CLK_TCK / elapsed * 100.0  # type: ignore[operator]
        for name in pids
        if ticks0.get(name) is not None and ticks1.get(name) is not None
    ]
    rss = [r for r in (rss_mib(pid) for pid in pids.values()) if r is not None]
    pss = [r for r in (pss_mib(pid) for pid in pids.values()) if r is not None]
    udp = tcp = total = None
    if nft0 is not None and nft1 is not None:
        udp = (nft1["udp"] - nft0["udp"]) / elapsed / n
        tcp = (nft1["tcp"] - nft0["tcp"]) / elapsed / n
        total = udp + tcp
    own = None
    if own0 is not None and own1 is not None:
        # own counters are read just outside the window (one control request each).
        own = (own1 - own0) / elapsed / n
    return Idle(
        window_s=elapsed,
        cpu_pct=statistics.fmean(usage) if len(usage) == len(pids) == n else None,
        rss_mib=statistics.fmean(rss) if len(rss) == n else None,
        pss_mib=statistics.fmean(pss) if len(pss) == n else None,
        bytes_per_member_s=total,
        udp_per_member_s=udp,
        tcp_per_member_s=tcp,
        own_bytes_per_member_s=own,
    )


@attrs.define
class Throughput:
    processed_per_s: float | None
    acks_per_s: float | None
    sent: int
    lost_windows: int


def _processed(counters: dict[str, Any]) -> int:
    """Datagrams the daemon read minus those it rejected (at any stage)."""
    rejected = sum(int(v) for k, v in counters.items() if k.startswith("rejected_"))
    # Every datagram read: "udp_packets_received" (older daemons: "packets_received").
    received = int(counters.get("udp_packets_received", counters.get("packets_received", 0)))
    return received - rejected - int(counters.get("receive_errors", 0))


def measure_packets(mesh: MeshdMesh, count: int, window: int = 64) -> Throughput:
    """Closed loop: keep ``window`` sealed pings in flight to node-1, count what it handles."""
    name = SEED_NAME
    cluster = mesh.cluster
    secret = base64.b64decode(cluster.secret_file.read_text().strip())
    keyring = Keyring([secret])
    cluster_name = "meshd"
    epoch = int.from_bytes(os.urandom(8), "big") | 1
    warmup = max(1000, count // 10)
    packets = []
    for i in range(warmup + count):
        compound = codec.encode_compound(
            [codec.encode_message(Ping(i + 1, NodeId(name), NodeId("bench-load")))]
        )
        packets.append(
            crypto.seal(
                keyring,
                cluster_name,
                compound,
                epoch=epoch,
                counter=i + 1,
                nonce=os.urandom(crypto.NONCE_SIZE),
            )
        )
    target = ("127.0.0.1", cluster.ports[name])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    lost = 0

    def run(batch: list[bytes]) -> int:
        nonlocal lost
        acks = 0
        next_i = 0
        in_flight = 0
        while next_i < len(batch) or in_flight:
            while in_flight < window and next_i < len(batch):
                sock.sendto(batch[next_i], target)
                next_i += 1
                in_flight += 1
            try:
                sock.recvfrom(2048)
            except TimeoutError:
                lost += 1
                in_flight = 0  # whatever is missing is gone: refill the window
                continue
            acks += 1
            in_flight -= 1
        return acks

    try:
        run(packets[:warmup])
        # Drain late acks of the warm-up.
        sock.settimeout(0.05)
        try:
            while True:
                sock.recvfrom(2048)
        except TimeoutError:
            pass
        sock.settimeout(0.2)
        before = mesh.status(name)
        t0 = time.monotonic()
        acks = run(packets[warmup:])
        t1 = time.monotonic()
        after = mesh.status(name)
    finally:
        sock.close()
    elapsed = t1 - t0
    processed = None
    if before is not None and after is not None:
        processed = (_processed(after["counters"]) - _processed(before["counters"])) / elapsed
    return Throughput(processed, acks / elapsed, count, lost)


# ==================================================================== one mesh, one size


@attrs.define
class Result:
    join: Join | None = None
    join_samples: list[Join] = attrs.Factory(list)
    detection: Detection | None = None
    idle: Idle | None = None
    packets: Throughput | None = None
    error: str | None = None


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def bench_mesh(
    make: Callable[[int], Mesh],
    plan: Plan,
    n: int,
    args: argparse.Namespace,
    nft: NftCounter | None,
    log: Callable[[str], None],
    live: list[Mesh],
) -> Result:
    """Join ``plan.joins`` fresh meshes; measure the rest on the last one."""
    res = Result()
    mesh: Mesh | None = None
    try:
        for trial in range(plan.joins):
            if mesh is not None:
                mesh.close()
            mesh = make(trial)
            live.append(mesh)
            log(f"{mesh.kind} N={n}: join {trial + 1}/{plan.joins}")
            join = measure_join(mesh, args.poll, timeout=60.0 + n)
            res.join_samples.append(join)
            if join.join_s is None:
                log(f"  {mesh.kind}: did not converge within {60 + n} s")
                continue
            log(
                f"  {mesh.kind}: converged {join.join_s:.2f} s after spawning the seed "
                f"({join.after_ready_s:.2f} s after the last member answered)"
            )
        samples = res.join_samples
        res.join = Join(
            _median(j.join_s for j in samples),
            _median(j.after_ready_s for j in samples),
            _median(j.seed_ready_s for j in samples),
            _median(j.last_ready_s for j in samples),
        )
        assert mesh is not None
        if samples[-1].join_s is None:
            res.error = "the last mesh did not converge after start"
            return res
        settle_until = max(time.monotonic() + plan.settle, mesh.last_spawn + plan.steady_after)
        window = args.idle if args.idle is not None else plan.idle.get(n, 2 * PUSH_PULL_PERIOD)
        log(
            f"{mesh.kind} N={n}: settling {settle_until - time.monotonic():.0f} s, "
            f"then idle window {window:.0f} s"
        )
        time.sleep(max(0.0, settle_until - time.monotonic()))
        res.idle = measure_idle(mesh, window, nft)
        log(f"{mesh.kind} N={n}: {plan.kills} kills")
        res.detection = measure_detection(
            mesh,
            plan.kills,
            random.Random(args.seed * 1000 + n),
            args.detect_poll,
            timeout=120.0,
            log=log,
            freeze=args.signal == "STOP",
        )
        if isinstance(mesh, MeshdMesh):
            log(f"{mesh.kind} N={n}: packets/s")
            if converge(mesh, 60.0, args.poll) is not None:
                time.sleep(1.0)
                res.packets = measure_packets(mesh, plan.pps_packets)
    except Exception as e:  # report, clean up, carry on with the next mesh
        res.error = f"{type(e).__name__}: {e}"
        log(f"  N={n}: failed: {res.error}")
    finally:
        if mesh is not None:
            mesh.close()
    return res


# ==================================================================== report


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _get(res: Result | None, path: str) -> float | None:
    obj: Any = res
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


ROWS: list[tuple[str, str, int]] = [
    ("join from seed spawn (s)", "join.join_s", 2),
    ("join after last ready (s)", "join.after_ready_s", 2),
    ("seed answering after spawn (s)", "join.seed_ready_s", 2),
    ("last member answering (s)", "join.last_ready_s", 2),
    ("detection p50 (s)", "detection.p50", 2),
    ("detection p90 (s)", "detection.p90", 2),
    ("idle CPU per member (% core)", "idle.cpu_pct", 3),
    ("idle RSS per member (MiB)", "idle.rss_mib", 1),
    ("  PSS, shared pages split (MiB)", "idle.pss_mib", 1),
    ("gossip B/s per member", "idle.bytes_per_member_s", 0),
    ("  of which UDP", "idle.udp_per_member_s", 0),
    ("  of which TCP", "idle.tcp_per_member_s", 0),
    ("  self-counted payload B/s", "idle.own_bytes_per_member_s", 0),
    ("packets/s one member handles", "packets.processed_per_s", 0),
]


def table(results: dict[int, dict[str, Result]], sizes: list[int], serf: bool) -> str:
    header = ["metric"]
    for n in sizes:
        header += [f"meshd N={n}"] + ([f"serf N={n}", "ratio"] if serf else [])
    rows = [header]
    for label, path, digits in ROWS:
        row = [label]
        for n in sizes:
            a = _get(results[n].get("meshd"), path)
            row.append(fmt(a, digits))
            if serf:
                b = _get(results[n].get("serf"), path)
                row += [fmt(b, digits), ratio(a, b)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metric_maps(
    results: dict[int, dict[str, Result]], kind: str, prefix: str
) -> dict[str, dict[str, float | None]]:
    keys = {
        "join_s": "join.join_s",
        "join_after_ready_s": "join.after_ready_s",
        "detection_p50_s": "detection.p50",
        "detection_p90_s": "detection.p90",
        "idle_cpu_pct": "idle.cpu_pct",
        "idle_rss_mib": "idle.rss_mib",
        "idle_pss_mib": "idle.pss_mib",
        "bytes_per_member_s": "idle.bytes_per_member_s",
    }
    if kind == "meshd":
        keys["packets_per_s"] = "packets.processed_per_s"
    out: dict[str, dict[str, float | None]] = {}
    for key, path in keys.items():
        out[prefix + key] = {}
        for n, by_kind in results.items():
            value = _get(by_kind.get(kind), path)
            out[prefix + key][str(n)] = None if value is None else round(float(value), 4)
    return out


def targets(results: dict[int, dict[str, Result]], steady: bool) -> dict[str, bool | None]:
    """One verdict per N = 10 target; None where it cannot be judged (no Serf,
    a failed measurement, or bytes from a window that is not steady state)."""
    m = results.get(10, {}).get("meshd")
    s = results.get(10, {}).get("serf")

    def le(a: float | None, b: float | None, factor: float = 1.0) -> bool | None:
        return None if a is None or b is None else a <= factor * b

    return {
        "join_le_1x_serf": le(_get(m, "join.join_s"), _get(s, "join.join_s")),
        "detection_p50_le_1x_serf": le(_get(m, "detection.p50"), _get(s, "detection.p50")),
        "idle_cpu_le_0.3pct": le(_get(m, "idle.cpu_pct"), 0.3),
        "idle_rss_le_40mib": le(_get(m, "idle.rss_mib"), 40.0),
        "bytes_le_1.2x_serf": le(
            _get(m, "idle.bytes_per_member_s"), _get(s, "idle.bytes_per_member_s"), 1.2
        )
        if steady
        else None,
    }


# ==================================================================== main


def serf_version() -> str | None:
    if shutil.which("serf") is None:
        return None
    try:
        out = subprocess.run(["serf", "version"], capture_output=True, timeout=10, text=True).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else "serf (unknown version)"


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 10 only, 3 kills, 10 s idle window (< 2 min)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on the last line"
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], help="mesh sizes, e.g. 10,30"
    )
    parser.add_argument("--kills", type=int, help="SIGKILLs per mesh (default 5; --quick 3)")
    parser.add_argument(
        "--signal",
        choices=("KILL", "STOP"),
        default="KILL",
        help="detection: SIGKILL the victim (default; its port then refuses TCP at once) or "
        "SIGSTOP it (hangs with its sockets open, like an unresponsive host)",
    )
    parser.add_argument(
        "--joins", type=int, help="fresh meshes started per N and kind; join is their median (3)"
    )
    parser.add_argument(
        "--idle",
        type=float,
        help="idle window in seconds (default 60 at N=10, 30 otherwise; --quick 10)",
    )
    parser.add_argument(
        "--no-serf", action="store_true", help="do not run Serf even if it is installed"
    )
    parser.add_argument(
        "--serf-encrypt",
        action="store_true",
        help="run Serf with -encrypt (meshd always encrypts); default: plain",
    )
    parser.add_argument(
        "--poll", type=float, default=0.02, help="poll interval while joining (s, default 0.02)"
    )
    parser.add_argument(
        "--detect-poll",
        type=float,
        default=0.05,
        help="poll interval while waiting for detection (s, default 0.05)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for victims and ports (default 1)"
    )
    args = parser.parse_args(argv)
    plan = attrs.evolve(QUICK if args.quick else FULL)
    if args.sizes:
        plan.sizes = args.sizes
    if args.kills is not None:
        plan.kills = args.kills
    if args.joins is not None:
        plan.joins = max(1, args.joins)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _sigterm)
    version = None if args.no_serf else serf_version()
    run_serf = version is not None
    nft_problem = NftCounter.available()
    nft = NftCounter() if nft_problem is None else None
    method = (
        "nftables counters on lo (IP bytes, UDP+TCP)"
        if nft
        else f"meshd's own counters ({nft_problem})"
    )
    rng = random.Random(args.seed)
    revision = source_revision()
    serf_key = base64.b64encode(os.urandom(32)).decode() if args.serf_encrypt else None

    print(
        f"# loopback membership benchmark: {os.cpu_count()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, meshd {revision}, LAN profile; "
        f"load average {load_average()} "
        "(other processes slow start-up: run on a quiet machine)"
    )
    print(
        f"# serf: {version or ('skipped (--no-serf)' if args.no_serf else 'not installed')}"
        + (f" ({'-encrypt' if serf_key else 'plain, no -encrypt'})" if run_serf else "")
        + f"; joins per mesh: {plan.joins} (median)"
        + f"; kills per mesh: {plan.kills} (SIG{args.signal})"
        + f"; bytes: {method}"
    )
    windows = {
        n: (args.idle if args.idle is not None else plan.idle.get(n, 2 * PUSH_PULL_PERIOD))
        for n in plan.sizes
    }
    steady = plan.steady_after > 0 and all(w >= PUSH_PULL_PERIOD for w in windows.values())
    print(
        "# idle window: "
        + ", ".join(f"{w:.0f} s at N={n}" for n, w in windows.items())
        + (
            f", starting >= {plan.steady_after:.0f} s after the last spawn (push-pull steady state)"
            if steady
            else " -- NOT push-pull steady state (period 30 s; Serf's first push-pull comes "
            "30-60 s after start): gossip bytes are indicative only"
        )
    )
    sys.stdout.flush()
    results: dict[int, dict[str, Result]] = {}
    started = time.monotonic()
    load_start = load_average()
    root = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    meshes: list[Mesh] = []
    try:
        for n in plan.sizes:

            def make_meshd(trial: int, n: int = n) -> Mesh:
                return MeshdMesh(n, root / f"meshd-{n}-{trial}")

            def make_serf(trial: int, n: int = n) -> Mesh:
                return SerfMesh(n, root / f"serf-{n}-{trial}", rng, serf_key)

            results[n] = {"meshd": bench_mesh(make_meshd, plan, n, args, nft, log, meshes)}
            if run_serf:
                results[n]["serf"] = bench_mesh(make_serf, plan, n, args, nft, log, meshes)
    finally:
        for mesh in meshes:
            mesh.close()
        if nft is not None:
            nft.remove()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(table(results, plan.sizes, run_serf))
    print()
    for n in plan.sizes:
        for kind, res in results[n].items():
            bits = []
            if res.join_samples:
                bits.append(
                    "join samples "
                    + ", ".join(fmt(j.join_s) for j in res.join_samples)
                    + " (after ready "
                    + ", ".join(fmt(j.after_ready_s) for j in res.join_samples)
                    + ")"
                )
            if res.detection is not None:
                bits.append(
                    "detection samples " + ", ".join(f"{s:.2f}" for s in res.detection.samples)
                )
                if res.detection.rejoin:
                    bits.append(
                        "rejoin after restart median "
                        f"{statistics.median(res.detection.rejoin):.2f} s"
                    )
                if res.detection.failures:
                    bits.append(f"{res.detection.failures} kill(s) not detected")
            if res.idle is not None:
                bits.append(f"idle window {res.idle.window_s:.1f} s")
            if res.packets is not None:
                bits.append(
                    f"acks received {fmt(res.packets.acks_per_s, 0)}/s, "
                    f"{res.packets.lost_windows} window refills"
                )
            if res.error:
                bits.append(f"ERROR {res.error}")
            print(f"{kind} N={n}: " + "; ".join(bits))
    tg = targets(results, steady)
    if 10 in results:
        m10 = results[10].get("meshd")
        s10 = results[10].get("serf")
        print()
        print("targets at N = 10:")
        serf_bytes = _get(s10, "idle.bytes_per_member_s")
        descriptions = {
            "join_le_1x_serf": (
                "join <= 1.0x Serf",
                _get(m10, "join.join_s"),
                _get(s10, "join.join_s"),
                "s",
            ),
            "detection_p50_le_1x_serf": (
                "detection p50 <= 1.0x Serf",
                _get(m10, "detection.p50"),
                _get(s10, "detection.p50"),
                "s",
            ),
            "idle_cpu_le_0.3pct": ("idle CPU <= 0.3 %", _get(m10, "idle.cpu_pct"), 0.3, "%"),
            "idle_rss_le_40mib": ("idle RSS <= 40 MiB", _get(m10, "idle.rss_mib"), 40.0, "MiB"),
            "bytes_le_1.2x_serf": (
                "gossip bytes <= 1.2x Serf",
                _get(m10, "idle.bytes_per_member_s"),
                None if serf_bytes is None else 1.2 * serf_bytes,
                "B/s",
            ),
        }
        for key, (text, value, limit, unit) in descriptions.items():
            verdict = {True: "met", False: "MISSED", None: "n/a"}[tg[key]]
            note = (
                " -- not judged: idle window not steady state"
                if key == "bytes_le_1.2x_serf" and not steady
                else ""
            )
            print(
                f"  {text:28} {verdict:6} "
                f"(meshd {fmt(value, 3)} {unit}, limit {fmt(limit, 3)} {unit}){note}"
            )
    print(
        f"\n(wall time {time.monotonic() - started:.0f} s; load average at start {load_start}, "
        f"at end {load_average()})"
    )
    revision_end = source_revision()
    if revision_end != revision:
        print(f"WARNING: meshd's source changed during the run ({revision} -> {revision_end})")
    if args.json:
        out: dict[str, Any] = {}
        out.update(metric_maps(results, "meshd", ""))
        if run_serf:
            out.update(metric_maps(results, "serf", "serf_"))
        out["targets"] = tg
        out["meta"] = {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "serf": version if run_serf else None,
            "serf_encrypt": bool(serf_key),
            "bytes_method": "nft" if nft else "meshd_counters",
            "kills": plan.kills,
            "meshd_revision": revision,
            "meshd_revision_end": revision_end,
            "signal": args.signal,
            "joins": plan.joins,
            "idle_window_s": {str(n): w for n, w in windows.items()},
            "idle_steady_state": steady,
            "sizes": plan.sizes,
            "load_average_start": load_start,
            "load_average_end": load_average(),
        }
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
