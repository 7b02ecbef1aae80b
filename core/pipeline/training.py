"""The training loop V and M share: resume, checkpoints, held-out metrics, progress and stop, meta.json.

Each model's stage (``train_vae``, ``train_rnn``) checks its run, reads its data and builds its model, then
hands this loop a ``TrainingPlan``: the compiled model, its batches, its held-out metrics and what its
artifact records. The loop goes on from ``<out_dir>/checkpoint`` (or starts a new run from random or
``init_from`` weights), trains epoch after epoch, evaluates the held-out episodes at each epoch's end,
checkpoints every ``checkpoint_every`` batches, reports ``on_progress(step, total, metrics)`` after every
batch (a falsy return stops it cleanly, after a checkpoint) and ends with ``meta.json`` and the final metrics.

A checkpoint holds the weights and the optimizer's moments, so a run stopped and resumed trains exactly as
one never stopped when its batches depend only on the step they start at and its training step draws no
random numbers (M's; V's shuffle and z samples draw anew after a resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from core.storage.checkpoints import configure_tensorflow

configure_tensorflow()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.metrics import Training  # noqa: E402
from core.progress import ProgressCallback, keep_going  # noqa: E402
from core.storage.artifacts import History, atomic_write_json, write_meta  # noqa: E402
from core.storage.checkpoints import (
    checkpoint_start,
    mark_unfinished,
    previous_metrics,
    resume_or_start,
    save_checkpoint,
    starts_over_its_own_weights,
)


@dataclass(frozen=True)
class TrainingPlan:
    """What one model's stage hands the loop, built once its checks are done and its data is ready."""

    kind: str  # the artifact's kind in meta.json and lineage: "vae" or "rnn"
    weights: str  # the weights file of the artifact and of its checkpoint, e.g. "vae.weights.h5"
    out_dir: Path  # the artifact folder: weights, config.json, meta.json, history.jsonl, checkpoint/
    model: keras.Model  # compiled with its optimizer; trained by its own ``train_step``
    config: Mapping  # the artifact's config.json; its ``init_from`` is replaced by where the run started
    seed: int  # recorded in meta.json (the stage seeds Keras before it builds the model)
    epochs: int  # passes over the training data
    batches_per_epoch: int  # training batches in one epoch (>= 1)
    checkpoint_every: int  # batches between checkpoints
    batches: Callable[[int, int], Iterable]  # (step, count) -> the ``count`` batches from batch ``step`` on
    heldout_metrics: Callable[[keras.Model], dict]  # losses on the held-out episodes ({} without any)
    state: Mapping  # what every checkpoint records beside step, total and lineage (the held-out episodes)
    data_hash: str  # of the training data, for meta.json
    summary: Mapping  # joins the final metrics: episodes, frames, sizes
    log_every: int  # batches between history lines of the training metrics
    heldout_apart: bool = False  # held-out metrics on lines of their own (V's), not in the epoch's last one (M's)
    phase: str | None = None  # named in the first report, for a stage that reports another phase before


@dataclass(frozen=True)
class Start:
    """Where one session of training starts."""

    step: int  # batches already trained (from the checkpoint), 0 for a new run
    lineage: list  # the trained weights a run started from, oldest first (``start_lineage``)
    config: dict  # the artifact's config, ``init_from`` saying where the run really started


def train(plan: TrainingPlan, on_progress: ProgressCallback = keep_going) -> dict:
    """Train ``plan.model`` to ``plan.epochs`` epochs, going on from its checkpoint; returns the final metrics
    (the last batch's training metrics, the held-out ones, ``step``, ``total_steps``, ``resumed_from``,
    ``complete`` and ``plan.summary``)."""
    total = plan.batches_per_epoch * plan.epochs
    start = resume(plan, total)
    history = History(plan.out_dir / "history.jsonl")
    history.truncate_after(Training.STEP, start.step)  # the batches after the checkpoint are trained again
    if not plan.model.optimizer.built:  # built in the graph's first call, it would make tf.function trace twice
        plan.model.optimizer.build(plan.model.trainable_variables)
    train_step = compiled_step(plan.model.train_step)
    started = time.monotonic()
    step, checkpointed, metrics = start.step, start.step, {}
    going = bool(on_progress(step, total, {Training.PHASE: plan.phase} if plan.phase else {}))
    if step < total and going:
        mark_unfinished(plan.out_dir)
    while step < total and going:
        first = step
        for tracker in plan.model.metrics:  # training metrics: means over the epoch's batches (this session's)
            tracker.reset_state()
        count = plan.batches_per_epoch - step % plan.batches_per_epoch  # to the end of the epoch
        for batch in plan.batches(step, count):
            metrics = {k: float(v) for k, v in train_step(batch).items()}
            step += 1
            metrics[Training.EPOCH] = step / plan.batches_per_epoch
            heldout = plan.heldout_metrics(plan.model) if step % plan.batches_per_epoch == 0 else {}
            for line in history_lines(plan, step, total, metrics, heldout, round(time.monotonic() - started, 2)):
                history.append(line)
            metrics.update(heldout)
            if step - checkpointed >= plan.checkpoint_every:
                checkpoint(plan, start, step, total)
                checkpointed = step
            going = bool(on_progress(step, total, metrics))
            if not going:
                break
        if step == first:
            raise RuntimeError(f"{plan.kind}: batches({first}, {count}) gave no batch")
    checkpoint(plan, start, step, total)
    final = final_metrics(plan, start, step, total, metrics)
    write_meta(plan.out_dir, plan.kind, start.config, final, seed=plan.seed, data_hash=plan.data_hash,
               extra={"lineage": start.lineage})
    return final


