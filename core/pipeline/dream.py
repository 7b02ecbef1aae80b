"""Dreams: the MDN-RNN rolled forward on its own predictions, decoded by V, driven by a user, C or a log.

At dream step t the driver sees ``z_t`` and ``h_t`` and picks ``a_t``; M's LSTM takes ``[z_t, a_t]`` to
``h_{t+1}``, whose heads give the mixture over ``z_{t+1}`` (sampled at temperature ``tau``), the reward that
followed ``a_t`` and the probability that the episode ended. V's decoder turns each ``z`` into a frame.
The per-step path is NumPy (``core.models.agent``); decoding runs V's Keras decoder in batches.

Also here: M's one-step predictions on a real episode (what the Train RNN page shows), the same actions in
the real env and in the dream side by side, and animated GIFs of frame sequences for the pages.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from core.envs.actions import ACTION_HIGH, ACTION_LOW
from core.models.agent import encode_mu, extract_weights, lstm_step, mdn_heads, remember, sample_z
from core.models.controller import Controller
from core.storage.artifacts import WEIGHT_FILES
from core.storage.dataset import Episode

DONE_THRESHOLD = 0.5  # predicted episode-end probability above which a dream ends
DREAM_FPS = 25  # frames a second the pages play dreams at
FRAME_SCALE = 4  # pixel upscale of 64x64 frames in animations

# Actions of the user's keys: float32 (3,) steer, gas, brake.
KEY_ACTIONS = {
    "left": np.array([-1.0, 0.3, 0.0], np.float32),
    "right": np.array([1.0, 0.3, 0.0], np.float32),
    "gas": np.array([0.0, 1.0, 0.0], np.float32),
    "brake": np.array([0.0, 0.0, 0.8], np.float32),
    "coast": np.array([0.0, 0.0, 0.0], np.float32),
}


class WorldModel:
    """V and M of one world-model folder (and C when there is one), ready for dreaming.

    ``encode(frames uint8 (N, 64, 64, 3)) -> float32 (N, z)`` (z = mu); ``decode(z float32 (N, z)) ->
    uint8 (N, 64, 64, 3)``.
    """

    def __init__(self, vae, weights: dict, controller: Controller | None = None, source: str = ""):
        import tensorflow as tf
        self.vae = vae
        self.w = weights
        self.controller = controller
        self.controller_error: str | None = None  # why a controller beside V and M was left out
        self.source = source
        self.z_size = int(weights["mu_w"].shape[1])
        self.hidden = int(weights["lstm_recurrent"].shape[0])
        self._decode = tf.function(lambda z: vae.decode(z),
                                   input_signature=[tf.TensorSpec((None, self.z_size), tf.float32)])

    @classmethod
    def load(cls, model_dir: Path | str, with_controller: bool = True) -> "WorldModel":
        """V and M from ``model_dir``/vae and /rnn; C from /controller when present and ``with_controller``."""
        from core.models.controller import load_controller
        from core.models.mdnrnn import load_rnn
        from core.models.vae import load_vae
        model_dir = Path(model_dir)
        vae = load_vae(model_dir / "vae")
        rnn = load_rnn(model_dir / "rnn", expect_z=vae.z_size)
        weights = extract_weights(vae, rnn)
        controller = None
        if with_controller and (model_dir / "controller" / WEIGHT_FILES["controller"]).exists():
            controller = load_controller(model_dir / "controller", vae.z_size, rnn.hidden)
        return cls(vae, weights, controller, str(model_dir))

    def with_controller(self, controller: Controller | None, error: str | None = None) -> "WorldModel":
        """This V and M (shared, not copied) with another controller, or none and ``error`` saying why."""
        other = copy.copy(self)
        other.controller, other.controller_error = controller, error
        return other

    def encode(self, frames: np.ndarray, batch: int = 128) -> np.ndarray:
        """uint8 (N, 64, 64, 3) frames -> float32 (N, z_size), ``batch`` frames at a time: a whole episode at
        once would need about 0.5 GB of convolution patches."""
        frames = np.asarray(frames, np.uint8)
        out = [encode_mu(self.w, frames[i:i + batch]) for i in range(0, len(frames), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.z_size), np.float32)

    def decode(self, z: np.ndarray, batch: int = 256) -> np.ndarray:
        z = np.asarray(z, np.float32).reshape(-1, self.z_size)
        out = [self._decode(z[i:i + batch]).numpy() for i in range(0, len(z), batch)]
        frames = np.concatenate(out) if out else np.zeros((0, 64, 64, 3), np.float32)
        return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class DreamLog:
    """What a dream did, step by step: ``z`` has one more row than the actions (the start)."""

    z: list = field(default_factory=list)  # float32 (z,) each
    action: list = field(default_factory=list)  # float32 (3,) each
    reward: list = field(default_factory=list)  # predicted reward after each action
    done_prob: list = field(default_factory=list)  # predicted probability that the episode ended

    @property
    def steps(self) -> int:
        return len(self.action)


class Dream:
    """One dream: state ``z`` (z,), ``h``, ``c`` (hidden,), advanced by ``step(action)``.

    ``tau``: sampling temperature (0 = the most likely component's mean, 1 = as trained, > 1 wilder).
    """

    def __init__(self, model: WorldModel, tau: float = 1.0, seed: int = 0):
        self.model = model
        self.tau = float(tau)
        self.rng = np.random.default_rng(seed)
        self.reset_random()

    # --- starting points ---------------------------------------------------------------------------

    def _reset(self, z: np.ndarray, h: np.ndarray | None = None, c: np.ndarray | None = None) -> None:
        self.z = np.asarray(z, np.float32).reshape(self.model.z_size)
        self.h = np.zeros(self.model.hidden, np.float32) if h is None else h.astype(np.float32)
        self.c = np.zeros(self.model.hidden, np.float32) if c is None else c.astype(np.float32)
        self.log = DreamLog(z=[self.z.copy()])
        self.total_reward = 0.0
        self.ended_at: int | None = None

    def reset_random(self) -> None:
        """Start from z ~ N(0, I) with an empty memory."""
        self._reset(self.rng.standard_normal(self.model.z_size).astype(np.float32))

    def reset_from_frame(self, frame: np.ndarray) -> None:
        """Start from a real uint8 (64, 64, 3) frame with an empty memory."""
        self._reset(self.model.encode(np.asarray(frame)[None])[0])

    def reset_from_episode(self, episode: Episode, t: int) -> None:
        """Start from frame ``t`` of a real episode, M's memory warmed up on frames and actions 0..t-1."""
        t = int(np.clip(t, 0, episode.steps))
        z = self.model.encode(episode.obs[:t + 1])
        h, c = remember(self.model.w, z[:t], episode.action[:t])
        self._reset(z[t], h, c)

    # --- stepping ----------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def t(self) -> int:
        return self.log.steps

    def controller_action(self) -> np.ndarray:
        """C's action for the current (z, h); float32 (3,). Needs a world model with a controller."""
        if self.model.controller is None:
            raise ValueError(f"{self.model.source or 'this world model'} has no controller; evolve one first")
        return self.model.controller.act(self.z[None], self.h[None])[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Advance one step with ``action`` float32 (3,); returns (next z, predicted reward, done probability)."""
        action = np.clip(np.asarray(action, np.float32).reshape(3), ACTION_LOW, ACTION_HIGH)
        x = np.concatenate([self.z, action])[None]
        h, c = lstm_step(self.model.w, x, self.h[None], self.c[None])
        heads = mdn_heads(self.model.w, h)
        self.z = sample_z(heads, self.tau, self.rng)[0]
        self.h, self.c = h[0], c[0]
        reward, done = float(heads["reward"][0]), float(heads["done"][0])
        self.total_reward += reward
        self.log.z.append(self.z.copy())
        self.log.action.append(action)
        self.log.reward.append(reward)
        self.log.done_prob.append(done)
        if done > DONE_THRESHOLD and self.ended_at is None:
            self.ended_at = self.t
        return self.z, reward, done

    def run(self, steps: int, driver: str | np.ndarray | Callable[["Dream"], np.ndarray] = "controller",
            stop_at_end: bool = True) -> int:
        """Dream ``steps`` steps; ``driver``: "controller", a key name of ``KEY_ACTIONS``, an action
        array (3,) or (steps, 3), or a function of the dream. Returns the steps taken."""
        for i in range(int(steps)):
            if stop_at_end and self.ended:
                return i
            if callable(driver):
                action = driver(self)
            elif isinstance(driver, str):
                action = self.controller_action() if driver == "controller" else KEY_ACTIONS[driver]
            else:
                driver = np.asarray(driver, np.float32)
                action = driver if driver.ndim == 1 else driver[i]
            self.step(action)
        return int(steps)

    def frames(self, start: int = 0) -> np.ndarray:
        """Decoded frames of the dream from step ``start`` on: uint8 (T - start + 1, 64, 64, 3)."""
        return self.model.decode(np.stack(self.log.z[start:]))


def one_step_predictions(model: WorldModel, episode: Episode, start: int = 0, count: int = 8,
                         tau: float = 0.0, seed: int = 0) -> dict:
    """M's prediction of each next frame on a real episode, with its memory fed the real past.

    For t in start..start+count-1: ``real_next`` uint8 (count, 64, 64, 3) is frame t+1, ``recon_next`` is V's
    reconstruction of it (the best M can hope for), ``predicted`` decodes M's z_{t+1} (tau = 0: the most
    likely component's mean). Also ``pred_reward``, ``real_reward``, ``done_prob`` (count,).
    """
    start = int(np.clip(start, 0, max(0, episode.steps - 1)))
    count = int(min(count, episode.steps - start))
    z = model.encode(episode.obs[:start + count + 1])
    h = np.zeros((1, model.hidden), np.float32)
    c = h.copy()
    rng = np.random.default_rng(seed)
    predicted, rewards, dones = [], [], []
    for t in range(start + count):
        h, c = lstm_step(model.w, np.concatenate([z[t], episode.action[t]])[None], h, c)
        if t >= start:
            heads = mdn_heads(model.w, h)
            predicted.append(sample_z(heads, tau, rng)[0])
            rewards.append(float(heads["reward"][0]))
            dones.append(float(heads["done"][0]))
    next_idx = np.arange(start + 1, start + count + 1)
    return {"steps": next_idx, "real_next": episode.obs[next_idx], "recon_next": model.decode(z[next_idx]),
            "predicted": model.decode(np.stack(predicted)) if predicted else np.zeros((0, 64, 64, 3), np.uint8),
            "pred_reward": np.array(rewards, np.float32), "real_reward": episode.reward[start:start + count],
            "done_prob": np.array(dones, np.float32)}


def side_by_side(model: WorldModel, seed: int, steps: int = 150, driver: str = "controller",
                 warmup: int = 50, tau: float = 1.0, env_kind: str = "fast", dream_seed: int = 0) -> dict:
    """The same actions in the real env and in the dream, from the same moment.

    The real env runs ``warmup`` steps first (the zoom-in at the start), feeding M the real frames; then
    both go on for ``steps`` steps with the actions ``driver`` ("controller": C driving the real car with
    V and M on real frames; "random": the Brownian policy of data collection) picks in the real env. The
    dream never sees a real frame after the split. Returns ``real`` and ``dream`` uint8 (steps + 1, 64, 64, 3),
    ``actions`` (steps, 3), ``real_reward``, ``dream_reward``, ``done_prob`` (steps,) and ``real_done``.
    """
    from core.envs.env import make_env, preprocess
    from core.pipeline.collect import BrownianPolicy
    if driver == "controller" and model.controller is None:
        raise ValueError(f"{model.source or 'this world model'} has no controller; choose the random driver")
    policy = BrownianPolicy(np.random.default_rng(seed))
    env = make_env(env_kind)
    real_frames, actions, real_rewards = [], [], []
    h = np.zeros((1, model.hidden), np.float32)
    c = h.copy()
    real_done = False
    try:
        obs, _ = env.reset(seed=int(seed))
        for t in range(warmup + steps):
            frame = preprocess(obs)
            z = model.encode(frame[None])
            if driver == "controller":
                action = model.controller.act(z, h)[0]
            else:
                action = policy()
            if t == warmup:
                dream = Dream(model, tau, dream_seed)
                dream._reset(z[0], h[0], c[0])
            if t >= warmup:
                real_frames.append(frame)
                actions.append(action)
            h, c = lstm_step(model.w, np.concatenate([z, action[None]], axis=1), h, c)
            obs, reward, terminated, truncated, _ = env.step(action)
            if t >= warmup:
                real_rewards.append(float(reward))
            if terminated or truncated:
                real_done = True
                break
        if t < warmup:
            raise ValueError(f"the episode ended after {t + 1} steps, before the warm-up of {warmup} was over")
        real_frames.append(preprocess(obs))
    finally:
        env.close()
    dream.run(len(actions), np.stack(actions), stop_at_end=False)
    return {"real": np.stack(real_frames), "dream": dream.frames(), "actions": np.stack(actions),
            "real_reward": np.array(real_rewards, np.float32), "dream_reward": np.array(dream.log.reward, np.float32),
            "done_prob": np.array(dream.log.done_prob, np.float32), "real_done": real_done}


# --- animation --------------------------------------------------------------------------------------


def upscale(frames: np.ndarray, scale: int = FRAME_SCALE) -> np.ndarray:
    """uint8 (..., H, W, 3) -> (..., H * scale, W * scale, 3), nearest neighbour (crisp pixels)."""
    return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


CAPTION_LINE = 22  # pixels a line of caption under a frame takes


def caption_strip(width: int, text: str, lines: int = 1) -> np.ndarray:
    """A dark uint8 (lines * 22, width, 3) band with ``text`` (lines separated by newlines) in it, to go under
    a frame."""
    strip = np.full((lines * CAPTION_LINE, width, 3), 24, np.uint8)
    for i, line in enumerate(text.split("\n")[:lines]):
        cv2.putText(strip, line, (4, (i + 1) * CAPTION_LINE - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235),
                    1, cv2.LINE_AA)
    return strip


def with_captions(frames: np.ndarray, captions: list[str]) -> np.ndarray:
    """Each frame (N, H, W, 3) with its caption underneath -> (N, H + 22 * lines, W, 3), ``lines`` those of
    the longest caption."""
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    return np.stack([np.concatenate([f, caption_strip(f.shape[1], s, lines)]) for f, s in zip(frames, captions)])


def hstack(*sequences: np.ndarray, gap: int = 4) -> np.ndarray:
    """Frame sequences of equal length and height side by side, ``gap`` dark pixels apart."""
    n, height = len(sequences[0]), sequences[0].shape[1]
    spacer = np.full((n, height, gap, 3), 24, np.uint8)
    parts = []
    for i, s in enumerate(sequences):
        parts += ([spacer] if i else []) + [s]
    return np.concatenate(parts, axis=2)


def gif(frames: np.ndarray, fps: int = DREAM_FPS, loop: bool = True) -> bytes:
    """uint8 (N, H, W, 3) frames -> animated GIF bytes playing at ``fps`` (once, or looping)."""
    from PIL import Image
    # A fast octree palette per frame: 8x quicker and 6x smaller than PIL's default median cut, with a
    # mean error of about 1 level in 255 on decoded frames.
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
              for f in frames]
    buf = io.BytesIO()
    extra = {"loop": 0} if loop else {}
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   optimize=False, disposal=1, **extra)
    return buf.getvalue()


def dream_captions(dream: Dream, start: int = 0, actions: bool = False) -> list[str]:
    """Per-frame captions of a dream from step ``start``: step, predicted reward so far, end probability; with
    ``actions`` a second line with the action taken on that frame (C's, when C drives)."""
    out = []
    so_far = np.concatenate([[0.0], np.cumsum(dream.log.reward[:dream.t])])  # reward before frame t
    for t in range(start, dream.t + 1):
        total = float(so_far[t])
        done = dream.log.done_prob[t - 1] if t > 0 else 0.0
        end = "  END" if dream.ended_at is not None and t >= dream.ended_at else ""
        caption = f"t={t:4d}  R={total:+7.1f}  end {done:4.0%}{end}"
        if actions:  # the last frame has no action yet
            steer, gas, brake = dream.log.action[t] if t < dream.t else (0.0, 0.0, 0.0)
            caption += f"\nsteer {steer:+.2f}  gas {gas:.2f}  brake {brake:.2f}" if t < dream.t else "\n"
        out.append(caption)
    return out


def dream_records(dream: Dream) -> list[dict]:
    """One record a dream step, for charts: ``step`` (1..T), M's predicted ``reward`` after it, the ``end``
    probability, the predicted ``return`` so far, and the action taken (``steer``, ``gas``, ``brake``)."""
    from core.envs.actions import ACTION_NAMES
    so_far = np.cumsum(dream.log.reward[:dream.t]) if dream.t else []
    return [{"step": i + 1, "reward": float(r), "end": float(d), "return": float(total),
             **{name: float(v) for name, v in zip(ACTION_NAMES, a)}}
            for i, (r, d, total, a) in enumerate(zip(dream.log.reward, dream.log.done_prob, so_far, dream.log.action))]
