"""Length-prefixed frames on a byte stream (the TLS streams between members).

A frame is a 4-byte big-endian length followed by that many bytes
(protocol/SPEC.md, "Streams"). Reading enforces a size cap before
allocating, so a peer cannot make us buffer more than ``limit`` bytes.
"""

from __future__ import annotations

import struct

import trio

__all__ = ["FrameError", "FrameReader", "frame_bytes", "receive_frame", "send_frame"]

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


def frame_bytes(data: bytes) -> bytes:
    """``data`` with its length prefix: what :func:`send_frame` writes.

    Several of these can be joined and written with one ``send_all``.
    """
    return _LENGTH.pack(len(data)) + data


#: Bytes asked of the stream per read; a larger frame asks for what it lacks.
_READ_SIZE = 65536
#: Consumed bytes kept at the head of the buffer before it is compacted.
_COMPACT_AT = 1 << 20


class FrameReader:
    """Read many frames from one long-lived stream, with few reads.

    :func:`receive_frame` reads the length and then the body, two reads per
    frame and never a byte more, which suits one-frame exchanges. A
    connection that carries a frame after another (an RPC session) is
    cheaper read in large chunks: one read may bring several frames, and
    each TLS read costs a trip through the SSL object and the scheduler.
    Bytes beyond the current frame stay buffered for the next call, so once
    a stream is read through a FrameReader only that reader may read it.

    Args:
        stream: the stream to read.
        limit: the largest frame accepted; checked before buffering it.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()
        self._start = 0

    async def receive(self) -> bytes | None:
        """The next frame, or None if the stream ended cleanly between frames.

        Raises:
            FrameError: the stream ended inside a frame, or a frame exceeds
                the limit.
        """
        buffer = self._buffer
        while True:
            available = len(buffer) - self._start
            need = _LENGTH.size
            if available >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, self._start)
                if size > self._limit:
                    raise FrameError(f"frame of {size} bytes exceeds the limit of {self._limit}")
                need += size
                if available >= need:
                    begin = self._start + _LENGTH.size
                    # One copy: the view is released before the buffer changes.
                    with memoryview(buffer) as view:
                        frame = bytes(view[begin : self._start + need])
                    self._start += need
                    if self._start == len(buffer):
                        buffer.clear()
                        self._start = 0
                    elif self._start >= _COMPACT_AT:
                        del buffer[: self._start]
                        self._start = 0
                    return frame
            chunk = await self._stream.receive_some(max(_READ_SIZE, need - available))
            if not chunk:
                if available == 0:
                    return None
                raise FrameError(f"stream closed after {available} of {need} bytes of a frame")
            buffer += chunk
