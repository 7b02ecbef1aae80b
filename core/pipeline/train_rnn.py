"""Stage 3, train-rnn: M on the episodes as V encodes them.

Frames are encoded to (mu, logvar) once, with V's hash in the cache's name, each episode kept as it is
encoded, so a stopped encoding goes on where it was; each batch resamples z from N(mu, exp(logvar)).
The model and the MDN loss live in ``core.models.mdnrnn``, the training loop it shares with V in
``core.pipeline.training``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import RNNConfig, to_dict, validate  # noqa: E402
from core.metrics import ENCODING, RNN_LOSSES, TRAINING, RnnMetric, Training  # noqa: E402
from core.models.mdnrnn import ACTION_SIZE, MDNRNN, REWARD_CLIP, WEIGHTS
from core.pipeline.training import TrainingPlan, train  # noqa: E402
from core.progress import ProgressCallback, keep_going  # noqa: E402
from core.storage.artifacts import ArtifactError, RunLock, atomic_save_npz, hash_files  # noqa: E402
from core.storage.checkpoints import check_config_matches, check_new_run, checkpoint_state, recorded_heldout
from core.storage.dataset import load_episode, split_holdout, usable_episodes  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class EncodedEpisodes:
    """Every frame of a set of episodes encoded by V; arrays concatenated, ``starts[i]`` the offsets."""

    mu: np.ndarray  # float32 (frames, z)
    logvar: np.ndarray  # float32 (frames, z)
    action: np.ndarray  # float32 (steps, 3), aligned with frames minus one per episode
    reward: np.ndarray  # float32 (steps,)
    done: np.ndarray  # float32 (steps,), 1 where the env terminated
    frame_starts: np.ndarray  # int64 (episodes + 1,)
    step_starts: np.ndarray  # int64 (episodes + 1,)
    files: list[str]


def parts_dir(encoded_path: Path, vae_sha256: str) -> Path:
    """Where episodes encoded by the V of ``vae_sha256`` wait, one file each, until the whole set is cached."""
    return encoded_path.with_name(f"encoded-parts-{vae_sha256[:16]}")


def _episode_id(path: Path) -> str:
    """One version of one episode file: its place, size and modification time."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]


