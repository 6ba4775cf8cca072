"""The ``meshd`` command.

``main(argv) -> int`` parses the command line and dispatches; ``run()`` is the
console-script entry point and turns the result into the process exit status.
Every subcommand handler imports what it needs lazily, so ``meshd --help`` and
``meshd --version`` stay fast and never load trio or the simulator.

Only commands that exist are listed, never stubs. A
:class:`~meshd.errors.ConfigError` from any command ends it with exit status
78 (``ExitStatus.CONFIG``) and its one-line message on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from meshd import __version__
from meshd.cli.exit_codes import ExitStatus
from meshd.errors import ConfigError

__all__ = ["build_parser", "main", "run"]

_DESCRIPTION = """\
meshd joins this host to a leaderless gossip mesh: SWIM failure detection
with the Lifeguard refinements, infection-style dissemination and push-pull
anti-entropy.

Set up and run a node:

  meshd init --dir /etc/meshd        write meshd.toml and a new cluster secret
  meshd run --config FILE            run the node in the foreground (run is the
                                     default command: meshd --config FILE)
  meshd keygen                       print a new cluster secret
  meshd check-config FILE            validate a config file, its secret and ports

Install as a systemd service (docs/install.md):

  meshd --print-sysusers > /etc/sysusers.d/meshd.conf && systemd-sysusers
  meshd --print-unit > /etc/systemd/system/meshd.service

To watch the protocol at work:

  meshd demo                         5 real daemons on 127.0.0.1: kill one, see it
                                     detected, restart it, see it rejoin
  meshd demo --nodes 10              a bigger mesh
  meshd demo --help                  all of the demo's options
  meshd demo --simulated             a simulated mesh on virtual time, in this process

'meshd COMMAND --help' describes each command.
"""

_EPILOG = f"""\
exit status:
  {ExitStatus.OK:<4d} success
  {ExitStatus.ERROR:<4d} the command failed; the message says why
  {ExitStatus.USAGE:<4d} bad command line
  {ExitStatus.CONFIG:<4d} the configuration is missing or invalid; the message says what to fix
  {ExitStatus.INTERRUPTED:<4d} interrupted (Ctrl-C)
