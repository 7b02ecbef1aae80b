"""Every page of the app in Streamlit's AppTest, over a tiny trained world model in a temporary root.

The app resolves ``data/rollouts``, ``runs`` and ``models`` against ``$WORLD_MODELS_ROOT``; here that root
holds the session's tiny data set as the collected data and its tiny world model as both the training run
and the shipped model.
"""

import shutil
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.app.app_data import ROOT_ENV
from core.pipeline.dream import KEY_ACTIONS
from core.storage.dataset import load_episode
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
                                  "seeds": [1_000_000, 1_000_001, 1_000_002], "date": "2026-01-01T00:00:00Z"}))
    meta_path = app_root / "models" / "controller" / "meta.json"
    meta_text = meta_path.read_text()
    try:
        monkeypatch.setenv(ROOT_ENV, str(app_root))
        at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT).run()
        assert not at.exception
        assert "512 ± 10" in at.success[0].value and "3 evaluation tracks" in at.success[0].value
        assert len(at.get("plotly_chart")) == 2  # fitness curve and the histogram of scores
        # A controller exported with --params says what it is rather than the evolution's best evaluation.
        meta_path.write_text(json.dumps({**json.loads(meta_text), "shipped": {"key": "mean", "generation": 7}}))
        at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT).run()
        captions = " ".join(c.value for c in at.caption)
        assert "ships the CMA-ES mean of generation 7, picked outside its evolution" in captions
        meta_path.write_text(json.dumps({**json.loads(meta_text), "shipped": {"key": "average", "generation": 7}}))
        at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT).run()
        assert "ships the averaged mean of generation 7" in " ".join(c.value for c in at.caption)
    finally:
        report.unlink()
        meta_path.write_text(meta_text)


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


def test_train_vae_page_shows_curves_reconstructions_and_the_latent_explorer(app, app_root):
    at = open_page(app, "2_Train_VAE.py")
    assert {"Z size", "Epochs", "Batch size", "Learning rate", "Kl tolerance"} <= set(labels(at.number_input))
    assert at.button(key="start.train-vae").label.endswith("training")
    assert len(at.get("plotly_chart")) == 2  # reconstruction and KL curves
    images = at.get("image")
    assert any("reconstructions" in c for img in images for c in img.captions)
    sliders = [s for s in at.slider if s.label.startswith("z[")]
    assert len(sliders) == 8  # z = 8: every dimension

    def explorer_image():
        (image,) = [img for img in at.get("image") if any("decoded with your z" in c for c in img.captions)]
        return [i.url for i in image.proto.imgs]

    def action():
        (html,) = [h.proto.body for h in at.get("html") if "wm-action" in h.proto.body]
        return {name: float(html.split(f'data-action="{name}" data-value="')[1].split('"')[0])
                for name in ("steer", "gas", "brake")}

    before, acted = explorer_image(), action()
    sliders[0].set_value(3.0).run()
    assert not at.exception and explorer_image() != before  # the slider's z is what is decoded
    # C acts on the sliders' z and M's memory at the real frame's moment of its episode: as the controller does.
    from core.app import app_data
    from core.models.controller import load_controller
    from core.models.vae import load_vae
    frames, where = app_data.sample_moments(app_root / "data" / "rollouts", count=8, seed=1)
    vae = load_vae(app_root / "runs" / "vae")
    z = np.array(vae.encode(frames[:1].astype(np.float32) / 255.0)[0])[0]
    z[int(sliders[0].label[2:-1])] = 3.0
    from core.pipeline.dream import WorldModel
    h = app_data.memory_at(WorldModel.load(app_root / "runs", with_controller=False), *where[0])
    want = load_controller(app_root / "runs" / "controller", 8, 16).act(z, h)
    np.testing.assert_allclose(list(action().values()), want, atol=1e-3)
    assert action() != acted
    assert any("runs/controller" in c.value and "step" in c.value for c in at.caption)


def test_train_rnn_page_shows_losses_and_one_step_predictions(app):
    at = open_page(app, "3_Train_RNN.py")
    assert {"Hidden", "Mixtures", "Seq len", "Epochs"} <= set(labels(at.number_input))
    assert len(at.get("plotly_chart")) == 3  # MDN, reward and episode-end losses
    assert any("M's prediction" in c for img in at.get("image") for c in img.captions)
    at.slider(key="rnn.pred_start").set_value(3).run()
    assert not at.exception and not at.error
    assert any(c.startswith("Steps 4–") for img in at.get("image") for c in img.captions)


def test_evolve_page_shows_fitness_and_offers_evaluation_and_a_video(app):
    at = open_page(app, "4_Evolve.py")
    assert {"Generations", "Popsize", "Rollouts", "Sigma0"} <= set(labels(at.number_input))
    assert len(at.get("plotly_chart")) == 2  # fitness, and how the training rollouts ended
    assert "How the training rollouts ended" in chart_specs(at)
    assert any("0% finished their lap, with 0.0 tiles skipped" in c.value for c in at.caption)
    # One generation so far: the axes get a range around its one value and whole-number generations.
    import json
    layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    low, high = layout["yaxis"]["range"]
    assert high - low >= 2 and layout["xaxis"]["dtick"] == 1
    buttons = labels(at.button)
    assert any(b.endswith("evolution") for b in buttons)
    assert "Start evaluation" in buttons and "Start recording" in buttons
    assert at.selectbox(key="evolve.model_dir").options == ["runs", "models"]
    # Where the episodes run: a field of the stage configs, so their forms offer it (empty: this machine).
    assert at.text_input(key="evolve.ray_address").value == at.text_input(key="evaluate.ray_address").value == ""


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
    assert not at.get("plotly_chart")  # closed while you steer: a chart costs the browser more than a key press
    at.session_state["dream.charts.You"] = True  # opened
    at.run()
    assert len(at.get("plotly_chart")) == 1 and "What M predicts" in chart_specs(at)
    at.get("button_group")[0].set_value("The controller").run()
    at.button(key="dream.new").click().run()
    at.button(key="dream.controller").click().run()
    assert not at.exception
    dream = at.session_state["dream"]
    assert dream.t == 150 or (dream.ended and dream.t == dream.ended_at)
    assert f"Dream step {dream.t}" in at.get("image")[0].captions[0]
    # C's action at each step: open with the controller driving, beside M's predictions.
    assert len(at.get("plotly_chart")) == 2 and "The action taken at each step" in chart_specs(at)
    at.get("button_group")[0].set_value("Real vs dream").run()
    at.number_input(key="dream.sbs_steps").set_value(25)
    at.number_input(key="dream.sbs_warmup").set_value(10)
    at.button(key="dream.sbs_go").click().run()
    assert not at.exception and not at.error
    assert "the dream" in at.get("image")[0].captions[0]


