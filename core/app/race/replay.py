"""Replays: a finished run's action log driven again on its track seed, headless.

What the leaderboard stores is what this replay scores (``registry.score_and_record``), never a number a browser
sent; ``make_race_env`` gives the live races the fast env when it is there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.envs.env import make_env, tiles_visited

log = logging.getLogger(__name__)


def make_race_env(kind: str = "fast"):
    """The live env: the fast CarRacing when it is there, else Gymnasium's."""
    if kind == "fast":
        try:
            return make_env("fast")
        except ImportError:
            log.warning("core.envs.fast_car_racing is missing; racing on the stock CarRacing-v3")
    return make_env("stock")


# --------------------------------------------------------------------------------------------------
# Replays


@dataclass(frozen=True)
class ReplayResult:
    """What a logged run scores when the server replays it on its track."""

    score: float
    steps: int
    tiles: int
    total_tiles: int
    outcome: str | None  # "lap", "off-track" or "time" when the episode ended; None when the log ran out


def _skip_render(mode: str) -> None:
    return None


def replay_run(seed: int, actions: np.ndarray, render: bool = False) -> ReplayResult:
    """Replay an action log (float32 (steps, 3)) on track ``seed`` in Gymnasium's own CarRacing-v3.

    Rewards and termination come from the physics and the tiles the car touches, never from pixels, so
    by default rendering is skipped (about 0.3 ms a step instead of 6-12 ms); ``render=True`` runs the
    env untouched, and the tests check both agree.
    """
    env = make_env("stock", disable_env_checker=True)
    if not render:
        env.unwrapped._render = _skip_render  # the step's observation is then None; rewards are unchanged
    try:
        env.reset(seed=int(seed))
        score, steps, outcome = 0.0, 0, None
        for action in np.asarray(actions, dtype=np.float32):
            _, reward, terminated, truncated, info = env.step(action)
            score += float(reward)
            steps += 1
            if terminated:
                outcome = "lap" if info.get("lap_finished") else "off-track"
                break
            if truncated:
                outcome = "time"
                break
        tiles, total = tiles_visited(env)
    finally:
        env.close()
    return ReplayResult(score, steps, tiles, total, outcome)


# --------------------------------------------------------------------------------------------------
# Scoring and the registry of live races
