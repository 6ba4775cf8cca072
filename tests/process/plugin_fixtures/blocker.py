"""Test plugin: blocks the event loop when asked (what a plugin must never do)."""

from __future__ import annotations

import time
from typing import Any

from meshd.plugin_api import Context, Plugin


def hold_the_loop(seconds: float) -> None:
    # Busy work in the trio thread, as a CPU-bound plugin would do.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


class Blocker(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        async def block(args: dict[str, Any]) -> dict[str, Any]:
            hold_the_loop(float(args["seconds"]))
            return {"blocked": True}

        ctx.command("block", block)
