"""The AI that races: which world-model folders can drive, each loaded once per folder and version of its
weights and shared by every race, warmed up in the background before the player asks for it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from core.app import app_data
from core.app.race.errors import RaceError
from core.storage.artifacts import PARTS, WEIGHT_FILES, ArtifactError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# The AI


_BLAS_LIMITED = False


def single_threaded_blas() -> bool:
    """Make NumPy's BLAS single-threaded in this process (once); returns whether it could.

    The race steps each car on its own thread, 50 times a second. With BLAS free to start a thread per
    core, the agent's small matrix products (about 2 ms a step alone) took about 100 ms a step on two
    busy cores, as BLAS threads fought the race threads. Worker processes get the same effect from
    ``OPENBLAS_NUM_THREADS=1`` (``core.envs.env.spawn_context``), but in the app's server NumPy is loaded
    before any race exists, so the limit is set on the loaded library.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return True
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1, user_api="blas")
        _BLAS_LIMITED = True
        return True
    except ImportError:
        pass
    import ctypes
    import glob
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                _BLAS_LIMITED = True
                return True
    log.warning("could not limit NumPy's BLAS to one thread; the AI may step slowly on a busy machine")
    return False


_AGENT_CACHE: dict[str, tuple[tuple[float, ...], dict, np.ndarray]] = {}  # folder -> (stamp, weights, params)
_AGENT_LOCK = threading.Lock()


WEIGHT_PATHS = tuple(f"{part}/{WEIGHT_FILES[part]}" for part in PARTS)  # what the AI drives with


def _model_stamp(model_dir: Path) -> tuple[float, ...]:
    """The version of a model's weights: their modification times (an evolution also rewrites history,
    meta and state files every generation, which change nothing the AI loads)."""
    stamps = []
    for name in WEIGHT_PATHS:
        try:
            stamps.append((model_dir / name).stat().st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)


def is_world_model(path: Path | str) -> bool:
    path = Path(path)
    return all((path / sub).is_dir() for sub in ("vae", "rnn", "controller")) and \
        (path / "controller" / WEIGHT_FILES["controller"]).exists()


def available_models(root: Path | str | None = None) -> list[str]:
    """World-model folders the AI can drive with (vae/, rnn/ and a controller), found as every page finds
    them (``app_data.model_dirs``: models/, runs/, runs/*/ and runs*/); paths relative to ``root``
    (default: the app's folder, as every page resolves paths), the default model first."""
    return app_data.model_dirs(root=root)  # it checks every part's weight file, so is_world_model holds


def resolve_model_dir(model_dir: str) -> Path:
    return app_data.resolve(model_dir)


def load_agent(model_dir: str):
    """A fresh ``core.models.agent.Agent`` for ``model_dir`` (weights loaded once per folder and version)."""
    from core.models.agent import Agent, load_world_model

    path = resolve_model_dir(model_dir)
    if not is_world_model(path):
        raise RaceError(f"no trained world model in {model_dir!r} (it needs vae/, rnn/ and controller/); "
                        "train one, or pick another model")
    key, stamp = str(path.resolve()), _model_stamp(path)
    with _AGENT_LOCK:
        cached = _AGENT_CACHE.get(key)
        if cached is None or cached[0] != stamp:  # one version per folder: a newer one replaces it
            try:
                weights, params = load_world_model(path)
            except ArtifactError as e:
                raise RaceError(f"the AI in {model_dir!r} cannot be loaded: {e}") from None
            cached = _AGENT_CACHE[key] = (stamp, weights, params)
        _, weights, params = cached
    return Agent(weights, params)


def model_label(model_dir: str) -> str:
    """How the leaderboard names an AI: its folder and its controller's CMA-ES generation, so runs of two
    versions of ``models/`` stay apart (``"models (generation 146)"``); the folder alone if unknown."""
    from core.storage.artifacts import read_json
    try:
        generation = int(read_json(resolve_model_dir(model_dir) / "controller" / "state.json",
                                   "evolution state")["generation"])
    except (ArtifactError, KeyError, TypeError, ValueError):
        return model_dir
    return f"{model_dir} (generation {generation})"


def warm_up(model_dir: str) -> None:
    """Load ``model_dir``'s weights in the background (TensorFlow's import and the load take seconds), so
    the race starts at once when the player asks for the AI. Errors wait for the real load to report."""
    path = resolve_model_dir(model_dir)
    if not is_world_model(path):
        return
    with _AGENT_LOCK:
        cached = _AGENT_CACHE.get(str(path.resolve()))
        if cached is not None and cached[0] == _model_stamp(path):
            return

    def load() -> None:
        try:
            load_agent(model_dir)
        except Exception:  # noqa: BLE001 - reported when the player starts the race
            log.debug("warming up %s failed", model_dir, exc_info=True)

    threading.Thread(target=load, name="race-warm-up", daemon=True).start()
