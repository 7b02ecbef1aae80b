import json

import numpy as np
import pytest

from core.models.controller import Controller, num_params, squash


def test_paper_controller_has_867_parameters():
    assert num_params(32, 256) == 867
    assert Controller(32, 256).n_params == 867


def test_squash_keeps_actions_in_env_ranges():
    raw = np.random.default_rng(0).normal(scale=100, size=(10000, 3))
    a = squash(raw)
    assert a.dtype == np.float32
    assert a[:, 0].min() >= -1 and a[:, 0].max() <= 1
    assert a[:, 1].min() >= 0 and a[:, 1].max() <= 1
    assert a[:, 2].min() >= 0 and a[:, 2].max() <= 1
    # The paper's squashing: steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1).
    np.testing.assert_allclose(squash(np.array([0.0, 0.0, -2.0])), [0.0, 0.5, 0.0])
    np.testing.assert_allclose(squash(np.array([0.5, 0.5, 0.5])),
                               [np.tanh(0.5), (np.tanh(0.5) + 1) / 2, np.tanh(0.5)], rtol=1e-6)


def test_params_round_trip_and_linear_act():
    rng = np.random.default_rng(2)
    c = Controller(4, 6)
    flat = rng.normal(size=c.n_params).astype(np.float32)
    c.set_params(flat)
    np.testing.assert_array_equal(c.get_params(), flat)
    z, h = rng.normal(size=4).astype(np.float32), rng.normal(size=6).astype(np.float32)
    w = flat[:30].reshape(3, 10)
    np.testing.assert_allclose(c.act(z, h), squash(w @ np.concatenate([z, h]) + flat[30:]), rtol=1e-5)


def test_wrong_parameter_count_is_refused():
    with pytest.raises(ValueError, match="takes 33 parameters, got 5"):
        Controller(4, 6, np.zeros(5))


def test_a_controller_file_is_read_from_params_or_an_evolutions_mean(tmp_path):
    from core.models.controller import load_params_file, params_sha256, save_params
    from core.storage.artifacts import ArtifactError
    n = num_params(4, 6)
    params = np.linspace(-1, 1, n).astype(np.float32)
    save_params(tmp_path, params, 4, 6)
    loaded, source = load_params_file(tmp_path / "params.npz", 4, 6)
    assert np.array_equal(loaded, params) and source["key"] == "params" and "generation" not in source
    np.savez(tmp_path / "latest.npz", mean=params * 2, best_candidate=params, average=params * 4,
             generation=np.int64(7))  # as an evolution writes it: its CMA-ES mean is what it names
    loaded, source = load_params_file(tmp_path / "latest.npz", 4, 6)
    assert np.array_equal(loaded, params * 2) and source == {
        "file": str(tmp_path / "latest.npz"), "key": "mean", "params_sha256": params_sha256(params * 2),
        "generation": 7}
    np.savez(tmp_path / "average.npz", average=params * 3, generation=np.int64(8))  # a snapshot's
    loaded, source = load_params_file(tmp_path / "average.npz", 4, 6)
    assert np.array_equal(loaded, params * 3) and source["key"] == "average" and source["generation"] == 8
    with pytest.raises(ArtifactError, match=r"h = 8\) needs 39"):  # another world model's controller
        load_params_file(tmp_path / "params.npz", 4, 8)
    np.savez(tmp_path / "other.npz", weights=params)
    with pytest.raises(ArtifactError, match="no controller parameters"):
        load_params_file(tmp_path / "other.npz", 4, 6)
    np.savez(tmp_path / "nan.npz", params=np.full(n, np.nan, np.float32))
    with pytest.raises(ArtifactError, match="not all finite"):
        load_params_file(tmp_path / "nan.npz", 4, 6)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_params_file(tmp_path / "broken.npz", 4, 6)
    with pytest.raises(ArtifactError, match="no such file"):
        load_params_file(tmp_path / "missing.npz", 4, 6)


def test_a_new_evolution_can_start_from_a_trained_controller(tiny_world_model, tmp_path):
    """--init-from puts a fresh CMA-ES mean at a trained controller (say, to restart with another
    population size); a controller for another world model is refused with a clear message."""
    from core.config import EvolveConfig
    from core.models.controller import load_controller, save_params
    from core.pipeline.evolve import new_es
    from core.storage.artifacts import ArtifactError
    config = json.loads((tiny_world_model / "controller" / "config.json").read_text())
    z, h = config["z_size"], config["hidden"]
    trained = load_controller(tiny_world_model / "controller", z, h).get_params()
    es = new_es(EvolveConfig(popsize=6, init_from=str(tiny_world_model / "controller")), z, h)
    np.testing.assert_array_equal(es.mean, trained.astype(np.float64))
    assert es.popsize == 6
    assert not new_es(EvolveConfig(), z, h).mean.any()  # no --init-from: the paper's zero start
    save_params(tmp_path, np.zeros(3 * (z + 1 + h) + 3, np.float32), z + 1, h)
    with pytest.raises(ArtifactError, match="controller expects z"):
        new_es(EvolveConfig(init_from=str(tmp_path)), z, h)