def test_the_app_never_writes_into_the_shipped_model(app_root, monkeypatch):
    import json

    from core.app import app_data
    monkeypatch.setenv(ROOT_ENV, str(app_root))
    assert app_data.outputs_dir("models") == app_root / "runs" / "shipped-model"
    assert app_data.outputs_dir("runs") == app_root / "runs" / "controller"
    stored = app_root / "models" / "controller" / "evaluation.json"
    stored.write_text(json.dumps({"seeds": [1_000_000], "returns": [900.0], "date": "2026-01-01T00:00:00Z"}))
    try:
        assert app_data.published_evaluation()["mean"] == 900.0 and app_data.own_evaluation("models") is None
        mine = app_data.outputs_dir("models") / "evaluation.json"
        mine.parent.mkdir(parents=True)
        mine.write_text(json.dumps({"seeds": [1_000_000], "returns": [12.0], "date": "2026-02-01T00:00:00Z"}))
        assert app_data.own_evaluation("models")["mean"] == 12.0  # the app's own run, beside the published one
        assert app_data.published_evaluation()["mean"] == 900.0  # the committed report is untouched and shown
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


# --- what the pages show: the job's folders, fresh caches, stale reports, finished runs, folders to refuse ---


@pytest.fixture
def fresh_root(tmp_path, tiny_data, tiny_world_model, monkeypatch):
    """An app root of this test's own (the app_root fixture is shared by the tests above)."""
    root = make_app_root(tmp_path / "root", tiny_data, tiny_world_model)
    monkeypatch.setenv(ROOT_ENV, str(root))
    return root


def home(root) -> AppTest:
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def write_job_record(root, stage: str, config) -> None:
    """A finished job of ``stage`` in the app's job records, as a server that ran it leaves them."""
    import dataclasses
    import json

    from core.stages import STAGES
    config = dataclasses.asdict(config)
    jobs = root / "runs" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (jobs / f"{stage}.json").write_text(json.dumps({
        "id": f"{stage}-1", "stage": stage, "status": "done", "step": 1, "total": 1, "config": config,
        "out_dir": STAGES[stage].out_dir(config), "started_at": now - 60, "ended_at": now}))


def chart_specs(at: AppTest) -> str:
    return " ".join(c.proto.spec for c in at.get("plotly_chart"))


def test_job_panels_show_the_folders_of_the_job_not_of_the_form(fresh_root):
    """After a reload the forms are back at their defaults (runs/, data/rollouts) while the last jobs wrote
    runs2/ and data/two: the panels show what the jobs wrote."""
    import json
    import shutil

    from core.config import CollectConfig, EvolveConfig, RNNConfig, VAEConfig
    shutil.copytree(fresh_root / "runs", fresh_root / "runs2")
    marker = 4242.5  # a loss or fitness no tiny model reaches
    for part, record in (("vae", {"step": 1, "r_loss": marker, "kl": 1.0}), ("rnn", {"step": 1, "mdn": marker}),
                         ("controller", {"generation": 1, "best": marker, "mean": 1.0, "worst": 0.0})):
        (fresh_root / "runs2" / part / "history.jsonl").write_text(json.dumps(record) + "\n")
    two = fresh_root / "data" / "two"
    two.mkdir()
    first = sorted((fresh_root / "data" / "rollouts").glob("ep_*.npz"))[0]
    shutil.copy(first, two / first.name)
    manifest = json.loads((fresh_root / "data" / "rollouts" / "manifest.json").read_text())
    (two / "manifest.json").write_text(json.dumps({**manifest, "episodes": [
        e for e in manifest["episodes"] if e["file"] == first.name]}))
    write_job_record(fresh_root, "collect", CollectConfig(out_dir="data/two", episodes=1))
    write_job_record(fresh_root, "train-vae", VAEConfig(run_dir="runs2"))
    write_job_record(fresh_root, "train-rnn", RNNConfig(run_dir="runs2"))
    write_job_record(fresh_root, "evolve", EvolveConfig(run_dir="runs2"))

    at = home(fresh_root)
    collect = open_page(at, "1_Collect.py")
    assert collect.metric[0].value == "1 / 1"  # data/two's one episode, not data/rollouts' two of 100
    for page in ("2_Train_VAE.py", "3_Train_RNN.py", "4_Evolve.py"):
        shown = open_page(at, page)
        assert str(marker) in chart_specs(shown), page


def test_vae_reconstructions_follow_new_frames(fresh_root, monkeypatch):
    """An episode replaced by another with as many frames: the real row changes, and so do the reconstructions
    (they are not taken from the cache of the old frames)."""
    from core.app import app_data
    at = open_page(home(fresh_root), "2_Train_VAE.py")
    reconstructed = []
    real_reconstruct = app_data.reconstruct

    def reconstruct(vae, frames):
        reconstructed.append(frames.copy())
        return real_reconstruct(vae, frames)

    monkeypatch.setattr(app_data, "reconstruct", reconstruct)
    episode = sorted((fresh_root / "data" / "rollouts").glob("ep_*.npz"))[0]
    with np.load(episode) as f:
        other = {k: (255 - f[k]) if k == "obs" else f[k] for k in f.files}  # the same steps, other frames
    np.savez(episode, **other)
    at.run()
    assert not at.exception
    assert reconstructed, "the reconstructions of the old frames were shown under the new ones"
    np.testing.assert_array_equal(reconstructed[-1], app_data.sample_frames("data/rollouts", count=8, seed=1))


