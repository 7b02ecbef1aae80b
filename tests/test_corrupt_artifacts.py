"""Every artifact loader, given a truncated, a zero-byte and a wrong-shape file: one line that names the file,
and no file changed. Each case damages a copy of the tiny world model (tests/conftest.py) or of its data."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError

CORRUPTIONS = ("truncated", "zero-byte", "wrong-shape")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _npz_with(path: Path, **changed) -> None:
    """``path`` (an .npz) rewritten with some arrays replaced: right names, wrong shapes."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changed)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _json_with(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _other_weights(path: Path, run: Path) -> None:
    """V's weights where M's belong, and M's where V's do: a weights file of another model."""
    other = run / ("rnn/rnn.weights.h5" if path.name == "vae.weights.h5" else "vae/vae.weights.h5")
    shutil.copyfile(other, path)


def _load_vae(run: Path):
    from core.models.vae import load_vae
    return load_vae(run / "vae")


def _load_rnn(run: Path):
    from core.models.mdnrnn import load_rnn
    return load_rnn(run / "rnn")


def _load_controller(run: Path):
    from core.models.controller import load_controller
    return load_controller(run / "controller", 8, 16)


def _load_cma_state(run: Path):
    from core.pipeline.evolve import _load_es
    return _load_es(run / "controller")


def _load_evolution_state(run: Path):
    """How an evolution started --init-from this controller reads where it came from."""
    from core.models.controller import load_controller
    from core.pipeline.evolve import ancestry
    return ancestry(run / "controller", load_controller(run / "controller").get_params())


def _load_checkpoint_state(run: Path):
    from core.storage.checkpoints import checkpoint_state
    return checkpoint_state(run / "vae")


def _load_episode(run: Path):
    from core.storage.dataset import list_episodes, load_episode
    return load_episode(list_episodes(run / "data")[0])


def _load_report(run: Path):
    from core.storage.reports import read_report
    return read_report(run / "controller" / "evaluation.json")


def _load_meta(run: Path):
    from core.storage.artifacts import read_meta
    return read_meta(run / "vae", "vae")


def _load_leaderboard(run: Path):
    from core.app.leaderboard import Leaderboard
    return Leaderboard(run / "board.sqlite3").runs()


# artifact: (its file in the copy, its loader, how to give it the wrong shape)
ARTIFACTS = {
    "V weights": ("vae/vae.weights.h5", _load_vae, _other_weights),
    "V config": ("vae/config.json", _load_vae, lambda p, run: _json_with(p, lambda c: {**c, "z_size": [8]})),
    "V meta": ("vae/meta.json", _load_meta, lambda p, run: _json_with(p, lambda m: [m])),
    "M weights": ("rnn/rnn.weights.h5", _load_rnn, _other_weights),
    "M config": ("rnn/config.json", _load_rnn, lambda p, run: _json_with(p, lambda c: {**c, "hidden": "16"})),
    "C params": ("controller/params.npz", _load_controller,
                 lambda p, run: _npz_with(p, params=np.zeros((3, 5), np.float32))),
    "C CMA-ES state": ("controller/cma_state.npz", _load_cma_state,
                       lambda p, run: _npz_with(p, **{"es.mean": np.zeros(7)})),
    "C evolution state": ("controller/state.json", _load_evolution_state,
                          lambda p, run: _json_with(p, lambda s: {**s, "generation": [s["generation"]]})),
    "training checkpoint state": ("vae/checkpoint/state.json", _load_checkpoint_state,
                                  lambda p, run: _json_with(p, lambda s: [s])),
    "episode": ("data/ep_000000000.npz", _load_episode, lambda p, run: _npz_with(p, obs=np.zeros((5, 64, 64), np.uint8))),
    "report": ("controller/evaluation.json", _load_report,
               lambda p, run: _json_with(p, lambda r: {**r, "returns": r["returns"][:-1]})),
    "leaderboard": ("board.sqlite3", _load_leaderboard, lambda p, run: _other_table(p)),
}


def _other_table(path: Path) -> None:
    """A SQLite file whose ``runs`` table has other columns."""
    path.unlink()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, note TEXT)")
    con.execute("INSERT INTO runs (note) VALUES ('not a race')")
    con.commit()
    con.close()


@pytest.fixture(scope="module")
def artifacts(tiny_world_model, tiny_data, tmp_path_factory) -> Path:
    """One folder with every kind of artifact: the tiny world model (with V's training checkpoint), its data, an
    evaluation report and a leaderboard with one run."""
    from core.app.leaderboard import Leaderboard, Run
    root = tmp_path_factory.mktemp("artifacts")
    for part in ("vae", "rnn", "controller"):
        shutil.copytree(tiny_world_model / part, root / part, ignore=shutil.ignore_patterns("encoded.npz", ".lock"))
    shutil.copytree(tiny_data, root / "data")
    first = min((root / "data").glob("ep_*.npz"))
    first.rename(root / "data" / "ep_000000000.npz")
    report = {"seeds": [1_000_000, 1_000_001], "returns": [10.0, 20.0], "env": "fast", "complete": True}
    (root / "controller" / "evaluation.json").write_text(json.dumps(report))
    Leaderboard(root / "board.sqlite3").add(Run(player="ada", kind="human", model="", seed=1, score=12.5, steps=3,
                                                tiles=1, total_tiles=200, outcome="ended",
                                                actions=np.zeros((3, 3), np.float32)))
    return root


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("artifact", list(ARTIFACTS))
def test_a_damaged_artifact_is_refused_in_one_line_naming_it(artifact, corruption, artifacts, tmp_path):
    name, load, reshape = ARTIFACTS[artifact]
    run = tmp_path / "run"
    shutil.copytree(artifacts, run)
    load(run)  # the intact copy loads
    path = run / name
    if corruption == "truncated":
        _truncate(path)
    elif corruption == "zero-byte":
        path.write_bytes(b"")
    else:
        reshape(path, run)
    before = _hashes(run)
    with pytest.raises(UserError) as caught:
        load(run)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert _hashes(run) == before  # nothing written, nothing "repaired" over the damaged file
