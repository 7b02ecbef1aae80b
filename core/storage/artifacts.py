"""Artifacts: folders of weights + config.json + meta.json, written atomically and validated on load.

Every write goes to a temporary file in the same folder and is renamed over the target, so a crash (even
``kill -9``) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from core.errors import UserError

FORMAT_VERSION = 1  # bump when an artifact's layout changes incompatibly


PARTS = ("vae", "rnn", "controller")  # a world model's folders: V, M and C
WEIGHT_FILES = {"vae": "vae.weights.h5", "rnn": "rnn.weights.h5", "controller": "params.npz"}  # in each part

class ArtifactError(UserError, RuntimeError):
    """A missing, corrupt or incompatible artifact; the message says which file and how to fix it."""


TRAINED_BY = {"vae": ("VAE", "train-vae"), "rnn": ("MDN-RNN", "train-rnn")}  # a part: what it is, the stage


def require_weights(part_dir: Path | str, part: str) -> None:
    """An ArtifactError naming the stage to run unless ``part_dir`` holds V's or M's (``part``) weights file."""
    part_dir = Path(part_dir)
    if not (part_dir / WEIGHT_FILES[part]).exists():
        what, stage = TRAINED_BY[part]
        raise ArtifactError(f"{part_dir}: no {what} weights ({WEIGHT_FILES[part]}); train one first "
                            f"(python -m core {stage})")


def one_line(error: BaseException, limit: int = 240) -> str:
    """A library's error message (Keras's run over many lines) as one line of at most ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WriteError(ArtifactError):
    """A file that could not be written because the disk is full or its folder is read-only. What was there
    before is as it was (every write is atomic): free some space, or make the folder writable, and run the
    stage again to go on from its last checkpoint."""


DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
READ_ONLY = {errno.EROFS: "the folder is read-only", errno.EACCES: "the folder is not writable",
             errno.EPERM: "the folder is not writable"}


def write_error(path: Path | str, error: BaseException) -> BaseException:
    """``error``, met while writing ``path``, as a WriteError if the disk is full or the folder read-only
    (h5py's errors carry the errno in their text only); any other error as it is."""
    number = getattr(error, "errno", None)
    if number is None:
        text = str(error)
        number = next((n for n in (*DISK_FULL, *READ_ONLY) if f"errno = {n}," in text or os.strerror(n) in text),
                      None)
    reason = DISK_FULL.get(number) or READ_ONLY.get(number)
    if reason is None:
        return error
    fix = "free some space" if number in DISK_FULL else "make it writable or give another folder"
    return WriteError(f"{path}: not written, {reason} ({os.strerror(number)}); {fix} and run the stage again: "
                      "what was saved before is as it was, and the stage goes on from its last checkpoint")


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a full disk or a read-only folder met in the block into a WriteError naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # RuntimeError: h5py's, for some failed writes
        error = write_error(path, e)
        if error is e:
            raise
        raise error from None


@contextlib.contextmanager
def _atomic_file(path: Path | str) -> Iterator[IO[bytes]]:
    """A binary handle on a temporary file beside ``path``, synced and renamed over it when the block
    ends; if the block raises, the temporary file goes and ``path`` is untouched. A full disk or a
    read-only folder is a WriteError naming ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npz(path: Path | str, compressed: bool = True, **arrays: np.ndarray) -> None:
    """Write a .npz atomically (np.savez appends .npz to names without it, so write to a handle)."""
    with _atomic_file(path) as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


JSON_KEY = "json"  # the entry of an arrays-and-JSON .npz that holds its JSON document
# What NumPy raises for a damaged .npz: a truncated or zero-byte file, a bad member, a pickle in disguise.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def atomic_save_arrays_json(path: Path | str, document: Any, arrays: dict[str, np.ndarray]) -> None:
    """One .npz of ``arrays`` and a JSON ``document`` (its UTF-8 bytes as the array ``json``), written
    atomically: a checkpoint whose parts can never come from two moments."""
    text = json.dumps(document, default=_json_default).encode("utf-8")
    atomic_save_npz(path, **{JSON_KEY: np.frombuffer(text, np.uint8)}, **arrays)


def load_arrays_json(path: Path | str, what: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The JSON document and the arrays of a file ``atomic_save_arrays_json`` wrote. Read with
    ``allow_pickle=False``: nothing in it can run code. A missing or damaged file is an ArtifactError."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        document = json.loads(arrays.pop(JSON_KEY).tobytes().decode("utf-8"))
    except (*NPZ_ERRORS, RecursionError) as e:  # RecursionError: JSON nested beyond reason
        raise ArtifactError(f"{path}: {what} is unreadable ({type(e).__name__}: {e}); restore it from a copy "
                            "or delete it and run the stage again") from None
    return document, arrays


H5_OVERHEAD_BYTES = 1 << 20  # room an .h5 weights file needs beyond its arrays (names, layout), generously


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # compiled model -> its uncompiled twin


def atomic_save_keras(model: Any, path: Path | str) -> None:
    """Save a Keras model's own weights (``.weights.h5``) atomically.

    A compiled model's ``save_weights`` also writes the optimizer's slots (three times the size for Adam);
    the weights are copied into an uncompiled twin first so the file holds the model alone.
    """
    path = Path(path)
    if getattr(model, "optimizer", None) is not None:
        twin = _TWINS.get(model)
        if twin is None:  # made once per model: building one costs more than writing its weights
            twin = _TWINS[model] = model.__class__(**model.get_config())
        twin.set_weights(model.get_weights())
        model = twin
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # HDF5 can crash the process (SIGSEGV in h5py's close) when the disk fills during a write: make sure of
        # the room first. (Another writer can still take it meanwhile.)
        needed = int(1.1 * sum(np.asarray(w).nbytes for w in model.get_weights())) + H5_OVERHEAD_BYTES
        if shutil.disk_usage(path.parent).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path | str, what: str = "file") -> dict:
    """The JSON object in ``path``; missing, unreadable, not JSON, or JSON of another kind (a list where an
    object belongs, say) is an ArtifactError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, a number too long to read, nested too deep
        raise ArtifactError(f"{path}: {what} is corrupt ({type(e).__name__}: {e}); delete it and re-run the stage "
                            "that makes it") from None
    except OSError as e:  # a folder where the file belongs, say
        raise ArtifactError(f"{path}: {what} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: {what} is a JSON {type(data).__name__}, not an object; restore it or delete it "
                            "and re-run the stage that makes it")
    return data


