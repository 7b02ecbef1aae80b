"""Artifacts: atomic writes, save -> load -> identical outputs, clear errors for wrong or corrupt files."""

import json
import os

import numpy as np
import pytest

from core.models.mdnrnn import load_rnn
from core.models.vae import load_vae, to_float
from core.storage.artifacts import ArtifactError, History, atomic_save_npz, atomic_write_json, read_meta
from core.storage.dataset import EpisodeError, NoDataError, list_episodes, load_episode, usable_episodes


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    """The disk fails after the new bytes went into the temporary file (a full disk, say)."""
    atomic_write_json(tmp_path / "a.json", {"x": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    from core.storage.artifacts import WriteError
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteError, match=r"a.json: not written, the disk is full \(No space"):
        atomic_write_json(tmp_path / "a.json", {"x": 2, "pad": "y" * 10_000})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_an_npz_that_fails_halfway_keeps_the_old_one(tmp_path):
    """np.savez has already written the first array when the second cannot be converted."""
    atomic_save_npz(tmp_path / "p.npz", params=np.arange(3.0))

    class Unconvertible:
        def __array__(self, *args, **kwargs):
            raise ValueError("not an array")

    with pytest.raises(ValueError, match="not an array"):
        atomic_save_npz(tmp_path / "p.npz", params=np.zeros(10_000), broken=Unconvertible())
    with np.load(tmp_path / "p.npz") as saved:
        assert list(saved) == ["params"] and saved["params"].tolist() == [0.0, 1.0, 2.0]
    assert os.listdir(tmp_path) == ["p.npz"]


def test_vae_and_rnn_save_load_give_identical_outputs(tiny_world_model, tiny_data, tmp_path):
    """Models changed in memory, saved atomically and loaded back give the in-memory models' outputs."""
    import shutil

    from core.models.mdnrnn import WEIGHTS as RNN_WEIGHTS
    from core.models.vae import WEIGHTS as VAE_WEIGHTS
    from core.storage.artifacts import atomic_save_keras
    shutil.copytree(tiny_world_model, tmp_path / "run")
    rng = np.random.default_rng(0)
    frames = to_float(load_episode(list_episodes(tiny_data)[0]).obs[:4])
    vae, rnn = load_vae(tmp_path / "run" / "vae"), load_rnn(tmp_path / "run" / "rnn")
    for model in (vae, rnn):  # weights that differ from the stored ones, so a save that writes nothing fails
        for w in model.weights:
            w.assign(np.asarray(w.numpy()) + rng.normal(0, 0.01, size=w.shape).astype(np.float32))
    atomic_save_keras(vae, tmp_path / "run" / "vae" / VAE_WEIGHTS)
    atomic_save_keras(rnn, tmp_path / "run" / "rnn" / RNN_WEIGHTS)
    vae2, rnn2 = load_vae(tmp_path / "run" / "vae"), load_rnn(tmp_path / "run" / "rnn")
    np.testing.assert_array_equal(vae.encode(frames)[0].numpy(), vae2.encode(frames)[0].numpy())
    z = vae.encode(frames)[0]
    np.testing.assert_array_equal(vae.decode(z).numpy(), vae2.decode(z).numpy())
    x = rng.normal(size=(2, 5, vae.z_size + 3)).astype(np.float32)
    for key in ("mu", "log_pi"):
        np.testing.assert_array_equal(rnn(x)[key].numpy(), rnn2(x)[key].numpy())
    original = load_vae(tiny_world_model / "vae")
    assert not np.array_equal(original.encode(frames)[0].numpy(), vae2.encode(frames)[0].numpy())


def test_meta_records_config_versions_and_metrics(tiny_world_model):
    meta = read_meta(tiny_world_model / "vae", "vae")
    assert meta["config"]["z_size"] == 8
    assert "keras" in meta["versions"] and meta["data_hash"]
    assert meta["metrics"]["complete"] is True
    with pytest.raises(ArtifactError, match="expected 'rnn'"):
        read_meta(tiny_world_model / "vae", "rnn")


def test_mismatched_z_is_explained(tiny_world_model):
    with pytest.raises(ArtifactError, match="z = 8 but 32 was expected"):
        load_vae(tiny_world_model / "vae", expect_z=32)
    with pytest.raises(ArtifactError, match="trained on z = 8 but the VAE has z = 32"):
        load_rnn(tiny_world_model / "rnn", expect_z=32)


def test_missing_model_says_how_to_make_it(tmp_path):
    with pytest.raises(ArtifactError, match="train-vae"):
        load_vae(tmp_path / "vae")


def test_corrupt_episode_is_skipped_or_stops(tiny_data, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    good = list_episodes(tiny_data)[0]
    (data / good.name).write_bytes(good.read_bytes())
    bad = data / "ep_0009999.npz"
    bad.write_bytes(good.read_bytes()[:5000])  # truncated mid-file
    with pytest.raises(EpisodeError, match="ep_0009999.npz"):
        load_episode(bad)
    assert usable_episodes(data, on_corrupt="skip") == [data / good.name]
    with pytest.raises(EpisodeError):
        usable_episodes(data, on_corrupt="stop")


def test_damage_anywhere_in_an_episode_file_is_an_episode_error(tiny_data, tmp_path):
    """Zeroed blocks through the file: inside the compressed frames the damage surfaces as zlib.error, at
    the ends as BadZipFile; the stages and pages skip or explain EpisodeError only."""
    raw = list_episodes(tiny_data)[0].read_bytes()
    bad = tmp_path / "ep_0000000.npz"
    errors = []
    for offset in range(100, len(raw) - 100, max(1, len(raw) // 40)):
        bad.write_bytes(raw[:offset] + bytes(256) + raw[offset + 256:])
        try:
            load_episode(bad)
        except EpisodeError as e:
            errors.append(str(e))
    assert any("decompressing" in e for e in errors)  # zlib.error's own words: the case this test is for
    assert len(errors) >= 30


def test_an_episode_of_the_wrong_shapes_is_an_episode_error(tiny_data, tmp_path):
    """Readable arrays of other shapes (a scalar action, several seeds) are explained, not a TypeError."""
    with np.load(list_episodes(tiny_data)[0]) as f:
        arrays = dict(f)
    for name, changed in (("action", np.float32(0.5)), ("seed", np.array([1, 2])), ("seed", np.array("x")),
                          ("seed", np.float64("nan"))):
        path = tmp_path / f"ep_{name}.npz"
        np.savez(path, **{**arrays, name: changed})
        with pytest.raises(EpisodeError, match="expected \\(T, 3\\) and one integer"):
            load_episode(path)


def test_no_data_says_how_to_collect(tmp_path):
    with pytest.raises(NoDataError, match="python -m core collect"):
        usable_episodes(tmp_path / "nothing")


def test_history_ignores_a_torn_last_line_and_truncates(tmp_path):
    h = History(tmp_path / "history.jsonl")
    for step in range(1, 6):
        h.append({"step": step})
    with open(h.path, "a") as f:
        f.write('{"step": 6, "lo')
    assert [r["step"] for r in h.read()] == [1, 2, 3, 4, 5]
    h.truncate_after("step", 3)
    assert [r["step"] for r in h.read()] == [1, 2, 3]


def test_run_lock_refuses_a_second_writer_and_frees_on_exit(tmp_path):
    from core.storage.artifacts import RunLock
    with RunLock(tmp_path, "evolve"):
        with pytest.raises(ArtifactError, match=r"another evolve run \(pid \d+\) is writing here"):
            with RunLock(tmp_path, "evolve"):
                pass
    with RunLock(tmp_path, "evolve"):  # released: a new run may start
        pass


def test_a_saved_config_is_checked_but_not_held_to_the_limits_of_new_runs(tmp_path):
    """The maxima keep a new run within reason; a model trained with more (before a bound was added) loads."""
    from core.config import ConfigError, VAEConfig, from_dict, to_dict
    from core.storage.artifacts import ArtifactError, checked_config
    saved = {**to_dict(VAEConfig()), "epochs": 10**6, "batch_size": 10**6, "a_newer_setting": 1}
    with pytest.raises(ConfigError, match="--epochs=1000000 is too large"):
        from_dict(VAEConfig, saved)
    assert checked_config(VAEConfig, saved, tmp_path / "config.json", "VAE config").epochs == 10**6
    with pytest.raises(ArtifactError, match="config.json: VAE config does not fit .*z-size=0 is too small"):
        checked_config(VAEConfig, {**saved, "z_size": 0}, tmp_path / "config.json", "VAE config")
