"""Checks on systemd/meshd.service and systemd/meshd.sysusers.conf.

Three offline checks with systemd's own tools (no systemd as PID 1 needed):

* ``systemd-analyze verify`` prints nothing on stderr. It exits 0 on a typo
  such as ``ProtectSytem=`` and only warns, so the check is "stderr is empty",
  not the exit status. It also fails when the ExecStart binary is missing, so
  :func:`verify_unit` checks a copy whose install path points at a stub.
* ``systemd-analyze security --offline=yes`` reports an exposure of at most
  2.0 (peers measured the same way: Consul 9.2, etcd 9.2, Nomad 9.6).
* ``systemd-sysusers --root`` creates the ``meshd`` user and group the unit
  runs as.

When ``systemd-analyze`` is missing the tests install the ``systemd`` Debian
package as root; they skip only when that is impossible (not root, no apt).

:func:`verify_unit` and :func:`security_exposure` take unit text, so the
packaging test can run them on ``meshd --print-unit`` output too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from meshd.core.config import MembershipConfig

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "meshd.service"
SYSUSERS = ROOT / "systemd" / "meshd.sysusers.conf"

#: Where the install guide puts the venv; ExecStart names its console script.
INSTALLED_MESHD = "/opt/meshd/bin/meshd"
MAX_EXPOSURE = 2.0


# ====================================================================== helpers


def ensure_systemd_tools() -> None:
    """Make ``systemd-analyze`` available, or skip the calling test.

    As root with apt-get, installs the ``systemd`` Debian package (what
    ``.ci/run`` does); otherwise skips with the reason.
    """
    if shutil.which("systemd-analyze"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "systemd-analyze is missing and cannot be installed here "
            "(needs root and apt-get: apt-get install systemd)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "systemd"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}"
    assert shutil.which("systemd-analyze"), "installed systemd but systemd-analyze is missing"


def _stub_executables(text: str, paths: Iterable[str], bindir: Path) -> str:
    """Point every ``Exec*=`` command in ``paths`` at an executable stub."""
    bindir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        stub = bindir / Path(path).name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        # Exec lines may prefix the path with -, @, :, + or ! (systemd.service(5)).
        pattern = re.compile(rf"^(Exec\w+=[-@:+!]*){re.escape(path)}(?=\s|$)", re.MULTILINE)
        text, count = pattern.subn(r"\g<1>" + str(stub).replace("\\", "\\\\"), text)
        assert count, f"{path} is not the command of any Exec*= line"
    return text


def verify_unit(
    text: str,
    workdir: Path,
    *,
    name: str = "meshd.service",
    stub: Iterable[str] = (INSTALLED_MESHD,),
) -> tuple[int, str]:
    """Run ``systemd-analyze verify`` on unit ``text``; return (exit status, stderr).

    Commands listed in ``stub`` do not exist on a build host (the venv under
    /opt/meshd); verify would fail with "Command ... is not executable", so a
    copy of the unit points them at stubs in ``workdir``. Everything else is
    checked as written. ``--man=no`` because no man page ships.
    """
    unit = workdir / "unit" / name
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(_stub_executables(text, stub, workdir / "stub-bin"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return proc.returncode, proc.stderr


_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def security_exposure(
    text: str, workdir: Path, *, name: str = "meshd.service"
) -> tuple[float, str]:
    """``systemd-analyze security --offline=yes``: (exposure 0.0-10.0, full report)."""
    unit = workdir / "security" / name
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    report = proc.stdout + proc.stderr
    found = _OVERALL.search(report)
    assert found, f"no exposure figure in the report (exit {proc.returncode}):\n{report}"
    return float(found.group(1)), report


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; repeated keys accumulate."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "": 1.0}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min|)", value)
    assert found, f"unsupported time span {value!r}"
    return float(found.group(1)) * units[found.group(2)]


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


# ======================================================================== tests


def test_unit_verify_prints_nothing(tmp_path: Path) -> None:
    ensure_systemd_tools()
    stub = [INSTALLED_MESHD]
    if not os.access("/bin/kill", os.X_OK):  # procps: on every Debian host, not in slim images
        stub.append("/bin/kill")
    status, stderr = verify_unit(UNIT.read_text(), tmp_path, stub=stub)
    assert stderr == "", stderr
    assert status == 0


def test_unit_verify_catches_a_typo(tmp_path: Path) -> None:
    # The reason the check is "stderr is empty": a misspelt hardening option
    # is only a warning, and the exit status stays 0.
    ensure_systemd_tools()
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    _, stderr = verify_unit(text, tmp_path, stub=[INSTALLED_MESHD, "/bin/kill"])
    assert "ProtectSytem" in stderr


def test_unit_security_exposure_at_most_2(tmp_path: Path) -> None:
    ensure_systemd_tools()
    exposure, report = security_exposure(UNIT.read_text(), tmp_path)
    print(f"systemd-analyze security --offline=yes: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, report


def test_sysusers_creates_the_unit_user(tmp_path: Path, service: dict[str, list[str]]) -> None:
    ensure_systemd_tools()
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert service["User"] == ["meshd"]
    assert service["Group"] == ["meshd"]
    assert "meshd" in passwd
    assert "meshd" in groups
    assert passwd["meshd"][5] == "/var/lib/meshd"  # home = the StateDirectory
    assert passwd["meshd"][6].endswith("nologin")


def test_unit_lifecycle_settings(service: dict[str, list[str]]) -> None:
    # Debian 12 ships systemd 252: Type=notify-reload (253+) would be ignored.
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED_MESHD} run --config /etc/meshd/meshd.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert _seconds(service["WatchdogSec"][0]) >= 10
    # Stopping = gossip a leave and wait for it (leave_timeout + 1 s in
    # Daemon.leave) before systemd escalates to SIGKILL.
    leave_budget = MembershipConfig().leave_timeout + 1.0
    assert _seconds(service["TimeoutStopSec"][0]) >= 2 * leave_budget
    assert service["StateDirectory"] == ["meshd"]
    assert service["RuntimeDirectory"] == ["meshd"]
    assert service["ConfigurationDirectory"] == ["meshd"]


def test_unit_sandbox_keeps_what_the_daemon_needs(service: dict[str, list[str]]) -> None:
    families = set(" ".join(service["RestrictAddressFamilies"]).split())
    # AF_NETLINK: ifaddr (zeroconf) enumerates interfaces over netlink.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # The mesh and mDNS multicast need the host network.
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service
    assert service["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in service  # writes only State/RuntimeDirectory (+ private /tmp)
    assert service["PrivateTmp"] == ["yes"]
    assert service["MemoryDenyWriteExecute"] == ["yes"]
