"""Several "hosts" on one Linux machine: network namespaces on one bridge.

The recipe is ``../shared/netns/README.md`` (verified on the CI machine),
turned into a Python class for tests and benchmarks:

* every host is a namespace ``<prefix>-<letter>`` with ``eth0`` =
  ``10.77.0.<i>/24`` and a multicast route, so mDNS works;
* the hosts' veth peers sit on a bridge inside a namespace of its own
  (``<prefix>-hub``), away from the root namespace's firewall;
* faults are nftables rules in the hub's bridge-forward hook: a set of cut
  ``(in port, out port)`` pairs for partitions, per-port chains with
  ``numgen random`` drops for loss, and a counter of mDNS packets.

Each lab has a random prefix, so parallel runs do not collide; the subnet is
reused because each lab's bridge is isolated. :meth:`NetnsLab.down` kills
whatever still runs in the lab's namespaces and deletes them.

Needs root (or an ``unshare -r`` sandbox), ``ip`` and ``nft``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["NetnsLab", "lab_unavailable"]

_SUBNET = "10.77.0"


def lab_unavailable() -> str | None:
    """Why a lab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root: network namespaces and nftables (run the suite as root, as CI does)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (apt-get install iproute2 nftables)"
    return None


def _run(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class NetnsLab:
    """``size`` hosts on one bridge.

    Args:
        size: number of hosts (1..26), named ``a``, ``b``, …
    """

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 26:
            raise ValueError("size must be 1..26")
        self.prefix = "m" + secrets.token_hex(3)
        self.names = [chr(ord("a") + i) for i in range(size)]
        self.hub = f"{self.prefix}-hub"
        self._up = False

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        return f"{_SUBNET}.{self.names.index(name) + 1}"

    # ---------------------------------------------------------------- build

    def up(self) -> NetnsLab:
        """Build the lab (about 30 ms per host)."""
        self._up = True
        hub = self.hub
        _run("ip", "netns", "add", hub)
        _run("ip", "-n", hub, "link", "set", "dev", "lo", "up")
        _run(
            "ip", "-n", hub, "link", "add", "br0", "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
        )  # fmt: skip
        _run("ip", "-n", hub, "link", "set", "dev", "br0", "up")
        chains, vmap_out, vmap_in = [], [], []
        for name in self.names:
            ns = self.namespace(name)
            _run("ip", "netns", "add", ns)
            _run(
                "ip", "netns", "exec", ns, "sysctl", "-qw",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
            )  # fmt: skip
            _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", ns,
                 "netns", hub)  # fmt: skip
            _run("ip", "-n", hub, "link", "set", "dev", ns, "master", "br0", "up")
            _run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "dev", "eth0", "up")
            _run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            chains.append(f"  chain out_{name} {{ }}\n  chain in_{name} {{ }}")
            vmap_out.append(f'"{ns}" : jump out_{name}')
            vmap_in.append(f'"{ns}" : jump in_{name}')
        ruleset = (
            "table bridge lab {\n"
            "  set cut { type ifname . ifname; }\n"
            + "\n".join(chains)
            + "\n  chain forward_hook {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            "    iifname . oifname @cut drop\n"
            f"    iifname vmap {{ {', '.join(vmap_out)} }}\n"
            f"    oifname vmap {{ {', '.join(vmap_in)} }}\n"
            "  }\n"
            "  counter mdns { }\n"
            # Counted on ingress: a flooded multicast frame passes the
            # forward hook once per port it leaves by.
            "  chain ingress_hook {\n"
            "    type filter hook prerouting priority 0; policy accept;\n"
            "    udp dport 5353 counter name mdns\n"
            "  }\n"
            "}\n"
        )
        _run("ip", "netns", "exec", hub, "nft", "-f", "-", input=ruleset)
        return self

    def down(self) -> None:
        """Kill what runs in the lab and delete its namespaces."""
        if not self._up:
            return
        namespaces = [self.namespace(n) for n in self.names] + [self.hub]
        existing = set(_run("ip", "netns", "list").split())
        namespaces = [ns for ns in namespaces if ns in existing]
        pids: list[int] = []
        for ns in namespaces:
            out = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout
            pids += [int(p) for p in out.split()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3.0
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _running(p)]
                if pids:
                    time.sleep(0.05)
            if not pids:
                break
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._up = False

    def __enter__(self) -> NetnsLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---------------------------------------------------------------- use

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def partition(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        """Drop everything between the two groups of hosts (both directions)."""
        elements = []
        for a in side_a:
            for b in side_b:
                na, nb = self.namespace(a), self.namespace(b)
                elements += [f'"{na}" . "{nb}"', f'"{nb}" . "{na}"']
        self._nft("add", "element", "bridge", "lab", "cut", "{ " + ", ".join(elements) + " }")

    def loss(self, name: str, percent: int) -> None:
        """Drop ``percent`` % of the packets to and from host ``name``."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        for chain in (f"out_{name}", f"in_{name}"):
            self._nft("flush", "chain", "bridge", "lab", chain)
            if percent:
                self._nft(
                    "add", "rule", "bridge", "lab", chain,
                    "numgen", "random", "mod", "100", "<", str(percent), "drop",
                )  # fmt: skip

    def heal(self) -> None:
        """Remove every partition and loss rule, and flush neighbour caches."""
        self._nft("flush", "set", "bridge", "lab", "cut")
        for name in self.names:
            for chain in (f"out_{name}", f"in_{name}"):
                self._nft("flush", "chain", "bridge", "lab", chain)
            subprocess.run(
                ["ip", "-n", self.namespace(name), "neigh", "flush", "dev", "eth0"],
                capture_output=True,
                check=False,
            )

    def mdns_packets(self) -> int:
        """mDNS packets the bridge has forwarded so far (all hosts)."""
        out = self._nft("list", "counter", "bridge", "lab", "mdns")
        for line in out.splitlines():
            words = line.split()
            if "packets" in words:
                return int(words[words.index("packets") + 1])
        raise RuntimeError(f"no packet count in: {out!r}")

    def _nft(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.hub, "nft", *args)


def _running(pid: int) -> bool:
    """Running and not a zombie (``kill -0`` succeeds on zombies)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
