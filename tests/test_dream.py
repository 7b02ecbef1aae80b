"""Dreams on a tiny trained world model: the NumPy dream against Keras M, drivers, ends, side by side, GIFs."""

import io

import numpy as np
import pytest

from core.pipeline.dream import (
    KEY_ACTIONS,
    Dream,
    WorldModel,
    dream_captions,
    dream_records,
    gif,
    hstack,
    one_step_predictions,
    side_by_side,
    upscale,
    with_captions,
)
from core.storage.dataset import list_episodes, load_episode
from tests.conftest import TEST_ENV


@pytest.fixture(scope="module")
def model(tiny_world_model):
    return WorldModel.load(tiny_world_model)


@pytest.fixture(scope="module")
def episode(tiny_data):
    return load_episode(list_episodes(tiny_data)[0])


def test_world_model_encodes_and_decodes_frames(model, episode):
    assert (model.z_size, model.hidden) == (8, 16) and model.controller is not None
    z = model.encode(episode.obs[:5])
    assert z.shape == (5, 8) and z.dtype == np.float32
    frames = model.decode(z)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    want = np.asarray(model.vae.decode(z))
    np.testing.assert_allclose(frames, np.clip(want * 255 + 0.5, 0, 255).astype(np.uint8), atol=1)


def test_warm_start_memory_matches_keras_lstm(model, episode, tiny_world_model):
    from core.models.mdnrnn import load_rnn
    rnn = load_rnn(tiny_world_model / "rnn")
    t = 12
    dream = Dream(model)
    dream.reset_from_episode(episode, t)
    z = model.encode(episode.obs[:t + 1])
    x = np.concatenate([z[:t], episode.action[:t]], axis=1)[None]
    _, (h, c) = rnn(x, return_state=True)
    np.testing.assert_allclose(dream.h, h.numpy()[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dream.c, c.numpy()[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dream.z, z[t], rtol=1e-5, atol=1e-6)


def test_a_dream_step_follows_m(model, episode, tiny_world_model):
    from core.models.mdnrnn import load_rnn
    rnn = load_rnn(tiny_world_model / "rnn")
    dream = Dream(model, tau=0.0)
    dream.reset_from_frame(episode.obs[0])
    z0 = dream.z.copy()
    z1, reward, done = dream.step(KEY_ACTIONS["gas"])
    out = rnn(np.concatenate([z0, KEY_ACTIONS["gas"]])[None, None])
    # tau = 0: the mean of each dimension's most likely component.
    k = out["log_pi"].numpy()[0, 0].argmax(-1)
    want = np.take_along_axis(out["mu"].numpy()[0, 0], k[:, None], -1)[:, 0]
    np.testing.assert_allclose(z1, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reward, out["reward"].numpy()[0, 0], rtol=1e-4, atol=1e-5)
    assert done == pytest.approx(1.0 / (1.0 + np.exp(-float(out["done_logit"].numpy()[0, 0]))), abs=1e-5)
    assert dream.t == 1 and len(dream.log.z) == 2 and dream.total_reward == pytest.approx(reward)


def test_temperature_zero_is_deterministic_and_higher_samples(model, episode):
    def run(tau, seed):
        d = Dream(model, tau=tau, seed=seed)
        d.reset_from_frame(episode.obs[10])
        d.run(20, "gas", stop_at_end=False)
        return np.stack(d.log.z)
    np.testing.assert_array_equal(run(0.0, 1), run(0.0, 2))
    np.testing.assert_array_equal(run(1.0, 3), run(1.0, 3))
    assert not np.allclose(run(1.0, 3), run(1.0, 4))


def test_controller_drives_the_dream(model, episode):
    dream = Dream(model, tau=0.5)
    dream.reset_from_episode(episode, 5)
    expected = model.controller.act(dream.z[None], dream.h[None])[0]
    assert dream.run(15, "controller", stop_at_end=False) == 15
    np.testing.assert_allclose(dream.log.action[0], expected)
    actions = np.stack(dream.log.action)
    assert actions.shape == (15, 3)
    assert (actions >= [-1, 0, 0]).all() and (actions <= [1, 1, 1]).all()
    assert dream.frames().shape == (16, 64, 64, 3) and dream.frames(10).shape == (6, 64, 64, 3)
    # Captions from a later step (the page captions each new chunk of a dream) are the same as those of the
    # whole dream from that step on: R is the predicted reward before each frame.
    captions = dream_captions(dream)
    assert captions[0].startswith("t=   0  R=   +0.0") and dream_captions(dream, 10) == captions[10:]
    assert f"R={sum(dream.log.reward[:10]):+7.1f}" in captions[10]
    # With actions: C's action on each frame under it (none yet on the last), and the same in the chart records.
    with_actions = dream_captions(dream, actions=True)
    steer, gas, brake = dream.log.action[3]
    assert with_actions[3] == f"{captions[3]}\nsteer {steer:+.2f}  gas {gas:.2f}  brake {brake:.2f}"
    assert with_actions[-1] == captions[-1] + "\n"
    records = dream_records(dream)
    assert len(records) == 15 and records[3]["step"] == 4
    np.testing.assert_allclose([records[3][k] for k in ("steer", "gas", "brake")], dream.log.action[3])
    np.testing.assert_allclose(records[-1]["return"], sum(dream.log.reward), rtol=1e-6)
    frames = with_captions(upscale(dream.frames(), 2), with_actions)
    assert frames.shape == (16, 128 + 2 * 22, 128, 3)  # two caption lines under every frame


def test_dream_ends_when_m_predicts_the_end(model, episode):
    w = dict(model.w)
    w["done_b"] = np.full_like(w["done_b"], 50.0)  # M is now sure every step ends the episode
    certain = WorldModel(model.vae, w, model.controller)
    dream = Dream(certain)
    dream.reset_from_frame(episode.obs[0])
    assert dream.run(10, "left") == 1
    assert dream.ended and dream.ended_at == 1 and dream.log.done_prob[0] > 0.99
    assert "END" in dream_captions(dream)[-1]


def test_one_step_predictions_line_up_with_the_episode(model, episode):
    out = one_step_predictions(model, episode, start=5, count=6)
    np.testing.assert_array_equal(out["steps"], np.arange(6, 12))
    np.testing.assert_array_equal(out["real_next"], episode.obs[6:12])
    np.testing.assert_array_equal(out["real_reward"], episode.reward[5:11])
    for key in ("recon_next", "predicted"):
        assert out[key].shape == (6, 64, 64, 3) and out[key].dtype == np.uint8
    assert out["pred_reward"].shape == out["done_prob"].shape == (6,)
    # V's picture of each real next frame, and M's prediction of it from the real past: the first is what a
    # dream started at frame 5 predicts after the episode's own action 5 (tau = 0: the likeliest mean).
    np.testing.assert_array_equal(out["recon_next"], model.decode(model.encode(episode.obs[6:12])))
    dream = Dream(model, tau=0.0)
    dream.reset_from_episode(episode, 5)
    z6, reward, done = dream.step(episode.action[5])
    assert np.abs(out["predicted"][0].astype(int) - model.decode(z6[None])[0]).max() <= 1
    assert out["pred_reward"][0] == pytest.approx(reward, abs=1e-5)
    assert out["done_prob"][0] == pytest.approx(done, abs=1e-5)
    near_end = one_step_predictions(model, episode, start=episode.steps - 2, count=8)
    assert len(near_end["predicted"]) == 2  # never past the last real frame


def test_side_by_side_runs_the_same_actions(model, monkeypatch):
    taken = []
    run = Dream.run
    monkeypatch.setattr(Dream, "run", lambda self, n, actions, **kw: (taken.append(np.array(actions)),
                                                                      run(self, n, actions, **kw))[1])
    out = side_by_side(model, seed=3, steps=12, driver="random", warmup=5, env_kind=TEST_ENV)
    assert out["real"].shape == out["dream"].shape == (13, 64, 64, 3)
    assert out["actions"].shape == (12, 3) and out["real_reward"].shape == out["dream_reward"].shape == (12,)
    # Both start from the same moment: the dream's first frame is V's picture of the real frame.
    np.testing.assert_array_equal(out["dream"][0], model.decode(model.encode(out["real"][:1]))[0])
    # The actions are the collection policy's on this seed after the warm-up, and the dream took them.
    from core.pipeline.collect import BrownianPolicy
    policy = BrownianPolicy(np.random.default_rng(3))
    np.testing.assert_array_equal(out["actions"], np.stack([policy() for _ in range(17)])[5:])
    assert len(taken) == 1
    np.testing.assert_array_equal(taken[0], out["actions"])


def test_gif_plays_every_frame_at_the_asked_rate(model, episode):
    from PIL import Image
    frames = with_captions(upscale(episode.obs[:7], 2), [f"t={i}" for i in range(7)])
    assert frames.shape == (7, 128 + 22, 128, 3)
    data = gif(hstack(frames, frames), fps=25)
    assert data[:6] == b"GIF89a"
    image = Image.open(io.BytesIO(data))
    assert image.n_frames == 7 and image.info["duration"] == 40 and image.size == (2 * 128 + 4, 150)


def test_frames_encode_the_same_in_batches(model, episode):
    frames = episode.obs[:11]
    np.testing.assert_allclose(model.encode(frames, batch=4), model.encode(frames, batch=64), atol=1e-5)
    assert model.encode(frames[:0]).shape == (0, model.z_size)
