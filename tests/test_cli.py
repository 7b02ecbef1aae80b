"""The whole pipeline through ``python -m core`` on tiny settings, and resuming after ``kill -9``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.storage.artifacts import read_history, read_json
from tests.conftest import ROOT, TEST_ENV


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m core {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def summary(proc: subprocess.CompletedProcess) -> dict:
    line = proc.stdout.strip().splitlines()[-1]
    return json.loads(line.split(": ", 1)[1])


def test_pipeline_end_to_end(tmp_path):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    out = summary(cli("collect", "--out-dir", data, "--episodes", "2", "--max-steps", "30", "--workers", "2",
                      "--env", TEST_ENV, "--quiet"))
    assert out["episodes"] == 2 and out["frames"] == 62
    vae = summary(cli("train-vae", "--data-dir", data, "--run-dir", run, "--z-size", "8", "--epochs", "1",
                      "--batch-size", "16", "--holdout", "0.5", "--quiet"))
    assert vae["complete"] and vae["heldout_episodes"] == 1 and vae["val_r_loss"] > 0
    rnn = summary(cli("train-rnn", "--data-dir", data, "--run-dir", run, "--hidden", "16", "--seq-len", "10",
                      "--batch-size", "4", "--epochs", "1", "--quiet"))
    assert rnn["complete"] and rnn["z_size"] == 8
    evo = summary(cli("evolve", "--run-dir", run, "--generations", "2", "--popsize", "4", "--rollouts", "1",
                      "--max-steps", "20", "--eval-every", "2", "--eval-episodes", "1", "--workers", "2",
                      "--env", TEST_ENV, "--quiet"))
    assert evo["generation"] == 2 and evo["best_eval"] is not None
    ev = cli("evaluate", "--model-dir", run, "--episodes", "2", "--max-steps", "25", "--workers", "1", "--quiet")
    report = read_json(Path(run) / "controller" / "evaluation.json")
    assert report["seeds"] == [1_000_000, 1_000_001] and len(report["returns"]) == 2
    assert report["env"] == "stock" and "± " in ev.stdout
    assert f"{report['endings'][0]['ended']} {report['endings'][0]['episodes']}" in ev.stdout  # how they ended
    mp4 = tmp_path / "ep.mp4"
    rec = summary(cli("record", "--model-dir", run, "--seed", "3", "--max-steps", "20", "--out", str(mp4), "--env", TEST_ENV,
                      "--quiet"))
    assert rec["steps"] == 20 and mp4.stat().st_size > 1000


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be interrupted: {proc.stdout.read()}")
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def _state(path: Path, key: str) -> int:
    try:
        return int(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError):
        return 0


def test_train_vae_resumes_after_kill_9(tiny_data, tmp_path):
    args = ["train-vae", "--data-dir", str(tiny_data), "--run-dir", str(tmp_path), "--z-size", "8",
            "--epochs", "3", "--batch-size", "4", "--checkpoint-every", "10", "--holdout", "0", "--quiet"]
    state = tmp_path / "vae" / "checkpoint" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: _state(state, "step") >= 20)
    killed_at = _state(state, "step")
    out = summary(cli(*args))
    assert out["resumed_from"] == killed_at >= 20
    assert out["complete"] and out["step"] == out["total_steps"]
    steps = [r["step"] for r in read_history(tmp_path / "vae" / "history.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))  # nothing logged twice across the restart


def test_evolve_resumes_after_kill_9(tiny_world_model, tmp_path):
    import shutil
    run = tmp_path / "run"
    for part in ("vae", "rnn"):
        shutil.copytree(tiny_world_model / part, run / part)
    args = ["evolve", "--run-dir", str(run), "--generations", "5", "--popsize", "4", "--rollouts", "1",
            "--max-steps", "15", "--eval-every", "0", "--workers", "1", "--env", TEST_ENV, "--quiet"]
    state = run / "controller" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: _state(state, "generation") >= 2)
    killed_at = _state(state, "generation")
    resumed = cli(*[a for a in args if a not in ("--eval-every", "0")])  # a setting left out is kept
    out = summary(resumed)
    assert out["resumed_from"] == killed_at >= 2 and out["generation"] == 5
    assert "with its saved settings: --eval-every 0" in resumed.stderr
    assert read_json(run / "controller" / "config.json", "config")["eval_every"] == 0
    gens = [r["generation"] for r in read_history(run / "controller" / "history.jsonl")]
    assert gens == list(range(1, 6))
    import numpy as np
    with np.load(run / "controller" / "latest.npz") as f:
        assert int(f["generation"]) == 5 and f["mean"].shape == f["best_candidate"].shape == (out["n_params"],)
    # The saved CMA-ES state fixes the population and the covariance: other values are refused, not ignored.
    changed = [a if a != "4" else "6" for a in args] + ["--generations", "6"]
    proc = cli(*changed, "--no-diagonal", check=False)
    assert proc.returncode == 2 and "--popsize 4 -> 6" in proc.stderr and "--diagonal True -> False" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_resumed_evolution_keeps_its_saved_settings_unless_a_flag_changes_them(tmp_path):
    from core.cli import stage_values
    from core.config import EvolveConfig
    controller = tmp_path / "run" / "controller"
    controller.mkdir(parents=True)
    saved = {"run_dir": "elsewhere", "workers": 48, "generations": 400, "rollouts": 4, "eval_every": 5,
             "max_sigma": 0.015, "early_stop": True, "fresh_tracks": False, "z_size": 32}
    (controller / "config.json").write_text(json.dumps(saved))
    run = str(tmp_path / "run")
    # Without a CMA-ES state there is nothing to resume: the defaults hold.
    assert stage_values(["evolve", "--run-dir", run])[1]["rollouts"] == EvolveConfig().rollouts
    (controller / "cma_state.npz").write_bytes(b"saved")
    _, values, kept = stage_values(["evolve", "--run-dir", run])
    assert (values["generations"], values["rollouts"], values["eval_every"], values["max_sigma"]) == (400, 4, 5, 0.015)
    # Where it runs and how many workers this machine has are not the saved run's to decide.
    assert values["run_dir"] == run and values["workers"] == EvolveConfig().workers
    assert sorted(kept) == ["--eval-every 5", "--generations 400", "--max-sigma 0.015", "--no-fresh-tracks",
                            "--rollouts 4"]  # each as the flag that gives it
    _, values, kept = stage_values(["evolve", "--run-dir", run, "--roll", "7", "--no-early-stop",
                                    "--generations=500"])
    assert (values["rollouts"], values["early_stop"], values["generations"], values["eval_every"]) == (7, False, 500, 5)
    assert sorted(kept) == ["--eval-every 5", "--max-sigma 0.015", "--no-fresh-tracks"]
    # A saved config that is not one, or a setting of the wrong kind, is named rather than a traceback.
    from core.storage.artifacts import ArtifactError
    for broken, message in (([saved], "a JSON list, not an object"), ({**saved, "rollouts": "4"}, "rollouts is '4'"),
                            ({**saved, "generations": 400.0}, "generations is 400.0, not a whole number")):
        (controller / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ArtifactError, match=message):
            stage_values(["evolve", "--run-dir", run])


@pytest.mark.parametrize("args, message", [
    (["collect", "--episodes", "-3"], "--episodes=-3 is too small"),
    (["train-vae", "--data-dir", "/nonexistent/data"], "collect episodes first"),
    (["evaluate", "--model-dir", "/nonexistent/model"], "train one first"),
    (["record", "--actions", "/nonexistent.json"], "action log not found"),
    (["evolve", "--popsize", "1"], "--popsize=1 is too small"),
    (["train-vae", "--seed", "-1"], "--seed=-1 is too small"),
    (["record", "--actions", str(ROOT / "README.md")], "README.md: not an action log"),
    (["export", "--run-dir", "/nonexistent/run", "--out-dir", "."], "holds other folders"),
    (["export", "--out-dir", "."], "contains --run-dir"),
    (["train-vae", "--learning-rate", "nan"], "--learning-rate=nan is not a number"),
    (["evolve", "--sigma0", "inf"], "--sigma0=inf is not a number"),
    (["train-rnn", "--learning-rate", "0"], "--learning-rate=0.0 is too small: it must be greater than 0.0"),
    (["evolve", "--seed", str(2**32)], "--seed=4294967296 is too large"),
    (["evolve", "--workers", "160"], "--workers=160 is too large: it must be at most 64"),
    (["evaluate", "--episodes", str(10**12)], "--episodes=1000000000000 is too large: it must be at most 100000"),
    (["evolve", "--popsize", str(10**6)], "--popsize=1000000 is too large: it must be at most 1024"),
    (["train-rnn", "--batch-size", str(10**9)], "--batch-size=1000000000 is too large: it must be at most 65536"),
    (["collect", "--out-dir", " "], "--out-dir=' ' is empty"),
    (["collect", "--out-dir", "data/a,data/b"], "holds a comma: collect into one folder at a time"),
    (["record", "--out", ""], "--out='' is empty"),
    (["compare", "--challenger", "/nonexistent.json"], "evaluation report not found"),
    (["compare", "--challenger", str(ROOT / "README.md")], "evaluation report is corrupt"),
    (["compare", "--challenger", str(ROOT / "models" / "controller" / "config.json")], "not an evaluation report"),
])
def test_bad_input_gets_one_line_error_not_traceback(args, message):
    proc = cli(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message, unloaded", [
    (["train-vae", "--data-dir", "{missing}"], "no such data folder; collect episodes first", "tensorflow"),
    (["train-rnn", "--data-dir", "{data}", "--run-dir", "{missing}"], "no VAE weights (vae.weights.h5); train one first",
     "tensorflow"),
    (["train-rnn", "--data-dir", "{data},{missing}", "--run-dir", "{run}"], "no such data folder; collect episodes first",
     "tensorflow"),
    (["evolve", "--run-dir", "{run}", "--popsize", "1"], "--popsize=1 is too small", "cma"),
])
def test_a_missing_input_or_a_bad_flag_is_named_before_the_heavy_libraries_load(args, message, unloaded,
                                                                                tiny_world_model, tiny_data, tmp_path):
    """The error comes in a fraction of a second, not after the seconds TensorFlow (or cma, with the scipy and
    matplotlib it imports) takes to load."""
    args = [a.format(missing=tmp_path / "nowhere", data=tiny_data, run=tiny_world_model) for a in args]
    code = ("import sys; from core.cli import main; rc = main(sys.argv[2:]); "
            "print(sys.argv[1] in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, unloaded, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # a kill, or a first Ctrl-C
def test_sigterm_stops_cleanly_with_metadata(tiny_world_model, tmp_path, signum):
    import shutil
    run = tmp_path / "run"
    for part in ("vae", "rnn"):
        shutil.copytree(tiny_world_model / part, run / part)
    args = ["evolve", "--run-dir", str(run), "--generations", "50", "--popsize", "4", "--rollouts", "1",
            "--max-steps", "15", "--eval-every", "0", "--workers", "2", "--env", TEST_ENV, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = run / "controller" / "state.json"
    deadline = time.monotonic() + 120
    while _state(state, "generation") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    if signum == signal.SIGINT:  # Ctrl-C in a terminal reaches the whole process group
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"{signal.Signals(signum).name}: stopping after the current step" in err and "stopped cleanly" in err
    result = json.loads(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert 1 <= result["generation"] < 50 and result["complete"] is False
    meta = read_json(run / "controller" / "meta.json")
    assert meta["metrics"]["generation"] == result["generation"]


def test_export_ships_a_lean_loadable_model(tiny_world_model, tmp_path):
    from core.models.agent import Agent
    out = tmp_path / "models"
    out.mkdir()
    (out / "README.md").write_text("kept")
    first = summary(cli("export", "--run-dir", str(tiny_world_model), "--out-dir", str(out), "--quiet"))
    assert first["files"] >= 10
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "controller/cma_state.npz" in names and "vae/vae.weights.h5" in names
    assert not any("checkpoint" in n or "encoded" in n for n in names)
    assert (out / "README.md").read_text() == "kept"
    Agent.load(out)
    # The shipped folder carries the CMA-ES state: a copy of it resumes the evolution (training spans sessions).
    import shutil
    shutil.copytree(out, tmp_path / "resume")
    resumed = summary(cli("evolve", "--run-dir", str(tmp_path / "resume"), "--generations", "2", "--popsize", "4",
                          "--rollouts", "1", "--max-steps", "15", "--eval-every", "0", "--workers", "1", "--env",
                          TEST_ENV, "--quiet"))
    assert resumed["resumed_from"] == 1 and resumed["generation"] == 2
    summary(cli("export", "--run-dir", str(tiny_world_model), "--out-dir", str(out), "--no-training-state",
                "--quiet"))
    assert not (out / "controller" / "cma_state.npz").exists() and (out / "README.md").exists()
    assert not list(tmp_path.glob(".models*"))  # no staging folders left behind
    # A lean export cannot resume: evolving it is refused, and its trained controller stays as it was.
    params = (out / "controller" / "params.npz").read_bytes()
    lean = cli("evolve", "--run-dir", str(out), "--generations", "3", "--popsize", "4", "--workers", "1",
               "--env", TEST_ENV, "--quiet", check=False)
    assert lean.returncode != 0 and "cma_state.npz missing" in lean.stderr and "Traceback" not in lean.stderr
    assert (out / "controller" / "params.npz").read_bytes() == params


@pytest.mark.parametrize("part", ["vae", "rnn", "controller"])
def test_export_refuses_a_run_whose_part_is_being_trained(part, tiny_world_model, tmp_path):
    """Training rewrites a part's weights at every checkpoint: an export then would ship parts of two moments."""
    from core.config import ExportConfig
    from core.pipeline.export import export
    from core.storage.artifacts import ArtifactError, RunLock
    with RunLock(tiny_world_model / part, "train"):
        with pytest.raises(ArtifactError, match=f"{part}: another training run .* is writing here"):
            export(ExportConfig(run_dir=str(tiny_world_model), out_dir=str(tmp_path / "models")))
    assert not (tmp_path / "models").exists()


