"""Test plugin: raises a moment after every start."""

from __future__ import annotations

import trio

from meshd.plugin_api import Context, Plugin


class Crashy(Plugin):
    api_version = "1.0"

    async def run(self, ctx: Context) -> None:
        await trio.sleep(0.1)
        raise RuntimeError("boom: crashy always fails")
