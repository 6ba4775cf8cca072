"""The ``meshctl`` command: the operator's and scripts' view of a running meshd.

It will talk to the daemon over the control socket (JSON Lines on a unix
socket in meshd's runtime directory). The daemon does not exist yet, so
``meshctl`` has no commands: it prints its help and version, and says so.
Commands are added together with the daemon side that answers them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshd import __version__
from meshd.cli.exit_codes import ExitStatus

__all__ = ["build_parser", "main", "run"]

_DESCRIPTION = """\
meshctl inspects and controls the meshd daemon on this host through its
local control socket.

Its control commands arrive together with the daemon, which is not built
yet; this build of meshctl only reports its version. To see the membership
protocol at work today, run a simulated mesh with:

  meshd demo
"""

_EPILOG = f"""\
exit status:
  {ExitStatus.OK:<4d} success
  {ExitStatus.USAGE:<4d} bad command line
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``meshctl`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshctl`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: command-line arguments, without the program name.

    Returns:
        An :class:`~meshd.cli.exit_codes.ExitStatus` value (as an int).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or ExitStatus.OK
        print(exc.code, file=sys.stderr)
        return ExitStatus.ERROR
    # Nothing to do without a command: show what exists and fail as usage.
    parser.print_help(sys.stderr)
    return ExitStatus.USAGE


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    sys.exit(main())
