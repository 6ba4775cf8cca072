"""``meshd.client`` against a fake control server on a real unix socket (trio).

The fake answers like the daemon's control server (one request at a time
per connection, in order); real daemons answer the client in
tests/process/test_kv.py.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import meshd.client
from meshd import control

Answer = Callable[[dict[str, Any]], bytes]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="client-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Fake:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def serve(self, path: Path, *, task_status: trio.TaskStatus[None]) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(self.connection, [listener])

    async def connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = control.decode_request_untrusted(line)
                    self.requests.append(request)
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
                    await trio.sleep(0.01)
                    self.in_flight -= 1
                    await stream.send_all(self.answer(request))


def ok(result: dict[str, Any]) -> Answer:
    return lambda r: control.encode_response_ok(r["id"], result)


@pytest.fixture
async def fake_at(short_dir: Path) -> AsyncIterator[Callable[[Answer], Any]]:
    async with trio.open_nursery() as nursery:
        count = 0

        async def start(answer: Answer) -> tuple[Fake, Path]:
            nonlocal count
            count += 1
            fake = Fake(answer)
            path = short_dir / f"s{count}.sock"
            await nursery.start(fake.serve, path)
            return fake, path

        yield start
        nursery.cancel_scope.cancel()


async def test_client_put_get_delete_use_base64_and_options(fake_at: Any) -> None:
    stored: dict[str, Any] = {}

    def answer(r: dict[str, Any]) -> bytes:
        args = r["args"]
        if r["cmd"] == "kv_put":
            stored[args["key_b64"]] = args["value_b64"]
            return control.encode_response_ok(r["id"], {"acked": ["a", "b"]})
        if r["cmd"] == "kv_get":
            value = stored.get(args["key_b64"])
            return control.encode_response_ok(
                r["id"], {"found": value is not None, "value_b64": value}
            )
        stored.pop(args["key_b64"], None)
        return control.encode_response_ok(r["id"], {"deleted": True})

    fake, path = await fake_at(answer)
    async with await meshd.client.connect(path) as c:
        assert (await c.put("default", "k", b"\x00\xffbinary", consistency="all"))["acked"]
        assert await c.get("default", b"k") == b"\x00\xffbinary"
        await c.delete("default", "k", timeout=1.5)
        assert await c.get("default", "k") is None
    put, _, delete, _ = fake.requests
    assert put["args"] == {
        "ns": "default",
        "key_b64": base64.b64encode(b"k").decode(),
        "value_b64": base64.b64encode(b"\x00\xffbinary").decode(),
        "consistency": "all",
    }
    assert delete["args"]["timeout"] == 1.5


async def test_client_errors_by_kind(fake_at: Any, short_dir: Path) -> None:
    def answer(r: dict[str, Any]) -> bytes:
        code = control.BAD_REQUEST if r["args"].get("ns") == "bad ns" else control.FAILED
        return control.encode_response_error(r["id"], code, "quorum needs 2 of 3 replicas")

    _, path = await fake_at(answer)
    async with await meshd.client.connect(path) as c:
        with pytest.raises(meshd.client.RequestFailed, match="put failed: quorum needs 2 of 3"):
            await c.put("default", "k", "v")
        with pytest.raises(meshd.client.BadRequest):
            await c.get("bad ns", "k")
        with pytest.raises(ValueError, match="get failed"):  # BadRequest is a ValueError too
            await c.get("bad ns", "k")
    with pytest.raises(meshd.client.DaemonUnavailable, match="is meshd running"):
        await meshd.client.connect(short_dir / "nobody.sock")


async def test_client_runs_requests_concurrently_on_a_small_pool(fake_at: Any) -> None:
    fake, path = await fake_at(ok({"found": False, "value_b64": None}))
    async with await meshd.client.connect(path, max_connections=3) as c:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(c.get, "default", f"k{i}")
    assert len(fake.requests) == 12
    assert fake.connections == 3
    assert fake.most_in_flight == 3


async def test_client_daemon_gone_mid_request(fake_at: Any) -> None:
    _, path = await fake_at(lambda r: b"")  # never answers
    async with await meshd.client.connect(path, timeout=0.5) as c:
        with pytest.raises(meshd.client.DaemonUnavailable, match="did not answer"):
            await c.status()
