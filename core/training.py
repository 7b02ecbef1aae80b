"""What the Keras training stages share: checkpoints with optimizer state, and resuming from them.

A checkpoint is ``<out_dir>/checkpoint/``: model weights, the optimizer's variables and ``state.json``
(batches done, epoch). The artifact's own weights are updated at every checkpoint too, so a stopped run
still leaves a usable model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.artifacts import ArtifactError, atomic_save_keras, atomic_save_npz, atomic_write_json, read_json


def configure_tensorflow() -> None:
    """Quiet TensorFlow's start-up chatter; call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def save_checkpoint(out_dir: Path, model, optimizer, state: dict, weights_name: str) -> None:
    ckpt = out_dir / "checkpoint"
    atomic_save_keras(model, ckpt / weights_name)
    atomic_save_npz(ckpt / "optimizer.npz", compressed=False,
                    **{f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    # state.json is written last: it is what says the checkpoint is complete.
    atomic_write_json(ckpt / "state.json", state)
    atomic_save_keras(model, out_dir / weights_name)


def load_checkpoint(out_dir: Path, model, optimizer, weights_name: str) -> dict | None:
    """Restore weights and optimizer state; returns the saved state, or None when there is no checkpoint."""
    ckpt = out_dir / "checkpoint"
    if not (ckpt / "state.json").exists():
        return None
    state = read_json(ckpt / "state.json", "checkpoint state")
    try:
        model.load_weights(ckpt / weights_name)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{ckpt}: checkpoint does not fit this model ({e}); use another --run-dir or "
                            "delete the checkpoint folder to start over") from None
    optimizer.build(model.trainable_variables)
    with np.load(ckpt / "optimizer.npz") as f:
        values = [f[k] for k in sorted(f.files)]
    if len(values) != len(optimizer.variables):
        raise ArtifactError(f"{ckpt}: optimizer state has {len(values)} variables, expected "
                            f"{len(optimizer.variables)}; delete the checkpoint folder to start over")
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    return state


def check_config_matches(out_dir: Path, config: dict, keys: tuple[str, ...], stage: str) -> None:
    """Refuse to resume a checkpoint made with a different architecture."""
    path = out_dir / "config.json"
    if not path.exists() or not (out_dir / "checkpoint" / "state.json").exists():
        return
    old = read_json(path, "config")
    diff = [f"{k}: {old.get(k)} -> {config.get(k)}" for k in keys if old.get(k) != config.get(k)]
    if diff:
        raise ArtifactError(f"{out_dir} holds a {stage} checkpoint trained with other settings "
                            f"({'; '.join(diff)}); pass another --run-dir, or delete {out_dir} to start over")