def _forget_in_state(controller_dir, key: str) -> None:
    """Make a saved evolution look like one from before ``key`` was kept: gone from state.json and from
    the state in its CMA-ES checkpoint."""
    state = json.loads((controller_dir / "state.json").read_text())
    del state[key]
    (controller_dir / "state.json").write_text(json.dumps(state))
    edit_checkpoint(controller_dir, lambda document, arrays: document["state"].pop(key))


def edit_checkpoint(controller_dir, change) -> None:
    """Rewrite the evolution checkpoint (cma_state.npz) after ``change(document, arrays)`` edits its parts."""
    from core.storage.artifacts import atomic_save_arrays_json, load_arrays_json
    document, arrays = load_arrays_json(controller_dir / "cma_state.npz", "checkpoint")
    change(document, arrays)
    atomic_save_arrays_json(controller_dir / "cma_state.npz", document, arrays)


def _tiny_run(tiny_world_model, run):
    import shutil
    for part in ("vae", "rnn"):
        shutil.copytree(tiny_world_model / part, run / part)
    return run / "controller"


def test_a_resumed_evolution_draws_what_an_uninterrupted_one_would(tiny_world_model, tmp_path):
    """The random state CMA-ES samples candidates from travels in the checkpoint: a resumed run draws the
    candidates, scores and shipped parameters of an uninterrupted one, whatever else drew from NumPy."""
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV
    config = dict(popsize=4, rollouts=1, max_steps=12, eval_every=2, eval_episodes=1, workers=1, env=TEST_ENV)
    straight = _tiny_run(tiny_world_model, tmp_path / "straight")
    evolve(EvolveConfig(run_dir=str(straight.parent), generations=3, **config))
    resumed = _tiny_run(tiny_world_model, tmp_path / "resumed")
    evolve(EvolveConfig(run_dir=str(resumed.parent), generations=2, **config))
    import numpy as np
    np.random.seed(12345)  # another process, or anything else drawing from NumPy in between
    evolve(EvolveConfig(run_dir=str(resumed.parent), generations=3, **config))
    keys = ("generation", "best", "mean", "worst", "sigma", "steps", "eval_mean_params", "eval_mean_average")
    runs = [[{k: r.get(k) for k in keys} for r in read_history(c / "history.jsonl")] for c in (straight, resumed)]
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert (straight / "params.npz").read_bytes() == (resumed / "params.npz").read_bytes()
    state = json.loads((straight / "state.json").read_text())
    assert state["env_steps"] == sum(r["steps"] + r.get("eval_steps", 0) for r in read_history(straight / "history.jsonl"))
    # Each generation says how its rollouts ended: 12 steps finish no lap and skip no tile.
    assert all(r["laps"] == 0.0 and r["skipped"] == 0.0 for r in read_history(straight / "history.jsonl"))


def test_a_step_size_cap_holds_from_the_first_generation_and_on_a_resumed_run(tiny_world_model, tmp_path):
    """Without a cap the step size stays near sigma0 over a few generations; with one it never exceeds it,
    including when the cap is first given to a resumed run."""
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV
    config = dict(popsize=4, rollouts=1, max_steps=12, eval_every=0, workers=1, env=TEST_ENV, sigma0=0.1)
    free = _tiny_run(tiny_world_model, tmp_path / "free")
    evolve(EvolveConfig(run_dir=str(free.parent), generations=2, **config))
    assert all(r["sigma"] > 0.05 for r in read_history(free / "history.jsonl"))
    capped = _tiny_run(tiny_world_model, tmp_path / "capped")
    evolve(EvolveConfig(run_dir=str(capped.parent), generations=2, max_sigma=0.02, **config))
    # Capped before the first generation's candidates, so its step size is at most the cap after their update.
    assert all(0.01 < r["sigma"] <= r["max_std"] <= 0.02 for r in read_history(capped / "history.jsonl"))
    evolve(EvolveConfig(run_dir=str(free.parent), generations=3, max_sigma=0.03, **config))
    assert 0.01 < read_history(free / "history.jsonl")[-1]["max_std"] <= 0.03


