"""Evaluation: fixed tracks, a report that says what it covers, and resuming an interrupted run."""

import json
from pathlib import Path

import numpy as np
import pytest

from core.config import EvaluateConfig
from core.pipeline.evaluate import evaluate
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
    assert full["ended"] == ["out of steps"] * 4 and len(full["skipped"]) == 4  # 15 steps finish no lap
    assert full["endings"] == [{"ended": "out of steps", "episodes": 4, "mean_return": full["mean"],
                                "mean_skipped": float(np.mean(full["skipped"]))}]
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

    # Nor does a stopped evaluation of the next controller replace the last finished score.
    earlier = {**json.loads(finished), "params_sha256": "an earlier controller"}
    out.write_text(json.dumps(earlier))
    stopped = evaluate(config, lambda step, total, m: step < 1)
    assert stopped["out"].endswith(".partial") and json.loads(out.read_text()) == earlier
    assert evaluate(config)["complete"] and json.loads(out.read_text())["params_sha256"] == full["params_sha256"]


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


def test_episodes_of_an_older_partial_run_without_endings_still_count(tiny_world_model, tmp_path, caplog):
    """A partial file from before endings were kept: its episodes are reused, and the report leaves out the
    per-episode lists that not every episode has."""
    from core.models.agent import load_world_model
    from core.models.controller import params_sha256
    from core.storage.weights_cache import world_model_sha256
    _, params = load_world_model(tiny_world_model)
    out = tmp_path / "eval.json"
    (tmp_path / "eval.json.partial").write_text(json.dumps(
        {"params_sha256": params_sha256(params), "world_model_sha256": world_model_sha256(tiny_world_model),
         "env": TEST_ENV, "max_steps": 15, "episodes": {"1000000": {"return": 5.0, "steps": 15, "tiles": 2}}}))
    config = EvaluateConfig(model_dir=str(tiny_world_model), episodes=2, max_steps=15, workers=1, env=TEST_ENV,
                            out=str(out))
    with caplog.at_level("WARNING", logger="core.pipeline.evaluate"):
        report = evaluate(config)
    assert "older partial run" in caplog.text
    assert report["returns"][0] == 5.0 and report["steps"] == [15, 15] and report["tiles"][0] == 2
    assert "ended" not in report and "skipped" not in report and "endings" not in report


def test_stopping_before_any_episode_is_a_stop_not_a_failure(tiny_world_model, tmp_path):
    """InterruptedError is what the CLI and the app's jobs report as "stopped" (a Stop clicked while the
    worker still loads the model must not show as a failed job)."""
    config = EvaluateConfig(model_dir=str(tiny_world_model), episodes=2, max_steps=15, workers=1, env=TEST_ENV,
                            out=str(tmp_path / "e.json"))
    with pytest.raises(InterruptedError, match="before its first episode"):
        evaluate(config, lambda step, total, m: False)
    assert list(tmp_path.iterdir()) == []


def test_an_evaluation_of_the_shipped_model_never_writes_into_it(tiny_world_model, tmp_path, monkeypatch):
    """Without --out, a report lands beside the controller, except for the shipped model (models/), whose
    evaluation.json is the published score: its report goes to runs/shipped-model/, the app's folder for it."""
    import hashlib
    import shutil
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_world_model, "models", ignore=shutil.ignore_patterns("checkpoint", "encoded.npz"))
    published = Path("models/controller/evaluation.json")
    published.write_text('{"the published report": true}')

    def files() -> dict:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path("models").rglob("*"))
                if p.is_file()}
    before = files()
    settings = {"episodes": 1, "max_steps": 15, "workers": 1, "env": TEST_ENV}
    report = evaluate(EvaluateConfig(model_dir="models", **settings))
    assert report["out"] == "runs/shipped-model/evaluation.json" and Path(report["out"]).is_file()
    params = evaluate(EvaluateConfig(model_dir="models", params="models/controller/params.npz", **settings))
    assert params["out"] == "runs/shipped-model/params.evaluation.json"
    assert files() == before
    copy = evaluate(EvaluateConfig(model_dir=str(tmp_path / "models"), **settings))  # the same folder, named in full
    assert copy["out"] == "runs/shipped-model/evaluation.json" and files() == before


def test_tracks_below_the_evaluation_range_are_flagged_not_held_out(tiny_world_model, tmp_path, caplog):
    settings = dict(model_dir=str(tiny_world_model), episodes=1, max_steps=15, workers=1, env=TEST_ENV)
    held_out = evaluate(EvaluateConfig(out=str(tmp_path / "a.json"), **settings))
    assert held_out["held_out"] is True and not caplog.records
    validation = evaluate(EvaluateConfig(out=str(tmp_path / "b.json"), first_seed=950_000, **settings))
    assert validation["held_out"] is False and validation["seeds"] == [950_000]
    assert json.loads((tmp_path / "b.json").read_text())["held_out"] is False
    (said,) = [r.getMessage() for r in caplog.records]  # validation tracks: not trained on, not held out
    assert "validation tracks (950000..999999), which neither training nor" in said and "trained on some" not in said
    caplog.clear()
    training = evaluate(EvaluateConfig(out=str(tmp_path / "c.json"), first_seed=5, **settings))
    assert training["held_out"] is False
    assert any("may have trained on some of these" in r.getMessage() for r in caplog.records)


