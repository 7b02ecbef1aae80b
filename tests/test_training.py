"""Training V and M: the loop they share (on a tiny model), resuming (learning rate, metrics, checkpoints a crash
interrupted), progress, frame counts, several data folders, fine-tuning from trained weights."""

import json
import os
import shutil

import numpy as np
import pytest

from core.config import RNNConfig, VAEConfig
from core.models.mdnrnn import load_rnn
from core.models.vae import WEIGHTS as VAE_WEIGHTS
from core.models.vae import ConvVAE, load_vae
from core.pipeline import training
from core.pipeline.train_rnn import train_rnn
from core.pipeline.train_vae import train_vae
from core.storage.artifacts import ArtifactError, read_history
from core.storage.checkpoints import (
    CHECKPOINT,
    CHECKPOINT_OLD,
    CHECKPOINT_TMP,
    load_checkpoint,
    save_checkpoint,
    training_seconds,
)
from core.storage.dataset import NoDataError, count_frames, data_folders, iter_frames, list_episodes

LINE_WEIGHTS = "line.weights.h5"


def line_model():
    """y = w . x + b fitted by squared error: a Keras model with its own ``train_step`` and ``Mean`` tracker,
    the smallest the shared loop can train (in seconds)."""
    import keras
    import tensorflow as tf

    class Line(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(1)
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.build((None, 2))

        def build(self, input_shape):
            self.dense.build(input_shape)
            self.built = True

        @property
        def metrics(self):
            return [self.loss_tracker]

        def call(self, x):
            return self.dense(x)[:, 0]

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(x) - y))
            self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
            self.loss_tracker.update_state(loss)
            return {"loss": self.loss_tracker.result()}

    keras.utils.set_random_seed(0)
    model = Line()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    return model


