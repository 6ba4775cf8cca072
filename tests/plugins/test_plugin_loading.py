"""Finding, importing and validating plugins (runtime/plugins.py), and [plugins] in the config."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from meshd.cli import daemon as meshd_cli
from meshd.cli.exit_codes import ExitStatus
from meshd.config import generate_secret, load_config
from meshd.errors import ConfigError
from meshd.runtime import plugins
from meshd.runtime.plugins import check_plugins, discover, prepare

GOOD = """
from meshd.plugin_api import Context, Option, Plugin, Schema


class Good(Plugin):
    api_version = "1.0"
    version = "3.1"
    config_schema = Schema({"port": Option(int, default=1, min=1)})

    async def run(self, ctx: Context) -> None:
        pass
"""


def write_plugin(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def write_config(directory: Path, plugins_toml: str) -> Path:
    secret = directory / "secret"
    secret.write_text(generate_secret() + "\n")
    secret.chmod(0o600)
    path = directory / "meshd.toml"
    path.write_text('[cluster]\nsecret_file = "secret"\n' + textwrap.dedent(plugins_toml))
    return path


@pytest.fixture(autouse=True)
def _forget_dir_modules() -> None:
    yield
    for name in [m for m in sys.modules if m.startswith("_meshd_plugin_")]:
        del sys.modules[name]


# ------------------------------------------------------------------ [plugins] in the config


def test_config_plugins_section(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [plugins]
        enabled = ["good", "other-one"]
        dirs = ["plugins", "/opt/meshd/plugins"]
        block_threshold = 0.5

        [plugins.good]
        port = 8

        [[plugins.good.items]]
        a = 1
        """,
    )
    section = load_config(path, environ={}).plugins
    assert section.enabled == ("good", "other-one")
    assert section.dirs == (tmp_path / "plugins", Path("/opt/meshd/plugins"))
    assert section.block_threshold == 0.5
    assert section.sections == {"good": {"port": 8, "items": [{"a": 1}]}}


def test_config_plugins_defaults(tmp_path: Path) -> None:
    section = load_config(write_config(tmp_path, ""), environ={}).plugins
    assert (section.enabled, section.dirs, section.block_threshold, section.sections) == (
        (),
        (),
        0.25,
        {},
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[plugins]\nenabled = "events"\n', "[plugins] enabled must be an array of plugin names"),
        ('[plugins]\nenabled = ["Events"]\n', "'Events' is not a plugin name"),
        ('[plugins]\nenabled = ["a", "a"]\n', "enabled lists 'a' twice"),
        ("[plugins]\ndirs = [1]\n", "[plugins] dirs must be an array of directory paths"),
        ("[plugins]\nblock_threshold = 0\n", "block_threshold must be 0.01..60 seconds"),
        ("[plugins]\nenable = []\n", "unknown key [plugins] enable (did you mean 'enabled'?)"),
        ("[plugins.Bad]\nx = 1\n", "[plugins.Bad]: 'Bad' is not a plugin name"),
    ],
)
def test_config_plugins_errors(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, toml), environ={})
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "meshd.toml"))


# ------------------------------------------------------------------ discovery and loading


def test_discover_directories_win_over_entry_points(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", "events", GOOD)  # shadows the bundled one
    write_plugin(tmp_path / "a", "good", GOOD)
    package = tmp_path / "b" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(GOOD)
    write_plugin(tmp_path / "b", "good", "raise SystemExit")  # the first directory wins
    (tmp_path / "b" / "Not_A_Name.py").write_text("")
    found = discover([tmp_path / "a", tmp_path / "b", tmp_path / "missing"])
    assert found["events"].kind == "dir"
    assert found["good"].path == tmp_path / "a" / "good.py"
    assert found["pkg"].path == package
    assert "Not_A_Name" not in found
    # Entry points of installed distributions (the bundled plugins, when installed).
    if "services" in found:
        assert found["services"].kind == "entry_point"
        assert "meshd_services:ServicesPlugin" in found["services"].where


def test_load_a_package_plugin_with_submodules(tmp_path: Path) -> None:
    package = tmp_path / "pkgplug"
    package.mkdir()
    (package / "helper.py").write_text("WORD = 'hi'\n")
    (package / "__init__.py").write_text(
        "from .helper import WORD\n" + GOOD.replace("pass", "ctx.log.info(WORD)")
    )
    loaded = plugins.load(discover([tmp_path])["pkgplug"])
    assert loaded.cls.__name__ == "Good"
    assert loaded.version == "3.1"
    assert loaded.modules == ("_meshd_plugin_pkgplug",)


def test_load_reuses_unchanged_code_and_reimports_changed_code(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "good", GOOD)
    found = discover([tmp_path])["good"]
    first = plugins.load(found)
    assert plugins.load(found, previous=first) is first
    assert plugins.load(found, previous=first, fresh=True) is not first
    path.write_text(GOOD.replace('"3.1"', '"3.2"') + "\n# changed\n")
    second = plugins.load(found, previous=first)
    assert second is not first
    assert second.version == "3.2"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no meshd.plugin_api.Plugin subclass"),
        (
            GOOD + "\nclass Other(Good):\n    pass\n",
            "defines several Plugin subclasses (Good, Other); set `plugin = ONE_OF_THEM`",
        ),
        ("raise ValueError('broken')\n", "failed: ValueError: broken (p.py:1 in <module>)"),
        (
            GOOD.replace('"1.0"', '"2.0"'),
            "declares plugin API 2.0; this meshd supports plugin API 1.0",
        ),
        (GOOD.replace('api_version = "1.0"', ""), "declares no plugin API version (api_version)"),
        (
            GOOD.replace('Schema({"port": Option(int, default=1, min=1)})', "{}"),
            "config_schema must be a meshd.plugin_api.Schema",
        ),
        ("plugin = 42\n", "is int, not a meshd.plugin_api.Plugin subclass"),
    ],
)
def test_load_refuses_with_a_message(tmp_path: Path, source: str, message: str) -> None:
    write_plugin(tmp_path, "p", source)
    with pytest.raises(plugins._LoadError) as info:
        plugins.load(discover([tmp_path])["p"])
    assert message in str(info.value)


