"""The ``meshd`` and ``meshctl`` command lines: versions, usage errors, exit codes."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

import meshd
from meshd.cli import daemon, meshctl
from meshd.cli.exit_codes import ExitStatus

# ---------------------------------------------------------------------------
# Exit codes are a public interface: only ever add.


def test_exit_status_values_are_stable() -> None:
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "UNHEALTHY": 3,
        "UNAVAILABLE": 69,
        "NOPERM": 77,
        "CONFIG": 78,
        "INTERRUPTED": 130,
    }


# ---------------------------------------------------------------------------
# meshd, in process.


def test_meshd_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--version"]) == ExitStatus.OK
    assert capsys.readouterr().out == f"meshd {meshd.__version__}\n"


def test_meshd_help_lists_only_real_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "usage: meshd" in out
    assert "demo" in out


def test_meshd_has_no_stub_commands() -> None:
    # Only commands that exist are listed.
    parser = daemon.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"demo", "run", "init", "keygen", "check-config"}


def test_meshd_without_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main([]) == ExitStatus.USAGE
    captured = capsys.readouterr()
    assert "usage: meshd" in captured.out + captured.err
    assert "demo" in captured.out + captured.err


def test_meshd_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["frobnicate"]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err


def test_meshd_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--frobnicate"]) == ExitStatus.USAGE
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_meshd_option_before_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--frobnicate", "demo"]) == ExitStatus.USAGE
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def _fake_demo(
    monkeypatch: pytest.MonkeyPatch, main: object, module: str = "meshd.cli.demo"
) -> None:
    """Install a stand-in for a demo module (the real ones run a mesh)."""
    fake = types.ModuleType(module)
    fake.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module, fake)


def _refuse(argv: list[str] | None = None) -> int:
    raise AssertionError(f"the other demo was called with {argv}")


@pytest.mark.parametrize(
    "args",
    [[], ["--nodes", "3"], ["--timeout", "7", "--nodes", "20"], ["--help"], ["demo"]],
)
def test_meshd_demo_forwards_arguments(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    seen: list[list[str]] = []

    def main(argv: list[str] | None = None) -> int:
        seen.append(list(argv or []))
        return 0

    _fake_demo(monkeypatch, main)
    _fake_demo(monkeypatch, _refuse, "meshd.testing.demo")
    assert daemon.main(["demo", *args]) == ExitStatus.OK
    assert seen == [args]


@pytest.mark.parametrize(
    ("args", "forwarded"),
    [
        (["--simulated"], []),
        (["--simulated", "--nodes", "3"], ["--nodes", "3"]),
        (["--seed", "7", "--simulated", "--nodes", "20"], ["--seed", "7", "--nodes", "20"]),
        (["--simulated", "--help"], ["--help"]),
    ],
)
def test_meshd_demo_simulated_forwards_the_rest(
    monkeypatch: pytest.MonkeyPatch, args: list[str], forwarded: list[str]
) -> None:
    seen: list[list[str]] = []

    def main(argv: list[str] | None = None) -> int:
        seen.append(list(argv or []))
        return 0

    _fake_demo(monkeypatch, _refuse)
    _fake_demo(monkeypatch, main, "meshd.testing.demo")
    assert daemon.main(["demo", *args]) == ExitStatus.OK
    assert seen == [forwarded]


@pytest.mark.parametrize("module", ["meshd.cli.demo", "meshd.testing.demo"])
def test_meshd_demo_passes_exit_status_through(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    _fake_demo(monkeypatch, lambda argv=None: 5, module)
    extra = ["--simulated"] if module == "meshd.testing.demo" else []
    assert daemon.main(["demo", *extra]) == 5


def test_meshd_demo_usage_error_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(argv: list[str] | None = None) -> int:
        raise SystemExit(2)  # what argparse does on a bad demo option

    _fake_demo(monkeypatch, main)
    assert daemon.main(["demo", "--bogus"]) == ExitStatus.USAGE


def test_meshd_demo_ctrl_c_is_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    _fake_demo(monkeypatch, main)
    assert daemon.main(["demo"]) == ExitStatus.INTERRUPTED


def test_meshd_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    # The real demo's own validation, before it starts anything.
    assert daemon.main(["demo", "--nodes", "31"]) == ExitStatus.USAGE
    assert "--nodes must be within 2..30" in capsys.readouterr().err
    assert daemon.main(["demo", "--timeout", "0"]) == ExitStatus.USAGE
    assert "--timeout must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# meshctl, in process.


def test_meshctl_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl.main(["--version"]) == ExitStatus.OK
    assert capsys.readouterr().out == f"meshctl {meshd.__version__}\n"


def test_meshctl_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl.main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "usage: meshctl" in out
    assert "daemon" in out


def test_meshctl_without_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl.main([]) == ExitStatus.USAGE
    captured = capsys.readouterr()
    assert "usage: meshctl" in captured.out + captured.err


def test_meshctl_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl.main(["frobnicate"]) == ExitStatus.USAGE
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The installed console scripts.

_SCRIPTS = {"meshd": "meshd.cli.daemon:run", "meshctl": "meshd.cli.meshctl:run"}


def _distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("meshd")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("meshd is not installed (run `python3 dev.py test`, which installs it)")


def test_console_scripts_are_declared() -> None:
    entry_points = {
        ep.name: ep for ep in _distribution().entry_points if ep.group == "console_scripts"
    }
    assert {name: entry_points[name].value for name in _SCRIPTS if name in entry_points} == _SCRIPTS
    assert entry_points["meshd"].load() is daemon.run
    assert entry_points["meshctl"].load() is meshctl.run


@pytest.mark.parametrize("name", sorted(_SCRIPTS))
def test_console_script_version(name: str) -> None:
    _distribution()
    # The scripts directory of the running interpreter: `.venv/bin` under
    # dev.py, even when that directory is not on PATH.
    script = Path(sysconfig.get_path("scripts")) / name
    if not script.exists():
        pytest.skip(f"{script} is not installed for this interpreter")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{name} {meshd.__version__}\n",
        "",
    )


def test_meshd_run_is_the_default_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without a subcommand, run's options select run: a missing config file is
    # reported as a configuration error (78), not as a usage error.
    missing = tmp_path / "nope.toml"
    assert daemon.main(["--config", str(missing)]) == ExitStatus.CONFIG
    assert str(missing) in capsys.readouterr().err
    assert daemon.main([f"--config={missing}"]) == ExitStatus.CONFIG
