"""The CMA-ES checkpoint as arrays and JSON (core/storage/cma_state.py): it rebuilds the optimizer exactly,
and nothing in a run folder runs code: not the new file, not an old pickle left there."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.storage.artifacts import ArtifactError, atomic_save_arrays_json, load_arrays_json
from core.storage.cma_state import es_from_arrays, es_to_arrays, new_es, new_sampler, same_state, sampler_of
from tests.conftest import ROOT

GENERATIONS_BEFORE, GENERATIONS_AFTER = 5, 3


def fitness(candidates) -> list[float]:
    """A rugged function of the candidates alone, so two processes tell the same values."""
    return [float(np.sum((x - 0.3) ** 2) + np.sin(50 * np.sum(x))) for x in candidates]


def evolved(n: int, diagonal: bool, popsize: int = 16):
    es = new_es(np.zeros(n), 0.1, popsize, diagonal, new_sampler(7))
    for _ in range(GENERATIONS_BEFORE):
        candidates = es.ask()
        es.tell(candidates, fitness(candidates))
    return es


def save(es, path: Path) -> None:
    document, arrays = es_to_arrays(es)
    atomic_save_arrays_json(path, document, arrays)


def load(path: Path, n: int | None = None):
    document, arrays = load_arrays_json(path, "CMA-ES state")
    return es_from_arrays(document, arrays, path, n)


# Another Python loads the file and goes on for GENERATIONS_AFTER generations; it writes what it asked.
GO_ON = """
import sys, numpy as np
from pathlib import Path
from tests.test_cma_state import GENERATIONS_AFTER, fitness, load
es = load(Path(sys.argv[1]))
asked = []
for _ in range(GENERATIONS_AFTER):
    candidates = es.ask()
    asked.append(np.array(candidates))
    es.tell(candidates, fitness(candidates))
np.save(sys.argv[2], np.array(asked))
"""


@pytest.mark.parametrize("n, diagonal", [(867, True), (120, False)], ids=["sep-CMA-ES", "full covariance"])
def test_a_saved_cma_es_asks_what_it_would_have_asked_bit_for_bit(n, diagonal, tmp_path):
    es = evolved(n, diagonal)
    save(es, tmp_path / "es.npz")
    rebuilt = load(tmp_path / "es.npz", n)
    # Every piece of data of the CMA-ES is back: mean, sigma, covariance, paths, step-size control, counters,
    # best so far, fitness history, TPA's injected directions, which attributes share an array...
    assert same_state(rebuilt, es)
    assert sampler_of(rebuilt).get_state()[1].tobytes() == sampler_of(es).get_state()[1].tobytes()
    assert sampler_of(rebuilt) is not sampler_of(es) and sampler_of(rebuilt) is not np.random.mtrand._rand
    assert (rebuilt.countiter, rebuilt.countevals) == (GENERATIONS_BEFORE, GENERATIONS_BEFORE * 16)
    assert (np.shape(getattr(rebuilt.sm, "C", None)) == (n, n)) != diagonal
    # ... and a fresh process that loads the file asks the same candidates as the one that goes on.
    subprocess.run([sys.executable, "-c", GO_ON, str(tmp_path / "es.npz"), str(tmp_path / "asked.npy")],
                   cwd=ROOT, check=True, timeout=120)
    elsewhere = np.load(tmp_path / "asked.npy", allow_pickle=False)
    for generation in range(GENERATIONS_AFTER):
        candidates = es.ask()
        assert np.array(candidates).tobytes() == elsewhere[generation].tobytes(), f"generation {generation}"
        es.tell(candidates, fitness(candidates))
    # The test can fail: one more draw from the sampler and the next candidates differ.
    again = load(tmp_path / "es.npz")
    sampler_of(again).randn()
    assert np.array(again.ask()).tobytes() != np.array(load(tmp_path / "es.npz").ask()).tobytes()


def test_its_own_sampler_draws_what_cma_seeded_the_global_one_with():
    """Runs started before the CMA-ES had a random state of its own draw the same candidates."""
    import cma
    old = cma.CMAEvolutionStrategy(np.zeros(30), 0.1, {"popsize": 8, "seed": 11, "verbose": -9, "CMA_diagonal": True})
    new = new_es(np.zeros(30), 0.1, 8, True, new_sampler(11))
    assert np.array(old.ask()).tobytes() == np.array(new.ask()).tobytes()


def test_the_shipped_cma_state_loads_without_pickle():
    controller = ROOT / "models" / "controller"
    assert not (controller / "cma_state.pkl").exists()
    document, arrays = load_arrays_json(controller / "cma_state.npz", "CMA-ES checkpoint")
    assert document["state"]["generation"] == json.loads((controller / "state.json").read_text())["generation"]
    es = es_from_arrays(document["es"], arrays, controller / "cma_state.npz", 867)
    assert es.countiter == document["state"]["generation"] and np.array(es.ask()).shape == (16, 867)
    assert (controller / "cma_state.npz").stat().st_size < 600_000


class RunsCode:
    """Unpickling this creates the file it names: the proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _swap(document: dict, path: tuple, value) -> dict:
    """``document`` with the node at ``path`` (keys into the JSON tree) replaced by ``value``."""
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


