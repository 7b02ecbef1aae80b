"""Episodes on a Ray cluster (core.pipeline.cluster) against the local pool, on Ray's own multi-node harness:
one module-wide cluster on this machine (a head without CPUs, two worker nodes of one CPU each).

The same seeds and settings give the same results on both backends: an evaluation, an evolution, an evolution
resumed on the other backend, an evolution that loses a node mid-generation, and a collection. A full cluster
and one that goes away give a ClusterError in bounded time, and the run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.app.cluster_view import cluster_summary
from core.config import CollectConfig, EvaluateConfig, EvolveConfig
from core.pipeline import cluster as cluster_module
from core.pipeline.cluster import TIMEOUT_ENV, ClusterError, RayPool, ray_installed
from core.pipeline.collect import collect
from core.pipeline.evaluate import evaluate
from core.pipeline.evolve import evolve
from core.pipeline.rollout import _init_worker
from core.storage.dataset import list_episodes, load_episode
from tests.conftest import TEST_ENV

TIMING = ("seconds", "episodes_per_hour")  # the history's wall-clock fields, which differ from run to run
# An evolution whose generations take a few seconds on two workers: long enough to lose a node in one.
EVOLVE = {"popsize": 4, "rollouts": 2, "max_steps": 40, "early_stop": False, "eval_every": 2, "eval_episodes": 1,
          "confirm_episodes": 0, "seed": 3, "env": TEST_ENV}


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node with no CPU (it runs no worker) and two worker nodes of one CPU, on this machine."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def fresh_run(tiny_world_model: Path, folder: Path) -> Path:
    """A run folder with the tiny V and M and no controller yet."""
    for part in ("vae", "rnn"):
        shutil.copytree(tiny_world_model / part, folder / part, ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    return folder


def run_evolution(run: Path, generations: int, address: str = "", on_progress=None) -> None:
    config = EvolveConfig(run_dir=str(run), generations=generations, workers=1, ray_address=address, **EVOLVE)
    evolve(config, on_progress) if on_progress else evolve(config)


def outcome(run: Path) -> dict:
    """What an evolution has done: its history without wall-clock times, its CMA-ES mean and kept controller."""
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "controller" / "history.jsonl").read_text().splitlines()]
    with np.load(run / "controller" / "latest.npz") as latest, np.load(run / "controller" / "params.npz") as kept:
        return {"history": history, "mean": latest["mean"].tolist(), "params": {k: kept[k].tolist() for k in kept}}


@pytest.fixture(scope="module")
def local_evolution(tiny_world_model, tmp_path_factory) -> dict[int, Path]:
    """The local pool's evolution, as it stood after generations 1 and 2 (the second with an evaluation)."""
    run = fresh_run(tiny_world_model, tmp_path_factory.mktemp("local") / "run")
    stages = {}
    for generation in (1, 2):
        run_evolution(run, generation)
        stages[generation] = shutil.copytree(run, tmp_path_factory.mktemp(f"local{generation}") / "run")
    return stages


def evaluation(model: Path, out: Path, address: str = "", on_progress=None) -> dict:
    config = EvaluateConfig(model_dir=str(model), episodes=20, max_steps=30, workers=1, env=TEST_ENV, out=str(out),
                            ray_address=address)
    return evaluate(config, on_progress) if on_progress else evaluate(config)


PER_EPISODE = ("returns", "seeds", "steps", "tiles", "skipped", "ended", "endings", "mean", "std", "complete")


@pytest.fixture(scope="module")
def local_report(tiny_world_model, tmp_path_factory) -> dict:
    return evaluation(tiny_world_model, tmp_path_factory.mktemp("eval") / "local.json")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tiny_world_model, tmp_path):
    monkeypatch.setattr(cluster_module, "ray_installed", lambda: False)
    with pytest.raises(ClusterError, match=r"pip install -r requirements-cluster\.txt"):
        evaluation(tiny_world_model, tmp_path / "report.json", address="auto")
    assert not (tmp_path / "report.json").exists()


@pytest.mark.skipif(not ray_installed(), reason="Ray is not installed")
@pytest.mark.parametrize("address, reason", [("127.0.0.1:1", "nothing listens on port 1 of 127.0.0.1"),
                                             ("ray://127.0.0.1", "nothing listens on port 10001 of 127.0.0.1"),
                                             ("no-such-host.invalid:6379", "the host no-such-host.invalid is unknown")])
def test_an_address_where_nothing_answers_is_an_error_at_once(address, reason, tiny_world_model, tmp_path):
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"--ray-address {address}: cannot connect to a Ray cluster there "
                                           rf"\({reason}\); start one with `ray start --head`"):
        evaluation(tiny_world_model, tmp_path / "report.json", address=address)
    assert time.monotonic() - started < 3 and not (tmp_path / "report.json").exists()
    assert not (tmp_path / "report.json.partial").exists()


@pytest.mark.ray
@pytest.mark.skipif(not ray_installed(), reason="Ray is not installed: pip install -r requirements-cluster.txt "
                                                "(requirements-dev.txt includes it)")