def test_the_averaged_mean_is_the_plain_average_then_an_exponential_one():
    """With a span of 7 each new mean ends up weighing 2/8, as much as the lag of a 7-generation window."""
    from core.pipeline.evolve import update_average
    means = [np.full(3, float(v)) for v in (1, 2, 3, 4, 10, 20)]
    average = None
    for m in means[:4]:
        average = update_average(average, m, span=7)
    assert average[1] == 4 and np.allclose(average[0], 2.5)  # the first four: their plain average
    average = update_average(average, means[4], span=7)
    assert np.allclose(average[0], 2.5 + (10 - 2.5) / 4)  # then each new mean weighs 2 / (7 + 1)
    assert update_average(average, means[5], span=0) is None and update_average(average, means[5], span=1) is None


def test_the_averaged_mean_is_set_against_the_mean_evaluation_by_evaluation():
    from core.pipeline.evolve import average_against_mean
    records = [{"generation": 5, "eval_mean_params": 700.0},  # before the average was kept
               {"generation": 10, "eval_mean_params": 700.0, "eval_mean_average": 730.0},
               {"generation": 15, "eval_mean_params": 760.0, "eval_mean_average": 750.0},
               {"generation": 16, "best": 800.0}]
    assert average_against_mean(records) == {"evaluations": 2, "lead": 10.0, "won": 1}
    assert average_against_mean(records[:1]) is None


def test_an_evolution_averages_its_mean_across_resumes_and_evaluates_the_average(tiny_world_model, tmp_path):
    """The averaged mean travels in the checkpoint: after three generations, stopped and resumed after each,
    it is the plain average of the three means (all fewer than ``average``), and it is evaluated with the
    mean and the best candidate. ``--average 0`` keeps none."""
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV
    config = dict(popsize=4, rollouts=1, max_steps=12, eval_every=3, eval_episodes=1, workers=1, env=TEST_ENV)
    ctrl = _tiny_run(tiny_world_model, tmp_path / "run")
    means = []
    for gen in (1, 2, 3):
        evolve(EvolveConfig(run_dir=str(ctrl.parent), generations=gen, average=5, **config))
        latest = np.load(ctrl / "latest.npz")
        means.append(latest["mean"].astype(np.float64))
    assert not np.allclose(means[0], means[2])
    assert np.allclose(latest["average"], np.mean(means, axis=0), atol=1e-6)
    record = read_history(ctrl / "history.jsonl")[-1]
    assert {"eval_mean_params", "eval_best_candidate", "eval_mean_average"} <= set(record)
    assert record["eval_pick"] in ("eval_mean_params", "eval_best_candidate", "eval_mean_average")
    assert json.loads((ctrl / "state.json").read_text())["episodes"] == 3 * 4 + 3  # three evaluated on one track
    from core.storage.artifacts import ArtifactError
    edit_checkpoint(ctrl, lambda document, arrays: document.update(average_generations=0))
    with pytest.raises(ArtifactError, match="averaged mean does not fit"):
        evolve(EvolveConfig(run_dir=str(ctrl.parent), generations=4, average=5, **config))
    off = _tiny_run(tiny_world_model, tmp_path / "off")
    evolve(EvolveConfig(run_dir=str(off.parent), generations=3, average=0, **config))
    assert "average" not in np.load(off / "latest.npz")
    assert json.loads((off / "state.json").read_text())["episodes"] == 3 * 4 + 2
    assert "eval_mean_average" not in read_history(off / "history.jsonl")[-1]