def test_export_refuses_a_controller_whose_v_was_trained_further(tiny_world_model, tiny_data, tmp_path, caplog):
    """C drives on V's codes: trained on for another epoch, V gives other codes, and the C evolved on the
    old ones must not ship with it (the iterative step measured 755 -> 299 for such a pair)."""
    import json
    import shutil

    from core.config import ExportConfig, VAEConfig
    from core.pipeline.export import export
    from core.pipeline.train_vae import train_vae
    from core.storage.artifacts import ArtifactError
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model, run)
    assert json.loads((run / "controller" / "meta.json").read_text())["world_model_sha256"]
    export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "before")))
    train_vae(VAEConfig(data_dir=str(tiny_data), run_dir=str(run), z_size=8, epochs=2, batch_size=32, holdout=0.0))
    with pytest.raises(ArtifactError, match="evolved on other V and M than the ones there now"):
        export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "after")))
    assert not (tmp_path / "after").exists()
    # A resume that runs no generation has evolved nothing on them: still refused.
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    evolve(EvolveConfig(run_dir=str(run), generations=1, popsize=4, rollouts=1, max_steps=20, eval_every=0,
                        workers=1, env=TEST_ENV))
    with pytest.raises(ArtifactError, match="evolved on other V and M"):
        export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "after")))
    # Its kept controller's score is of the old V and M: the next periodic evaluation scores it again on
    # these and makes that the bar, even on fixed tracks (where it is not driven otherwise).
    fixed = tmp_path / "fixed"
    shutil.copytree(run, fixed)
    state = json.loads((fixed / "controller" / "state.json").read_text())
    (fixed / "controller" / "state.json").write_text(json.dumps({**state, "best_eval": 1e9}))  # an old bar
    from tests.test_controller import edit_checkpoint
    edit_checkpoint(fixed / "controller", lambda document, arrays: document["state"].update(best_eval=1e9))
    evolve(EvolveConfig(run_dir=str(fixed), generations=state["generation"] + 1, popsize=4, rollouts=1,
                        max_steps=20, eval_every=1, eval_episodes=1, fresh_tracks=False, workers=1, env=TEST_ENV))
    last = json.loads((fixed / "controller" / "history.jsonl").read_text().splitlines()[-1])
    assert "eval_start" in last and json.loads((fixed / "controller" / "state.json").read_text())["best_eval"] < 1e9
    evolve(EvolveConfig(run_dir=str(fixed), generations=state["generation"] + 2, popsize=4, rollouts=1,
                        max_steps=20, eval_every=1, eval_episodes=1, fresh_tracks=False, workers=1, env=TEST_ENV))
    last = json.loads((fixed / "controller" / "history.jsonl").read_text().splitlines()[-1])
    assert "eval_start" not in last  # once per change of V or M, not at every resume
    # The iterative step: a new evolution on the new V and M from the old controller ships that one until
    # its first periodic evaluation, and generations run meanwhile do not make it the new V and M's.
    step = tmp_path / "step"
    shutil.copytree(run / "vae", step / "vae")
    shutil.copytree(run / "rnn", step / "rnn")
    evolve(EvolveConfig(run_dir=str(step), init_from=str(tiny_world_model / "controller"), generations=2,
                        popsize=4, rollouts=1, max_steps=20, eval_every=5, eval_episodes=1, workers=1,
                        env=TEST_ENV))
    with pytest.raises(ArtifactError, match="evolved on other V and M"):
        export(ExportConfig(run_dir=str(step), out_dir=str(tmp_path / "step-model")))
    # Evolved on (with a warning that it started on the old codes), it is C for these V and M.
    with caplog.at_level("WARNING", logger="core.pipeline.evolve"):
        evolve(EvolveConfig(run_dir=str(run), generations=2, popsize=4, rollouts=1, max_steps=20, eval_every=0,
                            workers=1, env=TEST_ENV))
    assert "V or M has changed since this evolution last ran" in caplog.text
    export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "after")))


