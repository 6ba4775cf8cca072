#!/usr/bin/env python3
"""Developer entry point: needs only python3 (3.11+), no make, no activated venv.

    python3 dev.py demo [ARGS...]    run the demo (5 real daemons on loopback) (``meshd demo ARGS...``)
    python3 dev.py test [ARGS...]    run the test suite (``pytest ARGS...``)

Both create ``.venv/`` in this checkout if it is missing and install meshd
into it in editable mode with the ``test`` extra, together with the bundled
plugins (``plugins/*/pyproject.toml``, each its own distribution, also
editable). The install is repeated only when one of those ``pyproject.toml``
files changes, or a plugin is added or removed (their hash is kept in
``.venv/``).

On a fresh Debian, ``python3 -m venv`` fails until the ``python3-venv``
package is installed; as root with apt-get available this script installs it,
otherwise it says what to install. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
VENV_PYTHON = VENV_BIN / "python"
# Written only after `python -m venv` succeeded: a venv that ensurepip broke
# halfway (Debian without python3-venv leaves one behind) has no marker.
CREATED_MARKER = VENV / ".dev-created"
INSTALL_STAMP = VENV / ".dev-install-stamp"
INSTALL_SPEC = ".[test]"
#: Bundled plugins: every plugins/<name>/ holding a pyproject.toml is a
#: distribution of its own, installed editable next to meshd.
PLUGINS_DIR = ROOT / "plugins"

PYTEST_NO_TESTS_COLLECTED = 5

USAGE = """\
usage: python3 dev.py demo [ARGS...]   run the demo (5 real daemons on loopback) (meshd demo ARGS...)
       python3 dev.py test [ARGS...]   run the test suite (pytest ARGS...)

Both create .venv/ here on first use and install meshd into it (editable,
with test tools, and the bundled plugins in plugins/); they reinstall only
when a pyproject.toml changes.
pytest runs from the repository root: give test paths relative to it.
"""


def say(message: str) -> None:
    """A short progress line on stderr (stdout belongs to the command)."""
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    say(f"error: {message}")
    return 1


def _venv_ok() -> bool:
    if not VENV_PYTHON.exists():
        return False
    if CREATED_MARKER.exists():
        return True
    # A .venv made by hand is adopted if its pip works.
    check = [str(VENV_PYTHON), "-m", "pip", "--version"]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        CREATED_MARKER.write_text("adopted by dev.py\n", encoding="utf-8")
        return True
    return False


def _try_create_venv() -> bool:
    if VENV.exists():
        say("removing the incomplete .venv/")
        shutil.rmtree(VENV)
    say(f"creating .venv/ with {sys.executable} (Python {sys.version.split()[0]})")
    result = subprocess.run(
        [sys.executable, "-m", "venv", str(VENV)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode == 0 and VENV_PYTHON.exists():
        CREATED_MARKER.write_text("created by dev.py\n", encoding="utf-8")
        return True
    # Keep pip/ensurepip's explanation visible, indented under our line.
    for line in result.stdout.strip().splitlines():
        print(f"    {line}", file=sys.stderr)
    return False


def _install_python3_venv() -> bool:
    """``apt-get install python3-venv`` when we are root and apt exists."""
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("the venv module is incomplete; installing python3-venv with apt-get")
    for command in ([apt, "update"], [apt, "install", "-y", "python3-venv"]):
        say("running: " + " ".join(command))
        # apt's chatter goes to stderr so stdout stays the command's.
        if subprocess.run(command, env=env, stdout=sys.stderr, check=False).returncode != 0:
            return False
    return True


def ensure_venv() -> bool:
    """Make sure ``.venv/`` exists and works; False after printing why not."""
    if _venv_ok():
        return True
    if _try_create_venv():
        return True
    if _install_python3_venv() and _try_create_venv():
        return True
    if VENV.exists():
        shutil.rmtree(VENV, ignore_errors=True)
    say(
        "error: could not create .venv/: Python's venv/ensurepip is missing. "
        "Install it (on Debian/Ubuntu: `sudo apt-get install python3-venv`) and run this again."
    )
    return False


def _plugin_projects() -> list[Path]:
    """The bundled plugins' directories (those with a pyproject.toml), sorted."""
    if not PLUGINS_DIR.is_dir():
        return []
    return sorted(p.parent for p in PLUGINS_DIR.glob("*/pyproject.toml"))


