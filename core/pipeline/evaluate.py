"""Stage 5, evaluate: a controller on a fixed, documented list of tracks it never trained on (the reports,
their checks and the statistics: ``core.storage.reports``; two reports side by side: ``compare``).

Track seeds are ``first_seed, first_seed + 1, ...`` (default 1000000 on): collection and evolution only
use seeds below 1000000 (collection and training rollouts below 900000, evolve's own evaluations
900000..949999). The stock ``CarRacing-v3`` is the default so scores compare with published ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.config import (
    EVAL_SEED_BASE,
    SHIPPED_MODEL_DIR,
    SHIPPED_OUTPUTS_DIR,
    VALIDATION_SEED_BASE,
    EvaluateConfig,
    ray_address,
    to_dict,
    validate,
)
from core.metrics import EpisodeMetric
from core.models.agent import load_world_model, load_world_model_weights
from core.models.controller import load_params_file, params_sha256
from core.pipeline.rollout import RolloutSettings, rollout_pools
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import atomic_write_json, now_iso
from core.storage.reports import per_episode, summarize
from core.storage.weights_cache import world_model_sha256

log = logging.getLogger(__name__)


def evaluation_seeds(config: EvaluateConfig) -> list[int]:
    return [config.first_seed + i for i in range(config.episodes)]


def evaluate(config: EvaluateConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Run the controller in ``config.model_dir`` (or ``config.params`` on its V and M) on the evaluation
    tracks; write and return the report (without ``out``: beside the controller, but never into the shipped
    model's folder: ``_outside_shipped_model``).

    The report: ``mean``, ``std``, ``min``, ``max``, ``median``, per-episode ``returns``, ``seeds``, ``steps``,
    ``tiles`` (visited), ``skipped`` (tiles) and ``ended`` (how: ``core.envs.laps.OUTCOMES``) with ``endings``
    (``core.envs.laps.report_endings``; these three are left out when episodes of an older partial run lack them), the
    env, the config, the hashes of the controller and of V and M (``params_sha256``,
    ``world_model_sha256``), with ``params`` where the controller came from (``params_source``), and
    ``held_out`` (every track at or above EVAL_SEED_BASE, where training never draws; a lower
    ``first_seed`` is allowed, with a warning, for validation runs: VALIDATION_SEED_BASE on, no training
    or gate draws either). Stopping early reports the episodes
    done so far (``complete: false``), and writes that report over ``out`` unless ``out`` already holds a
    finished evaluation (of this controller or another), which is kept; stopped before its first episode has
    finished, it raises InterruptedError and writes nothing. The episodes run on this machine's worker
    processes, or with ``ray_address`` (``WM_RAY_ADDRESS``) on that Ray cluster, with the same results.
    Each finished episode is also kept in ``<out>.partial``; running the same evaluation again (same
    controller, V and M, env and step limit) skips the tracks already driven, so a killed run loses one
    episode.
    """
    validate(config)
    model_dir = Path(config.model_dir)
    if config.params:
        weights = load_world_model_weights(model_dir)
        params, source = load_params_file(config.params, weights["mu_w"].shape[1],
                                          weights["lstm_recurrent"].shape[0])
        default_out = Path(config.params).with_suffix(".evaluation.json")
    else:
        weights, params = load_world_model(model_dir)
        source = None
        default_out = model_dir / "controller" / "evaluation.json"
    seeds = evaluation_seeds(config)
    if config.first_seed < VALIDATION_SEED_BASE:
        log.warning("--first-seed %d: tracks below %d are where collection and evolution draw their tracks, so "
                    "the controller may have trained on some of these; the report says held_out: false",
                    config.first_seed, VALIDATION_SEED_BASE)
    elif config.first_seed < EVAL_SEED_BASE:
        log.warning("--first-seed %d: validation tracks (%d..%d), which neither training nor evolve's tests draw; "
                    "the report says held_out: false, as export ships only reports on the evaluation tracks "
                    "(%d on)", config.first_seed, VALIDATION_SEED_BASE, EVAL_SEED_BASE - 1, EVAL_SEED_BASE)
    out = Path(config.out) if config.out else _outside_shipped_model(default_out)
    partial = out.with_name(out.name + ".partial")
    key = {"params_sha256": params_sha256(params), "world_model_sha256": world_model_sha256(model_dir),
           "env": config.env, "max_steps": config.max_steps}
    done = _read_partial(partial, key)
    todo = [s for s in seeds if s not in done]
    settings = RolloutSettings(config.env, config.max_steps, early_stop=False)
    go_on = bool(on_progress(len(seeds) - len(todo), len(seeds), {}))
    if todo and go_on:
        with rollout_pools(weights, [settings], config.workers, ray_address(config), most=len(todo)) as (pool,):
            for r in pool.map([(params, s) for s in todo]):
                done[r.seed] = {"return": r.total_reward, "steps": r.steps, "tiles": r.tiles,
                                "skipped": r.skipped, "ended": r.ended}
                atomic_write_json(partial, {**key, "episodes": {str(k): v for k, v in done.items()}})
                returns = [done[s]["return"] for s in seeds if s in done]
                if not on_progress(len(returns), len(seeds), {EpisodeMetric.RETURN: r.total_reward,
                                                              EpisodeMetric.MEAN: summarize(returns)["mean"]}):
                    break
    driven = [s for s in seeds if s in done]
    if 0 < sum("ended" in done[s] for s in driven) < len(driven):
        log.warning("some episodes come from an older partial run that did not record how episodes ended; the "
                    "report leaves the endings out (evaluate into a new --out to have them)")
    returns = [done[s]["return"] for s in driven]
    if not returns:  # only a stop gets here: every seed is either driven or still to do
        raise InterruptedError("evaluation stopped before its first episode finished; nothing to report")
    report = {**summarize(returns), "episodes": len(returns), "complete": len(driven) == len(seeds),
              "returns": returns, "seeds": driven, **per_episode({s: done[s] for s in driven}), "env": config.env,
              "model_dir": str(model_dir), "date": now_iso(), "config": to_dict(config),
              "params_sha256": key["params_sha256"], "world_model_sha256": key["world_model_sha256"],
              "max_steps": config.max_steps, "held_out": config.first_seed >= EVAL_SEED_BASE}
    if source is not None:  # --params: which file, which array, which generation
        report["params_source"] = source
    if not report["complete"] and _holds_complete_report(out):
        # A stopped run never replaces a finished report (of this controller or an earlier one, which the
        # pages mark as such): the episodes of this run stay in the partial file, and the next run continues
        # from them.
        report["out"] = str(partial)
        return report
    atomic_write_json(out, report)
    if report["complete"]:
        partial.unlink(missing_ok=True)
    report["out"] = str(out)
    return report


def _outside_shipped_model(path: Path) -> Path:
    """A default report path, moved out of the shipped model (``models/``, kept exactly as committed: its
    evaluation.json is the published score) into SHIPPED_OUTPUTS_DIR, where the app writes its own runs."""
    if not path.resolve().is_relative_to(Path(SHIPPED_MODEL_DIR).resolve()):
        return path
    moved = Path(SHIPPED_OUTPUTS_DIR) / path.name
    log.info("the shipped model stays as committed: the report goes to %s (--out to choose)", moved)
    return moved


def _holds_complete_report(path: Path) -> bool:
    """Whether ``path`` holds a finished evaluation (of any controller)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("complete") is True


def _read_partial(path: Path, key: dict) -> dict[int, dict]:
    """Episodes of an interrupted run of the same evaluation, by seed; {} when none (or another one's)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if any(data.get(k) != v for k, v in key.items()):
            return {}
        return {int(s): {"return": float(e["return"]), "steps": int(e["steps"]), "tiles": int(e["tiles"]),
                         **({"skipped": int(e["skipped"]), "ended": str(e["ended"])} if "ended" in e else {})}
                for s, e in data["episodes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: unreadable partial evaluation, starting over", path)
        return {}
