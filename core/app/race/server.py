"""The race's WebSocket, on the Streamlit server's own port: frames out 50 times a second, keys in.

``race_routes()`` gives the Starlette routes; Home.py passes them to ``st.App(..., routes=...)``, which
``streamlit run Home.py`` serves with uvicorn. A custom component's value would cost a script rerun
(about 80 ms) per key press; a socket carries keys in well under a tick.

Protocol (``WS_PATH``, at the app's root or under any path prefix, such as ``server.baseUrlPath`` or a
proxy's; the page connects to ``api/race/ws`` relative to its own URL):

* The browser's first message is ``{"type": "hello", "token": "..."}``, the token its page got when it
  started the race. An unknown token is answered ``{"type": "error", ...}`` and closed (code 4403); a
  second socket with the same token replaces the first (which is closed with 4409).
* The server answers ``{"type": "ready", "race": {...}}`` and then, whenever the view changes (at most
  once a tick, 50 a second), a binary frame: ``b"F"``, a big-endian uint16 length, that many bytes of
  JSON (status, countdown, step, scores, tiles, ``ack`` = the seq of the key state the step used, and each
  image's byte length), then the images, one per car (PNG, 96 x 96 RGB).
* The browser sends ``{"type": "keys", "mask": 0..15, "seq": n}`` when its keys change (bits: 1 left,
  2 right, 4 gas, 8 brake) and ``{"type": "pause" | "resume" | "toggle_pause" | "restart" | "end"}``.
  Anything else (not JSON, too long, unknown, out of range, too fast) is dropped and counted; a socket
  that keeps sending junk is closed (1008). The race itself never sees it.
* When the socket closes, the race pauses and waits (``RaceConfig.idle_timeout_s``) for the player.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import cv2
import numpy as np
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from core.app.race.ai import single_threaded_blas
from core.app.race.registry import RaceRegistry, get_registry
from core.app.race.session import COMMANDS, KEY_MASK_ALL, RaceSession
from core.envs.env import FPS

log = logging.getLogger(__name__)

WS_PATH = "/api/race/ws"
HELLO_TIMEOUT_S = 5.0  # seconds a new socket has to name its race
MAX_MESSAGE_CHARS = 256  # longest control message accepted
RATE_PER_S = 120.0  # control messages a second a socket may send on average (key changes are ~10)
BURST = 240  # ... and at once
MAX_DROPPED = 1000  # dropped messages after which the socket is closed
YIELD_EVERY = 32  # messages handled in a row before giving other tasks a turn
MAX_LAG_TICKS = 10  # ticks a late ticker catches up back to back; further behind, the debt is dropped

CLOSE_POLICY = 1008  # too much junk
CLOSE_BAD_TOKEN = 4403
CLOSE_REPLACED = 4409
CLOSE_GONE = 4410  # the race was closed (its player started another, or it expired)

FRAME_MAGIC = b"F"
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; 96 x 96 frames are about 2 KB either way


def encode_image(obs: np.ndarray) -> bytes:
    """uint8 (96, 96, 3) RGB -> PNG bytes (lossless, so the browser's pixelated upscale stays crisp)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(obs, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_frame(meta: dict, images: list[bytes]) -> bytes:
    """One binary frame message: magic, header length, JSON header (with each image's length), images."""
    meta = dict(meta, sizes=[len(b) for b in images])
    header = json.dumps(meta, separators=(",", ":")).encode()
    return FRAME_MAGIC + struct.pack(">H", len(header)) + header + b"".join(images)


def decode_frame(payload: bytes) -> tuple[dict, list[bytes]]:
    """The inverse of ``encode_frame`` (for Python clients: tests and the benchmark)."""
    if payload[:1] != FRAME_MAGIC:
        raise ValueError("not a frame message")
    (n,) = struct.unpack(">H", payload[1:3])
    meta = json.loads(payload[3:3 + n])
    images, at = [], 3 + n
    for size in meta["sizes"]:
        images.append(payload[at:at + size])
        at += size
    return meta, images


def parse_message(text: object) -> dict | None:
    """A control message from the browser, validated; None for anything that must be dropped."""
    if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS:
        return None
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(msg, dict):
        return None
    kind = msg.get("type")
    if kind == "keys":
        mask, seq = msg.get("mask"), msg.get("seq", 0)
        # type() is int, not isinstance: JSON true/false must not pass as 1/0.
        if type(mask) is not int or not 0 <= mask <= KEY_MASK_ALL:
            return None
        if type(seq) is not int or not 0 <= seq < 2**53:
            return None
        return {"type": "keys", "mask": mask, "seq": seq}
    if kind == "hello":
        token = msg.get("token")
        return {"type": "hello", "token": token} if isinstance(token, str) and len(token) <= 64 else None
    if kind in COMMANDS:
        return {"type": kind}
    return None


class TokenBucket:
    """``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = burst, clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Encoder:
    """Encodes a session's view for one socket, re-using the PNG of a car that has not moved."""

    def __init__(self) -> None:
        self.sent_version = -1
        self.cache: dict[int, tuple[tuple, bytes]] = {}

    def __call__(self, session: RaceSession) -> bytes | None:
        session.tick()
        version, meta, observations = session.view()
        if version == self.sent_version:
            return None
        self.sent_version = version
        images = []
        for i, (obs, d) in enumerate(zip(observations, meta["drivers"])):
            key = (meta["attempt"], d["steps"])
            cached = self.cache.get(i)
            if cached is None or cached[0] != key:
                cached = (key, encode_image(obs))
                self.cache[i] = cached
            images.append(cached[1])
        return encode_frame(meta, images)


class RaceSocket:
    """The WebSocket endpoint: authenticates a socket by its race token, then runs that race's ticker."""

    def __init__(self, registry: RaceRegistry | Callable[[], RaceRegistry] = get_registry, fps: float = FPS):
        self._registry = registry
        self.period = 1.0 / fps
        self._pool: ThreadPoolExecutor | None = None
        self._sockets: dict[str, WebSocket] = {}  # race token -> the socket driving it

    @property
    def registry(self) -> RaceRegistry:
        return self._registry() if callable(self._registry) else self._registry

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Each race steps on its own thread; OpenCV's and BLAS's own thread pools would only fight
            # those threads for two cores (measured: 4 races fell from 50 to 30-37 frames a second).
            cv2.setNumThreads(1)
            single_threaded_blas()
            self._pool = ThreadPoolExecutor(self.registry.config.max_races + 2, thread_name_prefix="race-tick")
        return self._pool

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        session = await self._hello(ws)
        if session is None:
            return
        token = session.token
        previous = self._sockets.get(token)
        self._sockets[token] = ws
        if previous is not None:
            await _close(previous, CLOSE_REPLACED, "this race was opened in another tab")
        session.attach()
        ticker = asyncio.create_task(self._tick(ws, session))
        receiver = asyncio.create_task(self._receive(ws, session))
        try:
            await asyncio.wait({ticker, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ticker, receiver):
                task.cancel()
            await asyncio.gather(ticker, receiver, return_exceptions=True)
            if self._sockets.get(token) is ws:
                del self._sockets[token]
                session.detach()
            await _close(ws, 1000, "")

    async def _hello(self, ws: WebSocket) -> RaceSession | None:
        try:
            text = await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT_S)
        except (asyncio.TimeoutError, WebSocketDisconnect, KeyError, RuntimeError):
            await _close(ws, CLOSE_BAD_TOKEN, "no hello")
            return None
        msg = parse_message(text)
        session = self.registry.get(msg["token"]) if msg and msg["type"] == "hello" else None
        if session is None:
            await _send_json(ws, {"type": "error", "message": "unknown or expired race; start a new race"})
            await _close(ws, CLOSE_BAD_TOKEN, "unknown race token")
            return None
        await _send_json(ws, {"type": "ready", "race": {
            "mode": session.mode, "seed": session.seed, "fps": FPS, "max_steps": session.config.max_steps,
            "labels": [d.label for d in session.drivers], "kinds": [d.kind for d in session.drivers]}})
        return session

    async def _tick(self, ws: WebSocket, session: RaceSession) -> None:
        """Step the race at a fixed rate and send every changed view. A tick that runs late (a busy
        core, the GIL) is made up by running the next ones back to back, up to MAX_LAG_TICKS; beyond
        that the race slows down rather than fast-forwarding."""
        loop = asyncio.get_running_loop()
        encoder, pool = _Encoder(), self.pool()
        deadline = loop.time()
        while self._sockets.get(session.token) is ws:
            if self.registry.get(session.token) is not session:
                await _send_json(ws, {"type": "error", "message": "this race was closed"})
                await _close(ws, CLOSE_GONE, "race closed")
                return
            try:
                payload = await loop.run_in_executor(pool, encoder, session)
            except Exception as e:  # the race cannot step (the env or the AI failed): end it, and say so
                log.exception("race %s stopped: a step failed", session.token[:8])
                self.registry.close(session.token)
                await _send_json(ws, {"type": "error", "message": f"the race stopped on a server error "
                                                                 f"({type(e).__name__}: {e}); start a new race"})
                await _close(ws, CLOSE_GONE, "race failed")
                return
            if payload is not None:
                await ws.send_bytes(payload)
            deadline += self.period
            now = loop.time()
            if deadline < now - MAX_LAG_TICKS * self.period:
                deadline = now
            await asyncio.sleep(max(0.0, deadline - now))

    async def _receive(self, ws: WebSocket, session: RaceSession) -> None:
        bucket = TokenBucket(RATE_PER_S, BURST)
        dropped = handled = 0
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            msg = parse_message(message.get("text"))
            if msg is None or msg["type"] == "hello" or not bucket.take():
                dropped += 1
                if dropped > MAX_DROPPED:
                    await _close(ws, CLOSE_POLICY, "too many invalid or excess messages")
                    return
            elif msg["type"] == "keys":
                session.set_keys(msg["mask"], msg["seq"])
            else:
                session.command(msg["type"])
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flooding socket cannot starve the other races' tickers


async def _send_json(ws: WebSocket, obj: dict) -> None:
    try:
        await ws.send_text(json.dumps(obj))
    except (RuntimeError, WebSocketDisconnect, OSError):
        pass


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    try:
        await ws.close(code, reason)
    except (RuntimeError, WebSocketDisconnect, OSError):
        pass


def component_data(session: RaceSession) -> dict:
    """What the race view component (assets/race/race.js) needs to connect to ``session``."""
    return {"token": session.token, "ws_path": WS_PATH.lstrip("/"), "mode": session.mode, "seed": session.seed,
            "labels": [d.label for d in session.drivers], "kinds": [d.kind for d in session.drivers]}


def race_routes(registry: RaceRegistry | Callable[[], RaceRegistry] = get_registry) -> list[BaseRoute]:
    """The Starlette routes of the race: one WebSocket over ``registry`` (the process-wide one by default,
    which the Race page fills), at ``WS_PATH`` and at ``WS_PATH`` under any path prefix.

    ``st.App`` serves its routes as given, not under ``server.baseUrlPath``; and a proxy that serves the app
    under a prefix (Community Cloud's ``/~/+/``) may pass that prefix on or cut it off. The page asks for
    the socket under its own base (``<base>/api/race/ws``), which arrives here either way."""
    endpoint = RaceSocket(registry).endpoint  # one endpoint, so a reconnect by either path replaces the other
    return [WebSocketRoute(WS_PATH, endpoint, name="race_ws"),
            WebSocketRoute("/{prefix:path}" + WS_PATH, endpoint, name="race_ws_prefixed")]