def test_export_ships_a_screened_controller_with_its_own_report(tiny_world_model, tmp_path):
    """A CMA-ES mean screened outside the evolution (``--params``) ships with its evaluation; the shipped
    CMA-ES state holds it as the controller to beat, unscored, and a resumed evolution scores it first."""
    import shutil

    import numpy as np

    from core.config import ConfigError, EvaluateConfig, EvolveConfig, ExportConfig
    from core.models.controller import params_sha256
    from core.pipeline.evaluate import evaluate
    from core.pipeline.evolve import evolve
    from core.pipeline.export import export
    from core.storage.artifacts import ArtifactError
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model, run)
    mean = tmp_path / "mean.npz"  # as an evolution's latest.npz, with a mean other than the kept controller
    with np.load(run / "controller" / "latest.npz") as f:
        np.savez(mean, mean=f["best_candidate"], generation=f["generation"])
        sha = params_sha256(f["best_candidate"])
    kept = params_sha256(np.load(run / "controller" / "params.npz")["params"])
    assert sha != kept
    settings = {"episodes": 2, "max_steps": 15, "workers": 1, "env": TEST_ENV}
    own = evaluate(EvaluateConfig(model_dir=str(run), **settings))  # of the kept controller
    report = evaluate(EvaluateConfig(model_dir=str(run), params=str(mean), **settings))
    assert report["out"] == str(tmp_path / "mean.evaluation.json") and report["params_sha256"] == sha
    assert report["params_source"]["key"] == "mean" and report["params_source"]["generation"] == 1
    assert read_json(run / "controller" / "evaluation.json")["params_sha256"] == own["params_sha256"] == kept

    out = tmp_path / "models"
    with pytest.raises(ConfigError, match="needs --evaluation"):
        export(ExportConfig(run_dir=str(run), out_dir=str(out), params=str(mean)))
    with pytest.raises(ArtifactError, match="another controller"):
        export(ExportConfig(run_dir=str(run), out_dir=str(out), params=str(mean),
                            evaluation=str(run / "controller" / "evaluation.json")))
    doubtful = tmp_path / "doubtful.json"
    for change, problem in (({"complete": False}, "a stopped evaluation"), ({"held_out": False}, "held-out"),
                            ({"world_model_sha256": "0" * 64}, "another V and M")):
        doubtful.write_text(json.dumps({**read_json(Path(report["out"])), **change}))
        with pytest.raises(ArtifactError, match=problem):
            export(ExportConfig(run_dir=str(run), out_dir=str(out), params=str(mean), evaluation=str(doubtful)))
    assert not out.exists()  # nothing half-shipped
    # A report from before held_out was recorded is judged by its tracks.
    doubtful.write_text(json.dumps({k: v for k, v in read_json(Path(report["out"])).items() if k != "held_out"}))
    export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "legacy"), params=str(mean),
                        evaluation=str(doubtful)))
    result = export(ExportConfig(run_dir=str(run), out_dir=str(out), params=str(mean), evaluation=report["out"]))
    assert result["params_sha256"] == sha and result["evaluation"] == report["mean"]
    from core.storage.weights_cache import world_model_sha256
    world = world_model_sha256(out)  # it was evaluated on these V and M, and says so wherever it is kept
    assert read_json(out / "controller" / "meta.json")["world_model_sha256"] == world
    assert read_json(out / "controller" / "state.json")["shipped_world"] == world
    doubts = [] if TEST_ENV == "stock" else [f"--evaluation {report['out']}: driven in the {TEST_ENV} env, not "
                                             "the stock CarRacing-v3 that published scores use"]
    assert result.get("notes", []) == doubts
    with np.load(out / "controller" / "params.npz") as f:
        assert params_sha256(f["params"]) == sha
    assert read_json(out / "controller" / "evaluation.json")["params_sha256"] == sha
    assert not (out / "controller" / "latest.npz").exists()
    state = read_json(out / "controller" / "state.json")
    assert state["best_eval"] is None and state["start_pending"] and "confirmed" not in state
    assert state["shipped"]["key"] == "mean" and state["shipped"]["run_params_sha256"] == kept
    meta = read_json(out / "controller" / "meta.json")
    assert meta["shipped"] == state["shipped"] and meta["metrics"]["best_eval"] is None
    card = subprocess.run([sys.executable, "scripts/model_card.py", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert card.returncode == 0 and "Shipped controller: the CMA-ES mean" in card.stdout, card.stderr

    # Resumed without periodic evaluations an evolution ships its mean, like any run: no longer "shipped".
    shutil.copytree(out, tmp_path / "unevaluated")
    evolve(EvolveConfig(run_dir=str(tmp_path / "unevaluated"), generations=2, popsize=4, rollouts=1, max_steps=15,
                        eval_every=0, workers=1, env=TEST_ENV))
    for name in ("state.json", "meta.json"):
        assert "shipped" not in read_json(tmp_path / "unevaluated" / "controller" / name)

    # Resumed from the export, the evolution scores the shipped controller before anything can replace it.
    resumed = evolve(EvolveConfig(run_dir=str(out), generations=2, popsize=4, rollouts=1, max_steps=15,
                                  eval_every=1, eval_episodes=1, confirm_episodes=0, workers=1, env=TEST_ENV))
    assert resumed["resumed_from"] == 1
    first = read_history(out / "controller" / "history.jsonl")[1]
    assert first["generation"] == 2 and "eval_start" in first
    # It was scored, then beaten or kept; a controller the evolution picks itself is no longer "shipped".
    state = read_json(out / "controller" / "state.json")
    with np.load(out / "controller" / "params.npz") as f:
        assert ("shipped" in state) == (params_sha256(f["params"]) == sha)
    assert read_json(out / "controller" / "meta.json").get("shipped") == state.get("shipped")

    # The run's own controller named with --params is a plain export.
    own_params = export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "own"),
                                     params=str(run / "controller" / "params.npz"),
                                     evaluation=str(run / "controller" / "evaluation.json")))
    assert "params_from" not in own_params and "shipped" not in read_json(tmp_path / "own" / "controller" / "state.json")

    # A run whose own report is of another controller exports without it, and says so.
    (run / "controller" / "evaluation.json").write_text(json.dumps({**own, "params_sha256": "0" * 64}))
    plain = export(ExportConfig(run_dir=str(run), out_dir=str(tmp_path / "plain")))
    assert plain["evaluation"] is None and "left out" in plain["notes"][0]
    assert not (tmp_path / "plain" / "controller" / "evaluation.json").exists()


