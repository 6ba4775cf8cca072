"""The daemon configuration file (meshd/config.py): validation, defaults, secret, node id, ports."""

from __future__ import annotations

import base64
import datetime
import os
import re
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from meshd.config import (
    SECRET_SIZE,
    Config,
    check_ports_free,
    check_tls_files,
    format_address,
    generate_secret,
    load_config,
    node_id,
    parse_address,
    read_secret,
    write_init,
)
from meshd.core.config import MembershipConfig
from meshd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "meshd.example.toml"

CLUSTER = '[cluster]\nsecret_file = "secret"\n'


def write_secret(path: Path, content: str | None = None, mode: int = 0o600) -> str:
    """Write a secret file (a fresh valid one unless ``content``) and return its content."""
    text = generate_secret() + "\n" if content is None else content
    path.write_text(text)
    path.chmod(mode)
    return text


def write_config(directory: Path, text: str) -> Path:
    """Write ``directory/meshd.toml`` (appending a [cluster] section if missing) and a secret."""
    if "[cluster]" not in text and "cluster =" not in text:
        text += CLUSTER
    path = directory / "meshd.toml"
    path.write_text(text)
    write_secret(directory / "secret")
    return path


def error_of(action: Callable[[], object]) -> str:
    """The message of the ConfigError ``action`` raises."""
    with pytest.raises(ConfigError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message, "messages are one line"
    assert any(hint in message for hint in ("—", "e.g.", "; use")), "say what to do"
    return message


# ---------------------------------------------------------------------------
# Bad configuration files: each names the key at fault.

BAD_CONFIGS: list[tuple[str, str, list[str]]] = [
    # (id, TOML text, substrings the message must contain)
    ("unknown-key", '[node]\nbnd = "127.0.0.1:1"\n', ["[node] bnd", "did you mean 'bind'", "bind"]),
    (
        "key-in-wrong-section",
        '[join]\nbind = "127.0.0.1:1"\n',
        ["[join] bind", "did you mean [node] bind"],
    ),
    (
        "unknown-key-membership",
        "[membership]\nprobe_intervall = 1.0\n",
        ["[membership] probe_intervall", "'probe_interval'"],
    ),
    ("unknown-section", "[nodes]\n", ["unknown section [nodes]", "did you mean 'node'", "[log]"]),
    ("unknown-section-no-match", "[extras.x]\n", ["unknown section [extras]", "valid sections"]),
    ("top-level-key", 'bind = "127.0.0.1:1"\n', ["key bind is outside any section", "[node] bind"]),
    ("section-not-table", "node = 3\n", ["[node] must be a section", "integer"]),
    ("wrong-type-bind", "[node]\nbind = 7946\n", ["[node] bind", "string", "integer 7946"]),
    ("wrong-type-name", "[node]\nname = 1\n", ["[node] name", "string", "integer"]),
    ("wrong-type-tags", '[node]\ntags = "role=web"\n', ["[node] tags", "table", "string"]),
    ("wrong-type-tag-value", "[node.tags]\nport = 80\n", ["[node.tags] port", "string", "integer"]),
    (
        "wrong-type-cluster-name",
        '[cluster]\nname = true\nsecret_file = "secret"\n',
        ["[cluster] name", "string", "boolean"],
    ),
    (
        "wrong-type-secret-file",
        "[cluster]\nsecret_file = 1\n",
        ["[cluster] secret_file", "string", "integer"],
    ),
    ("wrong-type-seeds", '[join]\nseeds = "10.0.0.1:7946"\n', ["[join] seeds", "array", "string"]),
    ("wrong-type-seed", "[join]\nseeds = [7946]\n", ["[join] seeds", "string", "integer"]),
    (
        "wrong-type-retry",
        '[join]\nretry_interval = "5s"\n',
        ["[join] retry_interval", "number", "string"],
    ),
    (
        "wrong-type-retry-bool",
        "[join]\nretry_interval = true\n",
        ["[join] retry_interval", "number", "boolean"],
    ),
    ("wrong-type-date", "[join]\nretry_interval = 2024-01-01\n", ["[join] retry_interval", "date"]),
    ("wrong-type-mode", "[tls]\nmode = 1\n", ["[tls] mode", "string", "integer"]),
    ("wrong-type-socket", "[control]\nsocket = []\n", ["[control] socket", "string", "array"]),
    ("wrong-type-state", "[state]\ndir = {}\n", ["[state] dir", "string", "table"]),
    ("wrong-type-level", "[log]\nlevel = 10\n", ["[log] level", "string", "integer"]),
    (
        "wrong-type-membership-float",
        '[membership]\nprobe_interval = "1s"\n',
        ["[membership] probe_interval", "number", "string"],
    ),
    (
        "wrong-type-membership-bool-as-float",
        "[membership]\nprobe_interval = true\n",
        ["[membership] probe_interval", "boolean"],
    ),
    (
        "wrong-type-membership-int",
        "[membership]\nindirect_checks = 1.5\n",
        ["[membership] indirect_checks", "integer", "float"],
    ),
    (
        "wrong-type-membership-bool",
        '[membership]\nlifeguard = "yes"\n',
        ["[membership] lifeguard", "true or false", "string"],
    ),
    (
        "wrong-type-profile",
        "[membership]\nprofile = 1\n",
        ["[membership] profile", "string", "integer"],
    ),
    (
        "bad-profile",
        '[membership]\nprofile = "lam"\n',
        ["[membership] profile", "lan, wan, local", "did you mean 'lan'"],
    ),
    (
        "membership-range",
        "[membership]\nprobe_interval = 0\n",
        ["membership.probe_interval", "> 0"],
    ),
    (
        "membership-cross-field",
        "[membership]\nprobe_timeout = 2.0\n",
        ["membership.probe_timeout", "probe_interval"],
    ),
    (
        "membership-meta-max",
        "[membership]\nmeta_max_size = 5000\n",
        ["[membership]", "meta_max_size", "1024"],
    ),
    (
        "membership-nan",
        "[membership]\nprobe_interval = nan\n",
        ["[membership] probe_interval", "finite"],
    ),
    (
        "bad-address",
        '[node]\nbind = "x"\n',
        ["[node] bind: 'x' is not HOST:PORT (e.g. 127.0.0.1:7946)"],
    ),
    ("bad-address-no-port", '[node]\nbind = "127.0.0.1"\n', ["[node] bind", "not HOST:PORT"]),
    (
        "bad-address-name-for-bind",
        '[node]\nbind = "localhost:7946"\n',
        ["[node] bind", "must be an IP address"],
    ),
    ("bad-address-ipv6-brackets", '[node]\nbind = "::1:7946"\n', ["[node] bind", "brackets"]),
    (
        "bad-address-brackets-ipv4",
        '[node]\nbind = "[127.0.0.1]:7946"\n',
        ["[node] bind", "only IPv6"],
    ),
    (
        "bad-address-advertise",
        '[node]\nadvertise = "host"\n',
        ["[node] advertise", "not HOST:PORT"],
    ),
    ("bad-address-seed", '[join]\nseeds = ["bad host!:7946"]\n', ["[join] seeds", "'bad host!'"]),
    (
        "bad-address-seed-numeric",
        '[join]\nseeds = ["10.0.0:7946"]\n',
        ["[join] seeds", "neither an IP address nor a DNS name"],
    ),
    ("bad-port-zero", '[node]\nbind = "127.0.0.1:0"\n', ["[node] bind", "port 0", "1..65535"]),
    (
        "bad-port-high",
        '[node]\nbind = "127.0.0.1:65536"\n',
        ["[node] bind", "port 65536", "1..65535"],
    ),
    (
        "bad-port-name",
        '[node]\nbind = "127.0.0.1:http"\n',
        ["[node] bind", "'http' is not a number"],
    ),
    ("bad-port-negative", '[node]\nbind = "127.0.0.1:-1"\n', ["[node] bind", "1..65535"]),
    ("bad-port-advertise", '[node]\nadvertise = "10.0.0.5:0"\n', ["[node] advertise", "port 0"]),
    (
        "bad-port-seed",
        '[join]\nseeds = ["seed.example.net:99999"]\n',
        ["[join] seeds", "port 99999"],
    ),
    (
        "bind-any-without-advertise",
        '[node]\nbind = "0.0.0.0:7946"\n',
        ["[node] bind 0.0.0.0:7946", "[node] advertise"],
    ),
    (
        "bind-any6-without-advertise",
        '[node]\nbind = "[::]:7946"\n',
        ["[node] bind [::]:7946", "[node] advertise"],
    ),
    (
        "advertise-any",
        '[node]\nbind = "0.0.0.0:7946"\nadvertise = "0.0.0.0:7946"\n',
        ["[node] advertise 0.0.0.0:7946", "reach"],
    ),
    ("bad-node-name", '[node]\nname = "a b"\n', ["[node] name", "letters, digits"]),
    ("bad-node-name-start", '[node]\nname = "-a"\n', ["[node] name"]),
    ("bad-node-name-long", f'[node]\nname = "{"a" * 129}"\n', ["[node] name", "1..128"]),
    (
        "bad-cluster-name",
        '[cluster]\nname = "my cluster"\nsecret_file = "secret"\n',
        ["[cluster] name", "1..64"],
    ),
    (
        "bad-cluster-name-long",
        f'[cluster]\nname = "{"c" * 65}"\nsecret_file = "secret"\n',
        ["[cluster] name"],
    ),
    (
        "missing-secret-file-key",
        '[cluster]\nname = "prod"\n',
        ["[cluster] secret_file is required", "meshd keygen"],
    ),
    ("empty-secret-file-key", '[cluster]\nsecret_file = ""\n', ["[cluster] secret_file is empty"]),
    ("bad-retry", "[join]\nretry_interval = 0\n", ["[join] retry_interval", "> 0"]),
    ("bad-retry-inf", "[join]\nretry_interval = inf\n", ["[join] retry_interval", "finite"]),
    ("bad-tls-mode", '[tls]\nmode = "mtls"\n', ["[tls] mode", "derived, pki"]),
    ("pki-without-files", '[tls]\nmode = "pki"\n', ["[tls] ca_file is required", "pki"]),
    (
        "pki-missing-key",
        '[tls]\nmode = "pki"\nca_file = "ca.pem"\ncert_file = "node.pem"\n',
        ["[tls] key_file is required"],
    ),
    (
        "pki-unreadable-files",
        '[tls]\nmode = "pki"\nca_file = "none.pem"\ncert_file = "x.pem"\nkey_file = "x.pem"\n',
        ["[tls] ca_file", "none.pem", "cannot read it", "No such file"],
    ),
    (
        "pki-file-is-directory",
        '[tls]\nmode = "pki"\nca_file = "."\ncert_file = "."\nkey_file = "."\n',
        ["[tls] ca_file", "cannot read it"],
    ),
    (
        "derived-with-pki-files",
        '[tls]\ncert_file = "node.pem"\n',
        ["[tls] cert_file", 'mode = "pki"'],
    ),
    ("bad-log-level", '[log]\nlevel = "verbose"\n', ["[log] level", "debug, info, warning, error"]),
    ("mdns-not-bool", '[discovery]\nmdns = "yes"\n', ["[discovery] mdns must be true or false"]),
    ("rejoin-not-bool", "[discovery]\nrejoin = 1\n", ["[discovery] rejoin must be true or false"]),
    (
        "interfaces-not-array",
        '[discovery]\ninterfaces = "10.0.0.5"\n',
        ["[discovery] interfaces must be an array of IP address strings"],
    ),
    (
        "interface-not-ip",
        '[discovery]\ninterfaces = ["eth0"]\n',
        ["[discovery] interfaces", "'eth0' is not an IP address"],
    ),
    (
        "interface-unspecified",
        '[discovery]\ninterfaces = ["0.0.0.0"]\n',
        ["[discovery] interfaces", "0.0.0.0 is not an interface address"],
    ),
    (
        "interfaces-all-and-more",
        '[discovery]\ninterfaces = ["all", "10.0.0.5"]\n',
        ['"all" already means every interface'],
    ),
    ("discovery-unknown-key", "[discovery]\nmdsn = true\n", ["mdsn", "mdns"]),
    ("socket-too-long", f'[control]\nsocket = "/{"s" * 120}"\n', ["[control] socket", "107"]),
    ("invalid-toml", "[node\n", ["invalid TOML", "line 1, column"]),
    ("invalid-toml-value", "[node]\nbind = 127.0.0.1:7946\n", ["invalid TOML", "line 2"]),
    ("invalid-toml-duplicate", '[node]\nname = "a"\nname = "b"\n', ["invalid TOML", "line 3"]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(text, exp, id=case) for case, text, exp in BAD_CONFIGS]
)
def test_bad_config_is_refused(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "node.pem").write_text("x")
    path = write_config(tmp_path, text)
    message = error_of(lambda: load_config(path, environ={}))
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_bad_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "meshd.toml"
    path.write_bytes(CLUSTER.encode() + b"[node]\nname = '\xff'\n")
    message = error_of(lambda: load_config(path, environ={}))
    assert message.startswith(f"{path}: ")
    assert "UTF-8" in message


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = error_of(lambda: load_config(path, environ={}))
    assert message.startswith(f"{path}: no such config file")
    assert "meshd init" in message


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    message = error_of(lambda: load_config(tmp_path, environ={}))
    assert message.startswith(f"{tmp_path}: is a directory")


# ---------------------------------------------------------------------------
# The secret file.

ONE_SECRET = base64.b64encode(bytes(range(SECRET_SIZE))).decode()

BAD_SECRETS: list[tuple[str, str | None, int, list[str]]] = [
    # (id, content (None: do not create), mode, substrings)
    ("missing", None, 0o600, ["no such file", "meshd keygen"]),
    ("world-readable", ONE_SECRET, 0o644, ["mode 0644", "run: chmod 600"]),
    ("group-readable", ONE_SECRET, 0o640, ["mode 0640", "run: chmod 600"]),
    ("others-readable", ONE_SECRET, 0o604, ["mode 0604", "run: chmod 600"]),
    ("group-writable", ONE_SECRET, 0o620, ["mode 0620", "run: chmod 600"]),
    ("not-base64", "this is not base64!\n", 0o600, ["not base64", "meshd keygen"]),
    ("not-ascii", "sécret\n", 0o600, ["not base64"]),
    ("wrong-length", base64.b64encode(b"k" * 16).decode(), 0o600, ["16 bytes", "expected 32"]),
    ("too-long-key", base64.b64encode(b"k" * 33).decode(), 0o600, ["33 bytes", "expected 32"]),
    ("empty", "", 0o600, ["0 bytes", "expected 32"]),
    ("huge", "A" * 10000, 0o600, ["too big"]),
]


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [pytest.param(content, mode, exp, id=case) for case, content, mode, exp in BAD_SECRETS],
)
def test_bad_secret_is_refused(
    tmp_path: Path, content: str | None, mode: int, expected: list[str]
) -> None:
    path = write_config(tmp_path, "")
    secret = tmp_path / "secret"
    secret.unlink()
    if content is not None:
        write_secret(secret, content, mode)
    config = load_config(path, environ={})
    message = error_of(lambda: read_secret(config.cluster.secret_file))
    assert message.startswith(f"[cluster] secret_file {secret}: ")
    for part in expected:
        assert part in message
    if content:
        assert content.strip() not in message, "secrets never appear in messages"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # Both fail for root too (chmod 000 would not: root reads anything).
        pytest.param(lambda p: p.mkdir(), "not a regular file", id="directory"),
        pytest.param(
            lambda p: (p.parent / "file").write_text("x"), "Not a directory", id="not-a-directory"
        ),
    ],
)
def test_unreadable_secret_is_refused(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    secret = tmp_path / "secret"
    make(secret)
    target = secret if secret.is_dir() else tmp_path / "file" / "secret"
    message = error_of(lambda: read_secret(target))
    assert message.startswith(f"[cluster] secret_file {target}: ")
    assert expected in message


def test_secret_reads_with_surrounding_whitespace(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret(secret, f"\n  {ONE_SECRET}  \n\n")
    assert read_secret(secret) == bytes(range(SECRET_SIZE))


def test_generate_secret_is_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert len(base64.b64decode(first, validate=True)) == SECRET_SIZE
    assert first != second


def test_config_never_holds_the_secret(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    config = load_config(path, environ={})
    key = read_secret(config.cluster.secret_file)
    text = repr(config) + str(config)
    assert (tmp_path / "secret").read_text().strip() not in text
    assert repr(key) not in text
    assert key.hex() not in text
    assert config.cluster.secret_file == tmp_path / "secret"


# ---------------------------------------------------------------------------
# Defaults and environment.


def test_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    config = load_config(path, environ={})
    assert config.path == path
    assert config.node.name is None
    assert config.node.bind == ("127.0.0.1", 7946)
    assert config.node.advertise == config.node.bind
    assert config.node.tags == {}
    assert config.cluster.name == "meshd"
    assert config.cluster.secret_file == tmp_path / "secret"
    assert config.membership == MembershipConfig.lan()
    assert config.join.seeds == ()
    assert config.join.retry_interval == 5.0
    assert (config.discovery.mdns, config.discovery.interfaces) == (True, ())
    assert config.discovery.rejoin is True
    assert config.tls.mode == "derived"
    assert (config.tls.ca_file, config.tls.cert_file, config.tls.key_file) == (None, None, None)
    assert config.state.dir == tmp_path / ".meshd"
    assert config.control.socket == tmp_path / ".meshd" / "meshd.sock"
    assert config.log.level == "info"


@pytest.mark.parametrize(
    ("environ", "state", "sock"),
    [
        pytest.param({}, "{cfg}/.meshd", "{cfg}/.meshd/meshd.sock", id="none"),
        pytest.param(
            {"STATE_DIRECTORY": "/var/lib/meshd"},
            "/var/lib/meshd",
            "/var/lib/meshd/meshd.sock",
            id="state",
        ),
        pytest.param(
            {"RUNTIME_DIRECTORY": "/run/meshd"},
            "{cfg}/.meshd",
            "/run/meshd/meshd.sock",
            id="runtime",
        ),
        pytest.param(
            {"STATE_DIRECTORY": "/var/lib/meshd", "RUNTIME_DIRECTORY": "/run/meshd"},
            "/var/lib/meshd",
            "/run/meshd/meshd.sock",
            id="both",
        ),
        pytest.param(
            # systemd joins several directories with ':'; the first one is ours.
            {
                "STATE_DIRECTORY": "/var/lib/meshd:/var/lib/other",
                "RUNTIME_DIRECTORY": "/run/a:/run/b",
            },
            "/var/lib/meshd",
            "/run/a/meshd.sock",
            id="several",
        ),
        pytest.param(
            {"STATE_DIRECTORY": ""}, "{cfg}/.meshd", "{cfg}/.meshd/meshd.sock", id="empty"
        ),
    ],
)
def test_directories_from_environment(
    tmp_path: Path, environ: dict[str, str], state: str, sock: str
) -> None:
    config = load_config(write_config(tmp_path, ""), environ=environ)
    assert config.state.dir == Path(state.format(cfg=tmp_path))
    assert config.control.socket == Path(sock.format(cfg=tmp_path))


def test_configured_directories_win_over_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[state]\ndir = "st"\n[control]\nsocket = "/run/x.sock"\n')
    environ = {"STATE_DIRECTORY": "/var/lib/meshd", "RUNTIME_DIRECTORY": "/run/meshd"}
    config = load_config(path, environ=environ)
    assert config.state.dir == tmp_path / "st"
    assert config.control.socket == Path("/run/x.sock")


def test_configured_state_dir_holds_default_socket(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[state]\ndir = "/srv/meshd"\n'), environ={})
    assert config.control.socket == Path("/srv/meshd/meshd.sock")


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meshd")
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert load_config(write_config(tmp_path, "")).state.dir == Path("/var/lib/meshd")


def test_relative_paths_follow_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    write_config(
        tmp_path / "etc",
        '[cluster]\nsecret_file = "secret"\n[state]\ndir = "../var/state"\n'
        '[control]\nsocket = "run/meshd.sock"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "etc" / "meshd.toml", environ={})
    assert config.path == tmp_path / "etc" / "meshd.toml"
    assert config.path.is_absolute()
    assert config.cluster.secret_file == tmp_path / "etc" / "secret"
    assert config.state.dir == tmp_path / "var" / "state"
    assert config.control.socket == tmp_path / "etc" / "run" / "meshd.sock"


def test_every_value_set(tmp_path: Path) -> None:
    text = """
[node]
name = "node-a.eu_1"
bind = "[::1]:7000"
advertise = "[2001:db8::5]:7001"
[node.tags]
role = "web"
dc = "eu-1"
[cluster]
name = "prod.eu-1"
secret_file = "secret"
[join]
seeds = ["10.0.0.5:7946", "seed.example.net.:7946", "[2001:db8::1]:7946"]
retry_interval = 3
[log]
level = "DEBUG"
"""
    config = load_config(write_config(tmp_path, text), environ={})
    assert config.node.name == "node-a.eu_1"
    assert config.node.bind == ("::1", 7000)
    assert config.node.advertise == ("2001:db8::5", 7001)
    assert config.node.tags == {"role": "web", "dc": "eu-1"}
    assert config.cluster.name == "prod.eu-1"
    assert config.join.seeds == (
        ("10.0.0.5", 7946),
        ("seed.example.net.", 7946),
        ("2001:db8::1", 7946),
    )
    assert config.join.retry_interval == 3.0
    assert type(config.join.retry_interval) is float
    assert config.log.level == "debug"


def test_bind_any_with_advertise(tmp_path: Path) -> None:
    text = '[node]\nbind = "0.0.0.0:7946"\nadvertise = "10.0.0.5:7946"\n'
    config = load_config(write_config(tmp_path, text), environ={})
    assert config.node.bind == ("0.0.0.0", 7946)
    assert config.node.advertise == ("10.0.0.5", 7946)


def test_empty_name_means_generated(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[node]\nname = ""\n'), environ={})
    assert config.node.name is None


@pytest.mark.parametrize(
    ("text", "dns_names", "expected"),
    [
        ("x", True, "is not HOST:PORT"),
        (":7946", True, "is not HOST:PORT"),
        ("host:", True, "is not HOST:PORT"),
        ("[::1]", True, "is not HOST:PORT"),
        ("[::1]:0", True, "1..65535"),
        ("::1:7946", True, "brackets"),
        ("example.net:7946", False, "must be an IP address"),
        ("-bad-.net:7946", True, "neither an IP address nor a DNS name"),
        ("1.2.3.4.5:7946", True, "neither an IP address nor a DNS name"),
    ],
)
def test_parse_address_errors(text: str, dns_names: bool, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_address(text, dns_names=dns_names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7946", ("127.0.0.1", 7946)),
        ("[::1]:1", ("::1", 1)),
        ("[0:0:0:0:0:0:0:1]:65535", ("::1", 65535)),
        ("example.net:80", ("example.net", 80)),
        ("a-b.example:80", ("a-b.example", 80)),
    ],
)
def test_parse_and_format_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(expected)) == expected


# ---------------------------------------------------------------------------
# Membership profile and overrides.


def test_membership_profile_and_overrides(tmp_path: Path) -> None:
    text = (
        '[membership]\nprofile = "wan"\nprobe_interval = 6\ngossip_nodes = 5\nlifeguard = false\n'
    )
    config = load_config(write_config(tmp_path, text), environ={})
    expected = attrs.evolve(
        MembershipConfig.wan(), probe_interval=6.0, gossip_nodes=5, lifeguard=False
    )
    assert config.membership == expected
    assert type(config.membership.probe_interval) is float


@pytest.mark.parametrize("name", ["lan", "wan", "local"])
def test_membership_profiles(tmp_path: Path, name: str) -> None:
    config = load_config(write_config(tmp_path, f'[membership]\nprofile = "{name}"\n'), environ={})
    assert config.membership == getattr(MembershipConfig, name)()


def test_membership_every_field_can_be_overridden(tmp_path: Path) -> None:
    lan = MembershipConfig.lan()
    lines = [
        f"{field.name} = {str(value).lower() if isinstance(value, bool) else repr(value)}"
        for field in attrs.fields(MembershipConfig)
        if field.name != "profile"
        for value in [getattr(lan, field.name)]
    ]
    text = '[membership]\nprofile = "local"\n' + "\n".join(lines) + "\n"
    config = load_config(write_config(tmp_path, text), environ={})
    assert config.membership == attrs.evolve(lan, profile="local")


def test_membership_profile_breaks_cross_field_check(tmp_path: Path) -> None:
    # wan probes every 5 s with a 3 s timeout; a 2 s interval leaves no room.
    path = write_config(tmp_path, '[membership]\nprofile = "wan"\nprobe_interval = 2\n')
    message = error_of(lambda: load_config(path, environ={}))
    assert "membership.probe_timeout" in message
    assert "profile wan" in message


# ---------------------------------------------------------------------------
# The example file.


@pytest.fixture
def example(tmp_path: Path) -> Path:
    path = tmp_path / "meshd.toml"
    shutil.copy(EXAMPLE, path)
    write_secret(tmp_path / "secret")
    return path


def test_example_loads(example: Path) -> None:
    config = load_config(example, environ={})
    assert config.membership == MembershipConfig.lan()
    assert config.cluster.secret_file == example.parent / "secret"
    assert config.node.bind == ("127.0.0.1", 7946)


def _example_keys() -> dict[str, set[str]]:
    """Keys in the example, set or commented out, by section."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.fullmatch(r"\[([a-z.]+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"#? ?([a-z_]+) = ", line)
        if key:
            keys.setdefault(section, set()).add(key.group(1))
    return keys


def test_example_documents_every_key() -> None:
    from meshd.config import _SECTIONS

    keys = _example_keys()
    for section, valid in _SECTIONS.items():
        missing = set(valid) - keys.get(section, set()) - {"tags"}
        assert not missing, f"[{section}] keys missing from the example: {missing}"
    assert "node.tags" in keys


def test_example_membership_comments_are_the_lan_defaults(example: Path) -> None:
    # Uncomment every "# key = value" line of [membership]: still the LAN profile.
    lines, section = [], ""
    for line in example.read_text().splitlines():
        if line.startswith("["):
            section = line
        if section == "[membership]" and re.match(r"# [a-z_]+ = ", line):
            line = line[2:]
        lines.append(line)
    example.write_text("\n".join(lines) + "\n")
    config = load_config(example, environ={})
    assert config.membership == MembershipConfig.lan()


# ---------------------------------------------------------------------------
# Node id.


def test_node_id_configured_name_wins(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[node]\nname = "alpha"\n'), environ={})
    (tmp_path / ".meshd").mkdir()
    (tmp_path / ".meshd" / "node_id").write_text("persisted-abcdef\n")
    assert node_id(config) == "alpha"


def test_node_id_with_name_creates_nothing(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, '[node]\nname = "alpha"\n'), environ={})
    assert node_id(config) == "alpha"
    assert not (tmp_path / ".meshd").exists()


def test_node_id_is_generated_and_persists(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[state]\ndir = "a/state"\n')
    config = load_config(path, environ={})
    first = node_id(config)
    assert re.fullmatch(r"[A-Za-z0-9_-]+-[0-9a-f]{6}", first)
    state = tmp_path / "a" / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 & ~_umask()
    id_file = state / "node_id"
    assert stat.S_IMODE(id_file.stat().st_mode) == 0o644
    assert id_file.read_text() == first + "\n"
    assert [p.name for p in state.iterdir()] == ["node_id"], "no temporary files left"
    # A restart reads the same id back.
    assert node_id(config) == first
    assert node_id(load_config(path, environ={})) == first


def test_node_id_reads_an_existing_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""), environ={})
    (tmp_path / ".meshd").mkdir()
    (tmp_path / ".meshd" / "node_id").write_text("  web-1  \n")
    assert node_id(config) == "web-1"


@pytest.mark.parametrize("content", ["", "has space", "x" * 200])
def test_node_id_refuses_a_corrupt_file(tmp_path: Path, content: str) -> None:
    config = load_config(write_config(tmp_path, ""), environ={})
    (tmp_path / ".meshd").mkdir()
    (tmp_path / ".meshd" / "node_id").write_text(content)
    message = error_of(lambda: node_id(config))
    assert message.startswith(f"{config.path}: ")
    assert "node_id" in message
    assert "[node] name" in message


def test_node_id_state_dir_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    config = load_config(write_config(tmp_path, '[state]\ndir = "file/state"\n'), environ={})
    message = error_of(lambda: node_id(config))
    assert "[state] dir" in message


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------
# Ports.


@pytest.fixture
def free_port() -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1 (right now)."""
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


def _bound_config(tmp_path: Path, port: int) -> Config:
    return load_config(write_config(tmp_path, f'[node]\nbind = "127.0.0.1:{port}"\n'), environ={})


def test_ports_free(tmp_path: Path, free_port: int) -> None:
    config = _bound_config(tmp_path, free_port)
    check_ports_free(config)
    check_ports_free(config)  # it released them


@pytest.fixture
def udp_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield int(udp.getsockname()[1])


@pytest.fixture
def tcp_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        yield int(tcp.getsockname()[1])


def test_udp_port_in_use(tmp_path: Path, udp_port: int) -> None:
    config = _bound_config(tmp_path, udp_port)
    message = error_of(lambda: check_ports_free(config))
    assert message == (
        f"{config.path}: [node] bind 127.0.0.1:{udp_port}: port in use (UDP) — "
        "stop the other process or choose another port"
    )


def test_tcp_port_in_use(tmp_path: Path, tcp_port: int) -> None:
    config = _bound_config(tmp_path, tcp_port)
    message = error_of(lambda: check_ports_free(config))
    assert message.endswith(
        f"[node] bind 127.0.0.1:{tcp_port}: port in use (TCP) — "
        "stop the other process or choose another port"
    )


def test_address_not_on_this_host(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
    config = load_config(write_config(tmp_path, '[node]\nbind = "192.0.2.1:7946"\n'), environ={})
    message = error_of(lambda: check_ports_free(config))
    assert "[node] bind 192.0.2.1:7946: address not available" in message


# ---------------------------------------------------------------------------
# TLS files in pki mode.


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a node certificate signed by it, its key, and an unrelated key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("ca"))
        .issuer_name(name("ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("node"))
        .issuer_name(name("ca"))
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(k: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.NoEncryption()
            if password is None
            else serialization.BestAvailableEncryption(password)
        )
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": key_pem(key),
        "other_key": key_pem(ec.generate_private_key(ec.SECP256R1())),
        "encrypted_key": key_pem(key, b"pass"),
        "garbage": b"not a certificate\n",
    }
    paths = {}
    for stem, data in files.items():
        paths[stem] = tmp_path / f"{stem}.pem"
        paths[stem].write_bytes(data)
    return paths


def _pki_config(tmp_path: Path, ca: str = "ca", cert: str = "cert", key: str = "key") -> Config:
    text = (
        f'[tls]\nmode = "pki"\nca_file = "{ca}.pem"\n'
        f'cert_file = "{cert}.pem"\nkey_file = "{key}.pem"\n'
    )
    return load_config(write_config(tmp_path, text), environ={})


def test_pki_files_load(tmp_path: Path, pki: dict[str, Path]) -> None:
    config = _pki_config(tmp_path)
    assert config.tls.mode == "pki"
    assert (config.tls.ca_file, config.tls.cert_file, config.tls.key_file) == (
        pki["ca"],
        pki["cert"],
        pki["key"],
    )
    check_tls_files(config)


def test_check_tls_files_derived_mode_does_nothing(tmp_path: Path) -> None:
    check_tls_files(load_config(write_config(tmp_path, ""), environ={}))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({"ca": "garbage"}, ["[tls] ca_file", "not a PEM CA certificate"], id="bad-ca"),
        pytest.param({"cert": "garbage"}, ["[tls] cert_file", "cannot load"], id="bad-cert"),
        pytest.param(
            {"key": "other_key"}, ["[tls] cert_file", "key_file", "belong"], id="key-mismatch"
        ),
        pytest.param({"key": "encrypted_key"}, ["[tls] key_file", "encrypted"], id="encrypted-key"),
    ],
)
def test_bad_pki_files(
    tmp_path: Path, pki: dict[str, Path], files: dict[str, str], expected: list[str]
) -> None:
    config = _pki_config(tmp_path, **files)
    message = error_of(lambda: check_tls_files(config))
    assert message.startswith(f"{config.path}: ")
    for part in expected:
        assert part in message


# ---------------------------------------------------------------------------
# write_init.


def test_write_init(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "etc"
    path = write_init(
        directory,
        name="alpha",
        bind=("127.0.0.1", 7000),
        seeds=[("10.0.0.5", 7946), ("::1", 7946), ("seed.example.net", 7946)],
        secret_file=None,
        cluster="prod",
    )
    assert path == directory / "meshd.toml"
    config = load_config(path, environ={"STATE_DIRECTORY": "/elsewhere"})
    assert config.node.name == "alpha"
    assert config.node.bind == config.node.advertise == ("127.0.0.1", 7000)
    assert config.join.seeds == (("10.0.0.5", 7946), ("::1", 7946), ("seed.example.net", 7946))
    assert config.cluster.name == "prod"
    assert config.cluster.secret_file == directory / "secret"
    assert config.state.dir == directory / "state"
    assert config.control.socket == directory / "meshd.sock"
    assert stat.S_IMODE((directory / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "state").stat().st_mode) == 0o700 & ~_umask()
    assert len(read_secret(config.cluster.secret_file)) == SECRET_SIZE


def test_write_init_secret_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_init(tmp_path, name=None, bind=("127.0.0.1", 7946), seeds=[], secret_file=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_write_init_refuses_to_overwrite(tmp_path: Path) -> None:
    write_init(tmp_path, name=None, bind=("127.0.0.1", 7946), seeds=[], secret_file=None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    message = error_of(
        lambda: write_init(tmp_path, name="x", bind=("127.0.0.1", 1), seeds=[], secret_file=None)
    )
    assert message.startswith(f"{tmp_path / 'meshd.toml'}: already exists")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_write_init_refuses_to_overwrite_a_secret(tmp_path: Path) -> None:
    write_secret(tmp_path / "secret", ONE_SECRET)
    message = error_of(
        lambda: write_init(tmp_path, name=None, bind=("127.0.0.1", 1), seeds=[], secret_file=None)
    )
    assert "already exists" in message
    assert "--secret-file" in message
    assert (tmp_path / "secret").read_text() == ONE_SECRET
    assert not (tmp_path / "meshd.toml").exists()


def test_write_init_with_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_secret(tmp_path / "shared-secret", ONE_SECRET)
    path = write_init(
        tmp_path / "node",
        name=None,
        bind=("127.0.0.1", 7946),
        seeds=[],
        secret_file=Path("shared-secret"),  # relative to the current directory
    )
    config = load_config(path, environ={})
    assert config.cluster.secret_file == tmp_path / "shared-secret"
    assert not (tmp_path / "node" / "secret").exists()


def test_write_init_checks_the_given_secret(tmp_path: Path) -> None:
    write_secret(tmp_path / "bad", ONE_SECRET, mode=0o644)
    message = error_of(
        lambda: write_init(
            tmp_path / "node",
            name=None,
            bind=("127.0.0.1", 7946),
            seeds=[],
            secret_file=tmp_path / "bad",
        )
    )
    assert "chmod 600" in message
    assert not (tmp_path / "node").exists(), "nothing is written when a check fails"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"name": "a b"}, "[node] name", id="name"),
        pytest.param({"cluster": "a b"}, "[cluster] name", id="cluster"),
        pytest.param({"bind": ("0.0.0.0", 7946)}, "--advertise", id="bind-any"),
    ],
)
def test_write_init_validates_before_writing(
    tmp_path: Path, kwargs: dict[str, object], expected: str
) -> None:
    arguments: dict[str, object] = {
        "name": None,
        "bind": ("127.0.0.1", 7946),
        "seeds": [],
        "secret_file": None,
    } | kwargs
    message = error_of(lambda: write_init(tmp_path / "node", **arguments))  # type: ignore[arg-type]
    assert expected in message
    assert not (tmp_path / "node").exists()


def test_write_init_bind_any_with_advertise(tmp_path: Path) -> None:
    path = write_init(
        tmp_path,
        name=None,
        bind=("0.0.0.0", 7946),
        seeds=[],
        secret_file=None,
        advertise=("10.0.0.5", 7946),
    )
    assert load_config(path, environ={}).node.advertise == ("10.0.0.5", 7946)
