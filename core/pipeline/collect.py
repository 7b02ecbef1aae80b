"""Stage 1, collect: rollouts of CarRacing saved as episode files.

Uniform ``action_space.sample()`` mostly spins the car in place (about -35 a track), so the data would
show little of the road. The Brownian policy below keeps each action component on a smoothed random walk
(an Ornstein-Uhlenbeck process): the car drives along, drifts off, brakes now and then, and the frames
cover on-road and off-road views alike.

A random driver rarely gets far along a track, so V and M see little of what a good driver sees (long
straights at speed, late corners). The controller policy is the paper's iterative training step: a trained
world model drives, its actions nudged by smoothed noise so that the data also holds mistakes and
recoveries, and V and M can be retrained on those episodes.

A data folder holds episodes of one kind: the settings that shape an episode (``EPISODE_SETTINGS``) are
recorded in its manifest, and a run with other settings into a folder that already holds episodes is
refused rather than mixing two data sets under one name.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np

from core.config import CollectConfig, ray_address, to_dict, validate
from core.envs.actions import ACTION_HIGH, ACTION_LOW
from core.envs.env import make_env, preprocess, spawn_context, worker_setup
from core.metrics import EpisodeMetric
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import ArtifactError, RunLock, atomic_write_bytes
from core.storage.dataset import (
    Episode,
    EpisodeError,
    episode_bytes,
    episode_path,
    list_episodes,
    load_episode,
    read_manifest,
    save_episode,
    write_manifest,
)

log = logging.getLogger(__name__)

# Ornstein-Uhlenbeck parameters per action component (steer, gas, brake-drive): pull towards MEAN at
# rate THETA per step with noise SIGMA per step. Brake is max(0, x), so a negative mean keeps it mostly off.
OU_MEAN = np.array([0.0, 0.45, -0.4], dtype=np.float32)
OU_THETA = np.array([0.05, 0.02, 0.02], dtype=np.float32)
OU_SIGMA = np.array([0.12, 0.06, 0.06], dtype=np.float32)


# The controller policy's noise: an Ornstein-Uhlenbeck process of unit spread per action component, so a
# nudge lasts about 1 / NOISE_THETA steps (a fifth of a second) instead of cancelling out at once.
NOISE_THETA = 0.1
NOISE_SIGMA = float(np.sqrt(2 * NOISE_THETA - NOISE_THETA ** 2))  # stationary standard deviation 1


# What an episode on a given track depends on besides its seed; a data folder holds one value of each.
# None: the setting does not apply (no noise and no model for policy "brownian"). The env kind is recorded
# but may change: the fast and stock envs give identical episodes (tests/test_fast_env.py).
EPISODE_SETTINGS = ("policy", "max_steps", "noise", "model_sha256")
_SETTING_LABELS = {"policy": "--policy", "max_steps": "--max-steps", "noise": "--noise", "model_sha256": "model"}


class MixedDataError(ArtifactError):
    """A collection into a folder whose episodes were made with other episode settings."""


class BrownianPolicy:
    """Smoothed random actions: float32 (3,) in ``[-1, 0, 0]..[1, 1, 1]``; the observation is ignored."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.x = OU_MEAN + rng.normal(0.0, 0.3, size=3).astype(np.float32)

    def __call__(self, obs: np.ndarray | None = None) -> np.ndarray:
        noise = self.rng.normal(0.0, 1.0, size=3).astype(np.float32)
        self.x = self.x + OU_THETA * (OU_MEAN - self.x) + OU_SIGMA * noise
        self.x = np.clip(self.x, [-1.0, 0.0, -1.0], [1.0, 1.0, 1.0]).astype(np.float32)
        return np.array([self.x[0], self.x[1], max(0.0, self.x[2])], dtype=np.float32)