def line_data(seed: int, n: int = 8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    return x, (x @ np.array([2.0, -1.0]) + 0.5 + 0.1 * rng.normal(size=n)).astype(np.float32)


def line_plan(out_dir, **changes) -> training.TrainingPlan:
    """Three epochs of four batches, each batch drawn from its step alone (as M's are)."""
    held_x, held_y = line_data(seed=10_000, n=32)

    def batches(step, count):
        for s in range(step, step + count):
            yield line_data(seed=s)

    def heldout_metrics(model):
        return {"val_loss": float(np.mean((model(held_x).numpy() - held_y) ** 2))}

    return training.TrainingPlan(**{
        "kind": "line", "weights": LINE_WEIGHTS, "out_dir": out_dir, "model": line_model(),
        "config": {"seed": 0, "init_from": ""}, "seed": 0, "epochs": 3, "batches_per_epoch": 4,
        "checkpoint_every": 2, "batches": batches, "heldout_metrics": heldout_metrics, "state": {"heldout": ["h"]},
        "data_hash": "lines", "summary": {"train_episodes": 1}, "log_every": 3, **changes})


def line_weights(out_dir):
    model = line_model()
    model.load_weights(out_dir / LINE_WEIGHTS)
    return model.get_weights()


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_run_resumed_from_its_checkpoint_ends_with_the_weights_of_one_never_stopped(how, tmp_path):
    """Stopped (a falsy report: checkpointed where it stopped) or killed (the last periodic checkpoint, every
    2 batches) at batch 7, in the middle of an epoch, then run again: it goes on from that checkpoint, weights and Adam's moments, and
    trains the batches an uninterrupted run trains, logging each batch once."""
    class Killed(Exception):
        pass

    whole = training.train(line_plan(tmp_path / "whole"))
    assert whole["complete"] and whole["step"] == whole["total_steps"] == 12 and whole["resumed_from"] == 0

    def interrupt(step, total, metrics):
        if step == 7 and how == "killed":
            raise Killed
        return step < 7

    if how == "killed":
        with pytest.raises(Killed):
            training.train(line_plan(tmp_path / "run"), interrupt)
    else:
        assert training.train(line_plan(tmp_path / "run"), interrupt)["step"] == 7
    checkpointed = 7 if how == "stopped" else 6
    assert json.loads((tmp_path / "run" / CHECKPOINT / "state.json").read_text()) == {
        "step": checkpointed, "total": 12, "lineage": [], "heldout": ["h"]}
    resumed = training.train(line_plan(tmp_path / "run"))
    assert resumed["complete"] and resumed["resumed_from"] == checkpointed and resumed["step"] == 12
    for a, b in zip(line_weights(tmp_path / "whole"), line_weights(tmp_path / "run")):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    steps = [r["step"] for r in read_history(tmp_path / "run" / "history.jsonl") if "loss" in r]
    assert steps == [r["step"] for r in read_history(tmp_path / "whole" / "history.jsonl") if "loss" in r]


def test_a_falsy_report_stops_the_loop_after_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    reports = []

    def stop_at_3(step, total, metrics):
        reports.append(step)
        return step < 3

    stopped = training.train(line_plan(out, checkpoint_every=100), stop_at_3)
    assert reports == [0, 1, 2, 3]  # asked once to stop, never called again
    assert not stopped["complete"] and stopped["step"] == 3 and stopped["total_steps"] == 12
    assert json.loads((out / CHECKPOINT / "state.json").read_text())["step"] == 3
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "line" and meta["metrics"] == stopped and meta["data_hash"] == "lines"
    assert stopped["train_episodes"] == 1 and "loss" in stopped and "val_loss" in stopped
    assert len(line_weights(out)) == 2  # the artifact's own weights, written with the checkpoint
    # Stopped before the first batch: nothing trained, the checkpoint stays where it was.
    again = training.train(line_plan(out), lambda step, total, metrics: False)
    assert again["step"] == again["resumed_from"] == 3 and again["loss"] == stopped["loss"]


@pytest.mark.parametrize("apart", [False, True])
def test_held_out_metrics_are_recorded_at_each_epochs_end(apart, tmp_path):
    """In the line of the epoch's last batch (M's history), or on lines of their own beside the training ones
    (V's); training lines every ``log_every`` batches either way."""
    out = tmp_path / "run"
    reports = {}
    result = training.train(line_plan(out, heldout_apart=apart, phase=None if apart else "training"),
                            lambda step, total, metrics: reports.setdefault(step, dict(metrics)) is not None)
    assert reports[0] == ({} if apart else {"phase": "training"})
    assert [s for s, m in reports.items() if "val_loss" in m] == [4, 8, 12]
    history = read_history(out / "history.jsonl")
    held = [r for r in history if "val_loss" in r]
    trained = [r for r in history if "loss" in r]
    assert [r["step"] for r in held] == [4, 8, 12]
    if apart:
        assert [r["step"] for r in trained] == [3, 6, 9, 12]
        assert all(sorted(r) == ["epoch", "step", "val_loss"] for r in held)
    else:
        assert [r["step"] for r in trained] == [3, 4, 6, 8, 9, 12]
        assert all(list(r) == ["step", "loss", "epoch", "val_loss", "time"] for r in held)
    assert [r["epoch"] for r in held] == [1.0, 2.0, 3.0]
    assert result["val_loss"] == held[-1]["val_loss"] < held[0]["val_loss"]  # it learns


def vae_config(data, run, **changes) -> VAEConfig:
    return VAEConfig(**{"data_dir": str(data), "run_dir": str(run), "z_size": 8, "epochs": 1, "batch_size": 32,
                        "holdout": 0.0, **changes})


def rnn_config(data, run, **changes) -> RNNConfig:
    return RNNConfig(**{"data_dir": str(data), "run_dir": str(run), "hidden": 16, "mixtures": 3, "seq_len": 10,
                        "batch_size": 4, "epochs": 1, "holdout": 0.0, **changes})


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A run folder with V and M trained one epoch each on ``tiny_data`` (with their checkpoints)."""
    run = tmp_path_factory.mktemp("trained")
    train_vae(vae_config(tiny_data, run))
    train_rnn(rnn_config(tiny_data, run))
    return run


def copy_run(trained, tmp_path, parts=("vae", "rnn")):
    run = tmp_path / "run"
    for part in parts:
        shutil.copytree(trained / part, run / part)
    return run


def saved_learning_rate(ckpt) -> float:
    """The learning rate in a checkpoint's optimizer state: its one float scalar (the other is the step count)."""
    with np.load(ckpt / "optimizer.npz") as f:
        rates = [float(f[k]) for k in f.files if f[k].shape == () and f[k].dtype.kind == "f"]
    assert len(rates) == 1
    return rates[0]


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_a_resumed_run_trains_at_the_new_learning_rate(stage, trained, tiny_data, tmp_path):
    run = copy_run(trained, tmp_path)
    ckpt = run / stage / CHECKPOINT
    old_rate = saved_learning_rate(ckpt)
    new_rate = old_rate / 4
    if stage == "vae":
        result = train_vae(vae_config(tiny_data, run, epochs=2, learning_rate=new_rate))
    else:
        result = train_rnn(rnn_config(tiny_data, run, epochs=2, learning_rate=new_rate))
    assert result["resumed_from"] > 0 and result["step"] > result["resumed_from"]
    assert saved_learning_rate(ckpt) == pytest.approx(new_rate, rel=1e-6)
    assert json.loads((run / stage / "meta.json").read_text())["config"]["learning_rate"] == new_rate


@pytest.mark.parametrize("stage, keys", [("vae", ("epoch", "loss", "r_loss", "kl")),
                                         ("rnn", ("epoch", "loss", "mdn", "reward", "done"))])
def test_running_a_finished_stage_again_keeps_its_training_metrics(stage, keys, trained, tiny_data, tmp_path):
    run = copy_run(trained, tmp_path)
    before = json.loads((run / stage / "meta.json").read_text())["metrics"]
    assert all(k in before for k in keys)
    again = train_vae(vae_config(tiny_data, run)) if stage == "vae" else train_rnn(rnn_config(tiny_data, run))
    assert again["complete"] and again["resumed_from"] == again["step"] == before["step"]
    after = json.loads((run / stage / "meta.json").read_text())["metrics"]
    assert {k: after.get(k) for k in keys} == {k: before[k] for k in keys}


def test_a_run_stopped_before_its_first_batch_keeps_the_previous_metrics(trained, tiny_data, tmp_path):
    run = copy_run(trained, tmp_path)
    before = json.loads((run / "vae" / "meta.json").read_text())["metrics"]
    stopped = train_vae(vae_config(tiny_data, run, epochs=3), on_progress=lambda step, total, metrics: False)
    assert not stopped["complete"] and stopped["step"] == before["step"]
    after = json.loads((run / "vae" / "meta.json").read_text())["metrics"]
    assert after["epoch"] == before["epoch"] and after["r_loss"] == before["r_loss"]


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_a_finished_stage_resumed_and_killed_is_not_left_labelled_finished(stage, trained, tiny_data, tmp_path):
    """Resumed for more epochs, the weights change at every checkpoint: until the session's own meta.json,
    the finished run's one must not call them complete (Home, export and the model card read it)."""
    run = copy_run(trained, tmp_path)
    meta_path = run / stage / "meta.json"
    before = json.loads(meta_path.read_text())["metrics"]
    assert before["complete"]

    class Killed(Exception):
        pass

    def killed_after_a_batch(step, total, metrics):
        if step > before["step"]:
            raise Killed
        return True

    train = train_vae if stage == "vae" else train_rnn
    config = (vae_config if stage == "vae" else rnn_config)(tiny_data, run, epochs=3)
    with pytest.raises(Killed):
        train(config, killed_after_a_batch)
    after = json.loads(meta_path.read_text())["metrics"]
    assert after["complete"] is False and after["step"] == before["step"]
    assert train(config)["complete"] and json.loads(meta_path.read_text())["metrics"]["complete"]


def test_metrics_of_another_step_are_not_reused(trained, tiny_data, tmp_path):
    """A longer run checkpointed past the finished one and was killed before its meta.json: a resume stopped
    at once does not label the checkpoint's weights with the finished run's losses."""
    run = copy_run(trained, tmp_path)
    state_path = run / "vae" / CHECKPOINT / "state.json"
    state = json.loads(state_path.read_text())
    _set_step(run / "vae" / CHECKPOINT, state["step"] + 1)  # the killed run's checkpoint, one batch further
    state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "total": 3 * state["total"]}))
    stopped = train_vae(vae_config(tiny_data, run, epochs=3), on_progress=lambda step, total, metrics: False)
    assert stopped["step"] == state["step"] + 1
    after = json.loads((run / "vae" / "meta.json").read_text())["metrics"]
    assert "r_loss" not in after and "epoch" not in after and after["step"] == state["step"] + 1


