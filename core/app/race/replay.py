"""Replays: a finished run's action log driven again on its track seed, headless.

What the leaderboard stores is what this replay scores (``score_and_record``), never a number a browser
sent; ``make_race_env`` gives the live races the fast env when it is there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.app.leaderboard import Leaderboard, Run
from core.envs.env import make_env, tiles_visited

if TYPE_CHECKING:
    from core.app.race.session import FinishedRace

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


def score_and_record(race: FinishedRace, board: Leaderboard) -> list[dict]:
    """Replay each run of a finished race on its seed and store the replayed score.

    Returns one dict per run: label, kind, model, score (the replay's), live_score, steps, tiles,
    total_tiles, skipped (tiles left behind, live), outcome, run_id.
    """
    results = []
    for driver, actions in race.runs:
        replay = replay_run(race.seed, actions)
        if abs(replay.score - driver["score"]) > 1e-6 or replay.steps != driver["steps"]:
            log.warning("race %s: %s scored %.3f live but %.3f in the replay (%d vs %d steps)", race.race_id,
                        driver["label"], driver["score"], replay.score, driver["steps"], replay.steps)
        outcome = replay.outcome or driver["outcome"] or "ended"
        player = driver["label"] if driver["kind"] == "human" else "AI"
        run_id = board.add(Run(player=player, kind=driver["kind"], model=driver["model"], seed=race.seed,
                               score=replay.score, steps=replay.steps, tiles=replay.tiles,
                               total_tiles=replay.total_tiles, outcome=outcome, actions=actions[:replay.steps],
                               race_id=race.race_id))
        results.append({"label": driver["label"], "kind": driver["kind"], "model": driver["model"],
                        "score": replay.score, "live_score": driver["score"], "steps": replay.steps,
                        "tiles": replay.tiles, "total_tiles": replay.total_tiles,
                        "skipped": driver.get("skipped", 0), "outcome": outcome, "run_id": run_id})
    return results