def compiled_step(step: Callable) -> Callable:
    """``tf.function(step)`` traced once, for batches of any size: its input signature is the first batch's
    with the batch dimension left open, so an epoch's shorter last batch runs the same graph instead of
    tracing a second one (0.5-1 s of a core each time for V)."""
    compiled = None

    def run(batch):
        nonlocal compiled
        if compiled is None:
            spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), batch)
            compiled = tf.function(step, input_signature=[spec])
        return compiled(batch)
    return run


def resume(plan: TrainingPlan, total: int) -> Start:
    """Restore the checkpoint (weights, optimizer, step) or start a new run, and write the artifact's config.

    A new run fine-tuning its own folder's weights is checkpointed at once: the lineage it read from that
    folder's meta.json and history.jsonl is about to be overwritten.
    """
    model = plan.model
    state, started_from = resume_or_start(plan.out_dir, model, model.optimizer, plan.weights,
                                          plan.config.get("init_from") or "", plan.kind)
    start = Start(int(state["step"]), state.get("lineage") or [], {**plan.config, "init_from": started_from})
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if start.step == 0 and starts_over_its_own_weights(plan.out_dir, started_from):
        checkpoint_start(plan.out_dir, model, model.optimizer, state_json(plan, start, 0, total), plan.weights)
    atomic_write_json(plan.out_dir / "config.json", start.config)
    return start


def state_json(plan: TrainingPlan, start: Start, step: int, total: int) -> dict:
    """The ``state.json`` of a checkpoint at batch ``step``."""
    return {"step": step, "total": total, "lineage": start.lineage, **plan.state}


def checkpoint(plan: TrainingPlan, start: Start, step: int, total: int) -> None:
    save_checkpoint(plan.out_dir, plan.model, plan.model.optimizer, state_json(plan, start, step, total),
                    plan.weights)


def history_lines(plan: TrainingPlan, step: int, total: int, metrics: dict, heldout: dict,
                  seconds: float) -> list[dict]:
    """The ``history.jsonl`` lines of batch ``step``. The training metrics come every ``plan.log_every``
    batches; the held-out ones at an epoch's end join that batch's line, written then whatever the count
    (M), or with ``plan.heldout_apart`` take a line of their own beside training lines every ``log_every``
    batches and at the last (V). ``time`` is seconds since this session began."""
    if not plan.heldout_apart:
        due = step % plan.log_every == 0 or step % plan.batches_per_epoch == 0
        return [{Training.STEP: step, **metrics, **heldout, Training.TIME: seconds}] if due else []
    lines = [{Training.STEP: step, **metrics, Training.TIME: seconds}] if step % plan.log_every == 0 or step == total else []
    if heldout:
        lines.append({Training.STEP: step, Training.EPOCH: step / plan.batches_per_epoch, **heldout})
    return lines


def final_metrics(plan: TrainingPlan, start: Start, step: int, total: int, metrics: dict) -> dict:
    """What meta.json records and the stage returns: the last batch's metrics, the held-out ones now and
    where the run stands."""
    # No batch trained in this session (the run was complete, or stopped at once): the weights are the ones
    # the previous session's training metrics describe.
    final = previous_metrics(plan.out_dir, step) if start.step and step == start.step else {}
    final.update(metrics)
    final.update(plan.heldout_metrics(plan.model))
    final.update({"step": step, "total_steps": total, "resumed_from": start.step, "complete": step >= total,
                  **plan.summary})
    return final
