"""Plugins in the daemon: finding, checking, running, isolating and reloading them.

The API plugins see is :mod:`meshd.plugin_api`; docs/plugins.md is the
author's guide. This module is its implementation inside the daemon.
"""

# Theory of operation
# -------------------
#
# Finding. A plugin is a Plugin subclass named by an entry point of the
# group "meshd.plugins" (an installed distribution), or a NAME.py file or a
# NAME/ package in one of the [plugins] dirs (those win over entry points of
# the same name). discover() lists both without importing anything; load()
# imports one, checks its api_version and returns a Loaded.
#
# Checking. prepare() resolves every enabled name, loads it, and validates
# its [plugins.NAME] section with the plugin's Schema and validate_config
# hook. At start-up the first problem is a ConfigError (meshd run exits 78,
# meshd check-config reports it); on reload a plugin with a problem keeps
# its running version (or is shown "refused") and the problem is reported.
#
# Running. One supervisor task per enabled plugin, in the manager's
# nursery. It makes a new instance, calls run(ctx) and, when that raises,
# logs the traceback, waits (1 s, doubling to 60 s; back to 1 s after a run
# that lasted 60 s) and starts a new instance. A stop or reload cancels the
# supervisor's scope: run() is cancelled, then on_stop(ctx) gets 5 s.
#
# Talking. Each enabled plugin has one RPC service, "plugin/NAME", on the
# daemon's RpcServer (runtime/rpc.py: mutual-TLS sessions, the TLS-verified
# caller). The body is [u8 method length][method][request]. A plugin's
# context only ever calls its own service name, so a plugin reaches only the
# plugin of the same name on its peers. Broadcasts are user events of the
# core (core/userevents.py) whose payload is msgpack [plugin, name, bytes];
# the receiving manager hands them to that plugin only.
#
# Isolation. Exceptions in run() restart the plugin; exceptions in an RPC
# handler or a command answer that call with an error. Neither reaches the
# daemon's nursery (Rule 1). A plugin that blocks the event loop cannot be
# pre-empted in one process, but it is reported by name (_LoopWatch): a trio
# instrument marks when the loop stops waiting for I/O, a thread samples the
# trio thread's stack while the loop has been busy longer than the
# threshold, and the innermost frame belonging to a plugin's modules names
# the culprit.
#
# Rule 1: nothing a plugin does raises out of this module into the daemon,
#         except cancellation and KeyboardInterrupt.
# Rule 2: a plugin's handlers, commands and subscriptions belong to one
#         run (an _Instance); they are dropped when it ends, so calls during
#         a restart get "not running", never a half-dead instance.
# Rule 3: every queue is bounded: subscriptions drop their oldest events,
#         broadcasts are rate-limited per plugin.

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import attrs
import msgpack
import trio

from meshd import plugin_api
from meshd.config import Config, PluginsSection, format_address
from meshd.core.outputs import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    UserEventReceived,
)
from meshd.core.ring import DEFAULT_REPLICAS, Ring
from meshd.core.types import Member, NodeId
from meshd.core.versioned import placement_key
from meshd.errors import ConfigError, LocalProtocolError, MeshError, MetadataTooLarge
from meshd.plugin_api import (
    CallError,
    MemberInfo,
    MembershipEvent,
    Plugin,
    PluginError,
    Unavailable,
    UserEvent,
)
from meshd.runtime import rpc
from meshd.runtime.loadgen import run_load

if TYPE_CHECKING:
    from meshd.runtime.daemon import Daemon

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_TAG",
    "PluginCommandFailed",
    "PluginManager",
    "check_plugins",
    "discover",
]

log = logging.getLogger("meshd.plugins")

#: The entry-point group installed plugins register in.
ENTRY_POINT_GROUP = "meshd.plugins"
#: The node tag listing the plugins a node runs (comma-separated names).
PLUGINS_TAG = "plugins"
#: RPC service of plugin NAME is SERVICE_PREFIX + NAME.
SERVICE_PREFIX = "plugin/"
#: KV namespace of plugin NAME is KV_PREFIX + NAME.
KV_PREFIX = "plugin:"

#: First pause before restarting a plugin that raised; doubles per failure.
BACKOFF_MIN = 1.0
#: Longest pause between restarts.
BACKOFF_MAX = 60.0
#: A run that lasted this long resets the back-off and clears "failing".
STABLE_AFTER = 60.0
#: Seconds on_stop() may take.
STOP_HOOK_TIMEOUT = 5.0
#: Events a subscription holds before it drops the oldest (Rule 3).
SUBSCRIPTION_BUFFER = 1024
#: Broadcasts per second a plugin may send, sustained, and in a burst.
BROADCAST_RATE = 50.0
BROADCAST_BURST = 200.0
#: Largest checkpoint.
CHECKPOINT_MAX = 16 << 20
#: Checkpoint file in the plugin's state directory.
CHECKPOINT_FILE = "checkpoint.msgpack"

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,47}")
_COMMAND = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: RpcUnavailable kinds after which the request surely did not run: safe to
#: try another member.
_DID_NOT_RUN = frozenset({"not_member", "connect", "tls", "identity", "stopped"})

_Kind = Literal["joined", "suspected", "recovered", "failed", "left", "updated", "reaped"]
_KINDS: dict[type, _Kind] = {
    MemberJoined: "joined",
    MemberSuspected: "suspected",
    MemberRecovered: "recovered",
    MemberFailed: "failed",
    MemberLeft: "left",
    MemberUpdated: "updated",
    MemberReaped: "reaped",
}


class PluginCommandFailed(MeshError):
    """A plugin control command could not be carried out; the message says why."""


class _NotRunning(CallError):
    """The peer does not run the plugin (not enabled, or restarting): the call did not run."""


class _LoadError(Exception):
    """A plugin cannot be used; the message is for the operator."""


def _service(plugin: str) -> str:
    return SERVICE_PREFIX + plugin


