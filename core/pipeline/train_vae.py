"""Stage 2, train-vae: V on the collected frames, streamed from disk.

Episodes are split into training and held-out ones once (the split is kept in the checkpoint, so a resume
validates on the same frames); each epoch shuffles frames through a buffer, and every checkpoint is
atomic, so a kill at any moment resumes where the last one left off. The model and its losses live in
``core.models.vae``, the training loop (checkpoints, resume, progress, meta.json) in ``core.pipeline.training``.
"""

from __future__ import annotations

from pathlib import Path

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import VAEConfig, to_dict, validate  # noqa: E402
from core.envs.env import FRAME_SIZE  # noqa: E402
from core.metrics import VaeMetric  # noqa: E402
from core.models.vae import WEIGHTS, ConvVAE, kl_divergence, reconstruction_loss, to_float
from core.pipeline.training import TrainingPlan, train  # noqa: E402
from core.progress import ProgressCallback, keep_going  # noqa: E402
from core.storage.artifacts import ArtifactError, RunLock, hash_files  # noqa: E402
from core.storage.checkpoints import check_config_matches, check_new_run, checkpoint_state, recorded_heldout
from core.storage.dataset import count_frames, iter_frames, load_episode, split_holdout, usable_episodes  # noqa: E402


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
    return {VaeMetric.HELD_OUT_RECONSTRUCTION: float(np.concatenate(r).mean()),
            VaeMetric.HELD_OUT_KL: float(np.concatenate(kl).mean())}


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
    frames_per_epoch = count_frames(train_paths, config.frame_stride)
    batches_per_epoch = -(-frames_per_epoch // config.batch_size)
    held = heldout_frames(held_paths, seed=config.seed)

    def batches(step: int, count: int):
        epoch = step // batches_per_epoch
        # A fresh shuffle per (epoch, step): a resumed epoch trains on its remaining batch count.
        read = False
        for x in _frames_dataset(train_paths, config, seed=config.seed * 100003 + epoch * 1009 + step).take(count):
            read = True
            yield x
        if not read:
            raise ArtifactError(f"{config.data_dir}: no frames could be read from the training episodes")

    keras.utils.set_random_seed(config.seed)
    # One draw outside the graph makes Keras's global seed generator (V's sampling uses it) now: made in the
    # train step's first trace instead, its new variable would have tf.function trace the step a second time.
    keras.random.normal(())
    model = ConvVAE(config.z_size, config.kl_tolerance)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    return train(TrainingPlan(
        kind="vae", weights=WEIGHTS, out_dir=out_dir, model=model, config=to_dict(config), seed=config.seed,
        epochs=config.epochs, batches_per_epoch=batches_per_epoch, checkpoint_every=config.checkpoint_every,
        batches=batches, heldout_metrics=lambda vae: evaluate_vae(vae, held),
        state={"heldout": [str(Path(p).resolve()) for p in held_paths]}, data_hash=hash_files(paths),
        summary={"train_frames": frames_per_epoch * config.frame_stride, "train_episodes": len(train_paths),
                 "heldout_episodes": len(held_paths)},
        log_every=10, heldout_apart=True), on_progress)