def test_a_kill_anywhere_in_a_checkpoint_resumes_from_the_cma_state(tiny_world_model, tmp_path):
    """The CMA-ES checkpoint (cma_state.npz) carries the run's counters and the parameters to ship, and is
    written before params.npz and state.json: whichever of those a kill left behind, the run resumes from
    it, runs no generation twice and counts every episode once. A pickle of a bare CMA-ES (older runs),
    converted with its state.json as --trust-pickle does, still resumes."""
    import pickle

    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV
    ctrl = _tiny_run(tiny_world_model, tmp_path / "run")
    config = dict(run_dir=str(ctrl.parent), popsize=4, rollouts=1, max_steps=12, eval_every=0, workers=1,
                  env=TEST_ENV)
    (ctrl).mkdir()
    (ctrl / "history.jsonl").write_text('{"generation": 1, "best": 1.0}\n')  # killed in generation 1
    evolve(EvolveConfig(generations=1, **config))
    assert [r["generation"] for r in read_history(ctrl / "history.jsonl")] == [1]
    state_1, params_1 = (ctrl / "state.json").read_text(), (ctrl / "params.npz").read_bytes()
    evolve(EvolveConfig(generations=2, **config))
    episodes_2, params_2 = json.loads((ctrl / "state.json").read_text())["episodes"], (ctrl / "params.npz").read_bytes()
    assert params_2 != params_1
    # Killed after the checkpoint of generation 2, before its params.npz and state.json.
    (ctrl / "state.json").write_text(state_1)
    (ctrl / "params.npz").write_bytes(params_1)
    assert evolve(EvolveConfig(generations=2, **config))["resumed_from"] == 2
    assert (ctrl / "params.npz").read_bytes() == params_2
    out = evolve(EvolveConfig(generations=3, **config))
    assert out["resumed_from"] == 2 and out["episodes"] == episodes_2 + 4
    assert [r["generation"] for r in read_history(ctrl / "history.jsonl")] == [1, 2, 3]
    assert json.loads((ctrl / "state.json").read_text())["generation"] == 3

    (ctrl / "state.json").unlink()  # killed before a first state.json: the checkpoint alone resumes
    assert evolve(EvolveConfig(generations=4, **config))["resumed_from"] == 3

    from core.pipeline.evolve import _load_es, convert_pickled_checkpoint
    (ctrl / "cma_state.pkl").write_bytes(pickle.dumps(_load_es(ctrl)[0]))  # the oldest format: CMA-ES alone
    (ctrl / "cma_state.npz").unlink()
    assert convert_pickled_checkpoint(ctrl.parent) and not (ctrl / "cma_state.pkl").exists()
    out = evolve(EvolveConfig(generations=5, **config))
    assert out["resumed_from"] == 4 and out["generation"] == 5
    assert [r["generation"] for r in read_history(ctrl / "history.jsonl")] == [1, 2, 3, 4, 5]


def test_an_evolution_from_a_trained_controller_keeps_its_lineage(tiny_world_model, tmp_path):
    """--init-from records where the controller came from and what it had cost, through any number of
    restarts, and still does after the parent folder is replaced (then only its hash is known)."""
    import shutil

    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve, params_sha256
    from tests.conftest import TEST_ENV
    settings = dict(popsize=4, rollouts=1, max_steps=12, eval_every=0, workers=1, env=TEST_ENV)
    parent = json.loads((tiny_world_model / "controller" / "state.json").read_text())
    child = _tiny_run(tiny_world_model, tmp_path / "child")
    evolve(EvolveConfig(run_dir=str(child.parent), generations=1, init_from=str(tiny_world_model / "controller"),
                        **settings))
    with np.load(tiny_world_model / "controller" / "params.npz") as f, np.load(child / "params.npz") as g:
        assert not np.array_equal(f["params"], g["params"])  # no evaluations (eval_every 0): it ships the mean
    (first,) = json.loads((child / "state.json").read_text())["lineage"]
    assert first["generation"] == parent["generation"] and first["episodes"] == parent["episodes"]
    assert first["env_steps"] == parent["env_steps"] and first["popsize"] > 0
    with np.load(tiny_world_model / "controller" / "params.npz") as f:
        assert first["params_sha256"] == params_sha256(f["params"])

    grandchild = _tiny_run(tiny_world_model, tmp_path / "grandchild")
    evolve(EvolveConfig(run_dir=str(grandchild.parent), generations=1, init_from=str(child), **settings))
    lineage = json.loads((grandchild / "state.json").read_text())["lineage"]
    assert lineage[0] == first and lineage[1]["generation"] == 1 and lineage[1]["episodes"] == 4

    # A run from before lineages were kept gets its lineage when it resumes, from the start in its config;
    # if that folder holds another controller by then, only the start's hash is known.
    for replaced in (False, True):
        run = tmp_path / f"old{replaced}"
        shutil.copytree(child.parent, run)
        _forget_in_state(run / "controller", "lineage")
        source = tmp_path / f"source{replaced}"
        shutil.copytree(tiny_world_model / "controller", source)
        config = json.loads((run / "controller" / "config.json").read_text())
        (run / "controller" / "config.json").write_text(json.dumps({**config, "init_from": str(source)}))
        if replaced:
            with np.load(source / "params.npz") as f:
                np.savez(source / "params.npz", **{**f, "params": f["params"] + 1})
        evolve(EvolveConfig(run_dir=str(run), generations=2, **settings))
        (entry,) = json.loads((run / "controller" / "state.json").read_text())["lineage"]
        assert entry["params_sha256"] == first["params_sha256"]
        assert ("generation" in entry) is (not replaced)


class _ScriptedPool:
    """A rollout pool whose episodes return ``quality(params) + seed % 7``: every track is as much harder or
    easier for all controllers. ``quality``: the first parameter unless set."""

    quality = staticmethod(lambda params: float(params[0]))

    def __init__(self):
        self.driven = []

    def map(self, tasks):
        from core.pipeline.rollout import RolloutResult
        for params, seed in tasks:
            self.driven.append((float(params[0]), seed))
            yield RolloutResult(seed, self.quality(params) + (seed % 7), 10, False, 1)


