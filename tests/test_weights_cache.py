"""The agent's weights cache: V's and M's NumPy weights saved once per set of files, read without Keras."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.models.agent import Agent, extract_weights, load_world_model, load_world_model_weights
from core.models.mdnrnn import load_rnn
from core.models.vae import load_vae
from core.storage import weights_cache
from core.storage.artifacts import ArtifactError, atomic_save_npz
from tests.conftest import TEST_ENV

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tiny_world_model, tmp_path):
    """A copy of the tiny world model of this test's own."""
    run = tmp_path / "model"
    for part in ("vae", "rnn", "controller"):
        shutil.copytree(tiny_world_model / part, run / part, ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(folder))
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_keras(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loaded with Keras although the cache holds these weights")
    monkeypatch.setattr("core.models.vae.load_vae", refuse)


def test_weights_are_cached_then_read_without_keras(run, cache, monkeypatch, tmp_path):
    before = snapshot(run)
    vae = load_vae(run / "vae")
    expected = extract_weights(vae, load_rnn(run / "rnn", expect_z=vae.z_size))
    first = load_world_model_weights(run)
    key = weights_cache.fingerprint(run)
    assert [p.name for p in cache.iterdir()] == [weights_cache.entry_path(key).name]
    assert snapshot(run) == before  # the model folder is left alone
    _no_keras(monkeypatch)
    second = load_world_model_weights(run)
    assert sorted(second) == sorted(expected) == sorted(first)
    for k in expected:
        np.testing.assert_array_equal(second[k], expected[k])
        assert second[k].dtype == expected[k].dtype
    weights, params = load_world_model(run)  # the agent's loader goes through it too
    assert Agent(weights, params).act(np.zeros((96, 96, 3), np.uint8)).shape == (3,)
    shutil.copytree(run, tmp_path / "copy")  # the same files elsewhere: the same entry
    load_world_model_weights(tmp_path / "copy")
    assert len(list(cache.iterdir())) == 1


def test_changed_files_or_format_are_not_served_from_the_cache(run, cache, monkeypatch):
    """Retrained weights, other settings or metadata, or another artifact format: another fingerprint, so
    the weights are loaded with Keras (which checks the format) and cached anew."""
    load_world_model_weights(run)
    before = weights_cache.fingerprint(run)
    config = json.loads((run / "rnn" / "config.json").read_text())
    (run / "rnn" / "config.json").write_text(json.dumps(config, indent=4))  # same settings, other bytes
    changed = weights_cache.fingerprint(run)
    assert changed != before and weights_cache.read(changed) is None
    load_world_model_weights(run)
    assert len(list(cache.iterdir())) == 2
    monkeypatch.setattr("core.storage.weights_cache.FORMAT_VERSION", 99)
    assert weights_cache.fingerprint(run) not in (before, changed)
    (run / "vae" / "meta.json").unlink()
    assert weights_cache.fingerprint(run) is None


def test_files_rewritten_while_loading_are_not_cached(run, cache, monkeypatch):
    """A training checkpoint (or an export) can replace the files between hashing and loading: the weights
    loaded then are not stored under the old files' fingerprint."""
    real_load = load_vae

    def load_then_retrain(folder, *args, **kwargs):
        vae = real_load(folder, *args, **kwargs)
        with open(run / "vae" / "vae.weights.h5", "ab") as f:
            f.write(b"\0")
        return vae
    monkeypatch.setattr("core.models.vae.load_vae", load_then_retrain)
    assert load_world_model_weights(run)["mu_w"].shape[1] == 8
    assert not cache.exists() or not list(cache.iterdir())


def test_an_entry_of_other_files_is_refused(run, cache, caplog):
    real = load_world_model_weights(run)
    key = weights_cache.fingerprint(run)
    fake = {k: (v if k == "mixtures" else np.zeros_like(v)) for k, v in real.items()}
    atomic_save_npz(weights_cache.entry_path(key), fingerprint=np.array("0" * 64), **fake)  # a name clash
    caplog.set_level("WARNING", logger="core.storage.weights_cache")
    got = load_world_model_weights(run)
    np.testing.assert_array_equal(got["mu_w"], real["mu_w"])
    assert got["mu_w"].any() and "other files" in caplog.text
    assert weights_cache.read(key) is not None  # rebuilt


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "missing_array", "mixtures_vector", "flat_mu",
                                    "strings", "conv_chain"])
