"""M: the MDN-RNN, with the mixture-density loss.

An LSTM over ``[z_t, a_t]`` predicts, for every latent dimension, a mixture of ``K`` Gaussians over
``z_{t+1}`` (``log_pi``, ``mu``, ``log_sigma``: float32 (..., z_size, K)), plus two heads the original
CarRacing code lacks and dreams need: the next reward and the probability that the episode ends.
Training it is the train-rnn stage (``core.pipeline.train_rnn``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import RNNConfig  # noqa: E402
from core.envs.actions import ACTION_SIZE
from core.metrics import RNN_LOSSES, Training
from core.storage.artifacts import (  # noqa: E402
    WEIGHT_FILES,
    ArtifactError,
    checked_config,
    one_line,
    read_json,
    read_meta,
    require_weights,
)

log = logging.getLogger(__name__)


WEIGHTS = WEIGHT_FILES["rnn"]
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
REWARD_CLIP = 10.0  # rewards are clipped to [-REWARD_CLIP, REWARD_CLIP] for the reward head


def mdn_nll(y: tf.Tensor, log_pi: tf.Tensor, mu: tf.Tensor, log_sigma: tf.Tensor) -> tf.Tensor:
    """Negative log-likelihood of ``y`` under the per-dimension Gaussian mixtures.

    ``y``: float32 (..., z_size); ``log_pi``, ``mu``, ``log_sigma``: float32 (..., z_size, K), ``log_pi``
    normalised over K. Returns float32 (..., z_size): -log sum_k pi_k N(y; mu_k, sigma_k).
    """
    y = tf.expand_dims(y, -1)
    log_normal = -0.5 * tf.square((y - mu) / tf.exp(log_sigma)) - log_sigma - LOG_SQRT_2PI
    return -tf.reduce_logsumexp(log_pi + log_normal, axis=-1)


@keras.saving.register_keras_serializable(package="worldmodels")
class MDNRNN(keras.Model):
    """``call([z, a] float32 (B, T, z_size + 3))`` -> dict of ``log_pi``, ``mu``, ``log_sigma``
    (B, T, z_size, K), ``reward`` (B, T) and ``done_logit`` (B, T)."""

    def __init__(self, z_size: int = 32, hidden: int = 256, mixtures: int = 5, reward_weight: float = 1.0,
                 done_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.z_size, self.hidden, self.mixtures = z_size, hidden, mixtures
        self.reward_weight, self.done_weight = reward_weight, done_weight
        self.lstm = keras.layers.LSTM(hidden, return_sequences=True, return_state=True, name="lstm")
        self.mdn = keras.layers.Dense(3 * z_size * mixtures, name="mdn")
        self.reward_head = keras.layers.Dense(1, name="reward")
        self.done_head = keras.layers.Dense(1, name="done")
        self.trackers = {name.value: keras.metrics.Mean(name=name.value) for name in (Training.LOSS, *RNN_LOSSES)}
        self.build((None, None, z_size + ACTION_SIZE))

    def build(self, input_shape):
        self.call(keras.KerasTensor(input_shape))
        self.built = True

    def get_config(self):
        return {"z_size": self.z_size, "hidden": self.hidden, "mixtures": self.mixtures,
                "reward_weight": self.reward_weight, "done_weight": self.done_weight, **super().get_config()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def heads(self, h_seq):
        shape = keras.ops.shape(h_seq)
        params = keras.ops.reshape(self.mdn(h_seq), (shape[0], shape[1], self.z_size, self.mixtures, 3))
        log_pi = keras.ops.log_softmax(params[..., 0], axis=-1)
        return {"log_pi": log_pi, "mu": params[..., 1], "log_sigma": params[..., 2],
                "reward": self.reward_head(h_seq)[..., 0], "done_logit": self.done_head(h_seq)[..., 0]}

    def call(self, x, initial_state=None, return_state=False):
        h_seq, h, c = self.lstm(x, initial_state=initial_state)
        out = self.heads(h_seq)
        if return_state:
            return out, (h, c)
        return out

    def losses_for(self, x, z_next, reward, done, mask):
        out = self(x)
        m = mask
        n = tf.maximum(tf.reduce_sum(m), 1.0)
        mdn = tf.reduce_sum(tf.reduce_mean(mdn_nll(z_next, out["log_pi"], out["mu"], out["log_sigma"]),
                                           axis=-1) * m) / n
        rew = tf.reduce_sum(tf.square(out["reward"] - reward) * m) / n
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=done, logits=out["done_logit"])
        dn = tf.reduce_sum(bce * m) / n
        return mdn, rew, dn

    def train_step(self, data):
        x, z_next, reward, done, mask = data
        with tf.GradientTape() as tape:
            mdn, rew, dn = self.losses_for(x, z_next, reward, done, mask)
            loss = mdn + self.reward_weight * rew + self.done_weight * dn
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        for name, value in zip((Training.LOSS, *RNN_LOSSES), (loss, mdn, rew, dn)):
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}


def load_rnn(rnn_dir: Path | str, expect_z: int | None = None) -> MDNRNN:
    """Load a trained MDN-RNN from its artifact folder, checking its z size against V's."""
    rnn_dir = Path(rnn_dir)
    if (rnn_dir / "meta.json").exists():
        read_meta(rnn_dir, "rnn")
    require_weights(rnn_dir, "rnn")
    info = read_json(rnn_dir / "config.json", "MDN-RNN config")
    config = checked_config(RNNConfig, info, rnn_dir / "config.json", "MDN-RNN config")
    z_size = info.get("z_size")
    if not isinstance(z_size, int) or z_size < 1:
        raise ArtifactError(f"{rnn_dir / 'config.json'}: MDN-RNN config has no z size (z_size: {z_size!r}); "
                            "retrain it with python -m core train-rnn")
    if expect_z is not None and z_size != expect_z:
        raise ArtifactError(f"{rnn_dir}: MDN-RNN was trained on z = {z_size} but the VAE has z = {expect_z}; "
                            "retrain it with python -m core train-rnn on this VAE")
    model = MDNRNN(z_size, config.hidden, config.mixtures, config.reward_weight, config.done_weight)
    try:
        model.load_weights(rnn_dir / WEIGHTS)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{rnn_dir / WEIGHTS}: weights do not fit this MDN-RNN ({one_line(e)})") from None
    return model

