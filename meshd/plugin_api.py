"""The meshd plugin API: the only module a plugin imports.

A plugin is a class deriving from :class:`Plugin` with an ``async def
run(self, ctx)``. meshd finds it through the ``meshd.plugins`` entry-point
group (an installed distribution) or in a configured plugin directory,
enables it by name (``[plugins] enabled``), validates its ``[plugins.NAME]``
section against the plugin's :attr:`Plugin.config_schema`, and runs it in a
task of the daemon's trio event loop::

    from meshd.plugin_api import Context, Option, Plugin, Schema

    class Greeter(Plugin):
        api_version = "1.0"
        config_schema = Schema({"greeting": Option(str, default="hello")})

        async def run(self, ctx: Context) -> None:
            async def greet(sender: str, body: bytes) -> bytes:
                return f"{ctx.config['greeting']}, {sender}".encode()

            ctx.register("greet", greet)

``run`` is cancelled when the plugin is stopped, disabled or reloaded (trio
structured concurrency: clean up in ``finally`` blocks or ``async with``).
If it raises, the error is logged with its traceback and the plugin is
started again with a new instance after a back-off (1 s, doubling up to
60 s); ``meshctl plugins`` shows the restarts and the last error. If it
returns, the plugin stays up: its RPC handlers and commands keep working.

Everything a plugin does with the mesh goes through its :class:`Context`:

* identity: :attr:`Context.node_id`, :attr:`Context.tags`, and
  :meth:`Context.set_tags` to publish tags of its own (gossiped with the
  node's tags as ``NAME.KEY``);
* membership: :meth:`Context.members` (a snapshot) and
  :meth:`Context.membership_events` (joined, suspected, recovered, failed,
  left, updated, reaped);
* placement: :meth:`Context.owners` (the consistent-hash ring);
* a replicated key-value namespace of its own: :attr:`Context.kv`;
* RPC with the same plugin on other members, over the mesh's mutual-TLS
  sessions: :meth:`Context.register` serves a method, :meth:`Context.call`
  calls one node, :meth:`Context.call_owner` / :meth:`Context.call_owners`
  a key's owners, :meth:`Context.call_any` one member chosen by a
  load-balancing strategy. Every handler learns the caller's node id as
  verified by TLS, and a plugin only ever reaches the plugin of the same
  name on its peers;
* small broadcasts (user events): :meth:`Context.broadcast` and
  :meth:`Context.user_events`;
* :meth:`Context.checkpoint` / :meth:`Context.restore` of its state;
* :attr:`Context.log` and :attr:`Context.metrics` under its name;
* :meth:`Context.command`: commands an operator runs with
  ``meshctl plugins call NAME COMMAND``.

Rules a plugin must follow:

1. Never block the event loop: it runs membership too. Use trio's async
   APIs, ``trio.to_thread.run_sync`` for blocking calls and
   ``trio.run_process`` for commands. A step that holds the loop longer than
   ``[plugins] block_threshold`` (0.25 s) is reported by name in the log,
   ``meshctl plugins`` and ``meshctl status``.
2. Import only this module from meshd; everything else is internal and
   changes without notice.
3. Declare :attr:`Plugin.api_version`. This module is plugin API
   :data:`API_VERSION`; meshd loads plugins written for the same major
   version and a minor version up to its own, and refuses others with a
   message saying which versions it supports.

docs/plugins.md is the author's guide, with a tutorial.
"""

from __future__ import annotations

import abc
import difflib
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, final

import attrs

from meshd.errors import MeshError

__all__ = [
    "API_VERSION",
    "BROADCAST_MAX",
    "BroadcastTooLarge",
    "CallError",
    "CommandHandler",
    "ConfigInvalid",
    "Consistency",
    "Context",
    "Counter",
    "Gauge",
    "Handler",
    "KVBackend",
    "KVNamespace",
    "KVUnavailable",
    "ListOf",
    "MemberInfo",
    "MembershipEvent",
    "Metrics",
    "Option",
    "Plugin",
    "PluginError",
    "Schema",
    "Strategy",
    "TagsTooLarge",
    "Unavailable",
    "UserEvent",
    "api_compatible",
]

