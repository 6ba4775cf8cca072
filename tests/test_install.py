"""The install path of docs/install.md, from the wheel to a checked unit and config.

Two groups of tests:

* In the checkout (fast): ``meshd --print-unit``, ``--print-sysusers`` and
  ``--print-example-config`` print the repository's files; the wheel's
  ``force-include`` table bundles exactly the files ``meshd.data`` serves; the
  configuration docs/install.md writes is valid and agrees with the unit.
* From the wheel (about 10 s): build it with ``pip wheel``, install it into a
  fresh venv outside the checkout, and check ``meshd --version``, that
  ``meshd --print-unit`` passes ``systemd-analyze verify`` (no stderr) and
  ``security`` (exposure <= 2.0), and that the bundled example config passes
  ``meshd check-config``.

How the fresh venv gets meshd's dependencies: ``pip install`` resolves them
from the package index, exactly as docs/install.md tells operators to do.
That is the point of the test: a dependency missing from pyproject.toml, or
a file missing from the wheel, fails here and not on an operator's host.
Borrowing the dev venv's site-packages (a ``.pth`` file) would be offline
but would hide both mistakes. The index is reachable wherever the dev venv
could be installed (dev.py does the same), and pip's cache makes the second
run fast. The wheel is built with build isolation, which fetches hatchling
the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_systemd_unit import (  # type: ignore[import-not-found]  # pytest's rootdir import
    INSTALLED_MESHD,
    MAX_EXPOSURE,
    ensure_systemd_tools,
    parse_unit,
    security_exposure,
    verify_unit,
)

from meshd import __version__
from meshd.cli import daemon, meshctl
from meshd.cli.exit_codes import ExitStatus
from meshd.data import FILES

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "install.md"

#: The option of ``meshd`` that prints each bundled file.
PRINT_OPTIONS = {
    "--print-unit": "meshd.service",
    "--print-sysusers": "meshd.sysusers.conf",
    "--print-example-config": "meshd.example.toml",
}

#: Variables that would make a subprocess see this checkout or this host's
#: daemon instead of the installed wheel and the test's own files.
_LEAKY_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "MESHCTL_SOCKET",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}


def _run(
    args: list[str | Path], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start, as `umask 077` would."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _kill_stub() -> list[str]:
    # /bin/kill (procps) is on every Debian host but not in slim images.
    return [] if os.access("/bin/kill", os.X_OK) else ["/bin/kill"]


# ================================================================ in the checkout


@pytest.mark.parametrize(("option", "name"), sorted(PRINT_OPTIONS.items()))
def test_print_option_prints_the_repository_file(
    capsys: pytest.CaptureFixture[str], option: str, name: str
) -> None:
    assert daemon.main([option]) == ExitStatus.OK
    out, err = capsys.readouterr()
    assert err == ""
    assert out == (ROOT / FILES[name]).read_text(encoding="utf-8")


def test_print_options_are_in_meshd_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    for option in PRINT_OPTIONS:
        assert option in out


def test_wheel_bundles_exactly_the_files_meshd_data_serves() -> None:
    # One list in pyproject.toml (what the wheel gets), one in meshd.data
    # (what it reads): they must name the same files.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include == {source: f"meshd/data/{name}" for name, source in FILES.items()}
    assert set(FILES) == set(PRINT_OPTIONS.values())
    for source in FILES.values():
        assert (ROOT / source).is_file()
    # The single copy is the one at the root; none may sit in the package.
    for name in FILES:
        assert not (ROOT / "meshd" / "data" / name).exists()


def _guide_config() -> str:
    """The meshd.toml that docs/install.md writes with ``cat > ... <<'EOF'``."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(r"^cat > /etc/meshd/meshd\.toml <<'EOF'\n(.*?)^EOF$", text, re.M | re.S)
    assert found, "docs/install.md no longer writes /etc/meshd/meshd.toml with a heredoc"
    return found.group(1)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="meshd-install-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _keygen(capsys: pytest.CaptureFixture[str]) -> str:
    assert daemon.main(["keygen"]) == ExitStatus.OK
    return capsys.readouterr().out