def _set_step(ckpt, step: int) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "step": step}))


def _crash_after_moving_the_old_one_away(vae_dir):
    """Killed between renaming checkpoint/ to checkpoint.old/ and checkpoint.tmp/ to checkpoint/."""
    (vae_dir / CHECKPOINT).rename(vae_dir / CHECKPOINT_OLD)
    shutil.copytree(vae_dir / CHECKPOINT_OLD, vae_dir / CHECKPOINT_TMP)
    _set_step(vae_dir / CHECKPOINT_TMP, 1000)
    return 1000


def _crash_while_writing_the_next_one(vae_dir):
    """Killed while checkpoint.tmp/ was being written: it has weights but no state.json yet."""
    shutil.copytree(vae_dir / CHECKPOINT, vae_dir / CHECKPOINT_TMP)
    (vae_dir / CHECKPOINT_TMP / "state.json").unlink()
    return None


def _crash_while_deleting_the_old_one(vae_dir):
    """Killed after the swap, while checkpoint.old/ was being deleted."""
    shutil.copytree(vae_dir / CHECKPOINT, vae_dir / CHECKPOINT_OLD)
    _set_step(vae_dir / CHECKPOINT_OLD, 1)
    return None


def _only_the_old_one_left(vae_dir):
    """checkpoint/ moved away and the next one never completed."""
    (vae_dir / CHECKPOINT).rename(vae_dir / CHECKPOINT_OLD)
    shutil.copytree(vae_dir / CHECKPOINT_OLD, vae_dir / CHECKPOINT_TMP)
    (vae_dir / CHECKPOINT_TMP / "state.json").unlink()
    return None


