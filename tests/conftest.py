"""Shared fixtures: a tiny world model (z = 8, h = 16) trained on two short real CarRacing episodes."""

from __future__ import annotations

import atexit
import functools
import gc
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# The agent's weights cache (core.models.agent) goes to a folder of the test run's own, never the user's.
os.environ["WORLD_MODELS_CACHE"] = tempfile.mkdtemp(prefix="wm-test-cache-")
atexit.register(shutil.rmtree, os.environ["WORLD_MODELS_CACHE"], True)
# A test names its own leaderboard; none may reach the user's (a PostgreSQL URL in the shell, say).
os.environ.pop("WM_LEADERBOARD_URL", None)
os.environ.pop("WM_LEADERBOARD_DB", None)
# Episodes run on this machine unless a test names a Ray cluster; none may reach the user's (WM_RAY_ADDRESS).
os.environ.pop("WM_RAY_ADDRESS", None)
ROOT = Path(__file__).resolve().parents[1]


# The test files that take longest with 3 workers on 2 cores, longest first (wall time summed by file from
# --junitxml). ``--dist loadfile`` hands each xdist worker the next file in collection order as it finishes
# one, so these go first and the many short files fill the end of the workers' time (a long file picked up
# last would leave the others idle meanwhile). Files not named here keep their order after these.
LONG_FILES = ("test_cli.py", "test_training.py", "test_cluster.py", "browser/test_pages_browser.py",
              "browser/test_race_browser.py", "test_app_pages.py", "test_docker.py", "test_jobs.py",
              "test_bench_sections.py", "browser/test_race_behind_proxy.py", "test_forms.py", "test_race_server.py",
              "test_race_pages.py", "test_fast_env.py")


def pytest_configure(config):
    # pytest-xdist (3.x) would hand out files by their number of tests, most first, instead of in the order
    # above; the same as ``--no-loadscope-reorder`` on the command line.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    tests = ROOT / "tests"
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank))
               if item.path.is_relative_to(tests) else len(rank))  # stable: the order within a file stays


@pytest.fixture(scope="session", autouse=True)
def _component_manifests_scanned_once():
    """Each AppTest starts a Streamlit runtime, which reads the metadata of every installed package for
    component manifests (0.4-0.5 s of a core; an app server does it once, at its start). The installed
    packages do not change during a test run, so the scan runs once per worker and is reused."""
    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:
        yield
        return
    scan = manifest_scanner.scan_component_manifests
    manifest_scanner.scan_component_manifests = functools.cache(scan)
    try:
        yield
    finally:
        manifest_scanner.scan_component_manifests = scan


@pytest.fixture(scope="module", autouse=True)
def _earlier_modules_out_of_the_collectors_sight():
    """Streamlit calls ``keras.backend.clear_session()`` after every script run an AppTest makes, and that runs
    a full garbage collection. In a worker that had run the training tests first, each one scanned their
    leftover TensorFlow objects and took 50-70 ms: test_forms went from 13 s to 55-73 s. What is alive when
    a module starts is moved out of the collector's sight (``gc.freeze``), after a collection, for the length
    of the module; at its end it is unfrozen, so cycles that became garbage meanwhile are collected at the
    next module's start (one full collection per module)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def _fast_env_available() -> bool:
    try:
        import core.envs.fast_car_racing  # noqa: F401
        return True
    except ImportError:
        return False


TEST_ENV = "fast" if _fast_env_available() else "stock"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two Brownian episodes of 40 steps in the real env."""
    from core.config import CollectConfig
    from core.pipeline.collect import collect
    out = tmp_path_factory.mktemp("data") / "rollouts"
    collect(CollectConfig(out_dir=str(out), episodes=2, max_steps=40, workers=1, env=TEST_ENV))
    return out


@pytest.fixture(scope="session")
def tiny_world_model(tiny_data, tmp_path_factory) -> Path:
    """A run folder with vae/, rnn/ and controller/ trained on ``tiny_data`` in seconds."""
    from core.config import EvolveConfig, RNNConfig, VAEConfig
    from core.pipeline.evolve import evolve
    from core.pipeline.train_rnn import train_rnn
    from core.pipeline.train_vae import train_vae
    run = tmp_path_factory.mktemp("run")
    train_vae(VAEConfig(data_dir=str(tiny_data), run_dir=str(run), z_size=8, epochs=1, batch_size=32,
                        holdout=0.0))
    train_rnn(RNNConfig(data_dir=str(tiny_data), run_dir=str(run), hidden=16, mixtures=3, seq_len=10,
                        batch_size=4, epochs=1, holdout=0.0))
    evolve(EvolveConfig(run_dir=str(run), generations=1, popsize=4, rollouts=1, max_steps=20, eval_every=0,
                        workers=1, env=TEST_ENV))
    return run


def make_app_root(root: Path, tiny_data: Path | None, tiny_world_model: Path,
                  folders: tuple[str, ...] = ("runs", "models")) -> Path:
    """An app folder with the tiny data in data/rollouts (none without ``tiny_data``) and the tiny world model
    in ``folders`` (runs/ and models/)."""
    if tiny_data is not None:
        shutil.copytree(tiny_data, root / "data" / "rollouts")
    root.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for part in ("vae", "rnn", "controller"):
            shutil.copytree(tiny_world_model / part, root / folder / part,
                            ignore=shutil.ignore_patterns("checkpoint", "encoded.npz", ".lock"))
    return root


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this test session's own on 127.0.0.1 (tests/postgres_server.py), stopped at
    the end. Skips where Debian's postgresql package is missing (scripts/run-tests.sh installs it)."""
    from tests.postgres_server import PostgresServer, find_bindir
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb is not installed (/usr/lib/postgresql/*/bin/initdb): "
                    "apt-get install postgresql, as scripts/run-tests.sh does")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def leaderboard_at(request, tmp_path) -> str:
    """Where a test's leaderboard lives, once per backend: a new SQLite file, or a new database on the
    session's PostgreSQL server (its URL)."""
    if request.param == "sqlite":
        return str(tmp_path / "board.sqlite3")
    return request.getfixturevalue("postgres").new_database()
