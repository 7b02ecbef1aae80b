"""V: the paper's convolutional VAE, 64x64x3 frame <-> z, and stage 2, train-vae.

Encoder: conv 32, 64, 128, 256 (kernel 4, stride 2, ReLU) -> 1024 -> dense mu, logvar (z_size each).
Decoder: dense 1024 -> deconv 128 k5, 64 k5, 32 k6 (ReLU), 3 k6 (sigmoid), all stride 2 -> 64x64x3.
Loss: summed squared error per frame + KL per frame clamped below ``kl_tolerance * z_size``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from core.training import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.artifacts import (ArtifactError, History, RunLock, atomic_write_json, checked_config,  # noqa: E402
                            hash_files, read_json, read_meta, write_meta)
from core.config import VAEConfig, to_dict, validate  # noqa: E402
from core.dataset import count_frames, iter_frames, load_episode, split_holdout, usable_episodes  # noqa: E402
from core.env import FRAME_SIZE  # noqa: E402
from core.progress import ProgressCallback, keep_going  # noqa: E402
from core.training import (check_config_matches, check_new_run, checkpoint_start, previous_metrics,  # noqa: E402
                           checkpoint_state, mark_unfinished, recorded_heldout, resume_or_start,
                           save_checkpoint, starts_over_its_own_weights)

WEIGHTS = "vae.weights.h5"
ENCODER_CONVS = (32, 64, 128, 256)  # filters, kernel 4, stride 2
DECODER_DECONVS = ((128, 5), (64, 5), (32, 6))  # (filters, kernel), stride 2, then 3 filters kernel 6


def reconstruction_loss(x: tf.Tensor, x_hat: tf.Tensor) -> tf.Tensor:
    """Summed squared error per frame, float32 (N,); x, x_hat float32 (N, 64, 64, 3) in [0, 1]."""
    return tf.reduce_sum(tf.square(x - x_hat), axis=[1, 2, 3])


def kl_divergence(mu: tf.Tensor, logvar: tf.Tensor) -> tf.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per frame, float32 (N,)."""
    return -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)


def kl_with_tolerance(mu: tf.Tensor, logvar: tf.Tensor, kl_tolerance: float) -> tf.Tensor:
    """Per-frame KL clamped from below at ``kl_tolerance * z_size`` nats: the paper's free bits."""
    z_size = mu.shape[-1]
    return tf.maximum(kl_divergence(mu, logvar), kl_tolerance * z_size)


@keras.saving.register_keras_serializable(package="worldmodels")
class ConvVAE(keras.Model):
    """The ConvVAE. ``encode``: float32 (N, 64, 64, 3) in [0, 1] -> (mu, logvar) float32 (N, z_size)."""

    def __init__(self, z_size: int = 32, kl_tolerance: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.z_size = z_size
        self.kl_tolerance = kl_tolerance
        self.encoder_convs = [keras.layers.Conv2D(f, 4, strides=2, activation="relu", name=f"enc_conv{i}")
                              for i, f in enumerate(ENCODER_CONVS)]
        self.flatten = keras.layers.Flatten()
        self.dense_mu = keras.layers.Dense(z_size, name="enc_mu")
        self.dense_logvar = keras.layers.Dense(z_size, name="enc_logvar")
        self.decoder_dense = keras.layers.Dense(1024, name="dec_dense")
        self.decoder_deconvs = [keras.layers.Conv2DTranspose(f, k, strides=2, activation="relu",
                                                             name=f"dec_deconv{i}")
                                for i, (f, k) in enumerate(DECODER_DECONVS)]
        self.decoder_out = keras.layers.Conv2DTranspose(3, 6, strides=2, activation="sigmoid", name="dec_out")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.r_loss_tracker = keras.metrics.Mean(name="r_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.build((None, FRAME_SIZE, FRAME_SIZE, 3))

    def build(self, input_shape):
        x = keras.KerasTensor(input_shape)
        mu, _ = self.encode(x)
        self.decode(mu)
        self.built = True

    def get_config(self):
        return {"z_size": self.z_size, "kl_tolerance": self.kl_tolerance, **super().get_config()}

    @property
    def metrics(self):
        return [self.loss_tracker, self.r_loss_tracker, self.kl_tracker]

    def encode(self, x):
        for conv in self.encoder_convs:
            x = conv(x)
        x = self.flatten(x)
        return self.dense_mu(x), self.dense_logvar(x)

    def decode(self, z):
        x = self.decoder_dense(z)
        x = keras.ops.reshape(x, (-1, 1, 1, 1024))
        for deconv in self.decoder_deconvs:
            x = deconv(x)
        return self.decoder_out(x)

    def sample_z(self, mu, logvar, seed=None):
        eps = keras.random.normal(keras.ops.shape(mu), seed=seed)
        return mu + keras.ops.exp(0.5 * logvar) * eps

    def call(self, x, training=False):
        mu, logvar = self.encode(x)
        z = self.sample_z(mu, logvar) if training else mu
        return self.decode(z)

    def compute_losses(self, x, training: bool):
        mu, logvar = self.encode(x)
        z = self.sample_z(mu, logvar) if training else mu
        x_hat = self.decode(z)
        r_loss = tf.reduce_mean(reconstruction_loss(x, x_hat))
        kl = tf.reduce_mean(kl_with_tolerance(mu, logvar, self.kl_tolerance))
        return r_loss, kl

    def train_step(self, x):
        with tf.GradientTape() as tape:
            r_loss, kl = self.compute_losses(x, training=True)
            loss = r_loss + kl
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        self.r_loss_tracker.update_state(r_loss)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}


def to_float(frames: np.ndarray | tf.Tensor) -> tf.Tensor:
    """uint8 frames -> float32 in [0, 1]."""
    return tf.cast(frames, tf.float32) / 255.0


def save_vae_artifact_config(out_dir: Path, config: VAEConfig) -> None:
    atomic_write_json(out_dir / "config.json", to_dict(config))


def load_vae(vae_dir: Path | str, expect_z: int | None = None) -> ConvVAE:
    """Load a trained VAE from its artifact folder, checking it is one and (optionally) its z size."""
    vae_dir = Path(vae_dir)
    if (vae_dir / "meta.json").exists():  # absent while a first training run is still going
        read_meta(vae_dir, "vae")
    if not (vae_dir / WEIGHTS).exists():
        raise ArtifactError(f"{vae_dir}: no VAE weights ({WEIGHTS}); train one first "
                            f"(python -m core train-vae)")
    config = checked_config(VAEConfig, read_json(vae_dir / "config.json", "VAE config"), vae_dir / "config.json",
                            "VAE config")
    if expect_z is not None and config.z_size != expect_z:
        raise ArtifactError(f"{vae_dir}: VAE has z = {config.z_size} but {expect_z} was expected; retrain "
                            "the later stages with this VAE or point to the matching one")
    model = ConvVAE(config.z_size, config.kl_tolerance)
    try:
        model.load_weights(vae_dir / WEIGHTS)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{vae_dir / WEIGHTS}: weights do not fit a z = {config.z_size} VAE ({e})") from None
    return model


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
