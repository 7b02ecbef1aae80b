"""Stage 6, record: an episode to MP4, from the agent driving or from a saved action log on its seed.

Videos are H.264 in yuv420p (what browsers play), frames upscaled with nearest-neighbour so the 96x96
observation stays crisp.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import cv2
import imageio.v2 as imageio
import numpy as np

from core.config import RecordConfig, validate
from core.envs.env import make_env
from core.metrics import EpisodeMetric
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import ArtifactError

MACRO_BLOCK = 16  # H.264 wants frame sides divisible by 16


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H * scale, W * scale, 3), nearest neighbour."""
    if scale == 1:
        return frame
    return cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def write_mp4(frames: Iterable[np.ndarray], path: Path | str, fps: int = 50) -> Path:
    """Write uint8 (H, W, 3) RGB frames to an MP4 atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=MACRO_BLOCK, ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_actions(path: Path | str) -> np.ndarray:
    """An action log: JSON (a list of [steer, gas, brake] or {"actions": [...]}) or .npy; float32 (T, 3)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: action log not found")
    try:
        if path.suffix == ".npy":
            actions = np.load(path, allow_pickle=False)
            if not isinstance(actions, np.ndarray):  # an .npz under an .npy name
                actions.close()
                raise ValueError("an .npz archive, not one array")
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            actions = np.asarray(data["actions"] if isinstance(data, dict) else data, dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        raise ArtifactError(f"{path}: not an action log ({e}); expected a JSON list of [steer, gas, brake]") from None
    if not (np.issubdtype(actions.dtype, np.integer) or np.issubdtype(actions.dtype, np.floating)):
        raise ArtifactError(f"{path}: an array of {actions.dtype}, not an action log of numbers")
    if actions.ndim != 2 or actions.shape[1] != 3 or not np.isfinite(actions).all():
        raise ArtifactError(f"{path}: action log has shape {actions.shape}, expected (steps, 3) finite numbers")
    return np.clip(actions.astype(np.float32), [-1, 0, 0], [1, 1, 1])


def replay_frames(seed: int, actions: np.ndarray, env_kind: str = "fast"):
    """Yield (obs, reward, done) for an action log replayed on track ``seed``; the first obs is the reset's."""
    env = make_env(env_kind)
    try:
        obs, _ = env.reset(seed=int(seed))
        yield obs, 0.0, False
        for a in actions:
            obs, r, terminated, truncated, _ = env.step(a)
            yield obs, float(r), terminated or truncated
            if terminated or truncated:
                break
    finally:
        env.close()


def agent_frames(model_dir: Path | str, seed: int, max_steps: int, env_kind: str = "fast"):
    """Yield (obs, reward, done) for the agent in ``model_dir`` driving track ``seed``."""
    from core.models.agent import Agent
    agent = Agent.load(model_dir)
    env = make_env(env_kind)
    try:
        obs, _ = env.reset(seed=int(seed))
        yield obs, 0.0, False
        for _ in range(max_steps):
            obs, r, terminated, truncated, _ = env.step(agent.act(obs))
            yield obs, float(r), terminated or truncated
            if terminated or truncated:
                break
    finally:
        env.close()


def record(config: RecordConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Render one episode to ``config.out``; returns the path, the return and the steps.

    A recording cannot resume: stopped part way (``on_progress`` returned falsy), it raises
    InterruptedError and leaves ``config.out`` as it was.
    """
    validate(config)
    if config.actions:
        actions = load_actions(config.actions)[:config.max_steps]
        source = replay_frames(config.seed, actions, config.env)
        total = len(actions)
    else:
        source = agent_frames(config.model_dir, config.seed, config.max_steps, config.env)
        total = config.max_steps
    stats = {"return": 0.0, "steps": -1}

    def frames():
        for obs, reward, _ in source:
            stats["return"] += reward
            stats["steps"] += 1
            if stats["steps"] % 50 == 0 and not on_progress(stats["steps"], total, {EpisodeMetric.RETURN: stats["return"]}):
                raise InterruptedError(f"stopped at step {stats['steps']}; {config.out} was left as it was")
            yield upscale(obs, config.scale)

    with contextlib.closing(source):  # a stop or a failed write closes its env now, not when collected
        path = write_mp4(frames(), config.out, config.fps)
    return {"out": str(path), "return": stats["return"], "steps": stats["steps"], "seed": config.seed}
