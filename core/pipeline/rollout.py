"""Rollouts of the agent in the real env: a pure function of (params, seed, settings), and the pools that run
them: this machine's worker processes (``RolloutPool``, the default), or a Ray cluster's workers
(``rollout_pools`` with an address; ``core.pipeline.cluster``). Both run the same ``rollout_task``.

Workers receive V's and M's NumPy weights once, when they start, never TensorFlow, and keep one env of each
kind between episodes, so each task is only a parameter vector and a track seed (and, on a cluster, the
settings).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from core.envs.env import make_env, spawn_context, worker_setup
from core.envs.laps import OUTCOMES, LapTracker
from core.models.agent import Agent, WorldModelWeights

STEP_PENALTY = 0.1  # CarRacing's reward per frame without a new tile, subtracted for each skipped step


@dataclass(frozen=True)
class RolloutSettings:
    """How one episode runs: env kind, step limit and the early stop of hopeless rollouts."""

    env: str = "fast"
    max_steps: int = 1000
    early_stop: bool = False
    early_stop_steps: int = 50


@dataclass
class RolloutResult:
    seed: int
    total_reward: float  # the env's return, plus the penalty of the steps an early stop skipped
    steps: int
    early_stopped: bool
    tiles: int
    skipped: int = 0  # unvisited tiles behind the car when the episode ended (core.envs.laps)
    ended: str = ""  # how it ended: one of core.envs.laps.OUTCOMES


def rollout(params: np.ndarray, seed: int, settings: RolloutSettings, weights: WorldModelWeights,
            env=None) -> RolloutResult:
    """Run the controller ``params`` for one episode on track ``seed``.

    How it ended and the tiles it skipped come from ``core.envs.laps.LapTracker``. With ``settings.early_stop``,
    an episode ends once the reward has been negative for
    ``early_stop_steps`` steps in a row (the car has left the road or stopped); the steps it skips are
    charged the per-frame penalty they would have cost without new tiles, so fitness stays comparable.
    """
    own_env = env is None
    env = make_env(settings.env) if own_env else env
    agent = Agent(weights, params)
    try:
        obs, _ = env.reset(seed=int(seed))
        lap = LapTracker(env)
        total, bad_streak, steps, early, terminated, info = 0.0, 0, 0, False, False, {}
        for t in range(settings.max_steps):
            obs, reward, terminated, truncated, info = env.step(agent.act(obs))
            lap.update()
            total += float(reward)
            steps = t + 1
            if terminated or truncated:
                break
            bad_streak = bad_streak + 1 if reward < 0 else 0
            if settings.early_stop and bad_streak >= settings.early_stop_steps:
                early = True
                total -= STEP_PENALTY * (settings.max_steps - steps)
                break
        tiles = int(getattr(env.unwrapped, "tile_visited_count", 0))
        ended, skipped, _ = lap.ending(terminated, bool(info.get("lap_finished")))
    finally:
        if own_env:
            env.close()
    return RolloutResult(int(seed), total, steps, early, tiles, skipped, OUTCOMES[-1] if early else ended)


# Per-process state of workers (a local pool's processes, a cluster's actors): the weights arrive once through
# the initializer; each worker keeps one env of each kind it has driven.
_WORKER: dict = {}


def _init_worker(weights: WorldModelWeights, settings: RolloutSettings | None = None) -> None:
    worker_setup()
    _WORKER.clear()
    _WORKER.update(weights=weights, settings=settings, envs={})
    if settings is not None:
        _worker_env(settings.env)


def _worker_env(kind: str):
    if kind not in _WORKER["envs"]:
        _WORKER["envs"][kind] = make_env(kind)
    return _WORKER["envs"][kind]


def rollout_task(params: np.ndarray, seed: int, settings: RolloutSettings) -> RolloutResult:
    """``rollout`` in a worker, on its weights and its env of ``settings.env``."""
    return rollout(params, seed, settings, _WORKER["weights"], env=_worker_env(settings.env))


def _worker_rollout(params: np.ndarray, seed: int) -> RolloutResult:
    return rollout_task(params, seed, _WORKER["settings"])


class RolloutPool:
    """Runs rollouts in ``workers`` processes (or inline when ``workers == 1``)."""

    def __init__(self, weights: WorldModelWeights, settings: RolloutSettings, workers: int):
        self.weights, self.settings, self.workers = weights, settings, workers
        self._pool = None
        self._env = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=_init_worker,
                                             initargs=(weights, settings))

    def map(self, tasks: Iterable[tuple[np.ndarray, int]]) -> Iterator[RolloutResult]:
        """Results in task order, yielded as they complete in order."""
        tasks = list(tasks)
        if self._pool is None:
            if self._env is None:
                self._env = make_env(self.settings.env)
            for params, seed in tasks:
                yield rollout(params, seed, self.settings, self.weights, env=self._env)
            return
        futures = [self._pool.submit(_worker_rollout, p, s) for p, s in tasks]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClusterRolloutPool:
    """A ``RolloutPool`` on a Ray cluster's workers (``core.pipeline.cluster.RayPool``): the pools of one stage
    share them, each task carrying its pool's settings."""

    def __init__(self, cluster, settings: RolloutSettings):
        self.cluster, self.settings = cluster, settings

    def map(self, tasks: Iterable[tuple[np.ndarray, int]]) -> Iterator[RolloutResult]:
        """Results in task order, yielded as they complete in order."""
        return self.cluster.map(rollout_task, [(params, seed, self.settings) for params, seed in tasks])


@contextmanager
def rollout_pools(weights: WorldModelWeights, settings: list[RolloutSettings], workers: int, address: str = "",
                  most: int | None = None):
    """One pool for each of ``settings``: ``workers`` processes each on this machine, or with ``address`` one
    set of workers on that Ray cluster (one per CPU of it) that all share, the weights sent to it once.
    ``most``: the workers worth starting (the tasks there are), if fewer."""
    if address:
        from core.pipeline.cluster import RayPool
        with RayPool(address, _init_worker, (weights,), max_workers=most) as cluster:
            yield [ClusterRolloutPool(cluster, s) for s in settings]
        return
    with ExitStack() as stack:
        yield [stack.enter_context(RolloutPool(weights, s, min(workers, most or workers))) for s in settings]


def drive_grid(pool: RolloutPool, candidates: list[np.ndarray],
               seeds: list[int]) -> tuple[list[RolloutResult], np.ndarray]:
    """Every candidate on every one of ``seeds``: the rollouts (candidate-major) and their returns
    as a candidates x seeds array."""
    results = list(pool.map([(p, s) for p in candidates for s in seeds]))
    return results, np.array([r.total_reward for r in results]).reshape(len(candidates), len(seeds))


def episode_returns(pool: RolloutPool, candidates: list[np.ndarray], seeds: list[int]) -> tuple[np.ndarray, int]:
    """Each candidate's return on each of ``seeds`` (candidates x seeds), and the env steps that took."""
    results, returns = drive_grid(pool, candidates, seeds)
    return returns, int(sum(r.steps for r in results))


def evaluate_params(pool: RolloutPool, candidates: list[np.ndarray], seeds: list[int]) -> tuple[list[float], int]:
    """Mean return of each candidate over ``seeds``, and the env steps that took."""
    returns, steps = episode_returns(pool, candidates, seeds)
    return [float(x) for x in returns.mean(axis=1)], steps