def test_training_pages_read_several_data_folders(fresh_root, monkeypatch):
    """A data folder field naming two folders: the VAE page reconstructs frames of both, the RNN page lists
    the episodes of both (told apart by folder, since their file names are the same)."""
    from core.app import app_data
    second = fresh_root / "data" / "second"
    shutil.copytree(fresh_root / "data" / "rollouts", second)
    for episode in second.glob("ep_*.npz"):  # frames no episode of the first folder has
        with np.load(episode) as f:
            other = {k: (255 - f[k]) if k == "obs" else f[k] for k in f.files}
        np.savez(episode, **other)
    both = "data/rollouts, data/second"
    assert len(app_data.episode_files(both)) == 2 * len(app_data.episode_files("data/rollouts")) == 4
    reconstructed = []
    real_reconstruct = app_data.reconstruct
    monkeypatch.setattr(app_data, "reconstruct",
                        lambda vae, frames: reconstructed.append(frames.copy()) or real_reconstruct(vae, frames))
    vae = open_page(home(fresh_root), "2_Train_VAE.py")
    vae.text_input(key="vae.data_dir").set_value(both).run()
    assert not vae.exception
    shown = reconstructed[-1]
    np.testing.assert_array_equal(shown, app_data.sample_frames(both, count=8, seed=1))
    firsts = [load_episode(p).obs for p in app_data.episode_files(both)]
    assert {next(i for i, obs in enumerate(firsts) if (obs == frame).all(axis=(1, 2, 3)).any()) // 2
            for frame in shown} == {0, 1}  # frames from both folders
    rnn = open_page(home(fresh_root), "3_Train_RNN.py")
    rnn.text_input(key="rnn.data_dir").set_value(both).run()
    assert not rnn.exception
    assert rnn.selectbox(key="rnn.pred_episode").options == [
        "data/rollouts/ep_0000000.npz", "data/rollouts/ep_0000001.npz",
        "data/second/ep_0000000.npz", "data/second/ep_0000001.npz"]


def test_home_says_training_while_an_app_job_writes_the_folder(fresh_root):
    """Evolution writes meta.json (complete: false) every generation: a running one is still training."""
    import json

    from core.app.jobs import Job
    from pages import _ui
    meta = fresh_root / "runs" / "controller" / "meta.json"
    data = json.loads(meta.read_text())
    data["metrics"]["complete"] = False
    meta.write_text(json.dumps(data))
    text = " ".join(m.value for m in home(fresh_root).markdown)
    assert "`runs/` · not finished" in text
    evaluating = Job(id="evaluating", stage="evaluate", config={"model_dir": "runs"}, out_dir="runs/controller",
                     status="running")
    registry = _ui.registry()
    registry._jobs[evaluating.id] = evaluating  # an evaluation writes its report there but trains nothing
    try:
        text = " ".join(m.value for m in home(fresh_root).markdown)
        assert "`runs/` · not finished" in text and "`runs/` · training" not in text
    finally:
        del registry._jobs[evaluating.id]
    job = Job(id="evolving", stage="evolve", config={"run_dir": "runs"}, out_dir="runs/controller",
              status="running")
    registry._jobs[job.id] = job  # a job whose process runs: only its status matters to the page
    try:
        text = " ".join(m.value for m in home(fresh_root).markdown)
        assert "`runs/` · training" in text
        assert "`runs/` · complete" in text  # V and M of runs/ are done
        data["metrics"]["complete"] = True  # a finished evolution resumed for more generations
        meta.write_text(json.dumps(data))
        text = " ".join(m.value for m in home(fresh_root).markdown)
        assert text.count("`runs/` · training") == 1
    finally:
        del registry._jobs[job.id]


def test_an_evaluation_of_an_earlier_controller_is_not_shown_as_the_current_score(fresh_root):
    import json

    from core.app import app_data
    report = {"mean": 512.0, "std": 10.0, "min": 502.0, "max": 522.0, "episodes": 2, "env": "stock",
              "returns": [502, 522], "seeds": [1_000_000, 1_000_001], "date": "2026-01-01T00:00:00Z"}
    stored = fresh_root / "models" / "controller" / "evaluation.json"
    stored.write_text(json.dumps({**report, "params_sha256": app_data.controller_sha256("models")}))
    assert "scored **512 ± 10**" in home(fresh_root).success[0].value
    stored.write_text(json.dumps({**report, "params_sha256": app_data.controller_sha256("models"),
                                  "complete": False, "config": {"episodes": 100}}))
    assert "an evaluation stopped after 2 of 100 tracks" in home(fresh_root).success[0].value

    stored.write_text(json.dumps({**report, "params_sha256": "0" * 64}))  # evolution replaced C since
    at = home(fresh_root)
    assert "scored" not in at.success[0].value and "earlier controller" in at.success[0].value
    evolve = open_page(at, "4_Evolve.py")
    evolve.selectbox(key="evolve.model_dir").set_value("models").run()
    assert any("512.0 ± 10.0" in m.value and "earlier controller" in m.value for m in evolve.markdown)


def test_a_finished_training_run_says_how_to_train_more(fresh_root, tiny_world_model):
    """V in runs/ finished its one epoch: the page says so and how to go on, but leaves the button on (new
    data or another batch size would give it more batches to train); more epochs go on from it."""
    import shutil
    shutil.copytree(tiny_world_model / "vae" / "checkpoint", fresh_root / "runs" / "vae" / "checkpoint")
    at = open_page(home(fresh_root), "2_Train_VAE.py")
    at.number_input(key="vae.epochs").set_value(1).run()
    assert any("already trained" in m.value and "Epochs" in m.value and "Run dir" in m.value for m in at.info)
    assert not at.button(key="start.train-vae").disabled
    at.number_input(key="vae.epochs").set_value(2).run()
    assert not at.info
    start = at.button(key="start.train-vae")
    assert start.label == "Resume training" and not start.disabled


