"""What the Keras training stages share: checkpoints with optimizer state, and resuming from them.

A checkpoint is ``<out_dir>/checkpoint/``: model weights, the optimizer's variables and ``state.json``
(batches done, total, and the ``lineage`` of a run started from trained weights). It is written whole
into ``checkpoint.tmp/`` and swapped in by renames (the previous one goes to ``checkpoint.old/`` until the
new one is in place), so weights, optimizer state and step always belong together; ``recover_checkpoint``
finishes a swap that a crash interrupted. The artifact's own weights are updated at every checkpoint too,
so a stopped run still leaves a usable model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from core.storage.artifacts import (
    NPZ_ERRORS,
    ArtifactError,
    atomic_save_keras,
    atomic_save_npz,
    atomic_write_json,
    one_line,
    read_history,
    read_json,
    read_meta,
    writing,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
CHECKPOINT_TMP = "checkpoint.tmp"  # the next checkpoint while it is written
CHECKPOINT_OLD = "checkpoint.old"  # the previous checkpoint while the next one is swapped in


def configure_tensorflow() -> None:
    """Quiet TensorFlow's start-up chatter; call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def save_checkpoint(out_dir: Path, model, optimizer, state: dict, weights_name: str) -> None:
    """Write weights, optimizer variables and ``state`` as one checkpoint, then the artifact's weights."""
    ckpt, tmp, old = out_dir / CHECKPOINT, out_dir / CHECKPOINT_TMP, out_dir / CHECKPOINT_OLD
    recover_checkpoint(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        atomic_save_keras(model, tmp / weights_name)
        atomic_save_npz(tmp / "optimizer.npz", compressed=False,
                        **{f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        # state.json is written last: it is what says the checkpoint folder is complete.
        atomic_write_json(tmp / "state.json", state)
    except BaseException:  # a full disk, say (a WriteError): the previous checkpoint stays, the space comes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with writing(ckpt):
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)
    atomic_save_keras(model, out_dir / weights_name)


def recover_checkpoint(out_dir: Path) -> None:
    """Leave ``<out_dir>/checkpoint/`` as the newest complete checkpoint, if any, and no leftovers.

    A crash during ``save_checkpoint`` can leave a partial or complete ``checkpoint.tmp/`` and the previous
    checkpoint in ``checkpoint.old/``: a complete ``checkpoint.tmp/`` (it has ``state.json``) is the newest;
    otherwise ``checkpoint.old/`` goes back in place when ``checkpoint/`` is missing.
    """
    ckpt = out_dir / CHECKPOINT
    if not ckpt.exists():
        newest = newest_checkpoint(out_dir)
        if newest is not None:
            os.replace(newest, ckpt)
    shutil.rmtree(out_dir / CHECKPOINT_TMP, ignore_errors=True)
    shutil.rmtree(out_dir / CHECKPOINT_OLD, ignore_errors=True)


def newest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint folder a resume starts from, without changing anything: ``checkpoint/``, or
    the one a crash left mid-swap (``checkpoint.tmp/`` if complete, else ``checkpoint.old/``); None if none."""
    for name in (CHECKPOINT, CHECKPOINT_TMP, CHECKPOINT_OLD):
        if (out_dir / name / "state.json").exists():
            return out_dir / name
    return None


def load_checkpoint(out_dir: Path, model, optimizer, weights_name: str) -> dict | None:
    """Restore weights and optimizer state; returns the saved state, or None when there is no checkpoint.

    The optimizer keeps the learning rate it was made with, so a resumed run trains at the rate asked for
    now; only its step count and moments come from the checkpoint.
    """
    recover_checkpoint(out_dir)
    ckpt = out_dir / CHECKPOINT
    if not (ckpt / "state.json").exists():
        return None
    state = read_json(ckpt / "state.json", "checkpoint state")
    try:
        model.load_weights(ckpt / weights_name)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{ckpt}: checkpoint does not fit this model ({one_line(e)}); use another --run-dir or "
                            f"delete {out_dir} to start over") from None
    optimizer.build(model.trainable_variables)
    try:
        with np.load(ckpt / "optimizer.npz", allow_pickle=False) as f:
            values = [f[k] for k in sorted(f.files)]
    except NPZ_ERRORS as e:
        raise ArtifactError(f"{ckpt / 'optimizer.npz'}: unreadable optimizer state ({one_line(e)}); delete {out_dir} "
                            "to start over") from None
    shapes = [tuple(v.shape) for v in optimizer.variables]
    if [value.shape for value in values] != shapes:
        raise ArtifactError(f"{ckpt / 'optimizer.npz'}: optimizer state has {len(values)} variables that do not fit "
                            f"the {len(shapes)} of this model; delete {out_dir} to start over")
    learning_rate = float(optimizer.learning_rate)
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    optimizer.learning_rate = learning_rate
    return state


def previous_metrics(out_dir: Path, step: int) -> dict:
    """The metrics the artifact's ``meta.json`` recorded at batch ``step``; empty when it has none, cannot be
    read, or is of another step (a later run checkpointed past it, then was killed before its meta.json)."""
    try:
        meta = read_json(out_dir / "meta.json", "metadata")
    except ArtifactError:
        return {}
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    if not isinstance(metrics, dict) or metrics.get("step") != step:
        return {}
    return dict(metrics)


def check_config_matches(out_dir: Path, config: dict, keys: tuple[str, ...], stage: str) -> None:
    """Refuse to resume a checkpoint made with a different architecture."""
    recover_checkpoint(out_dir)
    path = out_dir / "config.json"
    if not path.exists() or not (out_dir / CHECKPOINT / "state.json").exists():
        return
    old = read_json(path, "config")
    diff = [f"{k}: {old.get(k)} -> {config.get(k)}" for k in keys if old.get(k) != config.get(k)]
    if diff:
        raise ArtifactError(f"{out_dir} holds a {stage} checkpoint trained with other settings "
                            f"({'; '.join(diff)}); pass another --run-dir, or delete {out_dir} to start over")


def mark_unfinished(out_dir: Path) -> None:
    """Turn ``complete`` off in the artifact's ``meta.json`` before training changes its weights again (a
    finished run resumed for more epochs): until this session writes its own, the weights on disk are no
    longer the ones it describes, and a run killed meanwhile must not leave them labelled finished."""
    try:
        meta = read_json(out_dir / "meta.json", "metadata")
    except ArtifactError:
        return
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    if isinstance(metrics, dict) and metrics.get("complete"):
        atomic_write_json(out_dir / "meta.json", {**meta, "metrics": {**metrics, "complete": False}})


def checkpoint_state(out_dir: Path) -> dict:
    """The state of the checkpoint in ``out_dir`` ({} without one), read before a run sets up."""
    path = out_dir / CHECKPOINT / "state.json"
    state = read_json(path, "checkpoint state") if path.exists() else {}
    return state if isinstance(state, dict) else {}


def recorded_heldout(state: dict) -> list[str] | None:
    """The held-out episodes a checkpoint was trained beside (``heldout`` in its ``checkpoint_state``), or
    None: no checkpoint, or one from before they were recorded."""
    held = state.get("heldout")
    return [str(name) for name in held] if isinstance(held, list) else None


def check_new_run(out_dir: Path, weights_name: str, init_from: str, stage: str, wanted: dict) -> dict:
    """Checks for a new run (no checkpoint in ``out_dir``), made before any slow work so a typo costs nothing;
    returns the config of the weights it starts ``--init-from`` ({} for a resumed run or random weights).

    - From random weights, it must not replace weights that have no checkpoint (an exported or copied model):
      training over them would lose them. A run started ``--init-from`` (these weights or others) may.
    - ``--init-from`` must hold ``stage`` weights made with the settings of ``wanted`` (config key -> this
      run's value); the message names the flags that would make them fit.
    """
    if newest_checkpoint(out_dir) is not None:
        return {}
    if not init_from:
        if (out_dir / weights_name).exists():
            raise ArtifactError(f"{out_dir} holds {stage} weights but no training checkpoint (an exported "
                                f"model?): give --init-from {out_dir} to fine-tune them, another --run-dir to "
                                f"train a new one, or delete {out_dir} to start over")
        return {}
    folder = Path(init_from)
    if not (folder / weights_name).exists():
        raise ArtifactError(f"--init-from {folder}: no {stage} weights ({weights_name}) there; give the folder of "
                            f"a trained {stage} (models/{weights_name.split('.')[0]}, say)")
    config = read_json(folder / "config.json", f"{stage} config")
    diff = {k: config.get(k) for k, v in wanted.items() if config.get(k) != v}
    if diff:
        have = ", ".join(f"{k} = {v}" for k, v in diff.items())
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in diff.items())
        raise ArtifactError(f"--init-from {folder}: that {stage} has {have}; give {flags} to start from it")
    return config


def resume_or_start(out_dir: Path, model, optimizer, weights_name: str, init_from: str, kind: str
                    ) -> tuple[dict, str]:
    """The state a run goes on from, and the ``init_from`` its artifacts record.

    A checkpoint is resumed (``load_checkpoint``), whatever ``init_from`` says now: the recorded start is the
    one in the checkpoint's lineage, and another ``init_from`` is ignored with a warning. A new run starts at
    step 0 from random weights, or from those of ``init_from`` (checked by ``check_new_run``) with their
    ``lineage``.
    """
    state = load_checkpoint(out_dir, model, optimizer, weights_name)
    if state is None:
        if not init_from:
            return {"step": 0}, ""
        try:
            model.load_weights(Path(init_from) / weights_name)
        except (ValueError, OSError) as e:
            raise ArtifactError(f"--init-from {init_from}: its weights do not fit this model ({one_line(e)})") from None
        return {"step": 0, "lineage": start_lineage(init_from, kind)}, init_from
    lineage = state.get("lineage") or []
    start = lineage[-1]["init_from"] if lineage else ""
    if init_from and init_from != start:
        log.warning("%s: --init-from %s ignored: the run resumes from its checkpoint (started %s)", out_dir,
                    init_from, f"from {start}" if start else "from random weights")
    return state, start


def starts_over_its_own_weights(out_dir: Path | str, init_from: str) -> bool:
    """Whether a run fine-tunes the weights of its own folder (``--init-from`` that folder). Their lineage and
    training time are read from that folder's meta.json and history.jsonl, which the run overwrites as it
    goes, so its start must be checkpointed before anything else is written."""
    return bool(init_from) and Path(init_from).resolve() == Path(out_dir).resolve()


def checkpoint_start(out_dir: Path, model, optimizer, state: dict, weights_name: str) -> None:
    """Checkpoint a new run at batch 0 (``state`` with its lineage), so that a kill before its first checkpoint
    resumes with the start it recorded instead of reading a start that is half overwritten."""
    optimizer.build(model.trainable_variables)  # its (zero) moments are part of a checkpoint
    save_checkpoint(out_dir, model, optimizer, state, weights_name)


def training_seconds(part_dir: Path | str) -> float | None:
    """Wall seconds of a Keras stage's training loop over all its sessions (None without a timed history): a
    history's ``time`` counts from the start of each session, so a drop marks a resume and each session adds
    its last time."""
    timed = [float(r["time"]) for r in read_history(Path(part_dir) / "history.jsonl") if "time" in r]
    if not timed:
        return None
    return sum(t for t, after in zip(timed, timed[1:] + [0.0]) if after < t)


def start_lineage(init_from: Path | str, kind: str) -> list[dict]:
    """Where a run started ``--init-from`` trained weights comes from: the lineage of those weights (oldest
    first), then their own training: epochs, batches, episodes, data hash and wall seconds. Weights without
    metadata give an entry with only their folder (their cost is unknown)."""
    folder = Path(init_from)
    try:
        meta = read_meta(folder, kind)
    except ArtifactError:
        return [{"init_from": str(folder)}]
    metrics = meta.get("metrics") or {}
    entry = {"init_from": str(folder), "epochs": metrics.get("epoch"), "steps": metrics.get("step"),
             "train_episodes": metrics.get("train_episodes"), "data_hash": meta.get("data_hash"),
             "train_seconds": training_seconds(folder)}
    return list(meta.get("lineage") or []) + [entry]
