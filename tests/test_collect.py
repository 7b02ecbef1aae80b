import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from core.config import CollectConfig
from core.models.controller import load_controller, save_params
from core.pipeline.collect import BrownianPolicy, MixedDataError, collect
from core.storage.dataset import list_episodes, load_episode, read_manifest
from tests.conftest import ROOT, TEST_ENV


def folder_bytes(folder) -> dict:
    """Every file of a data folder but the lock (which holds the pid of the latest run)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


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
    from core.envs.env import make_env
    from core.models.agent import Agent
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


def test_a_controller_run_into_a_brownian_folder_is_refused_and_changes_nothing(tiny_world_model, tmp_path):
    out = tmp_path / "rollouts"
    collect(CollectConfig(out_dir=str(out), episodes=2, max_steps=12, workers=1, env=TEST_ENV))
    before = folder_bytes(out)
    with pytest.raises(MixedDataError) as refused:
        collect(CollectConfig(out_dir=str(out), episodes=3, max_steps=12, workers=1, env=TEST_ENV,
                              policy="controller", model_dir=str(tiny_world_model), noise=0.1))
    message = str(refused.value)
    assert "--policy brownian there, controller now" in message and f"--out-dir {out}-controller" in message
    assert folder_bytes(out) == before
    assert read_manifest(out)["settings"]["policy"] == "brownian"


def test_resuming_may_change_episodes_workers_seed_and_unused_noise(tmp_path):
    out = tmp_path / "rollouts"
    collect(CollectConfig(out_dir=str(out), episodes=1, max_steps=12, workers=1, env=TEST_ENV, noise=0.1))
    first = (out / "ep_0000000.npz").read_bytes()
    summary = collect(CollectConfig(out_dir=str(out), episodes=2, max_steps=12, workers=2, env=TEST_ENV,
                                    noise=0.5, seed=1))  # noise drives only policy controller
    assert summary["episodes"] == 3 and (out / "ep_0000000.npz").read_bytes() == first
    manifest = read_manifest(out)
    assert [e["seed"] for e in manifest["episodes"]] == [0, 1, 2]
    assert manifest["settings"] == {"policy": "brownian", "env": TEST_ENV, "max_steps": 12, "noise": None,
                                    "model_sha256": None, "model_dir": None}
    assert manifest["config"]["workers"] == 2


def test_another_max_steps_is_refused_with_one_line_and_exit_code_2(tmp_path):
    out = tmp_path / "rollouts"
    collect(CollectConfig(out_dir=str(out), episodes=1, max_steps=12, workers=1, env=TEST_ENV))
    before = folder_bytes(out)
    proc = subprocess.run([sys.executable, "-m", "core", "collect", "--out-dir", str(out), "--episodes", "2",
                           "--max-steps", "20", "--workers", "1", "--env", TEST_ENV, "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "--max-steps 12 there, 20 now" in lines[0] and f"--out-dir {out}-20steps" in lines[0]
    assert folder_bytes(out) == before


def test_the_driving_model_is_known_by_its_weights_not_its_folder(tiny_world_model, tmp_path):
    out, copy = tmp_path / "rollouts", tmp_path / "copy"
    settings = dict(out_dir=str(out), max_steps=12, workers=1, env=TEST_ENV, policy="controller", noise=0.2)
    collect(CollectConfig(episodes=1, model_dir=str(tiny_world_model), **settings))
    shutil.copytree(tiny_world_model, copy)
    assert collect(CollectConfig(episodes=2, model_dir=str(copy), **settings))["episodes"] == 2
    with pytest.raises(MixedDataError, match="--noise 0.2 there, 0.3 now"):
        collect(CollectConfig(episodes=3, model_dir=str(copy), **{**settings, "noise": 0.3}))
    c = load_controller(copy / "controller")
    save_params(copy / "controller", c.get_params() + 0.01, c.z_size, c.hidden)  # C evolved further
    before = folder_bytes(out)
    with pytest.raises(MixedDataError) as refused:
        collect(CollectConfig(episodes=3, model_dir=str(copy), **settings))
    old_sha, new_sha = re.fullmatch(rf".*model (\w{{12}}) \({re.escape(str(copy))}\) there, (\w{{12}}) "
                                    rf"\({re.escape(str(copy))}\) now.*", str(refused.value)).groups()
    assert old_sha != new_sha
    assert folder_bytes(out) == before


def test_a_manifest_of_an_older_collect_stands_for_its_episodes(tiny_data, tiny_world_model, tmp_path):
    """Older manifests record only their latest run's flags as ``config``, without a policy before there was
    a choice: those are the episodes' settings, Brownian where none is named."""
    out = tmp_path / "rollouts"
    shutil.copytree(tiny_data, out, ignore=shutil.ignore_patterns(".lock"))
    manifest = read_manifest(out)
    old_config = {k: v for k, v in manifest["config"].items() if k in ("env", "episodes", "max_steps", "out_dir",
                                                                          "seed", "workers")}
    (out / "manifest.json").write_text(json.dumps({"config": old_config, "episodes": manifest["episodes"]}))
    with pytest.raises(MixedDataError, match="--max-steps 40 there, 12 now"):
        collect(CollectConfig(out_dir=str(out), episodes=3, max_steps=12, workers=1, env=TEST_ENV))
    with pytest.raises(MixedDataError, match="--policy brownian there, controller now"):
        collect(CollectConfig(out_dir=str(out), episodes=3, max_steps=40, workers=1, env=TEST_ENV,
                              policy="controller", model_dir=str(tiny_world_model)))
    summary = collect(CollectConfig(out_dir=str(out), episodes=3, max_steps=40, workers=1, env=TEST_ENV))
    assert summary["episodes"] == 3
    assert read_manifest(out)["settings"]["policy"] == "brownian"
