"""The metric names of core.metrics are the ones the stages really write: a stage that renamed one would leave
a page's chart empty, so the names each history holds are checked against the declared ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.metrics import (
    HELD_OUT,
    RNN_LOSSES,
    EpisodeMetric,
    EvolveMetric,
    RnnMetric,
    Training,
    VaeMetric,
)
from core.storage.artifacts import read_meta

ROOT = Path(__file__).resolve().parents[1]
DECLARED = {"vae": {*Training, *VaeMetric}, "rnn": {*Training, *RnnMetric}, "controller": set(EvolveMetric)}
# What a history must hold for its page's charts: the training curves, and a generation's fitness.
CHARTED = {"vae": {Training.STEP, VaeMetric.RECONSTRUCTION, VaeMetric.KL},
           "rnn": {Training.STEP, *RNN_LOSSES},
           "controller": {EvolveMetric.GENERATION, EvolveMetric.BEST, EvolveMetric.MEAN, EvolveMetric.WORST}}


def names_in(history: Path) -> set[str]:
    return {key for line in history.read_text().splitlines() if line.strip() for key in json.loads(line)}


def test_the_members_are_plain_names_and_unique():
    for kind in (Training, VaeMetric, RnnMetric, EvolveMetric, EpisodeMetric):
        values = [m.value for m in kind]
        assert len(values) == len(set(values)), kind
        assert all(isinstance(m, str) and json.dumps(m) == json.dumps(m.value) for m in kind)
    assert {m.held_out() for m in RNN_LOSSES} == {m for m in RnnMetric if m.startswith(HELD_OUT)}
    assert {VaeMetric.HELD_OUT_RECONSTRUCTION, VaeMetric.HELD_OUT_KL} == {m for m in VaeMetric if m.startswith(HELD_OUT)}


@pytest.mark.parametrize("part", ["vae", "rnn", "controller"])
def test_a_run_writes_only_declared_names_and_all_that_its_page_charts(tiny_world_model, part):
    written = names_in(tiny_world_model / part / "history.jsonl")
    assert written <= DECLARED[part], written - DECLARED[part]
    assert CHARTED[part] <= written
    metrics = read_meta(tiny_world_model / part, part)["metrics"]  # the final metrics the Home page reads
    assert CHARTED[part] - {Training.STEP, EvolveMetric.BEST, EvolveMetric.WORST} <= set(metrics)


@pytest.mark.parametrize("part", ["vae", "rnn", "controller"])
def test_the_shipped_model_histories_use_only_declared_names(part):
    """The shipped histories hold the held-out losses, the periodic evaluations and the second tests that the
    tiny run above does not reach."""
    written = names_in(ROOT / "models" / part / "history.jsonl")
    assert written <= DECLARED[part], written - DECLARED[part]
    held_out = {m for m in DECLARED[part] if m.startswith(HELD_OUT)}
    assert held_out <= written
    if part == "controller":
        assert {EvolveMetric.EVAL_MEAN_PARAMS, EvolveMetric.EVAL_PICK, EvolveMetric.CONFIRM_CHALLENGER,
                EvolveMetric.CONFIRM_SHIPPED, EvolveMetric.LAPS} <= written
