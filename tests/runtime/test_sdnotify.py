"""Tests for meshd.runtime.sdnotify against a real, test-owned notify socket.

Each test binds its own AF_UNIX SOCK_DGRAM socket, in the filesystem or in the
abstract namespace (``NOTIFY_SOCKET=@name``), and asserts the exact datagrams.
Watchdog timing runs on trio's autojump clock; nothing sleeps in real time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from meshd.runtime.sdnotify import Notifier, watchdog


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the bound receiving socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock.bind(path)
        env_value = path
    else:
        name = f"meshd-test-{os.getpid()}-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    with sock:
        yield env_value, sock


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` right now (the sends are synchronous)."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def test_notifier_sends_each_message_exactly(notify_socket: tuple[str, socket.socket]) -> None:
    env_value, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": env_value})
    assert notifier.enabled

    assert notifier.ready("joined mesh: 3 members")
    assert notifier.status("3 members, health 0")
    assert notifier.watchdog_ping()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready()
    assert notifier.stopping("leaving the mesh")

    messages = received(sock)
    assert messages[:3] == [
        b"READY=1\nSTATUS=joined mesh: 3 members\n",
        b"STATUS=3 members, health 0\n",
        b"WATCHDOG=1\n",
    ]
    reloading = messages[3].decode().splitlines()
    assert reloading[0] == "RELOADING=1"
    key, _, usec = reloading[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after
    assert len(reloading) == 2
    assert messages[4:] == [b"READY=1\n", b"STOPPING=1\nSTATUS=leaving the mesh\n"]
    assert (notifier.sent, notifier.failed) == (6, 0)


def test_notifier_status_is_one_line(notify_socket: tuple[str, socket.socket]) -> None:
    env_value, sock = notify_socket
    Notifier({"NOTIFY_SOCKET": env_value}).status("two\nlines\r\n")
    assert received(sock) == [b"STATUS=two lines\n"]


def test_notifier_without_notify_socket_is_a_noop() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x")
    assert not notifier.watchdog_ping()
    assert (notifier.sent, notifier.failed) == (0, 0)


def test_notifier_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="meshd.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "not a unix socket path" in caplog.text


def test_notifier_failures_are_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="meshd.sdnotify"):
        assert not notifier.ready()
        assert not notifier.watchdog_ping()
        assert not notifier.watchdog_ping()
    assert (notifier.sent, notifier.failed) == (0, 3)
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]  # warn once per outage


def test_notifier_never_blocks_on_a_full_socket(notify_socket: tuple[str, socket.socket]) -> None:
    # Nobody reads: the queue fills, sends fail with EAGAIN instead of blocking.
    env_value, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": env_value})
    for _ in range(5000):
        notifier.watchdog_ping()
    assert notifier.failed > 0
    assert notifier.sent + notifier.failed == 5000
    assert len(received(sock)) == notifier.sent


@pytest.mark.parametrize(
    ("watchdog_env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "3000"}, 0.0015),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_notifier_watchdog_interval(watchdog_env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **watchdog_env})
    assert notifier.watchdog_interval == expected


async def _record(sock: socket.socket, log: list[tuple[float, bytes]]) -> None:
    tsock = trio.socket.from_stdlib_socket(sock)
    while True:
        data = await tsock.recv(4096)
        log.append((trio.current_time(), data))


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    env_value, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": "30000000"})
    pings: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_record, sock, pings)
        start = trio.current_time()
        await nursery.start(watchdog, notifier)  # the first ping goes out before started()
        await trio.sleep(15 * 4 + 1)
        nursery.cancel_scope.cancel()
    assert pings == [(start + 15.0 * i, b"WATCHDOG=1\n") for i in range(5)]


async def test_watchdog_without_watchdog_returns_at_once(
    notify_socket: tuple[str, socket.socket],
) -> None:
    env_value, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": env_value})
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog, notifier)
    assert received(sock) == []
