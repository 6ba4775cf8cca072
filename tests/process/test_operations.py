"""Operations with real daemons: systemd notifications, the metrics endpoint,
journald log lines and reload.

The "systemd" here is the test itself: it owns the ``NOTIFY_SOCKET``
(a datagram socket, by path and in the abstract namespace) and reads what the
daemon sends, as systemd would. Nothing is mocked on the daemon side.

Bounds: WATCHDOG_USEC is 1 s, so pings are due every 0.5 s; a gap over
WATCHDOG_GAP_S (systemd would kill at 1 s) fails the test.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.testing.cluster import LocalCluster

WATCHDOG_USEC = 1_000_000
WATCHDOG_GAP_S = 0.9
MESSAGE_S = 15.0


class NotifySocket:
    """A test-owned NOTIFY_SOCKET: collects (monotonic time, message) pairs."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.address = address
        self.messages: list[tuple[float, str]] = []

    def next(self, timeout: float = MESSAGE_S) -> str:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        text = data.decode()
        self.messages.append((time.monotonic(), text))
        return text

    def until(self, predicate: Callable[[str], bool], timeout: float = MESSAGE_S) -> str:
        """Read messages until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message within {timeout} s: {self.messages}")
            text = self.next(left)
            if predicate(text):
                return text

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = f"/tmp/meshd-notify-{uuid.uuid4().hex[:8]}.sock"
    else:
        address = f"@meshd-notify-{uuid.uuid4().hex}"
    sock = NotifySocket(address)
    yield sock
    sock.close()
    if not address.startswith("@"):
        Path(address).unlink(missing_ok=True)


def _fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def test_notify_sequence_ready_watchdog_reload_stopping(
    cluster: Callable[..., LocalCluster], notify_socket: NotifySocket
) -> None:
    c = cluster(1, start=False, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    proc = c.start("node-1", wait=False, env=env)

    ready = notify_socket.until(lambda m: "READY=1" in m)
    # READY means ready: the control socket answers at once.
    assert c.request("node-1", "info", timeout=2.0)["name"] == "node-1"
    assert _fields(ready)["STATUS"].startswith("1 alive")
    # Watchdog pings at half WATCHDOG_USEC, from the trio loop.
    pings = []
    while len(pings) < 4:
        if notify_socket.next().strip() == "WATCHDOG=1":
            pings.append(notify_socket.messages[-1][0])
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(0.3 <= g <= WATCHDOG_GAP_S for g in gaps), gaps

    proc.send_signal(signal.SIGHUP)
    reloading = notify_socket.until(lambda m: "RELOADING=1" in m)
    monotonic_usec = int(_fields(reloading)["MONOTONIC_USEC"])
    # CLOCK_MONOTONIC of the daemon: same clock as ours.
    assert abs(monotonic_usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5.0
    notify_socket.until(lambda m: "READY=1" in m)

    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.until(lambda m: "STOPPING=1" in m)
    assert "leaving" in _fields(stopping).get("STATUS", "")
    assert proc.wait(timeout=15) == 0
    c.procs.pop("node-1")


def test_watchdog_keeps_pinging_under_a_datagram_flood(
    cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    notify = NotifySocket(f"@meshd-notify-{uuid.uuid4().hex}")
    try:
        c = cluster(1, start=False, cluster=f"ops-{uuid.uuid4().hex[:6]}")
        env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        c.start("node-1", wait=False, env=env)
        notify.until(lambda m: "READY=1" in m)
        rng = random.Random(7)
        port = c.ports["node-1"]
        pings: list[float] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            flood_until = time.monotonic() + 4.0
            while time.monotonic() < flood_until:
                for _ in range(200):
                    try:
                        s.sendto(rng.randbytes(rng.randrange(1, 1400)), ("127.0.0.1", port))
                    except BlockingIOError:
                        break
                try:
                    notify.sock.settimeout(0)
                    if notify.sock.recv(4096).strip() == b"WATCHDOG=1":
                        pings.append(time.monotonic())
                except (BlockingIOError, TimeoutError):
                    pass
        while len(pings) < 10:
            if notify.next().strip() == "WATCHDOG=1":
                pings.append(time.monotonic())
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) <= WATCHDOG_GAP_S, gaps
        rejected = c.request("node-1", "status")["counters"]
        assert rejected.get("rejected_undecryptable", 0) > 100
    finally:
        notify.close()


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_endpoint_parses_and_counters_move(cluster: Callable[..., LocalCluster]) -> None:
    c = cluster(2, metrics=True, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    assert c.wait_until(c.converged, 10.0)
    port = c.metrics_ports["node-1"]
    first = _scrape(port)
    assert first["meshd_members{state=alive}"] == 2
    [build] = [v for k, v in first.items() if k.startswith("meshd_build_info{")]
    assert build == 1
    sent = "meshd_gossip_packets_total{direction=sent,type=udp}"
    assert c.wait_until(lambda: _scrape(port)[sent] > first[sent], 10.0)
    probes = "meshd_probe_duration_seconds_count{}"
    assert c.wait_until(lambda: _scrape(port)[probes] > 0, 10.0)  # a probe each second
    later = _scrape(port)
    assert 0 < later["meshd_probe_duration_seconds_sum{}"] < later[probes]  # loopback: < 1 s each
    assert later["meshd_member_events_total{event=join}"] >= 1
    # No peer names or addresses as label values.
    assert not any("node-2" in k or "127.0.0.1" in k for k in later)
    # meshctl metrics gives the same families through the control socket.
    text = c.request("node-1", "metrics")["text"]
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"meshd_members", "meshd_gossip_packets", "meshd_health_score"} <= names


def test_metrics_port_in_use_is_a_config_error(cluster: Callable[..., LocalCluster]) -> None:
    c = cluster(1, start=False, metrics=True, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", c.metrics_ports["node-1"]))
        squatter.listen()
        proc = c.start("node-1", wait=False)
        assert proc.wait(timeout=30) == 78
    c.procs.pop("node-1")
    log = c.log_path("node-1").read_text()
    assert "[metrics] listen" in log and "cannot bind (Address already in use)" in log


def test_journald_lines_carry_priorities(cluster: Callable[..., LocalCluster]) -> None:
    c = cluster(1, start=False, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    log = c.log_path("node-1")
    log.touch()
    st = os.stat(log)
    c.start("node-1", env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    c.terminate("node-1")
    lines = [line for line in log.read_text().splitlines() if line]
    assert lines
    # "<6>meshd: meshd 0.1.0: node ..." — priority, no timestamp.
    assert all(line[0] == "<" and line[2] == ">" for line in lines), lines[:5]
    assert any(line.startswith("<6>") and "listening on" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines)  # no "2026-..." timestamps


def test_reload_changes_tags_and_keeps_membership(cluster: Callable[..., LocalCluster]) -> None:
    c = cluster(3, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    assert c.wait_until(c.converged, 10.0)
    c.configure("node-2", "node", {"tags": {"role": "db"}})
    c.procs["node-2"].send_signal(signal.SIGHUP)

    def tags_everywhere() -> bool:
        return all(
            {m["name"]: m["tags"] for m in c.request(o, "members")["members"]}["node-2"]
            == {"role": "db"}
            for o in c.names
        )

    assert c.wait_until(tags_everywhere, 10.0)
    assert c.holds_for(c.converged, 3.0) is None
    log = c.log_path("node-2").read_text()
    assert "reloaded the configuration" in log


def _meshctl_check(c: LocalCluster, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("meshctl")), "--socket", str(c.socket_path(name)),
         "status", "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


def test_status_check_exit_codes_on_a_healthy_and_a_degraded_mesh(
    cluster: Callable[..., LocalCluster],
) -> None:
    c = cluster(3, cluster=f"ops-{uuid.uuid4().hex[:6]}")
    assert c.wait_until(c.converged, 10.0)
    healthy = _meshctl_check(c, "node-1")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "Alive:3" in healthy.stdout
    c.kill("node-3")
    assert c.wait_until(lambda: c.all_see("node-3", "dead"), 40.0)
    degraded = _meshctl_check(c, "node-1")
    assert degraded.returncode == 3, degraded.stdout + degraded.stderr
    assert "node-3" in degraded.stdout
    assert "unhealthy" in degraded.stderr