@pytest.mark.parametrize("crash", [_crash_after_moving_the_old_one_away, _crash_while_writing_the_next_one,
                                   _crash_while_deleting_the_old_one, _only_the_old_one_left])
def test_loading_recovers_a_checkpoint_swap_a_crash_interrupted(crash, trained, tmp_path):
    import keras
    vae_dir = copy_run(trained, tmp_path, parts=("vae",)) / "vae"
    saved_step = json.loads((vae_dir / CHECKPOINT / "state.json").read_text())["step"]
    expected = crash(vae_dir) or saved_step
    model = ConvVAE(8)
    state = load_checkpoint(vae_dir, model, keras.optimizers.Adam(1e-4), VAE_WEIGHTS)
    assert state is not None and state["step"] == expected
    assert not (vae_dir / CHECKPOINT_TMP).exists() and not (vae_dir / CHECKPOINT_OLD).exists()
    # The next checkpoint replaces the recovered one whole.
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    save_checkpoint(vae_dir, model, optimizer, {"step": expected + 1, "total": expected + 1}, VAE_WEIGHTS)
    assert json.loads((vae_dir / CHECKPOINT / "state.json").read_text())["step"] == expected + 1
    assert sorted(p.name for p in vae_dir.iterdir() if p.name.startswith("checkpoint")) == [CHECKPOINT]


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_a_resume_with_other_sizes_is_refused_before_the_episodes_are_read(stage, trained, tiny_data, tmp_path,
                                                                           monkeypatch):
    """Reading (and for M, encoding) every episode takes minutes on a real data set; a resume that cannot
    go on must say so first."""
    import core.pipeline.train_rnn
    import core.pipeline.train_vae

    def read_episodes(*args, **kwargs):
        raise AssertionError("the episodes were read before the settings were checked")

    monkeypatch.setattr(core.pipeline.train_vae if stage == "vae" else core.pipeline.train_rnn, "usable_episodes",
                        read_episodes)
    run = copy_run(trained, tmp_path)
    with pytest.raises(ArtifactError, match="other settings"):
        if stage == "vae":
            train_vae(vae_config(tiny_data, run, z_size=16))
        else:
            train_rnn(rnn_config(tiny_data, run, hidden=32))


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_episodes_collected_during_a_run_never_join_its_held_out_set(stage, trained, tiny_data, tmp_path):
    """Stopped, then resumed after more collecting: the held-out episodes stay those it began with (a new
    draw over the larger set would hold out episodes it has trained on)."""
    episodes = list_episodes(tiny_data)
    data = tmp_path / "data"
    data.mkdir()

    def add(first: int, count: int) -> None:
        for i in range(first, first + count):
            shutil.copy(episodes[i % len(episodes)], data / f"ep_{i:07d}.npz")

    add(0, 4)
    run = copy_run(trained, tmp_path, parts=("vae",) if stage == "rnn" else ())
    train = train_vae if stage == "vae" else train_rnn
    config = (vae_config if stage == "vae" else rnn_config)(data, run, holdout=0.25, epochs=1)
    first = train(config, on_progress=lambda step, total, metrics: metrics.get("phase") == "encoding" or step < 1)
    assert not first["complete"]
    state = json.loads((run / stage / CHECKPOINT / "state.json").read_text())
    assert len(state["heldout"]) == 1
    add(4, 8)  # 12 episodes now: a fresh draw would hold out 3
    resumed = train(config)
    assert resumed["complete"] and resumed["heldout_episodes"] == 1
    assert json.loads((run / stage / CHECKPOINT / "state.json").read_text())["heldout"] == state["heldout"]
    assert resumed["train_episodes"] == 11
    # The same folder named another way (a link, a relative path) is the same episodes.
    (tmp_path / "link").symlink_to(data)
    again = train((vae_config if stage == "vae" else rnn_config)(tmp_path / "link", run, holdout=0.25, epochs=2))
    assert again["heldout_episodes"] == 1
    assert json.loads((run / stage / CHECKPOINT / "state.json").read_text())["heldout"] == state["heldout"]