@pytest.mark.parametrize("damage, message", [
    (lambda d: _swap(d, ("tree", "attributes", "opts"), {"dict": [[{"text": "CMA_diagonal"},
                                                                    {"text": "__import__('os')"}]]}),
     "data where the CMA-ES keeps its own"),
    (lambda d: _swap(d, ("tree", "attributes", "integer_centering"), {"text": "print"}), "where the CMA-ES has code"),
    (lambda d: _swap(d, ("tree", "attributes", "best"), {"object": "subprocess.Popen", "attributes": {}}),
     "subprocess.Popen where the CMA-ES has cma.optimization_tools.BestSolution"),
    (lambda d: _swap(d, ("tree", "attributes", "ask"), 3), "names code of CMAEvolutionStrategy"),
    (lambda d: _swap(d, ("tree", "attributes", "__class__"), 3), "not an attribute name"),
    (lambda d: _swap(d, ("tree", "attributes", "mean"), {"array": "es.pc2"}) and
     _swap(d, ("options",), {"popsize": 16, "CMA_diagonal": "yes"}), "options"),
    (lambda d: _swap(d, ("tree", "attributes", "mean"), {"same_as": 10_000}), "refers to node 10000"),
], ids=["options", "code", "class", "method", "dunder", "option-type", "alias"])
def test_a_crafted_state_is_refused_with_the_file_named(damage, message, tmp_path):
    es = evolved(40, True, popsize=8)
    document, arrays = es_to_arrays(es)
    path = tmp_path / "es.npz"
    atomic_save_arrays_json(path, damage(json.loads(json.dumps(document))), arrays)
    with pytest.raises(ArtifactError, match=message) as caught:
        load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_mean_of_the_wrong_size_is_refused(tmp_path):
    es = evolved(40, True, popsize=8)
    document, arrays = es_to_arrays(es)
    atomic_save_arrays_json(tmp_path / "es.npz", document, {**arrays, "es.mean": np.zeros(39)})
    with pytest.raises(ArtifactError, match=r"mean has shape \(39,\), expected \(40,\)"):
        load(tmp_path / "es.npz")
    with pytest.raises(ArtifactError, match=r"start x0 has shape \(40,\), expected \(867,\)"):
        load(tmp_path / "es.npz", 867)


def test_a_pickle_named_like_the_new_file_is_not_unpickled(tmp_path):
    (tmp_path / "cma_state.npz").write_bytes(pickle.dumps(RunsCode(tmp_path / "ran")))
    with pytest.raises(ArtifactError, match="cma_state.npz: CMA-ES checkpoint is unreadable"):
        load_arrays_json(tmp_path / "cma_state.npz", "CMA-ES checkpoint")
    assert not (tmp_path / "ran").exists()


def test_an_old_pickle_in_a_run_folder_is_refused_until_trusted(tmp_path, capsys):
    """Every way in (the CLI's saved settings, a resume, an export) names the pickle and the flag, and runs
    nothing; ``--trust-pickle`` converts a genuine one."""
    from core.cli import main
    from core.config import EvolveConfig, ExportConfig
    from core.pipeline.evolve import _start_or_resume, saved_settings
    from core.pipeline.export import _check_checkpoint_complete
    from core.storage.artifacts import History
    controller = tmp_path / "run" / "controller"
    controller.mkdir(parents=True)
    (controller / "config.json").write_text(json.dumps({"popsize": 4}))
    (controller / "cma_state.pkl").write_bytes(pickle.dumps(RunsCode(tmp_path / "ran")))
    files = {p.name: p.read_bytes() for p in controller.iterdir()}
    expected = rf"{controller / 'cma_state.pkl'}: .* pickle, which is never loaded unasked .* --trust-pickle"
    with pytest.raises(ArtifactError, match=expected):
        saved_settings(tmp_path / "run")
    with pytest.raises(ArtifactError, match=expected):
        _start_or_resume(EvolveConfig(run_dir=str(tmp_path / "run")), 8, 16, History(controller / "history.jsonl"),
                         None)
    with pytest.raises(ArtifactError, match=expected):
        _check_checkpoint_complete(controller, np.zeros(75, np.float32))
    assert main(["evolve", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "--trust-pickle" in error
    assert not (tmp_path / "ran").exists() and {p.name: p.read_bytes() for p in controller.iterdir()} == files
    assert ExportConfig  # export goes through _check_checkpoint_complete above

    # Trusted, a genuine pickle of an earlier version becomes cma_state.npz: the same CMA-ES, the same state.
    es = evolved(75, True, popsize=4)
    state = {"generation": GENERATIONS_BEFORE, "n_params": 75}
    params = np.arange(75, dtype=np.float32)
    (controller / "cma_state.pkl").write_bytes(pickle.dumps({"es": es, "state": state, "params": params,
                                                             "average": (np.ones(75), 3)}))
    from core.pipeline.evolve import _load_es, convert_pickled_checkpoint
    assert convert_pickled_checkpoint(tmp_path / "run") and not (controller / "cma_state.pkl").exists()
    rebuilt, saved, saved_params, average = _load_es(controller)
    assert same_state(rebuilt, es) and saved == state and np.array_equal(saved_params, params)
    assert np.array_equal(average[0], np.ones(75)) and average[1] == 3
    assert not convert_pickled_checkpoint(tmp_path / "run")  # nothing left to convert