class TestOnRay:
    def test_an_evaluation_on_ray_is_the_local_one(self, ray_cluster, tiny_world_model, local_report, tmp_path):
        report = evaluation(tiny_world_model, tmp_path / "ray.json", ray_cluster.address)
        assert report["episodes"] == 20
        assert {k: report[k] for k in PER_EPISODE} == {k: local_report[k] for k in PER_EPISODE}

    def test_an_evolution_on_ray_is_the_local_one_and_resumes_here(self, ray_cluster, tiny_world_model,
                                                                   local_evolution, tmp_path):
        run = fresh_run(tiny_world_model, tmp_path / "run")
        run_evolution(run, 1, ray_cluster.address)
        assert outcome(run) == outcome(local_evolution[1])
        run_evolution(run, 2)  # Ray -> local
        assert outcome(run) == outcome(local_evolution[2])

    def test_an_evolution_resumed_on_ray_goes_on_as_before(self, ray_cluster, local_evolution, tmp_path):
        run = shutil.copytree(local_evolution[1], tmp_path / "run")
        run_evolution(run, 2, ray_cluster.address)  # local -> Ray, a generation with an evaluation
        assert outcome(run) == outcome(local_evolution[2])
        assert "eval_mean_params" in outcome(run)["history"][-1]  # the gate drove on Ray too

    def test_a_collection_on_ray_writes_the_local_episodes(self, ray_cluster, tmp_path):
        for where, address in (("local", ""), ("ray", ray_cluster.address)):
            collect(CollectConfig(out_dir=str(tmp_path / where), episodes=3, max_steps=20, workers=1, env=TEST_ENV,
                                  ray_address=address))
        local, ray = list_episodes(tmp_path / "local"), list_episodes(tmp_path / "ray")
        assert [p.name for p in ray] == [p.name for p in local] and len(ray) == 3
        for a, b in zip(local, ray):
            ea, eb = load_episode(a), load_episode(b)
            assert ea.seed == eb.seed
            for key in ("obs", "action", "reward", "terminated", "truncated"):
                assert np.array_equal(getattr(ea, key), getattr(eb, key)), (a.name, key)

    def test_the_app_sees_the_clusters_nodes_and_cpus(self, ray_cluster):
        summary = cluster_summary(ray_cluster.address)
        assert {k: summary[k] for k in ("nodes", "cpus", "free_cpus")} == {"nodes": 3, "cpus": 2, "free_cpus": 2}
        assert summary["dashboard"] == ""  # Ray without ray[default] has none
        started = time.monotonic()
        assert "nothing listens on port 1 of 127.0.0.1" in cluster_summary("127.0.0.1:1")["error"]
        assert time.monotonic() - started < 3  # known at once, where Ray would try for 10 s

    def test_a_full_cluster_is_an_error_in_bounded_time(self, ray_cluster, monkeypatch):
        with RayPool(ray_cluster.address, _init_worker, (None,)) as hog:
            assert hog.info["workers"] == hog.info["cpus"] == 2
            monkeypatch.setenv(TIMEOUT_ENV, "3")
            started = time.monotonic()
            with pytest.raises(ClusterError, match=r"no Ray worker could start within 3 s \(the cluster has 2 CPUs"):
                RayPool(ray_cluster.address, _init_worker, (None,))
            assert time.monotonic() - started < 40

    def test_a_node_lost_mid_generation_changes_nothing(self, ray_cluster, tiny_world_model, local_evolution,
                                                        tmp_path, caplog):
        """Generation 2 loses one of the two worker nodes a moment after it starts: its episodes run again on
        the other, and the evolution is the local one."""
        run = fresh_run(tiny_world_model, tmp_path / "run")
        victim = next(iter(ray_cluster.worker_nodes))
        removal = threading.Timer(0.2, ray_cluster.remove_node, [victim])

        def progress(generation, total, metrics):
            if generation == 1:
                removal.start()
            return True

        try:
            with caplog.at_level(logging.WARNING, logger="core.pipeline.cluster"):
                run_evolution(run, 2, ray_cluster.address, progress)
        finally:
            removal.join()
            ray_cluster.add_node(num_cpus=1)  # back to two worker nodes for the tests after this one
            ray_cluster.wait_for_nodes()
        assert "a Ray worker was lost" in caplog.text  # the node went while the generation ran
        assert outcome(run) == outcome(local_evolution[2])

    def test_a_cluster_that_goes_away_is_an_error_and_the_run_resumes(self, ray_cluster, tiny_world_model,
                                                                      local_report, tmp_path, monkeypatch):
        """Last of the module: the cluster is shut down after the first episode of an evaluation."""
        monkeypatch.setenv(TIMEOUT_ENV, "15")  # the time a worker gets to start, on a loaded machine too
        out, timing = tmp_path / "report.json", {}

        def progress(done, total, metrics):
            if done == 1 and not timing:
                ray_cluster.shutdown()
                timing["gone"] = time.monotonic()
            return True

        # Ray's driver either sees every worker go, or is ended by Ray when its node goes: the same error either way.
        with pytest.raises(ClusterError, match=r"gone\b.*run the same command again to resume"):
            evaluation(tiny_world_model, out, ray_cluster.address, progress)
        assert time.monotonic() - timing["gone"] < 40
        assert not out.exists() and out.with_name(out.name + ".partial").exists()  # the episodes driven so far
        report = evaluation(tiny_world_model, out)  # resumed here, on the local pool
        assert {k: report[k] for k in PER_EPISODE} == {k: local_report[k] for k in PER_EPISODE}
