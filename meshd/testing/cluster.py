"""Real meshd daemons on 127.0.0.1, one process each, for the demo, tests and benchmarks.

:class:`LocalCluster` writes one configuration per node with ``meshd init``'s
code (``meshd.config.write_init``), starts ``python -m meshd run`` processes,
talks to each through its control socket (the same JSON-lines protocol as
``meshctl``), and kills, stops or restarts them. Nothing is mocked: sockets,
TLS, encryption and the control socket are the product's own.

Waiting is always "poll with a deadline" (:meth:`LocalCluster.wait_until`),
never a fixed sleep.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from meshd import control
from meshd.config import generate_secret, load_config, read_secret, write_init
from meshd.runtime import tls

__all__ = ["ControlError", "LocalCluster"]


class ControlError(Exception):
    """A control request failed or the daemon could not be reached."""


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` ports free for both UDP and TCP on 127.0.0.1 right now."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < count:
        # Below Linux's ephemeral range (32768-60999): a port drawn from it
        # could be taken as some connection's source port while a killed
        # daemon is down, and its restart would fail with EADDRINUSE.
        port = rng.randrange(20000, 32768)
        if port not in ports and _port_free(port):
            ports.append(port)
    return ports


class LocalCluster:
    """N daemons on loopback under ``root`` (one directory per node).

    Args:
        root: an empty directory to hold configs, secrets, state and logs.
        size: number of nodes, named ``node-1`` … ``node-N``.
        cluster: the cluster name.
        membership: ``[membership]`` overrides written into every config
            (e.g. ``{"profile": "lan"}``).
        secret: the cluster secret (base64); a new one by default.
        seeds: every node but the first gets the first as its seed; without,
            nodes have no seeds (they find each other by mDNS or snapshot).
        mdns: ``[discovery] mdns`` (on 127.0.0.1 only: the advertise address).
        discovery: other ``[discovery]`` settings written into every config.
        addresses: ``name -> (ip, port)`` to bind instead of free loopback
            ports (e.g. one address per network namespace).
        launcher: turns a daemon's command line into the one to run (e.g.
            prefixes ``ip netns exec NS``); called with the node's name.
        metrics: serve ``/metrics`` on a free loopback port per node
            (:attr:`metrics_ports`); off by default, since every node of a
            LocalCluster shares one host.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        cluster: str = "meshd",
        membership: Mapping[str, Any] | None = None,
        secret: str | None = None,
        seeds: bool = True,
        mdns: bool = False,
        discovery: Mapping[str, Any] | None = None,
        addresses: Mapping[str, tuple[str, int]] | None = None,
        launcher: Callable[[str, list[str]], list[str]] | None = None,
        metrics: bool = False,
    ) -> None:
        self.root = root
        self.names = [f"node-{i}" for i in range(1, size + 1)]
        if addresses is None:
            addresses = {
                name: ("127.0.0.1", port)
                for name, port in zip(self.names, free_ports(size), strict=True)
            }
        self.addresses = dict(addresses)
        self.ports = {name: self.addresses[name][1] for name in self.names}
        self._launcher = launcher
        self.metrics_ports: dict[str, int] = {}
        if metrics:
            taken = set(self.ports.values())
            free = [p for p in free_ports(2 * size) if p not in taken][:size]
            self.metrics_ports = dict(zip(self.names, free, strict=True))
        self.secret_file = root / "secret"
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write((secret or generate_secret()) + "\n")
        self.configs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        first = self.names[0]
        for name in self.names:
            node_seeds = [self.addresses[first]] if seeds and name != first else []
            path = write_init(
                root / name,
                name=name,
                bind=self.addresses[name],
                seeds=node_seeds,
                secret_file=self.secret_file,
                cluster=cluster,
                mdns=mdns,
                metrics=(
                    ("127.0.0.1", self.metrics_ports[name]) if name in self.metrics_ports else None
                ),
            )
            if membership or discovery:
                data = tomllib.loads(path.read_text())
                data.setdefault("membership", {}).update(membership or {})
                data.setdefault("discovery", {}).update(discovery or {})
                path.write_text(tomli_w.dumps(data))
            self.configs[name] = path
            # Issue the TLS identity now, as `meshd init` does, so that starting
            # a daemon costs what a restart costs.
            config = load_config(path)
            tls.isolated_identity(tls.identity_request(config, name, read_secret(self.secret_file)))
        self._ids = itertools.count(1)

    def configure(self, name: str, section: str, values: Mapping[str, Any]) -> None:
        """Change ``[section]`` of ``name``'s config file (applies at its next start)."""
        path = self.configs[name]
        data = tomllib.loads(path.read_text())
        data.setdefault(section, {}).update(values)
        path.write_text(tomli_w.dumps(data))

    # ------------------------------------------------------------ processes

    def socket_path(self, name: str) -> Path:
        return self.configs[name].parent / "meshd.sock"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``name``'s daemon; with ``wait``, return once its control socket answers.

        ``env`` adds variables to the daemon's environment (e.g. ``NOTIFY_SOCKET``).
        """
        log = open(self.log_path(name), "ab")
        argv = [sys.executable, "-m", "meshd", "run", "--config", str(self.configs[name])]
        if self._launcher is not None:
            argv = self._launcher(name, argv)
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
        log.close()
        self.procs[name] = proc
        if wait and not self.wait_until(lambda: self._answers(name), timeout):
            raise ControlError(
                f"{name} did not start within {timeout} s; see {self.log_path(name)}"
            )
        return proc

    def start_all(self, *, timeout: float = 20.0) -> None:
        for name in self.names:
            self.start(name, wait=False)
        for name in self.names:
            if not self.wait_until(lambda n=name: self._answers(n), timeout):
                raise ControlError(
                    f"{name} did not start within {timeout} s; see {self.log_path(name)}"
                )

    def kill(self, name: str) -> None:
        """SIGKILL: the process dies without leaving."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def terminate(self, name: str, *, timeout: float = 15.0) -> int:
        """SIGTERM: graceful leave; returns the exit status."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def stop_all(self) -> None:
        """SIGTERM everyone still running (SIGKILL whoever does not exit in time)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # ------------------------------------------------------------ control

    def request(
        self, name: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """One control request to ``name``; returns the result or raises ControlError."""
        rid = next(self._ids)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.socket_path(name)))
                s.sendall(control.encode_request(rid, cmd, args or {}))
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ControlError(f"{name}: connection closed")
                    buf += chunk
        except OSError as e:
            raise ControlError(f"{name}: {e}") from None
        reply = control.decode_response_untrusted(buf)
        if not reply["ok"]:
            raise ControlError(f"{name}: {reply['error']['message']}")
        result: dict[str, Any] = reply["result"]
        return result

    def _answers(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise ControlError(
                f"{name} exited with status {proc.returncode}; see {self.log_path(name)}"
            )
        try:
            self.request(name, "info", timeout=1.0)
            return True
        except ControlError:
            return False

    def view(self, name: str) -> dict[str, str]:
        """``name``'s membership table: member → status."""
        return {m["name"]: m["status"] for m in self.request(name, "members")["members"]}

    def incarnation(self, observer: str, member: str) -> int:
        for m in self.request(observer, "members")["members"]:
            if m["name"] == member:
                return int(m["incarnation"])
        raise KeyError(member)

    def all_see(self, member: str, status: str, observers: list[str] | None = None) -> bool:
        """Whether every running observer sees ``member`` with ``status``."""
        try:
            return all(self.view(o).get(member) == status for o in (observers or self.running()))
        except ControlError:
            return False

    def converged(self) -> bool:
        """Every running node sees every running node alive."""
        up = self.running()
        try:
            return all(all(self.view(o).get(m) == "alive" for m in up) for o in up)
        except ControlError:
            return False

    @staticmethod
    def holds_for(
        predicate: Callable[[], bool], seconds: float, interval: float = 0.1
    ) -> str | None:
        """Check that ``predicate`` keeps holding for ``seconds`` (e.g. "never dead").

        Returns None if it always held, else when it first failed. (Something
        that must *not* happen has no event to wait for: sample it.)
        """
        start = time.monotonic()
        while True:
            if not predicate():
                return f"failed after {time.monotonic() - start:.2f} s"
            if time.monotonic() - start >= seconds:
                return None
            time.sleep(interval)

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
