"""``meshd keygen``, ``meshd init`` and ``meshd check-config``, run in process."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.cli import daemon
from meshd.cli.exit_codes import ExitStatus
from meshd.config import generate_secret, load_config, read_secret

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "meshd.example.toml"


@pytest.fixture
def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (right now)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    pytest.fail("no free port found")


def init(tmp_path: Path, *args: str) -> Path:
    """``meshd init --dir tmp_path/node ARGS`` must succeed; returns the config path."""
    directory = tmp_path / "node"
    assert daemon.main(["init", "--dir", str(directory), *args]) == ExitStatus.OK
    return directory / "meshd.toml"


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line on stderr (and nothing on stdout)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n")
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err.rstrip("\n")


# ---------------------------------------------------------------------------
# Help.


def test_help_lists_the_config_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    for command in ("init", "keygen", "check-config", "demo"):
        assert command in out
    assert "78" in out


@pytest.mark.parametrize("command", ["init", "keygen", "check-config"])
def test_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main([command, "--help"]) == ExitStatus.OK
    assert f"usage: meshd {command}" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# keygen.


def test_keygen_prints_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["keygen"]) == ExitStatus.OK
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.endswith("\n")
    assert captured.out.count("\n") == 1
    assert len(base64.b64decode(captured.out.strip(), validate=True)) == 32
    assert daemon.main(["keygen"]) == ExitStatus.OK
    assert capsys.readouterr().out != captured.out


def test_keygen_output_is_a_valid_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.main(["keygen"]) == ExitStatus.OK
    secret = tmp_path / "secret"
    secret.write_text(capsys.readouterr().out)
    secret.chmod(0o600)
    assert len(read_secret(secret)) == 32


def test_keygen_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["keygen", "extra"]) == ExitStatus.USAGE
    assert "unrecognized arguments: extra" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# init.


def test_init_writes_a_loadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = init(tmp_path)
    out = capsys.readouterr().out
    directory = tmp_path / "node"
    config = load_config(path, environ={})
    assert config.node.bind == ("127.0.0.1", 7946)
    assert config.node.name is None
    assert config.cluster.name == "meshd"
    assert config.cluster.secret_file == directory / "secret"
    assert config.state.dir == directory / "state"
    assert config.control.socket == directory / "meshd.sock"
    assert stat.S_IMODE((directory / "secret").stat().st_mode) == 0o600
    assert len(read_secret(directory / "secret")) == 32
    assert str(path) in out
    assert str(directory / "secret") in out
    assert out.rstrip("\n").splitlines()[-1] == f"next: meshd run --config {path}"


def test_init_with_every_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "shared"
    secret.write_text(generate_secret() + "\n")
    secret.chmod(0o600)
    path = init(
        tmp_path,
        "--name",
        "alpha",
        "--bind",
        "0.0.0.0:7000",
        "--advertise",
        "10.0.0.5:7000",
        "--seed",
        "10.0.0.6:7946",
        "--seed",
        "seed.example.net:7946",
        "--seed",
        "[::1]:7946",
        "--secret-file",
        str(secret),
        "--cluster",
        "prod",
    )
    out = capsys.readouterr().out
    config = load_config(path, environ={})
    assert config.node.name == "alpha"
    assert config.node.bind == ("0.0.0.0", 7000)
    assert config.node.advertise == ("10.0.0.5", 7000)
    assert config.join.seeds == (
        ("10.0.0.6", 7946),
        ("seed.example.net", 7946),
        ("::1", 7946),
    )
    assert config.cluster.name == "prod"
    assert config.cluster.secret_file == secret
    assert not (tmp_path / "node" / "secret").exists()
    assert f"using the cluster secret in {secret}" in out


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = init(tmp_path)
    before = path.read_bytes(), (tmp_path / "node" / "secret").read_bytes()
    capsys.readouterr()
    code = daemon.main(["init", "--dir", str(tmp_path / "node"), "--name", "other"])
    assert code == ExitStatus.CONFIG
    message = one_line_error(capsys)
    assert message.startswith(f"{path}: already exists")
    assert "remove it" in message
    assert (path.read_bytes(), (tmp_path / "node" / "secret").read_bytes()) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--bind", "0.0.0.0:7946"], "--advertise", id="bind-any"),
        pytest.param(["--name", "a b"], "[node] name", id="name"),
        pytest.param(["--cluster", "a/b"], "[cluster] name", id="cluster"),
        pytest.param(["--secret-file", "/nonexistent/secret"], "no such file", id="secret-file"),
    ],
)
def test_init_config_errors(
    tmp_path: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = daemon.main(["init", "--dir", str(tmp_path / "node"), *args])
    assert code == ExitStatus.CONFIG
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param([], "--dir", id="no-dir"),
        pytest.param(["--bind", "localhost:7946"], "must be an IP address", id="bind-name"),
        pytest.param(["--bind", "127.0.0.1:0"], "1..65535", id="bind-port"),
        pytest.param(["--seed", "nope"], "is not HOST:PORT", id="seed"),
        pytest.param(["--bogus"], "unrecognized arguments: --bogus", id="unknown-option"),
    ],
)
def test_init_usage_errors(
    tmp_path: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["init", *(["--dir", str(tmp_path / "node")] if args else []), *args]
    assert daemon.main(argv) == ExitStatus.USAGE
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "node").exists()


# ---------------------------------------------------------------------------
# check-config.


def test_check_config_ok(
    tmp_path: Path, free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = init(tmp_path, "--bind", f"127.0.0.1:{free_port}")
    capsys.readouterr()
    assert daemon.main(["check-config", str(path)]) == ExitStatus.OK
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (f"{path}: OK\n", "")


def test_check_config_example(
    tmp_path: Path, free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text(
        EXAMPLE.read_text().replace('bind = "127.0.0.1:7946"', f'bind = "127.0.0.1:{free_port}"')
    )
    (tmp_path / "secret").write_text(generate_secret())
    (tmp_path / "secret").chmod(0o600)
    assert daemon.main(["check-config", str(path)]) == ExitStatus.OK
    assert capsys.readouterr().out == f"{path}: OK\n"


@pytest.fixture
def udp_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield int(udp.getsockname()[1])


def test_check_config_port_in_use(
    tmp_path: Path, udp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = init(tmp_path, "--bind", f"127.0.0.1:{udp_port}")
    capsys.readouterr()
    assert daemon.main(["check-config", str(path)]) == ExitStatus.CONFIG
    assert one_line_error(capsys) == (
        f"{path}: [node] bind 127.0.0.1:{udp_port}: port in use (UDP) — "
        "stop the other process or choose another port"
    )
    # --skip-port-check validates everything else (e.g. before a reload).
    assert daemon.main(["check-config", "--skip-port-check", str(path)]) == ExitStatus.OK
    assert capsys.readouterr().out == f"{path}: OK\n"


def _replace(pattern: str, new: str) -> Callable[[Path], None]:
    """An edit of the config file: replace the first match of ``pattern`` by ``new``."""

    def edit(path: Path) -> None:
        text, count = re.subn(pattern, new, path.read_text(), count=1)
        assert count == 1
        path.write_text(text)

    return edit


def _chmod_secret(mode: int) -> Callable[[Path], None]:
    return lambda path: (path.parent / "secret").chmod(mode)


def _write_secret(content: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path.parent / "secret").write_text(content)

    return edit


BAD_CASES = [
    # (id, how to break the config written by init, substrings of the message)
    ("unknown-key", _replace(r"\[log\]", "[log]\nlevell = 1"), ["unknown key [log] levell"]),
    ("unknown-section", _replace(r"\[log\]", "[logs]"), ["unknown section [logs]"]),
    ("wrong-type", _replace('level = "info"', "level = 1"), ["[log] level", "string", "integer"]),
    ("bad-address", _replace(r'bind = "127.0.0.1:\d+"', 'bind = "127.0.0.1"'), ["[node] bind"]),
    (
        "bad-port",
        _replace(r'bind = "127.0.0.1:\d+"', 'bind = "127.0.0.1:0"'),
        ["[node] bind", "port 0"],
    ),
    ("invalid-toml", _replace(r"\[log\]", "[log"), ["invalid TOML", "line"]),
    (
        "missing-secret",
        lambda p: (p.parent / "secret").unlink(),
        ["[cluster] secret_file", "no such file"],
    ),
    ("secret-0644", _chmod_secret(0o644), ["[cluster] secret_file", "chmod 600"]),
    ("secret-0640", _chmod_secret(0o640), ["[cluster] secret_file", "chmod 600"]),
    ("secret-not-base64", _write_secret("!!!"), ["[cluster] secret_file", "not base64"]),
    ("secret-wrong-length", _write_secret("AAAA"), ["[cluster] secret_file", "3 bytes"]),
    ("pki-without-files", _replace(r"\[log\]", '[tls]\nmode = "pki"\n[log]'), ["[tls] ca_file"]),
    (
        "pki-garbage-files",
        _replace(
            r"\[log\]",
            '[tls]\nmode = "pki"\nca_file = "meshd.toml"\ncert_file = "meshd.toml"\n'
            'key_file = "meshd.toml"\n[log]',
        ),
        ["[tls] ca_file", "not a PEM CA certificate"],
    ),
]


@pytest.mark.parametrize(
    ("breaker", "expected"), [pytest.param(b, e, id=case) for case, b, e in BAD_CASES]
)
def test_check_config_bad(
    tmp_path: Path,
    free_port: int,
    breaker: Callable[[Path], None],
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = init(tmp_path, "--bind", f"127.0.0.1:{free_port}")
    capsys.readouterr()
    breaker(path)
    assert daemon.main(["check-config", str(path)]) == ExitStatus.CONFIG
    message = one_line_error(capsys)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert daemon.main(["check-config", str(path)]) == ExitStatus.CONFIG
    message = one_line_error(capsys)
    assert message.startswith(f"{path}: no such config file")


def test_check_config_never_prints_the_secret(
    tmp_path: Path, free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = init(tmp_path, "--bind", f"127.0.0.1:{free_port}")
    secret = (tmp_path / "node" / "secret").read_text().strip()
    # A secret of the wrong length: the message never shows the content.
    (tmp_path / "node" / "secret").write_text(secret[:-4] + "\n")
    capsys.readouterr()
    assert daemon.main(["check-config", str(path)]) == ExitStatus.CONFIG
    assert secret[:-4] not in one_line_error(capsys)


def test_check_config_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["check-config"]) == ExitStatus.USAGE
    assert "FILE" in capsys.readouterr().err


def test_check_config_relative_path(
    tmp_path: Path,
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = init(tmp_path, "--bind", f"127.0.0.1:{free_port}")
    shutil.move(tmp_path / "node", tmp_path / "moved")  # relative paths move along
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert daemon.main(["check-config", "moved/meshd.toml"]) == ExitStatus.OK
    assert capsys.readouterr().out == f"{tmp_path / 'moved' / path.name}: OK\n"
