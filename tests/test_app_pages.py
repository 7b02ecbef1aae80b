"""Every page of the app in Streamlit's AppTest, over a tiny trained world model in a temporary root.

The app resolves ``data/rollouts``, ``runs`` and ``models`` against ``$WORLD_MODELS_ROOT``; here that root
holds the session's tiny data set as the collected data and its tiny world model as both the training run
and the shipped model.
"""

import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.app_data import ROOT_ENV
from core.dream import KEY_ACTIONS
from tests.conftest import ROOT, TEST_ENV, make_app_root

TIMEOUT = 120  # seconds a script run may take (the first one loads TensorFlow)


@pytest.fixture(scope="session")
def app_root(tmp_path_factory, tiny_data, tiny_world_model):
    return make_app_root(tmp_path_factory.mktemp("app_root"), tiny_data, tiny_world_model)


@pytest.fixture
def app(app_root, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(app_root))
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def labels(widgets) -> list[str]:
    return [w.label for w in widgets]


def test_home_explains_the_model_and_lists_the_artifacts(app):
    text = " ".join(m.value for m in app.markdown)
    assert "world model" in text and "V" in text and "CMA-ES" in text
    assert len(app.get("graphviz_chart")) == 1
    assert len(app.get("plotly_chart")) == 1  # the default model's fitness curve (it has no evaluation yet)
    assert app.metric[0].value == "2"  # two collected episodes
    assert "`models/`" in app.success[0].value and "shipped" in app.success[0].value
    assert "loaded by default" in text


def test_home_shows_the_default_models_scores(app_root, monkeypatch):
    import json
    report = app_root / "models" / "controller" / "evaluation.json"
    report.write_text(json.dumps({"mean": 512.0, "std": 10.0, "episodes": 3, "env": "stock", "returns": [500, 512, 524],
                                  "date": "2026-01-01T00:00:00Z"}))
    try:
        monkeypatch.setenv(ROOT_ENV, str(app_root))
        at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT).run()
        assert not at.exception
        assert "512 ± 10" in at.success[0].value and "3 evaluation tracks" in at.success[0].value
        assert len(at.get("plotly_chart")) == 2  # fitness curve and the histogram of scores
    finally:
        report.unlink()


def test_collect_page_builds_settings_from_the_config_and_runs_a_job(app, app_root):
    at = open_page(app, "1_Collect.py")
    assert {"Out dir", "Episodes", "Max steps", "Workers", "Seed"} <= set(labels(at.number_input) + labels(at.text_input))
    assert sorted(labels(at.selectbox)) == ["Env", "Policy"]
    assert len(at.get("video")) == 2 and len(at.get("plotly_chart")) == 1  # the two episodes, their returns
    at.text_input(key="collect.out_dir").set_value("data/fresh")
    at.number_input(key="collect.episodes").set_value(1)
    at.number_input(key="collect.max_steps").set_value(15)
    at.number_input(key="collect.workers").set_value(1)
    at.selectbox(key="collect.env").set_value(TEST_ENV)
    at.button(key="start.collect").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not at.success:
        time.sleep(0.5)
        at.run()
    assert at.success and "finished" in at.success[0].value
    assert (app_root / "data" / "fresh" / "ep_0000000.npz").exists()


def test_train_vae_page_shows_curves_reconstructions_and_the_latent_explorer(app):
    at = open_page(app, "2_Train_VAE.py")
    assert {"Z size", "Epochs", "Batch size", "Learning rate", "Kl tolerance"} <= set(labels(at.number_input))
    assert at.button(key="start.train-vae").label.endswith("training")
    assert len(at.get("plotly_chart")) == 2  # reconstruction and KL curves
    images = at.get("image")
    assert any("reconstructions" in c for img in images for c in img.captions)
    sliders = [s for s in at.slider if s.label.startswith("z[")]
    assert len(sliders) == 8  # z = 8: every dimension
    sliders[0].set_value(3.0).run()
    assert not at.exception


def test_train_rnn_page_shows_losses_and_one_step_predictions(app):
    at = open_page(app, "3_Train_RNN.py")
    assert {"Hidden", "Mixtures", "Seq len", "Epochs"} <= set(labels(at.number_input))
    assert len(at.get("plotly_chart")) == 3  # MDN, reward and episode-end losses
    assert any("M's prediction" in c for img in at.get("image") for c in img.captions)
    at.slider(key="rnn.pred_start").set_value(3).run()
    assert not at.exception


def test_evolve_page_shows_fitness_and_offers_evaluation_and_a_video(app):
    at = open_page(app, "4_Evolve.py")
    assert {"Generations", "Popsize", "Rollouts", "Sigma0"} <= set(labels(at.number_input))
    assert len(at.get("plotly_chart")) == 1
    buttons = labels(at.button)
    assert any(b.endswith("evolution") for b in buttons)
    assert "Start evaluation" in buttons and "Start recording" in buttons
    assert at.selectbox(key="evolve.model_dir").options == ["runs", "models"]


