"""A small async client for scripts: the daemon's control socket, from trio.

Everything ``meshctl`` can ask, from Python, with the replicated store's
operations as methods::

    import trio
    import meshd.client

    async def main() -> None:
        async with await meshd.client.connect("/run/meshd/meshd.sock") as c:
            await c.put("default", "greeting", b"hello", consistency="quorum")
            value = await c.get("default", "greeting")  # b"hello", or None if absent
            await c.delete("default", "greeting")
            ring = await c.ring()

    trio.run(main)

Why trio: meshd is a trio program and its tests and tools are too; the
client uses only ``trio.open_unix_socket``, so a script that runs on asyncio
can call it through ``trio-asyncio`` or run it in a thread with
``trio.run``. There is no blocking variant: ``meshctl`` is the
synchronous interface.

Concurrency: the daemon answers the requests of one connection in order, so
the client keeps a small pool of connections (``max_connections``, default
4) and runs up to that many requests at once; more wait for a free
connection. The daemon accepts 32 control connections in all.

The wire is the control protocol (:mod:`meshd.control`, JSON Lines); keys and
values travel as base64 so any bytes work. Errors: :class:`DaemonUnavailable`
(no daemon at the socket, or it went away), :class:`RequestFailed` (the
daemon could not do it: e.g. "quorum needs 2 of 3 replicas, 1 answered
(node-3: timeout, ...)"), :class:`BadRequest` (it refused the arguments).
"""

from __future__ import annotations

import base64
import itertools
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from meshd import control
from meshd.errors import BadPacket, MeshError

__all__ = [
    "DEFAULT_NAMESPACE",
    "BadRequest",
    "Client",
    "ClientError",
    "DaemonUnavailable",
    "RequestFailed",
    "connect",
]

#: The namespace ``meshctl`` uses without ``--ns``.
DEFAULT_NAMESPACE = "default"
#: Seconds a request may wait for its answer (on top of the daemon's own
#: request timeout, which is shorter).
DEFAULT_TIMEOUT = 30.0


class ClientError(MeshError):
    """A request through the control socket did not succeed."""


class DaemonUnavailable(ClientError):
    """No meshd answers at the socket, or the connection broke."""


class RequestFailed(ClientError):
    """The daemon understood the request but could not carry it out; the message says why."""


class BadRequest(ClientError, ValueError):
    """The daemon refused the request's arguments (bad key, namespace, consistency...)."""


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    if not isinstance(raw, bytes):
        raise TypeError(f"expected bytes or str, not {type(data).__name__}")
    return base64.b64encode(raw).decode("ascii")


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def exchange(self, line: bytes) -> bytes:
        await self.stream.send_all(line)
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                answer = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return answer
            if len(self.buffer) > control.MAX_LINE:
                raise DaemonUnavailable("meshd sent a line longer than the protocol allows")
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise DaemonUnavailable("meshd closed the connection")
            self.buffer += chunk


