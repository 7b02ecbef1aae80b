"""Make the sample frames the app shows when no episodes are collected yet (assets/samples/).

    python scripts/make_sample_frames.py [models] [--out assets/samples]

The shipped controller (V + M + C of ``models/``, no noise) drives CarRacing-v3 (the fast env: the stock
env's frames exactly) on the validation tracks 950000.. (never drawn by training, and not the evaluation
tracks). Writes two small files:

- ``frames.npz``: ``frames`` uint8 (8, 64, 64, 3), one frame of each of 8 tracks, at steps 100, 125, .., 275
  (past the zoom-in of the first second), with their ``seeds`` and ``steps``: the Train VAE page's
  reconstructions and latent explorer use them;
- ``ep_0950000.npz``: steps 150..174 of track 950000 in the episode format (``core.storage.dataset``; 24
  steps, 25 frames, with actions and rewards): the Train RNN page's one-step predictions use it.

The files are about 45 KB together. The app only reads them (``core.app.app_data.SAMPLE_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from core.models.agent import Agent
from core.pipeline.collect import drive_episode
from core.storage.artifacts import atomic_save_npz
from core.storage.dataset import Episode, episode_path, load_episode, save_episode

ROOT = Path(__file__).resolve().parents[1]

FIRST_SEED = 950_000  # the first validation track (core.config: 950000..999999 are never trained on)
TRACKS = 8
FRAME_STEPS = [100 + 25 * i for i in range(TRACKS)]  # the step whose frame is kept, per track
CLIP = (150, 174)  # the steps of track FIRST_SEED kept as the sample episode


def drive(agent: Agent, seed: int, steps: int) -> Episode:
    """The agent on track ``seed`` for ``steps`` steps (fewer if the episode ends): frames and actions."""
    agent.reset()
    return drive_episode(seed, steps, "fast", agent.act)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "models"), help="world model that drives")
    parser.add_argument("--out", default=str(ROOT / "assets" / "samples"), help="folder to write")
    args = parser.parse_args(argv)
    agent = Agent.load(args.model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, step in enumerate(FRAME_STEPS):
        seed = FIRST_SEED + i
        # Track FIRST_SEED drives one step past the clip: the step at the limit is marked truncated, and the
        # clip is a stretch in mid-drive.
        episode = drive(agent, seed, max(step, CLIP[1] + 1) if i == 0 else step)
        frames.append(episode.obs[min(step, episode.steps)])
        if i == 0:
            first, last = CLIP
            clip = Episode(obs=episode.obs[first:last + 1], action=episode.action[first:last],
                           reward=episode.reward[first:last], terminated=episode.terminated[first:last],
                           truncated=episode.truncated[first:last], seed=seed)
            save_episode(episode_path(out, seed), clip)
            load_episode(episode_path(out, seed))  # the app reads it with the same checks
        print(f"track {seed}: frame of step {step}", flush=True)
    atomic_save_npz(out / "frames.npz", frames=np.stack(frames),
                    seeds=np.arange(FIRST_SEED, FIRST_SEED + TRACKS, dtype=np.int64),
                    steps=np.asarray(FRAME_STEPS, np.int64))
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.npz"))}
    print(", ".join(f"{name}: {size / 1024:.1f} KB" for name, size in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
