"""The agent's per-step path without Keras: V's encoder, one LSTM step of M, and C.

Calling Keras once per env step costs 8-11 ms (eager) to 106-119 ms (``predict``; BENCHMARKS.md). ``Agent``
runs the step as one ONNX Runtime graph built from the trained weights (``core.models.step_graph``, 0.45 ms
with crop and resize); the plain NumPy mirrors below (0.8 ms) are its reference and serve M's dreams.
``tests/test_agent.py`` checks both against the Keras models.

Weights travel as ``WorldModelWeights`` (a dict of float32 arrays), so worker processes never import
TensorFlow: the parent extracts them once and sends them along.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from core import CODE_ROOT
from core.envs.env import preprocess
from core.machine import SMALL_MACHINE_ENV, small_machine
from core.models.controller import Controller, load_controller
from core.models.step_graph import step_session
from core.storage import weights_cache
from core.storage.artifacts import ArtifactError, require_weights

log = logging.getLogger(__name__)

WorldModelWeights = dict  # str -> float32 ndarray; see extract_weights


def extract_weights(vae, rnn) -> WorldModelWeights:
    """The arrays the NumPy path needs, from a ConvVAE and an MDNRNN (Keras)."""
    w: WorldModelWeights = {}
    for i, conv in enumerate(vae.encoder_convs):
        kernel = conv.kernel.numpy()  # (4, 4, c_in, c_out)
        w[f"conv{i}_w"] = kernel.reshape(-1, kernel.shape[-1]).astype(np.float32)  # rows ordered (kh, kw, c_in)
        w[f"conv{i}_b"] = conv.bias.numpy().astype(np.float32)
    w["mu_w"] = vae.dense_mu.kernel.numpy().astype(np.float32)
    w["mu_b"] = vae.dense_mu.bias.numpy().astype(np.float32)
    cell = rnn.lstm.cell
    w["lstm_kernel"] = cell.kernel.numpy().astype(np.float32)  # (z + 3, 4h), gates i, f, c, o
    w["lstm_recurrent"] = cell.recurrent_kernel.numpy().astype(np.float32)  # (h, 4h)
    w["lstm_bias"] = cell.bias.numpy().astype(np.float32)
    w["mdn_w"] = rnn.mdn.kernel.numpy().astype(np.float32)
    w["mdn_b"] = rnn.mdn.bias.numpy().astype(np.float32)
    w["reward_w"] = rnn.reward_head.kernel.numpy().astype(np.float32)
    w["reward_b"] = rnn.reward_head.bias.numpy().astype(np.float32)
    w["done_w"] = rnn.done_head.kernel.numpy().astype(np.float32)
    w["done_b"] = rnn.done_head.bias.numpy().astype(np.float32)
    w["mixtures"] = np.array(rnn.mixtures)
    return w


def _conv_s2k4(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid 4x4 stride-2 convolution + ReLU. x float32 (N, H, W, C) -> (N, H', W', C_out)."""
    n, height, width, c = x.shape
    ho, wo = (height - 4) // 2 + 1, (width - 4) // 2 + 1
    s = x.strides
    # Patches as a strided view (N, ho, wo, 4, 4, C); one copy into (N * ho * wo, 16 C) for the matmul.
    patches = np.lib.stride_tricks.as_strided(
        x, shape=(n, ho, wo, 4, 4, c), strides=(s[0], 2 * s[1], 2 * s[2], s[1], s[2], s[3]), writeable=False)
    out = patches.reshape(n * ho * wo, 16 * c) @ w
    out += b
    np.maximum(out, 0.0, out=out)
    return out.reshape(n, ho, wo, -1)


