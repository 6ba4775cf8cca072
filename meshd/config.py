"""The daemon's configuration file: TOML in, frozen and validated values out.

:func:`load_config` reads one TOML file with the standard library's
:mod:`tomllib` and turns it into a :class:`Config`. Everything a user can get
wrong is caught here and reported as one :class:`~meshd.errors.ConfigError`
whose message starts with the config file's path, names the ``[section] key``
at fault and says what to do about it. Unknown sections and keys are errors
(with a "did you mean" from :mod:`difflib`), so a typo never silently falls
back to a default.

The cluster secret never enters a :class:`Config`: it only holds the secret
file's path, and :func:`read_secret` reads the key when the runtime needs it.
No message or ``repr`` ever contains key material.

Conventions of the file (``config/meshd.example.toml`` documents every key):

* Durations are seconds; integers are accepted wherever a float is expected.
* Relative paths are resolved against the directory holding the config file.
* Addresses are ``"HOST:PORT"`` strings, IPv6 in brackets (``"[::1]:7946"``);
  ports are 1..65535 everywhere.
* Under systemd, ``$STATE_DIRECTORY`` and ``$RUNTIME_DIRECTORY`` supply the
  default state directory and control socket (ECOSYSTEM.md §1.5).

The helpers used by ``meshd init``, ``meshd keygen`` and ``meshd check-config``
live here as well: :func:`write_init`, :func:`generate_secret`,
:func:`check_ports_free` and :func:`check_tls_files`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import errno
import ipaddress
import math
import os
import re
import secrets
import socket
import ssl
import stat
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import attrs
import tomli_w

from meshd.core.config import PROFILES, MembershipConfig
from meshd.errors import ConfigError

__all__ = [
    "SECRET_SIZE",
    "ClusterSection",
    "Config",
    "ControlSection",
    "DiscoverySection",
    "JoinSection",
    "KvSection",
    "LogSection",
    "MetricsSection",
    "NodeSection",
    "PluginsSection",
    "StateSection",
    "TlsSection",
    "check_ports_free",
    "check_tls_files",
    "format_address",
    "generate_secret",
    "load_config",
    "node_id",
    "parse_address",
    "read_secret",
    "write_init",
]

#: Size of the cluster secret in bytes (an AES-256 key).
SECRET_SIZE = 32

#: Port used in examples and by ``meshd init`` (memberlist's and Serf's default).
DEFAULT_PORT = 7946

#: Name of the file, inside the state directory, that keeps a generated node id.
NODE_ID_FILE = "node_id"

#: File name of the control socket inside the runtime or state directory.
SOCKET_NAME = "meshd.sock"

#: Port of the default ``[metrics] listen`` (127.0.0.1 only).
DEFAULT_METRICS_PORT = 9946

#: Log levels accepted by ``[log] level``.
LOG_LEVELS = ("debug", "info", "warning", "error")

#: TLS modes accepted by ``[tls] mode``.
TLS_MODES = ("derived", "pki")

#: Consistency levels accepted by ``[kv] consistency``.
KV_CONSISTENCIES = ("one", "quorum", "all")

#: ``[kv] synchronous`` values (SQLite's, see runtime/store.py "Durability").
KV_SYNCHRONOUS = ("full", "normal")

#: Most replicas per key ``[kv] replicas`` accepts.
KV_MAX_REPLICAS = 16

# A unix socket path must fit in ``sun_path`` (108 bytes on Linux, NUL included).
_SUN_PATH_MAX = 107

# Node names: ASCII letters, digits, '.', '_', '-'; 1..128 characters (the
# core allows 1..128 bytes of UTF-8; ASCII keeps names safe in logs, terminals
# and the TLS certificate's SAN URI).
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,47}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

# Largest secret file read: a base64 key is 44 bytes; anything much bigger is
# not a secret file.
_SECRET_FILE_MAX = 4096

_Address = tuple[str, int]


# ---------------------------------------------------------------------------
# The configuration values.


@attrs.frozen(kw_only=True)
class NodeSection:
    """``[node]``: who this node is and where it listens.

    Attributes:
        name: this node's name in the mesh, or ``None`` to use the id kept in
            the state directory (see :func:`node_id`).
        bind: ``(ip, port)`` of the gossip (UDP) and stream (TCP) listeners.
        advertise: ``(ip, port)`` other members use to reach this node;
            ``bind`` unless configured.
        tags: free-form labels gossiped with this node.
    """

    name: str | None = None
    bind: _Address = ("127.0.0.1", DEFAULT_PORT)
    advertise: _Address = ("127.0.0.1", DEFAULT_PORT)
    tags: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ClusterSection:
    """``[cluster]``: which mesh this node belongs to.

    Attributes:
        name: cluster name; nodes with another name are ignored.
        secret_file: absolute path of the file holding the cluster secret
            (read it with :func:`read_secret`; the key itself is never kept here).
    """

    name: str = "meshd"
    secret_file: Path


@attrs.frozen(kw_only=True)
class JoinSection:
    """``[join]``: how this node finds the mesh at startup.

    Attributes:
        seeds: ``(host, port)`` of members to contact; ``host`` may be a DNS name.
        retry_interval: longest pause (seconds) between join attempts until the first success; retries start at 0.25 s and double.
    """

    seeds: tuple[_Address, ...] = ()
    retry_interval: float = 5.0


@attrs.frozen(kw_only=True)
class DiscoverySection:
    """``[discovery]``: finding peers without seeds, and finding them again.

    Attributes:
        mdns: announce this node and browse for peers with mDNS.
        interfaces: IP addresses of the interfaces mDNS uses; empty means the
            ``[node] advertise`` address only; ``["all"]`` means every
            interface (announces the mesh on every attached network).
        rejoin: at start, try the members kept in the state directory's
            snapshot, so a reboot of every host re-forms the mesh.
    """

    mdns: bool = True
    interfaces: tuple[str, ...] = ()
    rejoin: bool = True


@attrs.frozen(kw_only=True)
class TlsSection:
    """``[tls]``: how stream (TCP) connections are authenticated.

    Attributes:
        mode: ``"derived"`` (the cluster CA is derived from the secret) or
            ``"pki"`` (the operator's CA and this node's certificate).
        ca_file: CA certificate (PEM); set in ``pki`` mode only.
        cert_file: this node's certificate (PEM); set in ``pki`` mode only.
        key_file: this node's private key (PEM); set in ``pki`` mode only.
    """

    mode: Literal["derived", "pki"] = "derived"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@attrs.frozen(kw_only=True)
class ControlSection:
    """``[control]``: the local control socket ``meshctl`` talks to.

    Attributes:
        socket: absolute path of the unix socket.
    """

    socket: Path


@attrs.frozen(kw_only=True)
class StateSection:
    """``[state]``: where the node keeps what must survive a restart.

    Attributes:
        dir: absolute path of the state directory (node id, data).
    """

    dir: Path


@attrs.frozen(kw_only=True)
class LogSection:
    """``[log]``: logging.

    Attributes:
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
    """

    level: Literal["debug", "info", "warning", "error"] = "info"


@attrs.frozen(kw_only=True)
class MetricsSection:
    """``[metrics]``: the Prometheus endpoint.

    Attributes:
        listen: ``(ip, port)`` serving ``GET /metrics``, or ``None`` when
            disabled (``listen = ""``).
    """

    listen: _Address | None = ("127.0.0.1", DEFAULT_METRICS_PORT)


@attrs.frozen(kw_only=True)
class KvSection:
    """``[kv]``: the replicated key-value store (ring, replication, repair).

    Durations are seconds; rates are bytes per second. Every node of a mesh
    must use the same ``replicas`` (it is part of the placement).

    Attributes:
        replicas: copies of each key (Dynamo's N, Riak's n_val).
        consistency: default level of requests that name none: ``"one"``,
            ``"quorum"`` or ``"all"``.
        timeout: default deadline of a request, seconds.
        hinted_handoff: keep writes for unreachable replicas on another
            node and deliver them when the replica is back.
        sloppy_quorum: count such hints toward the consistency level
            (Dynamo); off: only replicas of the preference list count
            (Cassandra), see docs/data.md.
        hint_window: seconds a hint is kept before it is dropped.
        tombstone_grace: seconds a delete's tombstone is kept; must exceed
            ``hint_window``.
        anti_entropy_interval: seconds between Merkle-tree comparisons
            with each peer.
        anti_entropy_rate: bytes per second anti-entropy may move.
        handoff_rate: bytes per second rebalancing may move.
        max_clock_drift: seconds a write's timestamp may be ahead of this
            node's clock before the write is refused.
        synchronous: ``"full"`` (an acknowledged write survives power loss)
            or ``"normal"`` (it survives a crash of meshd).
    """

    replicas: int = 3
    consistency: Literal["one", "quorum", "all"] = "quorum"
    timeout: float = 2.0
    hinted_handoff: bool = True
    sloppy_quorum: bool = False
    hint_window: float = 3 * 3600.0
    tombstone_grace: float = 10 * 24 * 3600.0
    anti_entropy_interval: float = 60.0
    anti_entropy_rate: int = 1 << 20
    handoff_rate: int = 8 << 20
    max_clock_drift: float = 5.0
    synchronous: Literal["full", "normal"] = "full"


@attrs.frozen(kw_only=True)
class PluginsSection:
    """``[plugins]``: which plugins run, where to find them, and their settings.

    Attributes:
        enabled: names of the plugins to run.
        dirs: directories searched for plugins (``NAME.py`` or ``NAME/__init__.py``)
            before the ``meshd.plugins`` entry points of installed distributions.
        block_threshold: seconds a plugin may hold the event loop in one step
            before it is reported as blocking.
        sections: the ``[plugins.NAME]`` tables as parsed; each plugin
            validates its own against its schema (``meshd/runtime/plugins.py``).
    """

    enabled: tuple[str, ...] = ()
    dirs: tuple[Path, ...] = ()
    block_threshold: float = 0.25
    sections: dict[str, dict[str, Any]] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Config:
    """A validated daemon configuration, as read by :func:`load_config`.

    Attributes:
        path: absolute path of the file it was read from.
        node: ``[node]``.
        cluster: ``[cluster]``.
        membership: ``[membership]``: the chosen profile with overrides applied.
        join: ``[join]``.
        discovery: ``[discovery]``.
        tls: ``[tls]``.
        control: ``[control]``.
        state: ``[state]``.
        log: ``[log]``.
        metrics: ``[metrics]``.
        kv: ``[kv]``.
    """

    path: Path
    node: NodeSection
    cluster: ClusterSection
    membership: MembershipConfig
    join: JoinSection
    discovery: DiscoverySection
    tls: TlsSection
    control: ControlSection
    state: StateSection
    log: LogSection
    metrics: MetricsSection = MetricsSection()
    kv: KvSection = KvSection()
    plugins: PluginsSection = PluginsSection()


# ---------------------------------------------------------------------------
# Addresses.


def parse_address(text: str, *, dns_names: bool = True) -> _Address:
    """Split ``"HOST:PORT"`` (IPv6 as ``"[::1]:7946"``) into ``(host, port)``.

    IP addresses come back in canonical form (``"::1"``, without brackets).

    Args:
        text: the address as written.
        dns_names: accept a DNS name as host; otherwise only IP addresses.

    Returns:
        ``(host, port)`` with ``port`` in 1..65535.

    Raises:
        ConfigError: ``text`` is not a valid address; the message quotes
            ``text``, says why and gives an example (it names no config key:
            callers add that).
    """
    example = f"e.g. 127.0.0.1:{DEFAULT_PORT}"
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
        if match is None:
            raise ConfigError(f"{text!r} is not HOST:PORT ({example} or [::1]:{DEFAULT_PORT})")
        host, port_text = match.groups()
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"{text!r}: only IPv6 addresses go in brackets, e.g. [::1]:{DEFAULT_PORT}"
            ) from None
        return str(ip), _parse_port(port_text, text)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text:
        raise ConfigError(f"{text!r} is not HOST:PORT ({example})")
    if ":" in host:
        raise ConfigError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:{DEFAULT_PORT}")
    port = _parse_port(port_text, text)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return str(ip), port
    if not dns_names:
        raise ConfigError(
            f"{text!r}: host {host!r} must be an IP address of this host "
            "(e.g. 127.0.0.1, 10.0.0.5 or 0.0.0.0), not a name"
        )
    if not _is_dns_name(host):
        raise ConfigError(
            f"{text!r}: host {host!r} is neither an IP address nor a DNS name "
            f"(e.g. 10.0.0.5:{DEFAULT_PORT} or seed.example.net:{DEFAULT_PORT})"
        )
    return host, port


def format_address(address: _Address) -> str:
    """``(host, port)`` back to ``"HOST:PORT"``, IPv6 in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"{text!r}: port {port_text!r} is not a number; use 1..65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{text!r}: port {port} is out of range; use 1..65535")
    return port


