"""Exit statuses of ``meshd`` and ``meshctl``.

Scripts and systemd depend on these numbers. Only ever add a member; never
renumber or reuse one. The values follow common practice: 2 is argparse's
usage error, 69/77/78 are BSD ``sysexits.h`` (``os.EX_UNAVAILABLE``,
``os.EX_NOPERM``, ``os.EX_CONFIG``), 130 is 128 + SIGINT as shells report it.
"""

from __future__ import annotations

import enum

__all__ = ["ExitStatus"]


class ExitStatus(enum.IntEnum):
    """Process exit status. Append only: the numbers are a public interface."""

    #: Success.
    OK = 0
    #: The request failed (or a filter matched nothing); the message says why.
    ERROR = 1
    #: Bad command line (argparse's own exit status).
    USAGE = 2
    #: ``meshctl status --check`` found something unhealthy: a member suspect or
    #: dead, a possible split, a local health score above 0, mDNS failed.
    UNHEALTHY = 3
    #: The daemon is unreachable: control socket missing or connection refused.
    UNAVAILABLE = 69
    #: Permission denied, e.g. on the control socket (join group ``meshd``).
    NOPERM = 77
    #: The configuration file is missing, unreadable or invalid.
    CONFIG = 78
    #: Interrupted by Ctrl-C (SIGINT).
    INTERRUPTED = 130
