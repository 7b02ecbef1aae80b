"""The agent's weights cache: V's encoder and M's NumPy weights (``core.models.agent.extract_weights``), saved
once per set of V and M files and found again by a hash of those files.

Loading V and M with Keras takes seconds, most of it importing TensorFlow; reading this cache takes
milliseconds and needs no TensorFlow, so the Race page's AI, evaluations and evolutions start at once, and
evaluations and evolutions run on machines without TensorFlow. The entries live in a folder of their own
(``weights_cache_dir``), never in the model folder: the app leaves ``models/`` as committed. An entry is
used only for the exact files it was made from (their bytes and the artifact format are hashed; each
entry also stores its full hash) and only if its arrays fit together; anything else is ignored and
rebuilt. The ``CACHE_KEEP`` most recently used entries are kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from core.storage.artifacts import FORMAT_VERSION, WEIGHT_FILES, atomic_save_npz

log = logging.getLogger(__name__)

CACHE_ENV = "WORLD_MODELS_CACHE"
CACHE_KEEP = 16  # entries kept (4.4 MB each at the paper's sizes)
CACHE_VERSION = 1  # bump when extract_weights changes what it returns
SOURCES = tuple(f"{part}/{name}" for part in ("vae", "rnn") for name in ("config.json", "meta.json", WEIGHT_FILES[part]))
KEYS = ("mu_w", "mu_b", "lstm_kernel", "lstm_recurrent", "lstm_bias", "mdn_w", "mdn_b", "reward_w", "reward_b",
        "done_w", "done_b", "mixtures")
CONVS = 4  # V's encoder: four 4x4 stride-2 convolutions (core.models.agent.encode_mu)


def weights_cache_dir() -> Path | None:
    """``$WORLD_MODELS_CACHE``, else ``$XDG_CACHE_HOME/world-models``, else ``~/.cache/world-models``; None
    where there is no home folder to put it in (loading then goes on without a cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "world-models"
    try:
        return Path.home() / ".cache" / "world-models"
    except RuntimeError:  # no HOME and no passwd entry (a container run as an unknown uid)
        return None


def fingerprint(model_dir: Path | str) -> str | None:
    """SHA-256 over V's and M's configs, metadata and weights files in ``model_dir`` (and the artifact
    format and cache versions); None if one is missing."""
    h = hashlib.sha256(f"agent weights v{CACHE_VERSION}, artifacts v{FORMAT_VERSION}".encode())
    for name in SOURCES:
        path = Path(model_dir) / name
        try:
            with open(path, "rb") as f:
                h.update(f"{name}:{path.stat().st_size}:".encode())
                hashlib.file_digest(f, lambda: h)  # streams the file into h
        except OSError:
            return None
    return h.hexdigest()


def world_model_sha256(model_dir: Path | str) -> str | None:
    """SHA-256 of V's and M's weights files in ``model_dir``: names the V and M an evaluation report was
    driven with (an export copies them byte for byte); None if one is missing."""
    h = hashlib.sha256()
    for name in (f"{part}/{WEIGHT_FILES[part]}" for part in ("vae", "rnn")):
        try:
            with open(Path(model_dir) / name, "rb") as f:
                hashlib.file_digest(f, lambda: h)
        except OSError:
            return None
    return h.hexdigest()


def entry_path(key: str) -> Path | None:
    """Where the entry of the files with fingerprint ``key`` lives (None without a cache folder)."""
    folder = weights_cache_dir()
    return folder / f"agent-weights-{key[:32]}.npz" if folder else None


def read(key: str) -> dict | None:
    """The cached weights of the files with fingerprint ``key`` if a consistent set of arrays is cached for
    them; None (the caller loads with Keras) otherwise."""
    path = entry_path(key)
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s: unreadable weights cache entry (%s); loading V and M with Keras", path, e)
        return None
    try:
        if str(arrays.pop("fingerprint", "")) != key:
            raise ValueError("made from other files")
        weights = {k: (v if k == "mixtures" else v.astype(np.float32, copy=False)) for k, v in arrays.items()}
        check(weights)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        log.warning("%s: inconsistent weights cache entry (%s); loading V and M with Keras", path, e)
        return None
    try:
        os.utime(path)  # recently used: pruned last
    except OSError:
        pass
    return weights


def write(weights: dict, key: str) -> Path | None:
    """Cache ``weights`` as the entry of the files with fingerprint ``key`` (atomically), then prune to the
    ``CACHE_KEEP`` most recently used entries; the entry, or None where the cache folder cannot be written."""
    path = entry_path(key)
    if path is None:
        return None
    try:
        atomic_save_npz(path, compressed=False, fingerprint=np.array(key), **weights)
    except OSError as e:
        log.info("weights cache entry not written (%s)", e)
        return None
    _prune(path.parent)
    return path


def _prune(folder: Path) -> None:
    """Keep the newest ``CACHE_KEEP`` entries; drop temporary files of writes killed an hour or more ago."""
    try:
        entries = sorted(folder.glob("agent-weights-*.npz"), key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in entries[CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
        for tmp in folder.glob(".agent-weights-*.tmp"):
            if tmp.stat().st_mtime < time.time() - 3600:
                tmp.unlink(missing_ok=True)
    except OSError:  # another process pruning at the same time
        pass


def check(w: dict) -> None:
    """Raise KeyError or ValueError unless ``w`` is a complete set of agent weights whose shapes chain:
    frames -> four convolutions -> z -> LSTM -> heads."""
    missing = [k for k in KEYS if k not in w] + [f"conv{i}_{p}" for i in range(CONVS) for p in "wb"
                                                  if f"conv{i}_{p}" not in w]
    if missing:
        raise KeyError(f"missing arrays: {', '.join(missing)}")
    if np.shape(w["mixtures"]) != () or int(w["mixtures"]) < 1:
        raise ValueError(f"mixtures is {w['mixtures']!r}, expected a positive number")
    channels = 3
    for i in range(CONVS):
        expected = (16 * channels, w[f"conv{i}_w"].shape[-1])
        if w[f"conv{i}_w"].shape != expected or w[f"conv{i}_b"].shape != (expected[1],):
            raise ValueError(f"conv{i} has shapes {w[f'conv{i}_w'].shape} / {w[f'conv{i}_b'].shape}, expected "
                             f"{expected} / {(expected[1],)}")
        channels = expected[1]
    if w["mu_w"].ndim != 2 or w["mu_w"].shape[0] != 4 * channels or w["lstm_recurrent"].ndim != 2:
        raise ValueError(f"mu_w {w['mu_w'].shape} or lstm_recurrent {w['lstm_recurrent'].shape} do not fit")
    z, hidden, k = w["mu_w"].shape[1], w["lstm_recurrent"].shape[0], int(w["mixtures"])
    expected = {"mu_b": (z,), "lstm_kernel": (z + 3, 4 * hidden), "lstm_recurrent": (hidden, 4 * hidden),
                "lstm_bias": (4 * hidden,), "mdn_w": (hidden, 3 * k * z), "mdn_b": (3 * k * z,),
                "reward_w": (hidden, 1), "reward_b": (1,), "done_w": (hidden, 1), "done_b": (1,)}
    for name, shape in expected.items():
        if w[name].shape != shape:
            raise ValueError(f"{name} has shape {w[name].shape}, expected {shape}")
