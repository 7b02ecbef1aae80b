"""The small-machine setting (WM_SMALL_MACHINE): one job at a time, jobs with one thread per math library,
and the race's AI loaded without TensorFlow in the server's process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.app.jobs import JobLimit, JobRegistry
from core.config import CollectConfig, EvaluateConfig
from core.machine import JOB_ENV, SMALL_MACHINE_ENV, max_jobs, small_machine
from core.storage import weights_cache
from tests.conftest import TEST_ENV

ROOT = Path(__file__).resolve().parent.parent


def test_the_setting_reads_the_usual_words_for_on():
    for on in ("1", "true", "True", " yes ", "ON"):
        assert small_machine({SMALL_MACHINE_ENV: on}), on
    for off in ("", "0", "false", "no", "off", "2"):
        assert not small_machine({SMALL_MACHINE_ENV: off}), off
    assert not small_machine({})


def test_a_small_machine_runs_one_job_at_a_time_with_one_thread_per_library(tmp_path, monkeypatch):
    monkeypatch.setenv(SMALL_MACHINE_ENV, "1")
    for var in JOB_ENV:
        monkeypatch.delenv(var, raising=False)
    assert max_jobs() == 1
    registry = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    try:
        first = registry.start("collect", CollectConfig(out_dir="data", episodes=30, max_steps=1000, workers=1,
                                                        env=TEST_ENV))
        with pytest.raises(JobLimit, match="runs 1 job at a time") as refused:
            registry.start("evaluate", _evaluate_config())
        assert refused.value.job is first and first.id in str(refused.value)
        assert SMALL_MACHINE_ENV in str(refused.value)
        environ = _environ(first.pid)
        assert {var: environ.get(var) for var in JOB_ENV} == JOB_ENV
        first.cancel()
        assert first.wait(120)
        second = registry.start("collect", CollectConfig(out_dir="data", episodes=30, max_steps=1000, workers=1,
                                                         env=TEST_ENV))  # the slot is free again
        assert second.active
    finally:
        registry.shutdown(30)


def test_without_the_setting_jobs_of_different_stages_run_together(tmp_path, monkeypatch):
    monkeypatch.delenv(SMALL_MACHINE_ENV, raising=False)
    for var in JOB_ENV:
        monkeypatch.delenv(var, raising=False)
    assert max_jobs() is None
    registry = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    try:
        first = registry.start("collect", CollectConfig(out_dir="data", episodes=30, max_steps=1000, workers=1,
                                                        env=TEST_ENV))
        second = registry.start("evaluate", _evaluate_config())
        assert first.id != second.id
        assert not set(JOB_ENV) & set(_environ(first.pid))
    finally:
        registry.shutdown(30)


def _environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` started with."""
    return dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                if "=" in line)


def _evaluate_config():
    return EvaluateConfig(model_dir="no-such-model", episodes=1, workers=1)


def test_a_small_machine_loads_the_ais_weights_without_tensorflow_in_its_process(tiny_world_model, tmp_path):
    """V and M load in a child process that fills the weights cache; the process that asked reads the cache
    and never imports TensorFlow (0.65 GB that would stay in the app's server)."""
    run = tmp_path / "model"
    for part in ("vae", "rnn", "controller"):
        shutil.copytree(tiny_world_model / part, run / part, ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    cache = tmp_path / "cache"
    env = dict(os.environ, **{SMALL_MACHINE_ENV: "1", weights_cache.CACHE_ENV: str(cache)})
    code = ("import sys, numpy as np; from core.models.agent import load_world_model_weights; "
            "w = load_world_model_weights(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; "
            "np.savez(sys.argv[2], **w)")
    subprocess.run([sys.executable, "-c", code, str(run), str(tmp_path / "w.npz")], cwd=ROOT, env=env, check=True,
                   timeout=300)
    assert len(list(cache.iterdir())) == 1  # the child filled the cache
    from core.models.agent import extract_weights
    from core.models.mdnrnn import load_rnn
    from core.models.vae import load_vae
    vae = load_vae(run / "vae")
    expected = extract_weights(vae, load_rnn(run / "rnn", expect_z=vae.z_size))
    with np.load(tmp_path / "w.npz") as got:
        assert sorted(got.files) == sorted(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
