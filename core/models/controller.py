"""C: the linear controller, ``action = squash(W [z, h] + b)``, behind a flat parameter vector.

With z = 32 and h = 256 it has 3 * 288 + 3 = 867 parameters. Squashing (the paper's): steer = tanh,
gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1); so every action lies in ``[-1, 0, 0]..[1, 1, 1]``.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from core.envs.actions import ACTION_SIZE
from core.storage.artifacts import NPZ_ERRORS, WEIGHT_FILES, ArtifactError, atomic_save_npz, read_json, read_meta

PARAMS_FILE = WEIGHT_FILES["controller"]
LATEST_FILE = "latest.npz"  # an evolution's CMA-ES mean, last generation's best candidate and averaged mean
# The keys a controller file may hold its parameters under, in the order they are looked for, and what each
# names: a params.npz, an evolution's latest.npz (its CMA-ES mean; it holds the averaged mean too), or a
# snapshot of one of the two (snapshot_params).
PARAMS_KEYS = {"params": "controller", "mean": "CMA-ES mean", "average": "averaged mean"}
SNAPSHOT_KINDS = ("mean", "average")  # what an evolution's latest.npz holds that snapshot_params freezes
SNAPSHOT_FILE = "{which}-gen{generation}-{sha8}.npz"


def num_params(z_size: int, hidden: int) -> int:
    return ACTION_SIZE * (z_size + hidden) + ACTION_SIZE


def squash(raw: np.ndarray) -> np.ndarray:
    """float (..., 3) pre-activations -> float32 actions (steer, gas, brake) in the env's ranges."""
    t = np.tanh(raw)
    out = np.empty_like(t, dtype=np.float32)
    out[..., 0] = t[..., 0]
    out[..., 1] = (t[..., 1] + 1.0) / 2.0
    out[..., 2] = np.clip(t[..., 2], 0.0, 1.0)
    return out