#: The version of this API, ``"MAJOR.MINOR"``. A minor version only adds;
#: a major version may change or remove.
API_VERSION: Final = "1.0"
_API_MAJOR, _API_MINOR = (int(p) for p in API_VERSION.split("."))

#: Largest :meth:`Context.broadcast` payload in bytes, with a short plugin
#: and event name; the event, its names and its envelope must fit in one
#: gossip packet (longer names leave a little less).
BROADCAST_MAX: Final = 1024

#: The consistency of a KV operation: how many replicas must answer.
Consistency = Literal["one", "quorum", "all"]
#: How :meth:`Context.call_any` picks a member.
Strategy = Literal["random", "round_robin", "least_outstanding"]
#: An RPC method: called with the caller's TLS-verified node id and the
#: request body; returns the response body. Raise :class:`CallError` to
#: refuse with a message the caller sees.
Handler = Callable[[str, bytes], Awaitable[bytes]]
#: A ``meshctl plugins call`` command: takes the JSON arguments, returns a
#: JSON object. Raise :class:`CallError` (or ValueError for bad arguments)
#: to fail with a message.
CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def api_compatible(declared: object) -> bool:
    """Whether a plugin declaring ``api_version = declared`` can run on this API.

    Same major version, and a minor version no newer than :data:`API_VERSION`'s.
    """
    if not isinstance(declared, str) or not re.fullmatch(r"\d{1,4}\.\d{1,4}", declared):
        return False
    major, minor = (int(p) for p in declared.split("."))
    return major == _API_MAJOR and minor <= _API_MINOR


# ============================================================== errors


class PluginError(MeshError):
    """Base class of the errors this API raises."""


class CallError(PluginError):
    """The remote plugin refused or failed the call; the message says why.

    Also raised when the peer does not run the plugin or has no such
    method. A handler raises it to answer with an error message.
    """


class Unavailable(PluginError):
    """No answer: the member is gone, unreachable, or the call timed out.

    Attributes:
        kind: ``"not_member"`` (not an alive member), ``"no_members"``
            (no member runs the plugin), ``"connect"``, ``"tls"``,
            ``"identity"``, ``"lost"`` (connection lost after the request
            was sent: it may have run), ``"protocol"`` or ``"timeout"``
            (it may have run).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class KVUnavailable(PluginError):
    """The KV operation could not be done: no KV store in this meshd, or too few replicas."""


class TagsTooLarge(PluginError):
    """The node's tags would exceed the metadata size cap (``membership.meta_max_size``)."""


class BroadcastTooLarge(PluginError):
    """A broadcast does not fit in one gossip packet, or broadcasts exceed the rate limit."""


