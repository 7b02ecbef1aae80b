"""The one table of stages: one entry per pipeline stage, from which everything that lists them derives.

The CLI builds a subcommand per entry (its flags from ``config``), the job runner imports ``entry`` in its
child process and names jobs by ``title``, the pages link a running job to ``page`` and refuse the
shipped model as ``out_dir``, and conflicts between jobs come from ``reads`` and ``out_dir``. Adding a
stage means adding one entry here (and its module under ``core.pipeline``).

Entry points are named, not imported: ``python -m core --help``, a flag error and the app's server answer
without loading TensorFlow; ``Stage.prepare(config)`` checks the inputs that need no TensorFlow and imports the
module where the stage runs.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from core.config import (
    CollectConfig,
    CompareConfig,
    EvaluateConfig,
    EvolveConfig,
    ExportConfig,
    RecordConfig,
    RNNConfig,
    SnapshotConfig,
    VAEConfig,
)

Settings = Mapping[str, Any]  # a stage's config as a dict (``dataclasses.asdict`` or a job's saved config)


def _in_run(part: str) -> Callable[[Settings], str]:
    return lambda c: str(Path(c["run_dir"]) / part)


def _world_model(key: str, *parts: str) -> Callable[[Settings], list[str]]:
    return lambda c: [str(Path(c[key]) / p) for p in parts]


def _record_reads(c: Settings) -> list[str]:
    return [] if c.get("actions") else _world_model("model_dir", "vae", "rnn")(c)


def _collect_reads(c: Settings) -> list[str]:
    return _world_model("model_dir", "vae", "rnn")(c) if c.get("policy") == "controller" else []


def _imported(name: str) -> Callable:
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage."""

    name: str  # as the CLI names it: python -m core <name>
    config: type  # its config dataclass (core.config): the CLI's flags, the page's form, the job's settings
    entry: str  # "module:function" taking (config, on_progress) and returning a dict of final metrics
    title: str  # how pages and messages name it
    description: str  # one line for the CLI's help
    out_dir: Callable[[Settings], str]  # the folder it writes, from its settings
    reads: Callable[[Settings], list[str]] = lambda c: []  # the V and M folders it reads (job conflicts);
    # controllers are left out: evaluate and record read one once at their start, beside its evolution
    page: str | None = None  # the page that runs it as a background job; None: CLI only
    part: str | None = None  # the world-model part it trains (vae, rnn, controller), if any
    unit: str = "steps"  # what its progress counts
    go_on: tuple[str, str] | None = None  # on a finished folder: (the form field to raise, the folder field)
    preflight: str | None = None  # "module:function" checking its inputs without TensorFlow before ``entry``
    # loads (core.pipeline.preflight): a missing folder is named in a fraction of a second

    def function(self) -> Callable[..., dict]:
        return _imported(self.entry)

    def prepare(self, config: Any) -> Callable[..., dict]:
        """``function()`` once the preflight check of ``config`` has passed (it raises a UserError)."""
        if self.preflight:
            _imported(self.preflight)(config)
        return self.function()

    def world_model_inputs(self, settings: Settings) -> set[str]:
        """The V and M folders this stage reads, normalised."""
        return {os.path.normpath(f) for f in self.reads(settings)}


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("collect", CollectConfig, "core.pipeline.collect:collect", "Collect",
          "Collect random-policy episodes (resumes: existing episodes are kept).",
          out_dir=lambda c: str(c["out_dir"]), reads=_collect_reads, page="pages/1_Collect.py", unit="episodes",
          go_on=("Episodes", "Out dir")),
    Stage("train-vae", VAEConfig, "core.pipeline.train_vae:train_vae", "Train VAE",
          "Train the ConvVAE (V) on collected frames (resumes from its checkpoint).",
          out_dir=_in_run("vae"), page="pages/2_Train_VAE.py", part="vae", unit="batches",
          go_on=("Epochs", "Run dir"), preflight="core.pipeline.preflight:data_there"),
    Stage("train-rnn", RNNConfig, "core.pipeline.train_rnn:train_rnn", "Train RNN",
          "Encode frames with V, train the MDN-RNN (M) (resumes from its checkpoint).",
          out_dir=_in_run("rnn"), reads=_world_model("run_dir", "vae"), page="pages/3_Train_RNN.py", part="rnn",
          unit="batches", go_on=("Epochs", "Run dir"), preflight="core.pipeline.preflight:v_and_data_there"),
    Stage("evolve", EvolveConfig, "core.pipeline.evolve:evolve", "Evolve",
          "Evolve the controller (C) with CMA-ES in the real env (resumes each generation).",
          out_dir=_in_run("controller"), reads=_world_model("run_dir", "vae", "rnn"), page="pages/4_Evolve.py",
          part="controller", unit="generations", go_on=("Generations", "Run dir")),
    Stage("evaluate", EvaluateConfig, "core.pipeline.evaluate:evaluate", "Evaluate",
          "Evaluate a world model on the fixed evaluation tracks; writes a JSON report.",
          out_dir=lambda c: str(Path(c["model_dir"]) / "controller"), reads=_world_model("model_dir", "vae", "rnn"),
          page="pages/4_Evolve.py", unit="episodes"),
    Stage("record", RecordConfig, "core.pipeline.record:record", "Record",
          "Render an episode (the agent, or an action log) to MP4.",
          out_dir=lambda c: str(Path(c["out"]).parent), reads=_record_reads, page="pages/4_Evolve.py"),
    Stage("export", ExportConfig, "core.pipeline.export:export", "Export",
          "Copy a trained world model (weights, configs, metadata, curves) into models/ for the app.",
          out_dir=lambda c: str(c["out_dir"])),
    Stage("snapshot", SnapshotConfig, "core.pipeline.snapshot:snapshot", "Snapshot",
          "Freeze an evolution's current CMA-ES mean or averaged mean into a file, to evaluate and ship.",
          out_dir=_in_run("controller")),
    Stage("compare", CompareConfig, "core.pipeline.compare:compare", "Compare",
          "Compare two evaluation reports track by track: is the challenger better than the baseline?",
          out_dir=lambda c: str(Path(c["out"]).parent) if c.get("out") else ""),
)}

JOB_STAGES = tuple(name for name, s in STAGES.items() if s.page)  # the stages the app runs as background jobs
TRAINING_STAGES = tuple(name for name, s in STAGES.items() if s.part)  # the stages that write V, M and C


def stage(name: str) -> Stage:
    """The stage called ``name``; a KeyError names the known ones."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}: the stages are {', '.join(STAGES)}") from None
