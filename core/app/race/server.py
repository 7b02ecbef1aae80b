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
  2 right, 4 gas, 8 brake), ``{"type": "pause" | "resume" | "toggle_pause" | "restart" | "end"}``,
  ``{"type": "ping", "frames": n}`` (n: frames read on this socket) every ``HEARTBEAT_S`` while its page is visible and ``{"type": "visibility",
  "hidden": true | false}`` when it goes to the background or comes back (hidden pauses the race).
  Anything else (not JSON, too long, unknown, out of range, too fast) is dropped and counted; a socket
  that keeps sending junk is closed (1008). The race itself never sees it.
* A visible page silent for ``SILENT_S`` (a network that dropped without a close frame), or a client that
  falls ``STALL_S`` of frames behind, is let go (4408): the race pauses at once and a reload takes it
  back. Frames never wait for a slow client: one waits at most, and a newer one replaces it.
* When the socket closes, the race pauses and waits (``RaceConfig.idle_timeout_s``) for the player.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

import cv2
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from core.app.race.ai import single_threaded_blas
from core.app.race.errors import RaceError
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
HEARTBEAT_S = 0.25  # a visible race page says it is there this often, keys or not (component_data)
SILENT_S = 1.5  # a visible page silent this long has lost its network: its socket is let go, the race pauses
STALL_S = 1.5  # a client this far behind the frames sent to it (or a frame waiting this long for the socket
# to take it) has stopped reading
STALL_FRAMES = int(STALL_S * FPS)  # frames sent but not yet reported read that mean the same
WATCH_PERIOD_S = 0.1  # how often the watchdog looks
CLOSE_TIMEOUT_S = 2.0  # seconds a close or control message may wait on a socket whose client does not read

CLOSE_POLICY = 1008  # too much junk
CLOSE_BAD_TOKEN = 4403
CLOSE_REPLACED = 4409
CLOSE_GONE = 4410  # the race was closed (its player started another, or it expired)
CLOSE_SILENT = 4408  # nothing heard from a visible page (or it stopped reading): the page reconnects, paused

FRAME_MAGIC = b"F"


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
    if kind == "visibility":
        hidden = msg.get("hidden")
        return {"type": "visibility", "hidden": hidden} if type(hidden) is bool else None
    if kind == "ping":  # "frames": how many frames the page has read on this socket (optional)
        frames = msg.get("frames")
        ok = frames is None or (type(frames) is int and 0 <= frames < 2**53)
        return {"type": "ping", "frames": frames} if ok else None
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
    """Ticks a session for one socket and encodes its view when it changed (each car's PNG is made once a
    step, by the car: ``Driver.png``)."""

    def __init__(self) -> None:
        self.sent_version = -1

    def __call__(self, session: RaceSession) -> bytes | None:
        session.tick()
        version, meta, images = session.frame()
        if version == self.sent_version:
            return None
        self.sent_version = version
        return encode_frame(meta, images)