def _is_dns_name(host: str) -> bool:
    name = host.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # The last label of a DNS name is never all digits (that would be an IPv4 typo).
    return all(_DNS_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Reading the file.

#: Keys of each section (membership: "profile" plus every MembershipConfig field).
_SECTIONS: dict[str, tuple[str, ...]] = {
    "node": ("name", "bind", "advertise", "tags"),
    "cluster": ("name", "secret_file"),
    "membership": tuple(f.name for f in attrs.fields(MembershipConfig)),
    "join": ("seeds", "retry_interval"),
    "discovery": ("mdns", "interfaces", "rejoin"),
    "tls": ("mode", "ca_file", "cert_file", "key_file"),
    "control": ("socket",),
    "state": ("dir",),
    "log": ("level",),
    "metrics": ("listen",),
    "kv": tuple(f.name for f in attrs.fields(KvSection)),
    # ...plus one sub-table [plugins.NAME] per plugin (see _Reader.plugins).
    "plugins": ("enabled", "dirs", "block_threshold"),
}

# Python type of each MembershipConfig field ("float", "int", "bool", "str").
_MEMBERSHIP_TYPES: dict[str, type] = typing.get_type_hints(MembershipConfig)


def _type_name(value: object) -> str:
    """The TOML name of ``value``'s type, for error messages."""
    names: tuple[tuple[type, str], ...] = (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime.datetime, "datetime"),
        (datetime.date, "date"),
        (datetime.time, "time"),
    )
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _shown(value: object) -> str:
    """A short rendering of a (non-secret) config value for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _closest(word: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class _Reader:
    """Typed access to the parsed TOML document; every error names FILE and key."""

    def __init__(self, path: Path, document: dict[str, Any], environ: Mapping[str, str]) -> None:
        self.path = path
        self.base = path.parent
        self.environ = environ
        self.tables: dict[str, dict[str, Any]] = {}
        self._check_structure(document)

    # -- errors ------------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        """Raise ConfigError with ``message`` after the file's path."""
        raise ConfigError(f"{self.path}: {message}")

    def wrong_type(
        self, section: str, key: str, value: object, expected: str, hint: str
    ) -> NoReturn:
        """Raise the error for a value of the wrong TOML type."""
        self.fail(
            f"[{section}] {key} must be {expected}, got {_type_name(value)} {_shown(value)}"
            f" — write it like: {key} = {hint}"
        )

    # -- structure -----------------------------------------------------------

    def _check_structure(self, document: dict[str, Any]) -> None:
        sections = list(_SECTIONS)
        for name, table in document.items():
            if name not in _SECTIONS:
                if not isinstance(table, dict):
                    owners = [s for s, keys in _SECTIONS.items() if name in keys]
                    where = (
                        f"; did you mean [{owners[0]}] {name}?"
                        if owners
                        else f"; sections are: {', '.join(f'[{s}]' for s in sections)}"
                    )
                    self.fail(
                        f"key {name} is outside any section — put it under its section{where}"
                    )
                self.fail(
                    f"unknown section [{name}]{_closest(name, sections)} — valid sections are: "
                    + ", ".join(f"[{s}]" for s in sections)
                )
            if not isinstance(table, dict):
                self.fail(
                    f"[{name}] must be a section (a table), got {_type_name(table)} "
                    f"{_shown(table)} — write it as a [{name}] header followed by its keys"
                )
            valid = _SECTIONS[name]
            for key in table:
                if name == "plugins" and isinstance(table[key], dict):
                    continue  # [plugins.NAME]: checked by the plugin's schema
                if key not in valid:
                    owners = [s for s, keys in _SECTIONS.items() if key in keys]
                    guess = f" (did you mean [{owners[0]}] {key}?)" if owners else ""
                    self.fail(
                        f"unknown key [{name}] {key}{guess or _closest(key, valid)} — "
                        f"valid keys in [{name}] are: {', '.join(valid)}"
                    )
            self.tables[name] = table

    def has(self, section: str, key: str) -> bool:
        """Whether ``[section] key`` is set in the file."""
        return key in self.tables.get(section, {})

    def raw(self, section: str, key: str) -> object:
        """The value of ``[section] key`` as parsed (the caller checked :meth:`has`)."""
        return self.tables[section][key]

    # -- typed getters -----------------------------------------------------

    def string(self, section: str, key: str, default: str, hint: str) -> str:
        """A string value, or ``default`` when absent."""
        if not self.has(section, key):
            return default
        value = self.raw(section, key)
        if not isinstance(value, str):
            self.wrong_type(section, key, value, "a string", hint)
        return value

    def choice(self, section: str, key: str, default: str, choices: Sequence[str]) -> str:
        """A string that must be one of ``choices`` (compared case-insensitively)."""
        hint = f'"{default}"'
        value = self.string(section, key, default, hint).lower()
        if value not in choices:
            self.fail(
                f"[{section}] {key} = {_shown(value)} is not one of "
                f"{', '.join(choices)}{_closest(value, choices)} — set one of those"
            )
        return value

    def number(self, section: str, key: str, default: float, hint: str) -> float:
        """A finite float (seconds, usually); integers are accepted."""
        if not self.has(section, key):
            return default
        value = self.raw(section, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(section, key, value, "a number (seconds)", hint)
        if not math.isfinite(value):
            self.fail(
                f"[{section}] {key} must be a finite number, got {value} — e.g. {key} = {hint}"
            )
        return float(value)

    def path_value(self, section: str, key: str, hint: str) -> Path | None:
        """A path (relative to the config file's directory), or ``None`` when absent."""
        if not self.has(section, key):
            return None
        text = self.string(section, key, "", hint)
        if not text:
            self.fail(
                f"[{section}] {key} is empty — give a path, e.g. {key} = {hint}, or remove it"
            )
        if "\0" in text:
            self.fail(f"[{section}] {key} contains a NUL character — give a plain path")
        return self.resolve(text)

    def resolve(self, text: str) -> Path:
        """``text`` as an absolute path, relative ones against the config file's directory."""
        return Path(os.path.normpath(self.base / text))

    def address(self, section: str, key: str, text: object, *, dns_names: bool) -> _Address:
        """Parse one ``"HOST:PORT"`` value of ``[section] key``."""
        if not isinstance(text, str):
            self.wrong_type(
                section, key, text, 'a string "HOST:PORT"', f'"127.0.0.1:{DEFAULT_PORT}"'
            )
        try:
            return parse_address(text, dns_names=dns_names)
        except ConfigError as exc:
            self.fail(f"[{section}] {key}: {exc}")

    # -- sections ------------------------------------------------------------

    def node(self) -> NodeSection:
        """Build ``[node]``."""
        name = self.string("node", "name", "", '"node-a"') or None
        if name is not None and not _NODE_NAME.fullmatch(name):
            self.fail(
                f"[node] name {_shown(name)} is not a valid node name — use 1..128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit (or leave it empty "
                "to use a generated id)"
            )
        bind_text = self.raw("node", "bind") if self.has("node", "bind") else None
        bind = (
            self.address("node", "bind", bind_text, dns_names=False)
            if bind_text is not None
            else ("127.0.0.1", DEFAULT_PORT)
        )
        if self.has("node", "advertise"):
            advertise = self.address(
                "node", "advertise", self.raw("node", "advertise"), dns_names=False
            )
            if _is_unspecified(advertise[0]):
                self.fail(
                    f"[node] advertise {format_address(advertise)} is not an address other "
                    "nodes can reach — set this node's own IP address, e.g. "
                    f'advertise = "10.0.0.5:{bind[1]}"'
                )
        elif _is_unspecified(bind[0]):
            self.fail(
                f"[node] bind {format_address(bind)} listens on every interface, so other nodes "
                "need to be told which address reaches this one — add [node] advertise with "
                f'this host\'s IP address, e.g. advertise = "10.0.0.5:{bind[1]}"'
            )
        else:
            advertise = bind
        return NodeSection(name=name, bind=bind, advertise=advertise, tags=self.tags())

    def tags(self) -> dict[str, str]:
        """Build ``[node] tags`` (a table of strings)."""
        if not self.has("node", "tags"):
            return {}
        table = self.raw("node", "tags")
        if not isinstance(table, dict):
            self.wrong_type("node", "tags", table, "a table of strings", '{ role = "web" }')
        tags: dict[str, str] = {}
        for key, value in table.items():
            if not key:
                self.fail("[node.tags] has an empty tag name — give every tag a name")
            if not isinstance(value, str):
                self.fail(
                    f"[node.tags] {key} must be a string, got {_type_name(value)} "
                    f'{_shown(value)} — quote it: {key} = "{value}"'
                )
            tags[key] = value
        return tags

    def cluster(self) -> ClusterSection:
        """Build ``[cluster]``."""
        name = self.string("cluster", "name", "meshd", '"prod"')
        if not _CLUSTER_NAME.fullmatch(name):
            self.fail(
                f"[cluster] name {_shown(name)} is not a valid cluster name — use 1..64 "
                "letters, digits, '.', '_' or '-'"
            )
        secret_file = self.path_value("cluster", "secret_file", '"/etc/meshd/secret"')
        if secret_file is None:
            self.fail(
                "[cluster] secret_file is required — create a secret with "
                "`(umask 077; meshd keygen > /etc/meshd/secret)` and set "
                'secret_file = "/etc/meshd/secret" (the same secret on every node)'
            )
        return ClusterSection(name=name, secret_file=secret_file)

    def membership(self) -> MembershipConfig:
        """Build ``[membership]``: the profile with its overrides applied."""
        profile_name = self.choice("membership", "profile", "lan", tuple(PROFILES))
        overrides: dict[str, Any] = {}
        for key in self.tables.get("membership", {}):
            if key == "profile":
                continue
            overrides[key] = self._membership_value(key)
        try:
            return attrs.evolve(PROFILES[profile_name](), **overrides)
        except ConfigError as exc:
            self.fail(f"{exc} (profile {profile_name}) — change [membership] in this file")
        except (ValueError, TypeError) as exc:
            self.fail(f"[membership] {exc} (profile {profile_name}) — change it in this file")

    def _membership_value(self, key: str) -> object:
        value = self.raw("membership", key)
        kind = _MEMBERSHIP_TYPES[key]
        default = getattr(MembershipConfig.lan(), key)
        if kind is float:
            return self.number("membership", key, default, repr(default))
        if kind is bool:
            if not isinstance(value, bool):
                self.wrong_type("membership", key, value, "true or false", str(default).lower())
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.wrong_type("membership", key, value, "an integer", repr(default))
            return value
        raise AssertionError(
            f"MembershipConfig.{key} has unexpected type {kind}"
        )  # pragma: no cover

    def join(self) -> JoinSection:
        """Build ``[join]``."""
        hint = f'["10.0.0.5:{DEFAULT_PORT}", "seed.example.net:{DEFAULT_PORT}"]'
        seeds: list[_Address] = []
        if self.has("join", "seeds"):
            value = self.raw("join", "seeds")
            if not isinstance(value, list):
                self.wrong_type("join", "seeds", value, 'an array of "HOST:PORT" strings', hint)
            seeds = [self.address("join", "seeds", item, dns_names=True) for item in value]
        retry = self.number("join", "retry_interval", 5.0, "5.0")
        if retry <= 0:
            self.fail(f"[join] retry_interval must be > 0 seconds, got {retry} — e.g. 5.0")
        return JoinSection(seeds=tuple(seeds), retry_interval=retry)

    def boolean(self, section: str, key: str, default: bool) -> bool:
        """A ``true``/``false`` value, or ``default`` when absent."""
        if not self.has(section, key):
            return default
        value = self.raw(section, key)
        if not isinstance(value, bool):
            self.wrong_type(section, key, value, "true or false", str(default).lower())
        return value

    def discovery(self) -> DiscoverySection:
        """Build ``[discovery]``."""
        mdns = self.boolean("discovery", "mdns", True)
        rejoin = self.boolean("discovery", "rejoin", True)
        interfaces: list[str] = []
        hint = '["10.0.0.5"] (addresses of this host\'s interfaces), or ["all"]'
        if self.has("discovery", "interfaces"):
            value = self.raw("discovery", "interfaces")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.wrong_type(
                    "discovery", "interfaces", value, "an array of IP address strings", hint
                )
            for text in value:
                if text == "all":
                    if len(value) > 1:
                        self.fail(
                            '[discovery] interfaces: "all" already means every interface — '
                            'use ["all"] alone, or list addresses without it'
                        )
                    interfaces.append(text)
                    continue
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    self.fail(
                        f"[discovery] interfaces: {_shown(text)} is not an IP address — list "
                        f"the addresses of this host's interfaces, e.g. interfaces = {hint}"
                    )
                if ip.is_unspecified or ip.is_multicast:
                    self.fail(
                        f"[discovery] interfaces: {text} is not an interface address — use "
                        f"this host's own addresses, e.g. interfaces = {hint}"
                    )
                interfaces.append(str(ip))
        return DiscoverySection(mdns=mdns, interfaces=tuple(interfaces), rejoin=rejoin)

    def tls(self) -> TlsSection:
        """Build ``[tls]``; in pki mode the three files must be readable."""
        mode = self.choice("tls", "mode", "derived", TLS_MODES)
        files = {
            key: self.path_value("tls", key, f'"/etc/meshd/{key.removesuffix("_file")}.pem"')
            for key in ("ca_file", "cert_file", "key_file")
        }
        if mode == "derived":
            for key, path in files.items():
                if path is not None:
                    self.fail(
                        f'[tls] {key} is only used with mode = "pki" — remove it, or set '
                        '[tls] mode = "pki" to use your own CA'
                    )
        else:
            for key, path in files.items():
                if path is None:
                    self.fail(
                        f'[tls] {key} is required with mode = "pki" — set ca_file, cert_file '
                        'and key_file, or use mode = "derived" (CA derived from the secret)'
                    )
                self._check_readable(f"[tls] {key}", path)
        return TlsSection(
            mode="pki" if mode == "pki" else "derived",
            ca_file=files["ca_file"],
            cert_file=files["cert_file"],
            key_file=files["key_file"],
        )

    def _check_readable(self, what: str, path: Path) -> None:
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as exc:
            self.fail(
                f"{what} {path}: cannot read it: {exc.strerror or exc} — "
                "check the path and its permissions"
            )

    def state(self) -> StateSection:
        """Build ``[state]``: configured, else ``$STATE_DIRECTORY``, else ``.meshd`` by the file."""
        configured = self.path_value("state", "dir", '"/var/lib/meshd"')
        if configured is not None:
            return StateSection(dir=configured)
        from_env = _first_directory(self.environ.get("STATE_DIRECTORY", ""))
        return StateSection(dir=from_env if from_env is not None else self.base / ".meshd")

    def control(self, state: StateSection) -> ControlSection:
        """Build ``[control]``: configured, else in ``$RUNTIME_DIRECTORY``, else in state dir."""
        sock = self.path_value("control", "socket", '"/run/meshd/meshd.sock"')
        if sock is None:
            runtime = _first_directory(self.environ.get("RUNTIME_DIRECTORY", ""))
            sock = (runtime if runtime is not None else state.dir) / SOCKET_NAME
        size = len(os.fsencode(sock))
        if size > _SUN_PATH_MAX:
            self.fail(
                f"[control] socket {sock} is {size} bytes long, more than the {_SUN_PATH_MAX} "
                "a unix socket path may have — set [control] socket to a shorter path"
            )
        return ControlSection(socket=sock)

    def log(self) -> LogSection:
        """Build ``[log]``."""
        level = self.choice("log", "level", "info", LOG_LEVELS)
        return LogSection(level=typing.cast(Literal["debug", "info", "warning", "error"], level))

    def metrics(self) -> MetricsSection:
        """Build ``[metrics]``: ``listen = ""`` disables the endpoint."""
        if not self.has("metrics", "listen"):
            return MetricsSection()
        value = self.raw("metrics", "listen")
        if value == "":
            return MetricsSection(listen=None)
        return MetricsSection(listen=self.address("metrics", "listen", value, dns_names=False))

    def integer(self, section: str, key: str, default: int, hint: str) -> int:
        """An integer value, or ``default`` when absent."""
        if not self.has(section, key):
            return default
        value = self.raw(section, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(section, key, value, "an integer", hint)
        return value

    def kv(self) -> KvSection:
        """Build ``[kv]``; the tombstone grace must exceed the hint window."""
        from meshd.core.versioned import check_tombstone_grace

        d = KvSection()
        replicas = self.integer("kv", "replicas", d.replicas, "3")
        if not 1 <= replicas <= KV_MAX_REPLICAS:
            self.fail(
                f"[kv] replicas must be 1..{KV_MAX_REPLICAS}, got {replicas} — e.g. replicas = 3 "
                "(the same on every node)"
            )
        consistency = self.choice("kv", "consistency", d.consistency, KV_CONSISTENCIES)
        synchronous = self.choice("kv", "synchronous", d.synchronous, KV_SYNCHRONOUS)
        seconds: dict[str, float] = {}
        for key in (
            "timeout",
            "hint_window",
            "tombstone_grace",
            "anti_entropy_interval",
            "max_clock_drift",
        ):
            default = getattr(d, key)
            value = self.number("kv", key, default, repr(default))
            positive = key != "max_clock_drift"
            if value < 0 or (positive and value == 0):
                self.fail(
                    f"[kv] {key} must be {'> 0' if positive else '>= 0'} seconds, got {value} "
                    f"— e.g. {key} = {default!r}"
                )
            seconds[key] = value
        rates: dict[str, int] = {}
        for key in ("anti_entropy_rate", "handoff_rate"):
            default = getattr(d, key)
            rates[key] = self.integer("kv", key, default, str(default))
            if rates[key] < 1024:
                self.fail(
                    f"[kv] {key} must be at least 1024 bytes per second, got {rates[key]} — "
                    f"e.g. {key} = {default}"
                )
        try:
            check_tombstone_grace(
                round(seconds["tombstone_grace"] * 1000), round(seconds["hint_window"] * 1000)
            )
        except ValueError:
            self.fail(
                f"[kv] tombstone_grace ({seconds['tombstone_grace']:g} s) must be longer than "
                f"hint_window ({seconds['hint_window']:g} s), or a hint delivered late could "
                "bring a deleted key back — raise tombstone_grace or lower hint_window"
            )
        return KvSection(
            replicas=replicas,
            consistency=typing.cast(Literal["one", "quorum", "all"], consistency),
            timeout=seconds["timeout"],
            hinted_handoff=self.boolean("kv", "hinted_handoff", d.hinted_handoff),
            sloppy_quorum=self.boolean("kv", "sloppy_quorum", d.sloppy_quorum),
            hint_window=seconds["hint_window"],
            tombstone_grace=seconds["tombstone_grace"],
            anti_entropy_interval=seconds["anti_entropy_interval"],
            anti_entropy_rate=rates["anti_entropy_rate"],
            handoff_rate=rates["handoff_rate"],
            max_clock_drift=seconds["max_clock_drift"],
            synchronous=typing.cast(Literal["full", "normal"], synchronous),
        )

    def plugins(self) -> PluginsSection:
        """Build ``[plugins]``: names and directories; each ``[plugins.NAME]`` is kept as parsed."""
        table = self.tables.get("plugins", {})
        enabled: list[str] = []
        if self.has("plugins", "enabled"):
            value = self.raw("plugins", "enabled")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.wrong_type(
                    "plugins", "enabled", value, "an array of plugin names", '["events", "services"]'
                )
            for name in value:
                if not _PLUGIN_NAME.fullmatch(name):
                    self.fail(
                        f"[plugins] enabled: {_shown(name)} is not a plugin name — names are "
                        "1..48 of a-z, 0-9, '_' and '-', starting with a letter"
                    )
                if name in enabled:
                    self.fail(f"[plugins] enabled lists {name!r} twice — list it once")
                enabled.append(name)
        dirs: list[Path] = []
        if self.has("plugins", "dirs"):
            value = self.raw("plugins", "dirs")
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                self.wrong_type(
                    "plugins", "dirs", value, "an array of directory paths", '["/etc/meshd/plugins"]'
                )
            dirs = [self.resolve(text) for text in value]
        threshold = self.number("plugins", "block_threshold", 0.25, "0.25")
        if not 0.01 <= threshold <= 60:
            self.fail(
                f"[plugins] block_threshold must be 0.01..60 seconds, got {threshold} — "
                "e.g. block_threshold = 0.25"
            )
        sections: dict[str, dict[str, Any]] = {}
        for key, sub in table.items():
            if isinstance(sub, dict):
                if not _PLUGIN_NAME.fullmatch(key):
                    self.fail(
                        f"[plugins.{key}]: {key!r} is not a plugin name — names are 1..48 of "
                        "a-z, 0-9, '_' and '-', starting with a letter"
                    )
                sections[key] = sub
        return PluginsSection(
            enabled=tuple(enabled), dirs=tuple(dirs), block_threshold=threshold, sections=sections
        )

    def config(self) -> Config:
        """Build the whole :class:`Config`."""
        node = self.node()
        cluster = self.cluster()
        membership = self.membership()
        join = self.join()
        discovery = self.discovery()
        tls = self.tls()
        state = self.state()
        return Config(
            path=self.path,
            node=node,
            cluster=cluster,
            membership=membership,
            join=join,
            discovery=discovery,
            tls=tls,
            control=self.control(state),
            state=state,
            log=self.log(),
            metrics=self.metrics(),
            kv=self.kv(),
            plugins=self.plugins(),
        )


def _first_directory(value: str) -> Path | None:
    """The first entry of a systemd ``*_DIRECTORY`` variable (``:``-separated), if any."""
    first = value.split(":", 1)[0]
    return Path(os.path.abspath(first)) if first else None


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the configuration file at ``path``.

    The secret file is not read here (see :func:`read_secret`); in ``pki``
    TLS mode the three certificate files must be readable.

    Args:
        path: the TOML file; relative paths inside it are resolved against
            its directory.
        environ: environment for ``$STATE_DIRECTORY`` and
            ``$RUNTIME_DIRECTORY`` (default: :data:`os.environ`).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or a value is
            unknown, of the wrong type or out of range. The message starts
            with the file's path and says what to do.
    """
    file = Path(os.path.abspath(os.fspath(path)))
    document = _read_toml(file)
    return _Reader(file, document, os.environ if environ is None else environ).config()


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such config file — check the path, or create one with "
            "`meshd init --dir DIR`"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{file}: is a directory, not a config file — give the path of the .toml file"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{file}: cannot read the config file: {exc.strerror or exc} — check its permissions"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.start}) — save the file as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc} — fix the syntax there") from None


# ---------------------------------------------------------------------------
# The secret.


def generate_secret() -> str:
    """A new cluster secret: base64 of :data:`SECRET_SIZE` bytes from :func:`os.urandom`."""
    return base64.b64encode(os.urandom(SECRET_SIZE)).decode("ascii")


def read_secret(path: Path) -> bytes:
    """Read the cluster secret from ``path`` (``[cluster] secret_file``).

    The file holds the base64 of exactly :data:`SECRET_SIZE` bytes (surrounding
    whitespace is ignored) and must not be accessible to group or others.

    Args:
        path: the secret file.

    Returns:
        The :data:`SECRET_SIZE`-byte key.

    Raises:
        ConfigError: the file cannot be read (with the OS reason), is not a
            regular file, is accessible to group or others, is not base64 or
            does not decode to :data:`SECRET_SIZE` bytes. The message names
            ``[cluster] secret_file`` and never contains the file's content.
    """
    what = f"[cluster] secret_file {path}"
    keygen = f"create a new one with `(umask 077; meshd keygen > {path})`"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file — {keygen}, or fix the path") from None
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot read it: {exc.strerror or exc} — check the path and its permissions"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what}: not a regular file — point secret_file at the secret file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{what}: accessible by group or others (mode {mode:04o}) — run: chmod 600 {path}"
            )
        try:
            data = os.read(fd, _SECRET_FILE_MAX + 1)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _SECRET_FILE_MAX:
        raise ConfigError(f"{what}: too big to be a secret file — {keygen}")
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: not base64 — {keygen}") from None
    if len(key) != SECRET_SIZE:
        raise ConfigError(f"{what}: decodes to {len(key)} bytes, expected {SECRET_SIZE} — {keygen}")
    return key


# ---------------------------------------------------------------------------
# Node id.


def node_id(config: Config) -> str:
    """This node's id: ``[node] name``, else the one kept in the state directory.

    Without a configured name, the id is read from ``<state dir>/node_id``;
    on first start a new ``"<hostname>-<6 hex digits>"`` is written there
    (mode 0644), so the id survives restarts. The state directory is created
    (mode 0700) if missing.

    Args:
        config: the loaded configuration.

    Returns:
        The node id.

    Raises:
        ConfigError: the state directory cannot be created, or the id file
            cannot be read, written or holds something that is not an id.
    """
    if config.node.name is not None:
        return config.node.name
    state_dir = config.state.dir
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{config.path}: [state] dir {state_dir}: cannot create it: "
            f"{exc.strerror or exc} — create it or set [state] dir to a writable directory"
        ) from None
    path = state_dir / NODE_ID_FILE
    existing = _read_node_id(config, path)
    if existing is not None:
        return existing
    new_id = f"{_host_label()}-{secrets.token_hex(3)}"
    try:
        _create_file(path, (new_id + "\n").encode("ascii"), mode=0o644)
    except FileExistsError:
        # Another process wrote it first: use theirs.
        existing = _read_node_id(config, path)
        if existing is not None:
            return existing
        raise ConfigError(
            f"{config.path}: {path} vanished while it was written — try again"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{config.path}: cannot write the node id to {path}: {exc.strerror or exc} — make "
            "[state] dir writable, or set [node] name"
        ) from None
    return new_id


def _read_node_id(config: Config, path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{config.path}: cannot read the node id from {path}: {reason} — fix its "
            "permissions, delete it to generate a new id, or set [node] name"
        ) from None
    if not _NODE_NAME.fullmatch(text):
        raise ConfigError(
            f"{config.path}: {path} does not hold a valid node id — delete it to generate a "
            "new id, or set [node] name"
        )
    return text


def _host_label() -> str:
    """This host's name, reduced to a valid node-name prefix."""
    label = socket.gethostname().split(".", 1)[0]
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-_")[:64]
    return label or "node"


def _create_file(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` atomically with ``data`` and exactly ``mode``.

    The content goes to a temporary file in the same directory first and is
    hard-linked into place, so ``path`` appears complete or not at all, and a
    file that already exists is never replaced (``FileExistsError``).
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # not narrowed by the umask
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Checks used by `meshd check-config`.


def check_ports_free(config: Config) -> None:
    """Check that ``[node] bind`` (UDP and TCP) and ``[metrics] listen`` can be bound.

    TCP is bound with ``SO_REUSEADDR`` like the daemon's listener, so
    connections in TIME_WAIT do not count as "in use".

    Args:
        config: the loaded configuration.

    Raises:
        ConfigError: the port is in use, the address is not on this host, or
            binding is not permitted.
    """
    host, port = config.node.bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"{config.path}: [node] bind {format_address(config.node.bind)}"
    for kind, proto in (("UDP", socket.SOCK_DGRAM), ("TCP", socket.SOCK_STREAM)):
        with socket.socket(family, proto) as sock:
            if proto == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"{where}: {_bind_problem(exc, kind)}") from None
    if config.metrics.listen is not None:
        host, port = config.metrics.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        where = f"{config.path}: [metrics] listen {format_address(config.metrics.listen)}"
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                problem = _bind_problem(exc, "TCP")
                raise ConfigError(
                    f"{where}: {problem} (or set listen = \"\" to turn metrics off)"
                ) from None


def _bind_problem(exc: OSError, kind: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port in use ({kind}) — stop the other process or choose another port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "address not available on this host — use an IP address of one of this host's "
            "interfaces, or 0.0.0.0 with [node] advertise"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied ({kind}) — ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; choose a port from 1024 up"
        )
    return f"cannot bind ({kind}): {exc.strerror or exc} — choose another address or port"


class _EncryptedKey(Exception):
    """Raised from the password callback: the pki key file is encrypted."""


def _no_password() -> NoReturn:
    raise _EncryptedKey


def check_tls_files(config: Config) -> None:
    """In ``pki`` mode, check that the CA, certificate and key load and match.

    Does nothing in ``derived`` mode (the CA comes from the secret).

    Args:
        config: the loaded configuration.

    Raises:
        ConfigError: a file is not PEM, the key is encrypted, or the key does
            not belong to the certificate.
    """
    tls = config.tls
    if tls.mode != "pki":
        return
    assert tls.ca_file is not None
    assert tls.cert_file is not None
    assert tls.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    where = f"{config.path}: [tls]"
    try:
        context.load_verify_locations(cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{where} ca_file {tls.ca_file}: not a PEM CA certificate ({_ssl_reason(exc)}) — "
            "point ca_file at your CA's certificate"
        ) from None
    password: Callable[[], NoReturn] = _no_password
    try:
        context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file, password=password)
    except _EncryptedKey:
        raise ConfigError(
            f"{where} key_file {tls.key_file}: the key is encrypted — meshd needs an "
            "unencrypted key (mode 0600 or 0640 with group meshd)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{where} cert_file {tls.cert_file} / key_file {tls.key_file}: cannot load them "
            f"({_ssl_reason(exc)}) — both must be PEM and the key must belong to the certificate"
        ) from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# ---------------------------------------------------------------------------
# `meshd init`.

_INIT_HEADER = """\
# meshd configuration, written by `meshd init`.
# Every key, its default and meaning: meshd.example.toml in the meshd sources
# (config/meshd.example.toml). Relative paths are relative to this file.
# Check it with: meshd check-config {path}

"""


def write_init(
    dir: Path,
    *,
    name: str | None,
    bind: _Address,
    seeds: Sequence[_Address],
    secret_file: Path | None,
    cluster: str = "meshd",
    advertise: _Address | None = None,
    mdns: bool = True,
    metrics: _Address | None = ("127.0.0.1", DEFAULT_METRICS_PORT),
) -> Path:
    """Write a new configuration in ``dir`` for ``meshd init``.

    Writes ``DIR/meshd.toml`` with the state directory ``DIR/state`` (created,
    mode 0700) and the control socket ``DIR/meshd.sock``. Unless
    ``secret_file`` is given, a new secret is written to ``DIR/secret``
    (created with mode 0600, never readable by others even briefly).
    Everything is validated before anything is written.

    Args:
        dir: directory to write into (created if missing).
        name: the node's name, or ``None`` for a generated, persisted id.
        bind: address of the gossip and stream listeners.
        seeds: members to join at startup.
        secret_file: an existing secret file to use instead of a new one
            (relative paths are relative to the current directory).
        cluster: the cluster name.
        advertise: address others reach this node at (needed when ``bind``
            is 0.0.0.0 or ``::``).
        mdns: whether the node finds peers with mDNS (``[discovery] mdns``).
        metrics: ``[metrics] listen``, or ``None`` to turn the endpoint off.

    Returns:
        The path of the written config file.

    Raises:
        ConfigError: ``DIR/meshd.toml`` (or ``DIR/secret``) already exists, an
            argument is invalid, the given secret file is not a valid secret,
            or a file cannot be written.
    """
    directory = Path(os.path.abspath(dir))
    config_path = directory / "meshd.toml"
    new_secret = directory / "secret"
    if config_path.exists():
        raise ConfigError(
            f"{config_path}: already exists — edit it, remove it first, or choose another --dir"
        )
    if advertise is None and _is_unspecified(bind[0]):
        raise ConfigError(
            f"{config_path}: bind {format_address(bind)} listens on every interface — also "
            f"give the address other nodes reach this one at (meshd init --advertise "
            f"10.0.0.5:{bind[1]}), or bind to that address"
        )
    secret_path = Path(os.path.abspath(secret_file)) if secret_file is not None else new_secret
    if secret_file is None and new_secret.exists():
        raise ConfigError(
            f"{new_secret}: already exists — to use it, pass --secret-file {new_secret}; "
            "otherwise remove it or choose another --dir"
        )

    node: dict[str, Any] = {}
    if name:
        node["name"] = name
    node["bind"] = format_address(bind)
    if advertise is not None:
        node["advertise"] = format_address(advertise)
    document: dict[str, Any] = {
        "node": node,
        "cluster": {"name": cluster, "secret_file": os.fspath(secret_path)},
        "membership": {"profile": "lan"},
        "join": {"seeds": [format_address(seed) for seed in seeds]},
        "discovery": {"mdns": mdns},
        "control": {"socket": SOCKET_NAME},
        "state": {"dir": "state"},
        "log": {"level": "info"},
        "metrics": {"listen": "" if metrics is None else format_address(metrics)},
    }
    if secret_file is None:
        document["cluster"]["secret_file"] = new_secret.name
    text = _INIT_HEADER.format(path=config_path) + tomli_w.dumps(document)

    # Validate the exact text before writing anything.
    _Reader(config_path, tomllib.loads(text), {}).config()
    if secret_file is not None:
        read_secret(secret_path)

    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "state").mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{directory}: cannot create it: {exc.strerror or exc} — choose another --dir"
        ) from None
    created: list[Path] = []
    try:
        if secret_file is None:
            _write_new(new_secret, (generate_secret() + "\n").encode("ascii"), 0o600)
            created.append(new_secret)
        _write_new(config_path, text.encode("utf-8"), 0o644)
    except FileExistsError as exc:
        _remove(created)
        raise ConfigError(
            f"{exc.filename}: already exists — remove it first, or choose another --dir"
        ) from None
    except OSError as exc:
        _remove(created)
        raise ConfigError(
            f"{exc.filename or directory}: cannot write it: {exc.strerror or exc} — "
            "choose another --dir"
        ) from None
    return config_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode`` from the start and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