class ControllerPolicy:
    """A trained world model's agent (V + M + C) driving, plus ``noise`` times smoothed unit noise, clipped
    to the action ranges: float32 (3,) from a uint8 (96, 96, 3) observation."""

    def __init__(self, weights: dict, params: np.ndarray, noise: float, rng: np.random.Generator):
        from core.models.agent import Agent
        self.agent = Agent(weights, params)
        self.noise, self.rng = np.float32(noise), rng
        self.x = np.zeros(3, np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.agent.act(obs)
        step = self.rng.normal(0.0, 1.0, size=3).astype(np.float32)
        self.x = (1.0 - NOISE_THETA) * self.x + NOISE_SIGMA * step
        return np.clip(action + self.noise * self.x, ACTION_LOW, ACTION_HIGH).astype(np.float32)


# The world model that drives for policy "controller": NumPy weights and C's parameters, set once per
# process (in workers by the pool's initializer), never TensorFlow.
_DRIVER: dict = {}


def _set_driver(weights: dict | None, params: np.ndarray | None) -> None:
    _DRIVER.clear()
    if weights is not None:
        _DRIVER.update(weights=weights, params=params)


def _init_worker(weights: dict | None, params: np.ndarray | None) -> None:
    worker_setup()
    _set_driver(weights, params)


def run_episode(seed: int, max_steps: int, env_kind: str, policy_seed: int | None = None,
                policy: str = "brownian", noise: float = 0.0) -> Episode:
    """One episode on track ``seed``; a pure function of its arguments (and, for policy "controller", of
    the world model set with ``_set_driver``)."""
    rng = np.random.default_rng(seed if policy_seed is None else policy_seed)
    if policy == "controller":
        if not _DRIVER:
            raise RuntimeError("policy 'controller' needs a world model: _set_driver() first")
        drive = ControllerPolicy(_DRIVER["weights"], _DRIVER["params"], noise, rng)
    else:
        drive = BrownianPolicy(rng)
    return drive_episode(seed, max_steps, env_kind, drive)


def drive_episode(seed: int, max_steps: int, env_kind: str, act: Callable[[np.ndarray], np.ndarray]) -> Episode:
    """Track ``seed`` driven by ``act`` (uint8 (96, 96, 3) observation -> float32 (3,) action) for at most
    ``max_steps`` steps, recorded as an Episode; the last step allowed is marked truncated."""
    env = make_env(env_kind)
    obs, _ = env.reset(seed=seed)
    frames = [preprocess(obs)]
    actions, rewards, terms, truncs = [], [], [], []
    try:
        for t in range(max_steps):
            a = act(obs)
            obs, r, terminated, truncated, _ = env.step(a)
            truncated = truncated or t == max_steps - 1
            frames.append(preprocess(obs))
            actions.append(a)
            rewards.append(r)
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
    finally:
        env.close()
    return Episode(obs=np.stack(frames), action=np.stack(actions).astype(np.float32),
                   reward=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool),
                   truncated=np.asarray(truncs, bool), seed=seed)


def _entry(seed: int, ep: Episode) -> dict:
    """An episode's line in the manifest."""
    return {"file": episode_path(".", seed).name, "seed": seed, "steps": ep.steps, "return": round(ep.total_reward, 3)}


def _collect_one(seed: int, max_steps: int, env_kind: str, out_dir: str, policy: str, noise: float) -> dict:
    ep = run_episode(seed, max_steps, env_kind, policy=policy, noise=noise)
    save_episode(episode_path(out_dir, seed), ep)
    return _entry(seed, ep)


def _run_one(seed: int, max_steps: int, env_kind: str, policy: str, noise: float) -> tuple[dict, bytes]:
    """One episode on a cluster's worker: its manifest line and its file's bytes, which the driver writes."""
    ep = run_episode(seed, max_steps, env_kind, policy=policy, noise=noise)
    return _entry(seed, ep), episode_bytes(ep)


