import numpy as np

from core.collect import BrownianPolicy, collect
from core.config import CollectConfig
from core.dataset import list_episodes, load_episode, read_manifest
from tests.conftest import TEST_ENV


def test_brownian_policy_is_smooth_and_in_range():
    policy = BrownianPolicy(np.random.default_rng(0))
    a = np.stack([policy() for _ in range(5000)])
    assert a.dtype == np.float32
    assert (a.min(0) >= [-1, 0, 0]).all() and (a.max(0) <= [1, 1, 1]).all()
    assert np.abs(np.diff(a, axis=0)).mean() < 0.15  # smoothed, unlike uniform sampling (~0.5)
    assert a[:, 0].std() > 0.2  # but it does steer both ways
    assert a[:, 1].mean() > 0.2 and (a[:, 2] > 0).mean() < 0.3  # mostly driving, seldom braking


def test_collect_writes_checked_episodes_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "rollouts"
    for p in list_episodes(tiny_data):  # two episodes already there, as after an interrupted run
        (out / p.name).parent.mkdir(exist_ok=True)
        (out / p.name).write_bytes(p.read_bytes())
    seen = []
    summary = collect(CollectConfig(out_dir=str(out), episodes=3, max_steps=40, workers=1, env=TEST_ENV),
                      lambda step, total, m: seen.append((step, total, dict(m))) or True)
    assert summary["episodes"] == 3
    assert [s for s, _, m in seen if m] == [3]  # only the missing episode ran
    manifest = read_manifest(out)
    assert [e["seed"] for e in manifest["episodes"]] == [0, 1, 2]
    ep = load_episode(out / manifest["episodes"][2]["file"])
    assert ep.seed == 2 and ep.steps == 40 and ep.obs.shape == (41, 64, 64, 3)
    assert ep.truncated[-1] and not ep.truncated[:-1].any()
    np.testing.assert_allclose(ep.total_reward, manifest["episodes"][2]["return"], atol=1e-3)


def test_stop_request_ends_collection_cleanly(tmp_path):
    out = tmp_path / "r"
    summary = collect(CollectConfig(out_dir=str(out), episodes=5, max_steps=10, workers=1, env=TEST_ENV),
                      lambda step, total, m: step < 2)
    assert summary["episodes"] == 2 and len(list_episodes(out)) == 2


def test_a_trained_controller_can_drive_the_collection(tiny_world_model, tmp_path):
    """Policy "controller": the world model's agent drives, nudged by smoothed noise; the same in worker
    processes as in one process, and with no noise exactly the agent's own actions."""
    from core.agent import Agent
    from core.env import make_env
    settings = dict(episodes=2, max_steps=12, env=TEST_ENV, policy="controller", model_dir=str(tiny_world_model))
    one = collect(CollectConfig(out_dir=str(tmp_path / "one"), workers=1, noise=0.3, **settings))
    two = collect(CollectConfig(out_dir=str(tmp_path / "two"), workers=2, noise=0.3, **settings))
    assert one["episodes"] == two["episodes"] == 2
    for a, b in zip(list_episodes(tmp_path / "one"), list_episodes(tmp_path / "two")):
        np.testing.assert_array_equal(load_episode(a).action, load_episode(b).action)
    brownian = collect(CollectConfig(out_dir=str(tmp_path / "b"), episodes=1, max_steps=12, workers=1, env=TEST_ENV))
    assert brownian["episodes"] == 1
    noisy = load_episode(list_episodes(tmp_path / "one")[0]).action
    assert not np.allclose(noisy, load_episode(list_episodes(tmp_path / "b")[0]).action)

    collect(CollectConfig(out_dir=str(tmp_path / "plain"), workers=1, noise=0.0, **settings))
    plain = load_episode(list_episodes(tmp_path / "plain")[0])
    agent, env = Agent.load(tiny_world_model), make_env(TEST_ENV)
    obs, _ = env.reset(seed=plain.seed)
    for action in plain.action[:5]:  # the agent, driving the same track, takes the very same actions
        np.testing.assert_array_equal(np.clip(agent.act(obs), [-1, 0, 0], [1, 1, 1]), action)
        obs, *_ = env.step(action)
    env.close()
    assert not np.array_equal(plain.action, noisy)
