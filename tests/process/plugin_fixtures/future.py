"""Test plugin: written for a plugin API this meshd does not support."""

from __future__ import annotations

from meshd.plugin_api import Context, Plugin


class FromTheFuture(Plugin):
    api_version = "2.0"

    async def run(self, ctx: Context) -> None:
        raise AssertionError("never loaded")
