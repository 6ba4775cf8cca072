"""The replicated store across a real network partition (network namespaces).

Four hosts, one daemon each, found by mDNS. 100 keys are written at ``all``;
then nftables splits {a, b} | {c, d}. Once each side has declared the other
dead (and rebuilt its ring of two), each side keeps writing at ``one``: the
left side rewrites k0..k49, the right side rewrites k50..k99 and deletes
``doomed``. The partition is removed and the test waits until every pair of
replicas shows equal Merkle roots over the partitions both hold, then reads
every key at ``all`` on every host: each has the value written last, and the
deleted key stays deleted.

Bound: CONVERGE_KV_S after the heal, for membership to re-form, the rings to
agree, handoffs and hints to drain and anti-entropy to finish (its interval is
set to 5 s here). Measured: 3.3 s.
"""

from __future__ import annotations

import time

import pytest

from meshd.testing.cluster import ControlError, LocalCluster
from meshd.testing.netns import lab_unavailable
from tests.net.test_netns_discovery import DEAD_S, MESH_S, _name, _sees, lab  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.net,
    pytest.mark.skipif(lab_unavailable() is not None, reason=lab_unavailable() or ""),
]

CONVERGE_KV_S = 90.0


def _roots_equal(c: LocalCluster) -> bool:
    try:
        roots = {n: c.request(n, "kv_merkle")["roots"] for n in c.names}
        rings = [c.request(n, "ring") for n in c.names]
    except ControlError:
        return False
    names = sorted(c.names)
    return (
        all(sorted(m["name"] for m in r["members"]) == names for r in rings)
        and len({r["fingerprint"] for r in rings}) == 1
        and not any(r["handoffs"] or r["hints_pending"] for r in rings)
        and all(roots[a].get(b) == roots[b].get(a) for a in roots for b in roots if a != b)
    )


def test_replicas_converge_after_a_real_partition_heals(lab) -> None:  # type: ignore[no-untyped-def]
    net = lab(4)
    mesh = net.cluster(
        ["a", "b", "c", "d"],
        name=_name("kvsplit"),
        membership={"reconnect_interval": 3.0},
    )
    for name in mesh.names:
        mesh.configure(name, "kv", {"anti_entropy_interval": 5.0})
    mesh.start_all()
    assert mesh.wait_until(mesh.converged, MESH_S)
    assert mesh.wait_until(lambda: _roots_equal(mesh), 30.0)
    for i in range(100):
        mesh.request("node-1", "kv_put", {"key": f"k{i}", "value": "before", "consistency": "all"})
    mesh.request("node-1", "kv_put", {"key": "doomed", "value": "alive", "consistency": "all"})

    left, right = ["node-1", "node-2"], ["node-3", "node-4"]
    net.net.partition(["a", "b"], ["c", "d"])
    assert mesh.wait_until(
        lambda: all(_sees(mesh, o, {m: "dead" for m in right}) for o in left)
        and all(_sees(mesh, o, {m: "dead" for m in left}) for o in right),
        DEAD_S,
    )
    for i in range(50):
        mesh.request("node-1", "kv_put", {"key": f"k{i}", "value": "left", "consistency": "one"})
    for i in range(50, 100):
        mesh.request("node-3", "kv_put", {"key": f"k{i}", "value": "right", "consistency": "one"})
    mesh.request("node-4", "kv_delete", {"key": "doomed", "consistency": "one"})

    net.net.heal()
    healed = time.monotonic()
    assert mesh.wait_until(mesh.converged, 20.0)
    assert mesh.wait_until(lambda: _roots_equal(mesh), CONVERGE_KV_S), {
        n: mesh.request(n, "ring")["handoffs"] for n in mesh.names
    }
    converge_s = time.monotonic() - healed
    print(f"replicas converged {converge_s:.1f} s after the heal")
    for name in mesh.names:
        for i in range(100):
            got = mesh.request(name, "kv_get", {"key": f"k{i}", "consistency": "all"})
            assert got["value"] == ("left" if i < 50 else "right"), (name, i, got)
        doomed = mesh.request(name, "kv_get", {"key": "doomed", "consistency": "all"})
        assert (doomed["found"], doomed["deleted"]) == (False, True)
    assert converge_s <= CONVERGE_KV_S