def test_install_guide_config_passes_check_config(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CONFIGURATION_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    text = _guide_config()
    # The host's paths, moved under the test's directory.
    paths = {
        "/etc/meshd/secret": short_dir / "secret",
        "/var/lib/meshd": short_dir / "state",
        "/run/meshd/meshd.sock": short_dir / "meshd.sock",
    }
    for host, here in paths.items():
        assert f'"{host}"' in text
        text = text.replace(f'"{host}"', f'"{here}"')
    _write_secret(short_dir / "secret", _keygen(capsys))
    config = short_dir / "meshd.toml"
    config.write_text(text, encoding="utf-8")
    # 10.0.0.5 is the guide's example address, not this host's: no port check.
    status = daemon.main(["check-config", "--skip-port-check", str(config)])
    out, err = capsys.readouterr()
    assert (status, err) == (ExitStatus.OK, "")
    assert out == f"{config}: OK\n"
    # `meshctl --config` finds the socket from the file alone (no $RUNTIME_DIRECTORY).
    choice = meshctl.resolve_socket(socket_flag=None, config_flag=str(config), environ={})
    assert choice.path == short_dir / "meshd.sock"


def test_install_guide_agrees_with_the_unit() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    service = parse_unit((ROOT / "systemd" / "meshd.service").read_text())["Service"]
    config = tomllib.loads(_guide_config())
    # ExecStart runs the venv of step 1 on the file of step 5.
    venv_meshd, run, flag, config_path = service["ExecStart"][0].split()
    assert (venv_meshd, run, flag) == (INSTALLED_MESHD, "run", "--config")
    assert f"python3 -m venv {Path(venv_meshd).parent.parent}\n" in guide
    assert f"cat > {config_path} <<'EOF'" in guide
    # The config names the directories systemd creates for the unit.
    assert config["control"]["socket"] == f"/run/{service['RuntimeDirectory'][0]}/meshd.sock"
    assert config["state"]["dir"] == f"/var/lib/{service['StateDirectory'][0]}"
    assert service["User"] == ["meshd"]
    assert "chown meshd:meshd /etc/meshd/secret" in guide
    for option, target in (
        ("--print-unit", "/etc/systemd/system/meshd.service"),
        ("--print-sysusers", "/etc/sysusers.d/meshd.conf"),
    ):
        assert f"meshd {option} > {target}" in guide


def test_install_guide_status_sample_is_what_meshctl_prints() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    found = re.search(r"^```\n(Mesh: prod .*?)^```$", guide, re.M | re.S)
    assert found, "docs/install.md no longer shows a meshctl status sample"

    def member(name: str, addr: str, via: str) -> dict[str, object]:
        return {"name": name, "id": name, "addr": addr, "status": "alive", "incarnation": 1,
                "tags": {}, "via": via, "protocol": {"min": 1, "max": 1, "version": 1}}  # fmt: skip

    answer = {
        "self": "web-1",
        "cluster": "prod",
        "key_fingerprint": "3f2a9c0d17b84e65",
        "health": 0,
        "members": [
            member("web-2", "10.0.0.6:7946", "mdns"),
            member("web-1", "10.0.0.5:7946", "self"),
            member("db-1", "10.0.0.4:7946", "seed"),
        ],
        "counts": {"alive": 3, "suspect": 0, "dead": 0, "left": 0},
        "split": None,
        "mdns": "running",
    }
    assert found.group(1).splitlines() == meshctl.render_status(answer).out


# ================================================================ from the wheel


class Installed:
    """meshd built as a wheel and installed into a fresh venv outside the checkout."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.wheel = self._build()
        self.venv = base / "venv"
        self._install()

    def _build(self) -> Path:
        dist = self.base / "dist"
        proc = _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT],
            cwd=self.base,
            timeout=300,
        )
        assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
        (wheel,) = dist.glob("meshd-*.whl")
        return wheel

    def _install(self) -> None:
        # --without-pip + `pip --python`: the dev venv's pip installs into the
        # new venv, which saves the ensurepip run (a few seconds).
        proc = _run([sys.executable, "-m", "venv", "--without-pip", self.venv], cwd=self.base)
        assert proc.returncode == 0, proc.stderr
        proc = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                self.python,
                "install",
                "--quiet",
                self.wheel,
            ],
            cwd=self.base,
            timeout=300,
        )
        assert proc.returncode == 0, (
            "pip install of the wheel (dependencies from the package index) failed:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, command: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """``VENV/bin/COMMAND ARGS`` in the test's directory, outside the checkout."""
        return _run([self.venv / "bin" / command, *args], cwd=self.base)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("install"))