class _StandInPool(_ScriptedPool):
    """A scripted pool that stands in for ``RolloutPool`` in an evolution; a subclass's ``instances`` lists
    the pools made (the training pool first, then the evaluation pool)."""

    instances: list

    def __init__(self, *args):
        super().__init__()
        self.instances.append(self)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_fresh_tracks_measure_each_challenger_against_the_shipped_controller_on_new_tracks(tiny_world_model,
                                                                                          tmp_path, monkeypatch):
    """With fresh tracks each periodic evaluation drives the next tracks, the shipped controller with the
    candidates (its score there is the bar), and a second test drives new confirmation tracks; without,
    the same tracks every time and the shipped controller's score from when it was picked."""
    import core.pipeline.rollout
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.pipeline.gate import CONFIRM_SEED_BASE, TRAIN_EVAL_SEED_BASE, next_tracks
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV

    class Pool(_StandInPool):
        instances: list = []

    monkeypatch.setattr(core.pipeline.rollout, "RolloutPool", Pool)  # the pools evolve opens (rollout_pools)
    settings = dict(generations=6, popsize=6, rollouts=1, sigma0=1.0, eval_every=2, eval_episodes=2,
                    confirm_episodes=3, confirm_margin=0.0, workers=1, env=TEST_ENV)
    for fresh in (True, False):
        Pool.instances.clear()
        config = EvolveConfig(run_dir=str(_tiny_run(tiny_world_model, tmp_path / f"run{fresh}").parent),
                              fresh_tracks=fresh, **settings)
        evolve(config)
        ctrl = config.out_dir
        evaluations = [r for r in read_history(ctrl / "history.jsonl") if "eval_mean_params" in r]
        assert [r["generation"] for r in evaluations] == [2, 4, 6]
        firsts = [r["eval_first_seed"] for r in evaluations]
        eval_driven = {seed for pool in Pool.instances[1:] for _, seed in pool.driven}
        if fresh:
            assert firsts == [TRAIN_EVAL_SEED_BASE, TRAIN_EVAL_SEED_BASE + 2, TRAIN_EVAL_SEED_BASE + 4]
            tests = [r["confirm_first_seed"] for r in evaluations if "confirm_first_seed" in r]
            assert tests == [CONFIRM_SEED_BASE + 3 * i for i in range(len(tests))]  # each test on new tracks
            state = json.loads((ctrl / "state.json").read_text())
            assert state["tracks_next"] == {"periodic": 6, "confirm": 3 * len(tests)}
            assert next_tracks(config, state["tracks_next"], "periodic") == [TRAIN_EVAL_SEED_BASE + 6,
                                                                             TRAIN_EVAL_SEED_BASE + 7]
            # Nothing to defend at the first evaluation; after it the shipped controller drives every one.
            assert "eval_shipped" not in evaluations[0]
            assert all("eval_shipped" in r for r in evaluations[1:])
            assert any("confirm_challenger" in r for r in evaluations[1:])
            for r in evaluations[1:]:  # a challenger got a second test only if it beat the shipped one there
                picked = r[r["eval_pick"]]
                assert ("confirm_challenger" in r) == (picked > r["eval_shipped"])
                if "confirm_challenger" in r:
                    tracks = range(r["confirm_first_seed"], r["confirm_first_seed"] + 3)
                    assert set(tracks) <= eval_driven and r["confirm_driven"] == 2 * len(tracks)
        else:
            assert firsts == [TRAIN_EVAL_SEED_BASE] * 3
            assert not any("eval_shipped" in r for r in evaluations)
            state = json.loads((ctrl / "state.json").read_text())
            fixed = ({TRAIN_EVAL_SEED_BASE, TRAIN_EVAL_SEED_BASE + 1}
                     | set(next_tracks(config, state["tracks_next"], "confirm")))
            assert eval_driven <= fixed
            tested = any("confirm_first_seed" in r for r in evaluations)
            assert state["tracks_next"] == {"periodic": 2, "confirm": 3 if tested else 0}  # the tracks it drove
            # Resumed with fresh tracks, it starts after them (the shipped controller was picked on those).
            evolve(EvolveConfig(run_dir=config.run_dir, **{**settings, "generations": 8}))
            resumed = read_history(ctrl / "history.jsonl")[-1]
            assert resumed["generation"] == 8 and resumed["eval_first_seed"] == TRAIN_EVAL_SEED_BASE + 2

    # Resumed with other evaluation settings, an evolution never drives the same fresh tracks twice; a state
    # from before fresh tracks were counted starts past the first 1000 tracks of each range.
    run = tmp_path / "runTrue"
    evolve(EvolveConfig(run_dir=str(run), **{**settings, "generations": 9, "eval_every": 3}))
    later = [r for r in read_history(run / "controller" / "history.jsonl") if "eval_first_seed" in r]
    assert [r["eval_first_seed"] for r in later][3:] == [TRAIN_EVAL_SEED_BASE + 6]
    _forget_in_state(run / "controller", "tracks_next")
    evolve(EvolveConfig(run_dir=str(run), **{**settings, "generations": 12, "eval_every": 3}))
    last = read_history(run / "controller" / "history.jsonl")[-1]
    assert last["generation"] == 12 and last["eval_first_seed"] == TRAIN_EVAL_SEED_BASE + 1000


