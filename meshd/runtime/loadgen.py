"""Closed-loop load for the benchmark-aid control commands (``bench_*``).

The daemon can generate load itself (``MESHD_BENCH=1`` only), so that a
benchmark measures the mesh, not the control socket. One loop serves every
such command: ``concurrency`` workers share ``count`` requests; a request
that raises one of the expected errors is counted under its message, the
others are timed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["run_load"]


async def run_load(
    request: Callable[[int], Awaitable[object]],
    *,
    count: int,
    concurrency: int,
    expected_errors: tuple[type[BaseException], ...],
) -> dict[str, Any]:
    """Run ``request(i)`` for ``i`` in ``range(count)``, ``concurrency`` at a time.

    Returns:
        ``count``, ``concurrency``, ``ok``, ``errors`` (message -> count),
        ``elapsed_s``, ``per_s`` (successful requests per second) and
        ``p50_ms``/``p99_ms``/``mean_ms`` of the successful ones.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:
            started = time.perf_counter()
            try:
                await request(i)
            except expected_errors as e:
                errors[str(e)[:120]] += 1
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 4)

    return {
        "count": count,
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": dict(errors),
        "elapsed_s": round(elapsed, 6),
        "per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * sum(latencies) / len(latencies), 4) if latencies else None,
    }