class ConfigInvalid(PluginError):
    """Raised by :meth:`Plugin.validate_config` (and the schema) for a bad ``[plugins.NAME]``.

    Args:
        message: what is wrong and what to do, e.g. ``"port must be above 1023"``.
        key: the key at fault (``"services[1].port"``), shown before the message.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


# ============================================================== values


@final
@attrs.frozen
class MemberInfo:
    """One member as this node sees it.

    Attributes:
        node_id: its name.
        address: ``"HOST:PORT"`` of its gossip and stream listeners.
        status: ``"alive"``, ``"suspect"``, ``"dead"`` or ``"left"``.
        incarnation: its incarnation number.
        tags: its tags (configured tags, ``plugins``, and plugin tags ``NAME.KEY``).
        plugins: the plugins it runs (enabled in its configuration).
    """

    node_id: str
    address: str
    status: str
    incarnation: int
    tags: Mapping[str, str]
    plugins: frozenset[str]

    def runs(self, plugin: str) -> bool:
        """Whether this member runs ``plugin``."""
        return plugin in self.plugins


@final
@attrs.frozen
class MembershipEvent:
    """A change of a member, as this node saw it happen.

    Attributes:
        kind: ``"joined"``, ``"suspected"``, ``"recovered"`` (refuted its
            suspicion), ``"failed"``, ``"left"``, ``"updated"`` (new tags)
            or ``"reaped"`` (forgotten long after it failed or left).
        member: the member after the change.
    """

    kind: Literal["joined", "suspected", "recovered", "failed", "left", "updated", "reaped"]
    member: MemberInfo


@final
@attrs.frozen
class UserEvent:
    """A broadcast of this plugin, received (or sent) by this node.

    Attributes:
        name: the event's name (``broadcast(name, ...)``).
        payload: its bytes.
        origin: the node that sent it. Gossip is authenticated by the
            cluster key, not per member: treat the name as a claim of a
            cluster member, not as proof (RPC senders are verified).
        ltime: its Lamport time: an event sent after receiving another has
            a larger one. Events are delivered once, in arrival order.
    """

    name: str
    payload: bytes
    origin: str
    ltime: int


# ============================================================== configuration schema

_REQUIRED: Any = object()
_Scalar = type[str] | type[int] | type[float] | type[bool]
_TYPE_NAMES: dict[type, tuple[str, str]] = {
    # type -> (what it must be, an example value in TOML)
    str: ("a string", '"text"'),
    int: ("an integer", "1"),
    float: ("a number", "1.0"),
    bool: ("true or false", "true"),
    dict: ("a table of strings", '{ key = "value" }'),
}


def _toml_type(value: object) -> str:
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _shown(value)


@final
class ListOf:
    """An array: of strings/integers/numbers/booleans, or of tables (``[[plugins.NAME.KEY]]``).

    Args:
        item: ``str``, ``int``, ``float``, ``bool`` or a :class:`Schema`.
        min_items: fewest items accepted.
    """

    def __init__(self, item: _Scalar | Schema, *, min_items: int = 0) -> None:
        self.item = item
        self.min_items = min_items


@final
class Option:
    """One key of a plugin's configuration section.

    Args:
        type: ``str``, ``int``, ``float`` (integers accepted), ``bool``,
            ``dict`` (a table of strings), a :class:`ListOf`, or a nested
            :class:`Schema` (a sub-table).
        default: the value when the key is absent; without one the key is
            required. Lists and tables get a copy.
        help: what it means (shown by the docs, not checked).
        choices: allowed values (strings or numbers).
        min: smallest allowed number, or shortest string/array.
        max: largest allowed number, or longest string/array.
    """

    def __init__(
        self,
        type: _Scalar | type[dict[str, str]] | ListOf | Schema,
        *,
        default: Any = _REQUIRED,
        help: str = "",
        choices: Sequence[object] | None = None,
        min: float | None = None,
        max: float | None = None,
    ) -> None:
        self.type = type
        self.default = default
        self.help = help
        self.choices = tuple(choices) if choices is not None else None
        self.min = min
        self.max = max

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@final
class Schema:
    """The keys of a plugin's ``[plugins.NAME]`` section (or of a sub-table).

    :meth:`validate` checks a parsed TOML table and returns a plain dict
    with defaults filled in. Unknown keys are errors (with a "did you mean"),
    as everywhere in meshd's configuration.

    Args:
        options: key -> :class:`Option`.
    """

    def __init__(self, options: Mapping[str, Option] | None = None) -> None:
        self.options: dict[str, Option] = dict(options or {})

    def validate(self, raw: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
        """Check ``raw`` and fill in defaults.

        Args:
            raw: the table as parsed from TOML.
            where: the key path of this table inside the section, for messages.

        Returns:
            The validated values.

        Raises:
            ConfigInvalid: the first problem found; ``key`` names it.
        """
        out: dict[str, Any] = {}
        valid = list(self.options)
        for key in raw:
            if key not in self.options:
                match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                guess = f" (did you mean {match[0]!r}?)" if match else ""
                keys = ", ".join(valid) if valid else "none"
                raise ConfigInvalid(
                    f"unknown key{guess} — valid keys here are: {keys}", _join(where, key)
                )
        for key, option in self.options.items():
            path = _join(where, key)
            if key not in raw:
                if option.required:
                    raise ConfigInvalid(
                        f"is required — add it, e.g. {key} = {_example(option)}", path
                    )
                out[key] = _copy(option.default)
                continue
            out[key] = _check(option.type, raw[key], path, option)
        return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _example(option: Option) -> str:
    if option.choices:
        return _toml_value(option.choices[0])
    kind = option.type
    if isinstance(kind, ListOf):
        item = kind.item
        return "[" + (_TYPE_NAMES[item][1] if isinstance(item, type) else "...") + "]"
    if isinstance(kind, Schema):
        return "{ ... }"
    return _TYPE_NAMES.get(kind, ("", "..."))[1]


def _last(path: str) -> str:
    """The last key of a path, for "write it like" hints (``a[1].port`` -> ``port``)."""
    return re.split(r"[.\[]", path)[-1].rstrip("]") or path


def _check(kind: Any, value: Any, path: str, option: Option | None) -> Any:
    if isinstance(kind, Schema):
        if not isinstance(value, dict):
            raise ConfigInvalid(f"must be a table, got {_toml_type(value)} {_shown(value)}", path)
        return kind.validate(value, where=path)
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ConfigInvalid(f"must be an array, got {_toml_type(value)} {_shown(value)}", path)
        if len(value) < kind.min_items:
            raise ConfigInvalid(f"needs at least {kind.min_items} item(s)", path)
        items = [_check(kind.item, v, f"{path}[{i}]", None) for i, v in enumerate(value)]
        _check_bounds(len(items), path, option, what="items")
        return items
    if kind is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigInvalid(
                f"must be a table of strings, got {_toml_type(value)} {_shown(value)} — "
                f'write it like: {_last(path)} = {{ key = "value" }}',
                path,
            )
        return dict(value)
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, kind)
    )
    if not ok:
        what, hint = _TYPE_NAMES.get(kind, (kind.__name__, "..."))
        if option is not None and not option.required and option.default is not None:
            hint = _toml_value(option.default)
        raise ConfigInvalid(
            f"must be {what}, got {_toml_type(value)} {_shown(value)} — "
            f"write it like: {_last(path)} = {hint}",
            path,
        )
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigInvalid(f"must be a finite number, got {value}", path)
    if option is not None:
        if option.choices is not None and value not in option.choices:
            allowed = ", ".join(_toml_value(c) for c in option.choices)
            raise ConfigInvalid(f"= {_toml_value(value)} is not one of {allowed}", path)
        measure = len(value) if isinstance(value, str) else value
        if not isinstance(value, bool):
            _check_bounds(measure, path, option, what="characters" if kind is str else "")
    return value


def _check_bounds(measure: float, path: str, option: Option | None, *, what: str) -> None:
    if option is None:
        return
    unit = f" {what}" if what else ""
    if option.min is not None and measure < option.min:
        raise ConfigInvalid(f"must be at least {option.min:g}{unit}, got {measure:g}", path)
    if option.max is not None and measure > option.max:
        raise ConfigInvalid(f"must be at most {option.max:g}{unit}, got {measure:g}", path)


# ============================================================== metrics

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Counter:
    """A number that only goes up (requests served, errors); exported as ``_total``."""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class Gauge:
    """A number that goes up and down (queue length, items held)."""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


_M = TypeVar("_M", Counter, Gauge)


class Metrics:
    """A plugin's metrics, exported by ``/metrics`` as ``meshd_plugin_<plugin>_<name>``.

    Metrics belong to the plugin, not to one run of it: they survive its
    restarts, and asking twice for the same name returns the same metric.
    """

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self._metrics: dict[str, Counter | Gauge] = {}

    def counter(self, name: str, help: str = "") -> Counter:
        """The counter ``name`` (``[a-z][a-z0-9_]*``), created on first use."""
        return self._get(name, help, Counter)

    def gauge(self, name: str, help: str = "") -> Gauge:
        """The gauge ``name`` (``[a-z][a-z0-9_]*``), created on first use."""
        return self._get(name, help, Gauge)

    def all(self) -> list[Counter | Gauge]:
        """Every metric, by name."""
        return [self._metrics[n] for n in sorted(self._metrics)]

    def _get(self, name: str, help: str, kind: type[_M]) -> _M:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r}: use 1..64 of a-z, 0-9 and _")
        metric = self._metrics.get(name)
        if metric is None:
            created = kind(name, help)
            self._metrics[name] = created
            return created
        if not isinstance(metric, kind):
            raise ValueError(f"metric {name!r} is a {type(metric).__name__.lower()}")
        return metric


# ============================================================== KV


class KVBackend(abc.ABC):
    """What the daemon's replicated KV store offers plugins (implemented by meshd).

    Every call names a namespace (meshd gives each plugin its own,
    ``plugin:NAME``) and a consistency: ``"one"``, ``"quorum"`` or ``"all"``
    replicas must answer. Keys and values are bytes.
    """

    @abc.abstractmethod
    async def get(self, namespace: str, key: bytes, *, consistency: Consistency) -> bytes | None:
        """The value of ``key``, or None when absent (or deleted)."""

    @abc.abstractmethod
    async def put(
        self, namespace: str, key: bytes, value: bytes, *, consistency: Consistency
    ) -> None:
        """Store ``value`` under ``key`` (last writer wins)."""

    @abc.abstractmethod
    async def delete(self, namespace: str, key: bytes, *, consistency: Consistency) -> None:
        """Delete ``key`` (a tombstone; absent keys are fine)."""

    @abc.abstractmethod
    async def scan(
        self, namespace: str, prefix: bytes, *, limit: int, consistency: Consistency
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, value)`` pairs whose key starts with ``prefix``, by key."""