def checked_config(cls: type, data: Any, path: Path | str, what: str) -> Any:
    """A stage config saved beside an artifact (``data``, read from ``path``), rebuilt and checked: one that
    does not fit this version (not an object, a field of the wrong kind, a value out of range) is an
    ArtifactError naming the file rather than a traceback."""
    from core.config import from_dict
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        return from_dict(cls, data, upper_bounds=False)
    except (ValueError, TypeError, AttributeError) as e:  # ConfigError is a ValueError
        raise ArtifactError(f"{path}: {what} does not fit this version of the project ({e}); retrain that stage, "
                            "or restore the file it came with") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = {"python": platform.python_version()}
    for name in ("numpy", "tensorflow-cpu", "tensorflow", "keras", "gymnasium", "cma"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def hash_files(paths: Iterable[Path | str]) -> str:
    """A short hash over file names and sizes: identifies a data set without reading it all."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def write_meta(out_dir: Path | str, kind: str, config: dict, metrics: dict, *, seed: int | None = None,
               data_hash: str | None = None, extra: dict | None = None) -> dict:
    """Write ``meta.json`` describing the artifact in ``out_dir``; returns what it wrote."""
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "created": now_iso(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "seed": seed,
        "data_hash": data_hash,
        "config": config,
        "metrics": metrics,
    }
    if extra:
        meta.update(extra)
    atomic_write_json(Path(out_dir) / "meta.json", meta)
    return meta


def read_meta(out_dir: Path | str, kind: str) -> dict:
    """Read and check ``meta.json``: it must exist, parse, be of ``kind`` and of a known format version."""
    path = Path(out_dir) / "meta.json"
    if not path.exists():
        raise ArtifactError(f"{out_dir}: no {kind} artifact here (meta.json missing); "
                            f"train it first (python -m core {_stage_for(kind)})")
    meta = read_json(path, f"{kind} metadata")
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a {meta.get('kind')!r} artifact, expected {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {meta.get('format_version')} but this code reads "
                            f"{FORMAT_VERSION}; retrain it with python -m core {_stage_for(kind)}")
    return meta


def _stage_for(kind: str) -> str:
    return {"vae": "train-vae", "rnn": "train-rnn", "controller": "evolve"}.get(kind, kind)


class History:
    """Append-only ``history.jsonl`` of metrics; survives restarts so curves can be redrawn."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Add ``record`` as one line; a line a full disk cut short is taken back, so none is ever torn."""
        line = (json.dumps(record, default=_json_default) + "\n").encode("utf-8")
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                size = f.tell()
                try:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(size)
                    raise

    def read(self) -> list[dict]:
        return read_history(self.path)

    def truncate_after(self, key: str, value: float) -> None:
        """Drop records whose ``key`` is beyond ``value`` (those after the last checkpoint, on resume)."""
        kept = [r for r in self.read() if r.get(key, -1) <= value]
        atomic_write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))


def read_history(path: Path | str) -> list[dict]:
    """Records of a ``history.jsonl``; a torn line (crash mid-write) or one that is not an object is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):  # a line of another kind is no record either
            records.append(record)
    return records


class RunLock:
    """An exclusive lock on an output folder, so two runs never write the same artifact.

    ``flock`` on ``<folder>/.lock``: the kernel releases it when the process ends, even by ``kill -9``,
    so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, folder: Path | str, what: str):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl
        path = self.folder / ".lock"
        with writing(path):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ArtifactError(f"{self.folder}: another {self.what} run (pid {owner}) is writing here; wait for "
                                "it to finish or stop it first") from None
        with contextlib.suppress(OSError):  # the pid only names the owner in the message above; a full disk
            os.ftruncate(fd, 0)             # may refuse it
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