def test_a_checkpoint_left_mid_swap_by_a_crash_still_offers_to_resume(fresh_root, tiny_world_model):
    import shutil
    shutil.copytree(tiny_world_model / "vae" / "checkpoint", fresh_root / "runs" / "vae" / "checkpoint.tmp")
    at = open_page(home(fresh_root), "2_Train_VAE.py")
    at.number_input(key="vae.epochs").set_value(2).run()
    assert at.button(key="start.train-vae").label == "Resume training"


def test_collect_counts_the_tracks_it_would_drive(fresh_root):
    """data/rollouts holds the tracks 0 and 1: asking for 2 episodes from seed 0 is done, from seed 2 is not."""
    at = open_page(home(fresh_root), "1_Collect.py")
    at.number_input(key="collect.episodes").set_value(2).run()
    assert any("already holds 2 episodes" in m.value for m in at.info) and at.button(key="start.collect").disabled
    at.number_input(key="collect.seed").set_value(2).run()
    assert not at.info and not at.button(key="start.collect").disabled
    assert at.button(key="start.collect").label.startswith("Start")
    at.number_input(key="collect.seed").set_value(1).run()  # track 1 is there, track 2 is not
    assert not at.info and at.button(key="start.collect").label.startswith("Resume")


def test_the_forms_refuse_the_shipped_model_folder(app):
    for page, prefix, stage, field in (("2_Train_VAE.py", "vae", "train-vae", "run_dir"),
                                       ("3_Train_RNN.py", "rnn", "train-rnn", "run_dir"),
                                       ("4_Evolve.py", "evolve", "evolve", "run_dir"),
                                       ("1_Collect.py", "collect", "collect", "out_dir")):
        at = open_page(app, page)
        at.text_input(key=f"{prefix}.{field}").set_value("./models").run()
        assert any("shipped world model" in e.value for e in at.error), page
        assert at.button(key=f"start.{stage}").disabled, page
        at.text_input(key=f"{prefix}.{field}").set_value("runs" if field == "run_dir" else "data/rollouts").run()
        assert not at.error and not at.button(key=f"start.{stage}").disabled, page


def test_rnn_predictions_do_not_reread_the_episode_each_refresh(app, monkeypatch):
    """The view refreshes every second while M trains; the episode's step count is read once per file."""
    import core.storage.dataset
    at = open_page(app, "3_Train_RNN.py")
    loads = []
    real_load = core.storage.dataset.load_episode

    def load_episode(path, *args, **kwargs):
        loads.append(path)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(core.storage.dataset, "load_episode", load_episode)
    at.run()
    assert not at.exception and any("M's prediction" in c for img in at.get("image") for c in img.captions)
    assert loads == []


def test_rnn_predictions_follow_an_episode_collected_again_under_the_same_name(fresh_root, monkeypatch):
    import os

    import core.storage.dataset
    at = open_page(home(fresh_root), "3_Train_RNN.py")
    episode = sorted((fresh_root / "data" / "rollouts").glob("ep_*.npz"))[0]
    with np.load(episode) as f:
        other = {k: (255 - f[k]) if k == "obs" else f[k] for k in f.files}
    np.savez(episode, **other)
    later = os.stat(episode).st_mtime + 5
    os.utime(episode, (later, later))
    loads = []
    real_load = core.storage.dataset.load_episode
    monkeypatch.setattr(core.storage.dataset, "load_episode", lambda path, *a, **k: loads.append(path) or real_load(path, *a, **k))
    at.run()
    assert not at.exception and any("M's prediction" in c for img in at.get("image") for c in img.captions)
    assert loads.count(str(episode)) >= 2, "the old episode's predictions were shown"  # its steps, its predictions


def test_a_dream_goes_on_when_the_controller_changes_and_dreams_without_one_that_does_not_fit(fresh_root):
    """An evolution rewrites params.npz every generation: the dream keeps its V and M (no reload, no restart)
    and the controller drives as evolved by now; a controller that does not fit leaves V and M dreaming."""
    import os
    at = open_page(home(fresh_root), "5_Dream.py")
    at.button(key="dream.key.gas").click().run()
    dream, weights = at.session_state["dream"], at.session_state["dream"].model.w
    params_file = fresh_root / "models" / "controller" / "params.npz"
    with np.load(params_file) as f:
        saved = dict(f)

    def rewrite(params):
        np.savez(params_file, **{**saved, "params": params})
        later = os.stat(params_file).st_mtime + 5
        os.utime(params_file, (later, later))
    rewrite(saved["params"] + 1.0)
    at.run()
    assert not at.exception and at.session_state["dream"] is dream and dream.model.w is weights
    np.testing.assert_allclose(dream.model.controller.get_params(), saved["params"] + 1.0)
    rewrite(saved["params"][:-1])  # parameters for another z or h
    at.run()
    assert not at.exception and at.session_state["dream"] is dream and dream.model.controller is None
    assert any("cannot drive these V and M" in w.value for w in at.warning)
    at.button(key="dream.new").click().run()  # you still steer: V and M dream on
    assert not at.exception and at.session_state["dream"].t == 0 and labels(at.button)[:2] == ["New dream", "Left"]


def test_the_evolve_form_offers_the_settings_a_resumable_evolution_last_ran_with(fresh_root):
    import json

    from core.pipeline.evolve import saved_settings
    saved = saved_settings(fresh_root / "runs")
    assert saved, "the tiny model's evolution can be resumed"
    at = open_page(home(fresh_root), "4_Evolve.py")
    info = next(i.value for i in at.info if "last ran with other settings" in i.value)
    assert f"Popsize {saved['popsize']}" in info and f"Max steps {saved['max_steps']}" in info
    assert "Popsize must stay as saved to resume it" in info  # refused otherwise, not changed
    assert "Generations" not in info  # the form's to raise
    at.button(key="evolve.use_saved").click().run()
    assert not at.exception and not any("last ran with other settings" in i.value for i in at.info)
    assert at.number_input(key="evolve.popsize").value == saved["popsize"]
    assert at.number_input(key="evolve.max_steps").value == saved["max_steps"]
    config = json.loads((fresh_root / "runs" / "controller" / "config.json").read_text())
    config["rollouts"] = "four"  # a damaged saved config is named, and the form still works
    (fresh_root / "runs" / "controller" / "config.json").write_text(json.dumps(config))
    at.run()
    assert not at.exception and any("rollouts is 'four'" in e.value for e in at.error)


