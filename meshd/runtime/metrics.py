"""Prometheus metrics: a private registry and a small trio HTTP endpoint.

Feeding is cheap for the daemon. Counters and gauges are not updated on the
hot path: the daemon already keeps them (``NodeCore.statistics()`` and
``Daemon.counters``), and a collector reads one :class:`MetricsSnapshot`
from a callback when Prometheus scrapes (:func:`snapshot_from_counters` builds
it from those two). Only the histograms are observed directly
(:attr:`Metrics.probe_duration`, :attr:`Metrics.kv_request_duration`).

Names follow the Prometheus conventions: one ``meshd_`` prefix, base units,
``_total`` on counters, a ``meshd_build_info`` pseudo-metric. Labels have a
small, fixed set of values; peer names and addresses are never labels (they
grow with the mesh).

The endpoint (:func:`serve_metrics`) speaks just enough HTTP/1.1 for a
scraper: ``GET``/``HEAD /metrics``, one request per connection, then close.
It parses untrusted bytes, so garbage gets a 400, a slow client is cut off
after a deadline, connections beyond a cap get a 503, and nothing a client
sends can stop the server.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from meshd import __version__
from meshd.core.node import CoreStatistics
from meshd.core.outputs import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
)

__all__ = [
    "MEMBER_EVENTS",
    "MEMBER_EVENT_LABELS",
    "MEMBER_STATES",
    "Histogram",
    "Metrics",
    "MetricsSnapshot",
    "serve_metrics",
    "snapshot_from_counters",
]

log = logging.getLogger("meshd.metrics")

#: ``meshd_members{state}``: every state is exported, zeros included.
MEMBER_STATES = ("alive", "suspect", "dead", "left")
#: ``meshd_member_events_total{event}``: one per kind of membership change.
MEMBER_EVENTS = ("join", "suspect", "recover", "fail", "leave", "update", "reap")
#: Core event -> ``event`` label; the daemon counts ``member_events_<label>``.
MEMBER_EVENT_LABELS: Mapping[type[Event], str] = MappingProxyType(
    {
        MemberJoined: "join",
        MemberSuspected: "suspect",
        MemberRecovered: "recover",
        MemberFailed: "fail",
        MemberLeft: "leave",
        MemberUpdated: "update",
        MemberReaped: "reap",
    }
)

#: Probe round trips: sub-millisecond on a LAN up to the probe timeout.
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: KV requests include quorum round trips over TCP+TLS.
KV_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_EMPTY: Mapping[str, int] = MappingProxyType({})


def _frozen_map(value: Mapping[Any, int] | None) -> Mapping[Any, int]:
    # A read-only copy: the daemon may go on mutating what it passed.
    return MappingProxyType(dict(value or {}))


@attrs.frozen(kw_only=True)
class MetricsSnapshot:
    """What the daemon knows at scrape time; every field defaults to "nothing yet".

    Counters are cumulative since start. Keys are label values.
    """

    #: state ("alive", "suspect", "dead", "left") -> members, self included.
    members: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_map)
    #: event (see :data:`MEMBER_EVENTS`) -> count.
    member_events: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_map)
    #: (direction "sent"/"received", type "udp"/"stream") -> packets.
    gossip_packets: Mapping[tuple[str, str], int] = attrs.field(factory=dict, converter=_frozen_map)
    #: direction -> bytes (datagrams and stream frames).
    gossip_bytes: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_map)
    #: reason -> packets dropped before the protocol saw them.
    packets_rejected: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_map)
    #: Lifeguard local health: 0 is healthy, higher is worse.
    health_score: int = 0
    broadcast_queue_depth: int = 0
    #: (op, consistency, result) -> requests.
    kv_requests: Mapping[tuple[str, str, str], int] = attrs.field(
        factory=dict, converter=_frozen_map
    )
    hints_pending: int = 0
    #: plugin name (from the configuration) -> restarts.
    plugin_restarts: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_map)


def snapshot_from_counters(
    stats: CoreStatistics,
    counters: Mapping[str, int],
    *,
    plugin_restarts: Mapping[str, int] | None = None,
    kv_requests: Mapping[tuple[str, str, str], int] | None = None,
    hints_pending: int = 0,
) -> MetricsSnapshot:
    """Build a snapshot from the core's statistics and the daemon's counters.

    Daemon counter keys read (missing ones count as 0):

    * ``udp_packets_sent``/``udp_packets_received``,
      ``stream_frames_sent``/``stream_frames_received`` ->
      ``meshd_gossip_packets_total{direction,type="udp"|"stream"}``;
    * ``udp_bytes_*`` + ``stream_bytes_*`` -> ``meshd_gossip_bytes_total{direction}``;
    * ``rejected_<reason>`` -> ``meshd_packets_rejected_total{reason}``;
    * ``member_events_<event>`` -> ``meshd_member_events_total{event}``.
    """
    packets: dict[tuple[str, str], int] = {}
    octets: dict[str, int] = {}
    for direction in ("sent", "received"):
        packets[(direction, "udp")] = counters.get(f"udp_packets_{direction}", 0)
        packets[(direction, "stream")] = counters.get(f"stream_frames_{direction}", 0)
        octets[direction] = counters.get(f"udp_bytes_{direction}", 0) + counters.get(
            f"stream_bytes_{direction}", 0
        )
    rejected = {k[len("rejected_") :]: v for k, v in counters.items() if k.startswith("rejected_")}
    events = {
        k[len("member_events_") :]: v for k, v in counters.items() if k.startswith("member_events_")
    }
    return MetricsSnapshot(
        members=stats.members,
        member_events=events,
        gossip_packets=packets,
        gossip_bytes=octets,
        packets_rejected=rejected,
        health_score=stats.health_score,
        broadcast_queue_depth=stats.broadcast_queue_depth,
        kv_requests=kv_requests,
        hints_pending=hints_pending,
        plugin_restarts=plugin_restarts,
    )


class Histogram:
    """One histogram without labels, observed on the trio thread.

    prometheus_client's own Histogram also exports a ``_created`` gauge per
    histogram in the text format, unless disabled process-wide; this one is
    just the buckets, ``_sum`` and ``_count``.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (seconds, for meshd's histograms)."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def family(self) -> HistogramMetricFamily:
        """The current state as a metric family."""
        cumulative = list(itertools.accumulate(self._counts))
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        return HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self._sum,
        )