def test_an_evolution_from_a_trained_controller_ships_it_until_something_beats_it(tiny_world_model, tmp_path,
                                                                                monkeypatch):
    """Episodes scripted: a controller's return is how close its first parameter is to a peak (plus the
    track's offset). The start controller is evaluated with the first periodic evaluation and stays shipped
    while nothing beats it; a challenger that beats it there is tested again on the confirmation tracks
    before it is shipped."""
    import shutil

    import core.pipeline.rollout
    from core.config import EvolveConfig
    from core.models.controller import load_controller, save_params
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV

    class Pool(_StandInPool):
        instances: list = []

    monkeypatch.setattr(core.pipeline.rollout, "RolloutPool", Pool)  # the pools evolve opens (rollout_pools)
    config = json.loads((tiny_world_model / "controller" / "config.json").read_text())
    z, h = config["z_size"], config["hidden"]
    start_dir = tmp_path / "start"
    shutil.copytree(tiny_world_model / "controller", start_dir)
    settings = dict(popsize=6, rollouts=1, sigma0=1.0, eval_every=2, eval_episodes=2, confirm_episodes=3,
                    fresh_tracks=False, workers=1, env=TEST_ENV)  # the tracks' offsets below are those of 0, 1, 2
    for peak, beaten in ((0.0, False), (10.0, True)):  # the best first parameter: the start's, or far from it
        monkeypatch.setattr(Pool, "quality", staticmethod(lambda params, peak=peak: -abs(float(params[0]) - peak)))
        start = np.zeros(num_params(z, h), np.float32)
        start_value = -abs(0.0 - peak)
        save_params(start_dir, start, z, h)
        ctrl = _tiny_run(tiny_world_model, tmp_path / f"run{peak}")
        evolve(EvolveConfig(run_dir=str(ctrl.parent), generations=2, init_from=str(start_dir), **settings))
        first, record = read_history(ctrl / "history.jsonl")
        assert "eval_mean_params" not in first and record["eval_start"] == pytest.approx(start_value + 3.5)
        state = json.loads((ctrl / "state.json").read_text())
        shipped = load_controller(ctrl).get_params()
        if not beaten:  # the start controller holds on the periodic tracks: no second test
            assert np.array_equal(shipped, start) and "confirm_challenger" not in record
            assert state["best_eval"] == record["eval_start"] and state["episodes"] == 2 * 6 + 4 * 2
            continue
        challenger = max(record["eval_mean_params"], record["eval_best_candidate"], record["eval_mean_average"])
        assert record["confirm_shipped"] == pytest.approx(start_value + 1.0)  # tracks 910000..910002: 0, 1, 2
        assert record["confirm_challenger"] > record["confirm_shipped"]
        assert -abs(float(shipped[0]) - peak) == pytest.approx(challenger - 3.5)
        assert state["best_eval"] == challenger and state["confirmed"]["score"] == record["confirm_challenger"]
        assert record["confirm_driven"] == 6 and state["episodes"] == 2 * 6 + 4 * 2 + 6