def test_dream_page_steers_with_keys_and_runs_the_dream_beside_the_real_env(app):
    at = open_page(app, "5_Dream.py")
    assert labels(at.button)[:6] == ["New dream", "Left", "Gas", "Brake", "Right", "Coast"]
    assert "Dream step 0" in at.get("image")[0].captions[0]
    at.button(key="dream.key.gas").click().run()
    assert not at.exception
    dream = at.session_state["dream"]
    # Ten steps of gas, unless the tiny M predicted the episode's end first (then the page says so).
    assert dream.t == 10 or (dream.ended and dream.t == dream.ended_at and "ends" in at.warning[0].value)
    assert f"Dream step {dream.t}" in at.get("image")[0].captions[0]
    np.testing.assert_array_equal(dream.log.action[0], KEY_ACTIONS["gas"])
    assert len(at.get("plotly_chart")) == 1  # predicted reward and end probability
    at.get("button_group")[0].set_value("The controller").run()
    at.button(key="dream.new").click().run()
    at.button(key="dream.controller").click().run()
    assert not at.exception
    dream = at.session_state["dream"]
    assert dream.t == 150 or (dream.ended and dream.t == dream.ended_at)
    assert f"Dream step {dream.t}" in at.get("image")[0].captions[0]
    at.get("button_group")[0].set_value("Real vs dream").run()
    at.number_input(key="dream.sbs_steps").set_value(25)
    at.number_input(key="dream.sbs_warmup").set_value(10)
    at.button(key="dream.sbs_go").click().run()
    assert not at.exception and not at.error
    assert "the dream" in at.get("image")[0].captions[0]


def test_the_app_never_writes_into_the_shipped_model(app_root, monkeypatch):
    import json

    from core import app_data
    monkeypatch.setenv(ROOT_ENV, str(app_root))
    assert app_data.outputs_dir("models") == app_root / "runs" / "shipped-model"
    assert app_data.outputs_dir("runs") == app_root / "runs" / "controller"
    stored = app_root / "models" / "controller" / "evaluation.json"
    stored.write_text(json.dumps({"mean": 900.0, "date": "2026-01-01T00:00:00Z"}))
    try:
        assert app_data.latest_evaluation("models")["mean"] == 900.0
        mine = app_data.outputs_dir("models") / "evaluation.json"
        mine.parent.mkdir(parents=True)
        mine.write_text(json.dumps({"mean": 12.0, "date": "2026-02-01T00:00:00Z"}))
        assert app_data.latest_evaluation("models")["mean"] == 12.0  # the app's newer run is shown
        assert app_data.evaluation("models")["mean"] == 900.0  # the committed report is untouched
    finally:
        stored.unlink()
        (app_data.outputs_dir("models") / "evaluation.json").unlink(missing_ok=True)


def test_a_corrupt_or_short_episode_is_explained_not_a_crash(tmp_path, tiny_data, tiny_world_model, monkeypatch):
    """The first episode (the one the pages pick by default) is truncated, and another has 5 steps."""
    root = make_app_root(tmp_path, tiny_data, tiny_world_model)
    episodes = sorted((root / "data" / "rollouts").glob("*.npz"))
    episodes[0].write_bytes(episodes[0].read_bytes()[:300])
    with np.load(episodes[1]) as f:
        short = {k: f[k][:6 if k == "obs" else 5] if f[k].ndim else f[k] for k in f.files}  # 5 steps
    np.savez(episodes[1], **short)
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT)
    at.run()
    dream = open_page(at, "5_Dream.py")
    assert any(episodes[0].name in e.value for e in dream.error)
    assert "Dream step 0" in dream.get("image")[0].captions[0]  # it dreams from a random z instead
    rnn = open_page(at, "3_Train_RNN.py")
    assert any(episodes[0].name in e.value for e in rnn.error)
    rnn.selectbox(key="rnn.pred_episode").set_value(episodes[1].name).run()
    assert not rnn.exception and any("too few" in c.value for c in rnn.caption)


def test_evaluating_and_recording_the_shipped_model_leave_it_byte_for_byte(app, app_root):
    """Run an evaluation and a recording of models/ from the Evolve page: their outputs land in
    runs/shipped-model/, and every file of models/ is unchanged (no new ones either)."""
    import hashlib

    def snapshot() -> dict:
        return {str(p.relative_to(app_root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((app_root / "models").rglob("*")) if p.is_file() and p.name != ".lock"}

    before = snapshot()
    at = open_page(app, "4_Evolve.py")
    at.selectbox(key="evolve.model_dir").set_value("models").run()
    for done, (stage, settings) in enumerate((("evaluate", {"episodes": 1, "max_steps": 15, "workers": 1}),
                                              ("record", {"max_steps": 15})), start=1):
        for name, value in settings.items():
            at.number_input(key=f"{stage}.{name}").set_value(value)
        at.selectbox(key=f"{stage}.env").set_value(TEST_ENV)
        at.button(key=f"start.{stage}").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum("finished" in s.value for s in at.success) < done:
            time.sleep(0.5)
            at.run()
        assert sum("finished" in s.value for s in at.success) == done, [s.value for s in at.success]
    outputs = app_root / "runs" / "shipped-model"
    assert (outputs / "evaluation.json").exists() and (outputs / "watch.mp4").stat().st_size > 1000
    assert snapshot() == before
