"""The NumPy per-step path gives what the Keras models give."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from core.agent import (CACHE_ENV, Agent, encode_mu, extract_weights, load_world_model, load_world_model_weights,
                        lstm_step, mdn_heads, read_weights_cache, sample_z, weights_cache_path, weights_fingerprint,
                        write_weights_cache)
from core.artifacts import ArtifactError, atomic_save_npz
from core.controller import load_controller
from core.dataset import list_episodes, load_episode
from core.env import make_env
from core.mdnrnn import load_rnn
from core.vae import load_vae, to_float
from tests.conftest import TEST_ENV

ROOT = Path(__file__).resolve().parent.parent


def _models(run):
    vae = load_vae(run / "vae")
    rnn = load_rnn(run / "rnn", expect_z=vae.z_size)
    return vae, rnn


def test_numpy_encoder_matches_keras(tiny_world_model, tiny_data):
    vae, rnn = _models(tiny_world_model)
    frames = load_episode(list_episodes(tiny_data)[0]).obs[:16]
    want = vae.encode(to_float(frames))[0].numpy()
    got = encode_mu(extract_weights(vae, rnn), frames)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_numpy_lstm_and_heads_match_keras(tiny_world_model):
    vae, rnn = _models(tiny_world_model)
    w = extract_weights(vae, rnn)
    x = np.random.default_rng(0).normal(size=(3, 7, vae.z_size + 3)).astype(np.float32)
    out, (h_k, c_k) = rnn(x, return_state=True)
    h = np.zeros((3, rnn.hidden), np.float32)
    c = h.copy()
    for t in range(7):
        h, c = lstm_step(w, x[:, t], h, c)
    np.testing.assert_allclose(h, h_k.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, c_k.numpy(), rtol=1e-4, atol=1e-5)
    heads = mdn_heads(w, h)
    for key in ("log_pi", "mu", "log_sigma", "reward"):
        np.testing.assert_allclose(heads[key], out[key][:, -1].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(heads["done"], tf.sigmoid(out["done_logit"][:, -1]).numpy(), rtol=1e-4, atol=1e-5)


def test_agent_actions_match_keras_pipeline_in_the_real_env(tiny_world_model):
    vae, rnn = _models(tiny_world_model)
    controller = load_controller(tiny_world_model / "controller", vae.z_size, rnn.hidden)
    rng = np.random.default_rng(3)
    controller.set_params(rng.normal(scale=0.5, size=controller.n_params))
    agent = Agent(extract_weights(vae, rnn), controller.get_params())
    env = make_env(TEST_ENV)
    obs, _ = env.reset(seed=5)
    state = None
    from core.env import preprocess
    for _ in range(15):
        action = agent.act(obs)
        mu = vae.encode(to_float(preprocess(obs)[None]))[0].numpy()
        h = np.zeros((1, rnn.hidden), np.float32) if state is None else state[0].numpy()
        want = controller.act(mu, h)
        np.testing.assert_allclose(action, want[0], rtol=1e-4, atol=1e-5)
        x = np.concatenate([mu, want], axis=1)[:, None]
        _, state = rnn(x, initial_state=state, return_state=True)
        np.testing.assert_allclose(agent.h, state[0].numpy(), rtol=1e-4, atol=1e-5)
        obs, *_ = env.step(action)
    env.close()


def test_batched_agent_equals_single_agents(tiny_world_model):
    agent = Agent.load(tiny_world_model, n_envs=3)
    singles = [Agent.load(tiny_world_model) for _ in range(3)]
    obs = np.random.default_rng(4).integers(0, 256, size=(5, 3, 96, 96, 3), dtype=np.uint8)
    for t in range(5):
        batch = agent.act(obs[t])
        for i, s in enumerate(singles):
            np.testing.assert_allclose(batch[i], s.act(obs[t, i]), rtol=1e-5, atol=1e-6)


def test_sample_z_temperature():
    rng = np.random.default_rng(0)
    heads = {"log_pi": np.log(np.array([[[0.9, 0.1]]])), "mu": np.array([[[1.0, -5.0]]]),
             "log_sigma": np.log(np.array([[[0.5, 0.5]]]))}
    assert sample_z(heads, 0.0, rng)[0, 0] == 1.0
    draws = np.array([sample_z(heads, 1.0, rng)[0, 0] for _ in range(4000)])
    assert abs((draws < -2).mean() - 0.1) < 0.03  # the second component's weight
    cold = np.array([sample_z(heads, 0.05, rng)[0, 0] for _ in range(2000)])
    assert (cold < -2).mean() < 0.01 and cold.std() < 0.2  # low tau: the likely mode, narrow


# The weights cache: V's and M's NumPy weights saved once, read without Keras.

def _model_copy(tiny_world_model, tmp_path):
    run = tmp_path / "model"
    for part in ("vae", "rnn", "controller"):
        shutil.copytree(tiny_world_model / part, run / part, ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _no_keras(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loaded with Keras although the cache is valid")
    monkeypatch.setattr("core.vae.load_vae", refuse)


def test_weights_cache_is_written_then_read_without_keras(tiny_world_model, tmp_path, cache, monkeypatch):
    run = _model_copy(tiny_world_model, tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    vae, rnn = _models(run)
    expected = extract_weights(vae, rnn)
    first = load_world_model_weights(run)
    assert [p.name for p in cache.iterdir()] == [weights_cache_path(weights_fingerprint(run)).name]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the model folder is left alone
    _no_keras(monkeypatch)
    second = load_world_model_weights(run)
    assert sorted(second) == sorted(expected) == sorted(first)
    for k in expected:
        np.testing.assert_array_equal(second[k], expected[k])
        assert second[k].dtype == expected[k].dtype
    weights, params = load_world_model(run)  # the agent's loader goes through it too
    assert Agent(weights, params).act(np.zeros((96, 96, 3), np.uint8)).shape == (3,)
    # A copy of the folder elsewhere has the same files, so the same cache entry.
    shutil.copytree(run, tmp_path / "copy")
    load_world_model_weights(tmp_path / "copy")
    assert len(list(cache.iterdir())) == 1


def test_changed_model_files_are_not_served_from_the_cache(tiny_world_model, tmp_path, cache):
    """Retraining V or M (or exporting over the folder) changes the fingerprint: the new weights are loaded
    with Keras, and the old entry stays for the old files."""
    run = _model_copy(tiny_world_model, tmp_path)
    load_world_model_weights(run)
    before = weights_fingerprint(run)
    config = json.loads((run / "rnn" / "config.json").read_text())
    (run / "rnn" / "config.json").write_text(json.dumps(config, indent=4))  # same settings, other bytes
    assert weights_fingerprint(run) != before
    assert read_weights_cache(weights_fingerprint(run)) is None
    load_world_model_weights(run)
    assert len(list(cache.iterdir())) == 2


def test_a_cache_entry_of_other_files_is_refused(tiny_world_model, tmp_path, cache, caplog):
    run = _model_copy(tiny_world_model, tmp_path)
    real = load_world_model_weights(run)
    fingerprint = weights_fingerprint(run)
    fake = {k: (v if k == "mixtures" else np.zeros_like(v)) for k, v in real.items()}
    atomic_save_npz(weights_cache_path(fingerprint), fingerprint=np.array("0" * 64), **fake)  # a name clash
    caplog.set_level("WARNING", logger="core.agent")
    got = load_world_model_weights(run)
    np.testing.assert_array_equal(got["mu_w"], real["mu_w"])
    assert got["mu_w"].any() and "other files" in caplog.text
    assert read_weights_cache(fingerprint) is not None  # rebuilt


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "missing_array"])
def test_damaged_weights_cache_falls_back_to_keras(tiny_world_model, tmp_path, cache, caplog, damage):
    run = _model_copy(tiny_world_model, tmp_path)
    real = load_world_model_weights(run)
    fingerprint = weights_fingerprint(run)
    if damage == "garbage":
        weights_cache_path(fingerprint).write_bytes(b"not an npz")
    else:
        bad = dict(real)
        if damage == "wrong_shape":
            bad["lstm_bias"] = bad["lstm_bias"][:-1]
        else:
            del bad["mdn_w"]
        write_weights_cache(bad, fingerprint)
    caplog.set_level("WARNING", logger="core.agent")
    got = load_world_model_weights(run)
    for k in real:
        np.testing.assert_array_equal(got[k], real[k])
    assert "weights cache" in caplog.text
    assert read_weights_cache(fingerprint) is not None  # rebuilt


def test_unwritable_cache_folder_still_loads(tiny_world_model, tmp_path, monkeypatch):
    run = _model_copy(tiny_world_model, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    weights = load_world_model_weights(run)
    assert weights["mu_w"].shape[1] == 8


def test_the_cache_keeps_the_most_recently_used_files(tiny_world_model, tmp_path, cache, monkeypatch):
    run = _model_copy(tiny_world_model, tmp_path)
    weights = load_world_model_weights(run)
    monkeypatch.setattr("core.agent.CACHE_KEEP", 3)
    for i in range(5):
        write_weights_cache(weights, str(i) * 64)
    assert len(list(cache.iterdir())) == 3
    assert weights_cache_path("4" * 64).exists() and not weights_cache_path(weights_fingerprint(run)).exists()


def test_missing_model_files_are_reported_as_before(tmp_path, cache):
    """Without V's files there is nothing to fingerprint: Keras's loader explains what is missing."""
    with pytest.raises(ArtifactError):
        load_world_model_weights(tmp_path / "nothing")


def test_evaluate_and_evolve_run_without_tensorflow(tiny_world_model, tmp_path, cache):
    """With the weights cached, evaluating and evolving import neither TensorFlow nor Keras, so they run on
    a machine that has only NumPy, gymnasium and cma (and the cache folder copied there)."""
    run = _model_copy(tiny_world_model, tmp_path)
    load_world_model_weights(run)  # fills the cache
    script = f"""
import sys
sys.modules["tensorflow"] = None  # any import of them now fails
sys.modules["keras"] = None
from core.cli import main
assert main(["evaluate", "--model-dir", {str(run)!r}, "--episodes", "1", "--max-steps", "15", "--workers", "1",
             "--env", {TEST_ENV!r}, "--out", {str(tmp_path / "eval.json")!r}, "--quiet"]) == 0
assert main(["evolve", "--run-dir", {str(run)!r}, "--generations", "2", "--popsize", "4", "--rollouts", "1",
             "--max-steps", "15", "--eval-every", "0", "--workers", "1", "--env", {TEST_ENV!r}, "--quiet"]) == 0
"""
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 1
    assert json.loads((run / "controller" / "state.json").read_text())["generation"] == 2