"""


def _demo(args: list[str]) -> int:
    """``meshd demo``: real daemons on loopback, or with ``--simulated`` the simulator.

    Without ``--simulated``, ``args`` go to :func:`meshd.cli.demo.main`; with
    it (anywhere in ``args``), the other arguments go to
    :func:`meshd.testing.demo.main`. Either is imported only now.
    """
    if "--simulated" in args:
        rest = [a for a in args if a != "--simulated"]
        simulated = importlib.import_module("meshd.testing.demo")
        return int(simulated.main(rest))
    demo = importlib.import_module("meshd.cli.demo")
    return int(demo.main(args))


def _default_config_path() -> Path:
    """``$CONFIGURATION_DIRECTORY/meshd.toml`` under systemd, else ``./meshd.toml``."""
    import os

    directory = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    return Path(directory or ".") / "meshd.toml"


def _run(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """``meshd run``: start the daemon in the foreground until SIGTERM/SIGINT."""
    options = parser.parse_args(args)
    from meshd.config import check_tls_files, load_config, node_id, read_secret

    config = load_config(options.config or _default_config_path())
    try:
        secret = read_secret(config.cluster.secret_file)
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    check_tls_files(config)
    from meshd.runtime.logs import configure_logging

    # journald gets <N> priority prefixes and no timestamps (JOURNAL_STREAM).
    configure_logging(options.log_level or config.log.level)
    import trio

    from meshd.runtime.daemon import serve

    try:
        return trio.run(functools.partial(serve, config, node_id=node_id(config), secret=secret))
    except BaseExceptionGroup as group:
        # A bind failure (port in use, address not here) surfaces from the
        # daemon's nursery wrapped in a group: report it as a config error.
        match, _ = group.split(ConfigError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


_RUN_OPTIONS = ("--config", "--log-level")


def _keygen(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """``meshd keygen``: print a new cluster secret and nothing else."""
    parser.parse_args(args)
    from meshd.config import generate_secret

    print(generate_secret())
    return ExitStatus.OK


def _init(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """``meshd init``: write a config (and a secret) and say what to run next."""
    options = parser.parse_args(args)
    from meshd.config import format_address, load_config, write_init

    path = write_init(
        Path(options.dir),
        name=options.name,
        bind=options.bind,
        seeds=options.seed,
        secret_file=None if options.secret_file is None else Path(options.secret_file),
        cluster=options.cluster,
        advertise=options.advertise,
        mdns=not options.no_mdns,
    )
    config = load_config(path, environ={})
    print(f"wrote {path}")
    if options.name is not None:
        # Issue the TLS identity now, so the first start is as fast as a restart.
        from meshd.config import read_secret
        from meshd.runtime import tls

        secret = read_secret(config.cluster.secret_file)
        tls.isolated_identity(tls.identity_request(config, options.name, secret))
        print(f"issued this node's TLS certificate in {config.state.dir / 'tls'}")
    if options.secret_file is None:
        print(
            f"wrote {config.cluster.secret_file} (mode 0600): the cluster secret; "
            "copy it to every node of the cluster"
        )
    else:
        print(f"using the cluster secret in {config.cluster.secret_file}")
    print(f"state directory: {config.state.dir}")
    print(f"control socket:  {config.control.socket} (created when meshd runs)")
    if config.discovery.mdns:
        print(
            f"mDNS discovery on {config.node.advertise[0]}: nodes with this cluster name and "
            "secret on the same network find each other without seeds"
        )
    if not config.join.seeds:
        print(
            "no seeds: other nodes join this one by mDNS, or with "
            f"--seed {format_address(config.node.advertise)} and a copy of the secret"
        )
    print(f"next: meshd run --config {path}")
    return ExitStatus.OK


def _check_config(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """``meshd check-config``: validate a config, its secret, TLS files and ports."""
    options = parser.parse_args(args)
    from meshd.config import check_ports_free, check_tls_files, load_config, read_secret

    config = load_config(options.file)
    try:
        read_secret(config.cluster.secret_file)
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    check_tls_files(config)
    if not options.skip_port_check:
        check_ports_free(config)
    if config.plugins.enabled or config.plugins.sections:
        # Imports and validates each enabled plugin, as `meshd run` will.
        from meshd.runtime.plugins import check_plugins

        names = check_plugins(config)
        print(f"{config.path}: plugins ready: {', '.join(names) or 'none'}")
    print(f"{config.path}: OK")
    return ExitStatus.OK


def _bind_address(text: str) -> tuple[str, int]:
    """argparse type of ``--bind``/``--advertise``: ``IP:PORT``."""
    from meshd.config import parse_address

    try:
        return parse_address(text, dns_names=False)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed_address(text: str) -> tuple[str, int]:
    """argparse type of ``--seed``: ``HOST:PORT``, HOST may be a DNS name."""
    from meshd.config import parse_address

    try:
        return parse_address(text, dns_names=True)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_Handler = Callable[[list[str]], int]

_INIT_EPILOG = """examples:
  meshd init --dir /etc/meshd --bind 10.0.0.5:7946
  meshd init --dir /etc/meshd --bind 10.0.0.6:7946 --seed 10.0.0.5:7946 \\
             --secret-file /etc/meshd/secret

Every node of a cluster needs the same secret: create it once (here or with
'meshd keygen') and copy it, mode 0600, to the other nodes.
"""

_KEYGEN_EPILOG = """Store it so that nobody else can read it; meshd refuses a secret file that
group or others can access:

  (umask 077; meshd keygen > /etc/meshd/secret)
"""

_CHECK_EPILOG = f"""exit status:
  {ExitStatus.OK:<4d} the configuration is valid
  {ExitStatus.CONFIG:<4d} it is not; the message on stderr says what to fix
"""


#: Top-level options that print a file shipped in the package, for pip installs
#: (meshd/data/__init__.py): (option, bundled file, help).
_BUNDLED = (
    (
        "--print-unit",
        "meshd.service",
        "print the systemd unit and exit (meshd --print-unit > /etc/systemd/system/meshd.service)",
    ),
    (
        "--print-sysusers",
        "meshd.sysusers.conf",
        "print the sysusers.d entry for the meshd user and exit "
        "(meshd --print-sysusers > /etc/sysusers.d/meshd.conf)",
    ),
    (
        "--print-example-config",
        "meshd.example.toml",
        "print the example configuration, every key with its default, and exit",
    ),
)


class _PrintBundled(argparse.Action):
    """An option like ``--version``: print a bundled file verbatim, then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, filename: str, help: str):
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )
        self.filename = filename

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from meshd.data import read_text

        sys.stdout.write(read_text(self.filename))
        sys.stdout.flush()
        parser.exit()


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
    for option, filename, help_text in _BUNDLED:
        parser.add_argument(option, action=_PrintBundled, filename=filename, help=help_text)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_config_commands(commands)
    demo = commands.add_parser(
        "demo",
        help="run real daemons on 127.0.0.1: kill one, watch it detected and rejoin",
        description=(
            "Start real meshd daemons on 127.0.0.1 in a temporary directory, kill one "
            "with SIGKILL, show its detection, restart it, show it rejoin, stop all. "
            "All arguments after 'demo' go to the demo; 'meshd demo --help' lists them. "
            "'meshd demo --simulated [OPTIONS]' runs the in-process simulator instead; "
            "'meshd demo --simulated --help' lists its options."
        ),
        # The demos parse their own options (--nodes, --seed, ...), so --help
        # must reach them instead of being answered here.
        add_help=False,
    )
    handler: _Handler = _demo
    demo.set_defaults(handler=handler)
    return parser


