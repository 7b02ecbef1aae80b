"""scripts/driving_style.py: the action and speed statistics the README quotes, and the gas-shift leads."""

import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TEST_ENV

sys.path.insert(0, str(ROOT / "scripts"))

from driving_style import GAS_BIAS, OUTCOMES, LapTracker, drive, main, outcome, outcome_lines  # noqa: E402


class _Tile:
    def __init__(self, idx):
        self.idx, self.road_visited = idx, False


class _Env:
    """What LapTracker reads of CarRacing: the track's length, its tiles, and the tiles under the wheels."""

    def __init__(self, n):
        self.unwrapped = self
        self.track = [None] * n
        self.road = [_Tile(i) for i in range(n)]
        self.car = type("Car", (), {"wheels": [type("Wheel", (), {"tiles": set()})() for _ in range(4)]})()

    def touch(self, *idx):
        for wheel in self.car.wheels:
            wheel.tiles = set()
        for i in idx:
            self.road[i].road_visited = True
            self.car.wheels[0].tiles.add(self.road[i])


def _drive_through(env, tracker, indices):
    for i in indices:
        env.touch(*([] if i is None else [i]))
        tracker.update()


def test_a_lap_driven_round_with_a_corner_cut_counts_the_cut_tiles_as_skipped():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, [0, 1, 2] + list(range(3, 20)) + list(range(24, 40)) + [0, 1])  # 20..23 cut
    assert tracker.round and tracker.unvisited() == (4, 0)
    assert outcome(None, 0, *tracker.unvisited()) == "tiles skipped"


def test_tiles_not_reached_lie_ahead_and_a_reverse_start_is_no_progress():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, [0, 39, 38, 0, 1] + list(range(2, 12)) + list(range(14, 30)))  # 12, 13 cut
    assert not tracker.round and tracker.furthest == 29
    assert tracker.unvisited() == (2, 8)  # 12 and 13 behind; 30..37 ahead (38, 39 were touched in reverse)
    assert outcome(None, 0, *tracker.unvisited()) == "out of steps"


def test_the_car_off_the_road_for_its_last_steps_had_lost_it():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, list(range(0, 10)) + [None] * 60)
    assert tracker.steps - tracker.last_on_road == 60
    assert outcome(None, 60, *tracker.unvisited()) == "lost the road"
    assert outcome(None, 49, *tracker.unvisited()) == "out of steps"
    assert outcome(True, 0, 0, 0) == "lap finished" and outcome(False, 0, 0, 10) == "left the field"


def test_the_endings_table_groups_episodes_by_how_they_ended():
    rows = [{"outcome": "lap finished", "return": 910.0, "skipped": 0, "ahead": 0},
            {"outcome": "out of steps", "return": 800.0, "skipped": 2, "ahead": 10},
            {"outcome": "out of steps", "return": 700.0, "skipped": 4, "ahead": 20}]
    lines = outcome_lines(rows)
    assert lines[2] == "| lap finished | 1 | 910.0 | 0.0 | 0.0 |"
    assert lines[3] == "| out of steps | 2 | 750.0 | 3.0 | 15.0 |"
    assert len(lines) == 4 and set(OUTCOMES) >= {"lost the road", "tiles skipped"}


def test_a_full_throttle_controller_is_measured_as_one(tiny_world_model):
    """Zero weights and a large gas bias: gas 1 on every step, no steering, no braking, and the car gains
    speed."""
    from core.agent import Agent, load_world_model
    weights, params = load_world_model(tiny_world_model)
    flat_out = np.zeros_like(params)
    flat_out[GAS_BIAS] = 10.0
    row = drive(Agent(weights, flat_out), 950_000, TEST_ENV, 60)
    assert row["steps"] == 60 and row["gas"] == pytest.approx(1.0) and row["full_gas"] == 1.0
    assert row["steer"] == 0.0 and row["braking"] == 0.0
    assert 0 < row["speed"] < row["top_speed"]
    assert row["outcome"] in OUTCOMES and row["skipped"] + row["ahead"] > 0  # 60 steps finish no lap


def test_the_table_and_the_gas_shift_leads(tiny_world_model, capsys):
    code = main([str(tiny_world_model), "--tracks", "2", "--max-steps", "20", "--env", TEST_ENV,
                 "--gas-shifts", "0,5", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| 95000")]
    assert [r.split("|")[1].strip() for r in rows] == ["950000", "950001"]
    assert "| mean |" in out
    assert "| ended | episodes | mean return |" in out
    assert "gas bias +0: mean" in out and "lead +0.0 ± 0.0 (won 0 of 2)" in out  # the same controller
    assert "gas bias +5: mean" in out


def test_a_folder_without_a_model_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path), "--tracks", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--gas-shifts", "a,b"])
