"""meshd plugin ``events``: run commands on membership and user events, as Serf's handlers do.

Configuration (``[plugins.events]``)::

    [[plugins.events.handlers]]
    event = "member-join,member-failed"    # which events (see below)
    command = "/usr/local/bin/on-change"   # run with /bin/sh -c
    timeout = 60.0                         # seconds, then it is killed

``event`` is a comma-separated list of: ``member-join``, ``member-leave``,
``member-failed``, ``member-update``, ``member-reap``, ``member-suspect``,
``member-recover``, ``user`` (every user event), ``user:NAME`` (user event
NAME), or ``*`` (everything).

Each matching handler runs once per event, one at a time in arrival order
(at most ``queue`` events wait; more are dropped, counted and logged), with
the daemon's environment plus:

=========================  ==============================================
``MESHD_EVENT``            the event: ``member-join`` ... or ``user``
``MESHD_SELF_NAME``        this node's id
``MESHD_SELF_ADDRESS``     this node's HOST:PORT
``MESHD_TAG_<KEY>``        this node's tags (KEY upper-cased, non-alphanumerics as ``_``)
``MESHD_MEMBER_NAME``      membership events: the member
``MESHD_MEMBER_ADDRESS``   its HOST:PORT
``MESHD_MEMBER_STATUS``    its status now (alive, suspect, dead, left)
``MESHD_MEMBER_INCARNATION``  its incarnation
``MESHD_USER_EVENT``       user events: the name
``MESHD_USER_LTIME``       its Lamport time
``MESHD_USER_ORIGIN``      the node that sent it
=========================  ==============================================

On stdin a membership event gets one line ``NAME<TAB>ADDRESS<TAB>STATUS<TAB>TAGS``
(tags as ``k=v,k=v``, Serf's layout), a user event its payload.

``meshctl event NAME [PAYLOAD]`` sends a user event: the ``send`` command
of this plugin on the node asked, which broadcasts it to every member.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

import trio

from meshd.plugin_api import (
    ConfigInvalid,
    Context,
    ListOf,
    MembershipEvent,
    Option,
    Plugin,
    Schema,
    UserEvent,
)

#: Membership event kinds (plugin API) -> the names handlers filter on.
MEMBER_EVENTS = {
    "joined": "member-join",
    "left": "member-leave",
    "failed": "member-failed",
    "updated": "member-update",
    "reaped": "member-reap",
    "suspected": "member-suspect",
    "recovered": "member-recover",
}
_FILTER = re.compile(
    r"\*|user|user:[^,\s]{1,64}|" + "|".join(map(re.escape, MEMBER_EVENTS.values()))
)
#: Bytes of a handler's output logged, per stream.
_OUTPUT_LOGGED = 4096


def _env_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def _filters(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


def _matches(filters: list[str], event: str, user_name: str | None) -> bool:
    for f in filters:
        if f == "*" or f == event:
            return True
        if user_name is not None and f == f"user:{user_name}":
            return True
    return False


class EventsPlugin(Plugin):
    api_version = "1.0"
    version = "0.1.0"
    description = "runs commands on membership and user events (Serf-style handlers)"
    config_schema = Schema(
        {
            "handlers": Option(
                ListOf(
                    Schema(
                        {
                            "event": Option(str, help="comma-separated event filters"),
                            "command": Option(str, min=1, help="run with the shell"),
                            "timeout": Option(float, default=60.0, min=0.1, max=86400),
                        }
                    )
                ),
                default=[],
            ),
            "queue": Option(int, default=256, min=1, max=65536, help="events waiting at most"),
            "shell": Option(str, default="/bin/sh", min=1),
        }
    )

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        for i, handler in enumerate(config["handlers"]):
            filters = _filters(handler["event"])
            if not filters:
                raise ConfigInvalid(
                    'is empty — e.g. event = "member-failed"', f"handlers[{i}].event"
                )
            for f in filters:
                if not _FILTER.fullmatch(f):
                    names = ", ".join([*MEMBER_EVENTS.values(), "user", "user:NAME", "*"])
                    raise ConfigInvalid(
                        f"{f!r} is not an event filter — use {names}", f"handlers[{i}].event"
                    )

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        self.handlers = [(_filters(h["event"]), h) for h in ctx.config["handlers"]]
        self.run_count = ctx.metrics.counter("handlers_run", "handler commands run")
        self.failed = ctx.metrics.counter(
            "handlers_failed", "handlers that exited non-zero or timed out"
        )
        self.dropped = ctx.metrics.counter("events_dropped", "events dropped: the queue was full")
        send, receive = trio.open_memory_channel[tuple[dict[str, Any], dict[str, str], bytes]](
            ctx.config["queue"]
        )
        self.queue = send
        ctx.command("send", self._send)
        ctx.set_status(f"{len(self.handlers)} handler(s)")
        members = ctx.membership_events()
        users = ctx.user_events()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._membership, members)
            nursery.start_soon(self._users, users)
            nursery.start_soon(self._worker, receive)

    # ------------------------------------------------------------ sources

    async def _send(self, args: dict[str, Any]) -> dict[str, Any]:
        """``meshctl event NAME [PAYLOAD]``: broadcast a user event."""
        name = args.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("name must be 1..64 characters")
        try:
            payload = base64.b64decode(str(args.get("payload_b64", "")), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("payload_b64 must be base64") from None
        ltime = self.ctx.broadcast(name, payload)
        self.ctx.log.info("sent user event %r (%d bytes)", name, len(payload))
        return {"name": name, "bytes": len(payload), "ltime": ltime}

    async def _membership(self, events: Any) -> None:
        async for event in events:
            assert isinstance(event, MembershipEvent)
            m = event.member
            tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
            env = {
                "MESHD_MEMBER_NAME": m.node_id,
                "MESHD_MEMBER_ADDRESS": m.address,
                "MESHD_MEMBER_STATUS": m.status,
                "MESHD_MEMBER_INCARNATION": str(m.incarnation),
            }
            line = f"{m.node_id}\t{m.address}\t{m.status}\t{tags}\n".encode()
            self._enqueue(MEMBER_EVENTS[event.kind], env, line, None)

    async def _users(self, events: Any) -> None:
        async for event in events:
            assert isinstance(event, UserEvent)
            env = {
                "MESHD_USER_EVENT": event.name,
                "MESHD_USER_LTIME": str(event.ltime),
                "MESHD_USER_ORIGIN": event.origin,
            }
            self._enqueue("user", env, event.payload, event.name)

    def _enqueue(self, kind: str, env: dict[str, str], stdin: bytes, user: str | None) -> None:
        for filters, handler in self.handlers:
            if not _matches(filters, kind, user):
                continue
            try:
                self.queue.send_nowait((handler, {"MESHD_EVENT": kind, **env}, stdin))
            except trio.WouldBlock:
                self.dropped.inc()
                self.ctx.log.warning(
                    "handler queue full (%d): dropped %s for %r",
                    self.ctx.config["queue"],
                    kind,
                    handler["command"],
                )

    # ------------------------------------------------------------ running handlers

    async def _worker(self, receive: Any) -> None:
        async for handler, env, stdin in receive:
            await self._run_one(handler, env, stdin)

    async def _run_one(self, handler: dict[str, Any], extra: dict[str, str], stdin: bytes) -> None:
        ctx = self.ctx
        command, timeout = handler["command"], handler["timeout"]
        env = dict(os.environ)
        env["MESHD_SELF_NAME"] = ctx.node_id
        env["MESHD_SELF_ADDRESS"] = ctx.address
        for key, value in ctx.tags.items():
            env[f"MESHD_TAG_{_env_key(key)}"] = value
        env.update(extra)
        self.run_count.inc()
        result = None
        with trio.move_on_after(timeout):
            try:
                result = await trio.run_process(
                    [ctx.config["shell"], "-c", command],
                    stdin=stdin,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=env,
                )
            except OSError as e:
                self.failed.inc()
                ctx.log.error(
                    "handler %r for %s could not start: %s", command, extra["MESHD_EVENT"], e
                )
                return
        if result is None:
            self.failed.inc()
            ctx.log.warning(
                "handler %r for %s killed after %g s", command, extra["MESHD_EVENT"], timeout
            )
            return
        for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
            text = data[:_OUTPUT_LOGGED].decode(errors="replace").strip()
            if text:
                ctx.log.info("handler %r %s: %s", command, name, text)
        if result.returncode != 0:
            self.failed.inc()
            ctx.log.warning(
                "handler %r for %s exited with status %d",
                command,
                extra["MESHD_EVENT"],
                result.returncode,
            )