def test_wheel_holds_only_meshd_with_the_bundled_files(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        top = {name.split("/")[0] for name in names}
        assert top == {"meshd", f"meshd-{__version__}.dist-info"}
        for name, source in FILES.items():
            assert wheel.read(f"meshd/data/{name}") == (ROOT / source).read_bytes()


def test_installed_meshd_runs_from_the_venv(installed: Installed) -> None:
    proc = installed.run("meshd", "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"meshd {__version__}\n", "")
    proc = installed.run("meshctl", "--version")
    assert (proc.returncode, proc.stdout) == (0, f"meshctl {__version__}\n")
    # The wheel's copy is what runs, not the checkout (no editable path leaks in).
    proc = installed.run("python", "-c", "import meshd.data; print(meshd.data.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed.venv)


@pytest.mark.parametrize(("option", "name"), sorted(PRINT_OPTIONS.items()))
def test_installed_print_option_prints_the_repository_file(
    installed: Installed, option: str, name: str
) -> None:
    proc = installed.run("meshd", option)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (ROOT / FILES[name]).read_text(encoding="utf-8")


def test_installed_unit_passes_systemd_analyze(installed: Installed, tmp_path: Path) -> None:
    ensure_systemd_tools()
    unit = installed.run("meshd", "--print-unit").stdout
    # As printed, with the install guide's /opt/meshd/bin/meshd stubbed.
    status, stderr = verify_unit(
        unit, tmp_path / "as-printed", stub=[INSTALLED_MESHD, *_kill_stub()]
    )
    assert stderr == "", stderr
    assert status == 0
    # And with ExecStart at the console script just installed: no stub needed.
    real = unit.replace(INSTALLED_MESHD, str(installed.venv / "bin" / "meshd"))
    assert real != unit
    status, stderr = verify_unit(real, tmp_path / "real", stub=_kill_stub())
    assert stderr == "", stderr
    assert status == 0
    exposure, report = security_exposure(unit, tmp_path)
    assert exposure <= MAX_EXPOSURE, report


def test_installed_example_config_passes_check_config(installed: Installed) -> None:
    conf = installed.base / "etc"
    conf.mkdir(exist_ok=True)
    example = installed.run("meshd", "--print-example-config").stdout
    # secret_file = "secret" is relative to the config's directory.
    assert 'secret_file = "secret"' in example
    (conf / "meshd.toml").write_text(example, encoding="utf-8")
    keygen = installed.run("meshd", "keygen")
    assert keygen.returncode == 0, keygen.stderr
    _write_secret(conf / "secret", keygen.stdout)
    proc = installed.run("meshd", "check-config", conf / "meshd.toml")
    if proc.returncode == ExitStatus.CONFIG and "port in use" in proc.stderr:
        # 127.0.0.1:7946 or :9946 is taken on this machine (another meshd, a
        # test): the rest of the check still has to pass.
        print(f"ports busy, checking without them: {proc.stderr.strip()}")
        proc = installed.run("meshd", "check-config", "--skip-port-check", conf / "meshd.toml")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"{conf / 'meshd.toml'}: OK\n"
