"""mDNS discovery: python-zeroconf bridged into trio.

Theory of operation. zeroconf runs its own asyncio loop in a thread of its
own (no asyncio loop runs under trio, so it never attaches to ours). We
touch it in three ways only:

* blocking calls (``Zeroconf()``, ``register_service``, ``get_service_info``,
  ``update_service``, ``unregister_service``, ``close``) run in worker
  threads through :func:`trio.to_thread.run_sync`;
* the ``ServiceBrowser`` calls our handler in *its* thread; the handler
  only hops into trio with ``TrioToken.run_sync_soon`` (never blocks,
  never touches trio objects directly);
* everything else happens in trio: resolving the instance, checking its
  TXT record (``core/advert.py``), and handing good peers to the daemon.

Registration skips the uniqueness probe (``cooperating_responders=True``):
the instance name ``node@cluster-<hash of address>`` is unique by
construction (``core/advert.py``), and probing would add about 1.2 s to
every start-up. Goodbye packets (TTL 0) go out on every clean stop, from a
shielded cancel scope, so peers drop the record at once.

mDNS only *finds* peers. It cannot detect failures (a crashed host sends no
goodbye and its records live for up to 75 minutes): SWIM does that.

zeroconf is imported only when mDNS is enabled: it costs about 70 ms of
start-up and several MiB of memory.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from meshd.core.advert import (
    SERVICE_TYPE,
    Advert,
    BadAdvert,
    Rejection,
    decode_advert,
    encode_txt,
    instance_name,
    server_name,
)

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

__all__ = ["ALL_INTERFACES", "Mdns"]

log = logging.getLogger("meshd.mdns")

#: ``[discovery] interfaces = ["all"]``: every interface (zeroconf's
#: ``InterfaceChoice.All``). Never the default: on a host with many
#: interfaces it announces the cluster on networks it was not meant for.
ALL_INTERFACES = "all"

# How long one resolution may take before the peer is given up (it is
# tried again when its record next changes or is re-announced).
_RESOLVE_TIMEOUT_MS = 3000
# Resolutions running at once; more peers wait their turn.
_MAX_RESOLVING = 16


class Mdns:
    """Announce this node and report peers of the same mesh.

    Args:
        interfaces: IP addresses of the interfaces to use, or
            ``[ALL_INTERFACES]``.
        advert: what to announce.
        check: decides whether a peer's advertisement is one to join
            (``None``) or why not (a :class:`~meshd.core.advert.Rejection`).
        on_peer: called in trio with every acceptable peer; it must not block.
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str],
        advert: Advert,
        check: Callable[[Advert], Rejection | None],
        on_peer: Callable[[Advert], None],
    ) -> None:
        self._interfaces = list(interfaces)
        self._advert = advert
        self._check = check
        self._on_peer = on_peer
        self.counters: Counter[str] = Counter()
        self.state = "starting"
        self.error: str | None = None
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._registered = trio.Event()

    def describe(self) -> dict[str, Any]:
        """For ``meshctl info``: state, interfaces, counters."""
        return {
            "state": self.state,
            "error": self.error,
            "interfaces": self._interfaces,
            "instance": instance_name(
                self._advert.node_id, self._advert.cluster, self._advert.address
            ),
            "counters": dict(self.counters),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Browse and announce until cancelled; then send goodbyes.

        Reports started once browsing runs (registration continues in the
        background). A failure to start zeroconf is logged and reported in
        :attr:`state`; the daemon goes on without mDNS.
        """
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceStateChange,
            Zeroconf,
        )

        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[str](math.inf)

        def deliver(name: str) -> None:  # in the trio thread
            try:
                send.send_nowait(name)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # shutting down; an escaping error would crash trio.run

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:  # in the ServiceBrowser's thread
            log.debug("mDNS: %s %s", state_change.name, name)
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                try:
                    token.run_sync_soon(deliver, name)
                except trio.RunFinishedError:
                    pass

        interfaces: Any = (
            InterfaceChoice.All if self._interfaces == [ALL_INTERFACES] else self._interfaces
        )
        version = (
            IPVersion.V4Only
            if all(":" not in i for i in self._interfaces) or interfaces is InterfaceChoice.All
            else IPVersion.All
        )
        try:
            zc = await trio.to_thread.run_sync(
                functools.partial(Zeroconf, interfaces=interfaces, ip_version=version)
            )
        except (OSError, ValueError, RuntimeError) as e:
            self.state = "failed"
            self.error = f"cannot start mDNS on {', '.join(self._interfaces)}: {e}"
            log.error(
                "%s — check [discovery] interfaces (addresses of this host's interfaces) "
                "or set [discovery] mdns = false; going on without mDNS",
                self.error,
            )
            task_status.started()
            return
        self._zc = zc
        self._info = self._service_info(self._advert)
        browser = None
        try:
            async with trio.open_nursery() as nursery:
                browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
                nursery.start_soon(self._register)
                self.state = "running"
                task_status.started()
                slots = trio.Semaphore(_MAX_RESOLVING)
                resolving: set[str] = set()
                async with receive:
                    async for name in receive:
                        if name in resolving:
                            continue
                        resolving.add(name)
                        await slots.acquire()
                        nursery.start_soon(self._resolve, name, slots, resolving)
        finally:
            self.state = "stopped"
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._shutdown, browser)

    async def update(self, advert: Advert) -> None:
        """Announce changed TXT data (e.g. after a key rotation)."""
        self._advert = advert
        if self._zc is None or self._info is None or not self._registered.is_set():
            return
        info = self._service_info(advert)
        self._info = info
        try:
            await trio.to_thread.run_sync(self._zc.update_service, info)
            self.counters["updates"] += 1
        except Exception as e:  # zeroconf raises assorted errors; never fatal
            log.warning("mDNS: cannot update the announcement: %s", e)

    # ------------------------------------------------------------------ internals

    def _service_info(self, advert: Advert) -> ServiceInfo:
        from zeroconf import ServiceInfo

        host, port = advert.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return ServiceInfo(
            SERVICE_TYPE,
            f"{instance_name(advert.node_id, advert.cluster, advert.address)}.{SERVICE_TYPE}",
            port=port,
            properties=encode_txt(advert),
            server=server_name(advert.node_id, advert.cluster, advert.address),
            addresses=[socket.inet_pton(family, host)],
        )

    async def _register(self) -> None:
        assert self._zc is not None and self._info is not None
        try:
            await trio.to_thread.run_sync(
                functools.partial(
                    self._zc.register_service, self._info, cooperating_responders=True
                ),
                abandon_on_cancel=True,
            )
        except Exception as e:  # e.g. NonUniqueNameException; never fatal
            self.error = f"cannot announce this node: {e}"
            log.error("mDNS: %s", self.error)
            return
        self._registered.set()
        self.counters["registered"] += 1
        log.debug("mDNS: announced %s", self._info.name)

    async def _resolve(self, name: str, slots: trio.Semaphore, resolving: set[str]) -> None:
        try:
            zc = self._zc
            assert zc is not None
            info = await trio.to_thread.run_sync(
                zc.get_service_info, SERVICE_TYPE, name, _RESOLVE_TIMEOUT_MS, abandon_on_cancel=True
            )
        except Exception as e:
            self.counters["resolve_errors"] += 1
            log.debug("mDNS: resolving %s failed: %s", name, e)
            return
        finally:
            slots.release()
            resolving.discard(name)
        if info is None:
            self.counters["resolve_timeouts"] += 1
            return
        try:
            advert = decode_advert(info.properties, info.parsed_addresses())
        except BadAdvert as e:
            self.counters["ignored_malformed"] += 1
            log.debug("mDNS: ignoring %s: %s", name, e)
            return
        reason = self._check(advert)
        if reason is not None:
            self.counters[f"ignored_{reason}"] += 1
            return
        self.counters["peers_seen"] += 1
        self._on_peer(advert)

    def _shutdown(self, browser: Any) -> None:
        """Goodbyes and close (in a worker thread)."""
        zc = self._zc
        if zc is None:
            return
        try:
            if browser is not None:
                browser.cancel()
            if self._registered.is_set() and self._info is not None:
                zc.unregister_service(self._info)
        except Exception as e:  # best effort: we are stopping anyway
            log.debug("mDNS: goodbye failed: %s", e)
        finally:
            zc.close()
            self._zc = None
