"""One frozen config dataclass per pipeline stage.

Each field carries its help text (units and the paper's value) in ``metadata["help"]``; the CLI builds its
flags from it (``core.cli``) and the app builds its widgets' defaults from it. Values derived from
others are properties, computed in one place.

Folder layout of a world model (``run_dir`` for training, ``models/`` for the shipped one)::

    <root>/vae/          ConvVAE weights, config.json, meta.json
    <root>/rnn/          MDN-RNN weights, config.json, meta.json
    <root>/controller/   controller params, CMA-ES state, history, config.json, meta.json
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError

DEFAULT_DATA_DIR = "data/rollouts"
DEFAULT_RUN_DIR = "runs"
SHIPPED_MODEL_DIR = "models"
# Where evaluations and videos of the shipped model go: its own folder stays exactly as committed.
SHIPPED_OUTPUTS_DIR = f"{DEFAULT_RUN_DIR}/shipped-model"

# Track seeds: training and collection draw tracks below EVAL_SEED_BASE; evaluation uses
# EVAL_SEED_BASE, EVAL_SEED_BASE + 1, ... so evaluation tracks are never seen in training.
EVAL_SEED_BASE = 1_000_000  # first evaluation track seed
TRAIN_SEED_LIMIT = 900_000  # collection and training rollouts draw track seeds in [0, TRAIN_SEED_LIMIT);
# evolve's periodic evaluations and second tests use 900000..949999, validation screens 950000..999999
VALIDATION_SEED_BASE = 950_000  # first validation track seed: neither training nor evolve's tests draw these

MAX_TEST_TRACKS = 1000  # the most tracks one of evolve's periodic evaluations or second tests drives
MAX_SEED = 2**32 - 2  # np.random.seed takes seeds below 2**32, and CMA-ES is seeded with seed + 1

ENV_CHOICES = ("fast", "stock")
ON_CORRUPT_CHOICES = ("skip", "stop")
POLICY_CHOICES = ("brownian", "controller")


def param(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
          maximum: float | None = None, above_minimum: bool = False, path: bool = False) -> Any:
    """A dataclass field with its help text and allowed range, read by the CLI and the app.

    ``above_minimum``: the value must be greater than ``minimum``, not equal to it. ``path``: a file or
    folder that must be named (an empty value would mean the current folder).
    """
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "above_min": above_minimum,
            "path": path}
    return field(default=default, metadata=meta)


MAX_WORKERS = 64  # a typo's guard (each worker is a process holding the world model), not a machine's limit

RAY_ADDRESS_ENV = "WM_RAY_ADDRESS"  # the Ray cluster a stage runs its episodes on when its ray_address is empty
RAY_ADDRESS_HELP = ("Ray cluster to run the episodes on, one worker per CPU of the cluster: any address ray.init "
                    "accepts (auto, host:port, ray://host:10001); empty: $WM_RAY_ADDRESS if set, else this "
                    "machine's worker processes (docs/CLUSTER.md)")


def ray_address(config: Any) -> str:
    """The Ray cluster ``config``'s stage runs its episodes on: its ``ray_address``, else ``$WM_RAY_ADDRESS``;
    empty: the local worker processes."""
    return (getattr(config, "ray_address", "") or os.environ.get(RAY_ADDRESS_ENV, "")).strip()


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


class ConfigError(UserError, ValueError):
    """A config value outside its allowed range; the message names the field and the value as the CLI does
    (``--episodes=-5 is too small: it must be at least 1``). An error of one field also keeps ``field``,
    ``value`` and ``problem`` (``is too small: it must be at least 1``), so that a form can name the field
    its own way; they are None for a rule over several fields."""

    def __init__(self, message: str, field: str | None = None, value: Any = None, problem: str | None = None):
        super().__init__(message)
        self.field, self.value, self.problem = field, value, problem

    @classmethod
    def of_field(cls, name: str, value: Any, problem: str) -> ConfigError:
        return cls(f"--{name.replace('_', '-')}={value!r} {problem}", name, value, problem)


def range_problem(value: Any, minimum: float | None = None, maximum: float | None = None,
                  above_minimum: bool = False) -> str | None:
    """What is wrong with a number given its allowed range (``is too small: it must be at least 1``), or
    None when it is within. ``above_minimum``: the value must be greater than ``minimum``. A missing value
    (an emptied box) and NaN or infinity are wrong too."""
    if value is None:
        return "is empty: give a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "is not a number"
    if not math.isfinite(value):
        return "is not a number; give a finite value"
    if minimum is not None and above_minimum and value <= minimum:
        return f"is too small: it must be greater than {minimum}"
    if minimum is not None and value < minimum:
        return f"is too small: it must be at least {minimum}"
    if maximum is not None and value > maximum:
        return f"is too large: it must be at most {maximum}"
    return None


def validate(config: Any, upper_bounds: bool = True) -> Any:
    """Check every field of a config against its metadata; return the config or raise ConfigError.
    ``upper_bounds=False`` (a config saved with an artifact, read back) leaves out the maxima that only keep
    a new run within reason, so that raising or adding one never makes a trained model unloadable."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        meta = f.metadata
        if meta.get("choices"):
            problem = None if value in meta["choices"] else f"is not one of {', '.join(map(str, meta['choices']))}"
        elif meta.get("path") and not str(value).strip():
            problem = "is empty: give a file or folder path"
        elif isinstance(f.default, numbers.Real) and not isinstance(f.default, bool):
            problem = range_problem(value, meta.get("min"), meta.get("max") if upper_bounds else None,
                                    meta.get("above_min", False))
        else:
            problem = None
        if problem:
            raise ConfigError.of_field(f.name, value, problem)
    if hasattr(config, "check"):
        config.check()
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict, upper_bounds: bool = True) -> Any:
    """Build ``cls`` from a dict, ignoring unknown keys (older or newer artifacts) and validating it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return validate(cls(**{k: v for k, v in data.items() if k in names}), upper_bounds)


@dataclass(frozen=True)
class CollectConfig:
    """Rollouts of CarRacing (random or by a trained controller), one compressed file per episode."""

    out_dir: str = param(DEFAULT_DATA_DIR, "folder the episodes and manifest.json are written to", path=True)
    episodes: int = param(100, "episodes to have in out_dir when done (paper: 10000)", minimum=1)
    max_steps: int = param(1000, "env steps per episode at most (CarRacing's own limit: 1000)",
                           minimum=1, maximum=1000)
    workers: int = param(default_workers(), "worker processes running episodes in parallel on this machine",
                         minimum=1, maximum=MAX_WORKERS)
    ray_address: str = param("", RAY_ADDRESS_HELP)
    seed: int = param(0, "track seed of the first episode; episode i drives track seed + i",
                      minimum=0, maximum=TRAIN_SEED_LIMIT - 1)
    policy: str = param("brownian", "who drives: brownian = smoothed random actions; controller = the "
                        "controller of --model-dir, with smoothed noise (the paper's iterative training)",
                        choices=POLICY_CHOICES)
    env: str = param("fast", "CarRacing implementation: fast (identical frames) or stock", choices=ENV_CHOICES)
    model_dir: str = param(SHIPPED_MODEL_DIR, "world model whose V, M and C drive (policy controller only)",
                           path=True)
    noise: float = param(0.1, "policy controller: spread of the smoothed noise added to its actions, so the "
                         "data also shows recoveries", minimum=0.0, maximum=1.0)

    def check(self) -> None:
        if self.seed + self.episodes > TRAIN_SEED_LIMIT:
            raise ConfigError(f"--seed + --episodes must stay below {TRAIN_SEED_LIMIT} "
                              "(higher track seeds are kept for evolve's evaluations and for evaluate)")
        if "," in self.out_dir:
            raise ConfigError(f"--out-dir={self.out_dir!r} holds a comma: collect into one folder at a time (the "
                              "training stages read a comma as a separator between folders)")


@dataclass(frozen=True)
class VAEConfig:
    """The ConvVAE (V): 64x64x3 frame -> z."""

    data_dir: str = param(DEFAULT_DATA_DIR, "folder of collected episodes; several separated by commas "
                          "(e.g. random and controller-driven episodes)", path=True)
    run_dir: str = param(DEFAULT_RUN_DIR, "world-model folder; the VAE goes to <run_dir>/vae", path=True)
    z_size: int = param(32, "latent size z (paper: 32)", minimum=1, maximum=1024)
    epochs: int = param(10, "passes over the training frames", minimum=1, maximum=10_000)
    batch_size: int = param(100, "frames per batch (paper: 100)", minimum=1, maximum=65536)
    learning_rate: float = param(1e-4, "Adam learning rate (paper: 1e-4)", minimum=0.0, above_minimum=True)
    kl_tolerance: float = param(0.5, "KL is clamped below kl_tolerance * z_size nats (paper: 0.5)", minimum=0.0)
    holdout: float = param(0.05, "fraction of episodes held out to measure generalisation", minimum=0.0,
                           maximum=0.5)
    max_episodes: int = param(0, "use at most this many episodes (0 = all)", minimum=0)
    frame_stride: int = param(1, "use every k-th frame of each episode (neighbouring frames are alike)",
                              minimum=1)
    shuffle_buffer: int = param(20000, "frames in the streaming shuffle buffer (memory: 12 KiB each)",
                                minimum=1, maximum=1_000_000)
    checkpoint_every: int = param(500, "batches between checkpoints", minimum=1)
    seed: int = param(0, "random seed of weights, shuffling and sampling", minimum=0, maximum=MAX_SEED)
    on_corrupt: str = param("skip", "a corrupt episode file: skip it with a warning, or stop",
                            choices=ON_CORRUPT_CHOICES)
    init_from: str = param("", "a new run starts from this VAE's weights (a folder with vae.weights.h5, e.g. "
                               "models/vae) instead of random ones, to fine-tune it on new data; ignored on "
                               "resume")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / "vae"


@dataclass(frozen=True)
class RNNConfig:
    """The MDN-RNN (M): [z, a] -> mixture over next z, next reward, episode end."""

    data_dir: str = param(DEFAULT_DATA_DIR, "folder of collected episodes; several separated by commas "
                          "(e.g. random and controller-driven episodes)", path=True)
    run_dir: str = param(DEFAULT_RUN_DIR, "world-model folder: reads <run_dir>/vae, writes <run_dir>/rnn",
                         path=True)
    hidden: int = param(256, "LSTM units h (paper: 256)", minimum=1, maximum=4096)
    mixtures: int = param(5, "Gaussians per latent dimension (paper: 5)", minimum=1, maximum=64)
    seq_len: int = param(100, "steps per training sequence (paper: 999; shorter trains faster on a CPU)",
                         minimum=2, maximum=1000)
    batch_size: int = param(32, "sequences per batch (paper: 100)", minimum=1, maximum=65536)
    epochs: int = param(20, "passes over the training sequences", minimum=1, maximum=10_000)
    learning_rate: float = param(1e-3, "Adam learning rate (paper: 1e-3)", minimum=0.0, above_minimum=True)
    grad_clip: float = param(1.0, "gradient norm clip (paper: 1.0)", minimum=0.0)
    reward_weight: float = param(1.0, "weight of the next-reward MSE in the loss", minimum=0.0)
    done_weight: float = param(1.0, "weight of the episode-end cross-entropy in the loss", minimum=0.0)
    holdout: float = param(0.05, "fraction of episodes held out to measure generalisation", minimum=0.0,
                           maximum=0.5)
    max_episodes: int = param(0, "use at most this many episodes (0 = all)", minimum=0)
    checkpoint_every: int = param(200, "batches between checkpoints", minimum=1)
    seed: int = param(0, "random seed of weights, sequence sampling and z resampling", minimum=0,
                      maximum=MAX_SEED)
    on_corrupt: str = param("skip", "a corrupt episode file: skip it with a warning, or stop",
                            choices=ON_CORRUPT_CHOICES)
    init_from: str = param("", "a new run starts from this MDN-RNN's weights (a folder with rnn.weights.h5, "
                               "e.g. models/rnn) instead of random ones; ignored on resume")

    @property
    def vae_dir(self) -> Path:
        return Path(self.run_dir) / "vae"

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / "rnn"

    @property
    def encoded_path(self) -> Path:
        """Cache of (mu, logvar) for every frame, made once from the VAE."""
        return Path(self.run_dir) / "rnn" / "encoded.npz"


@dataclass(frozen=True)
class EvolveConfig:
    """CMA-ES over the controller's flat parameters, fitness = mean return in the real env."""

    run_dir: str = param(DEFAULT_RUN_DIR, "world-model folder: reads vae/ and rnn/, writes controller/",
                         path=True)
    generations: int = param(100, "CMA-ES generations to reach (paper: ~1800)", minimum=1, maximum=100_000)
    popsize: int = param(16, "candidates per generation (paper: 64; 16 keeps a generation short on "
                              "2 cores)", minimum=2, maximum=1024)
    rollouts: int = param(2, "episodes per candidate, fitness is their mean (paper: 16)", minimum=1,
                          maximum=256)
    skip_penalty: float = param(0.0, "points each tile a rollout skipped costs in the fitness CMA-ES ranks "
                                     "candidates by, beyond the tile's reward the return already lacks; the "
                                     "periodic evaluations and the gate score the env's return alone (0 = the "
                                     "fitness is the return)", minimum=0.0, maximum=1000.0)
    sigma0: float = param(0.1, "initial CMA-ES step size (paper: 0.1)", minimum=1e-6)
    max_sigma: float = param(0.0, "cap on the CMA-ES step of every parameter (sigma times its spread), applied "
                                  "every generation, a resumed run's too (0 = none): with noisy fitness the "
                                  "step-size control need not shrink it as the mean nears an optimum",
                             minimum=0.0)
    diagonal: bool = param(True, "sep-CMA-ES: adapt only the covariance's diagonal, which learns about n "
                                 "times faster over C's 867 parameters and keeps the saved state at 0.5 MB "
                                 "instead of 12.5 MB (paper: full covariance)")
    max_steps: int = param(1000, "env steps per episode at most", minimum=1, maximum=1000)
    early_stop: bool = param(True, "end a rollout early once it cannot recover (off the track for "
                                   "early_stop_steps steps)")
    early_stop_steps: int = param(50, "steps in a row with negative reward after which a rollout ends",
                                  minimum=1, maximum=1000)
    eval_every: int = param(10, "generations between evaluations of the CMA-ES mean (0 = never)",
                            minimum=0)
    eval_episodes: int = param(8, "episodes of each periodic evaluation", minimum=1, maximum=MAX_TEST_TRACKS)
    average: int = param(20, "generations spanned by a moving average of the CMA-ES mean, evaluated with the "
                             "mean and the best candidate: at a plateau the mean wanders with the noise of "
                             "each generation's selection, and the average cancels much of it (0 or 1 = off)",
                         minimum=0)
    confirm_episodes: int = param(24, "a controller that beats the shipped one in a periodic evaluation replaces "
                                      "it only if it also scores higher on this many other tracks, "
                                      "driven by both (0 = no second test)", minimum=0,
                                  maximum=MAX_TEST_TRACKS)
    confirm_margin: float = param(1.0, "in that second test the challenger's mean lead over the shipped "
                                       "controller, track by track, must exceed this many standard errors "
                                       "of that lead, whose spread is taken as at least that pooled over "
                                       "the run's earlier second tests (0 = any lead)", minimum=0.0)
    fresh_tracks: bool = param(True, "each periodic evaluation and second test drives new tracks, and the "
                                     "shipped controller drives them too, so a challenger is measured against "
                                     "it rather than against the score it was picked with (off: the same "
                                     "tracks every time)")
    workers: int = param(default_workers(), "worker processes running rollouts on this machine", minimum=1,
                         maximum=MAX_WORKERS)
    ray_address: str = param("", RAY_ADDRESS_HELP)
    seed: int = param(0, "seed of CMA-ES and of the training tracks", minimum=0, maximum=MAX_SEED)
    env: str = param("fast", "CarRacing implementation: fast (identical frames) or stock", choices=ENV_CHOICES)
    init_from: str = param("", "a new evolution starts its CMA-ES mean at this controller (a folder with "
                               "params.npz, e.g. models/controller) instead of zero; ignored on resume")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / "controller"


