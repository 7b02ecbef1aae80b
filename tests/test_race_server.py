"""The race WebSocket against a live uvicorn server: frames, keys, tokens, junk, dropped connections."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette

from bench.common import join_race
from bench.raw_ws import BINARY, RawSocket
from core.app.race import KEY_GAS, KEY_LEFT, KEY_RIGHT, RaceConfig, RaceRegistry, make_race_env
from core.app.race import server as race_server
from core.app.race.server import WS_PATH, decode_frame, parse_message, race_routes
from tests.test_race_worker import ended

CONFIG = RaceConfig(max_steps=400, countdown_s=0.0, resume_countdown_s=0.0, max_races=6)


@contextlib.contextmanager
def serve_races(registry):
    """uvicorn serving ``race_routes(registry)`` on a free port of 127.0.0.1 (in a thread), as
    ``streamlit run`` serves them (websockets-sansio); yields the socket's URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    uv = uvicorn.Server(uvicorn.Config(Starlette(routes=race_routes(registry)), host="127.0.0.1", port=port,
                                       log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{port}{WS_PATH}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Cars in processes of their own whatever the machine (the default on 2 cores is the server's threads).
    registry = RaceRegistry(CONFIG, board_path=tmp_path_factory.mktemp("board") / "b.sqlite3", workers=True)
    with serve_races(registry) as url:
        yield registry, url
    registry.shutdown()


@pytest.fixture(autouse=True)
def fresh_races(server):
    yield
    server[0].close_all()


def new_race(registry, owner, seed=3, **changes):
    return registry.create(owner=owner, player="Ann", seed=seed, mode="solo",
                           config=dataclasses.replace(CONFIG, **changes) if changes else None)


def hull_angle(session):
    """The heading of the person's car after its logged actions, replayed here (the car itself steps in a
    process of its own)."""
    env = make_race_env(session.config.env)
    try:
        env.reset(seed=session.seed)
        for action in session.human.action_log():
            env.step(action)
        return env.unwrapped.car.hull.angle
    finally:
        env.close()


async def hello_refused(url, token):
    """Say hello with ``token`` on a new socket that the server must close: its answer and the close code."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        answer = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        return answer, closed.value.rcvd.code


async def frames(ws, n):
    """The next ``n`` frame messages as (meta, images)."""
    out = []
    while len(out) < n:
        msg = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(msg, bytes):
            out.append(decode_frame(msg))
    return out


def test_frames_stream_every_step_with_scores(server):
    registry, url = server
    session = new_race(registry, "stream")

    async def go():
        async with await join_race(url, session.token) as ws:
            got = await frames(ws, 40)
            return got

    got = asyncio.run(go())
    steps = [meta["step"] for meta, _ in got]
    assert steps == list(range(steps[0], steps[0] + 40))  # every step delivered, in order
    meta, images = got[-1]
    assert meta["status"] == "running" and meta["drivers"][0]["label"] == "Ann"
    assert images[0][:8] == b"\x89PNG\r\n\x1a\n"
    import cv2
    img = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (96, 96, 3)


def test_keys_steer_the_car(server):
    """Same track, gas then left in one race and gas then right in the other: the cars turn apart."""
    registry, url = server
    left, right = new_race(registry, "left", seed=21), new_race(registry, "right", seed=21)

    async def drive(session, turn):
        async with await join_race(url, session.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS, "seq": 1}))
            await frames(ws, 30)
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS | turn, "seq": 2}))
            while True:
                meta, images = (await frames(ws, 1))[0]
                if meta["ack"] == 2:
                    break
            await frames(ws, 30)
            await ws.send(json.dumps({"type": "pause"}))
            await asyncio.sleep(0.1)
            return images

    async def both():
        return await asyncio.gather(drive(left, KEY_LEFT), drive(right, KEY_RIGHT))

    left_img, right_img = asyncio.run(both())
    angle_left, angle_right = hull_angle(left), hull_angle(right)
    assert angle_left > 0.2 and angle_right < -0.2  # Box2D angles: counter-clockwise is positive
    assert left_img[0] != right_img[0]
    log = left.human.action_log()
    # the first step or two may run before the first key message lands (no countdown here)
    assert (log[:, 0] == -1).sum() >= 30 and (log[:, 0] == 1).sum() == 0 and log[5:, 1].min() == 1.0


def test_an_unknown_token_is_refused(server, monkeypatch):
    registry, url = server
    session = new_race(registry, "victim")

    answer, code = asyncio.run(hello_refused(url, session.token[:-2] + "xx"))
    assert answer["type"] == "error" and code == race_server.CLOSE_BAD_TOKEN
    assert not session.connected and session.steps == 0

    monkeypatch.setattr(race_server, "HELLO_TIMEOUT_S", 0.3)

    async def silent():
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd.code

    assert asyncio.run(silent()) == race_server.CLOSE_BAD_TOKEN


def test_junk_and_floods_are_dropped_without_touching_other_races(server):
    registry, url = server
    calm, noisy = new_race(registry, "calm", seed=5), new_race(registry, "noisy", seed=5)
    junk = ["not json", "[1, 2]", "{}", '{"type": "keys", "mask": 99, "seq": 1}',
            '{"type": "keys", "mask": true, "seq": 1}', '{"type": "keys", "mask": 4, "seq": -1}',
            '{"type": "keys", "mask": "4"}', '{"type": "hello", "token": "x"}', '{"type": "drop table"}',
            json.dumps({"type": "keys", "mask": 4, "pad": "x" * 5000}), b"\x00\x01binary"]

    async def watch_calm():
        async with await join_race(url, calm.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS, "seq": 1}))
            got = await frames(ws, 150)
            return [m["step"] for m, _ in got]

    async def flood():
        async with await join_race(url, noisy.token) as ws:
            for i in range(3000):
                await ws.send(junk[i % len(junk)])
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code

    async def both():
        return await asyncio.gather(watch_calm(), flood())

    keys_set = []  # what reached the noisy car's keys, however few of its steps ran before it was shut
    noisy.set_keys = lambda *args: keys_set.append(args)
    steps, code = asyncio.run(both())
    assert keys_set == []
    assert code == race_server.CLOSE_POLICY  # the flooding socket is shut...
    assert steps == list(range(steps[0], steps[0] + 150))  # ...while the other race streamed every step
    assert noisy.status == "paused" and noisy.pause_reason == "disconnected"
    assert (noisy.human.action_log()[:, 1] == 0).all()  # none of the junk reached the car
    assert (calm.human.action_log()[5:, 1] == 1).all()


def test_parse_message_rejects_what_the_browser_never_sends():
    assert parse_message('{"type":"keys","mask":5,"seq":3}') == {"type": "keys", "mask": 5, "seq": 3}
    assert parse_message('{"type":"end"}') == {"type": "end"}
    for bad in (None, b"{}", "x" * 300, '{"type":"keys","mask":1.0}', '{"type":"keys","mask":16}', "null",
                '{"type":"hello","token":5}'):
        assert parse_message(bad) is None


def test_a_dropped_connection_pauses_and_the_race_goes_on_after_reconnecting(server):
    registry, url = server
    session = new_race(registry, "flaky")

    async def go():
        ws = await join_race(url, session.token)
        await frames(ws, 10)
        await ws.close()
        await asyncio.sleep(0.3)
        paused_at = session.steps
        assert session.status == "paused" and session.pause_reason == "disconnected"
        await asyncio.sleep(0.3)
        assert session.steps == paused_at  # no time passes while the player is away
        async with await join_race(url, session.token) as ws:
            (meta, _), = await frames(ws, 1)
            assert meta["status"] == "paused" and meta["reason"] == "disconnected"
            await ws.send(json.dumps({"type": "resume"}))
            while (await frames(ws, 1))[0][0]["status"] != "running":
                pass
            later = await frames(ws, 5)
        return paused_at, later

    paused_at, later = asyncio.run(go())
    assert later[-1][0]["step"] > paused_at


def test_a_second_socket_takes_over_and_a_closed_race_ends_its_socket(server):
    registry, url = server
    session = new_race(registry, "tabs")

    async def go():
        first = await join_race(url, session.token)
        await frames(first, 3)
        second = await join_race(url, session.token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(first.recv(), 5)
        replaced = closed.value.rcvd.code
        await frames(second, 3)
        registry.close(session.token)  # the page started another race or left this one
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(second.recv(), 5)
        return replaced, closed.value.rcvd.code

    replaced, gone = asyncio.run(go())
    assert replaced == race_server.CLOSE_REPLACED and gone == race_server.CLOSE_GONE


def test_the_socket_answers_under_a_path_prefix_too(server):
    """Behind a proxy that serves the app under a prefix (Community Cloud's /~/+/) or with
    server.baseUrlPath, the page asks for <base>/api/race/ws: the same socket, and a socket under one path
    replaces that race's socket under another. Other paths are no socket."""
    registry, url = server
    session = new_race(registry, "prefixed")
    root = url.removesuffix(WS_PATH)

    async def go():
        first = await join_race(root + "/~/+" + WS_PATH, session.token)
        await frames(first, 3)
        second = await join_race(root + "/some/base" + WS_PATH, session.token)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(first.recv(), 5)
        await frames(second, 3)
        await second.close()
        refused = []
        for path in ("/api/race/wsx", "/~/+/api/race", "/api/race/ws/more"):
            with pytest.raises(websockets.InvalidStatus) as status:
                await websockets.connect(root + path)
            refused.append(status.value.response.status_code)
        return closed.value.rcvd.code, refused

    replaced, refused = asyncio.run(go())
    assert replaced == race_server.CLOSE_REPLACED
    assert refused == [403, 403, 403]  # Starlette refuses a socket no route takes with 403


def test_a_race_whose_step_fails_ends_with_a_message_not_a_reconnect_loop(server, monkeypatch, caplog):
    """A failing step used to close the socket plainly: the page reconnected to a paused race that failed
    again at every resume."""
    registry, url = server
    session = new_race(registry, "broken")

    def broken_tick():
        raise RuntimeError("the env fell over")

    async def go():
        ws = await join_race(url, session.token)
        await frames(ws, 2)
        monkeypatch.setattr(session, "tick", broken_tick)
        error = None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                msg = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(msg, str):
                    error = json.loads(msg)
        return error, closed.value.rcvd.code

    error, code = asyncio.run(go())
    assert error["type"] == "error" and "the env fell over" in error["message"]
    assert code == race_server.CLOSE_GONE and registry.get(session.token) is None
    assert "a step failed" in caplog.text


# --- a network that drops without a close frame -----------------------------------------------------------

FLOOR_FPS = 30  # frames/s the other races must keep in these tests: the goal is 45 (bench_race measures it),
# looser here because this machine is shared and loaded (load average 8-12 on 2 cores)


async def count_frames(ws, seconds):
    """Frames a second a client receives over ``seconds``, and the steps it saw."""
    start, steps = time.monotonic(), []
    while time.monotonic() - start < seconds:
        (meta, _), = await frames(ws, 1)
        steps.append(meta["step"])
    return len(steps) / (time.monotonic() - start), steps


async def until(predicate, timeout, step=0.02):
    """Seconds until ``predicate()`` holds; AssertionError after ``timeout`` seconds."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        await asyncio.sleep(step)
    return time.monotonic() - start


def test_a_dropped_network_pauses_the_race_fast_and_a_reload_takes_it_back_at_once(server):
    """A client whose network drops (it stops reading and sending, and its socket stays open: no close frame)
    pauses its race within 2 s, the other races stream on, and a new socket with the same token (the page
    reloaded) has the race back in under 1 s, while the old socket is still open."""
    registry, url = server
    owner = "0123456789abcdef"
    session = registry.create(owner=owner, player="Ann", seed=7, mode="solo")
    others = [new_race(registry, f"other{i}", seed=8 + i) for i in range(2)]

    async def drop():
        raw = await RawSocket.open(url, rcvbuf=4096)  # a small buffer: the server's sends back up fast
        raw.send_json({"type": "hello", "token": session.token})
        assert (await raw.recv_json())["type"] == "ready"
        for _ in range(30):  # driving: frames read, the page's heartbeat sent
            await raw.recv()
            raw.send_json({"type": "ping"})
        await raw.drain()
        dropped = time.monotonic()  # the network drops: from here nothing is read or sent
        await until(lambda: session.status == "paused", 5)
        paused_after = time.monotonic() - dropped
        assert session.pause_reason == "disconnected" and not session.connected
        assert registry.reclaim(owner) == owner  # the reloaded page is led back to this race
        steps = session.steps
        await asyncio.sleep(0.5)
        assert session.steps == steps  # the car no longer drives blind
        reload = time.monotonic()
        async with await join_race(url, session.token) as ws:
            (meta, _), = await frames(ws, 1)
            back_after = time.monotonic() - reload
            assert meta["status"] == "paused" and meta["reason"] == "disconnected"
            await ws.send(json.dumps({"type": "resume"}))
            while (await frames(ws, 1))[0][0]["status"] != "running":
                pass
        raw.abort()
        return paused_after, back_after

    async def watch(s):
        async with await join_race(url, s.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS | KEY_LEFT, "seq": 1}))
            return await count_frames(ws, 4.0)

    async def all_of_it():
        return await asyncio.gather(drop(), *[watch(s) for s in others])

    (paused_after, back_after), *watched = asyncio.run(all_of_it())
    assert paused_after < 2.0, paused_after
    assert back_after < 1.0, back_after
    for fps, steps in watched:
        assert fps >= FLOOR_FPS, watched
        assert steps == list(range(steps[0], steps[0] + len(steps)))  # no step lost on the way


def test_a_client_that_stops_reading_but_still_talks_is_let_go(server):
    """The heartbeat says how many frames the page has read: one that keeps talking but no longer reads
    (frames pile up unread) is let go as well, and its race pauses."""
    registry, url = server
    session = new_race(registry, "deaf", seed=9)

    async def go():
        raw = await RawSocket.open(url, rcvbuf=4096)
        raw.send_json({"type": "hello", "token": session.token})
        assert (await raw.recv_json())["type"] == "ready"
        read = 0
        for _ in range(20):
            if (await raw.recv())[0] == BINARY:
                read += 1
        stopped = time.monotonic()
        while session.status != "paused":
            assert time.monotonic() - stopped < 5, "still running"
            raw.send_json({"type": "ping", "frames": read})
            await raw.drain()
            await asyncio.sleep(race_server.HEARTBEAT_S)
        paused_after = time.monotonic() - stopped
        raw.abort()
        return paused_after

    paused_after = asyncio.run(go())
    assert session.pause_reason == "disconnected" and not session.connected
    assert paused_after < race_server.STALL_S + 1.5, paused_after


def test_a_hidden_page_pauses_its_race_and_its_silence_is_not_a_lost_network(server):
    """A background tab's timers are throttled by its browser: it says it is hidden, its race pauses, and
    its silence does not count (a copied link cannot take its race); back in view, it drives on."""
    registry, url = server
    owner = "fedcba9876543210"
    session = registry.create(owner=owner, player="Ann", seed=10, mode="solo")

    async def go():
        ws = await websockets.connect(url)  # no heartbeat task: this page falls silent while hidden
        await ws.send(json.dumps({"type": "hello", "token": session.token}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "ping"}))
        await frames(ws, 10)
        await ws.send(json.dumps({"type": "visibility", "hidden": True}))
        while (await frames(ws, 1))[0][0]["status"] != "paused":
            pass
        assert session.pause_reason == "hidden"
        await asyncio.sleep(race_server.SILENT_S + 1.0)  # silent: throttled timers
        assert session.connected and registry.reclaim(owner) is None
        await ws.send(json.dumps({"type": "visibility", "hidden": False}))
        await ws.send(json.dumps({"type": "resume"}))
        while (await frames(ws, 1))[0][0]["status"] != "running":
            await ws.send(json.dumps({"type": "ping"}))
        await ws.close()

    asyncio.run(go())


class MemorySocket:
    """A Starlette WebSocket over in-memory ASGI messages, whose sends can be made to block for ever: a
    client whose buffers are full, as the server sees it after megabytes of frames on a real network."""

    def __init__(self, token: str):
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list = []
        self.blocked = False
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.say({"type": "hello", "token": token})
        from starlette.websockets import WebSocket
        self.ws = WebSocket({"type": "websocket", "path": WS_PATH, "headers": [], "query_string": b""},
                            self.inbox.get, self._send)

    def say(self, msg: dict) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(msg)})

    async def _send(self, message: dict) -> None:
        if self.blocked:
            await asyncio.Event().wait()  # never returns
        self.sent.append(message)

    def frames(self) -> int:
        return sum(1 for m in self.sent if m.get("bytes"))


def test_a_takeover_never_waits_for_the_old_socket_and_a_stuck_one_never_stops_the_ticks(server):
    registry, _ = server
    session = new_race(registry, "stuck", seed=11)
    socket_ = race_server.RaceSocket(registry)

    async def go():
        old = MemorySocket(session.token)
        old_task = asyncio.create_task(socket_.endpoint(old.ws))
        await until(lambda: old.frames() >= 5, 5)
        old.blocked = True  # the old socket's buffers are full: a send, or a close, waits for ever
        steps = session.steps
        # The ticker goes on (frames wait in the outbox, one at most): 10 steps take 0.2 s at 50 a second, and a
        # few seconds on a machine the other tests load.
        await until(lambda: session.steps >= steps + 10, 5)
        new = MemorySocket(session.token)
        pinging = True

        async def heartbeat():  # the new page says it is there, as pages do
            while pinging:
                new.say({"type": "ping"})
                await asyncio.sleep(race_server.HEARTBEAT_S)
        beats = asyncio.create_task(heartbeat())
        new_task = asyncio.create_task(socket_.endpoint(new.ws))
        took = await until(lambda: new.frames() >= 1, 1.0)  # at once, though the old one cannot be closed
        await until(old_task.done, race_server.CLOSE_TIMEOUT_S + 2)  # the old socket's close gave up
        assert session.status == "running" and session.connected
        # The new client stops reading too, but keeps talking: its frame waits, and it is let go.
        new.blocked = True
        stuck = time.monotonic()
        await until(lambda: session.status == "paused", race_server.STALL_S + 2)
        paused_after = time.monotonic() - stuck
        pinging = False
        await beats
        await until(new_task.done, race_server.CLOSE_TIMEOUT_S + 2)
        return took, paused_after

    took, paused_after = asyncio.run(go())
    assert took < 1.0 and paused_after >= race_server.STALL_S * 0.9
    assert not session.connected and session.pause_reason == "disconnected"


def test_the_outbox_keeps_one_frame_waiting_and_drops_older_ones():
    async def go():
        release = asyncio.Event()
        got = []

        async def send(payload):
            await release.wait()
            got.append(payload)

        box = race_server.FrameOutbox(send)
        task = asyncio.create_task(box.run())
        box.put(b"1")
        await asyncio.sleep(0.01)  # 1 is being sent (and blocks)
        assert box.stalled_for(time.monotonic() + 1) > 0.9
        for payload in (b"2", b"3", b"4"):
            box.put(payload)
        release.set()
        await asyncio.sleep(0.01)
        task.cancel()
        return got, box

    got, box = asyncio.run(go())
    assert got == [b"1", b"4"] and box.dropped == 2 and box.sent == 2 and box.stalled_for(0) == 0


def test_a_car_process_that_dies_ends_its_race_with_one_line_and_leaves_no_process(server, tiny_world_model):
    """The AI's process is killed mid-race: the player reads one line saying so, the race is gone from the
    registry, and the person's car's process ends too."""
    registry, url = server
    session = registry.create(owner="doomed", player="Ann", seed=4, mode="vs_ai", model_dir=str(tiny_world_model))
    human, ai = (d.env.pid for d in session.drivers)

    async def go():
        async with await join_race(url, session.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS, "seq": 1}))
            await frames(ws, 10)
            os.kill(ai, signal.SIGKILL)
            while True:
                msg = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(msg, str):
                    return json.loads(msg)

    answer = asyncio.run(go())
    assert answer["type"] == "error" and "\n" not in answer["message"]
    assert f"car's process (pid {ai}) was killed (signal 9)" in answer["message"] and answer["message"].endswith("start a new race")
    assert registry.get(session.token) is None
    assert ended(ai) and ended(human)


def test_a_races_processes_end_with_the_race(server, tiny_world_model):
    """Ended by its player, a race's car processes end: the person's at once, the AI's once its run has been
    driven on to its end and recorded; a race closed before its end (its owner started another) ends its
    process at once."""
    registry, url = server
    short = dataclasses.replace(CONFIG, max_steps=60)
    session = registry.create(owner="ender", player="Ann", seed=4, mode="vs_ai", model_dir=str(tiny_world_model),
                              config=short)
    human, ai = (d.env.pid for d in session.drivers)

    async def go():
        async with await join_race(url, session.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS, "seq": 1}))
            await frames(ws, 20)
            await ws.send(json.dumps({"type": "end"}))
            while (await frames(ws, 1))[0][0]["status"] != "finished":
                pass

    asyncio.run(go())
    assert ended(human)
    registry.wait_scored()
    status = session.status_dict()
    assert [r["kind"] for r in status["results"]] == ["human", "ai"] and status["results"][1]["steps"] == short.max_steps
    assert ended(ai)
    other = new_race(registry, "closer")
    pid = other.drivers[0].env.pid
    registry.close_owner("closer")
    assert ended(pid)
