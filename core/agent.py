"""The agent's per-step path in plain NumPy: V's encoder, one LSTM step of M, and C.

Calling Keras once per env step costs 17 ms (eager) to 88 ms (``predict``) here; these NumPy mirrors of
the trained weights cost well under a millisecond, so a rollout's time is the env's. ``tests/test_agent.py``
checks them against the Keras models.

Weights travel as ``WorldModelWeights`` (a dict of float32 arrays), so worker processes never import
TensorFlow: the parent extracts them once and sends them along.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from core.artifacts import atomic_save_npz
from core.controller import Controller, load_controller
from core.env import preprocess

WorldModelWeights = dict  # str -> float32 ndarray; see extract_weights

log = logging.getLogger(__name__)


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
    and returns float32 (3,) or (N, 3) actions; ``z`` and ``h`` hold the latest latent and hidden state."""

    def __init__(self, weights: WorldModelWeights, params: np.ndarray, n_envs: int | None = None):
        self.w = weights
        self.z_size = weights["mu_w"].shape[1]
        self.hidden = weights["lstm_recurrent"].shape[0]
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
        self.z = encode_mu(self.w, frames)
        action = self.controller.act(self.z, self.h)
        self.h, self.c = lstm_step(self.w, np.concatenate([self.z, action], axis=1), self.h, self.c)
        return action


def load_world_model(model_dir: Path | str) -> tuple[WorldModelWeights, np.ndarray]:
    """V's and M's NumPy weights and C's parameters from ``model_dir``, checked to fit together."""
    weights = load_world_model_weights(model_dir)
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    return weights, load_controller(Path(model_dir) / "controller", z_size, hidden).get_params()


def load_world_model_weights(model_dir: Path | str) -> WorldModelWeights:
    """V's and M's NumPy weights from ``model_dir``: from the weights cache when it holds those of the files
    now there, else loaded with Keras, extracted, and cached for the next time."""
    model_dir = Path(model_dir)
    fingerprint = weights_fingerprint(model_dir)
    cached = read_weights_cache(fingerprint) if fingerprint else None
    if cached is not None:
        return cached
    from core.mdnrnn import load_rnn
    from core.vae import load_vae
    vae = load_vae(model_dir / "vae")
    rnn = load_rnn(model_dir / "rnn", expect_z=vae.z_size)
    weights = extract_weights(vae, rnn)
    if fingerprint:
        write_weights_cache(weights, fingerprint)
    return weights


# The weights cache: what ``extract_weights`` returns, in one file per V and M, named by a hash of their
# files, in a folder of its own (never in the model folder: the app leaves models/ as it is). Loading it
# takes milliseconds and needs no TensorFlow, where loading V and M with Keras takes seconds, most of it
# importing TensorFlow; so the AI opponent, evaluations and evolutions start at once, and evaluations and
# evolutions run on machines without TensorFlow. An unreadable or inconsistent file is ignored and rebuilt.
CACHE_ENV = "WORLD_MODELS_CACHE"
CACHE_KEEP = 16  # the most recently used files kept (4.4 MB each for the paper's sizes)
_CACHE_SOURCES = ("vae/config.json", "vae/vae.weights.h5", "rnn/config.json", "rnn/rnn.weights.h5")
_CACHE_VERSION = 1
_CACHE_KEYS = ("mu_w", "mu_b", "lstm_kernel", "lstm_recurrent", "lstm_bias", "mdn_w", "mdn_b", "reward_w",
               "reward_b", "done_w", "done_b", "mixtures")


def weights_cache_dir() -> Path:
    """``$WORLD_MODELS_CACHE``, else ``$XDG_CACHE_HOME/world-models``, else ``~/.cache/world-models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "world-models"


def weights_fingerprint(model_dir: Path | str) -> str | None:
    """SHA-256 over V's and M's configs and weights files in ``model_dir``; None if one is missing."""
    h = hashlib.sha256(f"agent weights v{_CACHE_VERSION}".encode())
    for name in _CACHE_SOURCES:
        try:
            data = (Path(model_dir) / name).read_bytes()
        except OSError:
            return None
        h.update(f"{name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def weights_cache_path(fingerprint: str) -> Path:
    return weights_cache_dir() / f"agent-weights-{fingerprint[:32]}.npz"


def read_weights_cache(fingerprint: str) -> WorldModelWeights | None:
    """The cached weights of the V and M files with ``fingerprint``, if a consistent set of arrays is
    cached for them; None (and the caller loads with Keras) otherwise."""
    path = weights_cache_path(fingerprint)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s: unreadable weights cache (%s); loading V and M with Keras", path, e)
        return None
    try:
        if str(arrays.pop("fingerprint", "")) != fingerprint:
            raise ValueError("made from other files")
        _check_weights(arrays)
    except (KeyError, ValueError) as e:
        log.warning("%s: inconsistent weights cache (%s); loading V and M with Keras", path, e)
        return None
    try:
        os.utime(path)  # recently used: pruned last
    except OSError:
        pass
    return {k: (v if k == "mixtures" else v.astype(np.float32, copy=False)) for k, v in arrays.items()}


def write_weights_cache(weights: WorldModelWeights, fingerprint: str) -> Path | None:
    """Cache ``weights`` (atomically) and keep the ``CACHE_KEEP`` most recently used files; the file, or
    None where the cache folder cannot be written (loading goes on without it)."""
    path = weights_cache_path(fingerprint)
    try:
        atomic_save_npz(path, compressed=False, fingerprint=np.array(fingerprint), **weights)
    except OSError as e:
        log.info("weights cache not written (%s)", e)
        return None
    try:  # another process may be pruning too
        old = sorted(path.parent.glob("agent-weights-*.npz"), key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in old[CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass
    return path


def _check_weights(w: WorldModelWeights) -> None:
    """Raise KeyError or ValueError unless ``w`` is a complete, shape-consistent set of agent weights."""
    missing = [k for k in _CACHE_KEYS if k not in w]
    convs = sorted(k for k in w if k.startswith("conv") and k.endswith("_w"))
    if missing or not convs:
        raise KeyError(f"missing arrays: {', '.join(missing) or 'conv*'}")
    z, hidden = w["mu_w"].shape[1], w["lstm_recurrent"].shape[0]
    k = int(w["mixtures"])
    expected = {"mu_b": (z,), "lstm_kernel": (z + 3, 4 * hidden), "lstm_recurrent": (hidden, 4 * hidden),
                "lstm_bias": (4 * hidden,), "mdn_w": (hidden, 3 * k * z), "mdn_b": (3 * k * z,),
                "reward_w": (hidden, 1), "reward_b": (1,), "done_w": (hidden, 1), "done_b": (1,)}
    for name, shape in expected.items():
        if w[name].shape != shape:
            raise ValueError(f"{name} has shape {w[name].shape}, expected {shape}")
    for name in convs:
        if w[name.replace("_w", "_b")].shape != (w[name].shape[1],):
            raise ValueError(f"{name} and its bias disagree")