def _one_line(exc: BaseException) -> str:
    """``Type: message (file:line in function)`` for the innermost frame of ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = exc.__traceback__
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        text += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text[:300]


# ================================================================ finding and loading


@attrs.frozen
class Found:
    """A plugin that could be loaded, before anything was imported.

    Attributes:
        name: its name.
        kind: ``"entry_point"`` or ``"dir"``.
        where: for messages: the distribution and object, or the path.
        entry_point: the entry point (kind ``entry_point``).
        path: the ``NAME.py`` file or ``NAME/`` package (kind ``dir``).
    """

    name: str
    kind: Literal["entry_point", "dir"]
    where: str
    entry_point: importlib.metadata.EntryPoint | None = None
    path: Path | None = None


@attrs.frozen(eq=False)
class Loaded:
    """A plugin class, imported and checked against the API version."""

    found: Found
    cls: type[Plugin]
    version: str
    #: Module name prefixes whose frames belong to this plugin (for the loop watch).
    modules: tuple[str, ...]
    #: Changes when its code changes on disk (reload re-imports it).
    fingerprint: tuple[object, ...]


def discover(dirs: Iterable[Path]) -> dict[str, Found]:
    """Every plugin available by name, without importing any: directories first.

    Entry points of the group ``meshd.plugins`` are read from the installed
    distributions' metadata; in each directory, ``NAME.py`` files and
    ``NAME/__init__.py`` packages whose NAME is a valid plugin name count.
    """
    found: dict[str, Found] = {}
    for directory in dirs:
        try:
            children = sorted(directory.iterdir())
        except OSError:
            continue  # reported by prepare() when an enabled plugin is missing
        for child in children:
            if child.suffix == ".py" and child.is_file():
                name = child.stem
            elif child.is_dir() and (child / "__init__.py").is_file():
                name = child.name
            else:
                continue
            if _NAME.fullmatch(name) and name not in found:
                found[name] = Found(name, "dir", str(child), path=child)
    importlib.invalidate_caches()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found or not _NAME.fullmatch(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        label = f"{dist.name} {dist.version}" if dist is not None else "?"
        found[ep.name] = Found(
            ep.name, "entry_point", f"entry point {ep.value} of {label}", entry_point=ep
        )
    return found


def _dir_module_name(name: str) -> str:
    return "_meshd_plugin_" + name.replace("-", "_")


def _file_fingerprint(path: Path) -> tuple[object, ...]:
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    out: list[object] = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _purge_modules(prefix: str) -> None:
    for module in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[module]


def _plugin_class(obj: object, where: str) -> type[Plugin]:
    """The Plugin subclass named by an entry point or defined by a module."""
    if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin:
        return obj
    if isinstance(obj, ModuleType):
        chosen = getattr(obj, "plugin", None)
        if chosen is not None:
            return _plugin_class(chosen, where)
        classes = [
            v
            for v in vars(obj).values()
            if isinstance(v, type)
            and issubclass(v, Plugin)
            and v is not Plugin
            and v.__module__ == obj.__name__
        ]
        if len(classes) == 1:
            return classes[0]
        if not classes:
            raise _LoadError(f"{where} defines no meshd.plugin_api.Plugin subclass")
        names = ", ".join(sorted(c.__name__ for c in classes))
        raise _LoadError(
            f"{where} defines several Plugin subclasses ({names}); set `plugin = ONE_OF_THEM` "
            "in the module to choose"
        )
    raise _LoadError(f"{where} is {type(obj).__name__}, not a meshd.plugin_api.Plugin subclass")


def load(found: Found, *, previous: Loaded | None = None, fresh: bool = False) -> Loaded:
    """Import ``found`` (again, if ``fresh`` or its code changed) and check its API version.

    Raises:
        _LoadError: it does not import, is not a Plugin, or needs another API version.
    """
    if found.kind == "dir":
        assert found.path is not None
        fingerprint = _file_fingerprint(found.path)
        module_name = _dir_module_name(found.name)
        modules = (module_name,)
        if (
            previous is not None
            and not fresh
            and previous.found == found
            and previous.fingerprint == fingerprint
        ):
            return previous
        init = found.path / "__init__.py" if found.path.is_dir() else found.path
        _purge_modules(module_name)
        spec = importlib.util.spec_from_file_location(
            module_name,
            init,
            submodule_search_locations=[str(found.path)] if found.path.is_dir() else None,
        )
        if spec is None or spec.loader is None:
            raise _LoadError(f"{found.where}: cannot be imported as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            _purge_modules(module_name)
            log.error("plugin %s: importing %s failed", found.name, found.where, exc_info=exc)
            raise _LoadError(f"importing {found.where} failed: {_one_line(exc)}") from None
        cls = _plugin_class(module, found.where)
        version = str(getattr(cls, "version", "") or "")
    else:
        ep = found.entry_point
        assert ep is not None
        top = ep.module.split(".")[0]
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else ""
        origin = None
        try:
            spec = importlib.util.find_spec(top)
            origin = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            pass
        mtime = 0
        if origin:
            try:
                mtime = os.stat(origin).st_mtime_ns
            except OSError:
                pass
        fingerprint = (ep.value, version, origin, mtime)
        modules = (top,)
        if (
            previous is not None
            and not fresh
            and previous.found == found
            and previous.fingerprint == fingerprint
        ):
            return previous
        if previous is not None or fresh:
            _purge_modules(top)
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:
            log.error("plugin %s: importing %s failed", found.name, found.where, exc_info=exc)
            raise _LoadError(f"importing {found.where} failed: {_one_line(exc)}") from None
        cls = _plugin_class(obj, found.where)
        version = version or str(getattr(cls, "version", "") or "")
    declared = getattr(cls, "api_version", "")
    if not plugin_api.api_compatible(declared):
        written = f"plugin API {declared}" if declared else "no plugin API version (api_version)"
        raise _LoadError(
            f"plugin {found.name!r} ({found.where}) declares {written}; this meshd supports "
            f"plugin API {_supported()} — install a version of the plugin written for "
            f"plugin API {_supported()}"
        )
    if not isinstance(getattr(cls, "config_schema", None), plugin_api.Schema):
        raise _LoadError(f"{found.where}: config_schema must be a meshd.plugin_api.Schema")
    return Loaded(found, cls, version, modules, fingerprint)


def _supported() -> str:
    major, minor = plugin_api.API_VERSION.split(".")
    return f"{major}.0" if minor == "0" else f"{major}.0 to {plugin_api.API_VERSION}"


@attrs.frozen(eq=False)
class Prepared:
    """An enabled plugin ready to run: loaded, with its validated section."""

    name: str
    loaded: Loaded
    config: dict[str, Any]
    raw: dict[str, Any]


def prepare(
    section: PluginsSection,
    *,
    previous: Mapping[str, Loaded] | None = None,
    force: Iterable[str] = (),
) -> tuple[dict[str, Prepared], dict[str, str]]:
    """Load and validate every enabled plugin.

    Args:
        section: ``[plugins]``.
        previous: what is loaded now (unchanged code is not imported again).
        force: names to import again in any case.

    Returns:
        ``(prepared, errors)``: the plugins ready to run by name, and a
        message per problem, each starting with the ``[plugins...]`` key at fault.
    """
    previous = previous or {}
    forced = set(force)
    found = discover(section.dirs)
    prepared: dict[str, Prepared] = {}
    errors: dict[str, str] = {}
    available = sorted(found)
    for name in section.sections:
        if name not in found and name not in section.enabled:
            guess = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
            errors[name] = (
                f"[plugins.{name}]: no plugin named {name!r} is installed"
                + (f" (did you mean [plugins.{guess[0]}]?)" if guess else "")
                + " — fix the section name, or remove the section"
            )
    for name in section.enabled:
        f = found.get(name)
        if f is None:
            guess = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
            where = ", ".join(str(d) for d in section.dirs) or "none configured"
            missing = [str(d) for d in section.dirs if not d.is_dir()]
            errors[name] = (
                f"[plugins] enabled: no plugin named {name!r}"
                + (f" (did you mean {guess[0]!r}?)" if guess else "")
                + f" — available: {', '.join(available) or 'none'}; plugin directories: {where}"
                + (f" (not a directory: {', '.join(missing)})" if missing else "")
                + "; install it (pip) or put NAME.py in a plugin directory"
            )
            continue
        try:
            loaded = load(f, previous=previous.get(name), fresh=name in forced)
        except _LoadError as e:
            errors[name] = f"[plugins] enabled: {e}"
            continue
        raw = dict(section.sections.get(name, {}))
        try:
            config = loaded.cls.config_schema.validate(raw)
            loaded.cls.validate_config(config)
        except plugin_api.ConfigInvalid as e:
            errors[name] = f"[plugins.{name}] {e}"
            continue
        except (Exception, SystemExit) as e:
            log.error("plugin %s: validate_config raised", name, exc_info=e)
            errors[name] = f"[plugins.{name}] validate_config raised {_one_line(e)}"
            continue
        prepared[name] = Prepared(name, loaded, config, raw)
    return prepared, errors


def check_plugins(config: Config) -> list[str]:
    """``meshd check-config``: load and validate the enabled plugins.

    Returns:
        The names of the plugins that are ready.

    Raises:
        ConfigError: the first problem, as ``meshd run`` would report it.
    """
    prepared, errors = prepare(config.plugins)
    if errors:
        raise ConfigError(f"{config.path}: {next(iter(errors.values()))}")
    return list(prepared)


# ================================================================ subscriptions

_T = TypeVar("_T")


class _Subscription(Generic[_T]):
    """An async iterator of events, bounded: the oldest are dropped when full (Rule 3)."""

    def __init__(self, what: str, plugin: str) -> None:
        self._items: deque[_T] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._what = what
        self._plugin = plugin
        self.closed = False
        self.dropped = 0

    def push(self, item: _T) -> None:
        if self.closed:
            return
        if len(self._items) >= SUBSCRIPTION_BUFFER:
            self._items.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "plugin %s is not keeping up with its %s: %d dropped so far",
                    self._plugin,
                    self._what,
                    self.dropped,
                )
        self._items.append(item)
        if self._lot:
            self._lot.unpark()

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> _Subscription[_T]:
        return self

    async def __anext__(self) -> _T:
        if self._items:
            await trio.lowlevel.checkpoint()
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            await self._lot.park()
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop receiving."""
        self.close()


