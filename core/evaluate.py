"""Stage 5, evaluate: a controller on a fixed, documented list of tracks it never trained on.

Track seeds are ``first_seed, first_seed + 1, ...`` (default 1000000 on): collection and evolution only
use seeds below 1000000. The stock ``CarRacing-v3`` is the default so scores compare with published ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.agent import load_world_model_weights
from core.artifacts import atomic_write_json, now_iso
from core.config import EvaluateConfig, to_dict, validate
from core.controller import load_controller
from core.progress import ProgressCallback, keep_going
from core.rollout import RolloutPool, RolloutSettings


def evaluation_seeds(config: EvaluateConfig) -> list[int]:
    return [config.first_seed + i for i in range(config.episodes)]


def summarize(returns: list[float]) -> dict:
    r = np.asarray(returns, dtype=float)
    return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max()),
            "median": float(np.median(r)), "solved_fraction": float((r >= 900).mean())}


def evaluate(config: EvaluateConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Run the controller in ``config.model_dir`` on the evaluation tracks; write and return the report.

    The report: ``mean``, ``std``, ``min``, ``max``, ``median``, per-episode ``returns``, ``seeds``, ``steps``,
    the env and the config. Stopping early reports the episodes done so far (``complete: false``).
    """
    validate(config)
    model_dir = Path(config.model_dir)
    weights = load_world_model_weights(model_dir)
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    params = load_controller(model_dir / "controller", z_size, hidden).get_params()
    seeds = evaluation_seeds(config)
    settings = RolloutSettings(config.env, config.max_steps, early_stop=False)
    returns, steps, tiles, done_seeds = [], [], [], []
    with RolloutPool(weights, settings, min(config.workers, len(seeds))) as pool:
        for r in pool.map([(params, s) for s in seeds]):
            returns.append(r.total_reward)
            steps.append(r.steps)
            tiles.append(r.tiles)
            done_seeds.append(r.seed)
            stats = summarize(returns)
            if not on_progress(len(returns), len(seeds), {"return": r.total_reward, "mean": stats["mean"]}):
                break
    report = {**summarize(returns), "episodes": len(returns), "complete": len(returns) == len(seeds),
              "returns": returns, "seeds": done_seeds, "steps": steps, "tiles": tiles, "env": config.env,
              "model_dir": str(model_dir), "date": now_iso(), "config": to_dict(config)}
    out = Path(config.out) if config.out else model_dir / "controller" / "evaluation.json"
    atomic_write_json(out, report)
    report["out"] = str(out)
    return report