class FrameOutbox:
    """The frames on their way to one socket: one being sent and at most one waiting. A newer frame replaces
    the waiting one (counted in ``dropped``): a client that reads slowly misses frames, the race never waits
    for it and nothing queues without bound (the server's own buffers hold at most the transport's high-water
    mark, 64 KiB, above the kernel's).

    ``send``: a coroutine function taking the bytes (``WebSocket.send_bytes``); ``run()`` is the sender task.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], clock: Callable[[], float] = time.monotonic):
        self._send, self._clock = send, clock
        self._waiting: bytes | None = None
        self._wake = asyncio.Event()
        self.sending_since: float | None = None  # when the frame being sent was handed to the socket
        self.sent = self.dropped = 0

    def put(self, payload: bytes) -> None:
        """Queue ``payload`` for sending; never blocks."""
        if self._waiting is not None:
            self.dropped += 1
        self._waiting = payload
        self._wake.set()

    def stalled_for(self, now: float) -> float:
        """Seconds the frame being sent has waited for the socket to take it (0 when none is waiting)."""
        return 0.0 if self.sending_since is None else now - self.sending_since

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payload, self._waiting = self._waiting, None
            if payload is None:
                continue
            self.sending_since = self._clock()
            await self._send(payload)  # blocks only while the socket's buffers are full
            self.sending_since = None
            self.sent += 1


class Link:
    """One socket driving one race, and what the watchdog reads of it. Touched only on the event loop, so
    it needs no lock (the session's lock is held by a tick on a worker thread for milliseconds at a time)."""

    def __init__(self, ws: WebSocket, now: float):
        self.ws = ws
        self.heard = now  # when the page last said anything valid
        self.hidden = False  # the page is in a background tab (it said so)
        self.unread = 0  # frames sent that the page had not read when it last said how many it had
        self.outbox = FrameOutbox(ws.send_bytes)
        self.close_code, self.close_reason = 1000, ""
        self.lost = ""  # why the watchdog let it go ("silent", "not reading")
        self.tasks: list[asyncio.Task] = []

    def stop(self, code: int, reason: str) -> None:
        """End the link's tasks now (they never wait on the socket to stop); its endpoint then closes the
        socket with ``code``, in its own time."""
        self.close_code, self.close_reason = code, reason
        for task in self.tasks:
            task.cancel()


class RaceSocket:
    """The WebSocket endpoint: authenticates a socket by its race token, then runs that race's ticker, its
    sender and its watchdog.

    Nothing the race needs waits on the socket: the ticker hands each frame to a ``FrameOutbox``; the
    watchdog, a task of its own, lets a socket go when a visible page has been silent for ``SILENT_S`` (a
    network that dropped without a close frame) or a frame has waited ``STALL_S`` for the socket to take it
    (a client that stopped reading), and the race pauses; a new socket with the same token takes the race
    over at once, and the old one is closed in the background."""

    def __init__(self, registry: RaceRegistry | Callable[[], RaceRegistry] = get_registry, fps: float = FPS):
        self._registry = registry
        self.period = 1.0 / fps
        self._pool: ThreadPoolExecutor | None = None
        self._links: dict[str, Link] = {}  # race token -> the socket driving it

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
        loop = asyncio.get_running_loop()
        token, link = session.token, Link(ws, loop.time())
        previous = self._links.get(token)
        self._links[token] = link
        if previous is not None:  # a reload or another tab: take over now, close the old socket meanwhile
            previous.stop(CLOSE_REPLACED, "this race was opened in another tab")
        await loop.run_in_executor(self.pool(), session.attach)  # the session's lock, off the event loop
        link.tasks = [asyncio.create_task(coro) for coro in (
            self._tick(link, session), self._receive(link, session), self._watch(link), link.outbox.run())]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            if self._links.get(token) is link:
                del self._links[token]
                await loop.run_in_executor(self.pool(), session.detach)  # pauses the race
            if link.lost:
                log.info("race %s: socket let go (%s); the race is paused", token[:8], link.lost)
            await _close(ws, link.close_code, link.close_reason)

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

    async def _tick(self, link: Link, session: RaceSession) -> None:
        """Step the race at a fixed rate and hand every changed view to the link's outbox (never waiting on
        the socket, which drops the frames a slow client cannot take). A tick that runs late (busy cores) is
        made up by running the next ones back to back, up to MAX_LAG_TICKS, so the race keeps its pace of FPS
        steps a second; further behind (cores that cannot step the race FPS times a second) the debt is
        dropped and the race slows down rather than leaping ahead by steps the player could not steer."""
        loop = asyncio.get_running_loop()
        encoder, pool = _Encoder(), self.pool()
        deadline = loop.time()
        while self._links.get(session.token) is link:
            if self.registry.get(session.token) is not session:
                await _send_json(link.ws, {"type": "error", "message": "this race was closed"})
                link.close_code, link.close_reason = CLOSE_GONE, "race closed"
                return
            try:
                payload = await loop.run_in_executor(pool, encoder, session)
            except Exception as e:  # the race cannot step (the env, the AI or a car's process failed)
                log.exception("race %s stopped: a step failed", session.token[:8])
                await loop.run_in_executor(pool, self.registry.close, session.token)  # ends its car processes
                why = str(e) if isinstance(e, RaceError) else f"a server error ({type(e).__name__}: {e})"
                await _send_json(link.ws, {"type": "error", "message": f"the race stopped: {why}; start a new race"})
                link.close_code, link.close_reason = CLOSE_GONE, "race failed"
                return
            if payload is not None:
                link.outbox.put(payload)
            deadline += self.period
            now = loop.time()
            if deadline < now - MAX_LAG_TICKS * self.period:
                deadline = now
            await asyncio.sleep(max(0.0, deadline - now))

    async def _receive(self, link: Link, session: RaceSession) -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(RATE_PER_S, BURST)
        dropped = handled = 0
        while True:
            message = await link.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            msg = parse_message(message.get("text"))
            if msg is None or msg["type"] == "hello" or not bucket.take():
                dropped += 1
                if dropped > MAX_DROPPED:
                    link.close_code, link.close_reason = CLOSE_POLICY, "too many invalid or excess messages"
                    return
            else:
                link.heard = loop.time()
                if msg["type"] == "keys":
                    session.set_keys(msg["mask"], msg["seq"])
                elif msg["type"] == "visibility":
                    link.hidden = msg["hidden"]
                    if link.hidden:
                        session.hide()
                elif msg["type"] == "ping":  # the page is there, and has read this many frames
                    if msg["frames"] is not None:
                        link.unread = max(0, link.outbox.sent - msg["frames"])
                else:
                    session.command(msg["type"])
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flooding socket cannot starve the other races' tickers

    async def _watch(self, link: Link) -> None:
        """Return (and so end the link, which pauses the race) once the page is gone without a word: a visible
        page silent for SILENT_S, or one that says it is STALL_FRAMES frames behind those sent, or a frame that
        has waited STALL_S for the socket to take it (the kernel's buffers on loopback hold megabytes, so this
        last one comes late, for clients that report nothing). A hidden page's timers
        are throttled by its browser, so its silence is not counted (its race is paused already); the
        socket's own keepalive still ends it if its network is gone."""
        loop = asyncio.get_running_loop()
        woke = loop.time()
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            now = loop.time()
            late, woke = now - woke > 2 * WATCH_PERIOD_S, now
            if late:  # the loop itself stalled: let the receiver read what arrived meanwhile first
                continue
            if not link.hidden and now - link.heard > SILENT_S:
                link.lost = f"nothing heard for {now - link.heard:.1f} s"
            elif link.unread > STALL_FRAMES:
                link.lost = f"{link.unread} frames sent were not read"
            elif link.outbox.stalled_for(now) > STALL_S:
                link.lost = f"a frame waited {link.outbox.stalled_for(now):.1f} s for the socket"
            if link.lost:
                link.close_code, link.close_reason = CLOSE_SILENT, "nothing heard from the page"
                return


async def _send_json(ws: WebSocket, obj: dict) -> None:
    """Send a control message; gives up after CLOSE_TIMEOUT_S on a socket whose client does not read."""
    try:
        await asyncio.wait_for(ws.send_text(json.dumps(obj)), CLOSE_TIMEOUT_S)
    except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        pass


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close ``ws``; gives up after CLOSE_TIMEOUT_S when its buffers are full (a client that stopped reading
    cannot take the close frame either: the socket's keepalive ends the connection later)."""
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    try:
        await asyncio.wait_for(ws.close(code, reason), CLOSE_TIMEOUT_S)
    except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        pass


def component_data(session: RaceSession) -> dict:
    """What the race view component (assets/race/race.js) needs to connect to ``session``."""
    return {"token": session.token, "ws_path": WS_PATH.lstrip("/"), "heartbeat_ms": int(HEARTBEAT_S * 1000),
            "mode": session.mode, "seed": session.seed,
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
