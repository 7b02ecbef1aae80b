"""V: the paper's convolutional VAE, 64x64x3 frame <-> z, with its losses.

Encoder: conv 32, 64, 128, 256 (kernel 4, stride 2, ReLU) -> 1024 -> dense mu, logvar (z_size each).
Decoder: dense 1024 -> deconv 128 k5, 64 k5, 32 k6 (ReLU), 3 k6 (sigmoid), all stride 2 -> 64x64x3.
Loss: summed squared error per frame + KL per frame clamped below ``kl_tolerance * z_size``.
Training it is the train-vae stage (``core.pipeline.train_vae``).
"""

from __future__ import annotations

from pathlib import Path

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import VAEConfig  # noqa: E402
from core.envs.env import FRAME_SIZE  # noqa: E402
from core.metrics import Training, VaeMetric  # noqa: E402
from core.storage.artifacts import (  # noqa: E402
    WEIGHT_FILES,
    ArtifactError,
    checked_config,
    one_line,
    read_json,
    read_meta,
    require_weights,
)

WEIGHTS = WEIGHT_FILES["vae"]
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
        self.loss_tracker = keras.metrics.Mean(name=Training.LOSS.value)
        self.r_loss_tracker = keras.metrics.Mean(name=VaeMetric.RECONSTRUCTION.value)
        self.kl_tracker = keras.metrics.Mean(name=VaeMetric.KL.value)
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


def load_vae(vae_dir: Path | str, expect_z: int | None = None) -> ConvVAE:
    """Load a trained VAE from its artifact folder, checking it is one and (optionally) its z size."""
    vae_dir = Path(vae_dir)
    if (vae_dir / "meta.json").exists():  # absent while a first training run is still going
        read_meta(vae_dir, "vae")
    require_weights(vae_dir, "vae")
    config = checked_config(VAEConfig, read_json(vae_dir / "config.json", "VAE config"), vae_dir / "config.json",
                            "VAE config")
    if expect_z is not None and config.z_size != expect_z:
        raise ArtifactError(f"{vae_dir}: VAE has z = {config.z_size} but {expect_z} was expected; retrain "
                            "the later stages with this VAE or point to the matching one")
    model = ConvVAE(config.z_size, config.kl_tolerance)
    try:
        model.load_weights(vae_dir / WEIGHTS)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{vae_dir / WEIGHTS}: weights do not fit a z = {config.z_size} VAE ({one_line(e)})") from None
    return model
