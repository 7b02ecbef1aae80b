"""Collected episodes on disk: one compressed ``.npz`` per episode plus ``manifest.json``.

An episode file holds, for T steps:

- ``obs``: uint8 (T + 1, 64, 64, 3), the preprocessed frame before each action and the last one after;
- ``action``: float32 (T, 3) in ``[-1, 0, 0]..[1, 1, 1]``;
- ``reward``: float32 (T,), the reward that followed each action;
- ``terminated``, ``truncated``: bool (T,), the env's flags after each action;
- ``seed``: int64 (), the track seed.
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.envs.env import FRAME_SIZE
from core.storage.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EPISODE_GLOB = "ep_*.npz"
EPISODE_KEYS = ("obs", "action", "reward", "terminated", "truncated", "seed")


class EpisodeError(ArtifactError):
    """An episode file that is truncated, corrupt or of the wrong shape."""


class NoDataError(ArtifactError):
    """No usable episodes where a stage expected them."""


@dataclass
class Episode:
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    seed: int

    @property
    def steps(self) -> int:
        return int(len(self.action))

    @property
    def total_reward(self) -> float:
        return float(self.reward.sum())


def episode_path(data_dir: Path | str, seed: int) -> Path:
    return Path(data_dir) / f"ep_{seed:07d}.npz"


def episode_bytes(ep: Episode) -> bytes:
    """The content of ``ep``'s file (a compressed .npz), made where the episode ran: a cluster's worker sends
    these bytes and the driver writes them (``save_episode_bytes``), so the workers need no shared folder."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, obs=ep.obs, action=ep.action.astype(np.float32), reward=ep.reward.astype(np.float32),
                        terminated=ep.terminated.astype(bool), truncated=ep.truncated.astype(bool),
                        seed=np.int64(ep.seed))
    return buffer.getvalue()


def save_episode(path: Path | str, ep: Episode) -> None:
    atomic_write_bytes(path, episode_bytes(ep))