def test_dream_caption_gives_the_rate_the_animation_plays_at(app):
    at = open_page(app, "5_Dream.py")
    assert "25 frames a second" in at.get("image")[0].captions[0]
    at.selectbox(key="dream.fps").set_value(50).run()
    assert "25 frames a second" in at.get("image")[0].captions[0]  # the GIF shown is still the one at 25
    at.button(key="dream.key.gas").click().run()
    if at.session_state["dream"].t:  # the tiny M may predict the end at once; then nothing new was played
        assert "50 frames a second" in at.get("image")[0].captions[0]


def test_world_models_in_other_run_folders_can_be_picked(fresh_root):
    """runs2/ (docs/CLI.md's second evolution) and runs/mine/ hold world models: every page offers them."""
    import shutil

    from core.app import app_data, race
    for folder in ("runs2", "runs/mine"):
        for part in ("vae", "rnn", "controller"):
            shutil.copytree(fresh_root / "runs" / part, fresh_root / folder / part)
    (fresh_root / "runs3" / "vae").mkdir(parents=True)  # no weights: not a world model
    expected = ["models", "runs", "runs/mine", "runs2"]
    assert app_data.model_dirs() == expected and race.available_models() == expected
    at = home(fresh_root)
    dream = open_page(at, "5_Dream.py")
    assert dream.selectbox(key="dream.model_dir").options == expected
    evolve = open_page(at, "4_Evolve.py")
    assert evolve.selectbox(key="evolve.model_dir").options == ["runs", "models", "runs/mine", "runs2"]


def test_evolve_page_shows_second_tests_of_challengers(fresh_root):
    import json
    history = fresh_root / "runs" / "controller" / "history.jsonl"
    records = [json.loads(line) for line in history.read_text().splitlines()]
    last = records[-1]
    records += [{**last, "generation": last["generation"] + 1, "eval_mean_params": 3.0, "eval_best_candidate": 2.0,
                 "confirm_challenger": 4343.5, "confirm_shipped": 4141.5, "confirm_episodes": 24},
                {**last, "generation": last["generation"] + 2, "eval_mean_params": 5.0, "eval_best_candidate": 2.0,
                 "confirm_challenger": 1.0, "confirm_shipped": 4141.5, "confirm_episodes": 24},
                {**last, "generation": last["generation"] + 3, "eval_mean_params": 6.0, "eval_best_candidate": 2.0,
                 "eval_mean_average": 9.5, "confirm_challenger": 4150.0, "confirm_shipped": 4141.5, "confirm_lead": 8.5,
                 "confirm_needed": 20.0, "confirm_accepted": False, "confirm_episodes": 24}]  # a lead within noise
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
    at = open_page(home(fresh_root), "4_Evolve.py")
    assert "4343.5" in chart_specs(at) and "second test: shipped" in chart_specs(at)
    assert any("tested again with it on 24 other tracks, where it must lead by more than the noise of its lead: "
               "1 of 3 challengers won" in c.value for c in at.caption)
    assert any("The averaged mean against the mean on the same tracks: +3.5 on average over 1 evaluation, "
               "higher in 1." in c.value for c in at.caption)
    assert "evaluated: averaged mean" in chart_specs(at)


def test_home_and_dream_show_every_data_folder(fresh_root):
    """Controller-driven episodes go to a folder of their own (data/rollouts-controller): Home counts them
    with the default folder's, and Dream can start from a frame of either; folders without episodes are
    left out."""
    from core.app import app_data
    shutil.copytree(fresh_root / "data" / "rollouts", fresh_root / "data" / "rollouts-controller")
    (fresh_root / "data" / "empty").mkdir()
    assert app_data.data_folders_found() == ["data/rollouts", "data/rollouts-controller"]
    at = home(fresh_root)
    assert at.metric[0].value == "4"
    captions = " ".join(c.value for c in at.caption)
    assert "`data/rollouts`: 2 episodes" in captions and "`data/rollouts-controller`: 2 episodes" in captions
    dream = open_page(at, "5_Dream.py")
    episode = dream.selectbox(key="dream.episode")
    assert episode.options == [
        "rollouts/ep_0000000", "rollouts/ep_0000001", "rollouts-controller/ep_0000000", "rollouts-controller/ep_0000001"]
    episode.set_value(episode.options[3]).run()
    dream.button(key="dream.new").click().run()
    assert not dream.exception and "Dream step 0" in dream.get("image")[0].captions[0]


def test_an_evaluation_is_compared_track_by_track_with_the_shipped_model(fresh_root):
    """A run's evaluation that shares tracks with the shipped model's: the Evolve page gives the paired lead
    and its verdict, and plots the tracks one against the other."""
    import json

    from core.app import app_data
    seeds = list(range(1_000_000, 1_000_030))
    shipped = [500.0 + 10 * (i % 7) for i in range(30)]
    report = {"std": 1.0, "min": 0.0, "max": 1.0, "episodes": 30, "env": "stock", "max_steps": 1000,
              "date": "2026-01-01T00:00:00Z", "seeds": seeds}
    (fresh_root / "models" / "controller" / "evaluation.json").write_text(json.dumps(
        {**report, "mean": 530.0, "returns": shipped, "params_sha256": app_data.controller_sha256("models")}))
    mine = [r + 40 + (i % 3) for i, r in enumerate(shipped)]  # 40-42 better on every track
    (fresh_root / "runs" / "controller" / "evaluation.json").write_text(json.dumps(
        {**report, "mean": 571.0, "returns": mine, "params_sha256": app_data.controller_sha256("runs")}))
    at = open_page(home(fresh_root), "4_Evolve.py")  # runs/ is the world model picked by default
    text = " ".join(m.value for m in at.markdown)
    assert "Against the shipped model on the 30 tracks both drove: **+41.0 ± 0.2**" in text
    assert "30 tracks won, 0 lost: **better than the shipped model**" in text
    assert "Track by track" in chart_specs(at)
    # A report of a controller evolution has replaced since is not set against the shipped model.
    (fresh_root / "runs" / "controller" / "evaluation.json").write_text(json.dumps(
        {**report, "mean": 571.0, "returns": mine, "params_sha256": "0" * 64}))
    at.run()
    assert any("earlier controller" in m.value for m in at.markdown)
    assert not any("Against the shipped model" in m.value for m in at.markdown)
    # The shipped model's own evaluation is not compared with itself.
    at.selectbox(key="evolve.model_dir").set_value("models").run()
    assert not any("Against the shipped model" in m.value for m in at.markdown)