def test_an_mdn_rnn_resumed_on_a_changed_v_says_so(trained, tiny_data, tmp_path, caplog):
    """M learns V's codes: going on after V was trained further is allowed, but not silently."""
    run = copy_run(trained, tmp_path)
    encoded = []  # episodes encoded per run: the frames are encoded once per V and set of episodes

    def count(step, total, metrics):
        encoded[-1] += metrics.get("phase") == "encoding"
        return True

    for epochs in (2, 3):
        encoded.append(0)
        train_rnn(rnn_config(tiny_data, run, epochs=epochs), count)
        os.utime(run / "vae" / "vae.weights.h5")  # touched (or copied), not changed: the cache still holds
    assert encoded[1] == 0
    assert "V has changed" not in caplog.text
    train_vae(vae_config(tiny_data, run, epochs=2))
    encoded.append(0)
    with caplog.at_level("WARNING", logger="core.models.mdnrnn"):
        train_rnn(rnn_config(tiny_data, run, epochs=4), count)
    assert "V has changed since this MDN-RNN began training" in caplog.text
    assert encoded[2] == len(list_episodes(tiny_data))  # another V: encoded again


def test_train_rnn_reports_encoding_in_episodes(trained, tiny_data, tmp_path):
    run = copy_run(trained, tmp_path, parts=("vae",))
    reports = []

    def on_progress(step, total, metrics):
        reports.append((step, total, dict(metrics)))
        return True

    train_rnn(rnn_config(tiny_data, run), on_progress)
    episodes = len(list_episodes(tiny_data))
    encoding = [(s, t, m) for s, t, m in reports if m.get("phase") == "encoding"]
    assert [(s, t) for s, t, _ in encoding] == [(i, episodes) for i in range(1, episodes + 1)]
    assert all(m["encoded"] == s and m["of"] == t for s, t, m in encoding)
    training = reports[len(encoding):]
    assert training[0][0] == 0 and training[0][2] == {"phase": "training"}
    assert training[-1][0] == training[-1][1] > 0 and "mdn" in training[-1][2]