# ================================================================ per-plugin state


@attrs.define(eq=False)
class _Entry:
    """One enabled plugin, across its runs (restarts and reloads)."""

    name: str
    loaded: Loaded
    config: dict[str, Any]
    raw: dict[str, Any]
    metrics: plugin_api.Metrics
    state: str = "starting"
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    started_at: float | None = None  # trio clock
    status: str = ""
    tags: dict[str, str] = attrs.field(factory=dict)
    blocked: int = 0
    blocked_max: float = 0.0
    last_blocked: dict[str, Any] | None = None
    rpc_requests: int = 0
    rpc_errors: int = 0
    events_sent: int = 0
    events_received: int = 0
    instance: _Instance | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    generation: int = 0
    removed: bool = False
    # Broadcast token bucket (Rule 3).
    tokens: float = BROADCAST_BURST
    tokens_at: float = 0.0

    def failing(self, now: float) -> bool:
        """Crashed, and has not run for STABLE_AFTER seconds since."""
        if not self.failures:
            return False
        if self.state == "restarting":
            return True
        return self.state == "running" and (
            self.started_at is None or now - self.started_at < STABLE_AFTER
        )


class _Instance:
    """One run of a plugin: its object, context, handlers and subscriptions (Rule 2)."""

    def __init__(self, manager: PluginManager, entry: _Entry) -> None:
        self.manager = manager
        self.entry = entry
        self.plugin: Plugin | None = None
        self.handlers: dict[str, plugin_api.Handler] = {}
        self.commands: dict[str, plugin_api.CommandHandler] = {}
        self.member_subs: set[_Subscription[MembershipEvent]] = set()
        self.event_subs: set[_Subscription[UserEvent]] = set()
        self.handler_scopes: set[trio.CancelScope] = set()
        self.closed = False
        self.ctx = _Context(self)

    async def run(self) -> None:
        self.plugin = self.entry.loaded.cls()
        await self.plugin.run(self.ctx)
        # run() returned: the plugin stays up with its handlers and commands.
        log.debug("plugin %s: run() returned; it keeps serving", self.entry.name)
        await trio.sleep_forever()

    async def close(self, *, stopping: bool) -> None:
        self.closed = True
        for members in self.member_subs:
            members.close()
        for events in self.event_subs:
            events.close()
        for scope in self.handler_scopes:
            scope.cancel()
        self.handlers.clear()
        self.commands.clear()
        if not stopping or self.plugin is None:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + STOP_HOOK_TIMEOUT
            try:
                await self.plugin.on_stop(self.ctx)
            except (Exception, SystemExit) as e:  # Rule 1: not even sys.exit() gets out
                self.ctx.log.error("on_stop raised", exc_info=e)
        if scope.cancelled_caught:
            self.ctx.log.warning("on_stop took longer than %g s; abandoned", STOP_HOOK_TIMEOUT)


def _request_body(method: str, body: bytes) -> bytes:
    raw = method.encode()
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"method name must be 1..255 UTF-8 bytes, got {method!r}")
    return bytes((len(raw),)) + raw + body


def _parse_request_untrusted(data: bytes) -> tuple[str, bytes]:
    if not data or len(data) < 1 + data[0] or data[0] == 0:
        raise rpc.RpcError("malformed plugin request")
    size = data[0]
    try:
        method = data[1 : 1 + size].decode()
    except UnicodeDecodeError:
        raise rpc.RpcError("malformed plugin request: method is not UTF-8") from None
    return method, data[1 + size :]