def test_a_file_that_is_not_an_evaluation_report_shows_no_score_and_breaks_no_page(fresh_root):
    """evaluation.json written by something else (here: compare's output, which has seeds but no returns,
    and a bare summary): the pages show no score instead of failing on a missing key."""
    import json

    from core.app import app_data
    foreign = [{"tracks": 2, "seeds": [1_000_000, 1_000_001], "baseline_returns": [1.0, 2.0], "lead": 3.0},
               {"mean": 900.0}, ["not", "a", "dict"]]
    for data in foreign:
        for folder in ("models", "runs"):
            (fresh_root / folder / "controller" / "evaluation.json").write_text(json.dumps(data))
        assert app_data.evaluation("runs") is None and app_data.published_evaluation() is None
        start = home(fresh_root)
        at = open_page(start, "4_Evolve.py")
        assert not at.exception, [e.message for e in at.exception]
        assert not any("900.0" in m.value for m in (*start.markdown, *at.markdown))
    mean_report = fresh_root / "mean.evaluation.json"  # evaluate --params's report, damaged
    mean_report.write_text(json.dumps({"params_source": {"file": "latest.npz"}, "mean": 900.0}))
    assert app_data.params_evaluation(mean_report) is None
    mean_report.write_text(json.dumps({"params_source": {"file": "latest.npz"}, "seeds": [1_000_000],
                                       "returns": [900.0]}))  # no env, no summary: recomputed, shown
    assert app_data.params_evaluation(mean_report)["mean"] == 900.0


def test_how_the_episodes_ended_is_tabled_on_the_evolve_and_home_pages(fresh_root):
    """A report with endings (every report of evaluate since they are kept) shows them under its histogram, on
    the Evolve page for its folder and on Home for the shipped model, counted from its per-track lists; an
    older report without them shows none, whatever table it claims."""
    import json

    from core.app import app_data
    seeds = [1_000_000, 1_000_001, 1_000_002]
    report = {"mean": 800.0, "std": 1.0, "min": 700.0, "max": 910.0, "episodes": 3, "env": "stock",
              "max_steps": 1000, "date": "2026-01-01T00:00:00Z", "seeds": seeds, "returns": [910.0, 790.0, 700.0],
              "ended": ["lap finished", "out of steps", "out of steps"], "skipped": [0, 2, 3],
              "endings": [{"ended": "a stale table", "episodes": 9}]}
    for folder in ("models", "runs"):
        (fresh_root / folder / "controller" / "evaluation.json").write_text(json.dumps(
            {**report, "params_sha256": app_data.controller_sha256(folder)}))
    start = home(fresh_root)
    # Home: the shipped model's; Evolve: the published report's (models/) and the user's (runs/).
    for page, tables in ((None, 1), ("4_Evolve.py", 2)):
        at = open_page(start, page) if page else start
        assert not at.exception and len(at.dataframe) == tables
        for table in at.dataframe:
            table = table.value
            assert list(table.columns) == ["how it ended", "episodes", "mean return", "tiles skipped"]
            assert list(table["how it ended"]) == ["lap finished", "out of steps"]
            assert list(table["episodes"]) == [1, 2] and list(table["tiles skipped"]) == [0.0, 2.5]
        assert any("*out of steps*: at the step limit, still on its way round" in c.value for c in at.caption)
    (fresh_root / "runs" / "controller" / "evaluation.json").write_text(json.dumps(
        {k: v for k, v in {**report, "params_sha256": app_data.controller_sha256("runs")}.items()
         if k not in ("ended", "skipped")}))
    at = open_page(home(fresh_root), "4_Evolve.py")
    assert not at.exception and len(at.dataframe) == 1  # the published report's only


def test_the_cma_mean_is_copied_once_per_generation_and_mean(fresh_root):
    """``copy_cma_mean`` freezes what latest.npz holds into the folder's outputs: the same mean is copied
    once, a new one gets its own file, and a folder without latest.npz is explained."""
    from core.app import app_data
    from core.storage.artifacts import ArtifactError
    latest = fresh_root / "runs" / "controller" / "latest.npz"
    with np.load(latest) as f:
        generation = int(f["generation"])
    assert app_data.cma_mean("runs")["generation"] == generation
    copy = app_data.copy_cma_mean("runs")
    assert copy.parent == app_data.outputs_dir("runs") and copy.name.startswith(f"mean-gen{generation}-")
    with np.load(latest) as f, np.load(copy) as c:
        assert np.array_equal(c["mean"], f["mean"]) and int(c["generation"]) == generation
    assert app_data.snapshot_kind(str(copy)) == "mean" and app_data.snapshot_kind("runs/params.npz") is None
    stamp = copy.stat().st_mtime_ns
    assert app_data.copy_cma_mean("runs") == copy and copy.stat().st_mtime_ns == stamp
    with np.load(latest) as f:
        arrays = dict(f)
    np.savez(latest, **{**arrays, "mean": arrays["mean"] + 1})  # the next generation, same number
    second = app_data.copy_cma_mean("runs")
    assert second != copy and copy.exists()
    latest.unlink()
    assert app_data.cma_mean("runs") is None
    with pytest.raises(ArtifactError, match="first generation"):
        app_data.copy_cma_mean("runs")