def _report(path, returns, first_seed=1_000_000, **extra):
    report = {"env": "stock", "max_steps": 1000, "params_sha256": "a", **extra,
              "seeds": [first_seed + i for i in range(len(returns))], "returns": list(returns)}
    path.write_text(json.dumps(report))
    return str(path)


def test_compare_pairs_tracks_and_gives_a_verdict_only_when_the_lead_is_clear(tmp_path):
    from core.config import CompareConfig
    from core.pipeline.compare import compare

    rng = np.random.default_rng(0)
    track = rng.normal(800, 150, 60)  # track difficulty: far larger than the controllers' difference
    base = _report(tmp_path / "base.json", track)
    better = _report(tmp_path / "better.json", track + 20 + rng.normal(0, 10, 60), params_sha256="b")
    result = compare(CompareConfig(baseline=base, challenger=better, out=str(tmp_path / "cmp.json")))
    assert result["verdict"] == "better" and result["tracks"] == 60 and not result["same_controller"]
    assert 15 < result["lead"] < 25 and result["ci95"][0] > 0 and result["wins"] > 50
    assert json.loads((tmp_path / "cmp.json").read_text())["verdict"] == "better"
    # The same lead over unpaired noise of the size of track difficulty is not shown; the tracks it would
    # take are estimated from the spread of the differences.
    noisy = _report(tmp_path / "noisy.json", track + 20 + rng.normal(0, 150, 60), params_sha256="c")
    undecided = compare(CompareConfig(baseline=base, challenger=noisy))
    assert undecided["verdict"] == "undecided" and undecided["ci95"][0] < 0 < undecided["ci95"][1]
    assert undecided["tracks_to_decide"] > 60
    worse = compare(CompareConfig(baseline=better, challenger=base))
    assert worse["verdict"] == "worse" and worse["lead"] == pytest.approx(-result["lead"])
    assert compare(CompareConfig(baseline=base, challenger=base))["same_controller"]


def test_compare_uses_the_tracks_both_drove_and_refuses_other_settings(tmp_path):
    from core.storage.artifacts import ArtifactError
    from core.storage.reports import compare_reports, read_report

    base = read_report(_report(tmp_path / "base.json", [500.0] * 30))
    shifted = read_report(_report(tmp_path / "shifted.json", [510.0] * 30, first_seed=1_000_025))
    result = compare_reports(base, shifted)
    assert result["tracks"] == 5 and result["first_seed"] == 1_000_025 and result["lead"] == 10
    assert result["only_baseline"] == 25 and result["only_challenger"] == 25
    assert result["verdict"] == "too few tracks"
    with pytest.raises(ArtifactError, match="share no track"):
        compare_reports(base, read_report(_report(tmp_path / "far.json", [1.0] * 3, first_seed=5)))
    fast = read_report(_report(tmp_path / "fast.json", [500.0] * 30, env="fast"))
    with pytest.raises(ArtifactError, match="env: baseline stock, challenger fast"):
        compare_reports(base, fast)
    short = read_report(_report(tmp_path / "short.json", [500.0] * 30, max_steps=500))
    with pytest.raises(ArtifactError, match="max_steps: baseline 1000, challenger 500"):
        compare_reports(base, short)
    assert result["complete"]  # neither report says it stopped part way
    stopped = read_report(_report(tmp_path / "stopped.json", [510.0] * 30, complete=False))
    assert compare_reports(base, stopped)["complete"] is False
    (tmp_path / "bad.json").write_text(json.dumps({"seeds": [1, 2], "returns": [3.0]}))
    with pytest.raises(ArtifactError, match="2 seeds, 1 returns"):
        read_report(tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text(json.dumps({"seeds": [1, 2], "returns": [3.0, float("nan")]}))
    with pytest.raises(ArtifactError, match="not finite"):
        read_report(tmp_path / "nan.json")


def test_the_interval_is_students_t_and_the_suggested_tracks_have_power(tmp_path):
    from core.storage.reports import compare_reports, read_report, t_95

    assert [round(t_95(df), 3) for df in (1, 4, 9, 19, 29)] == [12.706, 2.776, 2.262, 2.093, 2.045]
    base = read_report(_report(tmp_path / "base.json", [500.0] * 10))
    # Leads of 10 and 30 alternating: mean 20, sd 10.54, se 3.333; t(9) = 2.262 gives 20 ± 7.54.
    other = read_report(_report(tmp_path / "other.json", [510.0, 530.0] * 5))
    result = compare_reports(base, other)
    assert result["lead"] == 20 and result["lead_se"] == pytest.approx(3.3333, abs=1e-3)
    assert result["ci95"] == pytest.approx([12.46, 27.54], abs=0.01) and result["verdict"] == "better"
    # Leads of -80 and +120: mean 20, sd 105.41; (1.960 + 0.842)^2 (105.41 / 20)^2 = 218.02: 219 tracks.
    wide = compare_reports(base, read_report(_report(tmp_path / "wide.json", [420.0, 620.0] * 5)))
    assert wide["verdict"] == "undecided" and wide["tracks_to_decide"] == 219
    # One track: a lead, no spread, no interval; float noise is a tie, not a win.
    one = compare_reports(read_report(_report(tmp_path / "b1.json", [1.0])),
                          read_report(_report(tmp_path / "c1.json", [3.0])))
    assert one["lead"] == 2 and one["lead_se"] is None and one["ci95"] is None and one["verdict"] == "too few tracks"
    noise = compare_reports(base, read_report(_report(tmp_path / "noise.json", [500.0 + 1e-9] * 10)))
    assert noise["ties"] == 10 and noise["lead"] == 0 and noise["verdict"] == "undecided"


@pytest.mark.parametrize("seeds, returns", [([True, 2], [1.0, 2.0]), ([1.5, 2], [1.0, 2.0]),
                                            ([1, 2], [1.0, [2.0]]), ([1, 2], [1.0, 10 ** 400])])
def test_a_report_of_odd_numbers_is_refused_in_one_line(tmp_path, seeds, returns):
    from core.storage.artifacts import ArtifactError
    from core.storage.reports import read_report

    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"seeds": seeds, "returns": returns}))
    with pytest.raises(ArtifactError, match="not an evaluation report"):
        read_report(path)


