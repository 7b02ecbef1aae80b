"""scripts/model_card.py: the README's model summary comes from the artifacts' own files."""

import json
import shutil
import subprocess
import sys

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
