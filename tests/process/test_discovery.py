"""Discovery with real daemons on loopback: mDNS without seeds, the member
snapshot after a restart of every node, and ``via`` in the control answers.

mDNS runs on 127.0.0.1 only (``[discovery] interfaces`` defaults to the
advertise address), so nothing leaves the host. Other tests on the same
loopback may announce too; each test cluster has its own cluster name and
secret, which is exactly what keeps meshes apart.

Bounds: MDNS_CONVERGE_S counts from the moment every control socket answers
(the netns recipe measured 1.2 - 1.5 s for zeroconf alone on loopback with
probing; meshd skips the probe). REFORM_S covers a start where every node
tries the snapshot at once and retries back off from 0.25 s.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from meshd.testing.cluster import LocalCluster

MDNS_CONVERGE_S = 10.0
REFORM_S = 15.0
NEVER_MERGED_S = 5.0


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _via(c: LocalCluster, observer: str) -> dict[str, str | None]:
    return {m["name"]: m["via"] for m in c.request(observer, "status")["members"]}


def test_mdns_finds_peers_without_seeds_and_ignores_another_cluster(
    cluster: Callable[..., LocalCluster],
) -> None:
    mesh = cluster(3, seed_first=False, cluster=_name("mdns"), seeds=False, mdns=True)
    assert mesh.wait_until(mesh.converged, MDNS_CONVERGE_S), {
        n: mesh.view(n) for n in mesh.names
    }
    # Every node's mDNS names every other node: "via" ends up mdns for all,
    # also for peers that happened to join us before we saw their advert.
    expected = {o: {n: ("self" if n == o else "mdns") for n in mesh.names} for o in mesh.names}
    assert mesh.wait_until(
        lambda: all(_via(mesh, o) == expected[o] for o in mesh.names), MDNS_CONVERGE_S
    ), {o: _via(mesh, o) for o in mesh.names}
    assert mesh.request("node-1", "status")["mdns"] == "running"

    other = cluster(1, cluster=_name("other"), seeds=False, mdns=True)

    def other_was_seen_and_ignored() -> bool:
        counters = mesh.request("node-1", "info")["discovery"]["mdns"]["counters"]
        return counters.get("ignored_other_cluster", 0) > 0

    assert mesh.wait_until(other_was_seen_and_ignored, MDNS_CONVERGE_S)
    assert (
        mesh.holds_for(
            lambda: all(set(mesh.view(n)) == set(mesh.names) for n in mesh.names)
            and set(other.view("node-1")) == {"node-1"},
            NEVER_MERGED_S,
        )
        is None
    )


def test_mdns_ignores_a_peer_with_another_key(cluster: Callable[..., LocalCluster]) -> None:
    name = _name("samename")
    mesh = cluster(1, cluster=name, seeds=False, mdns=True)
    stranger = cluster(1, cluster=name, seeds=False, mdns=True)  # same name, new secret

    def ignored() -> bool:
        counters = mesh.request("node-1", "info")["discovery"]["mdns"]["counters"]
        return counters.get("ignored_other_key", 0) > 0

    assert mesh.wait_until(ignored, MDNS_CONVERGE_S)
    assert set(mesh.view("node-1")) == {"node-1"}
    assert set(stranger.view("node-1")) == {"node-1"}


def test_restart_of_every_node_reforms_the_mesh_from_the_snapshot(
    cluster: Callable[..., LocalCluster],
) -> None:
    mesh = cluster(4, cluster=_name("snap"))
    assert mesh.wait_until(mesh.converged, 10.0)
    mesh.stop_all()  # SIGTERM everywhere: every node leaves, as in a reboot
    for name in mesh.names:
        snapshot = json.loads((Path(mesh.configs[name]).parent / "state" / "members.json").read_text())
        assert {m["id"] for m in snapshot["members"]} == set(mesh.names) - {name}
        # No seeds and no mDNS: only the snapshot can bring them together.
        mesh.configure(name, "join", {"seeds": []})
    for name in mesh.names:
        mesh.start(name, wait=False)
    assert mesh.wait_until(mesh.converged, REFORM_S), {n: mesh.view(n) for n in mesh.names}
    sources = set()
    for observer in mesh.names:
        sources |= {v for n, v in _via(mesh, observer).items() if n != observer}
    assert "snapshot" in sources
    assert sources <= {"snapshot", "gossip"}


def test_corrupt_snapshot_is_set_aside_and_the_node_starts(
    cluster: Callable[..., LocalCluster],
) -> None:
    mesh = cluster(2, start=False, cluster=_name("corrupt"))
    state = Path(mesh.configs["node-2"]).parent / "state"
    (state / "members.json").write_text("{not json")
    mesh.start("node-1")
    mesh.start("node-2")
    assert mesh.wait_until(mesh.converged, 10.0)
    assert (state / "members.json.bad").read_text() == "{not json"
    log = mesh.log_path("node-2").read_text()
    assert "member snapshot" in log and "unreadable" in log