def encode_mu(w: WorldModelWeights, frames: np.ndarray) -> np.ndarray:
    """uint8 (N, 64, 64, 3) frames -> float32 (N, z_size) latent means."""
    x = frames.astype(np.float32) * np.float32(1.0 / 255.0)
    for i in range(4):
        x = _conv_s2k4(x, w[f"conv{i}_w"], w[f"conv{i}_b"])
    return x.reshape(len(x), -1) @ w["mu_w"] + w["mu_b"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


def lstm_step(w: WorldModelWeights, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step. x float32 (N, z + 3), h and c float32 (N, hidden) -> new (h, c)."""
    gates = x @ w["lstm_kernel"] + h @ w["lstm_recurrent"] + w["lstm_bias"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return h, c


def remember(w: WorldModelWeights, z: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M's memory after reading a real past: codes z float32 (T, z) and the actions taken after each (T, 3)
    -> (h, c) float32 (hidden,) each, the state C sees with the next code (zeros for T = 0)."""
    hidden = w["lstm_recurrent"].shape[0]
    h = np.zeros((1, hidden), np.float32)
    c = h.copy()
    for t in range(len(z)):
        h, c = lstm_step(w, np.concatenate([z[t], actions[t]])[None].astype(np.float32), h, c)
    return h[0], c[0]


def mdn_heads(w: WorldModelWeights, h: np.ndarray) -> dict:
    """M's outputs for hidden states h (N, hidden): ``log_pi``, ``mu``, ``log_sigma`` (N, z, K), ``reward``
    (N,) and ``done`` probability (N,)."""
    k = int(w["mixtures"])
    params = (h @ w["mdn_w"] + w["mdn_b"]).reshape(len(h), -1, k, 3)
    logits = params[..., 0]
    log_pi = logits - logits.max(-1, keepdims=True)
    log_pi -= np.log(np.exp(log_pi).sum(-1, keepdims=True))
    return {"log_pi": log_pi, "mu": params[..., 1], "log_sigma": params[..., 2],
            "reward": (h @ w["reward_w"] + w["reward_b"])[:, 0],
            "done": _sigmoid(h @ w["done_w"] + w["done_b"])[:, 0]}


def sample_z(heads: dict, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Sample the next z from M's mixtures at temperature ``tau`` (the paper's: logits / tau, sigma * sqrt(tau)).

    ``tau = 0`` takes the most likely component's mean. Returns float32 (N, z).
    """
    log_pi, mu, log_sigma = heads["log_pi"], heads["mu"], heads["log_sigma"]
    if tau <= 0:
        k = log_pi.argmax(-1)
        return np.take_along_axis(mu, k[..., None], -1)[..., 0].astype(np.float32)
    logits = log_pi / tau
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = rng.random(p.shape[:-1])[..., None]
    k = np.minimum((p.cumsum(-1) < u).sum(-1), p.shape[-1] - 1)
    m = np.take_along_axis(mu, k[..., None], -1)[..., 0]
    s = np.exp(np.take_along_axis(log_sigma, k[..., None], -1)[..., 0]) * np.sqrt(tau)
    return (m + s * rng.standard_normal(m.shape)).astype(np.float32)


class Agent:
    """V + M + C for one or more envs. ``act(obs)`` takes uint8 (96, 96, 3) or (N, 96, 96, 3) observations
    and returns float32 (3,) or (N, 3) actions; ``z`` and ``h`` hold the latest latent and hidden state.
    The step runs in ONNX Runtime (``core.models.step_graph``), one session shared by all agents on ``weights``."""

    def __init__(self, weights: WorldModelWeights, params: np.ndarray, n_envs: int | None = None):
        self.w = weights
        self.z_size = weights["mu_w"].shape[1]
        self.hidden = weights["lstm_recurrent"].shape[0]
        self.session = step_session(weights)
        self.controller = Controller(self.z_size, self.hidden, params)
        self.n_envs = n_envs
        self.reset()

    @classmethod
    def load(cls, model_dir: Path | str = "models", n_envs: int | None = None) -> "Agent":
        """Load V, M and C from ``model_dir`` (vae/, rnn/, controller/), checking they fit together."""
        return cls(*load_world_model(model_dir), n_envs)

    def set_params(self, params: np.ndarray) -> None:
        self.controller.set_params(params)

    def reset(self) -> None:
        n = 1 if self.n_envs is None else self.n_envs
        self.h = np.zeros((n, self.hidden), np.float32)
        self.c = np.zeros((n, self.hidden), np.float32)
        self.z = np.zeros((n, self.z_size), np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        single = obs.ndim == 3
        frames = preprocess(obs)[None] if single else np.stack([preprocess(o) for o in obs])
        return self.act_frames(frames)[0] if single else self.act_frames(frames)

    def act_frames(self, frames: np.ndarray) -> np.ndarray:
        """Like ``act`` on already preprocessed uint8 (N, 64, 64, 3) frames; returns (N, 3)."""
        if len(frames) != len(self.h):
            raise ValueError(f"agent holds state for {len(self.h)} envs, got {len(frames)} frames")
        c = self.controller
        action, self.z, self.h, self.c = self.session.run(frames, self.h, self.c, c.weight_t, c.bias)
        return action


def load_world_model(model_dir: Path | str) -> tuple[WorldModelWeights, np.ndarray]:
    """V's and M's NumPy weights and C's parameters from ``model_dir``, checked to fit together."""
    weights = load_world_model_weights(model_dir)
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    return weights, load_controller(Path(model_dir) / "controller", z_size, hidden).get_params()


def load_world_model_weights(model_dir: Path | str) -> WorldModelWeights:
    """V's and M's NumPy weights from ``model_dir``: from the weights cache (``core.storage.weights_cache``) when it
    holds those of the files now there, else loaded with Keras, extracted, and cached for the next time."""
    model_dir = Path(model_dir)
    key = weights_cache.fingerprint(model_dir)
    cached = weights_cache.read(key) if key else None
    if cached is not None:
        return cached
    if key and small_machine() and "tensorflow" not in sys.modules:
        # TensorFlow stays in memory once imported (~0.65 GB): on a small machine a child process pays it,
        # fills the cache and exits. If it cannot, the load below runs here and reports why.
        _cache_in_child(model_dir)
        cached = weights_cache.read(key)
        if cached is not None:
            return cached
    if key is None:  # a file is missing: missing weights are named without loading TensorFlow (5-6 s of a core)
        for part in ("vae", "rnn"):
            require_weights(model_dir / part, part)
    try:
        from core.models.mdnrnn import load_rnn
        from core.models.vae import load_vae
    except ImportError as e:
        if key is None:  # a file is missing: nothing to look up without it
            missing = [name for name in weights_cache.SOURCES if not (model_dir / name).is_file()]
            raise ArtifactError(f"{model_dir}: {', '.join(missing)} missing; a world model needs V's and M's "
                                "configs, metadata and weights") from None
        entry = (weights_cache.entry_path(key) if key else None) or "no cache folder"
        raise ArtifactError(f"{model_dir}: V and M are not in the weights cache ({entry}), and loading them "
                            f"needs TensorFlow ({e}); load this world model once where TensorFlow is installed "
                            f"and copy its cache entry here (the cache folder is ${weights_cache.CACHE_ENV}, "
                            "else ~/.cache/world-models)") from None
    vae = load_vae(model_dir / "vae")
    rnn = load_rnn(model_dir / "rnn", expect_z=vae.z_size)
    weights = extract_weights(vae, rnn)
    if key and weights_cache.fingerprint(model_dir) == key:  # not rewritten while loading (a checkpoint, say)
        weights_cache.write(weights, key)
    return weights


CACHE_CHILD_TIMEOUT_S = 600  # seconds a child loading V and M may take (TensorFlow's import on a busy machine)


def _cache_in_child(model_dir: Path) -> None:
    """Load ``model_dir``'s V and M in a child process, which writes them to the weights cache (the caller
    reads the cache afterwards: that is the test of success). The child runs with the small-machine setting
    off, so it loads in place."""
    env = dict(os.environ, **{SMALL_MACHINE_ENV: "0"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from core.models.agent import "
                               "load_world_model_weights; load_world_model_weights(sys.argv[1])",
                               str(model_dir.resolve())],
                              cwd=CODE_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=CACHE_CHILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("loading %s in a child process failed (%s); loading it here", model_dir, e)
        return
    if done.returncode != 0:
        log.warning("loading %s in a child process failed (exit %s); loading it here:\n%s", model_dir,
                    done.returncode, done.stderr.decode(errors="replace")[-2000:])