class KVNamespace:
    """A plugin's own part of the replicated KV store: ``ctx.kv``.

    Keys are ``str`` (UTF-8) or ``bytes``, values ``bytes``; other plugins'
    and the operator's keys live in other namespaces and are never seen.
    Without a KV store in the daemon every call raises :class:`KVUnavailable`.

    Args:
        backend: the daemon's store, or None when it has none.
        namespace: this plugin's namespace (meshd uses ``plugin:NAME``).
    """

    def __init__(self, backend: KVBackend | None, namespace: str) -> None:
        self._backend = backend
        self.namespace = namespace

    @property
    def available(self) -> bool:
        """Whether this meshd has a KV store (calls may still fail for want of replicas)."""
        return self._backend is not None

    def _store(self) -> KVBackend:
        if self._backend is None:
            raise KVUnavailable("this meshd runs without its replicated KV store")
        return self._backend

    @staticmethod
    def _key(key: str | bytes) -> bytes:
        return key.encode() if isinstance(key, str) else bytes(key)

    async def get(self, key: str | bytes, *, consistency: Consistency = "quorum") -> bytes | None:
        """The value of ``key``, or None.

        Raises:
            KVUnavailable: too few replicas answered, or no KV store.
        """
        return await self._store().get(self.namespace, self._key(key), consistency=consistency)

    async def put(
        self, key: str | bytes, value: bytes, *, consistency: Consistency = "quorum"
    ) -> None:
        """Store ``value`` under ``key``.

        Raises:
            KVUnavailable: too few replicas stored it in time, or no KV store.
        """
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"KV values are bytes, not {type(value).__name__}")
        await self._store().put(
            self.namespace, self._key(key), bytes(value), consistency=consistency
        )

    async def delete(self, key: str | bytes, *, consistency: Consistency = "quorum") -> None:
        """Delete ``key``.

        Raises:
            KVUnavailable: too few replicas took the delete in time, or no KV store.
        """
        await self._store().delete(self.namespace, self._key(key), consistency=consistency)

    async def scan(
        self, prefix: str | bytes = b"", *, limit: int = 1000, consistency: Consistency = "one"
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, value)`` pairs whose key starts with ``prefix``, by key.

        Raises:
            KVUnavailable: the store cannot scan (see docs/plugins.md), or no KV store.
        """
        return await self._store().scan(
            self.namespace, self._key(prefix), limit=limit, consistency=consistency
        )


# ============================================================== the context


class Context(abc.ABC):
    """What a running plugin can do; the ``ctx`` passed to :meth:`Plugin.run`.

    One context per run: a restarted plugin gets a new one. Its handlers,
    commands and subscriptions end with the run.
    """

    #: The plugin's name (its entry-point or file name).
    name: str
    #: This node's id.
    node_id: str
    #: This node's ``"HOST:PORT"``.
    address: str
    #: The validated ``[plugins.NAME]`` section, defaults filled in.
    config: Mapping[str, Any]
    #: A logger named ``meshd.plugin.NAME``.
    log: logging.Logger
    #: The plugin's metrics (they survive restarts).
    metrics: Metrics
    #: The plugin's KV namespace.
    kv: KVNamespace
    #: A directory of the plugin's own in the state directory (created).
    state_dir: Path

    # ------------------------------------------------------------ identity, tags

    @property
    @abc.abstractmethod
    def tags(self) -> Mapping[str, str]:
        """This node's tags as gossiped (configured, ``plugins``, and every plugin's)."""

    @abc.abstractmethod
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Publish this plugin's tags, replacing its previous ones.

        They are gossiped with the node's tags as ``NAME.KEY`` (see
        :attr:`MemberInfo.tags`). All of a node's tags share the metadata
        cap (``[membership] meta_max_size``, 512 bytes by default): keep
        them short, and put anything larger in the KV store.

        Raises:
            TagsTooLarge: the node's tags would exceed the cap; nothing changed.
            ValueError: a key or value is not a string, or a key is empty.
        """

    @abc.abstractmethod
    def set_status(self, text: str) -> None:
        """A short line about the plugin's state, shown by ``meshctl plugins``."""

    # ------------------------------------------------------------ membership

    @abc.abstractmethod
    def members(self) -> list[MemberInfo]:
        """Every member this node knows (any status), itself first."""

    @abc.abstractmethod
    def peers(self) -> list[MemberInfo]:
        """The alive members that run this plugin, this node included, by node id."""

    @abc.abstractmethod
    def membership_events(self) -> AsyncIterator[MembershipEvent]:
        """Membership changes from now on: ``async for event in ctx.membership_events():``.

        Subscribes at the call. Events are buffered (1024); a subscriber
        that falls further behind loses the oldest undelivered ones, counted
        in the log.
        """

    @abc.abstractmethod
    def owners(self, key: str | bytes, n: int | None = None) -> list[str]:
        """The members owning ``key``, primary first (consistent hashing).

        The ring is that of the KV store (``meshd/core/ring.py``), built
        over the alive members that run this plugin: the owners are always
        members the plugin can call. When every member runs the plugin,
        a key has the same owners as the KV store's copy of it.

        Args:
            key: the placement key (``str`` is UTF-8 encoded).
            n: how many owners (default: the replication factor, 3),
                capped at the number of such members.
        """

    # ------------------------------------------------------------ RPC

    @abc.abstractmethod
    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` for this plugin on this node, until the run ends.

        The handler gets the caller's node id, verified by TLS (the member
        whose certificate opened the session), and the request body.
        Raising :class:`CallError` answers with its message; any other
        exception answers "internal error" and is logged with its traceback
        (the plugin keeps running).

        Raises:
            ValueError: ``method`` is empty, longer than 255 UTF-8 bytes, or taken.
        """

    @abc.abstractmethod
    async def call(
        self, node_id: str, method: str, body: bytes = b"", *, timeout: float = 5.0
    ) -> bytes:
        """Call ``method`` of this plugin on member ``node_id`` (this node runs it locally).

        Raises:
            CallError: the remote refused or failed, or does not run this
                plugin or method.
            Unavailable: no answer (``kind`` says why).
        """

    @abc.abstractmethod
    async def call_owner(
        self, key: str | bytes, method: str, body: bytes = b"", *, timeout: float = 5.0
    ) -> bytes:
        """Call ``method`` on the first owner of ``key`` that answers.

        Tries the owners in order, moving on only when the request surely
        did not run (the owner is gone, unreachable or not running the
        plugin); a timeout is not retried.

        Raises:
            CallError, Unavailable: as :meth:`call`, from the last owner tried.
        """

    @abc.abstractmethod
    async def call_owners(
        self,
        key: str | bytes,
        method: str,
        body: bytes = b"",
        *,
        n: int | None = None,
        timeout: float = 5.0,
    ) -> dict[str, bytes | PluginError]:
        """Call ``method`` on every owner of ``key`` at once.

        Returns:
            owner -> its answer, or the :class:`CallError`/:class:`Unavailable` it gave.
        """

    @abc.abstractmethod
    async def call_any(
        self,
        method: str,
        body: bytes = b"",
        *,
        strategy: Strategy = "round_robin",
        timeout: float = 5.0,
    ) -> bytes:
        """Call ``method`` on one of :meth:`peers`, chosen by ``strategy``.

        ``"round_robin"`` takes the peers in turn (by node id),
        ``"random"`` one at random, ``"least_outstanding"`` the one with the
        fewest calls of this plugin waiting for an answer (ties in turn).
        A peer that surely did not run the request (gone, unreachable, not
        running the plugin) is skipped for the next one.

        Raises:
            Unavailable: no peer runs the plugin (``kind="no_members"``),
                or none answered.
            CallError: the chosen peer refused or failed.
        """

    # ------------------------------------------------------------ broadcasts

    @abc.abstractmethod
    def broadcast(self, name: str, payload: bytes = b"") -> int:
        """Send a user event to this plugin on every member (this node included).

        It travels in the encrypted gossip, passed on by every member, so it
        reaches all of them in about the time a membership change does.
        Delivery is best effort (a member down at the time misses it).

        Args:
            name: the event name, 1..64 characters.
            payload: at most about :data:`BROADCAST_MAX` bytes.

        Returns:
            Its Lamport time (:attr:`UserEvent.ltime`).

        Raises:
            BroadcastTooLarge: it does not fit in a gossip packet, or this
                node sent more broadcasts than the rate limit allows.
        """

    @abc.abstractmethod
    def user_events(self) -> AsyncIterator[UserEvent]:
        """This plugin's user events from now on, its own included.

        Subscribes at the call; buffered like :meth:`membership_events`.
        """

    # ------------------------------------------------------------ state

    @abc.abstractmethod
    async def checkpoint(self, state: Any) -> None:
        """Save ``state`` on this node's disk, replacing the previous checkpoint.

        ``state`` is made of dicts, lists, str, bytes, int, float, bool and
        None (msgpack); at most 16 MiB. Written atomically (a crash leaves
        the old or the new one).
        """

    @abc.abstractmethod
    async def restore(self) -> Any:
        """The last checkpoint of this plugin on this node, or None."""

    # ------------------------------------------------------------ operator commands

    @abc.abstractmethod
    def command(self, name: str, handler: CommandHandler) -> None:
        """Serve ``meshctl plugins call PLUGIN NAME [JSON]`` on this node until the run ends.

        Raises:
            ValueError: ``name`` is taken or not 1..64 of a-z, 0-9, ``_`` and ``-``.
        """


# ============================================================== the plugin


class Plugin:
    """Base class of plugins. Subclass it and implement :meth:`run`.

    Class attributes:
        api_version: the plugin API version the plugin was written for
            (``"1.0"``); checked when it is loaded.
        version: the plugin's own version, shown by ``meshctl plugins``
            (an installed distribution's version is used when there is one).
        description: one line, shown by ``meshctl plugins``.
        config_schema: the keys of its ``[plugins.NAME]`` section.

    A new instance is made for every run (at start, after a crash, on
    reload), with no arguments.
    """

    api_version: ClassVar[str] = ""
    version: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_schema: ClassVar[Schema] = Schema()

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Optional hook: checks the schema cannot express (e.g. between keys).

        Called with the section after :attr:`config_schema` validated it.
        Raise :class:`ConfigInvalid` to refuse it; the daemon reports it like
        any configuration error (exit 78 at start, an error on reload).
        """

    async def run(self, ctx: Context) -> None:
        """The plugin's work; cancelled when it stops. Must not block the loop."""
        raise NotImplementedError(f"{type(self).__name__} must implement async run(self, ctx)")

    async def on_stop(self, ctx: Context) -> None:
        """Optional hook, called after :meth:`run` was cancelled for a stop or reload.

        For last words such as a final :meth:`Context.checkpoint`; it gets
        at most 5 seconds. Not called after a crash.
        """
