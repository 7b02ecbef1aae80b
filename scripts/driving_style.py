"""How a world model's controller drives: how its episodes end, its throttle, braking, steering and speed.

    python scripts/driving_style.py [models] [--tracks 8] [--first-seed 950000] [--gas-shifts 0.3,0.6,1.0]

Drives the controller of a world-model folder on validation tracks (950000 up by default: never used in
training, and not the evaluation tracks) and prints, per track, its return, steps, share of tiles, how the
episode ended (lap finished; left the playfield; at the step limit with the road lost, with the lap driven
round but tiles skipped, or with tiles still ahead), the tiles it skipped and those still ahead, mean gas
(and how often above 0.9), how often it brakes (brake above 0.1), its mean |steer| and its mean and top
speed (Box2D units of the car's hull); then a table of the endings. With ``--gas-shifts`` it also drives
copies of the controller whose gas bias is raised by each amount, on the same tracks, and prints their
paired lead: whether more throttle alone would help. docs/TRAINING.md's "What holds it back" quotes this
script's output. The fast env gives the stock env's episodes exactly, so ``--first-seed 1000000 --tracks
100`` explains the evaluation report's episodes.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from core.envs.env import make_env, spawn_context, tiles_visited, worker_setup
from core.envs.laps import LapTracker, endings
from core.models.agent import Agent, load_world_model
from core.pipeline.rollout import RolloutPool, RolloutSettings, episode_returns
from core.storage.artifacts import ArtifactError
from core.storage.reports import compare_reports

ROOT = Path(__file__).resolve().parents[1]

GAS_BIAS = -2  # the gas unit's bias among C's flat parameters (steer, gas, brake biases come last)


def drive(agent: Agent, seed: int, env_kind: str, max_steps: int) -> dict:
    """One episode on track ``seed``: the return, steps, tiles, how it ended, and statistics of actions and
    speed."""
    env = make_env(env_kind)
    try:
        obs, _ = env.reset(seed=seed)
        agent.reset()
        lap = LapTracker(env)
        actions, speeds, total, terminated, info = [], [], 0.0, False, {}
        for _ in range(max_steps):
            action = agent.act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            actions.append(action)
            velocity = env.unwrapped.car.hull.linearVelocity
            speeds.append(float(np.hypot(velocity[0], velocity[1])))
            lap.update()
            if terminated or truncated:
                break
        visited, tiles = tiles_visited(env)
        ended, skipped, ahead = lap.ending(terminated, bool(info.get("lap_finished")))
    finally:
        env.close()
    a, v = np.array(actions), np.array(speeds)
    return {"seed": seed, "return": total, "steps": len(a), "tiles": visited / max(tiles, 1),
            "skipped": skipped, "ahead": ahead,
            "outcome": ended,
            "gas": float(a[:, 1].mean()), "full_gas": float((a[:, 1] > 0.9).mean()),
            "braking": float((a[:, 2] > 0.1).mean()), "steer": float(np.abs(a[:, 0]).mean()),
            "speed": float(v.mean()), "top_speed": float(v.max())}


_WORKER: dict = {}


def _init_worker(model_dir: str) -> None:
    worker_setup()
    _WORKER["agent"] = Agent.load(model_dir)


def _drive_in_worker(seed: int, env_kind: str, max_steps: int) -> dict:
    return drive(_WORKER["agent"], seed, env_kind, max_steps)


def drive_all(model_dir: str, seeds: list[int], env_kind: str, max_steps: int, workers: int) -> list[dict]:
    """``drive`` on each track, in ``workers`` processes (inline for one), in the order of ``seeds``."""
    if workers <= 1:
        agent = Agent.load(model_dir)
        return [drive(agent, seed, env_kind, max_steps) for seed in seeds]
    with ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=_init_worker,
                             initargs=(model_dir,)) as pool:
        return list(pool.map(_drive_in_worker, seeds, [env_kind] * len(seeds), [max_steps] * len(seeds)))


def outcome_lines(rows: list[dict]) -> list[str]:
    """A table of how the episodes ended: how many, their mean return, and the tiles skipped and ahead."""
    table = endings([r["outcome"] for r in rows], [r["return"] for r in rows],
                    skipped=[r["skipped"] for r in rows], ahead=[r["ahead"] for r in rows])
    return ["| ended | episodes | mean return | tiles skipped (mean) | tiles ahead (mean) |",
            "|---|---:|---:|---:|---:|"] + [
        f"| {e['ended']} | {e['episodes']} | {e['mean_return']:.1f} | {e['mean_skipped']:.1f} | {e['mean_ahead']:.1f} |"
        for e in table]


def gas_shift_leads(model_dir: str, seeds: list[int], shifts: list[float], env_kind: str, workers: int,
                    max_steps: int = 1000) -> list[str]:
    """Lines of the paired lead of each gas-bias shift over the controller itself on ``seeds``, in episodes of
    at most ``max_steps`` steps (those of the table)."""
    weights, params = load_world_model(model_dir)
    candidates = [params] + [params + np.eye(1, params.size, params.size + GAS_BIAS, np.float32)[0] * s
                             for s in shifts]
    with RolloutPool(weights, RolloutSettings(env=env_kind, max_steps=max_steps), workers) as pool:
        returns, _ = episode_returns(pool, candidates, seeds)
    own = {"seeds": seeds, "returns": list(returns[0])}
    lines = [f"gas bias +0 (the controller): mean {returns[0].mean():.1f}"]
    for shift, row in zip(shifts, returns[1:]):
        c = compare_reports(own, {"seeds": seeds, "returns": list(row)})
        se = "" if c["lead_se"] is None else f" ± {c['lead_se']:.1f}"
        lines.append(f"gas bias +{shift:g}: mean {c['challenger_mean']:.1f}, lead {c['lead']:+.1f}{se} "
                     f"(won {c['wins']} of {c['tracks']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", default="models", help="world-model folder (vae/, rnn/, controller/)")
    parser.add_argument("--tracks", type=int, default=8, help="tracks to drive")
    parser.add_argument("--first-seed", type=int, default=950_000, help="seed of the first track")
    parser.add_argument("--max-steps", type=int, default=1000, help="env steps per episode at most")
    parser.add_argument("--env", default="fast", choices=("fast", "stock"), help="CarRacing implementation")
    parser.add_argument("--gas-shifts", default="", help="comma-separated raises of the gas bias to compare")
    parser.add_argument("--workers", type=int, default=2, help="processes that drive the episodes")
    args = parser.parse_args(argv)
    if args.tracks < 1 or args.max_steps < 1:
        parser.error("--tracks and --max-steps must be at least 1")
    try:
        shifts = [float(s) for s in args.gas_shifts.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--gas-shifts {args.gas_shifts!r}: give numbers separated by commas, e.g. 0.3,0.6")
    seeds = list(range(args.first_seed, args.first_seed + args.tracks))
    try:
        Agent.load(args.model_dir)  # a clear error here rather than one per worker
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = drive_all(args.model_dir, seeds, args.env, args.max_steps, args.workers)
    print("| track | return | steps | tiles | ended | skipped | ahead | gas | gas > 0.9 | braking | "
          "mean abs(steer) | speed | top speed |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['return']:.1f} | {r['steps']} | {r['tiles']:.0%} | {r['outcome']} | "
              f"{r['skipped']} | {r['ahead']} | {r['gas']:.2f} | {r['full_gas']:.0%} | {r['braking']:.0%} | "
              f"{r['steer']:.2f} | {r['speed']:.1f} | {r['top_speed']:.1f} |")
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0] if k not in ("seed", "outcome")}
    print(f"| mean | {mean['return']:.1f} | {mean['steps']:.0f} | {mean['tiles']:.0%} | | {mean['skipped']:.1f} | "
          f"{mean['ahead']:.1f} | {mean['gas']:.2f} | {mean['full_gas']:.0%} | {mean['braking']:.0%} | "
          f"{mean['steer']:.2f} | {mean['speed']:.1f} | {mean['top_speed']:.1f} |")
    print()
    print("\n".join(outcome_lines(rows)))
    if shifts:
        print()
        print("\n".join(gas_shift_leads(args.model_dir, seeds, shifts, args.env, args.workers,
                                         args.max_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
