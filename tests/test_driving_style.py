"""scripts/driving_style.py: the action and speed statistics docs/TRAINING.md quotes, and the gas-shift leads."""

import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TEST_ENV

sys.path.insert(0, str(ROOT / "scripts"))

from driving_style import GAS_BIAS, drive, main, outcome_lines  # noqa: E402

from core.envs.laps import OUTCOMES  # noqa: E402


def test_the_endings_table_groups_episodes_by_how_they_ended():
    rows = [{"outcome": "out of steps", "return": 800.0, "skipped": 2, "ahead": 10},
            {"outcome": "lap finished", "return": 910.0, "skipped": 0, "ahead": 0},
            {"outcome": "out of steps", "return": 700.0, "skipped": 4, "ahead": 20}]
    lines = outcome_lines(rows)
    assert lines[2] == "| lap finished | 1 | 910.0 | 0.0 | 0.0 |"  # in the order of OUTCOMES
    assert lines[3] == "| out of steps | 2 | 750.0 | 3.0 | 15.0 |"
    assert len(lines) == 4


def test_a_full_throttle_controller_is_measured_as_one(tiny_world_model):
    """Zero weights and a large gas bias: gas 1 on every step, no steering, no braking, and the car gains
    speed."""
    from core.models.agent import Agent, load_world_model
    weights, params = load_world_model(tiny_world_model)
    flat_out = np.zeros_like(params)
    flat_out[GAS_BIAS] = 10.0
    row = drive(Agent(weights, flat_out), 950_000, TEST_ENV, 60)
    assert row["steps"] == 60 and row["gas"] == pytest.approx(1.0) and row["full_gas"] == 1.0
    assert row["steer"] == 0.0 and row["braking"] == 0.0
    assert 0 < row["speed"] < row["top_speed"]
    assert row["outcome"] in OUTCOMES and row["skipped"] + row["ahead"] > 0  # 60 steps finish no lap


def test_the_table_and_the_gas_shift_leads(tiny_world_model, capsys):
    code = main([str(tiny_world_model), "--tracks", "2", "--max-steps", "20", "--env", TEST_ENV,
                 "--gas-shifts", "0,5", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| 95000")]
    assert [r.split("|")[1].strip() for r in rows] == ["950000", "950001"]
    assert "| mean |" in out
    assert "| ended | episodes | mean return |" in out
    assert "gas bias +0: mean" in out and "lead +0.0 ± 0.0 (won 0 of 2)" in out  # the same controller
    assert "gas bias +5: mean" in out


def test_a_folder_without_a_model_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path), "--tracks", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--gas-shifts", "a,b"])


def test_episodes_driven_in_worker_processes_are_the_ones_driven_inline(tiny_world_model):
    from driving_style import drive_all
    inline = drive_all(str(tiny_world_model), [950_000, 950_001], TEST_ENV, 20, workers=1)
    pooled = drive_all(str(tiny_world_model), [950_000, 950_001], TEST_ENV, 20, workers=2)
    assert [r["seed"] for r in pooled] == [950_000, 950_001] and pooled == inline
