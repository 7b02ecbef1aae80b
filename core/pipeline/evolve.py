"""Stage 4, evolve: CMA-ES over C's flat parameters, fitness = mean return in the real env.

Every candidate of a generation drives the same ``rollouts`` tracks (common random numbers: differences in
fitness come from the controllers, not the tracks). Every ``eval_every`` generations the CMA-ES mean and
the generation's best candidate are re-evaluated on ``eval_episodes`` training tracks, and so is a
moving average of the mean spanning ``average`` generations (at a plateau the mean wanders with each
generation's noisy selection; averaging it cancels much of that walk). The best of them challenges the
controller shipped so far (``params.npz``). A challenger that beats its score there
is tested again with it on ``confirm_episodes`` other tracks, and replaces it only if it wins there
too, by more than ``confirm_margin`` standard errors of its track-by-track lead: the best of many noisy
8-track scores is partly luck, so it has to win on tracks it was not picked on, and by more than luck. A
lucky candidate never gets shipped on the strength of two episodes, nor of eight.

With ``fresh_tracks`` (the default) both tests use new tracks each time and the shipped controller drives
them too. On fixed tracks the shipped controller's scores are those it was picked with: the best of many
evaluations there, so higher than what it would score on other tracks, and a bar a controller that is
truly better clears only by luck.

An evolution started from a trained controller (``init_from``) keeps that controller's history in its
state as ``lineage``: the earlier evolutions' generations, episodes, env steps and wall time, so what a
controller cost stays with it after the folder it came from is gone.

Each generation writes a checkpoint: its history line and ``latest.npz``, then ``cma_state.pkl`` (the
CMA-ES with the random state it samples candidates from, the run's counters and the parameters to ship), then ``params.npz`` and ``state.json`` (readable copies). The pickle is the commit point: re-running
the same command resumes from it wherever a kill landed, loses at most the generation in progress, and
draws the same candidates an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from pathlib import Path

import cma
import numpy as np

from core.config import MAX_TEST_TRACKS, EvolveConfig, to_dict, validate
from core.envs.laps import OUTCOMES
from core.models.controller import LATEST_FILE, PARAMS_FILE, load_controller, num_params, params_sha256, save_params
from core.pipeline.gate import TRACK_RANGES, TRAIN_EVAL_SEED_BASE, challenge, next_tracks, spreads_from_history
from core.pipeline.rollout import RolloutPool, RolloutSettings, drive_grid, evaluate_params
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import (ArtifactError, History, RunLock, atomic_save_npz, atomic_write_bytes,
                                    atomic_write_json, read_json, write_meta)
from core.storage.weights_cache import world_model_sha256

log = logging.getLogger(__name__)


CMA_STATE = "cma_state.pkl"
STATE = "state.json"
Average = tuple  # (the averaged CMA-ES mean as float64, the number of generations it has seen)


def _load_world_model(run_dir: Path):
    from core.models.agent import load_world_model_weights
    return load_world_model_weights(run_dir)


def _save_es(out_dir: Path, es: cma.CMAEvolutionStrategy, state: dict, params: np.ndarray,
             average: Average | None) -> None:
    """The CMA-ES, the run's counters, the shipped parameters and the averaged mean in one atomic file, so
    they can never disagree. (The CMA-ES pickles its sampler's ``RandomState`` with it.)"""
    atomic_write_bytes(out_dir / CMA_STATE, pickle.dumps({
        "es": es, "state": dict(state), "params": np.asarray(params, np.float32), "average": average}))


def _load_es(out_dir: Path, state: dict | None) -> tuple[cma.CMAEvolutionStrategy, dict, np.ndarray | None,
                                                         Average | None]:
    """The saved CMA-ES, the counters of the generation it belongs to, the parameters to ship and the
    averaged mean (``None`` in checkpoints from before it was kept: the average then starts afresh).

    The counters come from the pickle, which is written before ``state.json``: after a kill between the
    two it is one generation ahead, or ``state.json`` is not there yet. A pickle of a bare
    ``CMAEvolutionStrategy`` (runs from before the counters went into it) goes with ``state``
    (``state.json``), which it then needs, and its ``params.npz`` stays as it is.
    """
    try:
        saved = pickle.loads((out_dir / CMA_STATE).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
        raise ArtifactError(f"{out_dir / CMA_STATE}: unreadable CMA-ES state ({e}); delete {out_dir} to start "
                            "over") from None
    if isinstance(saved, cma.CMAEvolutionStrategy) and state is not None:
        return saved, state, None, None
    if not (isinstance(saved, dict) and isinstance(saved.get("es"), cma.CMAEvolutionStrategy)
            and isinstance(saved.get("state"), dict) and isinstance(saved["state"].get("generation"), int)):
        raise ArtifactError(f"{out_dir / CMA_STATE}: not a CMA-ES checkpoint of this project, or one without its "
                            f"{STATE}; delete {out_dir} to start over")
    average = saved.get("average")
    if not (average is None or (isinstance(average, tuple) and len(average) == 2
                                and np.shape(average[0]) == np.shape(saved["es"].mean)
                                and np.all(np.isfinite(average[0]))
                                and isinstance(average[1], int) and average[1] >= 1)):
        raise ArtifactError(f"{out_dir / CMA_STATE}: its averaged mean does not fit its CMA-ES; delete {out_dir} "
                            "to start over")
    return saved["es"], saved["state"], saved.get("params"), average


def update_average(average: Average | None, mean: np.ndarray, span: int) -> Average | None:
    """The moving average of the CMA-ES mean after one more generation (``None`` with ``span`` 0 or 1).

    An exponential average in which each new mean weighs ``2 / (span + 1)``: its lag and its noise are
    those of a plain average over the last ``span`` generations. Until that weight is reached (the first
    ``span / 2`` generations) it is the plain average of the means so far."""
    if span <= 1:
        return None
    mean = np.asarray(mean, np.float64)
    if average is None:
        return mean.copy(), 1
    avg, count = average
    count += 1
    return avg + (mean - avg) * max(1.0 / count, 2.0 / (span + 1)), count


# What a resumed evolution does not take from its saved settings: where it runs and what this machine gives it.
NOT_KEPT_ON_RESUME = ("run_dir", "workers")
FIXED_ON_RESUME = ("popsize", "diagonal")  # the saved CMA-ES state fixes them: another value is refused


def saved_settings(run_dir: str | Path) -> dict:
    """The settings of the evolution in ``<run_dir>/controller`` when it can be resumed (its CMA-ES state is
    there): a resume keeps them unless told otherwise, so that resuming a run (or the shipped model's
    evolution, copied into a run folder) does not fall back to the defaults' rollouts, evaluations and step
    cap. ``{}`` when there is nothing to resume."""
    out_dir = Path(run_dir) / "controller"
    path = out_dir / "config.json"
    if not (out_dir / CMA_STATE).exists() or not path.exists():
        return {}
    saved = read_json(path, "evolution config")
    if not isinstance(saved, dict):
        raise ArtifactError(f"{path}: evolution config is a JSON {type(saved).__name__}, not an object; restore it "
                            "or give every setting on the command line after deleting it")
    kept = {}
    for f in dataclasses.fields(EvolveConfig):
        if f.name in NOT_KEPT_ON_RESUME or f.name not in saved:
            continue
        value, kind = saved[f.name], type(f.default)
        fits = (isinstance(value, bool) if kind is bool else
                isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                isinstance(value, kind) and not isinstance(value, bool))
        if not fits:
            words = {bool: "true or false", float: "a number", int: "a whole number"}.get(kind, "text")
            raise ArtifactError(f"{path}: {f.name} is {value!r}, not {words}; fix it, or give "
                                f"--{f.name.replace('_', '-')} on the command line after removing it")
        kept[f.name] = float(value) if kind is float else value
    return kept


def _check_resumable(out_dir: Path, config: EvolveConfig) -> None:
    """The saved CMA-ES state fixes the population size and the covariance's shape: refuse other values
    rather than quietly ignore them."""
    saved = read_json(out_dir / "config.json", "evolution config") if (out_dir / "config.json").exists() else {}
    changed = [f"--{k.replace('_', '-')} {saved[k]} -> {getattr(config, k)}" for k in FIXED_ON_RESUME
               if k in saved and saved[k] != getattr(config, k)]
    if changed:
        raise ArtifactError(f"{out_dir}: this evolution was started with other settings ({'; '.join(changed)}); "
                            f"resume with the saved values, or pass another --run-dir to start a new one")


def _check_not_orphaned(out_dir: Path) -> None:
    """A controller folder holds an evolution (its CMA-ES state), the start of one killed in its first
    generation (a history but no checkpoint yet), or no controller at all.

    A controller without its CMA-ES state (``export --no-training-state``, or a ``params.npz`` copied by
    hand) cannot be resumed; starting a new evolution there would overwrite its ``params.npz`` and append
    a second generation 1 to its history. Refuse instead.
    """
    if (out_dir / CMA_STATE).exists():
        return
    if (out_dir / STATE).exists() or ((out_dir / PARAMS_FILE).exists() and not (out_dir / "history.jsonl").exists()):
        have = [name for name in (STATE, PARAMS_FILE, "history.jsonl") if (out_dir / name).exists()]
        raise ArtifactError(f"{out_dir}: holds a controller ({', '.join(have)}) without its evolution state "
                            f"({CMA_STATE} missing), so it cannot be resumed; pass another --run-dir "
                            "to start a new evolution, or move that controller folder away")


def new_es(config: EvolveConfig, z_size: int, hidden: int) -> cma.CMAEvolutionStrategy:
    """A fresh CMA-ES over C's parameters, its mean at zero or at the controller ``config.init_from``."""
    start = np.zeros(num_params(z_size, hidden))
    if config.init_from:  # load_controller explains a missing file or one made for another z or h
        start = load_controller(config.init_from, z_size, hidden).get_params().astype(np.float64)
    return cma.CMAEvolutionStrategy(start, config.sigma0, {"popsize": config.popsize, "seed": config.seed + 1,
                                                           "verbose": -9, "CMA_diagonal": config.diagonal})


def cap_step_size(es: cma.CMAEvolutionStrategy, max_sigma: float) -> None:
    """Hold the largest step of any parameter (``es.stds``: ``sigma`` times the square root of the
    covariance's diagonal, which sep-CMA-ES adapts too) at ``max_sigma`` at most (0: no cap)."""
    largest = float(np.max(es.stds))
    if max_sigma and largest > max_sigma:
        es.sigma *= max_sigma / largest


def ancestry(init_from: str | Path, start: np.ndarray) -> list[dict]:
    """Where an evolution started with ``--init-from`` comes from: the lineage of the controller in
    ``init_from`` (oldest first), then that evolution itself: its generations, episodes, env steps, wall
    seconds, population, rollouts and best periodic evaluation, and the hash of the parameters it handed on.

    ``start`` is the CMA-ES's initial mean; when the folder no longer holds that controller (it was
    replaced since, say by an export), only the hash is known. A controller without an evolution state (a
    lean export) contributes what its folder says.
    """
    folder = Path(init_from)
    entry: dict = {"init_from": str(folder), "params_sha256": params_sha256(start)}
    try:
        here = load_controller(folder).get_params()
    except ArtifactError:
        return [entry]
    if params_sha256(here) != entry["params_sha256"]:
        return [entry]
    state = read_json(folder / STATE, "evolution state") if (folder / STATE).exists() else {}
    config = read_json(folder / "config.json", "evolution config") if (folder / "config.json").exists() else {}
    entry.update({k: state[k] for k in ("generation", "episodes", "env_steps", "train_seconds", "best_eval")
                  if k in state})
    entry.update({k: config[k] for k in ("popsize", "rollouts", "workers", "seed") if k in config})
    return [*state.get("lineage", []), entry]


def average_against_mean(records: list[dict]) -> dict | None:
    """How the averaged mean did against the CMA-ES mean in a run's periodic evaluations (both drive the same
    tracks each time): ``evaluations``, its mean ``lead`` and the evaluations it ``won``; ``None`` before
    the first evaluation that had both."""
    leads = [r["eval_mean_average"] - r["eval_mean_params"] for r in records
             if isinstance(r.get("eval_mean_average"), (int, float)) and isinstance(r.get("eval_mean_params"), (int, float))]
    if not leads:
        return None
    return {"evaluations": len(leads), "lead": float(np.mean(leads)), "won": sum(d > 0 for d in leads)}


def _meta_extra(state: dict) -> dict:
    """What meta.json keeps beside the metrics: the V and M its controller (``params.npz``, the kept one) was
    picked on (``world_model_sha256``, which export checks; ``state["shipped_world"]``), and for an exported
    controller that is still the one shipped (``export --params``) where it came from."""
    return {**({"world_model_sha256": state["shipped_world"]} if state.get("shipped_world") else {}),
            **({"shipped": state["shipped"]} if state.get("shipped") else {})}


def _world_of(controller_dir: str | Path) -> str | None:
    """The V and M the controller in ``controller_dir`` was picked on, as its meta.json names them."""
    try:
        meta = read_json(Path(controller_dir) / "meta.json", "controller metadata")
    except ArtifactError:
        return None
    return meta.get("world_model_sha256") if isinstance(meta, dict) else None


def evolve(config: EvolveConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Run CMA-ES until ``config.generations`` generations are done; resumes from ``<out_dir>``."""
    validate(config)
    with RunLock(config.out_dir, "evolve"):
        return _evolve(config, on_progress)


def _evolve(config: EvolveConfig, on_progress: ProgressCallback) -> dict:
    run_dir = Path(config.run_dir)
    out_dir = config.out_dir
    weights = _load_world_model(run_dir)
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    n = num_params(z_size, hidden)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = History(out_dir / "history.jsonl")

    state_path = out_dir / STATE
    _check_not_orphaned(out_dir)
    if (out_dir / CMA_STATE).exists():
        saved_state = read_json(state_path, "evolution state") if state_path.exists() else None
        es, state, shipped, average = _load_es(out_dir, saved_state)
        if state.get("n_params") != n:
            raise ArtifactError(f"{out_dir}: holds a controller of {state.get('n_params')} parameters, this world "
                                f"model needs {n}; pass another --run-dir or delete {out_dir}")
        _check_resumable(out_dir, config)
        if shipped is None:  # an older checkpoint: its params.npz is the one to ship
            shipped = load_controller(out_dir, z_size, hidden).get_params()
        save_params(out_dir, shipped, z_size, hidden)
        # A run from before fresh tracks were counted drove at most the first MAX_TEST_TRACKS of each range
        # (the most --eval-episodes and --confirm-episodes allow): its fresh tracks start after them.
        state.setdefault("tracks_next", {kind: MAX_TEST_TRACKS for kind in TRACK_RANGES})
        if "lineage" not in state:  # a run from before lineages were kept: its start is in its config
            started_from = (read_json(out_dir / "config.json", "evolution config").get("init_from")
                            if (out_dir / "config.json").exists() else "")
            state["lineage"] = ancestry(started_from, es.x0) if started_from else []
    else:
        es = new_es(config, z_size, hidden)
        state = {"generation": 0, "n_params": n, "best_eval": None, "episodes": 0, "env_steps": 0,
                 "train_seconds": 0.0, "tracks_next": {kind: 0 for kind in TRACK_RANGES},
                 "lineage": ancestry(config.init_from, es.mean) if config.init_from else [],
                 # A run from a trained controller ships it until its first periodic evaluation has scored
                 # it against the run's own controllers.
                 "start_pending": bool(config.init_from),
                 "shipped_world": _world_of(config.init_from) if config.init_from else None}
        shipped = np.asarray(es.mean, np.float32)
        average = None
    world = world_model_sha256(run_dir)  # recorded in the state by the first generation that runs on it
    if state.get("world_model_sha256") and world and state["world_model_sha256"] != world:
        log.warning("%s: V or M has changed since this evolution last ran; its controller was evolved on the "
                    "codes of the old ones (a fresh evolution --init-from it adapts it faster)", run_dir)
    if state.get("world_model_sha256") not in (None, world) and world and state["best_eval"] is not None:
        # V or M changed since the last generation: the kept controller's score is of the old ones. The next
        # evaluation scores it again on these, and that is the bar (on fixed tracks it would otherwise stay
        # the old one's). Once per change: the next generation records these V and M.
        state["start_pending"] = True
    if history.path.exists():  # drop generations after the checkpoint (all of them if there is none yet)
        history.truncate_after("generation", state["generation"])
    if "lead_spreads" not in state:  # a state saved before they were kept: at the margin it ran with
        margin = saved_settings(run_dir).get("confirm_margin", config.confirm_margin)
        state["lead_spreads"] = spreads_from_history(history.read(), margin)
    atomic_write_json(out_dir / "config.json", {**to_dict(config), "z_size": z_size, "hidden": hidden})

    resumed_from = state["generation"]
    cap_step_size(es, config.max_sigma)
    settings = RolloutSettings(config.env, config.max_steps, config.early_stop, config.early_stop_steps)
    eval_settings = RolloutSettings(config.env, config.max_steps, early_stop=False)
    total = config.generations
    metrics: dict = {}
    with RolloutPool(weights, settings, config.workers) as pool:
        eval_pool = RolloutPool(weights, eval_settings, config.workers) if config.eval_every else None
        try:
            go_on = bool(on_progress(state["generation"], total, {}))
            while state["generation"] < total and go_on:
                started = time.monotonic()
                gen = state["generation"] + 1
                state["world_model_sha256"] = world  # this generation evolves on these V and M
                rng = np.random.default_rng([config.seed, gen])
                seeds = [int(s) for s in rng.integers(0, TRAIN_EVAL_SEED_BASE, size=config.rollouts)]
                candidates = es.ask()
                results, returns = drive_grid(pool, candidates, seeds)
                fitness = returns.mean(axis=1)
                es.tell(candidates, list(-fitness))  # cma minimises
                cap_step_size(es, config.max_sigma)
                average = update_average(average, es.mean, config.average)
                best_i = int(np.argmax(fitness))
                metrics = {"generation": gen, "best": float(fitness.max()), "mean": float(fitness.mean()),
                           "worst": float(fitness.min()), "sigma": float(es.sigma),
                           "max_std": float(np.max(es.stds)),
                           "early_stopped": float(np.mean([r.early_stopped for r in results])),
                           "laps": float(np.mean([r.ended == OUTCOMES[0] for r in results])),
                           "skipped": float(np.mean([r.skipped for r in results])),
                           "rollouts": config.rollouts,
                           "steps": int(sum(r.steps for r in results))}
                if eval_pool is not None and gen % config.eval_every == 0:
                    named = {"eval_mean_params": es.mean, "eval_best_candidate": candidates[best_i]}
                    if average is not None and average[1] > 1:  # after one generation it is the mean
                        named["eval_mean_average"] = average[0]
                    evaluated = [np.asarray(p, np.float32) for p in named.values()]
                    eval_seeds, confirm_seeds = (next_tracks(config, state, kind) for kind in TRACK_RANGES)
                    score_start = state.pop("start_pending", False)  # the controller this run started from
                    # On fresh tracks the shipped controller drives them too: its score when it was picked
                    # was the best of many on other tracks, a bar no better challenger clears reliably.
                    drive_shipped = score_start or (config.fresh_tracks and state["best_eval"] is not None)
                    if drive_shipped:
                        evaluated.append(shipped)
                    scores, eval_steps = evaluate_params(eval_pool, evaluated, eval_seeds)
                    metrics.update(zip(named, scores), eval_episodes=len(eval_seeds),
                                   eval_first_seed=eval_seeds[0])
                    state["episodes"] += len(evaluated) * len(eval_seeds)
                    if drive_shipped:
                        metrics["eval_shipped"] = scores[-1]
                    if score_start:  # it is the one to beat
                        state["best_eval"] = metrics["eval_start"] = scores[-1]
                    pick = int(np.argmax(scores[:len(named)]))
                    metrics["eval_pick"] = list(named)[pick]
                    accept, confirmed = challenge(eval_pool, state, shipped, evaluated[pick], scores[pick],
                                                  confirm_seeds, config.max_steps, config.confirm_margin,
                                                  scores[-1] if drive_shipped else None)
                    if config.fresh_tracks:  # these tracks are driven: the next evaluation takes others
                        state["tracks_next"]["periodic"] += len(eval_seeds)
                    else:  # the same tracks every time; a resume with fresh tracks must start after them
                        state["tracks_next"]["periodic"] = max(state["tracks_next"]["periodic"], len(eval_seeds))
                    if confirmed:
                        metrics.update(confirmed, confirm_episodes=len(confirm_seeds),
                                       confirm_first_seed=confirm_seeds[0])
                        eval_steps += confirmed["confirm_steps"]
                        state["episodes"] += confirmed["confirm_driven"]
                        if config.fresh_tracks:
                            state["tracks_next"]["confirm"] += len(confirm_seeds)
                        else:
                            state["tracks_next"]["confirm"] = max(state["tracks_next"]["confirm"], len(confirm_seeds))
                    if accept:
                        state["best_eval"] = scores[pick]
                        shipped = evaluated[pick]
                        state["shipped_world"] = world
                        state.pop("shipped", None)  # what an export put in as the controller to beat is beaten
                    metrics["eval_steps"] = eval_steps
                    state["env_steps"] += eval_steps
                elif state["best_eval"] is None and not (state.get("start_pending") and eval_pool is not None):
                    # Nothing evaluated yet: ship the mean. (A run from a trained controller keeps shipping that
                    # one until its first evaluation; without evaluations, it ships the mean like any run.)
                    state.pop("start_pending", None)
                    state.pop("shipped", None)
                    shipped = np.asarray(es.mean, np.float32)
                    state["shipped_world"] = world
                state["generation"] = gen
                state["episodes"] += len(results)
                state["env_steps"] += metrics["steps"]
                state["train_seconds"] += time.monotonic() - started
                metrics["seconds"] = round(time.monotonic() - started, 2)
                history.append(metrics)
                atomic_save_npz(out_dir / LATEST_FILE, mean=np.asarray(es.mean, np.float32),
                                best_candidate=np.asarray(candidates[best_i], np.float32), generation=np.int64(gen),
                                **({} if average is None else {"average": np.asarray(average[0], np.float32)}))
                _save_es(out_dir, es, state, shipped, average)  # the checkpoint is complete
                save_params(out_dir, shipped, z_size, hidden)
                atomic_write_json(state_path, state)
                write_meta(out_dir, "controller", {**to_dict(config), "z_size": z_size, "hidden": hidden},
                           {**metrics, "generation": gen, "best_eval": state["best_eval"], "complete": False},
                           seed=config.seed, extra=_meta_extra(state))
                go_on = bool(on_progress(gen, total, metrics))
        finally:
            if eval_pool is not None:
                eval_pool.close()
    final = {**metrics, **{k: state[k] for k in ("generation", "best_eval", "episodes", "env_steps", "train_seconds")},
             "complete": state["generation"] >= total, "n_params": n, "resumed_from": resumed_from}
    if state["generation"] == 0:
        return final  # stopped before a first generation: no controller yet
    write_meta(out_dir, "controller", {**to_dict(config), "z_size": z_size, "hidden": hidden}, final,
               seed=config.seed, extra=_meta_extra(state))
    load_controller(out_dir, z_size, hidden)  # what was written loads
    return final