def test_a_stopped_encoding_goes_on_from_the_episodes_it_encoded(trained, tiny_data, tmp_path):
    """Encoding a large data set takes minutes: a stop keeps the episodes encoded so far."""
    run = copy_run(trained, tmp_path, parts=("vae",))
    episodes = len(list_episodes(tiny_data))
    assert episodes >= 2
    with pytest.raises(InterruptedError):
        train_rnn(rnn_config(tiny_data, run), lambda step, total, m: m.get("phase") != "encoding" or step < 1)
    parts = list((run / "rnn").glob("encoded-parts-*/*.npz"))
    assert len(parts) == 1  # the first episode, kept
    with np.load(parts[0]) as f:
        kept = {"mu": f["mu"] + 1000.0, "logvar": f["logvar"]}  # marked, to see that it is reused
    np.savez(parts[0], **kept)
    encoded = []

    def count(step, total, metrics):
        if metrics.get("phase") == "encoding":
            encoded.append(step)
        return True
    train_rnn(rnn_config(tiny_data, run), count)
    assert encoded == list(range(1, episodes + 1))  # every episode is still reported
    fresh = copy_run(trained, tmp_path / "fresh", parts=("vae",))
    train_rnn(rnn_config(tiny_data, fresh))
    from core.pipeline.train_rnn import load_encoded
    key = str(np.load(run / "rnn" / "encoded.npz")["key"])
    resumed, whole = load_encoded(run / "rnn" / "encoded.npz", key), load_encoded(fresh / "rnn" / "encoded.npz", key)
    first = int(resumed.frame_starts[1])
    np.testing.assert_allclose(resumed.mu[:first], whole.mu[:first] + 1000.0)  # the kept episode, not re-encoded
    np.testing.assert_array_equal(resumed.mu[first:], whole.mu[first:])  # the others, as a whole run encodes them
    np.testing.assert_array_equal(resumed.logvar, whole.logvar)
    assert not list((run / "rnn").glob("encoded-parts-*"))  # gone once the whole set is cached


@pytest.mark.parametrize("stride", [1, 2, 3, 50])
def test_count_frames_is_what_iter_frames_yields(stride, tiny_data):
    paths = list_episodes(tiny_data)
    expected = count_frames(paths, stride)
    for seed in range(6):  # each seed draws other offsets
        frames = sum(1 for _ in iter_frames(paths, np.random.default_rng(seed), stride, shuffle_buffer=16))
        assert frames == expected


