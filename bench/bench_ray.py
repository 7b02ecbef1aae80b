"""Episodes an hour on the local process pool against a Ray cluster on the same machine, same workers.

    python -m bench.bench_ray [--workers 2] [--episodes 8] [--steps 1000] [--quick] [--out F.md]

Both drive the shipped controller (models/) on the same training-range tracks, whole episodes of the fast env,
through ``core.pipeline.rollout.rollout_pools``: ``workers`` local processes, or a one-node Ray cluster of
``workers`` CPUs started here (``ray.cluster_utils.Cluster``), whose workers the stage reaches through its
driver process (``core.pipeline.cluster``). The workers are started and warmed up before the clock runs; the
two backends take turns, ``--rounds`` times each, so that a change of load hits both. Their results are
compared too: the same returns and steps, or the run fails.

It also measures what crosses the network: the world model, once per node, and per episode a task (the
controller's parameters, the track, the settings) and its result, as Ray pickles them.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine_info

TRACK_SEED_BASE = 800_000  # training-range tracks


def _throughput(pools_of, weights, params, seeds: list[int], settings) -> tuple[float, list]:
    """Episodes an hour of ``seeds`` on the pool ``pools_of`` opens (warmed up first), and the results."""
    with pools_of(weights, [settings]) as (pool,):
        list(pool.map([(params, s) for s in seeds[:2]]))  # every worker started, its env made
        start = time.perf_counter()
        results = list(pool.map([(params, s) for s in seeds]))
        seconds = time.perf_counter() - start
    return 3600 * len(seeds) / seconds, results


def measure(workers: int, episodes: int, steps: int, rounds: int) -> dict:
    import ray  # noqa: F401 - fails here, with its message, when Ray is missing
    from ray.cluster_utils import Cluster

    from core.models.agent import load_world_model
    from core.pipeline.rollout import RolloutSettings, rollout_pools, rollout_task
    weights, params = load_world_model(ROOT / "models")
    settings = RolloutSettings("fast", steps, early_stop=False)
    seeds = [TRACK_SEED_BASE + i for i in range(episodes)]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": workers})
    try:
        backends = {"local processes": lambda w, s: rollout_pools(w, s, workers),
                    "Ray, one node": lambda w, s: rollout_pools(w, s, workers, cluster.address)}
        rates: dict[str, list[float]] = {name: [] for name in backends}
        outcomes = {}
        for _ in range(rounds):
            for name, pools_of in backends.items():
                rate, results = _throughput(pools_of, weights, params, seeds, settings)
                rates[name].append(rate)
                outcomes[name] = [(r.total_reward, r.steps, r.tiles, r.ended) for r in results]
    finally:
        cluster.shutdown()
    if outcomes["local processes"] != outcomes["Ray, one node"]:
        raise SystemExit("the two backends drove different episodes: " + repr(outcomes))
    task = pickle.dumps((rollout_task, (params, seeds[0], settings)))
    result = pickle.dumps(results[0])
    return {"rates": rates, "steps": int(np.mean([r.steps for r in results])),
            "weights_bytes": len(pickle.dumps(weights)), "task_bytes": len(task), "result_bytes": len(result)}


def section(m: dict, workers: int, episodes: int, rounds: int) -> str:
    median = {name: float(np.median(r)) for name, r in m["rates"].items()}
    local, ray_rate = median["local processes"], median["Ray, one node"]
    per_generation = 64 * 16 * (m["task_bytes"] + m["result_bytes"])  # the paper's population and rollouts
    rows = "\n".join(f"| {name} | {median[name]:,.0f} | {min(r):,.0f}–{max(r):,.0f} |"
                     for name, r in m["rates"].items())
    load = os.getloadavg()[0]
    return f"""## Rollouts on Ray against the local pool

{machine_info()}
(load average {load:.1f} at the end: the machine was shared with other work, so the ratio is what counts)

{workers} workers each way: {workers} local processes, or a one-node Ray cluster of {workers} CPUs on the same
machine ({workers} actors). {episodes} episodes (fast env, the shipped controller, no early stop, {m['steps']} steps on
average) per run, after a warm-up; the backends take turns, {rounds} runs each. Both drove identical episodes.

| backend | episodes/hour (median) | slowest–fastest run |
|---|---:|---:|
{rows}

Ray on one machine: **{ray_rate / local:.2f}x** the local pool's episodes an hour (the goal: at least 0.90x).

What crosses the network (pickled, as Ray sends it): the world model once per node, {m['weights_bytes'] / 1e6:.1f} MB;
per episode a task of {m['task_bytes']:,} bytes (the controller's parameters, track, settings) and a result of
{m['result_bytes']:,} bytes: {per_generation / 1e6:.1f} MB for a generation of the paper's size (64 candidates x 16
rollouts), about {(m['task_bytes'] + m['result_bytes']) / m['steps']:.1f} bytes per env step.
"""


def run(quick: bool) -> str:
    workers = 2
    episodes, steps, rounds = (4, 200, 1) if quick else (8, 1000, 2)
    return section(measure(workers, episodes, steps, rounds), workers, episodes, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 episodes of 200 steps, one run each")
    parser.add_argument("--out", help="also write the section to this file")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.steps, args.rounds = 4, 200, 1
    text = section(measure(args.workers, args.episodes, args.steps, args.rounds), args.workers, args.episodes,
                   args.rounds)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
