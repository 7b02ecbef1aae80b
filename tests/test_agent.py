"""The agent's step (ONNX Runtime) and the NumPy per-step path give what the Keras models give."""

import numpy as np
import tensorflow as tf

from core.envs.env import make_env
from core.models.agent import Agent, encode_mu, extract_weights, load_world_model, lstm_step, mdn_heads, sample_z
from core.models.controller import Controller, load_controller
from core.models.mdnrnn import load_rnn
from core.models.vae import load_vae, to_float
from core.storage.dataset import list_episodes, load_episode
from tests.conftest import TEST_ENV


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
    from core.envs.env import preprocess
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


def test_step_graph_matches_numpy_mirror(tiny_world_model):
    """The ONNX Runtime step (what Agent runs) against the NumPy functions, several steps, a batch of 4."""
    weights, params = load_world_model(tiny_world_model)
    params = np.random.default_rng(8).normal(scale=0.5, size=params.shape).astype(np.float32)
    agent = Agent(weights, params, n_envs=4)
    controller = Controller(agent.z_size, agent.hidden, params)
    rng = np.random.default_rng(5)
    h = np.zeros((4, agent.hidden), np.float32)
    c = h.copy()
    for _ in range(6):
        frames = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
        action = agent.act_frames(frames)
        z = encode_mu(weights, frames)
        want = controller.act(z, h)
        h, c = lstm_step(weights, np.concatenate([z, want], axis=1), h, c)
        np.testing.assert_allclose(agent.z, z, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(action, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(agent.h, h, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(agent.c, c, rtol=1e-4, atol=1e-5)
    assert (action >= [-1, 0, 0]).all() and (action <= [1, 1, 1]).all()


def test_step_sessions_are_shared_per_weights(tiny_world_model):
    weights, params = load_world_model(tiny_world_model)
    params = np.random.default_rng(7).normal(scale=0.5, size=params.shape).astype(np.float32)
    first, second = Agent(weights, params), Agent(weights, -params)
    assert first.session is second.session  # a rollout's new agent each episode builds nothing
    assert Agent(dict(weights), params).session is not first.session
    obs = np.random.default_rng(6).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    assert not np.allclose(first.act(obs), second.act(obs))  # each agent feeds its own controller


def test_sample_z_temperature():
    rng = np.random.default_rng(0)
    heads = {"log_pi": np.log(np.array([[[0.9, 0.1]]])), "mu": np.array([[[1.0, -5.0]]]),
             "log_sigma": np.log(np.array([[[0.5, 0.5]]]))}
    assert sample_z(heads, 0.0, rng)[0, 0] == 1.0
    draws = np.array([sample_z(heads, 1.0, rng)[0, 0] for _ in range(4000)])
    assert abs((draws < -2).mean() - 0.1) < 0.03  # the second component's weight
    cold = np.array([sample_z(heads, 0.05, rng)[0, 0] for _ in range(2000)])
    assert (cold < -2).mean() < 0.01 and cold.std() < 0.2  # low tau: the likely mode, narrow