class _Context(plugin_api.Context):
    """What a plugin's run sees (plugin_api.Context), bound to one _Instance."""

    def __init__(self, instance: _Instance) -> None:
        manager = instance.manager
        entry = instance.entry
        self._inst = instance
        self._entry = entry
        self._manager = manager
        self.name = entry.name
        self.node_id = str(manager.daemon.node_id)
        self.address = format_address(manager.daemon.config.node.advertise)
        self.config = entry.config
        self.log = logging.getLogger(f"meshd.plugin.{entry.name}")
        self.metrics = entry.metrics
        self.kv = plugin_api.KVNamespace(manager.kv_backend(), KV_PREFIX + entry.name)
        self.state_dir = manager.state_dir(entry.name)
        self._rr = itertools.count()
        self._outstanding: Counter[str] = Counter()

    # ------------------------------------------------------------ identity, tags

    @property
    def tags(self) -> Mapping[str, str]:
        return MappingProxyType(self._manager.daemon.node_tags())

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._manager.set_tags(self._entry, tags)

    def set_status(self, text: str) -> None:
        self._entry.status = str(text)[:200]

    # ------------------------------------------------------------ membership

    def members(self) -> list[MemberInfo]:
        return self._manager.members()

    def peers(self) -> list[MemberInfo]:
        return self._manager.peers(self.name)

    def membership_events(self) -> _Subscription[MembershipEvent]:
        sub: _Subscription[MembershipEvent] = _Subscription("membership events", self.name)
        if self._inst.closed:
            sub.close()
        else:
            self._inst.member_subs.add(sub)
        return sub

    def owners(self, key: str | bytes, n: int | None = None) -> list[str]:
        return self._manager.owners(self.name, key, n)

    # ------------------------------------------------------------ RPC

    def register(self, method: str, handler: plugin_api.Handler) -> None:
        if not isinstance(method, str) or not 1 <= len(method.encode()) <= 255:
            raise ValueError(f"method name must be 1..255 UTF-8 bytes, got {method!r}")
        if method in self._inst.handlers:
            raise ValueError(f"method {method!r} is already registered")
        if not callable(handler):
            raise TypeError("handler must be an async function (sender, body) -> bytes")
        self._inst.handlers[method] = handler

    async def call(
        self, node_id: str, method: str, body: bytes = b"", *, timeout: float = 5.0
    ) -> bytes:
        return await self._manager.call(
            self.name, node_id, method, body, timeout, self._outstanding
        )

    async def call_owner(
        self, key: str | bytes, method: str, body: bytes = b"", *, timeout: float = 5.0
    ) -> bytes:
        owners = self.owners(key)
        if not owners:
            raise Unavailable("no_members", f"no member runs plugin {self.name!r}")
        return await self._first_answer(owners, method, body, timeout)

    async def call_owners(
        self,
        key: str | bytes,
        method: str,
        body: bytes = b"",
        *,
        n: int | None = None,
        timeout: float = 5.0,
    ) -> dict[str, bytes | PluginError]:
        results: dict[str, bytes | PluginError] = {}

        async def one(node: str) -> None:
            try:
                results[node] = await self.call(node, method, body, timeout=timeout)
            except PluginError as e:
                results[node] = e

        owners = self.owners(key, n)
        async with trio.open_nursery() as nursery:
            for node in owners:
                nursery.start_soon(one, node)
        return {node: results[node] for node in owners}

    async def call_any(
        self,
        method: str,
        body: bytes = b"",
        *,
        strategy: plugin_api.Strategy = "round_robin",
        timeout: float = 5.0,
    ) -> bytes:
        ids = [m.node_id for m in self.peers()]
        if not ids:
            raise Unavailable("no_members", f"no alive member runs plugin {self.name!r}")
        if strategy == "random":
            order = random.sample(ids, len(ids))
        else:
            start = next(self._rr) % len(ids)
            order = ids[start:] + ids[:start]
            if strategy == "least_outstanding":
                # Stable: equally loaded peers stay in round-robin order.
                order.sort(key=lambda n: self._outstanding.get(n, 0))
            elif strategy != "round_robin":
                raise ValueError(
                    f"strategy must be random, round_robin or least_outstanding, not {strategy!r}"
                )
        return await self._first_answer(order, method, body, timeout)

    async def _first_answer(
        self, order: list[str], method: str, body: bytes, timeout: float
    ) -> bytes:
        deadline = trio.current_time() + timeout
        last: PluginError | None = None
        for node in order:
            left = deadline - trio.current_time()
            if left <= 0:
                break
            try:
                return await self.call(node, method, body, timeout=left)
            except _NotRunning as e:
                last = e
            except Unavailable as e:
                if e.kind not in _DID_NOT_RUN:
                    raise
                last = e
        if last is None:
            raise Unavailable("timeout", f"timeout after {timeout:g} s calling {method!r}")
        raise last

    # ------------------------------------------------------------ broadcasts

    def broadcast(self, name: str, payload: bytes = b"") -> int:
        return self._manager.broadcast(self._entry, name, payload)

    def user_events(self) -> _Subscription[UserEvent]:
        sub: _Subscription[UserEvent] = _Subscription("user events", self.name)
        if self._inst.closed:
            sub.close()
        else:
            self._inst.event_subs.add(sub)
        return sub

    # ------------------------------------------------------------ state

    async def checkpoint(self, state: Any) -> None:
        try:
            data: bytes = msgpack.packb(state, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"checkpoint state must be msgpack data: {e}") from None
        if len(data) > CHECKPOINT_MAX:
            raise ValueError(f"checkpoint of {len(data)} bytes exceeds {CHECKPOINT_MAX}")
        path = self.state_dir / CHECKPOINT_FILE
        await trio.to_thread.run_sync(_write_atomically, path, data)

    async def restore(self) -> Any:
        path = self.state_dir / CHECKPOINT_FILE

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        data = await trio.to_thread.run_sync(read)
        if data is None:
            return None
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises outside its hierarchy too
            self.log.warning("checkpoint %s is unreadable (%s); starting without it", path, e)
            return None

    # ------------------------------------------------------------ commands

    def command(self, name: str, handler: plugin_api.CommandHandler) -> None:
        if not isinstance(name, str) or not _COMMAND.fullmatch(name):
            raise ValueError(f"command name {name!r}: use 1..64 of a-z, 0-9, '_' and '-'")
        if name in self._inst.commands:
            raise ValueError(f"command {name!r} is already registered")
        self._inst.commands[name] = handler


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _plugin_failure(exc: BaseException) -> BaseException | None:
    """The part of ``exc`` that is the plugin's failure; None for cancellation or Ctrl-C."""
    if isinstance(exc, (trio.Cancelled, KeyboardInterrupt)):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split((trio.Cancelled, KeyboardInterrupt))
        return rest
    return exc


# ================================================================ KV adapter


