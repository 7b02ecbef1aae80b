"""Export: a trained world model into the shipped folder (``models/`` by default).

Only what the app and a resumed evolution need travels: weights, ``config.json``, ``meta.json``,
``history.jsonl``, the controller's evaluation and (optionally) its CMA-ES state; never checkpoints with
optimizer slots or the RNN's encoded-frame cache. The new folder is assembled beside the old one and
swapped in with renames, so an interrupted export leaves the previous model in place.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core.artifacts import ArtifactError, RunLock, read_meta
from core.config import ExportConfig, validate
from core.progress import ProgressCallback, keep_going

PARTS = {
    "vae": ("vae.weights.h5", "config.json", "meta.json", "history.jsonl"),
    "rnn": ("rnn.weights.h5", "config.json", "meta.json", "history.jsonl"),
    "controller": ("params.npz", "latest.npz", "config.json", "meta.json", "history.jsonl", "evaluation.json",
                   "state.json"),
}
TRAINING_STATE = ("cma_state.pkl",)
REQUIRED = {"vae.weights.h5", "rnn.weights.h5", "params.npz", "config.json"}


def export(config: ExportConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Copy ``run_dir``'s vae/, rnn/ and controller/ into ``out_dir``; returns the files and their size."""
    validate(config)
    src, dst = Path(config.run_dir), Path(config.out_dir).resolve()
    _check_destination(src, dst)
    # An evolution writes its controller every generation: wait for a consistent one rather than copy the
    # state of one generation beside the CMA-ES state of the next.
    with RunLock(src / "controller", "training"):
        return _export(config, src, dst, on_progress)


def _check_destination(src: Path, dst: Path) -> None:
    """``dst`` is replaced as a whole (its loose files carried over): it must be new, hold only files, or
    be an earlier export; never a folder of other folders (the project folder, say) or the run itself."""
    src = src.resolve()
    if src == dst:
        raise ArtifactError(f"--run-dir and --out-dir are both {src}; export needs another destination")
    if dst in src.parents:
        raise ArtifactError(f"--out-dir {dst} contains --run-dir {src}; export into a folder of its own")
    if dst.exists() and not dst.is_dir():
        raise ArtifactError(f"--out-dir {dst} is a file; export needs a folder")
    if dst.is_dir() and not any((dst / kind).is_dir() for kind in PARTS):
        folders = sorted(p.name for p in dst.iterdir() if p.is_dir())
        if folders:  # a model card beside the model is fine; other folders mean this is not a model folder
            raise ArtifactError(f"--out-dir {dst} holds other folders ({', '.join(folders[:3])}) and no world "
                                "model (no vae/, rnn/ or controller/); export into a new folder, or over an "
                                "earlier export")


def _export(config: ExportConfig, src: Path, dst: Path, on_progress: ProgressCallback) -> dict:
    for kind in PARTS:
        read_meta(src / kind, kind)  # only finished (or cleanly stopped) stages export
    from core.agent import Agent
    Agent.load(src)  # V, M and C load and fit together
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.new."))
    copied, total_bytes = [], 0
    try:
        for i, (kind, names) in enumerate(PARTS.items()):
            (staging / kind).mkdir()
            wanted = names + (TRAINING_STATE if kind == "controller" and config.training_state else ())
            for name in wanted:
                if (src / kind / name).exists():
                    shutil.copy2(src / kind / name, staging / kind / name)
                    copied.append(f"{kind}/{name}")
                    total_bytes += (src / kind / name).stat().st_size
                elif name in REQUIRED:
                    raise ArtifactError(f"{src / kind / name}: missing; finish that stage before exporting")
            on_progress(i + 1, len(PARTS), {"part": kind})
        keep = [p for p in dst.iterdir() if p.name not in PARTS] if dst.exists() else []
        for p in keep:  # files of the folder that are not part of the model (a README, say) stay
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, staging / p.name)
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            dst.rename(old)
        staging.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"out_dir": str(dst), "files": len(copied), "megabytes": round(total_bytes / 2**20, 2)}
