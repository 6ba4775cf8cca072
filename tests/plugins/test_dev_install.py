"""dev.py installs the bundled plugins (editable) with meshd, and reinstalls when they change."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'meshd'\n")
    for name in ("meshd-b", "meshd-a"):
        (tmp_path / "plugins" / name).mkdir(parents=True)
        (tmp_path / "plugins" / name / "pyproject.toml").write_text(f"[project]\nname = '{name}'\n")
    (tmp_path / "plugins" / "README.md").write_text("not a plugin\n")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "PLUGINS_DIR", tmp_path / "plugins")
    monkeypatch.setattr(module, "VENV_BIN", venv / "bin")
    monkeypatch.setattr(module, "VENV_PYTHON", venv / "bin" / "python")
    monkeypatch.setattr(module, "INSTALL_STAMP", venv / ".dev-install-stamp")
    return module


def test_dev_installs_every_bundled_plugin_editable(
    dev: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        commands.append(command)
        (tmp_path / ".venv" / "bin" / "meshd").touch()
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(dev.subprocess, "run", run)
    assert dev.ensure_installed()
    [command] = commands
    assert command[-6:] == [
        "--editable",
        ".[test]",
        "--editable",
        "plugins/meshd-a",
        "--editable",
        "plugins/meshd-b",
    ]
    # Unchanged: no second install.
    assert dev.ensure_installed()
    assert len(commands) == 1
    # A plugin's pyproject changed: install again.
    (tmp_path / "plugins" / "meshd-a" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert dev.ensure_installed()
    assert len(commands) == 2


def test_dev_hash_covers_the_plugins(dev: ModuleType, tmp_path: Path) -> None:
    first = dev._pyproject_hash()
    (tmp_path / "plugins" / "meshd-c").mkdir()
    (tmp_path / "plugins" / "meshd-c" / "pyproject.toml").write_text("[project]\nname = 'c'\n")
    second = dev._pyproject_hash()
    assert second != first  # a new plugin
    (tmp_path / "plugins" / "meshd-c" / "pyproject.toml").rename(
        tmp_path / "plugins" / "meshd-c" / "x"
    )
    assert dev._pyproject_hash() == first  # removed again


def test_the_real_plugins_are_distributions() -> None:
    projects = sorted(p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    assert projects == ["meshd-events", "meshd-hello", "meshd-services"]