class _SnapshotCollector:
    """Turns one :class:`MetricsSnapshot` per scrape into metric families."""

    def __init__(
        self, snapshot: Callable[[], MetricsSnapshot], version: str, histograms: list[Histogram]
    ) -> None:
        self._snapshot = snapshot
        self._build = (version, ".".join(map(str, sys.version_info[:3])))
        self._histograms = histograms

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not call the daemon's callback.
        return self._families(MetricsSnapshot())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshot())

    def _families(self, s: MetricsSnapshot) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "meshd_members", "Members by state, self included.", labels=["state"]
        )
        for state in (*MEMBER_STATES, *sorted(s.members.keys() - set(MEMBER_STATES))):
            members.add_metric([state], s.members.get(state, 0))
        yield members

        events = CounterMetricFamily(
            "meshd_member_events", "Membership changes seen by this node.", labels=["event"]
        )
        for event in (*MEMBER_EVENTS, *sorted(s.member_events.keys() - set(MEMBER_EVENTS))):
            events.add_metric([event], s.member_events.get(event, 0))
        yield events

        packets = CounterMetricFamily(
            "meshd_gossip_packets",
            "Gossip packets: UDP datagrams and TCP stream frames.",
            labels=["direction", "type"],
        )
        for (direction, kind), n in sorted(s.gossip_packets.items()):
            packets.add_metric([direction, kind], n)
        yield packets

        octets = CounterMetricFamily(
            "meshd_gossip_bytes", "Gossip bytes on the wire (UDP and TCP).", labels=["direction"]
        )
        for direction, n in sorted(s.gossip_bytes.items()):
            octets.add_metric([direction], n)
        yield octets

        rejected = CounterMetricFamily(
            "meshd_packets_rejected",
            "Packets dropped before the protocol (undecryptable, replayed, malformed...).",
            labels=["reason"],
        )
        for reason, n in sorted(s.packets_rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected

        yield GaugeMetricFamily(
            "meshd_health_score",
            "Lifeguard local health multiplier: 0 is healthy, higher means degraded.",
            value=s.health_score,
        )
        yield GaugeMetricFamily(
            "meshd_broadcast_queue_depth",
            "Membership updates waiting to be gossiped.",
            value=s.broadcast_queue_depth,
        )

        kv = CounterMetricFamily(
            "meshd_kv_requests", "KV requests.", labels=["op", "consistency", "result"]
        )
        for (op, consistency, result), n in sorted(s.kv_requests.items()):
            kv.add_metric([op, consistency, result], n)
        yield kv

        yield GaugeMetricFamily(
            "meshd_hints_pending",
            "Hinted-handoff writes held for absent replicas.",
            value=s.hints_pending,
        )

        restarts = CounterMetricFamily(
            "meshd_plugin_restarts", "Plugin restarts after a crash.", labels=["plugin"]
        )
        for plugin, n in sorted(s.plugin_restarts.items()):
            restarts.add_metric([plugin], n)
        yield restarts

        build = GaugeMetricFamily(
            "meshd_build_info", "Always 1; the labels say what runs.", labels=["version", "python"]
        )
        build.add_metric(list(self._build), 1)
        yield build

        for histogram in self._histograms:
            yield histogram.family()


class Metrics:
    """The daemon's metrics: a private registry, never the global default.

    Args:
        snapshot: called on every scrape, on the trio thread; must be quick
            and must not block (build it from counters already kept).
        version: for ``meshd_build_info``.
    """

    def __init__(
        self, snapshot: Callable[[], MetricsSnapshot], *, version: str = __version__
    ) -> None:
        #: Observe a probe's round trip in seconds (ping to ack, direct or indirect).
        self.probe_duration = Histogram(
            "meshd_probe_duration_seconds",
            "Probe round trip, ping to ack (direct or through ping-req).",
            PROBE_BUCKETS,
        )
        #: Observe a KV request's duration in seconds, from receipt to reply.
        self.kv_request_duration = Histogram(
            "meshd_kv_request_duration_seconds",
            "KV request duration, from receipt to reply.",
            KV_BUCKETS,
        )
        self.registry = CollectorRegistry()
        self.registry.register(
            _SnapshotCollector(snapshot, version, [self.probe_duration, self.kv_request_duration])
        )

    def text(self) -> bytes:
        """The Prometheus text format (for ``meshctl metrics``)."""
        return generate_latest(self.registry)


# ================================================================== HTTP endpoint

#: The classic text format (``generate_latest``), also the fallback.
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: Request line plus headers; a scraper sends a few hundred bytes.
MAX_REQUEST_HEAD = 8192
#: Seconds to wait for the client to close after the reply (and for a 503).
_LINGER = 1.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _BadRequest(Exception):
    """The request bytes are not an HTTP/1.x request we can answer."""


@attrs.frozen
class _Request:
    method: str
    path: str
    accept: str


def _parse_request_untrusted(head: bytes) -> _Request:
    """Parse a request head (up to the blank line); raises only :class:`_BadRequest`."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest("not ASCII") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1") or not target.startswith("/"):
        raise _BadRequest("not an HTTP/1.x origin-form request")
    accept = ""
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not line.replace("\t", " ").isprintable():
            raise _BadRequest("malformed header")
        if name.lower() == "accept":
            accept = value.strip()
    return _Request(method, target.partition("?")[0], accept)


def _response(status: int, body: bytes = b"", *, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False, extra: str = "") -> bytes:  # fmt: skip
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode("ascii")
    return header if head_only else header + body


def _answer(registry: CollectorRegistry, request: _Request) -> bytes:
    if request.path != "/metrics":
        return _response(404, b"not found; metrics are at /metrics\n")
    if request.method not in ("GET", "HEAD"):
        return _response(405, b"use GET\n", extra="Allow: GET, HEAD\r\n")
    try:
        encoder, content_type = choose_encoder(request.accept)
    except Exception:  # prometheus_client trips over odd versions: answer in plain text
        encoder, content_type = generate_latest, CONTENT_TYPE_TEXT
    try:
        body = encoder(registry)
    except Exception:
        log.exception("collecting metrics failed")
        return _response(500, b"collecting metrics failed; see the meshd log\n")
    return _response(200, body, content_type=content_type, head_only=request.method == "HEAD")


async def _read_head(stream: trio.abc.Stream) -> bytes:
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) > MAX_REQUEST_HEAD:
            raise _BadRequest("request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise _BadRequest("connection closed mid-request")
        buffer += chunk


async def _handle_connection(
    registry: CollectorRegistry,
    slots: trio.Semaphore,
    request_timeout: float,
    stream: trio.SocketStream,
) -> None:
    async with stream:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(_LINGER):
                await _send(stream, _response(503, b"too many connections\n"))
            return
        try:
            with trio.move_on_after(request_timeout) as scope:
                try:
                    reply = _answer(registry, _parse_request_untrusted(await _read_head(stream)))
                except _BadRequest as e:
                    log.debug("metrics endpoint: bad request: %s", e)
                    reply = _response(400, f"bad request: {e}\n".encode())
                await _send(stream, reply)
            if scope.cancelled_caught:
                log.debug("metrics endpoint: client too slow, closed")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics endpoint: connection failed: %s", e)
        finally:
            slots.release()


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    """Send a reply, then close gently: our FIN first, then drain what the client sent.

    Closing with unread input makes the kernel reset the connection, and a
    reset can destroy the reply before the client reads it (a 400 for an
    oversized request, a 503). The drain is bounded in time and size.
    """
    try:
        await stream.send_all(data)
        await stream.send_eof()
        with trio.move_on_after(_LINGER):
            drained = 0
            while drained < 4 * MAX_REQUEST_HEAD and (chunk := await stream.receive_some(4096)):
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        log.debug("metrics endpoint: client went away: %s", e)


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    max_connections: int = 16,
    request_timeout: float = 10.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` at ``http://host:port/metrics`` until cancelled.

    Args:
        registry: what to expose (:attr:`Metrics.registry`).
        host: address to bind (``[metrics] listen``; 127.0.0.1 by default).
        port: TCP port; 0 picks a free one (tests).
        max_connections: connections served at once; more get a 503.
        request_timeout: seconds a client has to send its request and read the
            reply.
        task_status: ``started()`` with the bound listeners.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = trio.Semaphore(max_connections)
    task_status.started(listeners)
    await trio.serve_listeners(
        partial(_handle_connection, registry, slots, request_timeout), listeners
    )