def test_reports_of_one_controller_on_other_tracks_join_into_one_comparison(tmp_path):
    from core.config import CompareConfig
    from core.pipeline.compare import compare
    from core.storage.artifacts import ArtifactError
    from core.storage.reports import read_reports
    first = _report(tmp_path / "a.json", [800.0, 700.0], steps=[1000, 900], complete=True)
    second = _report(tmp_path / "b.json", [600.0, 900.0], first_seed=1_000_002, steps=[1000, 950], complete=True)
    joined = read_reports(f"{first}, {second}")
    assert joined["seeds"] == [1_000_000 + i for i in range(4)] and joined["returns"] == [800.0, 700.0, 600.0, 900.0]
    assert joined["steps"] == [1000, 900, 1000, 950] and joined["mean"] == 750.0 and joined["episodes"] == 4
    assert joined["complete"] is True and joined["joined"] == [first, second]
    assert "ended" not in joined and "endings" not in joined  # neither report has them
    with_endings = [_report(tmp_path / f"e{i}.json", returns, first_seed=seed, ended=ended, skipped=skipped)
                    for i, (returns, seed, ended, skipped) in enumerate((
                        ([910.0], 1_000_000, ["lap finished"], [0]),
                        ([800.0, 700.0], 1_000_001, ["out of steps", "out of steps"], [1, 3])))]
    pooled = read_reports(",".join(with_endings))
    assert pooled["ended"] == ["lap finished", "out of steps", "out of steps"] and pooled["skipped"] == [0, 1, 3]
    assert [(e["ended"], e["episodes"], e["mean_return"], e["mean_skipped"]) for e in pooled["endings"]] == [
        ("lap finished", 1, 910.0, 0.0), ("out of steps", 2, 750.0, 2.0)]
    base = [_report(tmp_path / f"base{i}.json", [r - 10.0 for r in returns], first_seed=seed, params_sha256="b")
            for i, (returns, seed) in enumerate((([800.0, 700.0], 1_000_000), ([600.0, 900.0], 1_000_002)))]
    result = compare(CompareConfig(baseline=",".join(base), challenger=f"{first},{second}"))
    assert result["tracks"] == 4 and result["lead"] == 10.0 and result["wins"] == 4

    with pytest.raises(ArtifactError, match="track 1000000 is in another"):
        read_reports(f"{first},{first}")
    other = _report(tmp_path / "c.json", [1.0], first_seed=1_000_009, params_sha256="zzz")
    with pytest.raises(ArtifactError, match="params_sha256"):
        read_reports(f"{first},{other}")
    fast = _report(tmp_path / "d.json", [1.0], first_seed=1_000_009, env="fast")
    with pytest.raises(ArtifactError, match="env"):
        read_reports(f"{first},{fast}")
    short = _report(tmp_path / "s.json", [1.0, 2.0], ended=["lap finished"])
    with pytest.raises(ArtifactError, match="per-track ended do not match its 2 tracks"):
        read_reports(short)
    # A table of endings in the file is never trusted: it is counted again from the per-track lists, or left out.
    claimed = [{"ended": "lap finished", "episodes": 99}]
    assert "endings" not in read_reports(_report(tmp_path / "t.json", [1.0], endings=claimed))
    odd = _report(tmp_path / "u.json", [1.0], ended=["flew away"], skipped=[0], endings=claimed)
    assert "endings" not in read_reports(odd)
    fine = read_reports(_report(tmp_path / "v.json", [1.0], ended=["lap finished"], skipped=[0], endings=claimed))
    assert fine["endings"] == [{"ended": "lap finished", "episodes": 1, "mean_return": 1.0, "mean_skipped": 0.0}]
