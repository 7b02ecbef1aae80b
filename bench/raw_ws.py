"""A WebSocket client written by hand on asyncio streams, for what a library's client will not do: stop
reading while its connection stays open (a network that dropped without a close frame, as the server sees
it), and send frames that break the protocol. The tests of the race socket and the race benchmarks use it.

Only what those need: the opening handshake, masked frames out (any opcode, any payload, fragments), and
whole frames in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from urllib.parse import urlsplit

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def encode_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One WebSocket frame as a client sends it (RFC 6455 section 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_large(payload, key)
    return head + key + body


def _mask_large(payload: bytes, key: bytes) -> bytes:
    import numpy as np
    data = np.frombuffer(payload, np.uint8)
    keys = np.resize(np.frombuffer(key, np.uint8), len(data))
    return (data ^ keys).tobytes()


class RawSocket:
    """A client socket to ``url`` (ws://host:port/path). ``rcvbuf``: the kernel's receive buffer and the
    stream's own limit in bytes; a small one makes a client that stops reading fill the server's buffers
    within seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, rcvbuf: int = 4096) -> RawSocket:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(f"no WebSocket at {url}: {head.splitlines()[0].decode(errors='replace')}")
        return cls(reader, writer)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin, masked))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_text(self, text: str) -> None:
        self.send_frame(TEXT, text.encode())

    def send_json(self, obj: dict) -> None:
        self.send_text(json.dumps(obj))

    async def drain(self) -> None:
        await self.writer.drain()

    async def recv(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload). Raises EOFError once the server has closed."""
        async def read() -> tuple[int, bytes]:
            try:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
                return b0 & 0x0F, await self.reader.readexactly(n)
            except asyncio.IncompleteReadError:
                raise EOFError("the server closed the connection") from None
        return await asyncio.wait_for(read(), timeout)

    async def recv_json(self, timeout: float = 10.0) -> dict:
        while True:
            opcode, payload = await self.recv(timeout)
            if opcode == TEXT:
                return json.loads(payload)
            if opcode == CLOSE:
                raise EOFError(f"closed with {payload[:2].hex()}")

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server's close frame and return its code (None when the connection just ended)."""
        try:
            while True:
                opcode, payload = await self.recv(timeout)
                if opcode == CLOSE:
                    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        except EOFError:
            return None

    def abort(self) -> None:
        """Drop the connection at once, without a close frame."""
        self.writer.transport.abort()
