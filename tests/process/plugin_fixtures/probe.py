"""Test plugin: who answers, who called, and how calls spread."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from meshd.plugin_api import Context, Plugin


class Probe(Plugin):
    api_version = "1.0"
    version = "test"

    async def run(self, ctx: Context) -> None:
        async def whoami(sender: str, body: bytes) -> bytes:
            # sender: the caller as verified by mutual TLS.
            return json.dumps(
                {"node": ctx.node_id, "sender": sender, "body": body.decode()}
            ).encode()

        async def owner(args: dict[str, Any]) -> dict[str, Any]:
            answer = await ctx.call_owner(args["key"], "whoami", b"for the owner")
            return {"owners": ctx.owners(args["key"]), "answer": json.loads(answer)}

        async def owners(args: dict[str, Any]) -> dict[str, Any]:
            return {"owners": ctx.owners(args["key"])}

        async def spread(args: dict[str, Any]) -> dict[str, Any]:
            seen: Counter[str] = Counter()
            for _ in range(int(args["count"])):
                answer = await ctx.call_any("whoami", strategy=args.get("strategy", "round_robin"))
                seen[json.loads(answer)["node"]] += 1
            return {"seen": dict(seen)}

        async def call(args: dict[str, Any]) -> dict[str, Any]:
            answer = await ctx.call(args["node"], args["method"], b"")
            return {"answer": answer.decode()}

        ctx.register("whoami", whoami)
        for name, handler in (
            ("owner", owner),
            ("owners", owners),
            ("spread", spread),
            ("call", call),
        ):
            ctx.command(name, handler)
