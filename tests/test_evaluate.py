"""Evaluation: fixed tracks, a report that says what it covers, and resuming an interrupted run."""

import json

import pytest

from core.config import EvaluateConfig
from core.evaluate import evaluate
from tests.conftest import TEST_ENV


def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_world_model, tmp_path):
    out = tmp_path / "eval.json"
    config = EvaluateConfig(model_dir=str(tiny_world_model), episodes=4, max_steps=15, workers=1, env=TEST_ENV,
                            out=str(out))
    first = evaluate(config, lambda step, total, m: step < 2)  # stop after two episodes
    assert first["episodes"] == 2 and not first["complete"] and first["seeds"] == [1_000_000, 1_000_001]
    partial = json.loads((tmp_path / "eval.json.partial").read_text())
    assert sorted(partial["episodes"]) == ["1000000", "1000001"]

    calls = []
    full = evaluate(config, lambda step, total, m: calls.append(step) or True)
    assert calls[0] == 2  # the two tracks driven before are not driven again
    assert full["complete"] and full["seeds"] == [1_000_000 + i for i in range(4)]
    assert full["returns"][:2] == first["returns"]
    assert not (tmp_path / "eval.json.partial").exists()
    assert json.loads(out.read_text())["episodes"] == 4

    calls.clear()
    fresh = evaluate(config, lambda step, total, m: calls.append(step) or True)
    assert calls[0] == 0  # a finished evaluation starts over rather than reuse old episodes
    assert fresh["returns"] == full["returns"]  # and drives the same tracks the same way

    # Stopping a re-run keeps the finished report; the new episodes wait in the partial file.
    finished = out.read_text()
    stopped = evaluate(config, lambda step, total, m: step < 1)
    assert not stopped["complete"] and stopped["out"].endswith(".partial")
    assert out.read_text() == finished
    resumed = evaluate(config)
    assert resumed["complete"] and resumed["returns"] == full["returns"]


def test_a_partial_evaluation_of_another_controller_is_not_reused(tiny_world_model, tmp_path):
    out = tmp_path / "eval.json"
    (tmp_path / "eval.json.partial").write_text(json.dumps(
        {"params_sha256": "someone else", "env": TEST_ENV, "max_steps": 15,
         "episodes": {"1000000": {"return": 999.0, "steps": 1, "tiles": 1}}}))
    config = EvaluateConfig(model_dir=str(tiny_world_model), episodes=1, max_steps=15, workers=1, env=TEST_ENV,
                            out=str(out))
    assert evaluate(config)["returns"] != [999.0]
    (tmp_path / "eval.json.partial").write_text("{not json")
    assert evaluate(config)["episodes"] == 1


def test_stopping_before_any_episode_is_explained(tiny_world_model, tmp_path):
    from core.artifacts import ArtifactError
    config = EvaluateConfig(model_dir=str(tiny_world_model), episodes=2, max_steps=15, workers=1, env=TEST_ENV,
                            out=str(tmp_path / "e.json"))
    with pytest.raises(ArtifactError, match="before its first episode"):
        evaluate(config, lambda step, total, m: False)


def test_tracks_below_the_evaluation_range_are_flagged_not_held_out(tiny_world_model, tmp_path, caplog):
    settings = dict(model_dir=str(tiny_world_model), episodes=1, max_steps=15, workers=1, env=TEST_ENV)
    held_out = evaluate(EvaluateConfig(out=str(tmp_path / "a.json"), **settings))
    assert held_out["held_out"] is True and not caplog.records
    validation = evaluate(EvaluateConfig(out=str(tmp_path / "b.json"), first_seed=950_000, **settings))
    assert validation["held_out"] is False and validation["seeds"] == [950_000]
    assert any("may have trained on some of these" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "b.json").read_text())["held_out"] is False