def test_a_snapshot_freezes_the_mean_or_the_averaged_mean_once(tmp_path):
    """latest.npz is rewritten every generation: a snapshot holds what it held, under its own key, with the
    sizes it was evolved for, named by generation and hash; the same controller is written once, and a
    missing or broken one is explained without leaving a file behind."""
    import json

    from core.models.controller import load_params_file, params_sha256, snapshot_params
    from core.storage.artifacts import ArtifactError
    params = np.linspace(-1, 1, num_params(4, 6)).astype(np.float32)
    (tmp_path / "config.json").write_text(json.dumps({"z_size": 4, "hidden": 6}))
    latest = tmp_path / "latest.npz"
    np.savez(latest, mean=params, best_candidate=params * 0, average=params * 2, generation=np.int64(12))
    mean, average = snapshot_params(tmp_path, "mean"), snapshot_params(tmp_path, "average", tmp_path / "out")
    assert mean.name == f"mean-gen12-{params_sha256(params)[:8]}.npz" and mean.parent == tmp_path
    assert average.name == f"average-gen12-{params_sha256(params * 2)[:8]}.npz" and average.parent.name == "out"
    for path, key, want in ((mean, "mean", params), (average, "average", params * 2)):
        loaded, source = load_params_file(path, 4, 6)
        assert np.array_equal(loaded, want) and source["key"] == key and source["generation"] == 12
    with pytest.raises(ArtifactError, match="z = 4, h = 6"):  # same count of parameters, other sizes
        load_params_file(mean, 6, 4)
    stamp = average.stat().st_mtime_ns
    assert snapshot_params(tmp_path, "average", tmp_path / "out") == average
    assert average.stat().st_mtime_ns == stamp
    np.savez(latest, mean=params + 1, generation=np.int64(12))  # the next generation, no averaged mean kept
    second = snapshot_params(tmp_path, "mean")
    assert second != mean and mean.exists()
    with pytest.raises(ArtifactError, match="no averaged mean .* --which mean"):
        snapshot_params(tmp_path, "average")
    np.savez(latest, mean=params * np.nan, generation=np.int64(13))  # a diverged evolution
    with pytest.raises(ArtifactError, match="not 33 finite numbers"):
        snapshot_params(tmp_path, "mean")
    assert not list(tmp_path.glob("mean-gen13-*"))
    latest.unlink()
    with pytest.raises(ArtifactError, match="first generation"):
        snapshot_params(tmp_path, "mean")


def test_the_shipped_evolution_state_loads_as_it_was_saved():
    """models/controller/state.json, read as a resume reads it, is written back as it was, but for what the
    version that saved it did not keep yet: the lead spreads (read back from its history) and the V and M of
    its last generation (unknown: no generation has run since)."""
    from core.config import EvolveConfig
    from core.models.controller import load_controller
    from core.pipeline.evolve import STATE, _load_es, upgrade_state
    from core.pipeline.gate import spreads_from_history
    from core.storage.artifacts import History, read_json
    from tests.conftest import ROOT
    controller = ROOT / "models" / "controller"
    saved_json = read_json(controller / STATE, "evolution state")
    es, saved, params, _ = _load_es(controller)
    assert saved == saved_json  # the checkpoint's copy is the same
    sizes = read_json(controller / "config.json", "evolution config")
    history = History(controller / "history.jsonl")
    state = upgrade_state(saved, params, es, EvolveConfig(run_dir=str(ROOT / "models")), sizes["z_size"],
                          sizes["hidden"], history)
    written = state.to_json()
    assert {k: v for k, v in written.items() if k not in ("lead_spreads", "world_model_sha256")} == saved_json
    assert written["world_model_sha256"] is None and "lead_spreads" not in saved_json
    assert written["lead_spreads"] == spreads_from_history(history.read(), 1.0) and len(written["lead_spreads"]) > 10
    assert np.array_equal(state.gate.params, load_controller(controller).get_params())
    assert state.gate.start_pending and state.gate.shipped_from == saved_json["shipped"]


