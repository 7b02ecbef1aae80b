"""The latent explorer's computations (core.app.app_data): its start points, M's memory at a real moment, and
C's action on (z, h), each against the models themselves (Keras V and M, the controller)."""

import shutil

import numpy as np
import pytest

from core.app import app_data
from core.app.app_data import ROOT_ENV
from core.models.controller import load_controller
from core.pipeline.dream import WorldModel
from core.storage.dataset import load_episode


@pytest.fixture(scope="module")
def model(tiny_world_model):
    return WorldModel.load(tiny_world_model)


def test_the_start_points_are_v_s_codes_and_frames(model, tiny_data):
    frames, where = app_data.sample_moments(tiny_data, count=8, seed=1)
    np.testing.assert_array_equal(frames, app_data.sample_frames(tiny_data, count=8, seed=1))
    assert len(where) == len(frames) == 2  # one frame an episode, two episodes
    for frame, (path, t) in zip(frames, where):
        np.testing.assert_array_equal(frame, load_episode(path).obs[t])
    start = app_data.explorer_start(model.vae, frames)
    mu = np.asarray(model.vae.encode(frames.astype(np.float32) / 255.0)[0])
    np.testing.assert_allclose(start["z"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(start["spread"], mu.std(axis=0), rtol=1e-5, atol=1e-6)
    assert start["spread"][start["order"][0]] == start["spread"].max() and sorted(start["order"]) == list(range(8))
    want = np.clip(np.asarray(model.vae.decode(mu)) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(start["decoded"], want, atol=1)
    np.testing.assert_allclose(start["prior_decoded"], model.decode(start["prior"][None])[0], atol=1)
    empty = app_data.explorer_start(model.vae, frames[:0])
    assert empty["z"].shape == (0, 8) and list(empty["spread"]) == [1.0] * 8


def test_c_s_action_on_a_real_moment_is_the_controller_s(model, tiny_world_model, tiny_data):
    from core.models.mdnrnn import load_rnn
    (path, _), t = app_data.sample_moments(tiny_data, count=1, seed=1)[1][0], 17
    episode = load_episode(path)
    h = app_data.memory_at(model, path, t)
    # M's memory after the real frames and actions 0..t-1, as the Keras LSTM computes it.
    z = model.encode(episode.obs[:t + 1])
    _, (want_h, _) = load_rnn(tiny_world_model / "rnn")(np.concatenate([z[:t], episode.action[:t]], axis=1)[None],
                                                          return_state=True)
    np.testing.assert_allclose(h, want_h.numpy()[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(h, 0)
    controller = load_controller(tiny_world_model / "controller", 8, 16)
    action = app_data.controller_action(controller, z[t], h)
    assert list(action) == ["steer", "gas", "brake"]
    np.testing.assert_allclose(list(action.values()), controller.act(z[t], h), rtol=1e-6)
    # ...which is the paper's squashing of W [z, h] + b.
    raw = controller.weight @ np.concatenate([z[t], h]) + controller.bias
    np.testing.assert_allclose(action["steer"], np.tanh(raw[0]), rtol=1e-5)
    np.testing.assert_allclose(action["gas"], (np.tanh(raw[1]) + 1) / 2, rtol=1e-5)
    np.testing.assert_allclose(action["brake"], np.clip(np.tanh(raw[2]), 0, 1), atol=1e-6)


def test_the_explorer_borrows_the_shipped_controller_only_when_its_run_has_none(tmp_path, tiny_world_model,
                                                                               monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    for part in ("vae", "rnn", "controller"):
        shutil.copytree(tiny_world_model / part, tmp_path / "models" / part)
    shutil.copytree(tiny_world_model / "vae", tmp_path / "runs" / "vae")
    assert app_data.explorer_parts("runs/vae") == {"model_dir": None, "controller_dir": "models/controller",
                                                   "shipped_controller": True}
    shutil.copytree(tiny_world_model / "rnn", tmp_path / "runs" / "rnn")
    shutil.copytree(tiny_world_model / "controller", tmp_path / "runs" / "controller")
    assert app_data.explorer_parts("runs/vae") == {"model_dir": "runs", "controller_dir": "runs/controller",
                                                   "shipped_controller": False}
    assert app_data.explorer_parts("models/vae") == {"model_dir": "models", "controller_dir": "models/controller",
                                                     "shipped_controller": False}
    shutil.rmtree(tmp_path / "models")
    assert app_data.explorer_parts("runs2/vae")["controller_dir"] is None