def _pyproject_hash() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + INSTALL_SPEC.encode())
    for project in _plugin_projects():
        # The path too: adding, removing or renaming a plugin changes the hash.
        digest.update(str(project.relative_to(ROOT)).encode() + b"\0")
        digest.update((project / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def ensure_installed() -> bool:
    """``pip install -e '.[test]' -e plugins/...`` unless the pyproject files are unchanged."""
    wanted = _pyproject_hash()
    installed = INSTALL_STAMP.exists() and (VENV_BIN / "meshd").exists()
    if installed and INSTALL_STAMP.read_text(encoding="utf-8").strip() == wanted:
        return True
    plugins = [str(p.relative_to(ROOT)) for p in _plugin_projects()]
    say(
        f"installing meshd (editable, {INSTALL_SPEC})"
        + (f" and the plugins in {', '.join(plugins)}" if plugins else "")
        + " into .venv/ - first run takes a minute"
    )
    INSTALL_STAMP.unlink(missing_ok=True)
    command = [
        str(VENV_PYTHON),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--editable",
        INSTALL_SPEC,
    ]
    for plugin in plugins:
        command += ["--editable", plugin]
    if subprocess.run(command, cwd=ROOT, stdout=sys.stderr, check=False).returncode != 0:
        say("error: pip install failed (see above); fix it and run this again")
        return False
    INSTALL_STAMP.write_text(wanted + "\n", encoding="utf-8")
    say("installed")
    return True


#: Commands some tests need, and the Debian package that brings each. As
#: root with apt-get, `test` installs the missing ones; otherwise those tests
#: skip and say why.
TEST_TOOLS = {"nft": "nftables", "systemd-analyze": "systemd"}


def ensure_test_tools() -> None:
    """Install the Debian packages of missing TEST_TOOLS when root with apt-get."""
    missing = sorted({pkg for tool, pkg in TEST_TOOLS.items() if shutil.which(tool) is None})
    apt = shutil.which("apt-get")
    if not missing or os.geteuid() != 0 or apt is None:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("installing what some tests need: " + " ".join(missing))
    for command in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", *missing]):
        say("running: " + " ".join(command))
        if subprocess.run(command, env=env, stdout=sys.stderr, check=False).returncode != 0:
            say("warning: apt-get failed; the tests that need " + " ".join(missing) + " will skip")
            return


def run_test(args: list[str]) -> int:
    """Run pytest in the venv and return its exit status (no tests = failure)."""
    ensure_test_tools()
    command = [str(VENV_PYTHON), "-m", "pytest", *args]
    say("running: .venv/bin/python -m pytest " + " ".join(args))
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to pytest too; let it finish its report.
        status = process.wait()
    if status == PYTEST_NO_TESTS_COLLECTED:
        say("error: pytest collected no tests (exit 5); treating that as a failure")
        return 1
    return status if status >= 0 else 128 - status


def run_demo(args: list[str]) -> int:
    """Replace this process with ``.venv/bin/meshd demo ARGS...``."""
    meshd = VENV_BIN / "meshd"
    if not meshd.exists():  # ensure_installed() just checked; only a race gets here
        return fail(f"{meshd} is missing; delete .venv/ and run this again")
    sys.stderr.flush()
    sys.stdout.flush()
    os.execv(meshd, [str(meshd), "demo", *args])
    return 1  # not reached


COMMANDS = {"demo": run_demo, "test": run_test}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(USAGE, end="", file=sys.stderr)
        fail(f"unknown command {command!r}; use 'demo' or 'test'")
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        return fail(f"meshd needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not ensure_venv() or not ensure_installed():
        return 1
    return COMMANDS[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
