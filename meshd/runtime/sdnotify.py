"""sd_notify(3) for ``Type=notify`` units, in tree (no libsystemd, no PyPI).

The protocol: one AF_UNIX SOCK_DGRAM datagram to ``$NOTIFY_SOCKET`` holding
newline-separated ``KEY=VALUE`` lines; a leading ``@`` names the abstract
namespace. systemd's man page ships a standalone reimplementation and advises
exactly this instead of linking libsystemd.

Lifecycle of meshd under systemd 252 (no ``Type=notify-reload``):

* ``READY=1`` once sockets are bound, plugins started and the first join
  attempt finished; ``STATUS=`` lines after that, whenever they change;
* ``WATCHDOG=1`` from a task in the trio loop (:func:`watchdog`), so a blocked
  loop stops the pings and systemd aborts the process;
* on SIGHUP ``RELOADING=1`` + ``MONOTONIC_USEC=``, then ``READY=1`` when the
  reload is done (``systemctl reload`` waits for it);
* on SIGTERM ``STOPPING=1`` before the leave.

Rule: notifying never raises into the daemon and never blocks the loop. The
socket is non-blocking; a failed send is logged (warning once, debug while it
keeps failing) and counted in :attr:`Notifier.failed`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

__all__ = ["Notifier", "watchdog"]

log = logging.getLogger("meshd.sdnotify")


class Notifier:
    """Sends state changes to the service manager; a no-op outside systemd.

    The environment is read once, here: what systemd passed at exec time.

    Args:
        environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` are looked up (tests pass their own).
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        #: The socket address (abstract ones start with NUL), or None: disabled.
        self.address: str | None = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        #: Seconds between watchdog pings (half of WATCHDOG_USEC), or None.
        self.watchdog_interval: float | None = (
            _watchdog_interval(environ) if self.address is not None else None
        )
        #: Datagrams delivered / not delivered.
        self.sent = 0
        self.failed = 0
        self._failing = False  # warn on the first failure of a run, not on each

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was delivered."""
        if self.address is None:
            return False
        data = "".join(line + "\n" for line in lines).encode()
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto(data, self.address)
        except OSError as e:
            self.failed += 1
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "sd_notify to %r failed: %s", self.address.replace("\0", "@"), e)
            self._failing = True
            return False
        self._failing = False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        return self.notify("READY=1", *_status(status))

    def status(self, status: str) -> bool:
        """One line for ``systemctl status`` (newlines become spaces)."""
        return self.notify(*_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload started; :meth:`ready` ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started (the graceful leave)."""
        return self.notify("STOPPING=1", *_status(status))

    def watchdog_ping(self) -> bool:
        """Tell the watchdog the daemon is alive."""
        return self.notify("WATCHDOG=1")


async def watchdog(
    notifier: Notifier, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ping ``WATCHDOG=1`` every :attr:`Notifier.watchdog_interval` seconds.

    Run it in the daemon's own nursery: it is also a probe of the trio loop's
    liveness. Returns at once when there is no watchdog to feed.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        task_status.started()
        return
    notifier.watchdog_ping()
    task_status.started()
    while True:
        await trio.sleep(interval)
        notifier.watchdog_ping()


def _status(status: str | None) -> tuple[str, ...]:
    if status is None:
        return ()
    return ("STATUS=" + " ".join(status.splitlines()),)


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    if value[0] == "/":
        return value
    # vsock:CID:PORT (systemd 253+, VMs) and anything newer: not supported.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", value)
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    try:
        if pid and int(pid) != os.getpid():
            return None  # meant for another process (we were forked or exec'd by it)
        interval = int(usec) / 2e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r WATCHDOG_PID=%r: not integers", usec, pid)
        return None
    return interval if interval > 0 else None
