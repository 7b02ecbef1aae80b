"""scripts/model_card.py: the model card (models/README.md, docs/MODEL_CARD.md) comes from the artifacts' own files."""

import json
import shutil
import subprocess
import sys

from core.storage.reports import summarize
from tests.conftest import ROOT


def test_the_card_reports_score_histogram_and_curve(tiny_world_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    returns = [850.0, 905.5, 912.0, -20.0]
    (model / "controller" / "evaluation.json").write_text(json.dumps({
        "mean": 661.9, "std": 393.0, "min": -20.0, "max": 912.0, "median": 877.8, "solved_fraction": 0.5,
        "episodes": 4, "env": "stock", "seeds": [1000000, 1000001, 1000002, 1000003], "returns": returns}))
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "**Score: 661.9 ± 393.0** over 4 episodes of the stock env on tracks 1000000..1000003" in out
    assert "50% of episodes ≥ 900" in out
    assert "| 1 |" in out  # the one generation of the tiny model's learning curve
    bars = [line for line in out.splitlines() if " to " in line and "#" in line]
    assert [line.split()[-1] for line in bars if line.split()[-1] != "0"] == ["1", "1", "2"]
    assert "How its episodes ended" not in out  # a report from before endings were kept

    report = json.loads((model / "controller" / "evaluation.json").read_text())
    report.update(ended=["out of steps", "lap finished", "lap finished", "left the field"], skipped=[2, 0, 0, 3],
                  endings=[{"ended": "a table the card does not trust"}])
    (model / "controller" / "evaluation.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert ("- How its episodes ended: lap finished 2 (mean 908.8, 0.0 tiles skipped); left the field 1 "
            "(mean -20.0, 3.0 tiles skipped); out of steps 1 (mean 850.0, 2.0 tiles skipped)") in out


def test_the_card_says_when_the_rollouts_changed(tiny_world_model, tmp_path):
    """A resumed evolution may change its rollouts per candidate; the card reports them by generation."""
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    history = model / "controller" / "history.jsonl"
    record = json.loads(history.read_text().splitlines()[0])
    assert record["rollouts"] == json.loads((model / "controller" / "config.json").read_text())["rollouts"]
    history.write_text("\n".join(json.dumps({**record, "generation": g, "rollouts": n})
                                 for g, n in ((1, 2), (2, 2), (3, 4))) + "\n")
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "2 rollouts in generations 1-2, 4 rollouts in generations 3-3" in out


def test_training_time_adds_up_over_resumed_sessions(tmp_path):
    """A Keras stage's history times each session from its own start; the card adds the sessions up."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from model_card import _train_seconds
    part = tmp_path / "vae"
    part.mkdir()
    times = [10.0, 20.0, 30.0, 5.0, 15.0, 2.0, 4.0]  # three sessions: 30 s, 15 s and 4 s
    (part / "history.jsonl").write_text("".join(json.dumps({"step": i, "time": t}) + "\n" for i, t in enumerate(times)))
    assert _train_seconds(part) == 49.0


def test_the_card_adds_up_an_evolution_and_the_ones_it_started_from(tiny_world_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    state_path = model / "controller" / "state.json"
    state = json.loads(state_path.read_text())
    earlier = {"init_from": "models/controller", "params_sha256": "0" * 64, "generation": 281, "episodes": 10528,
               "env_steps": 7874824, "train_seconds": 13508.7, "best_eval": 816.1, "popsize": 16, "rollouts": 4}
    state_path.write_text(json.dumps({**state, "lineage": [earlier]}))
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("- C:"))
    assert line.startswith("- C: 281 generations (population 16 x 4 rollouts at its end, 10,528 episodes, 3.75 h); then, "
                           f"starting from that controller, {state['generation']} generations of CMA-ES")
    assert (f"In all: {281 + state['generation']} generations, {10528 + state['episodes']:,} episodes, "
            f"{7874824 + state['env_steps']:,} env steps") in line


def test_the_card_adds_up_fine_tuned_v_and_m(tiny_world_model, tmp_path):
    """V fine-tuned from weights trained twice before, one of them of unknown cost; M trained once."""
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    meta_path = model / "vae" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["lineage"] = [{"init_from": "old/vae"},
                       {"init_from": "runs/vae", "epochs": 3.0, "train_episodes": 152, "train_seconds": 540.0}]
    meta_path.write_text(json.dumps(meta))
    sys.path.insert(0, str(ROOT / "scripts"))
    from model_card import _train_seconds
    own = _train_seconds(model / "vae")
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    [v_line] = [line for line in out.splitlines() if line.startswith("- V:")]
    assert ("fine-tuned from weights trained before (3 epochs on 152 episodes in 9 min; weights of unknown cost); "
            f"in all (known) {(own + 540) / 60:.0f} min") in v_line
    [m_line] = [line for line in out.splitlines() if line.startswith("- M:")]
    assert "fine-tuned" not in m_line


def test_the_shipped_models_readme_the_model_card_page_and_the_main_readme_carry_its_current_card():
    """models/README.md quotes the card of what models/ holds now, docs/MODEL_CARD.md is its page as the script
    writes it, and the main README quotes its score and links the page (regenerate both after an export with
    `python scripts/model_card.py models` and `python scripts/model_card.py models --write docs/MODEL_CARD.md`)."""
    out = subprocess.run([sys.executable, "scripts/model_card.py", "models"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    card = out.split("\n", 2)[2]  # after the title line and the blank line
    assert card.strip() in (ROOT / "models" / "README.md").read_text(encoding="utf-8")
    summary = [line for line in card.splitlines() if line.startswith("- ")]
    assert len(summary) >= 6  # score, V, M, C, compute, ... (an empty card would match anything)

    sys.path.insert(0, str(ROOT / "scripts"))
    from model_card import page
    written = (ROOT / "docs" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert written == page(ROOT / "models"), "docs/MODEL_CARD.md is stale: regenerate it"
    for line in summary:
        if not line.startswith("- How its episodes ended"):  # the page tables the endings instead
            assert line in written, line[:80]

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    score = next(line for line in summary if line.startswith("- **Score: "))
    assert score.split("**")[1].removeprefix("Score: ") in readme  # "859.6 ± 90.5", say
    assert "(docs/MODEL_CARD.md)" in readme


def test_the_card_page_compares_the_model_with_the_reports_it_keeps(tiny_world_model, tmp_path):
    """--write: the whole page, with the lead over an earlier controller whose report is in reports/."""
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    seeds = list(range(1000000, 1000012))
    own = [800.0 + 10 * i for i in range(12)]
    earlier = [r - 20 - 10 * (i % 2) for i, r in enumerate(own)]  # 20 or 30 behind on every track
    base = {"env": "stock", "max_steps": 1000, "episodes": 12, "seeds": seeds}
    (model / "controller" / "evaluation.json").write_text(json.dumps(
        {**base, "returns": own, "params_sha256": "a" * 64, **summarize(own)}))
    (model / "reports").mkdir()
    (model / "reports" / "earlier-model-1000000.json").write_text(json.dumps(
        {**base, "returns": earlier, "params_sha256": "b" * 64, **summarize(earlier)}))
    out = tmp_path / "MODEL_CARD.md"
    subprocess.run([sys.executable, "scripts/model_card.py", str(model), "--write", str(out)], cwd=ROOT,
                   capture_output=True, text=True, timeout=120, check=True)
    text = out.read_text(encoding="utf-8")
    for heading in ("# Model card: the world model in `model/`", "## What it is", "## Score",
                    "## Against earlier models", "## Training"):
        assert heading in text.splitlines(), heading
    assert "| this model | earlier model |" in text
    assert "| tracks 1000000..1000011 (the evaluation tracks) | **855.0 ± 34.5** | 830.0 ± 34.2 |" in text
    # the differences are 20 and 30, six of each: lead 25, standard error sqrt(300 / 11) / sqrt(12)
    assert ("- over the earlier model, tracks 1000000..1000011: **+25.0 ± 1.5** (95% interval +21.7 to +28.3; "
            "won 12, lost 0, tied 0): better than the earlier model") in text
    assert "python -m core compare --baseline model/reports/earlier-model-1000000.json" in text
    assert "- Training in all: " in text


def test_the_card_names_a_controller_shipped_from_a_snapshot(tiny_world_model, tmp_path):
    """export --params of a snapshot of the averaged mean: the card says that is what ships."""
    model = tmp_path / "model"
    shutil.copytree(tiny_world_model, model)
    state_path = model / "controller" / "state.json"
    shipped = {"file": "runs1/controller/average-gen205-1a8142ab.npz", "key": "average", "generation": 205,
               "params_sha256": "1a8142ab" + "0" * 56, "generation_of_run": 207, "run_params_sha256": "e" * 64}
    state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "shipped": shipped}))
    out = subprocess.run([sys.executable, "scripts/model_card.py", str(model)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert ("- Shipped controller: the averaged mean of generation 205 from "
            "`runs1/controller/average-gen205-1a8142ab.npz` (parameters 1a8142ab0000)") in out