class Controller:
    """Linear policy on [z, h]. ``act(z float32 (z_size,), h float32 (hidden,)) -> float32 (3,)``."""

    def __init__(self, z_size: int, hidden: int, params: np.ndarray | None = None):
        self.z_size, self.hidden = z_size, hidden
        self.n_params = num_params(z_size, hidden)
        self.set_params(np.zeros(self.n_params, np.float32) if params is None else params)

    def set_params(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.float32).ravel()
        if flat.size != self.n_params:
            raise ValueError(f"controller for z = {self.z_size}, h = {self.hidden} takes {self.n_params} "
                             f"parameters, got {flat.size}")
        n_in = self.z_size + self.hidden
        self.weight = flat[:ACTION_SIZE * n_in].reshape(ACTION_SIZE, n_in).copy()
        self.bias = flat[ACTION_SIZE * n_in:].copy()
        # Split once so act() needs no concatenation: W [z, h] = Wz z + Wh h.
        self.w_z = np.ascontiguousarray(self.weight[:, :self.z_size].T)
        self.w_h = np.ascontiguousarray(self.weight[:, self.z_size:].T)
        self.weight_t = np.ascontiguousarray(self.weight.T)  # (z + hidden, 3): the agent's step graph takes W so

    def get_params(self) -> np.ndarray:
        return np.concatenate([self.weight.ravel(), self.bias]).astype(np.float32)

    def act(self, z: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One action, or a batch: z (..., z_size), h (..., hidden) -> (..., 3)."""
        return squash(z @ self.w_z + h @ self.w_h + self.bias)


def params_sha256(params: np.ndarray) -> str:
    """Hex SHA-256 of a controller's parameters as float32: names one controller in evaluation reports and
    an evolution's lineage."""
    return hashlib.sha256(np.asarray(params, np.float32).tobytes()).hexdigest()


def save_params(out_dir: Path | str, params: np.ndarray, z_size: int, hidden: int, **extra: np.ndarray) -> None:
    atomic_save_npz(Path(out_dir) / PARAMS_FILE, params=np.asarray(params, np.float32), z_size=np.int64(z_size),
                    hidden=np.int64(hidden), **extra)


def load_controller(controller_dir: Path | str, z_size: int | None = None, hidden: int | None = None) -> Controller:
    """Load the best controller of an evolve run, checking it fits V's z and M's h."""
    controller_dir = Path(controller_dir)
    if (controller_dir / "meta.json").exists():
        read_meta(controller_dir, "controller")
    path = controller_dir / PARAMS_FILE
    if not path.exists():
        raise ArtifactError(f"{controller_dir}: no controller ({PARAMS_FILE}); evolve one first "
                            "(python -m core evolve)")
    try:
        with np.load(path, allow_pickle=False) as f:
            params, cz, ch = f["params"], int(f["z_size"]), int(f["hidden"])
    except (*NPZ_ERRORS, TypeError) as e:  # TypeError: z_size or hidden not one number
        raise ArtifactError(f"{path}: unreadable controller ({type(e).__name__}: {e})") from None
    if (z_size is not None and cz != z_size) or (hidden is not None and ch != hidden):
        raise ArtifactError(f"{path}: controller expects z = {cz}, h = {ch} but the world model has z = {z_size}, "
                            f"h = {hidden}; evolve a controller for this V and M")
    try:
        return Controller(cz, ch, params)
    except ValueError as e:  # parameters of another size than its z and h call for
        raise ArtifactError(f"{path}: {e}") from None


def load_params_file(path: Path | str, z_size: int, hidden: int) -> tuple[np.ndarray, dict]:
    """A controller's parameters from a file other than a run's ``params.npz``: a saved ``params.npz``, an
    evolution's ``latest.npz`` (its CMA-ES mean), or a snapshot of its mean or averaged mean. Returns them
    with where they came from (``file``, ``key`` from PARAMS_KEYS and the ``generation`` where the file names
    one), checked to fit V's z and M's h."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: a folder; give the file, e.g. {path / PARAMS_FILE}")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file; give a params.npz, an evolution's latest.npz or a snapshot "
                            "of it (python -m core snapshot)")
    try:
        f = np.load(path, allow_pickle=False)
    except ValueError:  # neither .npz nor .npy: NumPy takes it for a pickle, which it refuses
        raise ArtifactError(f"{path}: not a NumPy file; give a params.npz or an evolution's latest.npz") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path}: unreadable controller parameters ({e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ArtifactError(f"{path}: a single array, not a .npz of controller parameters (params.npz or an "
                            "evolution's latest.npz)")
    try:
        with f:
            key = next((k for k in PARAMS_KEYS if k in f.files), None)
            if key is None:
                raise ArtifactError(f"{path}: holds no controller parameters (no 'params' as in params.npz, no "
                                    "'mean' as in an evolution's latest.npz, no 'average' as in a snapshot of "
                                    "its averaged mean)")
            params = np.asarray(f[key], np.float32)
            sizes = {k: int(f[k]) for k in ("z_size", "hidden", "generation") if k in f.files}
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path}: unreadable controller parameters ({e})") from None
    want = num_params(z_size, hidden)
    if params.shape != (want,) or sizes.get("z_size", z_size) != z_size or sizes.get("hidden", hidden) != hidden:
        raise ArtifactError(f"{path}: {params.size} parameters for z = {sizes.get('z_size', '?')}, h = "
                            f"{sizes.get('hidden', '?')}; this world model (z = {z_size}, h = {hidden}) needs {want}")
    if not np.all(np.isfinite(params)):
        raise ArtifactError(f"{path}: its parameters are not all finite numbers")
    source = {"file": str(path), "key": key, "params_sha256": params_sha256(params)}
    if "generation" in sizes:
        source["generation"] = sizes["generation"]
    return params, source


def controller_config(controller_dir: Path | str) -> dict:
    return read_json(Path(controller_dir) / "config.json", "controller config")


def snapshot_params(controller_dir: Path | str, which: str = "mean", out_dir: Path | str | None = None) -> Path:
    """Freeze the CMA-ES mean (``which="mean"``) or the averaged mean (``"average"``) that an evolution's
    ``latest.npz`` in ``controller_dir`` holds into a file of its own, and return its path.

    Evolution rewrites ``latest.npz`` every generation, while an evaluation of a controller, and ``export
    --params`` after it, must name a file that still holds what was driven. The snapshot holds the one array
    under its own key (``load_params_file`` names it) with the generation and the z and h it was evolved for
    (from the evolution's config.json), is named by what it holds, the generation and the parameters' hash
    (``average-gen45-1a2b3c4d.npz``, in ``out_dir``, default ``controller_dir``), is written atomically once
    checked, and is kept as it is when there already. ArtifactError when ``latest.npz`` holds no such
    controller, or one that does not fit its evolution."""
    if which not in SNAPSHOT_KINDS:
        raise ValueError(f"which: one of {SNAPSHOT_KINDS}, not {which!r}")
    config = controller_config(controller_dir)
    try:
        z_size, hidden = int(config["z_size"]), int(config["hidden"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{Path(controller_dir) / 'config.json'}: names no z_size and hidden") from None
    source = Path(controller_dir) / LATEST_FILE
    try:
        with np.load(source, allow_pickle=False) as f:
            generation = int(f["generation"])
            params = np.asarray(f[which], np.float32) if which in f.files else None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{source}: no readable CMA-ES mean ({e}); it appears after the first generation "
                            "of an evolution") from None
    if params is None:  # the average appears with the first generation of an evolution that keeps one
        raise ArtifactError(f"{source}: holds no {PARAMS_KEYS[which]} (an evolution run with --average 0 or 1 "
                            "keeps none); --which mean takes its CMA-ES mean")
    if params.shape != (num_params(z_size, hidden),) or not np.all(np.isfinite(params)):
        raise ArtifactError(f"{source}: its {PARAMS_KEYS[which]} is not {num_params(z_size, hidden)} finite "
                            f"numbers, as z = {z_size}, h = {hidden} need")
    copy = Path(out_dir or controller_dir) / SNAPSHOT_FILE.format(which=which, generation=generation,
                                                                  sha8=params_sha256(params)[:8])
    if not copy.exists():
        atomic_save_npz(copy, **{which: params}, generation=np.int64(generation), z_size=np.int64(z_size),
                        hidden=np.int64(hidden))
    return copy
