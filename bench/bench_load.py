"""Loading the agent's world model (V and M as NumPy weights, and C) in a fresh process: with Keras, and
from the weights cache (``core.storage.weights_cache``).

    python -m bench.bench_load [--quick] [--model-dir models]

Each load runs in a new Python process, as the app's Race page, ``evaluate`` and ``evolve`` do: importing
TensorFlow is part of what the Keras load costs. The cache is a temporary folder of the benchmark's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine_info

ROOT = Path(__file__).resolve().parent.parent
_LOAD = """
import time
t = time.perf_counter()
from core.models.agent import load_world_model
load_world_model({path!r})
print(time.perf_counter() - t)
"""


def _load_seconds(model: Path, cache: Path, *, cached: bool) -> float:
    """Seconds for one fresh process to import the loader and load ``model`` (with an empty cache folder
    unless ``cached``)."""
    from core.storage.weights_cache import CACHE_ENV
    if not cached:
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", CACHE_ENV: str(cache)}
    done = subprocess.run([sys.executable, "-c", _LOAD.format(path=str(model))], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False, model_dir: str = "models") -> str:
    repeats = 2 if quick else 5
    model = ROOT / model_dir
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cache"
        keras = [_load_seconds(model, folder, cached=False) for _ in range(repeats)]  # each fills the cache
        cache = [_load_seconds(model, folder, cached=True) for _ in range(repeats)]
        cache_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    k, c = statistics.median(keras), statistics.median(cache)
    return "\n".join([
        "## Loading the agent (V, M, C) in a fresh process", "", machine_info(), "",
        f"`core.models.agent.load_world_model` on `{model_dir}/`, median of {repeats} new processes each:", "",
        "| from | seconds |", "|---|---:|",
        f"| Keras files (imports TensorFlow; writes the cache) | {k:.2f} |",
        f"| weights cache ({cache_mb:.1f} MB, found by the SHA-256 of V's and M's files) | {c:.2f} |",
        "", f"- The cache loads the agent **{k / c:.0f}x** faster, and needs no TensorFlow.", ""])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    print(run(args.quick, args.model_dir))
