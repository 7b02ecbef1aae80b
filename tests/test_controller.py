import json

import numpy as np
import pytest

from core.controller import Controller, num_params, squash


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


def test_a_new_evolution_can_start_from_a_trained_controller(tiny_world_model, tmp_path):
    """--init-from puts a fresh CMA-ES mean at a trained controller (say, to restart with another
    population size); a controller for another world model is refused with a clear message."""
    from core.artifacts import ArtifactError
    from core.config import EvolveConfig
    from core.controller import load_controller, save_params
    from core.evolve import new_es
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