def test_an_evolution_state_of_any_earlier_version_is_brought_up_to_date_as_it_is_loaded(tiny_world_model, tmp_path):
    """A state this version wrote reads back whole; one from before ``tracks_next``, ``lineage``,
    ``lead_spreads``, ``shipped_world`` and ``world_model_sha256`` were kept, from a checkpoint without its
    parameters, gets each of them from what the run folder says."""
    import shutil

    from core.config import MAX_TEST_TRACKS, EvolveConfig
    from core.models.controller import load_controller, params_sha256
    from core.pipeline.evolve import STATE, _load_es, upgrade_state
    from core.pipeline.gate import CONFIRM_SEED_BASE
    from core.storage.artifacts import History, read_json
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model / "controller", run / "controller")
    controller = run / "controller"
    sizes = read_json(controller / "config.json", "evolution config")
    z, h = sizes["z_size"], sizes["hidden"]
    es, saved, params, _ = _load_es(controller)
    history = History(controller / "history.jsonl")
    config = EvolveConfig(run_dir=str(run))
    current = upgrade_state(saved, params, es, config, z, h, history)
    assert current.to_json() == saved == read_json(controller / STATE, "evolution state")
    assert np.array_equal(current.gate.params, params)

    source = tmp_path / "source"  # the controller it was started from, replaced since: only its hash is known
    (controller / "config.json").write_text(json.dumps({**sizes, "init_from": str(source), "confirm_margin": 2.0}))
    shutil.copytree(tiny_world_model / "controller", source)
    history.append({"generation": saved["generation"], "confirm_needed": 30.0, "confirm_episodes": 24})
    legacy = {k: v for k, v in saved.items()
              if k not in ("tracks_next", "lineage", "lead_spreads", "shipped_world", "world_model_sha256")}
    record = {"params_sha256": "e" * 64, "score": 1.0, "returns": [0.0, 2.0], "tracks": 2, "max_steps": 1000}
    state = upgrade_state({**legacy, "confirmed": record}, None, es, config, z, h, history)
    assert state.gate.tracks_next == {"periodic": MAX_TEST_TRACKS, "confirm": MAX_TEST_TRACKS}
    assert state.lineage == ({"init_from": str(source), "params_sha256": params_sha256(es.x0)},)
    assert state.gate.lead_spreads == pytest.approx((30.0 * np.sqrt(24) / 2.0,))  # at the run's margin
    assert state.gate.shipped_world is None and state.world_model_sha256 is None
    assert np.array_equal(state.gate.params, load_controller(controller, z, h).get_params())  # its params.npz
    confirmed = state.gate.confirmed  # from before fresh tracks: of the fixed ones
    assert confirmed.first_seed == CONFIRM_SEED_BASE and confirmed.returns == (0.0, 2.0)
    assert confirmed.world_model_sha256 is None
    # A record from before the returns were kept track by track cannot stand in for the shipped controller.
    older = {k: v for k, v in record.items() if k != "returns"}
    assert upgrade_state({**legacy, "confirmed": older}, params, es, config, z, h, history).gate.confirmed is None
    assert set(state.to_json()) == set(saved) | {"confirmed"}  # written in the current format


def test_a_skip_penalty_ranks_candidates_by_their_return_less_their_skipped_tiles():
    """Candidate 1 scores more but skips tiles on both tracks; charged 10 points a tile it falls behind
    candidate 0. Without a penalty the fitness is the mean return."""
    from core.pipeline.evolve import training_fitness
    from core.pipeline.rollout import RolloutResult
    returns = np.array([[900.0, 880.0], [910.0, 900.0]])
    skipped = [[0, 0], [5, 3]]
    results = [RolloutResult(seed=s, total_reward=float(returns[c, s]), steps=1000, early_stopped=False, tiles=280,
                             skipped=skipped[c][s]) for c in range(2) for s in range(2)]  # candidate-major
    assert training_fitness(returns, results, 0.0).tolist() == [890.0, 905.0]
    assert training_fitness(returns, results, 10.0).tolist() == [890.0, 865.0]


def test_an_evolution_with_a_skip_penalty_records_returns_and_keeps_the_penalty_on_resume(tiny_world_model,
                                                                                         tmp_path):
    """The history's best, mean and worst stay mean returns (comparable with any other run's); a resumed
    run keeps the penalty it was started with."""
    from core.cli import stage_values
    from core.config import EvolveConfig
    from core.pipeline.evolve import evolve
    from core.storage.artifacts import read_history
    from tests.conftest import TEST_ENV
    run = _tiny_run(tiny_world_model, tmp_path / "penalised")
    evolve(EvolveConfig(run_dir=str(run.parent), generations=1, skip_penalty=25.0, popsize=4, rollouts=1,
                        max_steps=12, eval_every=0, workers=1, env=TEST_ENV))
    (line,) = read_history(run / "history.jsonl")
    assert line["worst"] <= line["mean"] <= line["best"] and line["skipped"] == 0  # 12 steps skip nothing
    _, values, kept = stage_values(["evolve", "--run-dir", str(run.parent)])
    assert values["skip_penalty"] == 25.0 and "--skip-penalty 25.0" in kept


def test_the_step_size_cap_is_never_exceeded_by_rounding():
    """sigma times max_sigma / largest can land a hair above the cap (0.030000000000000002 for 0.03 in 18% of
    these states before the cap stepped sigma down to the float below); the cap holds exactly."""
    import cma

    from core.pipeline.evolve import cap_step_size
    rng = np.random.default_rng(0)
    for i in range(300):
        es = cma.CMAEvolutionStrategy(rng.normal(size=20), float(rng.uniform(0.01, 0.2)),
                                      {"CMA_diagonal": True, "verbose": -9, "seed": i + 1})
        candidates = es.ask()
        es.tell(candidates, [float(np.sum(x ** 2)) for x in candidates])
        cap = float(rng.choice([0.03, 0.015, 0.02, 0.012, 0.1]))
        cap_step_size(es, cap)
        assert float(np.max(es.stds)) <= cap
