"""meshd plugin ``hello``: the smallest useful example (RPC + KV + user events).

Enable it with ``[plugins] enabled = ["hello"]`` on a few nodes, then::

    meshctl plugins call hello greet                    # a member chosen round-robin
    meshctl plugins call hello greet '{"node": "web-2", "name": "Ada"}'

Each node serves the RPC method ``greet``: it answers with the configured
greeting, and counts in the replicated KV store how often each caller was
greeted. At start it broadcasts a ``hello`` user event; every node logs the
ones it receives from others.
"""

from __future__ import annotations

from typing import Any

from meshd.plugin_api import Context, KVUnavailable, Option, Plugin, Schema


class HelloPlugin(Plugin):
    api_version = "1.0"
    version = "0.1.0"
    description = "greets over RPC, counts greetings in the KV store, says hello by broadcast"
    config_schema = Schema({"greeting": Option(str, default="hello", help="the first word")})

    async def run(self, ctx: Context) -> None:
        async def greet(sender: str, body: bytes) -> bytes:
            # `sender` is the caller's node id, verified by mutual TLS.
            name = body.decode() or sender
            count = await self._count(ctx, sender)
            seen = f" (greeted {sender} {count} times)" if count is not None else ""
            return f"{ctx.config['greeting']}, {name}, from {ctx.node_id}{seen}".encode()

        async def greet_command(args: dict[str, Any]) -> dict[str, Any]:
            body = str(args.get("name", "")).encode()
            if "node" in args:
                answer = await ctx.call(str(args["node"]), "greet", body)
            else:
                answer = await ctx.call_any("greet", body, strategy="round_robin")
            return {"answer": answer.decode()}

        ctx.register("greet", greet)
        ctx.command("greet", greet_command)
        events = ctx.user_events()  # subscribe before broadcasting: our own comes back too
        ctx.broadcast("hello", ctx.node_id.encode())
        async for event in events:
            if event.name == "hello" and event.origin != ctx.node_id:
                ctx.log.info("%s says hello", event.origin)

    @staticmethod
    async def _count(ctx: Context, sender: str) -> int | None:
        """Greetings of ``sender`` so far, kept in this plugin's KV namespace."""
        try:
            raw = await ctx.kv.get(f"greeted/{sender}")
            count = int(raw or b"0") + 1
            await ctx.kv.put(f"greeted/{sender}", str(count).encode())
        except KVUnavailable as e:
            ctx.log.debug("not counting: %s", e)
            return None
        return count