@dataclass(frozen=True)
class EvaluateConfig:
    """A controller on a fixed list of tracks the training never saw."""

    model_dir: str = param(SHIPPED_MODEL_DIR, "world-model folder holding vae/, rnn/ and controller/",
                           path=True)
    episodes: int = param(100, "episodes, on track seeds first_seed, first_seed + 1, ...", minimum=1,
                          maximum=100_000)
    first_seed: int = param(EVAL_SEED_BASE, "track seed of the first episode (the documented list "
                                             "starts at 1000000)", minimum=0)
    max_steps: int = param(1000, "env steps per episode at most", minimum=1, maximum=1000)
    workers: int = param(default_workers(), "worker processes running episodes on this machine", minimum=1,
                         maximum=MAX_WORKERS)
    ray_address: str = param("", RAY_ADDRESS_HELP)
    env: str = param("stock", "CarRacing implementation; stock makes scores comparable with published "
                              "ones", choices=ENV_CHOICES)
    out: str = param("", "JSON file for the report (default: <model_dir>/controller/evaluation.json, or "
                         f"<params>.evaluation.json with --params; never inside {SHIPPED_MODEL_DIR}/, whose "
                         f"reports go to {SHIPPED_OUTPUTS_DIR}/)")
    params: str = param("", "controller to drive instead of the model's own: a params.npz, an evolution's "
                            "latest.npz (its CMA-ES mean) or a snapshot of it (python -m core snapshot), on "
                            "the model's V and M")


