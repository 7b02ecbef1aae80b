"""Stage 2, train-vae: V on the collected frames, streamed from disk.

Episodes are split into training and held-out ones once (the split is kept in the checkpoint, so a resume
validates on the same frames); each epoch shuffles frames through a buffer, and every checkpoint is
atomic, so a kill at any moment resumes where the last one left off. The model and its losses live in
``core.models.vae``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import VAEConfig, to_dict, validate  # noqa: E402
from core.envs.env import FRAME_SIZE  # noqa: E402
from core.models.vae import WEIGHTS, ConvVAE, kl_divergence, reconstruction_loss, to_float
from core.progress import ProgressCallback, keep_going  # noqa: E402
from core.storage.artifacts import ArtifactError, History, RunLock, atomic_write_json, hash_files, write_meta
from core.storage.checkpoints import (check_config_matches, check_new_run, checkpoint_start, checkpoint_state,
                                      mark_unfinished, previous_metrics, recorded_heldout, resume_or_start,
                                      save_checkpoint, starts_over_its_own_weights)
from core.storage.dataset import count_frames, iter_frames, load_episode, split_holdout, usable_episodes  # noqa: E402


def save_vae_artifact_config(out_dir: Path, config: VAEConfig) -> None:
    atomic_write_json(out_dir / "config.json", to_dict(config))


def _frames_dataset(paths: list[Path], config: VAEConfig, seed: int) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    spec = tf.TensorSpec((FRAME_SIZE, FRAME_SIZE, 3), tf.uint8)
    ds = tf.data.Dataset.from_generator(
        lambda: iter_frames(paths, rng, config.frame_stride, config.shuffle_buffer), output_signature=spec)
    return ds.batch(config.batch_size, drop_remainder=False).map(to_float).prefetch(2)


def heldout_frames(paths: list[Path], limit: int = 2000, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` uint8 frames spread over the held-out episodes, for validation."""
    if not paths:
        return np.zeros((0, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    per = max(1, limit // len(paths))
    rng = np.random.default_rng(seed)
    frames = []
    for p in paths:
        obs = load_episode(p).obs
        frames.append(obs[np.sort(rng.choice(len(obs), size=min(per, len(obs)), replace=False))])
    return np.concatenate(frames)[:limit]


def evaluate_vae(model: ConvVAE, frames: np.ndarray, batch: int = 200) -> dict:
    """Mean reconstruction loss and KL (unclamped) on uint8 frames, with z = mu."""
    if len(frames) == 0:
        return {}
    r, kl = [], []
    for i in range(0, len(frames), batch):
        x = to_float(frames[i:i + batch])
        mu, logvar = model.encode(x)
        r.append(reconstruction_loss(x, model.decode(mu)).numpy())
        kl.append(kl_divergence(mu, logvar).numpy())
    return {"val_r_loss": float(np.concatenate(r).mean()), "val_kl": float(np.concatenate(kl).mean())}


def train_vae(config: VAEConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Train V on the collected frames, streaming them from disk; resumes from ``<out_dir>/checkpoint``.

    Returns the final metrics (train loss, reconstruction, KL, held-out reconstruction and KL).
    """
    validate(config)
    with RunLock(config.out_dir, "train-vae"):
        return _train_vae(config, on_progress)


def _train_vae(config: VAEConfig, on_progress: ProgressCallback) -> dict:
    out_dir = config.out_dir
    check_new_run(out_dir, WEIGHTS, config.init_from, "VAE", {"z_size": config.z_size})
    check_config_matches(out_dir, to_dict(config), ("z_size",), "VAE")  # before reading every episode
    paths = usable_episodes(config.data_dir, config.on_corrupt, config.max_episodes)
    train_paths, held_paths = split_holdout(paths, config.holdout, config.seed,
                                            recorded_heldout(checkpoint_state(out_dir)))
    heldout = [str(Path(p).resolve()) for p in held_paths]
    frames_per_epoch = count_frames(train_paths, config.frame_stride)
    batches_per_epoch = -(-frames_per_epoch // config.batch_size)
    total = batches_per_epoch * config.epochs

    keras.utils.set_random_seed(config.seed)
    model = ConvVAE(config.z_size, config.kl_tolerance)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    model.compile(optimizer=optimizer)
    state, started_from = resume_or_start(out_dir, model, optimizer, WEIGHTS, config.init_from, "vae")
    config = dataclasses.replace(config, init_from=started_from)
    lineage = state.get("lineage") or []
    step = resumed_from = int(state["step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if step == 0 and starts_over_its_own_weights(out_dir, started_from):
        checkpoint_start(out_dir, model, optimizer, {"step": 0, "total": total, "lineage": lineage,
                                                      "heldout": heldout}, WEIGHTS)
    save_vae_artifact_config(out_dir, config)
    history = History(out_dir / "history.jsonl")
    history.truncate_after("step", step)
    data_hash = hash_files(paths)
    held = heldout_frames(held_paths, seed=config.seed)
    train_fn = tf.function(model.train_step)
    metrics: dict = {}
    last_ckpt = step
    stopped = False
    started = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_ckpt
        save_checkpoint(out_dir, model, optimizer,
                        {"step": step, "total": total, "lineage": lineage, "heldout": heldout}, WEIGHTS)
        last_ckpt = step

    if not on_progress(step, total, {}):
        stopped = True
    if step < total and not stopped:
        mark_unfinished(out_dir)
    while step < total and not stopped:
        epoch = step // batches_per_epoch
        remaining = batches_per_epoch - step % batches_per_epoch
        for m in model.metrics:
            m.reset_state()
        # A fresh shuffle per (epoch, step): a resumed epoch trains on its remaining batch count.
        batches = _frames_dataset(train_paths, config, seed=config.seed * 100003 + epoch * 1009 + step)
        step_before = step
        for x in batches.take(remaining):
            logs = train_fn(x)
            step += 1
            metrics = {k: float(v) for k, v in logs.items()}
            metrics["epoch"] = epoch + (step - epoch * batches_per_epoch) / batches_per_epoch
            if step % 10 == 0 or step == total:
                history.append({"step": step, **metrics, "time": round(time.monotonic() - started, 2)})
            if step - last_ckpt >= config.checkpoint_every:
                checkpoint()
            if not on_progress(step, total, metrics):
                stopped = True
                break
        if step == step_before and not stopped:
            raise ArtifactError(f"{config.data_dir}: no frames could be read from the training episodes")
        if step % batches_per_epoch == 0 or step == total:
            val = evaluate_vae(model, held)
            metrics.update(val)
            if val:
                history.append({"step": step, "epoch": step / batches_per_epoch, **val})
    checkpoint()
    # No batch trained in this call (the run was complete, or stopped at once): the weights are the ones
    # the previous call's training metrics describe.
    final = previous_metrics(out_dir, step) if resumed_from and step == resumed_from else {}
    final.update(metrics)
    final.update(evaluate_vae(model, held))
    final.update({"step": step, "total_steps": total, "resumed_from": resumed_from, "complete": step >= total,
                  "train_frames": frames_per_epoch * config.frame_stride, "train_episodes": len(train_paths),
                  "heldout_episodes": len(held_paths)})
    write_meta(out_dir, "vae", to_dict(config), final, seed=config.seed, data_hash=data_hash,
               extra={"lineage": lineage})
    return final
