"""The race WebSocket against a live uvicorn server: frames, keys, tokens, junk, dropped connections."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette

from core.app.race import KEY_GAS, KEY_LEFT, KEY_RIGHT, RaceConfig, RaceRegistry
from core.app.race import server as race_server
from core.app.race.server import WS_PATH, decode_frame, parse_message, race_routes

CONFIG = RaceConfig(max_steps=400, countdown_s=0.0, resume_countdown_s=0.0, max_races=6)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    registry = RaceRegistry(CONFIG, board_path=tmp_path_factory.mktemp("board") / "b.sqlite3")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    uv = uvicorn.Server(uvicorn.Config(Starlette(routes=race_routes(registry)), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield registry, f"ws://127.0.0.1:{port}{WS_PATH}"
    uv.should_exit = True
    thread.join(10)
    registry.shutdown()


@pytest.fixture(autouse=True)
def fresh_races(server):
    yield
    server[0].close_all()


def new_race(registry, owner, seed=3, **changes):
    return registry.create(owner=owner, player="Ann", seed=seed, mode="solo",
                           config=dataclasses.replace(CONFIG, **changes) if changes else None)


async def join(url, token):
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


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
        async with await join(url, session.token) as ws:
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
        async with await join(url, session.token) as ws:
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
    angle_left = left.human.env.unwrapped.car.hull.angle
    angle_right = right.human.env.unwrapped.car.hull.angle
    assert angle_left > 0.2 and angle_right < -0.2  # Box2D angles: counter-clockwise is positive
    assert left_img[0] != right_img[0]
    log = left.human.action_log()
    # the first step or two may run before the first key message lands (no countdown here)
    assert (log[:, 0] == -1).sum() >= 30 and (log[:, 0] == 1).sum() == 0 and log[5:, 1].min() == 1.0


def test_an_unknown_token_is_refused(server, monkeypatch):
    registry, url = server
    session = new_race(registry, "victim")

    async def go():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "token": session.token[:-2] + "xx"}))
            answer = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return answer, closed.value.rcvd.code

    answer, code = asyncio.run(go())
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
        async with await join(url, calm.token) as ws:
            await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS, "seq": 1}))
            got = await frames(ws, 150)
            return [m["step"] for m, _ in got]

    async def flood():
        async with await join(url, noisy.token) as ws:
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
        ws = await join(url, session.token)
        await frames(ws, 10)
        await ws.close()
        await asyncio.sleep(0.3)
        paused_at = session.steps
        assert session.status == "paused" and session.pause_reason == "disconnected"
        await asyncio.sleep(0.3)
        assert session.steps == paused_at  # no time passes while the player is away
        async with await join(url, session.token) as ws:
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
        first = await join(url, session.token)
        await frames(first, 3)
        second = await join(url, session.token)
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
        first = await join(root + "/~/+" + WS_PATH, session.token)
        await frames(first, 3)
        second = await join(root + "/some/base" + WS_PATH, session.token)
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
        ws = await join(url, session.token)
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