@dataclass(frozen=True)
class RecordConfig:
    """One episode rendered to MP4: the agent driving, or a saved action log replayed on its seed."""

    model_dir: str = param(SHIPPED_MODEL_DIR, "world-model folder of the agent (ignored with --actions)",
                           path=True)
    seed: int = param(EVAL_SEED_BASE, "track seed", minimum=0)
    actions: str = param("", "JSON or .npy action log to replay instead of the agent")
    out: str = param("episode.mp4", "MP4 file to write", path=True)
    max_steps: int = param(1000, "env steps at most", minimum=1, maximum=1000)
    scale: int = param(4, "pixel upscale of the 96x96 observation in the video", minimum=1, maximum=10)
    fps: int = param(50, "frames a second of the video (the env runs at 50)", minimum=1, maximum=120)
    env: str = param("fast", "CarRacing implementation", choices=ENV_CHOICES)


@dataclass(frozen=True)
class ExportConfig:
    """Copy a trained world model into the folder the app ships with, lean and atomically."""

    run_dir: str = param(DEFAULT_RUN_DIR, "world-model folder to export (vae/, rnn/, controller/)", path=True)
    out_dir: str = param(SHIPPED_MODEL_DIR, "destination; replaced as a whole, never left half written",
                         path=True)
    training_state: bool = param(True, "include the CMA-ES state so evolution can resume from the export")
    params: str = param("", "controller to ship instead of the run's kept one: a params.npz, an evolution's "
                            "latest.npz (its CMA-ES mean) or a snapshot of it (python -m core snapshot); it "
                            "needs --evaluation")
    evaluation: str = param("", "evaluation report (JSON) of the shipped controller, from python -m core "
                                "evaluate; default: the run's own, left out if it is of another controller")

    def check(self) -> None:
        if self.params and not self.evaluation:
            raise ConfigError("--params needs --evaluation: a controller picked outside the evolution ships with "
                              "its report (python -m core evaluate --model-dir <run> --params <file> --out <report>)")


@dataclass(frozen=True)
class SnapshotConfig:
    """Freeze an evolution's current CMA-ES mean or averaged mean into a file, to evaluate and ship it."""

    run_dir: str = param(DEFAULT_RUN_DIR, "world-model folder whose evolution to take it from (its "
                         "controller/latest.npz, rewritten every generation)", path=True)
    which: str = param("average", "the CMA-ES mean, or its moving average over the last generations (--average "
                       "of evolve), which drives better at a plateau", choices=("mean", "average"))


@dataclass(frozen=True)
class CompareConfig:
    """Two controllers' evaluation reports on the same tracks, compared track by track."""

    baseline: str = param(f"{SHIPPED_MODEL_DIR}/controller/evaluation.json", "evaluation report (JSON) of the "
                          "controller to beat; several of it on other tracks joined with commas", path=True)
    challenger: str = param("", "evaluation report (JSON) of the controller to test, from python -m core "
                                "evaluate --model-dir <run> --out <file>; several joined with commas", path=True)
    out: str = param("", "JSON file for the comparison; empty: printed only")