def _load_part(part: Path, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(part, allow_pickle=False) as f:
            mu, logvar = f["mu"], f["logvar"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, or torn by a kill: encoded again
    return (mu, logvar) if len(mu) == len(logvar) == frames else None


def encode_episodes(vae, paths: list[Path], on_progress: ProgressCallback = keep_going,
                    batch: int = 500, parts: Path | None = None) -> EncodedEpisodes:
    """Encode every frame of ``paths`` with V (z = mu, logvar kept for resampling).

    Reports ``on_progress(episodes encoded, episodes to encode, {"phase": "encoding", "encoded", "of"})``
    after each episode; a falsy return raises InterruptedError. With ``parts`` (a folder of this V's, see
    ``parts_dir``) each episode's encoding is saved there as it is made and reused by the next run, so a
    stopped or killed encoding goes on where it was.
    """
    from core.models.vae import to_float
    encode = tf.function(lambda x: vae.encode(to_float(x)))
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    mus, logvars, actions, rewards, dones, files = [], [], [], [], [], []
    for i, p in enumerate(paths):
        ep = load_episode(p)
        part = parts / f"{_episode_id(Path(p))}.npz" if parts is not None else None
        done = _load_part(part, len(ep.obs)) if part is not None else None
        if done is None:
            m, lv = [], []
            for j in range(0, len(ep.obs), batch):
                a, b = encode(ep.obs[j:j + batch])
                m.append(a.numpy())
                lv.append(b.numpy())
            done = np.concatenate(m), np.concatenate(lv)
            if part is not None:
                atomic_save_npz(part, compressed=False, mu=done[0], logvar=done[1])
        mus.append(done[0])
        logvars.append(done[1])
        actions.append(ep.action)
        rewards.append(ep.reward)
        dones.append(ep.terminated.astype(np.float32))
        files.append(p.name)
        if not on_progress(i + 1, len(paths), {Training.PHASE: ENCODING, RnnMetric.ENCODED: i + 1,
                                                RnnMetric.TO_ENCODE: len(paths)}):
            raise InterruptedError("stopped while encoding")
    frame_starts = np.cumsum([0] + [len(m) for m in mus])
    step_starts = np.cumsum([0] + [len(a) for a in actions])
    return EncodedEpisodes(np.concatenate(mus), np.concatenate(logvars), np.concatenate(actions),
                           np.concatenate(rewards), np.concatenate(dones), frame_starts, step_starts, files)


def save_encoded(path: Path, enc: EncodedEpisodes, key: str) -> None:
    atomic_save_npz(path, compressed=False, mu=enc.mu, logvar=enc.logvar, action=enc.action, reward=enc.reward,
                    done=enc.done, frame_starts=enc.frame_starts, step_starts=enc.step_starts,
                    files=np.array(enc.files), key=np.array(key))


def load_encoded(path: Path, key: str) -> EncodedEpisodes | None:
    """The cached encoding if it was made from the same VAE and episodes (``key``), else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return EncodedEpisodes(f["mu"], f["logvar"], f["action"], f["reward"], f["done"], f["frame_starts"],
                                   f["step_starts"], [str(s) for s in f["files"]])
    except (OSError, ValueError, KeyError):
        return None


def make_batch(enc: EncodedEpisodes, episodes: np.ndarray, seq_len: int, rng: np.random.Generator):
    """One training batch of windows of ``seq_len`` steps from the given episode indices.

    Returns x float32 (B, T, z + 3) with z resampled from (mu, logvar), targets z_next (B, T, z), reward
    (B, T), done (B, T), and mask (B, T) that is 0 past an episode's end.
    """
    z_size = enc.mu.shape[1]
    b = len(episodes)
    x = np.zeros((b, seq_len, z_size + ACTION_SIZE), np.float32)
    z_next = np.zeros((b, seq_len, z_size), np.float32)
    reward = np.zeros((b, seq_len), np.float32)
    done = np.zeros((b, seq_len), np.float32)
    mask = np.zeros((b, seq_len), np.float32)
    for row, e in enumerate(episodes):
        steps = enc.step_starts[e + 1] - enc.step_starts[e]
        start = int(rng.integers(0, max(1, steps - seq_len + 1)))
        n = int(min(seq_len, steps - start))
        f0 = enc.frame_starts[e] + start
        s0 = enc.step_starts[e] + start
        mu, logvar = enc.mu[f0:f0 + n + 1], enc.logvar[f0:f0 + n + 1]
        z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(np.float32)
        x[row, :n, :z_size] = z[:n]
        x[row, :n, z_size:] = enc.action[s0:s0 + n]
        z_next[row, :n] = z[1:n + 1]
        reward[row, :n] = np.clip(enc.reward[s0:s0 + n], -REWARD_CLIP, REWARD_CLIP)
        done[row, :n] = enc.done[s0:s0 + n]
        mask[row, :n] = 1.0
    return x, z_next, reward, done, mask


def evaluate_rnn(model: MDNRNN, enc: EncodedEpisodes, episodes: np.ndarray, seq_len: int, seed: int = 0,
                 batch: int = 32) -> dict:
    """Held-out MDN, reward and done losses (z resampled with a fixed seed)."""
    if len(episodes) == 0:
        return {}
    rng = np.random.default_rng(seed)
    totals = np.zeros(3)
    for i in range(0, len(episodes), batch):
        x, z_next, reward, done, mask = make_batch(enc, episodes[i:i + batch], seq_len, rng)
        losses = model.losses_for(x, z_next, reward, done, mask)
        totals += np.array([float(v) for v in losses]) * len(episodes[i:i + batch])
    totals /= len(episodes)
    return {name.held_out(): float(total) for name, total in zip(RNN_LOSSES, totals)}


def train_rnn(config: RNNConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Encode the episodes with V once (cached), then train M; resumes from ``<out_dir>/checkpoint``."""
    validate(config)
    with RunLock(config.out_dir, "train-rnn"):
        return _train_rnn(config, on_progress)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_v(config: RNNConfig):
    """V and the SHA-256 of its weights file, refused if that file changed as it loaded (V checkpointing)."""
    from core.models.vae import WEIGHTS as VAE_WEIGHTS
    from core.models.vae import load_vae

    vae_file = config.vae_dir / VAE_WEIGHTS
    vae_sha256 = _file_sha256(vae_file) if vae_file.exists() else None  # of the V loaded: hashed around it
    vae = load_vae(config.vae_dir)
    if _file_sha256(vae_file) != vae_sha256:
        raise ArtifactError(f"{vae_file} changed while it was being loaded (is V still training?); train M once "
                            "V's training has ended")
    return vae, vae_sha256


def _encode_once(config: RNNConfig, vae, vae_sha256: str, paths: list[Path], on_progress: ProgressCallback
                 ) -> tuple[EncodedEpisodes, str]:
    """The episodes as this V encodes them, from the cache when it holds them, and the cache's key."""
    key = f"{hash_files(paths)}-{vae_sha256}"  # V's bytes: a copied or touched V is not encoded again
    enc = load_encoded(config.encoded_path, key)
    parts = parts_dir(config.encoded_path, vae_sha256)
    for old in config.out_dir.glob("encoded-parts-*"):  # of another V, or of this set, cached whole already
        if old != parts or enc is not None:
            shutil.rmtree(old, ignore_errors=True)
    if enc is None:
        enc = encode_episodes(vae, paths, on_progress, parts=parts)
        save_encoded(config.encoded_path, enc, key)
        shutil.rmtree(parts, ignore_errors=True)
    return enc, key


def _split_episodes(paths: list[Path], config: RNNConfig, kept: list[str] | None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Indices into the encoded episodes of the training and held-out ones, and the held-out ones' paths."""
    names = [str(Path(p).resolve()) for p in paths]  # enc holds them in this order (its key is these files)
    train_names, heldout = split_holdout(names, config.holdout, config.seed, kept)
    where = {name: i for i, name in enumerate(names)}
    train_idx = np.array(sorted(where[n] for n in train_names), dtype=int)
    held_idx = np.array(sorted(where[n] for n in heldout), dtype=int)
    return train_idx, held_idx, heldout


def _train_rnn(config: RNNConfig, on_progress: ProgressCallback) -> dict:
    out_dir = config.out_dir
    start = check_new_run(out_dir, WEIGHTS, config.init_from, "MDN-RNN",
                          {"hidden": config.hidden, "mixtures": config.mixtures})
    vae, vae_sha256 = _load_v(config)
    z_size = vae.z_size
    if start and start.get("z_size") != z_size:  # no flag of M's changes z: it is V's
        raise ArtifactError(f"--init-from {config.init_from}: that MDN-RNN was trained on z = {start.get('z_size')}, "
                            f"but the VAE in {config.vae_dir} has z = {z_size}; start from one trained on a VAE of "
                            "this z")
    artifact_config = {**to_dict(config), "z_size": z_size}
    # Before the minutes of reading and encoding episodes: a resume with other sizes is refused at once.
    check_config_matches(out_dir, artifact_config, ("z_size", "hidden", "mixtures"), "MDN-RNN")
    paths = usable_episodes(config.data_dir, config.on_corrupt, config.max_episodes, min_steps=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = checkpoint_state(out_dir)  # of the run being resumed, if any
    trained_on = before.get("vae_sha256")
    if trained_on and trained_on != vae_sha256:
        log.warning("%s: V has changed since this MDN-RNN began training; it goes on from weights that learned "
                    "the old V's codes (a fresh run --init-from it says so plainly)", out_dir)
    enc, key = _encode_once(config, vae, vae_sha256, paths, on_progress)
    del vae

    train_idx, held_idx, heldout = _split_episodes(paths, config, recorded_heldout(before))
    train_steps = int(sum(enc.step_starts[e + 1] - enc.step_starts[e] for e in train_idx))

    def batches(step: int, count: int):
        for s in range(step, step + count):
            rng = np.random.default_rng([config.seed, s])  # batch contents depend only on (seed, step)
            episodes = rng.choice(train_idx, size=config.batch_size, replace=len(train_idx) < config.batch_size)
            yield make_batch(enc, episodes, config.seq_len, rng)

    keras.utils.set_random_seed(config.seed)
    model = MDNRNN(z_size, config.hidden, config.mixtures, config.reward_weight, config.done_weight)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, global_clipnorm=config.grad_clip or None))
    return train(TrainingPlan(
        kind="rnn", weights=WEIGHTS, out_dir=out_dir, model=model, config=artifact_config, seed=config.seed,
        epochs=config.epochs, batches_per_epoch=max(1, -(-train_steps // (config.batch_size * config.seq_len))),
        checkpoint_every=config.checkpoint_every, batches=batches,
        heldout_metrics=lambda rnn: evaluate_rnn(rnn, enc, held_idx, config.seq_len, config.seed),
        state={"heldout": heldout, "vae_sha256": vae_sha256}, data_hash=key,
        summary={"train_episodes": len(train_idx), "heldout_episodes": len(held_idx), "z_size": z_size},
        log_every=5, phase=TRAINING), on_progress)
