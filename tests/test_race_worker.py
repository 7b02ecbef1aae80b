"""Cars in processes of their own (core.app.race.worker): the same race as on the server's threads, messages
without pickles, and no process outliving its race or its server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.app.race import KEY_GAS, KEY_LEFT, RaceConfig, RaceRegistry, RaceSession, keys_to_action
from core.app.race.worker import CarPool, pack, remote_driver_factory, unpack

ROOT = Path(__file__).resolve().parent.parent
CONFIG = RaceConfig(max_steps=60, countdown_s=0.0, min_steps=5)


def ended(pid: int, timeout: float = 15.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie waiting to be reaped) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_messages_carry_arrays_and_refuse_objects():
    header, arrays = unpack(pack({"op": "step", "action": [0.5, 1.0, 0.0]},
                                 {"obs": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "w": np.ones(3, np.float32)}))
    assert header == {"op": "step", "action": [0.5, 1.0, 0.0]}
    assert arrays["obs"].shape == (2, 2, 3) and arrays["obs"][1, 1, 2] == 11 and arrays["w"].dtype == np.float32
    bad = bytearray(pack({}, {"x": np.zeros(1, np.int64)}))
    bad = bytes(bad).replace(b'"<i8"', b'"|O8"')
    with pytest.raises(ValueError, match="Python objects"):
        unpack(bad)


def test_a_car_in_its_own_process_drives_the_race_exactly_as_here(tiny_world_model):
    """The same race, keys and AI, stepped here and in car processes: the same frames, scores and logs."""
    from core.app.race import load_agent
    pool = CarPool(spares=0)
    try:
        races = [RaceSession(seed=7, mode="vs_ai", player="Ann", config=CONFIG, agent=load_agent(str(tiny_world_model)),
                             driver_factory=factory)
                 for factory in (None, remote_driver_factory(pool, CONFIG.env))]
        for i in range(40):
            for s in races:
                s.set_keys(KEY_GAS | (KEY_LEFT if i % 10 < 5 else 0), i)
                s.tick()
        here, there = races
        for a, b in zip(here.drivers, there.drivers):
            np.testing.assert_array_equal(a.obs, b.obs)
            np.testing.assert_array_equal(a.action_log(), b.action_log())
            assert a.summary() == b.summary() and a.png() == b.png()
        np.testing.assert_array_equal(there.human.action_log()[0], keys_to_action(KEY_GAS | KEY_LEFT))
        for s in races:  # the same track from its start, the AI's memory reset
            s.restart()
            s.set_keys(KEY_GAS, 99)
            s.tick()
        for a, b in zip(here.drivers, there.drivers):
            np.testing.assert_array_equal(a.obs, b.obs)
            assert a.summary() == b.summary() and b.steps == 1 and len(b.actions) == 1
        for s in races:
            s.close()
    finally:
        pool.shutdown()


def test_no_car_process_outlives_a_killed_server(tiny_world_model, tmp_path):
    """A server killed outright (SIGKILL: no clean-up runs) leaves no car process behind: neither a race's
    nor the idle spares."""
    code = f"""
import sys, time
from core.app.race import RaceConfig, RaceRegistry
reg = RaceRegistry(RaceConfig(countdown_s=0.0), board_path={str(tmp_path / 'b.sqlite3')!r}, workers=True)
s = reg.create(owner="a", player="Ann", seed=3, mode="vs_ai", model_dir={str(tiny_world_model)!r})
deadline = time.monotonic() + 60
while len(reg.cars._idle) < reg.cars.spares and time.monotonic() < deadline:
    time.sleep(0.1)
print(*[d.env.pid for d in s.drivers], *[c.pid for c in reg.cars._idle], flush=True)
time.sleep(120)
"""
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in server.stdout.readline().split()]
    finally:
        server.kill()
        server.wait()
    assert len(pids) == 4  # the race's two cars and two spares
    assert all(ended(pid) for pid in pids)


def test_a_stand_in_agent_is_refused_by_car_processes_with_a_clear_message(tmp_path):
    class Stub:
        def reset(self):
            pass

        def act(self, obs):
            return np.zeros(3, np.float32)

    reg = RaceRegistry(CONFIG, board_path=tmp_path / "b.sqlite3", agent_loader=lambda model_dir: Stub(),
                       workers=True)
    try:
        with pytest.raises(TypeError, match="Stub cannot drive in a car's process"):
            reg.create(owner="a", player="Ann", seed=1, mode="watch", model_dir="models")
        assert reg.active() == 0
    finally:
        reg.shutdown()


@pytest.mark.parametrize("environ, cpus, expected", [({}, 4, True), ({}, 2, False), ({"WM_RACE_WORKERS": "0"}, 16, False),
                                                     ({"WM_RACE_WORKERS": "1"}, 2, True),
                                                     ({"WM_SMALL_MACHINE": "1"}, 16, False),
                                                     ({"WM_SMALL_MACHINE": "1", "WM_RACE_WORKERS": "1"}, 2, True)])
def test_cars_get_processes_on_4_cores_or_more_unless_told_otherwise_or_on_a_small_machine(environ, cpus, expected):
    from core.app.race.registry import default_workers
    assert default_workers(environ, cpus) is expected