@pytest.mark.parametrize("which, name", [("mean", "the CMA-ES mean"), ("average", "the averaged mean")])
def test_the_evolve_page_evaluates_the_cma_mean_and_says_how_to_ship_it(fresh_root, which, name):
    """Pick the CMA-ES mean (or the averaged mean), evaluate it: the report of a frozen copy is shown, with
    the export command, and that command ships exactly the controller that was driven."""
    import shlex

    from core.cli import main
    from core.models.controller import load_controller, params_sha256
    assert (fresh_root / "models" / "controller" / "latest.npz").exists()  # the test's models/ has a mean too
    at = open_page(home(fresh_root), "4_Evolve.py")
    assert at.radio(key="evaluate.controller").options == [
        "the kept controller (controller/params.npz)", "the CMA-ES mean of generation 1 (controller/latest.npz)",
        "the averaged mean of generation 1 (controller/latest.npz)"]
    at.radio(key="evaluate.controller").set_value(which).run()
    for setting, value in {"episodes": 2, "max_steps": 15, "workers": 1}.items():
        at.number_input(key=f"evaluate.{setting}").set_value(value)
    at.selectbox(key="evaluate.env").set_value(TEST_ENV)
    at.button(key="start.evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("finished" in s.value for s in at.success):
        time.sleep(0.5)
        at.run()
    text = " ".join(m.value for m in at.markdown)
    assert f"{name} of generation 1 in `runs/`, 2 episodes" in text, text
    commands = [c.value for c in at.code if "core export" in c.value]
    assert len(commands) == 1 and f"--params {fresh_root}/runs/controller/{which}-gen1-" in commands[0], commands
    # The command as printed (the app root here is not the project folder: its paths are in full, and it
    # names the app's models/) ships exactly the mean that was driven.
    args = shlex.split(commands[0])
    assert args[:3] == ["python", "-m", "core"] and main([*args[3:], "--quiet"]) == 0
    with np.load(fresh_root / "runs" / "controller" / "latest.npz") as f:
        driven = f[which]
    assert params_sha256(load_controller(fresh_root / "models" / "controller").get_params()) == params_sha256(driven)
    # Back on the kept controller, its own report is shown, with no command to ship the mean.
    at.radio(key="evaluate.controller").set_value("kept").run()
    assert not at.exception
    assert not any("core export" in c.value for c in at.code)
    assert not any(f"{name} of generation" in m.value for m in at.markdown)
    # The shipped model is never exported over itself: its folder offers no mean.
    at.selectbox(key="evolve.model_dir").set_value("models").run()
    assert not at.exception and not at.get("radio")


def test_the_export_command_is_written_for_the_project_folder(monkeypatch, tmp_path):
    from core.app import app_data
    monkeypatch.delenv(ROOT_ENV, raising=False)  # the app's root is the project folder
    mean, report = "runs/controller/mean-gen3-ab.npz", "runs/controller/mean-gen3-ab.evaluation.json"
    assert app_data.export_command("runs", mean, report) == (
        "python -m core export --run-dir runs --params runs/controller/mean-gen3-ab.npz "
        "--evaluation runs/controller/mean-gen3-ab.evaluation.json")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "my root"))  # elsewhere: full paths, quoted, and its models/
    assert app_data.export_command("runs", "runs/m.npz", "runs/m.json") == (
        f"python -m core export --run-dir '{tmp_path}/my root/runs' --params '{tmp_path}/my root/runs/m.npz' "
        f"--evaluation '{tmp_path}/my root/runs/m.json' --out-dir '{tmp_path}/my root/models'")


def test_the_time_left_is_paced_by_the_current_phase():
    """M encodes its episodes (counted in episodes), then trains (counted in batches): the time left of the
    training must not be paced by the encoding, nor the other way round."""
    from pages import _ui
    encoding = [{"step": i, "total": 10, "time": float(i), "phase": "encoding", "encoded": i, "of": 10}
                for i in range(1, 7)]
    assert _ui._eta({"history": encoding, "step": 6, "total": 10}) == " · about 4 s left"
    training = [{"step": s, "total": 1000, "time": 10 + s / 100, "mdn": 1.0} for s in range(100, 600, 100)]
    assert _ui._eta({"history": encoding + training, "step": 500, "total": 1000}) == " · about 5 s left"


def test_a_data_folder_counts_its_files_not_its_manifest(tmp_path, tiny_data):
    """Episodes written after the manifest's last update count; listed files since deleted do not."""
    import shutil

    from core.app import app_data
    data = tmp_path / "rollouts"
    shutil.copytree(tiny_data, data)
    listed = app_data.data_summary(data)
    assert listed["episodes"] == 2 and listed["unlisted"] == 0 and len(listed["returns"]) == 2
    shutil.copy(data / "ep_0000000.npz", data / "ep_0000007.npz")  # collected, manifest not yet updated
    (data / "ep_0000001.npz").unlink()  # deleted by hand
    summary = app_data.data_summary(data)
    assert summary["episodes"] == 2 and summary["unlisted"] == 1
    assert [e["file"] for e in summary["entries"]] == ["ep_0000000.npz"] and len(summary["returns"]) == 1


# --- a new user: the shipped model and nothing else (no runs/, no collected episodes) -------------------------


@pytest.fixture
def shipped_only(tmp_path, tiny_world_model, monkeypatch):
    """An app root holding the (tiny) shipped model alone, as a fresh clone does."""
    root = make_app_root(tmp_path / "root", None, tiny_world_model, folders=("models",))
    monkeypatch.setenv(ROOT_ENV, str(root))
    return root


