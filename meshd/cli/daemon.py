"""The ``meshd`` command.

``main(argv) -> int`` parses the command line and dispatches; ``run()`` is the
console-script entry point and turns the result into the process exit status.
Every subcommand handler imports what it needs lazily, so ``meshd --help`` and
``meshd --version`` stay fast and never load trio or the simulator.

Only commands that exist are listed. The daemon's own commands are added by
the issue that builds the daemon, not stubbed here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from meshd import __version__
from meshd.cli.exit_codes import ExitStatus

__all__ = ["build_parser", "main", "run"]

_DESCRIPTION = """\
meshd joins this host to a leaderless gossip mesh: SWIM failure detection
with the Lifeguard refinements, infection-style dissemination and push-pull
anti-entropy.

This build contains the protocol core and its deterministic simulator; the
networked daemon is not built yet. To watch the protocol at work, run a
simulated mesh in this process:

  meshd demo                  a simulated 5-node mesh
  meshd demo --nodes 20       a bigger one
  meshd demo --help           all of the demo's options
"""

_EPILOG = f"""\
exit status:
  {ExitStatus.OK:<4d} success
  {ExitStatus.ERROR:<4d} the command failed; the message says why
  {ExitStatus.USAGE:<4d} bad command line
  {ExitStatus.INTERRUPTED:<4d} interrupted (Ctrl-C)
"""


def _demo(args: list[str]) -> int:
    """Run :func:`meshd.testing.demo.main` with ``args`` (imported only now)."""
    demo = importlib.import_module("meshd.testing.demo")
    return int(demo.main(args))


_Handler = Callable[[list[str]], int]


def build_parser() -> argparse.ArgumentParser:
    """The ``meshd`` argument parser; each subcommand sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="meshd",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    demo = commands.add_parser(
        "demo",
        help="run a simulated mesh in this process and show membership live",
        description=(
            "Run a simulated mesh in this process and show membership live. "
            "All arguments after 'demo' go to the simulator; "
            "'meshd demo --help' lists them."
        ),
        # The demo parses its own options (--nodes, --seed, ...), so --help
        # must reach it instead of being answered here.
        add_help=False,
    )
    handler: _Handler = _demo
    demo.set_defaults(handler=handler)
    return parser


def _status_of(exc: SystemExit) -> int:
    """The exit status carried by a ``SystemExit`` (argparse raises it)."""
    if exc.code is None:
        return ExitStatus.OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return ExitStatus.ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meshd`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: command-line arguments, without the program name.

    Returns:
        An :class:`~meshd.cli.exit_codes.ExitStatus` value (as an int).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        namespace, extra = parser.parse_known_args(args)
        if namespace.command is None:
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            parser.print_help(sys.stderr)
            return ExitStatus.USAGE
        # The top-level parser has no options that take a value, so the first
        # occurrence of the command name is the command; everything after it
        # belongs to the subcommand, everything before it is unknown.
        position = args.index(namespace.command)
        if args[:position]:
            parser.error(f"unrecognized arguments: {' '.join(args[:position])}")
        handler: _Handler = namespace.handler
        return handler(args[position + 1 :])
    except SystemExit as exc:
        return _status_of(exc)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return ExitStatus.INTERRUPTED


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    sys.exit(main())
