"""RPC between real ``meshd run`` daemons: the daemon's stream server opens
sessions, ``Daemon.call`` finds members, and membership keeps working.

Calls are driven by the ``bench_rpc`` control command (a benchmark aid,
enabled by ``MESHD_BENCH=1`` in the daemons' environment).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.testing.cluster import ControlError, LocalCluster

CONVERGE_S = 15.0


def test_rpc_sessions_between_two_daemons(
    cluster: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHD_BENCH", "1")  # inherited by the daemons
    c = cluster(2)
    assert c.wait_until(c.converged, CONVERGE_S), "the two daemons did not converge"

    result = c.request(
        "node-1", "bench_rpc", {"node": "node-2", "count": 300, "concurrency": 16}, timeout=60
    )
    assert (result["ok"], result["errors"]) == (300, {})
    assert result["p50_ms"] > 0

    # `info` has the same counters as `status`, which also asks each member for
    # its KV load over RPC (and would add one call to each count).
    one = c.request("node-1", "info")["counters"]
    two = c.request("node-2", "info")["counters"]
    # 300 calls from 16 tasks, one connection.
    assert one["rpc_client_connects"] == 1
    assert one["rpc_client_calls"] == 300
    assert two["rpc_server_sessions_accepted"] == 1
    assert two["rpc_server_requests"] == 300

    oneshot = c.request(
        "node-1", "bench_rpc", {"node": "node-2", "count": 5, "mode": "oneshot"}, timeout=60
    )
    assert (oneshot["ok"], oneshot["errors"]) == (5, {})
    assert c.request("node-2", "info")["counters"]["rpc_server_sessions_accepted"] == 6

    # Unknown service: the remote's error comes back per call.
    failed = c.request(
        "node-1", "bench_rpc", {"node": "node-2", "count": 2, "service": "nope"}, timeout=60
    )
    assert failed["errors"] == {"unknown service 'nope'": 2}

    with pytest.raises(ControlError, match="not an alive member"):
        c.request("node-1", "bench_rpc", {"node": "ghost", "count": 1})

    # A call to itself runs locally.
    local = c.request("node-1", "bench_rpc", {"node": "node-1", "count": 3})
    assert local["ok"] == 3

    # Membership still converged; push-pull and probes were unaffected.
    assert c.converged()