def world_model_sha256(weights: dict, params: np.ndarray) -> str:
    """Hex SHA-256 of the arrays that drive (V's encoder, M, C's parameters): the same for a copy of the model
    in another folder, different for a retrained one."""
    h = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(weights[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    h.update(np.ascontiguousarray(params, np.float32).tobytes())
    return h.hexdigest()


def episode_settings(config: CollectConfig, model_sha256: str | None = None) -> dict:
    """The ``EPISODE_SETTINGS`` of a collection (plus ``model_dir``, for the record only: a folder's path
    does not change what drives)."""
    controller = config.policy == "controller"
    return {"policy": config.policy, "env": config.env, "max_steps": config.max_steps,
            "noise": float(config.noise) if controller else None,
            "model_sha256": model_sha256 if controller else None,
            "model_dir": config.model_dir if controller else None}


def recorded_settings(manifest: dict) -> dict:
    """The episode settings a manifest records; those it cannot tell are left out (unknown).

    A manifest of an older collect records only the flags of its latest run as ``config``: these stand for
    the episodes, with policy "brownian" where it names none (the only policy before there was a choice);
    a controller's identity is unknown there.
    """
    if "settings" in manifest:
        return dict(manifest["settings"])
    config = manifest.get("config") or {}
    if not config:
        return {}
    known = {k: config[k] for k in ("env", "max_steps") if k in config}
    known["policy"] = config.get("policy", "brownian")
    if known["policy"] == "controller":
        if "noise" in config:
            known["noise"] = float(config["noise"])
    else:
        known.update(noise=None, model_sha256=None)
    return known


def check_settings(out_dir: Path, recorded: dict, wanted: dict) -> None:
    """Raise MixedDataError when a setting known in ``recorded`` differs from ``wanted``."""
    differing = [k for k in EPISODE_SETTINGS if k in recorded and recorded[k] != wanted[k]]
    if differing:
        shown = "; ".join(f"{_SETTING_LABELS[k]} {_show(k, recorded)} there, {_show(k, wanted)} now"
                          for k in differing)
        raise MixedDataError(f"{out_dir} holds episodes collected with other settings ({shown}); collect into "
                             f"another folder instead of mixing two data sets, e.g. --out-dir "
                             f"{_suggest_dir(out_dir, differing, wanted)}")
    unknown = [k for k in EPISODE_SETTINGS if k not in recorded]
    if unknown:
        log.warning("%s: the manifest does not record %s of the episodes there; taking them as collected "
                    "with this run's", out_dir, ", ".join(_SETTING_LABELS[k] for k in unknown))


def _show(key: str, settings: dict) -> str:
    value = settings[key]
    if value is None:
        return "none"
    if key == "model_sha256":
        where = settings.get("model_dir")
        return value[:12] + (f" ({where})" if where else "")
    return str(value)


def _suggest_dir(out_dir: Path, differing: list[str], wanted: dict) -> str:
    if "policy" in differing:
        tag = wanted["policy"]
    elif "max_steps" in differing:
        tag = f"{wanted['max_steps']}steps"
    elif "noise" in differing:
        tag = f"noise{wanted['noise']:g}"
    else:
        tag = f"model-{wanted['model_sha256'][:8]}"
    return f"{out_dir}-{tag}"


def collect(config: CollectConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Make ``config.episodes`` episodes exist in ``config.out_dir``; resumes where a previous run stopped.

    Episode i drives track ``config.seed + i``. Episodes already on disk are kept, so re-running the same
    command after a crash only runs the missing ones. The manifest records the episode settings (policy,
    env, max_steps and, for policy "controller", noise and the model's SHA-256); into a folder that holds
    episodes, a run with other settings raises MixedDataError before writing anything. Episodes, seed and
    workers may change between runs. Returns the manifest's summary.
    """
    validate(config)
    with RunLock(config.out_dir, "collect"):
        return _collect(config, on_progress)


def _collect(config: CollectConfig, on_progress: ProgressCallback) -> dict:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    on_disk = {p.name: p for p in list_episodes(out_dir)}
    weights, params = (None, None)
    if config.policy == "controller":
        from core.models.agent import load_world_model
        weights, params = load_world_model(config.model_dir)
    settings = episode_settings(config, None if weights is None else world_model_sha256(weights, params))
    if on_disk:
        check_settings(out_dir, recorded_settings(manifest), settings)
    entries = {e["file"]: e for e in manifest.get("episodes", []) if e["file"] in on_disk}
    for name, path in on_disk.items():  # written by a run that stopped before updating the manifest
        if name not in entries:
            try:
                ep = load_episode(path)
            except EpisodeError:
                continue  # redone below
            entries[name] = {"file": name, "seed": ep.seed, "steps": ep.steps, "return": round(ep.total_reward, 3)}
    wanted = [config.seed + i for i in range(config.episodes)]
    todo = [s for s in wanted if episode_path(out_dir, s).name not in entries]
    total = len(wanted)
    done = total - len(todo)

    def save_manifest() -> None:
        write_manifest(out_dir, {"config": to_dict(config), "settings": settings,
                                 "episodes": sorted(entries.values(), key=lambda e: e["seed"])})

    def record(entry: dict) -> bool:
        nonlocal done
        entries[entry["file"]] = entry
        done += 1
        save_manifest()
        return bool(on_progress(done, total, {EpisodeMetric.EPISODE: entry["seed"],
                                              EpisodeMetric.RETURN: entry["return"],
                                              EpisodeMetric.STEPS: entry["steps"]}))

    save_manifest()  # the settings are on disk before the first episode is
    task = (config.max_steps, config.env, str(out_dir), config.policy, config.noise)
    if not on_progress(done, total, {}):
        todo = []
    if ray_address(config) and todo:
        _collect_on_cluster(ray_address(config), out_dir, todo, weights, params, config, record)
    elif config.workers == 1 or len(todo) <= 1:
        _set_driver(weights, params)
        try:
            for seed in todo:
                if not record(_collect_one(seed, *task)):
                    break
        finally:
            _set_driver(None, None)
    elif todo:
        with ProcessPoolExecutor(min(config.workers, len(todo)), mp_context=spawn_context(),
                                 initializer=_init_worker, initargs=(weights, params)) as pool:
            queue = list(todo)
            running = set()
            stop = False
            while (queue and not stop) or running:
                while queue and not stop and len(running) < config.workers:
                    running.add(pool.submit(_collect_one, queue.pop(0), *task))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    if not record(fut.result()):
                        stop = True
    save_manifest()
    returns = [e["return"] for e in entries.values()]
    return {"episodes": len(entries), "frames": int(sum(e["steps"] + 1 for e in entries.values())),
            "mean_return": float(np.mean(returns)) if returns else float("nan"), "out_dir": str(out_dir)}


def _collect_on_cluster(address: str, out_dir: Path, todo: list[int], weights: dict | None, params: np.ndarray | None,
                        config: CollectConfig, record) -> None:
    """The episodes of ``todo`` on the Ray cluster at ``address`` (the world model sent to it once); this process
    writes their files and ``record``s them, in seed order, until it asks to stop."""
    from core.pipeline.cluster import RayPool
    task = (config.max_steps, config.env, config.policy, config.noise)
    with RayPool(address, _init_worker, (weights, params), max_workers=len(todo)) as cluster:
        results = cluster.map(_run_one, [(seed, *task) for seed in todo])
        try:
            for entry, data in results:
                atomic_write_bytes(episode_path(out_dir, entry["seed"]), data)
                if not record(entry):
                    break
        finally:
            results.close()