def test_load_module_attribute_plugin_chooses_among_several(tmp_path: Path) -> None:
    write_plugin(tmp_path, "p", GOOD + "\nclass Other(Good):\n    pass\n\nplugin = Other\n")
    assert plugins.load(discover([tmp_path])["p"]).cls.__name__ == "Other"


# ------------------------------------------------------------------ prepare / check-config


def _section(tmp_path: Path, toml: str) -> object:
    return load_config(write_config(tmp_path, toml), environ={}).plugins


def test_prepare_validates_each_section(tmp_path: Path) -> None:
    write_plugin(tmp_path / "plugins", "good", GOOD)
    section = _section(
        tmp_path, '[plugins]\nenabled = ["good"]\ndirs = ["plugins"]\n[plugins.good]\nport = 7\n'
    )
    prepared, errors = prepare(section)  # type: ignore[arg-type]
    assert errors == {}
    assert prepared["good"].config == {"port": 7}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[plugins]\nenabled = ["god"]\ndirs = ["plugins"]\n',
            "[plugins] enabled: no plugin named 'god' (did you mean 'good'?) — available: ",
        ),
        (
            '[plugins]\nenabled = ["good"]\ndirs = ["plugins"]\n[plugins.good]\nport = 0\n',
            "[plugins.good] port: must be at least 1, got 0",
        ),
        (
            '[plugins]\nenabled = ["good"]\ndirs = ["plugins"]\n[plugins.good]\npotr = 1\n',
            "[plugins.good] potr: unknown key (did you mean 'port'?)",
        ),
        (
            '[plugins]\ndirs = ["plugins"]\n[plugins.goood]\nport = 1\n',
            "[plugins.goood]: no plugin named 'goood' is installed (did you mean [plugins.good]?)",
        ),
        (
            '[plugins]\nenabled = ["x"]\ndirs = ["nowhere"]\n',
            "(not a directory: ",
        ),
    ],
)
def test_check_plugins_reports_like_the_daemon_config(
    tmp_path: Path, toml: str, message: str
) -> None:
    write_plugin(tmp_path / "plugins", "good", GOOD)
    config = load_config(write_config(tmp_path, toml), environ={})
    with pytest.raises(ConfigError) as info:
        check_plugins(config)
    assert str(info.value).startswith(f"{tmp_path / 'meshd.toml'}: ")
    assert message in str(info.value)


def test_validate_config_hook_refuses(tmp_path: Path) -> None:
    write_plugin(
        tmp_path / "plugins",
        "strict",
        GOOD
        + """
    @classmethod
    def validate_config(cls, config):
        from meshd.plugin_api import ConfigInvalid
        if config["port"] < 1024:
            raise ConfigInvalid("must be 1024 or more for this plugin", "port")
""",
    )
    config = load_config(
        write_config(tmp_path, '[plugins]\nenabled = ["strict"]\ndirs = ["plugins"]\n'),
        environ={},
    )
    with pytest.raises(ConfigError, match=r"\[plugins.strict\] port: must be 1024 or more"):
        check_plugins(config)


def test_meshd_check_config_validates_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path / "plugins", "good", GOOD)
    good = write_config(tmp_path, '[plugins]\nenabled = ["good"]\ndirs = ["plugins"]\n')
    assert meshd_cli.main(["check-config", "--skip-port-check", str(good)]) == ExitStatus.OK
    assert "plugins ready: good" in capsys.readouterr().out
    good.write_text(good.read_text() + "[plugins.good]\nport = -1\n")
    assert meshd_cli.main(["check-config", "--skip-port-check", str(good)]) == ExitStatus.CONFIG
    assert "[plugins.good] port: must be at least 1, got -1" in capsys.readouterr().err