def test_the_pages_pick_the_run_folder_once_it_holds_a_part_else_the_shipped_model(shipped_only, tiny_data):
    from core.app import app_data
    shown = app_data.shown_folders("runs", "data/rollouts", "vae")
    assert shown == app_data.Shown(run_dir="runs", model_dir="models", data_dir=str(app_data.SAMPLE_DATA_DIR),
                                   shipped=True, sample=True)
    assert app_data.shown_folders("models", "data/rollouts", "vae").shipped  # the shipped model asked for
    assert app_data.shown_folders("runs", "data/rollouts", "rnn", writing=["runs/rnn"]).model_dir == "runs"
    (shipped_only / "runs" / "controller").mkdir(parents=True)
    (shipped_only / "runs" / "controller" / "history.jsonl").write_text('{"generation": 1, "best": 1.0}\n')
    assert app_data.shown_folders("runs", "data/rollouts", "controller").model_dir == "runs"  # a run under way
    assert app_data.shown_folders("runs", "data/rollouts", "vae").model_dir == "models"
    shutil.copytree(tiny_data, shipped_only / "data" / "rollouts")
    collected = app_data.shown_folders("runs", "data/rollouts", "vae")
    assert collected.data_dir == "data/rollouts" and not collected.sample
    shutil.rmtree(shipped_only / "models" / "rnn")  # neither has M: the run folder's (empty) view
    assert app_data.shown_folders("runs", "data/rollouts", "rnn") == app_data.Shown(
        run_dir="runs", model_dir="runs", data_dir="data/rollouts", shipped=False, sample=False)
    # The sample frames: 8 frames of 8 tracks, and one episode long enough for M's 8 predictions.
    frames = app_data.sample_frames(app_data.SAMPLE_DATA_DIR, count=8, seed=1)
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3) and len({f.tobytes() for f in frames}) == 8
    (episode,) = app_data.episode_files(app_data.SAMPLE_DATA_DIR)
    assert load_episode(episode).steps > 8


def test_the_training_pages_show_the_shipped_model_read_only_without_runs_or_data(shipped_only):
    at = home(shipped_only)
    vae = open_page(at, "2_Train_VAE.py")
    assert "The shipped model, read-only" in vae.info[0].value and "`runs/` has no V" in vae.info[0].value
    assert "samples shipped with the app" in vae.info[0].value
    assert "Reconstruction loss" in chart_specs(vae) and "KL divergence" in chart_specs(vae)
    captions = [c for img in vae.get("image") for c in img.captions]
    assert any("sample frames of 8 tracks" in c and "`models/vae`" in c for c in captions), captions
    assert any("decoded with your z" in c for c in captions)  # the latent explorer, on the shipped V
    assert not any("No VAE" in c.value for c in vae.caption)
    assert "Train your own" in [h.value for h in vae.subheader]
    assert not vae.button(key="start.train-vae").disabled

    rnn = open_page(at, "3_Train_RNN.py")
    assert "The shipped model, read-only" in rnn.info[0].value
    assert "MDN loss" in chart_specs(rnn)
    captions = [c for img in rnn.get("image") for c in img.captions]
    assert any("M's prediction (V and M of `models/`, the shipped model, read-only, on the sample episode" in c
               for c in captions), captions

    evolve = open_page(at, "4_Evolve.py")
    assert "The shipped model, read-only" in evolve.info[0].value
    assert "Fitness per generation" in chart_specs(evolve)
    assert evolve.selectbox(key="evolve.model_dir").options == ["models"]
    assert not evolve.button(key="start.evolve").disabled


def test_the_published_score_stands_beside_the_users_own_evaluation(fresh_root):
    """A 2-episode evaluation of the shipped model (written, as the app writes it, into runs/shipped-model/) is
    shown beside the 100-episode published score, each with its episodes and tracks; neither Home nor the
    published figure on the Evolve page change."""
    import json

    from core.app import app_data
    sha = app_data.controller_sha256("models")
    seeds = list(range(1_000_000, 1_000_100))
    published = {"returns": [859.6] * 99 + [900.0], "seeds": seeds, "env": "stock", "max_steps": 1000,
                 "date": "2026-01-01T00:00:00Z", "params_sha256": sha}
    (fresh_root / "models" / "controller" / "evaluation.json").write_text(json.dumps(published))
    mine = app_data.outputs_dir("models") / "evaluation.json"
    mine.parent.mkdir(parents=True)
    mine.write_text(json.dumps({"returns": [606.5, 876.7], "seeds": seeds[:2], "env": "fast", "max_steps": 1000,
                                "date": "2026-02-01T00:00:00Z", "params_sha256": sha}))
    at = home(fresh_root)
    assert "860 ± 4" in at.success[0].value and "100 evaluation tracks" in at.success[0].value
    evolve = open_page(at, "4_Evolve.py")
    evolve.selectbox(key="evolve.model_dir").set_value("models").run()
    text = [m.value for m in evolve.markdown]
    (shown,) = [m for m in text if m.startswith("**Published score**")]
    assert "100 episodes, stock env, tracks 1000000–1000099" in shown and "**860.0 ± 4.0**" in shown
    (own,) = [m for m in text if m.startswith("**Your evaluation**")]
    assert "2 episodes, fast env, tracks 1000000–1000001" in own and "**741.6 ± 135.1**" in own
    assert "`runs/shipped-model/evaluation.json`" in own
    assert "Returns on the evaluation tracks" in chart_specs(evolve) and len(evolve.get("plotly_chart")) >= 2
    mine.unlink()
    evolve.run()
    (own,) = [m.value for m in evolve.markdown if m.value.startswith("**Your evaluation**")]
    assert "none of `models/` yet" in own and "`runs/shipped-model/evaluation.json`" in own


def test_home_calls_the_shipped_controller_shipped(fresh_root):
    """The shipped controller's evolution stopped before its configured generations (it was exported by
    choice): Home says it is the shipped one, not "not finished"; a run folder in the same state is."""
    import json
    for folder in ("models", "runs"):
        meta = fresh_root / folder / "controller" / "meta.json"
        data = json.loads(meta.read_text())
        data["metrics"]["complete"] = False
        meta.write_text(json.dumps(data))
    text = " ".join(m.value for m in home(fresh_root).markdown)
    assert text.count("`models/` · shipped") == 3 and "`models/` · not finished" not in text
    assert "`runs/` · not finished" in text
