"""A reverse proxy that serves an app under a path prefix, as Streamlit Community Cloud serves apps under
``/~/+/``: requests under ``PREFIX`` (HTTP and WebSocket alike) go to the app, everything else is answered
404. With ``strip`` the prefix is cut off before the request goes on (the app runs at its root); without
it the path goes on as it came (the app runs with ``--server.baseUrlPath`` set to the prefix).

It works on the bytes, so headers, cookies, bodies, WebSocket subprotocols and frames pass untouched: it
reads a request's head, checks and rewrites its path, then copies both ways. One request per connection:
a plain request goes on with ``Connection: close`` (a WebSocket upgrade keeps its ``Connection: Upgrade``),
so a browser never sends a second, unchecked request down a kept-alive connection.

Listens on 127.0.0.1 only, on an asyncio loop of its own thread (Playwright's sync API owns the test's).
"""

from __future__ import annotations

import asyncio
import threading

PREFIX = "/~/+/"
MAX_HEAD = 64 * 1024  # bytes of request line and headers accepted
CHUNK = 64 * 1024
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s")


class PrefixProxy:
    """``with PrefixProxy(app_port, strip=True) as url:`` -- ``url`` is ``http://127.0.0.1:<port>/~/+/``.

    ``paths`` lists every request path the proxy was asked for, as it came (before any rewrite), and
    ``refused`` those it answered 404."""

    def __init__(self, upstream_port: int, strip: bool):
        self.upstream_port, self.strip = upstream_port, strip
        self.paths: list[str] = []
        self.refused: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="prefix-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def __enter__(self) -> str:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{PREFIX}"

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        upstream = None
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            request_line, *headers = head[:-4].split(b"\r\n")
            parts = request_line.split(b" ")
            path = parts[1].decode("latin-1") if len(parts) == 3 else ""
            self.paths.append(path)
            if not path.startswith(PREFIX):
                self.refused.append(path)
                body = f"not found: only {PREFIX} is served here, not {path!r}\n".encode()
                writer.write(NOT_FOUND % (len(body), body))
                await writer.drain()
                return
            if self.strip:
                parts[1] = b"/" + parts[1][len(PREFIX):]
            upgrade = any(h.split(b":", 1)[0].strip().lower() == b"upgrade" for h in headers)
            if not upgrade:
                headers = [h for h in headers
                           if h.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
                headers.append(b"Connection: close")
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            upstream.write(b"\r\n".join([b" ".join(parts), *headers]) + b"\r\n\r\n")
            # The response (or the socket's frames) comes back until the app closes; whatever the browser
            # sends after the head (a body, frames) goes on until the browser closes.
            to_app = asyncio.create_task(_copy(reader, upstream))
            await _copy(up_reader, writer)
            to_app.cancel()
            await asyncio.gather(to_app, return_exceptions=True)
        finally:
            for w in (upstream, writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Bytes from ``src`` to ``dst`` until ``src`` ends; then ``dst``'s write side is shut."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        pass