def test_a_damaged_entry_falls_back_to_keras(run, cache, caplog, damage):
    real = load_world_model_weights(run)
    key = weights_cache.fingerprint(run)
    bad = dict(real)
    if damage == "garbage":
        weights_cache.entry_path(key).write_bytes(b"not an npz")
    else:
        if damage == "wrong_shape":
            bad["lstm_bias"] = bad["lstm_bias"][:-1]
        elif damage == "missing_array":
            del bad["conv2_b"]
        elif damage == "mixtures_vector":
            bad["mixtures"] = np.array([3, 3])
        elif damage == "flat_mu":
            bad["mu_w"] = bad["mu_w"].ravel()
        elif damage == "strings":
            bad["mdn_b"] = np.array(["a"] * len(bad["mdn_b"]))
        else:
            bad["conv1_w"] = bad["conv1_w"][:-16]
        atomic_save_npz(weights_cache.entry_path(key), fingerprint=np.array(key), **bad)
    caplog.set_level("WARNING", logger="core.storage.weights_cache")
    got = load_world_model_weights(run)
    for k in real:
        np.testing.assert_array_equal(got[k], real[k])
    assert "weights cache entry" in caplog.text
    assert weights_cache.read(key) is not None  # rebuilt


def test_an_unwritable_cache_folder_or_no_home_still_loads(run, tmp_path, monkeypatch, caplog):
    before = snapshot(run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(weights_cache.CACHE_ENV, str(blocker / "cache"))
    caplog.set_level("WARNING", logger="core.storage.weights_cache")
    assert load_world_model_weights(run)["mu_w"].shape[1] == 8
    assert not caplog.text  # a cache that cannot exist is no cause for a warning
    for name in (weights_cache.CACHE_ENV, "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert weights_cache.weights_cache_dir() is None
    assert load_world_model_weights(run)["mu_w"].shape[1] == 8
    assert snapshot(run) == before


def test_the_cache_keeps_the_most_recently_used_entries(run, cache, monkeypatch):
    weights = load_world_model_weights(run)
    shutil.rmtree(cache)
    monkeypatch.setattr("core.storage.weights_cache.CACHE_KEEP", 3)
    for i in range(5):
        path = weights_cache.write(weights, str(i) * 64)
        os.utime(path, (1000 + i, 1000 + i))  # distinct times, whatever the file system's resolution
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted(weights_cache.entry_path(str(i) * 64).name for i in (2, 3, 4))
    assert weights_cache.read("2" * 64) is not None  # reading marks it recently used
    weights_cache.write(weights, "5" * 64)
    assert weights_cache.entry_path("2" * 64).exists() and not weights_cache.entry_path("3" * 64).exists()


def test_missing_model_files_are_reported_as_before(tmp_path, cache):
    """Without V's files there is nothing to fingerprint: Keras's loader says what is missing."""
    with pytest.raises(ArtifactError, match="train-vae") as e:
        load_world_model_weights(tmp_path / "nothing")
    assert "cache" not in str(e.value)


def _without_tensorflow(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    prelude = 'import sys\nsys.modules["tensorflow"] = None\nsys.modules["keras"] = None  # imports of them fail\n'
    return subprocess.run([sys.executable, "-c", prelude + script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "SDL_VIDEODRIVER": "dummy"}, timeout=300)


def test_evaluate_and_evolve_run_without_tensorflow(run, cache, tmp_path):
    """With the weights cached, evaluating and evolving import neither TensorFlow nor Keras, so they run on
    a machine that has only NumPy, gymnasium and cma (and the cache entry copied there)."""
    load_world_model_weights(run)  # fills the cache
    done = _without_tensorflow(f"""
from core.cli import main
assert main(["evaluate", "--model-dir", {str(run)!r}, "--episodes", "1", "--max-steps", "15", "--workers", "1",
             "--env", {TEST_ENV!r}, "--out", {str(tmp_path / "eval.json")!r}, "--quiet"]) == 0
assert main(["evolve", "--run-dir", {str(run)!r}, "--generations", "2", "--popsize", "4", "--rollouts", "1",
             "--max-steps", "15", "--eval-every", "0", "--workers", "1", "--env", {TEST_ENV!r}, "--quiet"]) == 0
""", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 1
    assert json.loads((run / "controller" / "state.json").read_text())["generation"] == 2


def test_without_tensorflow_a_missing_entry_is_explained(run, cache, tmp_path):
    done = _without_tensorflow(f"""
from core.cli import main
sys.exit(main(["evaluate", "--model-dir", {str(run)!r}, "--episodes", "1", "--max-steps", "15", "--workers", "1",
               "--env", {TEST_ENV!r}, "--out", {str(tmp_path / "eval.json")!r}, "--quiet"]))
""", tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "not in the weights cache" in done.stderr and weights_cache.CACHE_ENV in done.stderr


def test_without_tensorflow_a_cache_miss_or_a_missing_file_is_explained(run, cache, monkeypatch):
    """Where TensorFlow is not installed, V and M load from the cache only: a miss says how to fill it, and
    a model with a file missing names the file rather than the cache."""
    monkeypatch.setitem(sys.modules, "core.models.mdnrnn", None)  # importing it raises ImportError, as without TF
    with pytest.raises(ArtifactError, match="needs TensorFlow"):
        load_world_model_weights(run)
    (run / "vae" / "meta.json").unlink()
    with pytest.raises(ArtifactError, match=r"vae/meta.json missing") as e:
        load_world_model_weights(run)
    assert "cache" not in str(e.value)
