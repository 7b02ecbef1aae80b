"""core.envs.laps: how an episode ended, from the tiles the car touched; and its endings in real episodes."""

import subprocess
import sys

import numpy as np

from core.envs.laps import LOST_ROAD_STEPS, MEANINGS, OUTCOMES, LapTracker, endings, outcome
from tests.conftest import ROOT, TEST_ENV


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
    """Put the car on each tile of ``indices`` in turn (a tuple: on several; None: off the road), one step
    each."""
    for i in indices:
        env.touch(*(() if i is None else i if isinstance(i, tuple) else (i,)))
        tracker.update()


def test_a_lap_driven_round_with_a_corner_cut_counts_the_cut_tiles_as_skipped():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, [0, 1, 2] + list(range(3, 20)) + list(range(24, 40)) + [0, 1])  # 20..23 cut
    assert tracker.round and tracker.ending(False, False) == ("tiles skipped", 4, 0)
    assert tracker.ending(True, False)[0] == "left the field"


def test_tiles_not_reached_lie_ahead_and_a_reverse_start_is_no_progress():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, [0, 39, 38, 0, 1] + list(range(2, 12)) + list(range(14, 30)))  # 12, 13 cut
    assert not tracker.round and tracker.furthest == 29
    # 12 and 13 behind; 30..37 ahead (38, 39 were touched in reverse)
    assert tracker.ending(False, False) == ("out of steps", 2, 8)


def test_turning_round_and_driving_back_is_no_progress():
    """Forward to tile 5, then backwards over the start line and three quarters of the way round: the tiles
    6..13 it never reached are still ahead, not skipped; driving forward again from 14 does not count either,
    until the car is back past tile 5."""
    env = _Env(40)
    tracker = LapTracker(env)
    backwards = [(5 - k) % 40 for k in range(31)]  # 5, 4, ..., 0, 39, ..., 15, each with the tile behind it
    _drive_through(env, tracker, [(0, 1)] + list(range(2, 6)) + [(i, (i - 1) % 40) for i in backwards])
    assert tracker.furthest == 5 and not tracker.round
    assert tracker.ending(False, False) == ("out of steps", 0, 8)
    _drive_through(env, tracker, list(range(15, 40)) + [0, 1, 2, 3, 4, 5, 6, 7])
    assert tracker.furthest == 7 and not tracker.round


def test_the_car_off_the_road_for_its_last_steps_had_lost_it():
    env = _Env(40)
    tracker = LapTracker(env)
    _drive_through(env, tracker, list(range(0, 10)) + [None] * LOST_ROAD_STEPS)
    assert tracker.ending(False, False) == ("lost the road", 0, 30)
    assert outcome(None, LOST_ROAD_STEPS - 1, *tracker.unvisited()) == "out of steps"
    assert outcome(True, 0, 0, 0) == "lap finished" and outcome(False, 0, 0, 10) == "left the field"


def test_endings_group_in_outcome_order_with_means_of_any_per_episode_list():
    rows = endings(["out of steps", "lap finished", "out of steps"], [800.0, 910.0, 700.0],
                   skipped=[2, 0, 4], ahead=[10, 0, 20])
    assert rows == [{"ended": "lap finished", "episodes": 1, "mean_return": 910.0, "mean_skipped": 0.0,
                     "mean_ahead": 0.0},
                    {"ended": "out of steps", "episodes": 2, "mean_return": 750.0, "mean_skipped": 3.0,
                     "mean_ahead": 15.0}]
    assert endings([], []) == []
    assert set(MEANINGS) == set(OUTCOMES)  # every ending explained in the tables


def test_a_rollout_says_how_it_ended(tiny_world_model):
    """A car that brakes and never moves: out of steps on a real track, no tile skipped; the same car with an
    early stop is stopped early."""
    from core.models.agent import load_world_model
    from core.pipeline.rollout import RolloutSettings, rollout
    weights, params = load_world_model(tiny_world_model)
    parked = np.zeros_like(params)
    parked[-3:] = (0.0, -10.0, 10.0)  # no steering, no gas, full brake
    r = rollout(parked, 950_000, RolloutSettings(env=TEST_ENV, max_steps=60), weights)
    assert (r.ended, r.skipped, r.steps) == ("out of steps", 0, 60)
    r = rollout(parked, 950_000, RolloutSettings(env=TEST_ENV, max_steps=80, early_stop=True), weights)
    # The first step pays for the tiles under the car at the start; then 50 steps without a new tile.
    assert r.ended == OUTCOMES[-1] and r.early_stopped and r.steps == 51


def test_reading_a_report_for_the_pages_does_not_load_the_env():
    """The endings table Home shows comes from core.envs.laps alone: reading the shipped report pulls in neither
    the evaluation code nor Gymnasium."""
    code = ("import sys; from core.app import app_data; r = app_data.evaluation('models'); "
            "print(bool(r['endings']), 'gymnasium' in sys.modules, 'core.pipeline.evaluate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    assert out == ["True", "False", "False"]