def _add_config_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``init``, ``keygen`` and ``check-config``; each handler re-parses its arguments."""
    run = commands.add_parser(
        "run",
        help="run the daemon in the foreground (what systemd starts)",
        description=(
            "Run this node: bind [node] bind (UDP gossip, TCP streams), open the control\n"
            "socket, find peers (mDNS, the configured seeds, the members known before\n"
            "the last stop) and stay in the mesh until SIGTERM or\n"
            "SIGINT, which leave it gracefully. SIGHUP reloads the configuration file\n"
            "(tags, seeds, log level change live; the rest is reported as needing a\n"
            "restart)."
        ),
        epilog=_CHECK_EPILOG.replace("the configuration is valid", "stopped cleanly"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration file "
        "(default: $CONFIGURATION_DIRECTORY/meshd.toml, else ./meshd.toml)",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override [log] level",
    )
    run.set_defaults(handler=functools.partial(_run, run))

    init = commands.add_parser(
        "init",
        help="write a configuration (and a new cluster secret) for this node",
        description=(
            "Write DIR/meshd.toml, a new cluster secret DIR/secret (mode 0600; unless\n"
            "--secret-file is given) and the state directory DIR/state. Refuses to\n"
            "overwrite an existing DIR/meshd.toml."
        ),
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    init.add_argument("--dir", required=True, help="directory to write into (created if missing)")
    init.add_argument(
        "--name",
        help="this node's name in the mesh (default: '<hostname>-<6 hex>', generated on "
        "first start and kept in the state directory)",
    )
    init.add_argument(
        "--bind",
        type=_bind_address,
        default=("127.0.0.1", 7946),
        metavar="IP:PORT",
        help="address of the gossip (UDP) and stream (TCP) listeners (default: 127.0.0.1:7946)",
    )
    init.add_argument(
        "--advertise",
        type=_bind_address,
        metavar="IP:PORT",
        help="address other nodes reach this one at (default: --bind; required when "
        "--bind is 0.0.0.0 or [::])",
    )
    init.add_argument(
        "--seed",
        type=_seed_address,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a member to join at startup; repeat for more (default: none, start a new cluster)",
    )
    init.add_argument(
        "--secret-file",
        metavar="FILE",
        help="use this existing cluster secret instead of writing a new DIR/secret",
    )
    init.add_argument(
        "--cluster", default="meshd", metavar="NAME", help="cluster name (default: meshd)"
    )
    init.add_argument(
        "--no-mdns",
        action="store_true",
        help="do not find peers with mDNS ([discovery] mdns = false); use seeds instead",
    )
    init.set_defaults(handler=functools.partial(_init, init))

    keygen = commands.add_parser(
        "keygen",
        help="print a new cluster secret",
        description="Print a new cluster secret (base64 of 32 random bytes) on stdout.",
        epilog=_KEYGEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    keygen.set_defaults(handler=functools.partial(_keygen, keygen))

    check = commands.add_parser(
        "check-config",
        help="validate a config file, its secret, TLS files and ports",
        description=(
            "Validate FILE: every key and value, the cluster secret file (content and\n"
            "mode 0600), the TLS files in pki mode, and that [node] bind is free for\n"
            "UDP and TCP. Prints 'FILE: OK' when all is well, else one line on stderr\n"
            "saying what to fix."
        ),
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    check.add_argument("file", metavar="FILE", help="the configuration file (meshd.toml)")
    check.add_argument(
        "--skip-port-check",
        action="store_true",
        help="do not try to bind [node] bind (e.g. while the daemon is running)",
    )
    check.set_defaults(handler=functools.partial(_check_config, check))


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
        # ``run`` is the default command: ``meshd --config FILE`` runs, and so
        # does a bare ``meshd`` when the default config file exists.
        if (not args and _default_config_path().exists()) or (
            args and args[0].split("=", 1)[0] in _RUN_OPTIONS
        ):
            args = ["run", *args]
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
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return ExitStatus.CONFIG
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return ExitStatus.INTERRUPTED


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    sys.exit(main())