def _split_data(tiny_data, tmp_path):
    """The two tiny episodes in two folders, one each."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, episode in zip((first, second), list_episodes(tiny_data)):
        folder.mkdir()
        shutil.copy(episode, folder / episode.name)
    return first, second


def test_training_reads_every_folder_named_with_commas(tiny_data, tmp_path):
    first, second = _split_data(tiny_data, tmp_path)
    both = train_vae(vae_config(f"{first}, {second}", tmp_path / "both"))
    one = train_vae(vae_config(first, tmp_path / "one"))
    assert (both["train_episodes"], one["train_episodes"]) == (2, 1)
    assert both["train_frames"] == count_frames(list_episodes(tiny_data))
    rnn = train_rnn(rnn_config(f"{first},{second}", tmp_path / "both"))
    assert rnn["train_episodes"] == 2


def test_a_missing_folder_among_several_is_named(tiny_data, tmp_path):
    with pytest.raises(NoDataError, match=r"nowhere: no such data folder.*--out-dir \S*nowhere"):
        train_vae(vae_config(f"{tiny_data},{tmp_path / 'nowhere'}", tmp_path / "run"))
    with pytest.raises(NoDataError, match="name a data folder"):
        data_folders(" , ")


def _weights(stage, folder):
    return (load_vae(folder) if stage == "vae" else load_rnn(folder)).get_weights()


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_a_new_run_can_start_from_trained_weights(stage, trained, tiny_data, tmp_path):
    """Fine-tuning: with --init-from a new run starts from those weights, not random ones (at a vanishing
    learning rate it ends where it started)."""
    fresh = copy_run(trained, tmp_path / "fresh", parts=("vae",) if stage == "rnn" else ())
    tuned = copy_run(trained, tmp_path / "tuned", parts=("vae",) if stage == "rnn" else ())
    train = train_vae if stage == "vae" else train_rnn
    make = vae_config if stage == "vae" else rnn_config
    train(make(tiny_data, fresh, learning_rate=1e-12, seed=1))  # another seed than ``trained``: other weights
    train(make(tiny_data, tuned, learning_rate=1e-12, seed=1, init_from=str(trained / stage)))
    start, ends = _weights(stage, trained / stage), _weights(stage, tuned / stage)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(start, ends))
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(start, _weights(stage, fresh / stage)))
    meta = json.loads((tuned / stage / "meta.json").read_text())
    assert meta["config"]["init_from"] == str(trained / stage)
    # What the start cost travels with the fine-tuned weights (and on to weights fine-tuned from them).
    start_meta = json.loads((trained / stage / "meta.json").read_text())
    [entry] = meta["lineage"]
    assert entry["init_from"] == str(trained / stage) and entry["steps"] == start_meta["metrics"]["step"]
    assert entry["train_seconds"] > 0 and entry["data_hash"] == start_meta["data_hash"]
    again = copy_run(trained, tmp_path / "again", parts=("vae",) if stage == "rnn" else ())
    train(make(tiny_data, again, learning_rate=1e-12, init_from=str(tuned / stage)))
    lineage = json.loads((again / stage / "meta.json").read_text())["lineage"]
    assert [e["init_from"] for e in lineage] == [str(trained / stage), str(tuned / stage)]


def test_starting_from_an_mdn_rnn_of_another_shape_says_which(trained, tiny_data, tmp_path):
    run = copy_run(trained, tmp_path, parts=("vae",))
    with pytest.raises(ArtifactError, match="that MDN-RNN has hidden = 16; give --hidden 16 to start from it"):
        train_rnn(rnn_config(tiny_data, run, hidden=32, init_from=str(trained / "rnn")))
    with pytest.raises(ArtifactError, match=r"no VAE weights \(vae.weights.h5\) there"):
        train_vae(vae_config(tiny_data, run / "other", init_from=str(tmp_path / "nothing")))


@pytest.mark.parametrize("stage", ["vae", "rnn"])
def test_weights_without_a_checkpoint_are_not_trained_over_from_scratch(stage, trained, tiny_data, tmp_path):
    """An exported model copied into a run folder: a new run there would replace its weights with randomly
    started ones, so it is refused unless it starts from them."""
    run = copy_run(trained, tmp_path)
    shutil.rmtree(run / stage / CHECKPOINT)
    train = train_vae if stage == "vae" else train_rnn
    make = vae_config if stage == "vae" else rnn_config
    before = (run / stage / f"{stage}.weights.h5").read_bytes()
    with pytest.raises(ArtifactError, match=f"no training checkpoint .*--init-from {run / stage}"):
        train(make(tiny_data, run))
    assert (run / stage / f"{stage}.weights.h5").read_bytes() == before
    start_meta = json.loads((run / stage / "meta.json").read_text())
    start_seconds = training_seconds(run / stage)

    # Fine-tuning them in place, killed before its first checkpoint (the history of the start is already
    # cut back by then): the run resumes with the start it recorded, what that start cost included.
    def killed(step, total, metrics):
        if step >= 1:
            raise KeyboardInterrupt
        return True

    with pytest.raises(KeyboardInterrupt):
        train(make(tiny_data, run, init_from=str(run / stage)), on_progress=killed)
    assert train(make(tiny_data, run, init_from=str(run / stage)))["complete"]
    [entry] = json.loads((run / stage / "meta.json").read_text())["lineage"]
    assert entry["steps"] == start_meta["metrics"]["step"] and entry["train_seconds"] == start_seconds > 0


def test_a_fine_tune_stopped_and_resumed_keeps_its_start(trained, tiny_data, tmp_path, caplog):
    """Resumed, a run started --init-from goes on from its checkpoint, keeps its lineage and records where it
    started, whatever --init-from says now (another start is ignored, with a warning)."""
    run = tmp_path / "run"
    start = str(trained / "vae")
    first = train_vae(vae_config(tiny_data, run, epochs=3, init_from=start),
                      on_progress=lambda step, total, metrics: step < 1)
    assert not first["complete"] and first["step"] == 1
    with caplog.at_level("WARNING"):
        done = train_vae(vae_config(tiny_data, run, epochs=3, init_from=str(tmp_path / "elsewhere")))
    assert done["complete"] and done["resumed_from"] == 1
    assert "--init-from" in caplog.text and "ignored" in caplog.text and f"started from {start}" in caplog.text
    meta = json.loads((run / "vae" / "meta.json").read_text())
    assert meta["config"]["init_from"] == start and [e["init_from"] for e in meta["lineage"]] == [start]
    assert json.loads((run / "vae" / "config.json").read_text())["init_from"] == start


def test_starting_from_weights_of_another_size_says_which_flag_fits(trained, tiny_data, tmp_path):
    with pytest.raises(ArtifactError, match="that VAE has z_size = 8; give --z-size 8 to start from it"):
        train_vae(vae_config(tiny_data, tmp_path / "run", z_size=16, init_from=str(trained / "vae")))
    assert not list((tmp_path / "run" / "vae").glob("*.json"))  # refused before anything was written


def test_an_mdn_rnn_refuses_a_v_rewritten_while_it_loads(trained, tiny_data, tmp_path, monkeypatch):
    """The V whose codes M learns is the one its checkpoint names: a V checkpointed by a training still going
    as M loads it would be recorded under the next V's hash."""
    import core.models.vae
    run = copy_run(trained, tmp_path, parts=("vae",))
    load = core.models.vae.load_vae

    def load_while_training(vae_dir, *args, **kwargs):
        model = load(vae_dir, *args, **kwargs)
        with open(run / "vae" / VAE_WEIGHTS, "ab") as f:  # the training's next checkpoint lands meanwhile
            f.write(b"\0")
        return model
    monkeypatch.setattr(core.models.vae, "load_vae", load_while_training)
    with pytest.raises(ArtifactError, match="changed while it was being loaded"):
        train_rnn(rnn_config(tiny_data, run))
    assert not list((run / "rnn").rglob("*.h5")) and not (run / "rnn" / "history.jsonl").exists()  # nothing trained
