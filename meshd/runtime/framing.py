"""Length-prefixed frames on a byte stream (the TLS streams between members).

A frame is a 4-byte big-endian length followed by that many bytes
(protocol/SPEC.md, "Streams"). Reading enforces a size cap before
allocating, so a peer cannot make us buffer more than ``limit`` bytes.
"""

from __future__ import annotations

import struct

import trio

__all__ = ["FrameError", "receive_frame", "send_frame"]

_LENGTH = struct.Struct(">I")


class FrameError(Exception):
    """The peer closed mid-frame or announced a frame larger than allowed."""


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = await stream.receive_some(size - len(chunks))
        if not chunk:
            raise FrameError(f"stream closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


async def receive_frame(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    """Read one frame.

    Raises:
        FrameError: the stream ended early, or the frame exceeds ``limit``.
    """
    (size,) = _LENGTH.unpack(await _receive_exactly(stream, _LENGTH.size))
    if size > limit:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
    return await _receive_exactly(stream, size)


async def send_frame(stream: trio.abc.SendStream, data: bytes) -> None:
    """Write one frame."""
    await stream.send_all(_LENGTH.pack(len(data)) + data)