class _DaemonKV(plugin_api.KVBackend):
    """plugin_api.KVBackend over the daemon's KV service (runtime/kv)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def _service(self) -> Any:
        kv = getattr(self._daemon, "kv", None)
        if kv is None or getattr(kv, "view", None) is None:
            raise plugin_api.KVUnavailable("the KV store is not running yet; try again shortly")
        return kv

    @staticmethod
    def _unavailable() -> tuple[type[BaseException], ...]:
        from meshd.runtime.kv import KvUnavailable

        return (KvUnavailable,)

    async def get(
        self, namespace: str, key: bytes, *, consistency: plugin_api.Consistency
    ) -> bytes | None:
        try:
            outcome = await self._service().get(namespace, key, consistency=consistency)
        except self._unavailable() as e:
            raise plugin_api.KVUnavailable(str(e)) from None
        value: bytes | None = outcome.value
        return value

    async def put(
        self, namespace: str, key: bytes, value: bytes, *, consistency: plugin_api.Consistency
    ) -> None:
        try:
            await self._service().put(namespace, key, value, consistency=consistency)
        except self._unavailable() as e:
            raise plugin_api.KVUnavailable(str(e)) from None

    async def delete(
        self, namespace: str, key: bytes, *, consistency: plugin_api.Consistency
    ) -> None:
        try:
            await self._service().delete(namespace, key, consistency=consistency)
        except self._unavailable() as e:
            raise plugin_api.KVUnavailable(str(e)) from None

    async def scan(
        self, namespace: str, prefix: bytes, *, limit: int, consistency: plugin_api.Consistency
    ) -> list[tuple[bytes, bytes]]:
        service = self._service()
        scan = getattr(service, "scan", None)
        if scan is None:
            raise plugin_api.KVUnavailable(
                "this meshd's KV store has no mesh-wide scan yet: keep an index under a key "
                "of your own (docs/plugins.md, 'KV')"
            )
        try:
            pairs: list[tuple[bytes, bytes]] = await scan(
                namespace, prefix, limit=limit, consistency=consistency
            )
        except self._unavailable() as e:
            raise plugin_api.KVUnavailable(str(e)) from None
        return pairs


# ================================================================ the event-loop watch


class _Instrument(trio.abc.Instrument):
    """Marks when the loop stops waiting for I/O (busy) and when it waits again."""

    def __init__(self, watch: _LoopWatch) -> None:
        self._watch = watch
        #: perf_counter() when the loop last left its I/O wait; None while waiting.
        self.busy_since: float | None = None

    def after_io_wait(self, timeout: float) -> None:
        self.busy_since = time.perf_counter()

    def before_io_wait(self, timeout: float) -> None:
        start = self.busy_since
        self.busy_since = None
        if start is not None:
            busy = time.perf_counter() - start
            if busy > self._watch.threshold:
                try:
                    self._watch.ended(start, busy)
                except Exception:  # an instrument that raises is removed by trio
                    log.exception("loop watch failed")


class _LoopWatch:
    """Finds steps of the event loop longer than ``threshold`` and who ran them.

    The instrument costs two calls per loop iteration (not per task step);
    the thread wakes every ``threshold / 5`` and, only while the loop has
    been busy longer than the threshold, samples the trio thread's stack.
    """

    def __init__(self, manager: PluginManager, threshold: float) -> None:
        self._manager = manager
        self.threshold = threshold
        self.instrument = _Instrument(self)
        #: module prefix -> plugin name (replaced whole, read by the thread).
        self.modules: dict[str, str] = {}
        self._loop_ident: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._episode: float | None = None
        self._samples: Counter[tuple[str | None, str]] = Counter()

    def start(self) -> None:
        """Install the instrument and start the thread (in the trio thread; idempotent)."""
        if self._thread is not None:
            return
        self._loop_ident = threading.get_ident()
        trio.lowlevel.add_instrument(self.instrument)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="meshd-loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        try:
            trio.lowlevel.remove_instrument(self.instrument)
        except (KeyError, RuntimeError):
            pass
        self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(max(0.01, self.threshold / 5)):
            start = self.instrument.busy_since
            if start is None or time.perf_counter() - start < self.threshold:
                continue
            frame = sys._current_frames().get(self._loop_ident or -1)
            owner, where = self._attribute(frame)
            del frame
            with self._lock:
                first = self._episode != start
                if first:
                    self._episode = start
                    self._samples = Counter()
                self._samples[(owner, where)] += 1
            if first and owner is not None:
                so_far = time.perf_counter() - start
                culprit = f"by plugin {owner!r} at {where}"
                log.warning(
                    "the event loop has been blocked for %.2f s so far (threshold %.2f s) %s",
                    so_far,
                    self.threshold,
                    culprit,
                )

    def _attribute(self, frame: Any) -> tuple[str | None, str]:
        modules = self.modules
        innermost = "unknown"
        first = True
        while frame is not None:
            code = frame.f_code
            here = f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}"
            if first:
                innermost, first = here, False
            name = frame.f_globals.get("__name__", "")
            for prefix, plugin in modules.items():
                if name == prefix or name.startswith(prefix + "."):
                    return plugin, here
            frame = frame.f_back
        return None, innermost

    def ended(self, start: float, busy: float) -> None:
        """In the trio thread: a busy stretch of ``busy`` seconds ended."""
        with self._lock:
            samples = self._samples if self._episode == start else Counter()
            self._episode = None
            self._samples = Counter()
        if samples:
            (owner, where), _ = samples.most_common(1)[0]
        else:
            owner, where = None, "unknown (ended before it was sampled)"
        self._manager.blocked(owner, where, busy)


# ================================================================ the manager


def _member_info(m: Member) -> MemberInfo:
    from meshd.runtime.daemon import decode_tags

    tags = decode_tags(m.meta)
    plugins = frozenset(p for p in tags.get(PLUGINS_TAG, "").split(",") if p)
    return MemberInfo(
        node_id=str(m.node_id),
        address=format_address(m.address),
        status=m.state.name.lower(),
        incarnation=m.incarnation,
        tags=MappingProxyType(tags),
        plugins=plugins,
    )


class PluginManager:
    """The daemon's plugins: one supervisor each, their RPC services, events and status.

    Construct it in ``Daemon.__init__`` (it loads and validates the enabled
    plugins: a ConfigError stops the daemon) and start :meth:`run` once the
    RPC server and the control socket run.

    Args:
        daemon: the daemon (node id, membership, RPC, tags, KV).
        config: the daemon's configuration.

    Raises:
        ConfigError: an enabled plugin is missing, fails to import, needs
            another plugin API, or its section is invalid.
    """

    def __init__(self, daemon: Daemon, config: Config) -> None:
        self.daemon = daemon
        self._config_path = config.path
        self._section = config.plugins
        self._entries: dict[str, _Entry] = {}
        self._refused: dict[str, str] = {}
        self._services: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._watch = _LoopWatch(self, config.plugins.block_threshold)
        self._members_version = 0
        self._member_cache: dict[str, tuple[tuple[object, ...], MemberInfo]] = {}
        self._peers_cache: dict[str, tuple[int, list[MemberInfo]]] = {}
        self._rings: dict[tuple[tuple[str, ...], int], Ring] = {}
        self._last_ring: dict[str, Ring] = {}
        self._building: set[tuple[tuple[str, ...], int]] = set()
        self.counters: Counter[str] = Counter()
        prepared, errors = prepare(config.plugins)
        if errors:
            raise ConfigError(f"{config.path}: {next(iter(errors.values()))}")
        for p in prepared.values():
            self._entries[p.name] = self._new_entry(p)
        self._update_modules()

    def _new_entry(self, p: Prepared) -> _Entry:
        return _Entry(p.name, p.loaded, p.config, p.raw, plugin_api.Metrics(p.name))

    # ------------------------------------------------------------ life cycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every enabled plugin until cancelled; then stop them (on_stop hooks)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for entry in self._entries.values():
                    self._register_service(entry.name)
                    self._start(entry)
                if self._entries:
                    self._watch.start()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._watch.stop()

    def _register_service(self, name: str) -> None:
        service = _service(name)
        if service in self._services:
            return

        # A partial, not a closure: one coroutine frame less per request.
        self.daemon.rpc_server.register(service, functools.partial(self._serve, name))
        self._services.add(service)

    def _unregister_service(self, name: str) -> None:
        service = _service(name)
        if service in self._services:
            self.daemon.rpc_server.unregister(service)
            self._services.discard(service)

    def _start(self, entry: _Entry) -> None:
        assert self._nursery is not None
        entry.scope = trio.CancelScope()
        entry.done = trio.Event()
        entry.state = "starting"
        self._nursery.start_soon(
            self._supervise, entry, entry.scope, entry.done, name=f"plugin {entry.name}"
        )

    async def _supervise(self, entry: _Entry, scope: trio.CancelScope, done: trio.Event) -> None:
        backoff = BACKOFF_MIN
        try:
            with scope:
                while True:
                    inst = _Instance(self, entry)
                    entry.instance = inst
                    entry.state = "running"
                    started = entry.started_at = trio.current_time()
                    try:
                        await inst.run()
                    except BaseException as exc:
                        failure = _plugin_failure(exc)
                        if failure is None:
                            await inst.close(stopping=True)
                            raise
                    else:  # pragma: no cover - run() only ends by an exception
                        failure = None
                    await inst.close(stopping=False)
                    if trio.current_time() - started >= STABLE_AFTER:
                        backoff = BACKOFF_MIN
                    entry.state = "restarting"
                    entry.instance = None
                    self._failed(entry, failure, backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    entry.restarts += 1
        finally:
            if entry.instance is not None:
                entry.instance.closed = True
            entry.instance = None
            entry.state = "stopped"
            done.set()

    def _failed(self, entry: _Entry, failure: BaseException | None, backoff: float) -> None:
        entry.failures += 1
        entry.last_error = _one_line(failure) if failure is not None else "run() ended"
        entry.last_error_at = time.time()
        logging.getLogger(f"meshd.plugin.{entry.name}").error(
            "plugin %s failed (failure %d); restarting it in %g s",
            entry.name,
            entry.failures,
            backoff,
            exc_info=failure,
        )

    async def _stop_and_restart(self, entry: _Entry, generation: int, *, forget: bool) -> None:
        async with entry.lock:
            if entry.generation != generation:
                return  # a later reload took over
            if entry.scope is not None and entry.done is not None:
                entry.scope.cancel()
                await entry.done.wait()
            if forget:
                if self._entries.get(entry.name) is entry and entry.removed:
                    del self._entries[entry.name]
                    self._unregister_service(entry.name)
                    self._update_modules()
                    self._publish_tags()
                    log.info("plugin %s stopped and disabled", entry.name)
                return
            if self._nursery is not None and self._entries.get(entry.name) is entry:
                self._start(entry)

    # ------------------------------------------------------------ reload

    def apply(self, section: PluginsSection, *, force: Iterable[str] = ()) -> dict[str, Any]:
        """Apply a new ``[plugins]``: start, stop and restart what changed.

        A plugin whose section, code or enablement changed (or that is in
        ``force``) is restarted; one with a problem keeps running as it was,
        and the problem is reported. Never raises for a plugin's problem.

        Returns:
            ``{"started", "restarted", "stopped", "unchanged": [names],
            "errors": {name: message}}``.
        """
        forced = set(force)
        previous = {n: e.loaded for n, e in self._entries.items()}
        prepared, errors = prepare(section, previous=previous, force=forced)
        result: dict[str, Any] = {
            "started": [],
            "restarted": [],
            "stopped": [],
            "unchanged": [],
            "errors": {},
        }
        for name, entry in list(self._entries.items()):
            if name not in section.enabled and not entry.removed:
                entry.removed = True
                entry.generation += 1
                self._spawn(self._stop_and_restart, entry, entry.generation, forget=True)
                result["stopped"].append(name)
        self._refused = {n: m for n, m in self._refused.items() if n in section.enabled}
        for name in section.enabled:
            current = self._entries.get(name)
            p = prepared.get(name)
            if p is None:
                message = errors.pop(name)
                result["errors"][name] = message
                if current is not None and not current.removed:
                    current.last_error = (
                        f"reload refused, still running the previous version: {message}"
                    )
                    current.last_error_at = time.time()
                else:
                    self._refused[name] = message
                log.error("plugin %s: %s", name, message)
                continue
            self._refused.pop(name, None)
            if current is None:
                new = self._entries[name] = self._new_entry(p)
                if self._nursery is not None:
                    self._register_service(name)
                    self._start(new)
                result["started"].append(name)
                continue
            changed = p.loaded is not current.loaded or p.raw != current.raw
            if changed or name in forced or current.removed:
                current.removed = False
                current.loaded, current.config, current.raw = p.loaded, p.config, p.raw
                current.generation += 1
                self._spawn(self._stop_and_restart, current, current.generation, forget=False)
                result["restarted"].append(name)
            else:
                result["unchanged"].append(name)
        for name, message in errors.items():  # sections of unknown plugins
            result["errors"][name] = message
            log.error("%s", message)
        self._section = section
        self._watch.threshold = section.block_threshold
        self._update_modules()
        self._publish_tags()
        if self._nursery is not None and self._entries:
            self._watch.start()
        for key in ("started", "restarted", "stopped", "unchanged"):
            result[key].sort()
        for key in ("started", "restarted", "stopped"):
            if result[key]:
                log.info("plugins %s: %s", key, ", ".join(result[key]))
        return result

    def _spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._nursery is None:
            return
        self._nursery.start_soon(lambda: fn(*args, **kwargs))

    def reload(self, config: Config) -> None:
        """SIGHUP: apply the new configuration's ``[plugins]`` (problems are logged)."""
        self._config_path = config.path
        self.apply(config.plugins)

    def _update_modules(self) -> None:
        self._watch.modules = {
            prefix: entry.name
            for entry in self._entries.values()
            for prefix in entry.loaded.modules
        }

    # ------------------------------------------------------------ tags

    def node_tags(self, configured: Mapping[str, str]) -> dict[str, str]:
        """This node's tags: ``configured``, ``plugins``, and each plugin's ``NAME.KEY``."""
        tags = dict(configured)
        names = sorted(n for n, e in self._entries.items() if not e.removed)
        if names:
            tags[PLUGINS_TAG] = ",".join(names)
        for name in names:
            for key, value in self._entries[name].tags.items():
                tags[f"{name}.{key}"] = value
        return tags

    def _publish_tags(self) -> None:
        if self.daemon._core is None:
            return
        try:
            self.daemon.publish_tags()
        except MetadataTooLarge as e:
            log.error("cannot publish the plugins tag: %s", e)
        except LocalProtocolError as e:  # leaving
            log.debug("tags not published: %s", e)

    def set_tags(self, entry: _Entry, tags: Mapping[str, str]) -> None:
        clean: dict[str, str] = {}
        for key, value in tags.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ValueError("tags are non-empty string keys with string values")
            clean[key] = value
        old, entry.tags = entry.tags, clean
        try:
            self.daemon.publish_tags()
        except MetadataTooLarge as e:
            entry.tags = old
            raise plugin_api.TagsTooLarge(f"plugin {entry.name!r} tags refused: {e}") from None
        except LocalProtocolError:
            pass  # leaving: nothing to publish to

    # ------------------------------------------------------------ membership

    def _info(self, m: Member) -> MemberInfo:
        key = (m.incarnation, m.state, m.meta, m.address)
        cached = self._member_cache.get(m.node_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        info = _member_info(m)
        self._member_cache[m.node_id] = (key, info)
        return info

    def members(self) -> list[MemberInfo]:
        return [self._info(m) for m in self.daemon.core.members()]

    def peers(self, plugin: str) -> list[MemberInfo]:
        cached = self._peers_cache.get(plugin)
        if cached is not None and cached[0] == self._members_version:
            return list(cached[1])
        peers = sorted(
            (i for i in self.members() if i.status == "alive" and plugin in i.plugins),
            key=lambda i: i.node_id,
        )
        self._peers_cache[plugin] = (self._members_version, peers)
        return list(peers)

    def owners(self, plugin: str, key: str | bytes, n: int | None) -> list[str]:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        members = tuple(
            sorted(
                i.node_id
                for i in self.members()
                if i.status in ("alive", "suspect") and plugin in i.plugins
            )
        )
        if not members:
            return []
        kv_config = getattr(self.daemon.config, "kv", None)
        replicas = getattr(kv_config, "replicas", DEFAULT_REPLICAS)
        ring = self._ring(plugin, members, replicas)
        return list(ring.owners(placement_key(KV_PREFIX + plugin, raw), n))

    def _ring(self, plugin: str, members: tuple[str, ...], replicas: int) -> Ring:
        """The ring of ``members``: cached, the KV store's, or built.

        Building costs about 0.16 s at 100 members, which must not land on
        the event loop inside a plugin's call (the loop watch would blame
        the plugin): once a plugin has a ring, a changed member set is built
        in a worker thread while the previous ring keeps answering; only
        the very first ring is built on the spot.
        """
        cache_key = (members, replicas)
        ring = self._rings.get(cache_key)
        if ring is not None:
            self._last_ring[plugin] = ring
            return ring
        # The KV store builds its ring off the event loop; when its members
        # are ours, use it (same members and parameters: the same ring).
        view = getattr(getattr(self.daemon, "kv", None), "view", None)
        kv_ring = getattr(view, "ring", None)
        if (
            isinstance(kv_ring, Ring)
            and kv_ring.members == members
            and kv_ring.replicas == replicas
        ):
            self._remember_ring(cache_key, kv_ring)
            self._last_ring[plugin] = kv_ring
            return kv_ring
        stale = self._last_ring.get(plugin)
        if stale is not None and self._nursery is not None:
            if cache_key not in self._building:
                self._building.add(cache_key)
                self._nursery.start_soon(self._build_ring, cache_key)
            return stale
        ring = Ring.build(members, replicas=replicas)
        self._remember_ring(cache_key, ring)
        self._last_ring[plugin] = ring
        return ring

    async def _build_ring(self, cache_key: tuple[tuple[str, ...], int]) -> None:
        members, replicas = cache_key
        try:
            ring = await trio.to_thread.run_sync(
                functools.partial(Ring.build, members, replicas=replicas)
            )
            self._remember_ring(cache_key, ring)
        finally:
            self._building.discard(cache_key)

    def _remember_ring(self, cache_key: tuple[tuple[str, ...], int], ring: Ring) -> None:
        if len(self._rings) >= 8:
            self._rings.clear()
        self._rings[cache_key] = ring

    def on_event(self, ev: Event) -> None:
        """A core event (the daemon calls this for every one): fan out to the plugins."""
        kind = _KINDS.get(type(ev))
        if kind is not None:
            self._members_version += 1
            if kind == "reaped":
                self._member_cache.pop(ev.member.node_id, None)  # type: ignore[union-attr]
            event: MembershipEvent | None = None
            for entry in self._entries.values():
                inst = entry.instance
                if inst is None or inst.closed or not inst.member_subs:
                    continue
                if event is None:
                    member: Member = ev.member  # type: ignore[union-attr]
                    event = MembershipEvent(kind, self._info(member))
                for sub in inst.member_subs:
                    sub.push(event)
        elif isinstance(ev, UserEventReceived):
            self._on_user_event(ev)

    def _on_user_event(self, ev: UserEventReceived) -> None:
        try:
            decoded = msgpack.unpackb(ev.payload, raw=False)
            plugin, name, payload = decoded
            if not (
                isinstance(plugin, str) and isinstance(name, str) and isinstance(payload, bytes)
            ):
                raise ValueError("not [str, str, bin]")
        except Exception:  # msgpack raises outside its hierarchy too
            self.counters["plugin_events_malformed"] += 1
            return
        entry = self._entries.get(plugin)
        inst = entry.instance if entry is not None else None
        if entry is None or inst is None or inst.closed:
            self.counters["plugin_events_unclaimed"] += 1
            return
        entry.events_received += 1
        event = UserEvent(name=name, payload=payload, origin=str(ev.origin), ltime=ev.ltime)
        for sub in inst.event_subs:
            sub.push(event)

    # ------------------------------------------------------------ broadcasts

    def broadcast(self, entry: _Entry, name: str, payload: bytes) -> int:
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("event names are 1..64 characters")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        now = trio.current_time()
        entry.tokens = min(BROADCAST_BURST, entry.tokens + (now - entry.tokens_at) * BROADCAST_RATE)
        entry.tokens_at = now
        if entry.tokens < 1:
            raise plugin_api.BroadcastTooLarge(
                f"plugin {entry.name!r} sends more than {BROADCAST_RATE:g} broadcasts a second "
                f"(bursts of {BROADCAST_BURST:g}); gossip carries membership too — batch events"
            )
        data: bytes = msgpack.packb([entry.name, name, bytes(payload)], use_bin_type=True)
        try:
            ltime = self.daemon.send_user_event(data)
        except LocalProtocolError as e:
            raise plugin_api.BroadcastTooLarge(
                f"{e} (including the plugin and event names); send a KV key or an RPC instead"
            ) from None
        entry.tokens -= 1
        entry.events_sent += 1
        return ltime

    # ------------------------------------------------------------ RPC

    async def call(
        self,
        plugin: str,
        node_id: str,
        method: str,
        body: bytes,
        timeout: float,
        outstanding: Counter[str],
    ) -> bytes:
        data = _request_body(method, body if type(body) is bytes else bytes(body))
        outstanding[node_id] += 1
        try:
            return await self.daemon.call(node_id, SERVICE_PREFIX + plugin, data, timeout)
        except rpc.RpcError as e:
            raise self._remote_error(plugin, node_id, str(e)) from None
        except rpc.RpcUnavailable as e:
            raise Unavailable(e.kind, str(e)) from None
        except LocalProtocolError as e:
            raise ValueError(str(e)) from None
        finally:
            left = outstanding[node_id] - 1
            if left:
                outstanding[node_id] = left
            else:
                del outstanding[node_id]

    @staticmethod
    def _remote_error(plugin: str, node_id: str, message: str) -> CallError:
        if message == f"unknown service {_service(plugin)!r}":
            return _NotRunning(f"plugin {plugin!r} is not enabled on {node_id}")
        if message.startswith(f"plugin {plugin!r} is not running on "):
            return _NotRunning(message)
        return CallError(message)

    async def _serve(self, name: str, peer: NodeId, data: bytes) -> bytes:
        me = self.daemon.node_id
        entry = self._entries.get(name)
        inst = entry.instance if entry is not None else None
        if entry is None or inst is None or inst.closed:
            state = "disabled" if entry is None or entry.removed else entry.state
            raise rpc.RpcError(f"plugin {name!r} is not running on {me} ({state})")
        method, body = _parse_request_untrusted(data)
        handler = inst.handlers.get(method)
        if handler is None:
            entry.rpc_errors += 1
            known = ", ".join(sorted(inst.handlers)) or "none"
            raise rpc.RpcError(
                f"plugin {name!r} on {me} has no method {method!r} (it has: {known})"
            )
        entry.rpc_requests += 1
        with trio.CancelScope() as scope:
            inst.handler_scopes.add(scope)
            try:
                result = await handler(str(peer), body)
            except CallError as e:
                entry.rpc_errors += 1
                raise rpc.RpcError(str(e)) from None
            except (Exception, SystemExit) as e:  # Rule 1
                entry.rpc_errors += 1
                inst.ctx.log.error("method %r failed on a call from %s", method, peer, exc_info=e)
                raise rpc.RpcError(
                    f"internal error in plugin {name!r} method {method!r} on {me}: {_one_line(e)}"
                ) from None
            finally:
                inst.handler_scopes.discard(scope)
        if scope.cancelled_caught:
            raise rpc.RpcError(f"plugin {name!r} is not running on {me} (stopped during the call)")
        if not isinstance(result, bytes):
            if isinstance(result, (bytearray, memoryview)):
                return bytes(result)
            entry.rpc_errors += 1
            raise rpc.RpcError(
                f"plugin {name!r} method {method!r} on {me} returned "
                f"{type(result).__name__}, not bytes"
            )
        return result

    # ------------------------------------------------------------ the loop watch

    def blocked(self, owner: str | None, where: str, seconds: float) -> None:
        """A step held the loop for ``seconds``; ``owner`` is the plugin whose code ran."""
        threshold = self._watch.threshold
        entry = self._entries.get(owner) if owner is not None else None
        if entry is None:
            # Not a plugin's doing (the daemon's own work, or a busy loop):
            # worth knowing, not worth alarming an operator about plugins.
            self.counters["loop_blocked_outside_plugins"] += 1
            log.info(
                "the event loop was blocked for %.2f s (threshold %.2f s) at %s, not in a plugin",
                seconds,
                threshold,
                where,
            )
            return
        entry.blocked += 1
        entry.blocked_max = max(entry.blocked_max, seconds)
        entry.last_blocked = {"seconds": round(seconds, 3), "where": where, "at": time.time()}
        self.counters["loop_blocked_by_plugins"] += 1
        logging.getLogger(f"meshd.plugin.{entry.name}").warning(
            "plugin %s blocked the event loop for %.2f s (threshold %.2f s) at %s — membership "
            "stalls meanwhile; run blocking work with trio.to_thread.run_sync",
            entry.name,
            seconds,
            threshold,
            where,
        )

    # ------------------------------------------------------------ status

    def state_dir(self, name: str) -> Path:
        path = self.daemon.config.state.dir / "plugins" / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def kv_backend(self) -> plugin_api.KVBackend | None:
        """The KV store as plugins see it; None when this daemon has none."""
        return _DaemonKV(self.daemon) if hasattr(self.daemon, "kv") else None

    def restarts(self) -> dict[str, int]:
        return {name: e.restarts for name, e in self._entries.items()}

    def describe(self) -> list[dict[str, Any]]:
        """One row per enabled plugin, for ``meshctl plugins`` and ``status``."""
        now = trio.current_time()
        rows = []
        for name in sorted({*self._entries, *self._refused}):
            entry = self._entries.get(name)
            if entry is None:
                rows.append(
                    {
                        "name": name,
                        "state": "refused",
                        "failing": True,
                        "restarts": 0,
                        "last_error": self._refused[name],
                        "blocked": 0,
                    }
                )
                continue
            inst = entry.instance
            loaded = entry.loaded
            rows.append(
                {
                    "name": name,
                    "state": "stopping" if entry.removed else entry.state,
                    "failing": entry.failing(now),
                    "restarts": entry.restarts,
                    "failures": entry.failures,
                    "last_error": entry.last_error,
                    "last_error_at": entry.last_error_at,
                    "up_s": (
                        round(now - entry.started_at, 1)
                        if entry.state == "running" and entry.started_at is not None
                        else None
                    ),
                    "version": loaded.version or None,
                    "api_version": loaded.cls.api_version,
                    "description": loaded.cls.description or None,
                    "source": loaded.found.kind,
                    "where": loaded.found.where,
                    "status": entry.status or None,
                    "blocked": entry.blocked,
                    "blocked_max_s": round(entry.blocked_max, 3),
                    "last_blocked": entry.last_blocked,
                    "methods": sorted(inst.handlers) if inst is not None else [],
                    "commands": sorted(inst.commands) if inst is not None else [],
                    "rpc_requests": entry.rpc_requests,
                    "rpc_errors": entry.rpc_errors,
                    "events_sent": entry.events_sent,
                    "events_received": entry.events_received,
                    "tags": dict(entry.tags),
                    "metrics": {m.name: m.value for m in entry.metrics.all()},
                }
            )
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """The short form for ``meshctl status``: state, restarts, last error, blocking."""
        keys = ("name", "state", "failing", "restarts", "last_error", "blocked", "last_blocked")
        return [{k: row.get(k) for k in keys} for row in self.describe()]

    # ------------------------------------------------------------ control commands

    async def command_plugins(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``meshctl plugins [list|reload [NAME]]``."""
        op = args.get("op", "list")
        if op == "list":
            return {
                "self": str(self.daemon.node_id),
                "block_threshold_s": self._watch.threshold,
                "api_version": plugin_api.API_VERSION,
                "plugins": self.describe(),
            }
        if op != "reload":
            raise ValueError("op must be list or reload")
        name = args.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        from meshd.config import load_config

        try:
            config = load_config(self._config_path)
        except ConfigError as e:
            raise PluginCommandFailed(f"the config file is invalid, nothing changed: {e}") from None
        if name is not None and name not in config.plugins.enabled:
            raise PluginCommandFailed(
                f"plugin {name!r} is not enabled in {self._config_path} ([plugins] enabled)"
            )
        self._config_path = config.path
        result = self.apply(config.plugins, force=[name] if name else [])
        return result

    async def command(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``meshctl plugins call PLUGIN COMMAND [JSON]`` (and meshctl event/services)."""
        plugin, command = args["plugin"], args["command"]
        arguments = args.get("args") or {}
        if not isinstance(plugin, str) or not isinstance(command, str):
            raise ValueError("plugin and command must be strings")
        if not isinstance(arguments, dict):
            raise ValueError("args must be a JSON object")
        entry = self._entries.get(plugin)
        if entry is None or entry.removed:
            enabled = ", ".join(sorted(self._entries)) or "none"
            raise PluginCommandFailed(
                f"plugin {plugin!r} is not enabled on this node (enabled: {enabled}); add it to "
                "[plugins] enabled and run meshctl plugins reload"
            )
        inst = entry.instance
        if inst is None or inst.closed:
            raise PluginCommandFailed(
                f"plugin {plugin!r} is not running ({entry.state}; last error: "
                f"{entry.last_error or 'none'})"
            )
        handler = inst.commands.get(command)
        if handler is None:
            known = ", ".join(sorted(inst.commands)) or "none"
            raise PluginCommandFailed(
                f"plugin {plugin!r} has no command {command!r} (it has: {known})"
            )
        try:
            result = await handler(dict(arguments))
        except (PluginError, ValueError) as e:
            raise PluginCommandFailed(str(e)) from None
        except (Exception, SystemExit) as e:  # Rule 1
            inst.ctx.log.error("command %r failed", command, exc_info=e)
            raise PluginCommandFailed(
                f"plugin {plugin!r} command {command!r} failed: {_one_line(e)}"
            ) from None
        if not isinstance(result, dict):
            raise PluginCommandFailed(
                f"plugin {plugin!r} command {command!r} returned {type(result).__name__}, "
                "not a dict"
            )
        return result

    async def bench_rpc(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """BENCHMARK AID (bench/plugins.py): plugin RPC calls timed as ``bench_rpc`` times RPC.

        Calls go through the same path as ``ctx.call`` (request encoding,
        the plugin's service, error mapping) from this node to ``node``.
        """
        if os.environ.get("MESHD_BENCH") != "1":
            raise PluginCommandFailed(
                "bench_plugin_rpc is a benchmark aid: start meshd with MESHD_BENCH=1"
            )
        plugin, method, node = str(args["plugin"]), str(args["method"]), str(args["node"])
        count, concurrency = int(args["count"]), int(args.get("concurrency", 1))
        size = int(args.get("size", 0))
        timeout = float(args.get("timeout", 10.0))
        if not (1 <= count <= 1_000_000 and 1 <= concurrency <= 1024 and 0 <= size <= 1 << 20):
            raise ValueError("need 1 <= count <= 1e6, 1 <= concurrency <= 1024, size <= 1 MiB")
        body = bytes(size)
        outstanding: Counter[str] = Counter()

        async def one(_: int) -> None:
            await self.call(plugin, node, method, body, timeout, outstanding)

        return await run_load(
            one, count=count, concurrency=concurrency, expected_errors=(PluginError,)
        )

    # ------------------------------------------------------------ metrics

    def collector(self) -> Any:
        """A prometheus_client collector of the plugins' metrics (for the daemon's registry)."""
        return _Collector(self)


def _metric_part(name: str) -> str:
    return name.replace("-", "_")


class _Collector:
    """``meshd_plugin_*`` families: up, blocked, RPC, and each plugin's own metrics."""

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager

    def describe(self) -> list[Any]:
        return []  # names vary with the plugins: no registration-time check

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        rows = self._manager.describe()
        up = GaugeMetricFamily(
            "meshd_plugin_up", "1 while the plugin runs and is not failing.", labels=["plugin"]
        )
        blocked = CounterMetricFamily(
            "meshd_plugin_blocked",
            "Times the plugin held the event loop longer than [plugins] block_threshold.",
            labels=["plugin"],
        )
        requests = CounterMetricFamily(
            "meshd_plugin_rpc_requests", "RPC requests served by the plugin.", labels=["plugin"]
        )
        failed = CounterMetricFamily(
            "meshd_plugin_rpc_errors",
            "RPC requests the plugin refused or failed.",
            labels=["plugin"],
        )
        for row in rows:
            name = row["name"]
            up.add_metric([name], 1 if row["state"] == "running" and not row["failing"] else 0)
            blocked.add_metric([name], row.get("blocked", 0))
            requests.add_metric([name], row.get("rpc_requests", 0))
            failed.add_metric([name], row.get("rpc_errors", 0))
        yield from (up, blocked, requests, failed)
        for entry in self._manager._entries.values():
            for metric in entry.metrics.all():
                full = f"meshd_plugin_{_metric_part(entry.name)}_{metric.name}"
                doc = metric.help or f"{metric.name} of plugin {entry.name}"
                if isinstance(metric, plugin_api.Counter):
                    yield CounterMetricFamily(full, doc, value=metric.value)
                else:
                    yield GaugeMetricFamily(full, doc, value=metric.value)