def load_episode(path: Path | str) -> Episode:
    """Load and check one episode file; raises EpisodeError naming the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in EPISODE_KEYS if k not in f.files]
            if missing:
                raise EpisodeError(f"{path}: missing arrays {missing}")
            data = {k: f[k] for k in EPISODE_KEYS}
    except EpisodeError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as e:
        raise EpisodeError(f"{path}: unreadable episode file ({type(e).__name__}: {e}); delete it and "
                           "collect again") from None
    obs, action = data["obs"], data["action"]
    if action.ndim != 2 or data["seed"].shape != () or not np.issubdtype(data["seed"].dtype, np.integer):
        raise EpisodeError(f"{path}: action is {action.shape} and seed {data['seed'].shape}, expected (T, 3) "
                           "and one integer")
    steps = len(action)
    if obs.dtype != np.uint8 or obs.shape[1:] != (FRAME_SIZE, FRAME_SIZE, 3):
        raise EpisodeError(f"{path}: obs is {obs.dtype} {obs.shape}, expected uint8 (T+1, 64, 64, 3)")
    if action.shape != (steps, 3) or obs.shape[0] != steps + 1:
        raise EpisodeError(f"{path}: {obs.shape[0]} frames for {steps} actions, expected one more frame "
                           "than actions")
    for k in ("reward", "terminated", "truncated"):
        if data[k].shape != (steps,):
            raise EpisodeError(f"{path}: {k} has shape {data[k].shape}, expected ({steps},)")
    return Episode(obs=obs, action=action.astype(np.float32), reward=data["reward"].astype(np.float32),
                   terminated=data["terminated"].astype(bool), truncated=data["truncated"].astype(bool),
                   seed=int(data["seed"]))


def list_episodes(data_dir: Path | str) -> list[Path]:
    """Episode files in ``data_dir``, sorted by name (= by track seed)."""
    return sorted(Path(data_dir).glob(EPISODE_GLOB))


def data_folders(data_dir: Path | str) -> list[Path]:
    """The folders a training stage reads: ``data_dir`` names one, or several separated by commas
    (``data/rollouts,data/rollouts-controller``: random driving and the controller's own, the paper's
    iterative training). A folder named twice (``data/a,./data/a``) is read once."""
    folders = [Path(part.strip()) for part in str(data_dir).split(",") if part.strip()]
    if not folders:
        raise NoDataError(f"{data_dir!r}: name a data folder (several: separate them with commas)")
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


def existing_data_folders(data_dir: Path | str) -> list[Path]:
    """``data_folders(data_dir)``, each checked to exist: a NoDataError names the first missing one and the
    command that makes it."""
    folders = data_folders(data_dir)
    for folder in folders:
        if not folder.is_dir():
            raise NoDataError(f"{folder}: no such data folder; collect episodes first "
                              f"(python -m core collect --out-dir {folder})")
    return folders


def read_manifest(data_dir: Path | str) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return {"episodes": []}
    return read_json(path, "episode manifest")


def write_manifest(data_dir: Path | str, manifest: dict) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST, manifest)


def usable_episodes(data_dir: Path | str, on_corrupt: str = "skip", max_episodes: int = 0,
                    min_steps: int = 1) -> list[Path]:
    """Episode files that load and check, from one folder or several (``data_folders``); corrupt ones are
    skipped with a warning or stop the stage. ``max_episodes`` counts over all folders, in order.

    Raises NoDataError when a folder is missing or there are no usable episodes, with the command that
    makes them.
    """
    folders = existing_data_folders(data_dir)
    paths = [p for folder in folders for p in list_episodes(folder)]
    if max_episodes:
        paths = paths[:max_episodes]
    good = []
    for p in paths:
        try:
            ep = load_episode(p)
        except EpisodeError as e:
            if on_corrupt == "stop":
                raise
            log.warning("skipping %s", e)
            continue
        if ep.steps >= min_steps:
            good.append(p)
    if not good:
        raise NoDataError(f"{data_dir}: no usable episodes; collect some first "
                          f"(python -m core collect --out-dir {folders[0]})")
    return good


def split_holdout(paths: list, holdout: float, seed: int, kept: list[str] | None = None) -> tuple[list, list]:
    """(train, held-out) episodes; at least one training episode, held out only when there are two or more.

    ``kept``: the held-out episodes (their paths) of the run being resumed. Those still there stay held
    out and every other episode trains, so episodes collected since the run began never move one it has
    trained on into the held-out set (a new draw over more episodes would).
    """
    paths = list(paths)
    if kept is not None:
        names = {str(Path(k).resolve()) for k in kept}
        held = sorted(p for p in paths if str(Path(p).resolve()) in names)
        train = sorted(p for p in paths if str(Path(p).resolve()) not in names)
        if train and (held or not kept):
            return train, held
        log.warning("none of the %d held-out episodes this run began with is among the episodes now (another "
                    "data folder?): drawing a new held-out set", len(kept))
    n_hold = int(round(len(paths) * holdout))
    if holdout > 0 and len(paths) >= 2:
        n_hold = max(1, n_hold)
    n_hold = min(n_hold, len(paths) - 1)
    order = np.random.default_rng(seed).permutation(len(paths))
    held = sorted(paths[i] for i in order[:n_hold])
    train = sorted(paths[i] for i in order[n_hold:])
    return train, held


def iter_frames(paths: list[Path], rng: np.random.Generator, frame_stride: int = 1,
                shuffle_buffer: int = 20000) -> Iterator[np.ndarray]:
    """Stream uint8 (64, 64, 3) frames from episode files in random order through a shuffle buffer.

    Memory stays at ``shuffle_buffer`` frames plus one episode, whatever the data set's size.
    """
    buffer: list[np.ndarray] = []
    for i in rng.permutation(len(paths)):
        try:
            obs = load_episode(paths[i]).obs
        except EpisodeError as e:
            log.warning("skipping %s", e)
            continue
        # Every episode gives ceil(n / stride) frames whatever the offset (count_frames relies on it): the
        # offset is drawn among those that leave room for that many.
        per_episode = -(-len(obs) // frame_stride)
        offset = int(rng.integers(len(obs) - frame_stride * (per_episode - 1))) if len(obs) else 0
        for frame in obs[offset::frame_stride]:
            if len(buffer) < shuffle_buffer:
                buffer.append(frame)
                continue
            j = int(rng.integers(shuffle_buffer))
            yield buffer[j]
            buffer[j] = frame
    rng.shuffle(buffer)
    yield from buffer


def count_frames(paths: list[Path], frame_stride: int = 1) -> int:
    """Frames ``iter_frames`` yields over ``paths`` (read from the arrays' headers, not the data)."""
    total = 0
    for p in paths:
        with zipfile.ZipFile(p) as z, z.open("obs.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(f)[0]
        total += -(-shape[0] // frame_stride)
    return total


def manifest_summary(data_dir: Path | str) -> dict:
    """Episodes, frames and return statistics of a data folder, from its manifest."""
    eps = read_manifest(data_dir).get("episodes", [])
    returns = [e["return"] for e in eps]
    return {
        "episodes": len(eps),
        "frames": int(sum(e["steps"] + 1 for e in eps)),
        "mean_return": float(np.mean(returns)) if returns else float("nan"),
        "returns": returns,
    }

