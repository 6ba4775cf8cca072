"""meshd plugin ``services``: a mesh-wide service catalog with health checks.

Each node announces the services of its own configuration::

    [plugins.services]
    check_interval = 10.0      # seconds between two runs of a check
    check_timeout = 5.0        # a check running longer fails

    [[plugins.services.service]]
    name = "web"
    port = 8080
    tags = ["primary", "v2"]
    check = "curl -fsS http://127.0.0.1:8080/health"   # optional; exit 0 = healthy

and runs their checks (with ``/bin/sh -c``). A service without a check is
healthy while its node is. ``meshctl services [NAME]`` (the ``list``
command of this plugin) asks every alive member running the plugin for its
services over plugin RPC, at once, and lists where each service runs and
whether it is healthy; members that do not answer are named on stderr.

Each node also publishes the names of its services as the tag
``services.names`` (while they fit in the node's tags).
"""

from __future__ import annotations

import json
from typing import Any

import trio

from meshd.plugin_api import (
    ConfigInvalid,
    Context,
    ListOf,
    Option,
    Plugin,
    PluginError,
    Schema,
    TagsTooLarge,
)

#: Seconds ``list`` waits for each member.
LIST_TIMEOUT = 3.0
#: Characters of a check's output kept (its first line).
OUTPUT_KEPT = 120


class ServicesPlugin(Plugin):
    api_version = "1.0"
    version = "0.1.0"
    description = "announces this node's services, checks their health; mesh-wide catalog"
    config_schema = Schema(
        {
            "check_interval": Option(float, default=10.0, min=0.2, max=86400),
            "check_timeout": Option(float, default=5.0, min=0.1, max=3600),
            "shell": Option(str, default="/bin/sh", min=1),
            "service": Option(
                ListOf(
                    Schema(
                        {
                            "name": Option(str, min=1, max=64),
                            "port": Option(int, min=1, max=65535),
                            "tags": Option(ListOf(str), default=[]),
                            "check": Option(str, default="", help="shell command; 0 = healthy"),
                        }
                    )
                ),
                default=[],
            ),
        }
    )

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        seen: set[str] = set()
        for i, service in enumerate(config["service"]):
            if service["name"] in seen:
                raise ConfigInvalid(
                    f"{service['name']!r} is announced twice on this node — give each service "
                    "one [[plugins.services.service]] table",
                    f"service[{i}].name",
                )
            seen.add(service["name"])

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        self.services: dict[str, dict[str, Any]] = {}
        for s in ctx.config["service"]:
            self.services[s["name"]] = {
                "service": s["name"],
                "port": s["port"],
                "tags": list(s["tags"]),
                "check": s["check"],
                "health": "unknown" if s["check"] else "healthy",
                "output": "" if s["check"] else "no check",
            }
        ctx.register("local", self._local)
        ctx.command("list", self._list)
        names = ",".join(sorted(self.services))
        try:
            ctx.set_tags({"names": names} if names else {})
        except TagsTooLarge as e:
            ctx.log.warning("service names not published as a tag: %s", e)
        self._status()
        async with trio.open_nursery() as nursery:
            for service in self.services.values():
                if service["check"]:
                    nursery.start_soon(self._check_loop, service)

    def _status(self) -> None:
        healthy = sum(1 for s in self.services.values() if s["health"] == "healthy")
        self.ctx.set_status(f"{healthy}/{len(self.services)} service(s) healthy")

    # ------------------------------------------------------------ health checks

    async def _check_loop(self, service: dict[str, Any]) -> None:
        config = self.ctx.config
        while True:
            health, output = await self._check(service["check"], config["check_timeout"])
            if health != service["health"]:
                self.ctx.log.info(
                    "service %s is %s (was %s): %s",
                    service["service"],
                    health,
                    service["health"],
                    output or "no output",
                )
            service["health"], service["output"] = health, output
            self._status()
            await trio.sleep(config["check_interval"])

    async def _check(self, command: str, timeout: float) -> tuple[str, str]:
        with trio.move_on_after(timeout):
            try:
                result = await trio.run_process(
                    [self.ctx.config["shell"], "-c", command],
                    stdin=b"",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as e:
                return "unhealthy", f"cannot run the check: {e}"[:OUTPUT_KEPT]
            text = (result.stdout + result.stderr).decode(errors="replace").strip()
            first = text.splitlines()[0][:OUTPUT_KEPT] if text else ""
            if result.returncode == 0:
                return "healthy", first
            return "unhealthy", first or f"check exited with status {result.returncode}"
        return "unhealthy", f"check timed out after {timeout:g} s"

    # ------------------------------------------------------------ the catalog

    async def _local(self, sender: str, body: bytes) -> bytes:
        """RPC ``local``: this node's services and their health, as JSON."""
        return json.dumps(list(self.services.values())).encode()

    async def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        """``meshctl services [NAME]``: every member's services, asked at once."""
        wanted = args.get("name")
        found: list[dict[str, Any]] = []
        unreachable: dict[str, str] = {}

        async def ask(node: str, address: str) -> None:
            try:
                data = await self.ctx.call(node, "local", timeout=LIST_TIMEOUT)
                entries = json.loads(data)
            except (PluginError, ValueError) as e:
                unreachable[node] = str(e)
                return
            host = address.rpartition(":")[0]
            for entry in entries:
                if wanted is not None and entry.get("service") != wanted:
                    continue
                found.append({**entry, "node": node, "address": f"{host}:{entry.get('port')}"})

        async with trio.open_nursery() as nursery:
            for peer in self.ctx.peers():
                nursery.start_soon(ask, peer.node_id, peer.address)
        found.sort(key=lambda e: (e["service"], e["node"]))
        return {"services": found, "unreachable": unreachable}