def test_a_corrupt_episode_is_skipped_or_stops_the_stage(tiny_data, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = sorted(data.glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated, as by a full disk or a killed copy
    args = ["train-vae", "--data-dir", str(data), "--run-dir", str(tmp_path / "run"), "--z-size", "4",
            "--epochs", "1", "--batch-size", "8", "--holdout", "0", "--quiet"]
    stop = cli(*args, "--on-corrupt", "stop", check=False)
    assert stop.returncode == 2 and victim.name in stop.stderr and "Traceback" not in stop.stderr
    skip = cli(*args)
    assert victim.name in skip.stderr and "warning" in skip.stderr
    assert summary(skip)["complete"] is True


def test_a_model_of_another_z_size_is_explained(tiny_world_model, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model / "vae", run / "vae")
    shutil.copytree(tiny_world_model / "rnn", run / "rnn")
    config = json.loads((run / "rnn" / "config.json").read_text())
    (run / "rnn" / "config.json").write_text(json.dumps({**config, "z_size": 32}))
    proc = cli("evolve", "--run-dir", str(run), "--generations", "1", "--popsize", "4", "--workers", "1",
               "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "z = 32" in proc.stderr and "retrain" in proc.stderr


def test_a_stopped_recording_leaves_the_old_video_and_says_it_starts_over(tiny_world_model, tmp_path):
    from core.config import RecordConfig
    from core.pipeline.record import record
    out = tmp_path / "drive.mp4"
    out.write_bytes(b"the previous video")
    with pytest.raises(InterruptedError, match="left as it was"):
        record(RecordConfig(model_dir=str(tiny_world_model), seed=3, out=str(out), max_steps=120, env=TEST_ENV),
               on_progress=lambda step, total, metrics: step < 100)
    assert out.read_bytes() == b"the previous video"
    assert sorted(tmp_path.iterdir()) == [out]  # no half-written video left beside it


def test_an_action_log_that_is_not_one_array_is_explained(tmp_path):
    import numpy as np

    from core.pipeline.record import load_actions
    from core.storage.artifacts import ArtifactError
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as f:
        np.savez(f, actions=np.zeros((3, 3), np.float32))
    words, pairs = tmp_path / "words.npy", tmp_path / "pairs.npy"
    np.save(words, np.array([["left", "gas", "brake"]]))
    np.save(pairs, np.zeros((3, 3), np.complex64))
    for path in (empty, archive, words, pairs):
        with pytest.raises(ArtifactError, match="not an action log"):
            load_actions(path)


def test_a_model_left_aside_by_an_interrupted_export_is_put_back(tiny_world_model, tmp_path):
    """A crash between export's two renames leaves the previous model as .models.old and no models/."""
    import shutil

    from core.config import ExportConfig
    from core.pipeline.export import export
    from core.storage.artifacts import ArtifactError
    shutil.copytree(tiny_world_model, tmp_path / ".models.old", ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    with pytest.raises(ArtifactError):  # this export fails (no such run), after putting the model back
        export(ExportConfig(run_dir=str(tmp_path / "no-run"), out_dir=str(tmp_path / "models")))
    assert (tmp_path / "models" / "controller" / "params.npz").exists() and not (tmp_path / ".models.old").exists()


def test_snapshot_freezes_the_averaged_mean_and_prints_how_to_ship_it(tiny_world_model, tmp_path):
    import shutil

    import numpy as np
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model, run)
    proc = cli("snapshot", "--run-dir", str(run))  # the averaged mean by default
    with np.load(run / "controller" / "latest.npz") as f:
        generation, average = int(f["generation"]), f["average"]
    frozen = next((run / "controller").glob(f"average-gen{generation}-*.npz"))
    with np.load(frozen) as f:
        assert np.array_equal(f["average"], average)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"snapshot: the averaged mean of generation {generation} -> {frozen}"
    assert lines[2].split() == ["ship", "it:", "python", "-m", "core", "export", "--run-dir", str(run), "--params",
                                str(frozen), "--evaluation", str(frozen.with_suffix(".evaluation.json"))]
    assert "the CMA-ES mean of" in cli("snapshot", "--run-dir", str(run), "--which", "mean").stdout
    (run / "controller" / "latest.npz").unlink()
    proc = cli("snapshot", "--run-dir", str(run), check=False)
    assert proc.returncode == 2 and "first generation" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("snapshot", "--run-dir", "models", check=False)  # the shipped model stays as committed
    assert proc.returncode == 2 and "copy it into a run folder" in proc.stderr
    assert not list((ROOT / "models" / "controller").glob("*-gen*.npz"))


def test_export_refuses_a_checkpoint_cut_short_until_a_resume_completes_it(tiny_world_model, tmp_path):
    """A kill between the CMA-ES state and params.npz leaves a state one generation ahead of its controller:
    export refuses the pair, and a resumed evolution (here one that has nothing left to run) completes it."""
    import shutil

    import numpy as np

    from core.models.controller import save_params
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model, run)
    with np.load(run / "controller" / "params.npz") as f:
        kept, z_size, hidden = f["params"], int(f["z_size"]), int(f["hidden"])
    save_params(run / "controller", kept + 1, z_size, hidden)  # the generation before, as far as C goes
    proc = cli("export", "--run-dir", str(run), "--out-dir", str(tmp_path / "out"), "--quiet", check=False)
    assert proc.returncode == 2 and "cut short" in proc.stderr and not (tmp_path / "out").exists()
    generation = json.loads((run / "controller" / "state.json").read_text())["generation"]
    config = json.loads((run / "controller" / "config.json").read_text())
    cli("evolve", "--run-dir", str(run), "--generations", str(generation), "--popsize", str(config["popsize"]),
        "--workers", "1", "--env", TEST_ENV, "--quiet")
    summary(cli("export", "--run-dir", str(run), "--out-dir", str(tmp_path / "out"), "--quiet"))
    with np.load(tmp_path / "out" / "controller" / "params.npz") as f:
        assert np.array_equal(f["params"], kept)


def test_record_replays_an_action_log_on_its_track(tmp_path):
    """record --actions drives the logged actions on the seed: the video has one frame per step and the
    reset's, and the return is the env's for those actions."""
    import imageio.v2 as imageio
    import numpy as np

    from core.envs.env import make_env
    actions = [[0.0, 1.0, 0.0]] * 20 + [[-0.5, 0.5, 0.0]] * 10
    log = tmp_path / "log.json"
    log.write_text(json.dumps({"actions": actions}))
    out = tmp_path / "replay.mp4"
    result = json.loads(cli("record", "--actions", str(log), "--seed", "3", "--out", str(out), "--scale", "1",
                            "--env", TEST_ENV, "--quiet").stdout.strip().split(": ", 1)[1])
    env = make_env(TEST_ENV)
    env.reset(seed=3)
    want = sum(float(env.step(np.array(a, np.float32))[1]) for a in actions)
    env.close()
    assert result["steps"] == 30 and result["return"] == pytest.approx(want, abs=1e-6)
    reader = imageio.get_reader(out)
    assert sum(1 for _ in reader) == 31
    reader.close()