class Client:
    """A connection pool to one daemon's control socket. Make one with :func:`connect`.

    Use it as an async context manager (or call :meth:`aclose`). Methods may
    be called from several tasks at once.
    """

    def __init__(self, path: Path, *, max_connections: int = 4, timeout: float = DEFAULT_TIMEOUT):
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.path = path
        self.timeout = timeout
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)

    async def _open(self) -> _Connection:
        try:
            stream = await trio.open_unix_socket(os.fspath(self.path))
        except OSError as e:
            raise DaemonUnavailable(
                f"cannot connect to meshd at {self.path}: {e.strerror or e} "
                "(is meshd running? is the path its [control] socket?)"
            ) from None
        return _Connection(stream)

    async def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send any control command and return its result object.

        Raises:
            DaemonUnavailable, RequestFailed, BadRequest: see the module docstring.
        """
        if self._closed:
            raise DaemonUnavailable("the client is closed")
        rid = next(self._ids)
        line = control.encode_request(rid, cmd, args or {})
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._open()
            try:
                with trio.fail_after(self.timeout):
                    raw = await conn.exchange(line)
            except trio.TooSlowError:
                await trio.aclose_forcefully(conn.stream)
                raise DaemonUnavailable(
                    f"meshd did not answer {cmd!r} within {self.timeout:g} s"
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                await trio.aclose_forcefully(conn.stream)
                raise DaemonUnavailable(f"connection to meshd broke: {e}") from None
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
            if self._closed:
                await trio.aclose_forcefully(conn.stream)
            else:
                self._idle.append(conn)
        try:
            response = control.decode_response_untrusted(raw)
        except BadPacket as e:
            raise DaemonUnavailable(f"meshd sent a malformed answer: {e}") from None
        if response["id"] not in (rid, None):
            raise DaemonUnavailable(f"meshd answered request {response['id']}, not {rid}")
        if not response["ok"]:
            error = response["error"]
            kind = BadRequest if error["code"] == control.BAD_REQUEST else RequestFailed
            raise kind(f"{cmd.removeprefix('kv_')} failed: {error['message']}")
        result: dict[str, Any] = response["result"]
        return result

    @staticmethod
    def _kv_args(
        namespace: str, key: bytes | str, consistency: str | None, timeout: float | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"ns": namespace, "key_b64": _b64(key)}
        if consistency is not None:
            args["consistency"] = consistency
        if timeout is not None:
            args["timeout"] = timeout
        return args

    async def put(
        self,
        namespace: str,
        key: bytes | str,
        value: bytes | str,
        *,
        consistency: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Store ``value`` under ``key`` (str is UTF-8 encoded).

        Args:
            namespace: e.g. :data:`DEFAULT_NAMESPACE`.
            key: 1..1024 bytes.
            value: up to about 750 KiB through the control socket.
            consistency: ``"one"``, ``"quorum"`` or ``"all"`` (default: the
                daemon's ``[kv] consistency``).
            timeout: the daemon's deadline for the request, in seconds
                (default: its ``[kv] timeout``).

        Returns:
            The daemon's answer: ``version`` (timestamp and writer),
            ``replicas``, ``acked``, ``hinted``.

        Raises:
            RequestFailed: the level was not met (the message says how many answered).
        """
        args = self._kv_args(namespace, key, consistency, timeout)
        args["value_b64"] = _b64(value)
        return await self.request("kv_put", args)

    async def get(
        self,
        namespace: str,
        key: bytes | str,
        *,
        consistency: str | None = None,
        timeout: float | None = None,
    ) -> bytes | None:
        """The value of ``key``, or None when it is absent or deleted.

        Raises:
            RequestFailed: the level was not met.
        """
        result = await self.get_record(namespace, key, consistency=consistency, timeout=timeout)
        if not result["found"]:
            return None
        return base64.b64decode(result["value_b64"])

    async def get_record(
        self,
        namespace: str,
        key: bytes | str,
        *,
        consistency: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The daemon's whole answer to a read: ``found``, ``deleted``,
        ``value_b64``, ``version``, ``replicas``, ``answered``."""
        return await self.request("kv_get", self._kv_args(namespace, key, consistency, timeout))

    async def delete(
        self,
        namespace: str,
        key: bytes | str,
        *,
        consistency: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Delete ``key`` (a tombstone). Raises as :meth:`put`."""
        return await self.request("kv_delete", self._kv_args(namespace, key, consistency, timeout))

    async def ring(self) -> dict[str, Any]:
        """``meshctl ring --json``'s answer: ownership, keys, bytes and handoffs per member."""
        return await self.request("ring")

    async def status(self) -> dict[str, Any]:
        """``meshctl status --json``'s answer."""
        return await self.request("status")


async def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    max_connections: int = 4,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """A client for the daemon at ``path``; the first connection is opened to check it.

    Args:
        path: the control socket; default ``$MESHCTL_SOCKET``, else where
            ``meshctl`` looks (``control.default_socket_path``).
        max_connections: requests run at once (the daemon allows 32 connections).
        timeout: seconds to wait for each answer.

    Raises:
        DaemonUnavailable: nothing answers at ``path``.
    """
    if path is None:
        env = os.environ.get(control.SOCKET_ENV)
        path = env if env else control.default_socket_path()
    client = Client(Path(path), max_connections=max_connections, timeout=timeout)
    conn = await client._open()
    client._idle.append(conn)
    return client
