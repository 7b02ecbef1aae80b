"""Stage 4, evolve: CMA-ES over C's flat parameters, fitness = mean return in the real env (less
``skip_penalty`` points for each tile a rollout skipped, when set: the return charges a skipped tile only
its own reward and the lap it leaves unfinished, about 14 points of a shipped controller's mean).

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

Each generation asks the CMA-ES for candidates, drives them, tells it their fitness, averages its mean,
runs the gate (``core.pipeline.gate``) and writes a checkpoint: its history line and ``latest.npz``, then
``cma_state.npz`` (the CMA-ES with the random state it samples candidates from, the run's counters and the
parameters to ship, as arrays and JSON: ``core.storage.cma_state``), then ``params.npz`` and ``state.json``
(readable copies). ``cma_state.npz`` is the commit point: re-running the same command resumes from it
wherever a kill landed, loses at most the generation in progress, and draws the same candidates an
uninterrupted run would have.

Checkpoints of earlier versions were pickles (``cma_state.pkl``). Unpickling a file runs whatever code it
names, and a run folder may come from someone else, so a pickle is never loaded on its own: the message
says so, and ``convert_pickled_checkpoint`` (``evolve --trust-pickle``) turns one the user trusts into
``cma_state.npz`` once. The counters and the gate's state
are an ``EvolutionState``; a state saved by any earlier version is brought up to date in one place,
``upgrade_state``, as it is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.config import MAX_TEST_TRACKS, EvolveConfig, ray_address, to_dict, validate
from core.envs.laps import OUTCOMES
from core.metrics import EvolveMetric
from core.models.controller import LATEST_FILE, PARAMS_FILE, load_controller, num_params, params_sha256, save_params
from core.pipeline.gate import (
    CONFIRM_SEED_BASE,
    MEAN,
    TRACK_RANGES,
    TRAIN_EVAL_SEED_BASE,
    GateDecision,
    GateState,
    spreads_from_history,
)
from core.pipeline.rollout import RolloutResult, RolloutSettings, drive_grid, rollout_pools
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import (
    ArtifactError,
    History,
    RunLock,
    atomic_save_arrays_json,
    atomic_save_npz,
    atomic_write_json,
    load_arrays_json,
    read_json,
    write_meta,
)
from core.storage.weights_cache import world_model_sha256

# cma (with the scipy and matplotlib it loads, a second of a core) is imported where a CMA-ES is made or loaded:
# a resume's saved settings, a flag error and the Evolve page's helpers answer without it.
if TYPE_CHECKING:
    import cma

log = logging.getLogger(__name__)


CMA_STATE = "cma_state.npz"
PICKLED_CMA_STATE = "cma_state.pkl"  # the checkpoint of earlier versions, only read by convert_pickled_checkpoint
STATE = "state.json"
Average = tuple  # (the averaged CMA-ES mean as float64, the number of generations it has seen)


def _load_world_model(run_dir: Path):
    from core.models.agent import load_world_model_weights
    return load_world_model_weights(run_dir)


def _save_es(out_dir: Path, es: cma.CMAEvolutionStrategy, state: dict, params: np.ndarray,
             average: Average | None) -> None:
    """The CMA-ES (with the random state it samples from), the run's counters, the shipped parameters and the
    averaged mean in one atomic file, so they can never disagree: arrays, and JSON under ``json``."""
    from core.storage.cma_state import es_to_arrays
    es_json, es_arrays = es_to_arrays(es)
    document = {"es": es_json, "state": dict(state), "average_generations": None if average is None else average[1]}
    arrays = {**es_arrays, "params": np.asarray(params, np.float32)}
    if average is not None:
        arrays["average"] = np.asarray(average[0], np.float64)
    atomic_save_arrays_json(out_dir / CMA_STATE, document, arrays)


def has_checkpoint(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds an evolution checkpoint to resume; a pickled one of an earlier version is an
    ArtifactError that says how to convert it (it is never loaded unasked: unpickling can run code)."""
    pickled = out_dir / PICKLED_CMA_STATE
    if pickled.exists():
        raise ArtifactError(f"{pickled}: an evolution checkpoint of an earlier version, a pickle, which is never "
                            "loaded unasked (unpickling a file can run any code in it); if it is yours, convert it "
                            f"once: python -m core evolve --run-dir {shlex.quote(str(out_dir.parent))} --trust-pickle")
    return (out_dir / CMA_STATE).exists()


def _load_es(out_dir: Path) -> tuple[cma.CMAEvolutionStrategy, dict, np.ndarray, Average | None]:
    """The saved CMA-ES, the counters of the generation it belongs to, the parameters to ship and the
    averaged mean (``None`` when the run keeps none).

    The counters come from ``cma_state.npz``, which is written before ``state.json``: after a kill between
    the two it is one generation ahead, or ``state.json`` is not there yet. Nothing in the file is code; one
    that is damaged or does not fit is an ArtifactError naming it.
    """
    from core.storage.cma_state import es_from_arrays
    path = out_dir / CMA_STATE
    document, arrays = load_arrays_json(path, "CMA-ES checkpoint")
    if not (isinstance(document, dict) and isinstance(document.get("state"), dict)
            and type(document["state"].get("generation")) is int and document["state"]["generation"] >= 0):
        raise ArtifactError(f"{path}: not a CMA-ES checkpoint of this project (no state with a generation); "
                            f"delete {out_dir} to start over")
    params, average_generations = arrays.pop("params", None), document.get("average_generations")
    es = es_from_arrays(document.get("es"), arrays, path)
    if not (isinstance(params, np.ndarray) and params.dtype == np.float32 and params.shape == es.mean.shape
            and np.all(np.isfinite(params))):
        raise ArtifactError(f"{path}: its parameters to ship (params) are missing or do not fit its CMA-ES of "
                            f"{es.mean.shape[0]}; delete {out_dir} to start over")
    average = arrays.get("average")
    if average_generations is None and average is None:
        return es, document["state"], params, None
    if not (type(average_generations) is int and average_generations >= 1 and isinstance(average, np.ndarray)
            and average.shape == es.mean.shape and average.dtype == np.float64 and np.all(np.isfinite(average))):
        raise ArtifactError(f"{path}: its averaged mean does not fit its CMA-ES; delete {out_dir} to start over")
    return es, document["state"], params, (average, average_generations)


def _unpickle_checkpoint(out_dir: Path, state: dict | None) -> tuple[cma.CMAEvolutionStrategy, dict,
                                                                    np.ndarray | None, Average | None]:
    """What a pickled checkpoint of an earlier version holds, as ``_load_es`` returns it (``params`` None: a
    pickle of a bare CMA-ES, from before the counters went into it, which goes with ``state``, its
    ``state.json``, and whose ``params.npz`` is the controller to ship). Runs the pickle: trusted files only."""
    import pickle

    import cma
    path = out_dir / PICKLED_CMA_STATE
    try:
        saved = pickle.loads(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - a pickle can raise anything; the user trusted it, say what it did
        raise ArtifactError(f"{path}: unreadable CMA-ES state ({type(e).__name__}: {e}); delete {out_dir} to "
                            "start over") from None
    if isinstance(saved, cma.CMAEvolutionStrategy) and state is not None:
        return saved, state, None, None
    if not (isinstance(saved, dict) and isinstance(saved.get("es"), cma.CMAEvolutionStrategy)
            and isinstance(saved.get("state"), dict) and isinstance(saved["state"].get("generation"), int)):
        raise ArtifactError(f"{path}: not a CMA-ES checkpoint of this project, or one without its {STATE}; "
                            f"delete {out_dir} to start over")
    average = saved.get("average")
    if not (average is None or (isinstance(average, tuple) and len(average) == 2
                                and np.shape(average[0]) == np.shape(saved["es"].mean)
                                and np.all(np.isfinite(average[0]))
                                and isinstance(average[1], int) and average[1] >= 1)):
        raise ArtifactError(f"{path}: its averaged mean does not fit its CMA-ES; delete {out_dir} to start over")
    return saved["es"], saved["state"], saved.get("params"), average


def convert_pickled_checkpoint(run_dir: str | Path) -> bool:
    """Turn the pickled checkpoint of an earlier version in ``<run_dir>/controller`` (``cma_state.pkl``) into
    ``cma_state.npz``, once, for a user who trusts it (``evolve --trust-pickle``); False when there is none.

    The new file is read back and must rebuild the very CMA-ES the pickle held (every array and number of
    it, and its random state) before the pickle is deleted; a kill before that leaves the pickle, and
    converting again gives the same file."""
    out_dir = Path(run_dir) / "controller"
    pickled = out_dir / PICKLED_CMA_STATE
    if not pickled.exists():
        return False
    with RunLock(out_dir, "evolve"):
        log.warning("%s: unpickling the checkpoint of an earlier version, as --trust-pickle asked, and converting "
                    "it to %s", pickled, CMA_STATE)
        state = read_json(out_dir / STATE, "evolution state") if (out_dir / STATE).exists() else None
        es, saved, params, average = _unpickle_checkpoint(out_dir, state)
        if params is None:  # a bare CMA-ES: its params.npz is the controller it ships
            params = load_controller(out_dir).get_params()
        _save_es(out_dir, es, saved, params, average)
        from core.storage.cma_state import same_state
        if not same_state(_load_es(out_dir)[0], es):
            raise ArtifactError(f"{out_dir / CMA_STATE}: does not rebuild the CMA-ES of {pickled}, which is kept; "
                                "report this with the versions of numpy and cma")
        pickled.unlink()
    return True


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
NOT_KEPT_ON_RESUME = ("run_dir", "workers", "ray_address")
FIXED_ON_RESUME = ("popsize", "diagonal")  # the saved CMA-ES state fixes them: another value is refused


def saved_settings(run_dir: str | Path) -> dict:
    """The settings of the evolution in ``<run_dir>/controller`` when it can be resumed (its CMA-ES state is
    there): a resume keeps them unless told otherwise, so that resuming a run (or the shipped model's
    evolution, copied into a run folder) does not fall back to the defaults' rollouts, evaluations and step
    cap. ``{}`` when there is nothing to resume."""
    out_dir = Path(run_dir) / "controller"
    path = out_dir / "config.json"
    if not has_checkpoint(out_dir) or not path.exists():
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
    if has_checkpoint(out_dir):
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
    from core.storage.cma_state import new_es as new_cma_es
    from core.storage.cma_state import new_sampler
    # Its own random state, seeded as cma would seed NumPy's global one with {"seed": config.seed + 1}.
    return new_cma_es(start, config.sigma0, config.popsize, config.diagonal, new_sampler(config.seed + 1))


def cap_step_size(es: cma.CMAEvolutionStrategy, max_sigma: float) -> None:
    """Hold the largest step of any parameter (``es.stds``: ``sigma`` times the square root of the
    covariance's diagonal, which sep-CMA-ES adapts too) at ``max_sigma`` at most (0: no cap)."""
    largest = float(np.max(es.stds))
    if max_sigma and largest > max_sigma:
        es.sigma *= max_sigma / largest
        while float(np.max(es.stds)) > max_sigma:  # the scaled product can round a hair above the cap
            es.sigma = float(np.nextafter(es.sigma, 0.0))


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
    state = read_state(folder) if (folder / STATE).exists() else {}
    config = read_json(folder / "config.json", "evolution config") if (folder / "config.json").exists() else {}
    entry.update({k: state[k] for k in ("generation", "episodes", "env_steps", "train_seconds", "best_eval")
                  if k in state})
    entry.update({k: config[k] for k in ("popsize", "rollouts", "workers", "seed") if k in config})
    return [*state.get("lineage", []), entry]


STATE_COUNTERS = {"generation": int, "n_params": int, "episodes": int, "env_steps": int, "train_seconds": (int, float)}


def read_state(controller_dir: Path) -> dict:
    """An evolution's ``state.json``, its counters checked: one of another shape is an ArtifactError naming it."""
    path = Path(controller_dir) / STATE
    state = read_json(path, "evolution state")
    odd = [k for k, kind in STATE_COUNTERS.items()
           if k in state and (not isinstance(state[k], kind) or isinstance(state[k], bool) or state[k] < 0)]
    if odd or not isinstance(state.get("generation"), int) or not isinstance(state.get("lineage", []), list):
        raise ArtifactError(f"{path}: not an evolution state of this project ({', '.join(odd) or 'generation'} "
                            "missing or of another kind); restore it from a copy")
    return state


def average_against_mean(records: list[dict]) -> dict | None:
    """How the averaged mean did against the CMA-ES mean in a run's periodic evaluations (both drive the same
    tracks each time): ``evaluations``, its mean ``lead`` and the evaluations it ``won``; ``None`` before
    the first evaluation that had both."""
    averaged, mean = EvolveMetric.EVAL_MEAN_AVERAGE, EvolveMetric.EVAL_MEAN_PARAMS
    leads = [r[averaged] - r[mean] for r in records
             if isinstance(r.get(averaged), (int, float)) and isinstance(r.get(mean), (int, float))]
    if not leads:
        return None
    return {"evaluations": len(leads), "lead": float(np.mean(leads)), "won": sum(d > 0 for d in leads)}


def _meta_extra(state: EvolutionState) -> dict:
    """What meta.json keeps beside the metrics: the V and M its controller (``params.npz``, the kept one) was
    picked on (``world_model_sha256``, which export checks; ``shipped_world`` in the state), and for an
    exported controller that is still the one shipped (``export --params``) where it came from."""
    gate = state.gate
    return {**({"world_model_sha256": gate.shipped_world} if gate.shipped_world else {}),
            **({"shipped": gate.shipped_from} if gate.shipped_from else {})}


def _world_of(controller_dir: str | Path) -> str | None:
    """The V and M the controller in ``controller_dir`` was picked on, as its meta.json names them."""
    try:
        meta = read_json(Path(controller_dir) / "meta.json", "controller metadata")
    except ArtifactError:
        return None
    return meta.get("world_model_sha256") if isinstance(meta, dict) else None


@dataclass(frozen=True)
class EvolutionState:
    """Where an evolution stands: its counters, the evolutions it started from, and its gate. ``to_json``
    is ``state.json`` (the CMA-ES checkpoint holds a copy); ``upgrade_state`` reads either back."""

    generation: int  # generations done
    n_params: int  # C's parameters, which V's z and M's h fix
    gate: GateState  # the controller shipped and what the gate knows of it
    episodes: int = 0  # episodes driven, the periodic evaluations' and second tests' included
    env_steps: int = 0  # env steps driven, the periodic evaluations' and second tests' included
    train_seconds: float = 0.0  # wall seconds spent in generations
    lineage: tuple[dict, ...] = ()  # the evolutions its start came from (--init-from), oldest first: ancestry()
    world_model_sha256: str | None = None  # the V and M its last generation ran on

    def after(self, generation: int, results: list[RolloutResult], decision: GateDecision, world: str | None,
              seconds: float) -> EvolutionState:
        """The state once ``generation`` has driven the training rollouts ``results`` on the V and M ``world``
        and the gate has made ``decision``, in ``seconds``."""
        return dataclasses.replace(self, generation=generation, gate=decision.state, world_model_sha256=world,
                                   episodes=self.episodes + decision.episodes + len(results),
                                   env_steps=self.env_steps + decision.steps + sum(r.steps for r in results),
                                   train_seconds=self.train_seconds + seconds)

    def to_json(self) -> dict:
        return {"generation": self.generation, "n_params": self.n_params, "episodes": self.episodes,
                "env_steps": self.env_steps, "train_seconds": self.train_seconds, "lineage": list(self.lineage),
                "world_model_sha256": self.world_model_sha256, **self.gate.to_json()}

    @classmethod
    def from_json(cls, saved: dict, params: np.ndarray) -> EvolutionState:
        """A state saved in the current format (``upgrade_state`` brings older ones to it) shipping ``params``."""
        return cls(saved["generation"], saved["n_params"], GateState.from_json(saved, params), saved["episodes"],
                   saved["env_steps"], saved["train_seconds"], tuple(saved["lineage"]), saved["world_model_sha256"])


def upgrade_state(saved: dict, params: np.ndarray | None, es: cma.CMAEvolutionStrategy, config: EvolveConfig,
                  z_size: int, hidden: int, history: History) -> EvolutionState:
    """The state ``saved`` (``state.json``, or its copy in the CMA-ES checkpoint), shipping ``params``, in the
    current format. Every older format is brought up to date here, as it is loaded; the next checkpoint
    writes it in the current one. ``history``: the run's, cut back to the checkpoint.

    What older states lack: ``params`` (None: the checkpoint did not keep them; its params.npz is the
    controller to ship); ``tracks_next``, ``lineage``, ``lead_spreads``, ``shipped_world`` and
    ``world_model_sha256`` (each from before it was kept); and in ``confirmed``, the first track (from before
    fresh tracks: the fixed ones) or the returns track by track (then it cannot stand in for the shipped
    controller, which is driven again, as for a state without it).
    """
    state = dict(saved)
    if params is None:
        params = load_controller(config.out_dir, z_size, hidden).get_params()
    # A run from before fresh tracks were counted drove at most the first MAX_TEST_TRACKS of each range (the
    # most --eval-episodes and --confirm-episodes allow): its fresh tracks start after them.
    state.setdefault("tracks_next", {kind: MAX_TEST_TRACKS for kind in TRACK_RANGES})
    if "lineage" not in state:  # its start is in its config
        config_path = config.out_dir / "config.json"
        started_from = read_json(config_path, "evolution config").get("init_from") if config_path.exists() else ""
        state["lineage"] = ancestry(started_from, es.x0) if started_from else []
    if "lead_spreads" not in state:  # read back from its history, at the margin it ran with
        margin = saved_settings(config.run_dir).get("confirm_margin", config.confirm_margin)
        state["lead_spreads"] = spreads_from_history(history.read(), margin)
    state.setdefault("shipped_world", None)
    state.setdefault("world_model_sha256", None)
    confirmed = state.pop("confirmed", None)
    if confirmed and "returns" in confirmed:
        state["confirmed"] = {"first_seed": CONFIRM_SEED_BASE, "world_model_sha256": None, **confirmed}
    return EvolutionState.from_json(state, params)


def evolve(config: EvolveConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Run CMA-ES until ``config.generations`` generations are done; resumes from ``<out_dir>``."""
    validate(config)
    with RunLock(config.out_dir, "evolve"):
        return _evolve(config, on_progress)


def _evolve(config: EvolveConfig, on_progress: ProgressCallback) -> dict:
    weights = _load_world_model(Path(config.run_dir))
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    world = world_model_sha256(config.run_dir)  # recorded in the state by each generation that runs on it
    history = History(config.out_dir / "history.jsonl")
    es, state, average = _start_or_resume(config, z_size, hidden, history, world)
    resumed_from, metrics = state.generation, {}
    with _rollout_pools(weights, config) as (pool, eval_pool):
        go_on = bool(on_progress(state.generation, config.generations, {}))
        while state.generation < config.generations and go_on:
            started, generation = time.monotonic(), state.generation + 1
            candidates = es.ask()
            results, returns = drive_grid(pool, candidates, training_tracks(config, generation))
            fitness = training_fitness(returns, results, config.skip_penalty)
            tell(es, candidates, fitness, config.max_sigma)
            average = update_average(average, es.mean, config.average)
            best_candidate = candidates[int(np.argmax(fitness))]
            decision = state.gate.step(eval_pool, challengers(es, best_candidate, average), generation, config, world)
            seconds = time.monotonic() - started
            episodes = state.episodes
            state = state.after(generation, results, decision, world, seconds)
            metrics = {**generation_metrics(generation, returns.mean(axis=1), results, es, config.rollouts),
                       **decision.metrics,
                       EvolveMetric.SECONDS: round(seconds, 2),
                       EvolveMetric.EPISODES_PER_HOUR: round(3600 * (state.episodes - episodes) / max(seconds, 1e-9))}
            _checkpoint(config, z_size, hidden, history, metrics, state, es, best_candidate, average)
            go_on = bool(on_progress(generation, config.generations, metrics))
    return _finish(config, z_size, hidden, state, metrics, resumed_from)


def training_tracks(config: EvolveConfig, generation: int) -> list[int]:
    """The ``config.rollouts`` tracks every candidate of ``generation`` drives (common random numbers: fitness
    differences come from the controllers, not the tracks); the run's seed and the generation fix them."""
    rng = np.random.default_rng([config.seed, generation])
    return [int(s) for s in rng.integers(0, TRAIN_EVAL_SEED_BASE, size=config.rollouts)]


def training_fitness(returns: np.ndarray, results: list[RolloutResult], skip_penalty: float) -> np.ndarray:
    """What CMA-ES ranks the candidates by: each one's mean over its rollouts (``returns``, candidates x
    tracks; ``results`` candidate-major) of the return less ``skip_penalty`` for each tile it skipped."""
    skipped = np.array([r.skipped for r in results], float).reshape(returns.shape)
    return (returns - skip_penalty * skipped).mean(axis=1)


def tell(es: cma.CMAEvolutionStrategy, candidates: list[np.ndarray], fitness: np.ndarray, max_sigma: float) -> None:
    """Update the CMA-ES with the candidates' ``fitness`` (``training_fitness``) and cap its step
    (``cap_step_size``)."""
    es.tell(candidates, list(-fitness))  # cma minimises
    cap_step_size(es, max_sigma)


def challengers(es: cma.CMAEvolutionStrategy, best_candidate: np.ndarray, average: Average | None) -> dict:
    """What a periodic evaluation scores, by the name of its score in the history: the CMA-ES mean, the
    generation's best candidate and the averaged mean."""
    named = {MEAN: es.mean, EvolveMetric.EVAL_BEST_CANDIDATE: best_candidate}
    if average is not None and average[1] > 1:  # after one generation it is the mean
        named[EvolveMetric.EVAL_MEAN_AVERAGE] = average[0]
    return named


def generation_metrics(generation: int, returns: np.ndarray, results: list[RolloutResult],
                       es: cma.CMAEvolutionStrategy, rollouts: int) -> dict:
    """A generation's line of the history before its evaluation's: its candidates' mean ``returns`` (best,
    mean, worst), the CMA-ES step after them (``sigma``, ``max_std``), the shares of its rollouts that stopped
    early or finished the lap and of the tiles they skipped, and the env steps they drove."""
    return {EvolveMetric.GENERATION: generation, EvolveMetric.BEST: float(returns.max()),
            EvolveMetric.MEAN: float(returns.mean()), EvolveMetric.WORST: float(returns.min()),
            EvolveMetric.SIGMA: float(es.sigma), EvolveMetric.MAX_STD: float(np.max(es.stds)),
            EvolveMetric.EARLY_STOPPED: float(np.mean([r.early_stopped for r in results])),
            EvolveMetric.LAPS: float(np.mean([r.ended == OUTCOMES[0] for r in results])),
            EvolveMetric.SKIPPED: float(np.mean([r.skipped for r in results])),
            EvolveMetric.ROLLOUTS: rollouts, EvolveMetric.STEPS: int(sum(r.steps for r in results))}


def _checkpoint(config: EvolveConfig, z_size: int, hidden: int, history: History, metrics: dict,
                state: EvolutionState, es: cma.CMAEvolutionStrategy, best_candidate: np.ndarray,
                average: Average | None) -> None:
    """Write the generation just done: its history line and ``latest.npz``, then the CMA-ES state (the
    commit point), then the readable copies: ``params.npz``, ``state.json`` and ``meta.json``."""
    out_dir, saved = config.out_dir, state.to_json()
    history.append(metrics)
    atomic_save_npz(out_dir / LATEST_FILE, mean=np.asarray(es.mean, np.float32),
                    best_candidate=np.asarray(best_candidate, np.float32), generation=np.int64(state.generation),
                    **({} if average is None else {"average": np.asarray(average[0], np.float32)}))
    _save_es(out_dir, es, saved, state.gate.params, average)  # the checkpoint is complete
    save_params(out_dir, state.gate.params, z_size, hidden)
    atomic_write_json(out_dir / STATE, saved)
    write_meta(out_dir, "controller", {**to_dict(config), "z_size": z_size, "hidden": hidden},
               {**metrics, "generation": state.generation, "best_eval": state.gate.best_eval, "complete": False},
               seed=config.seed, extra=_meta_extra(state))


def _finish(config: EvolveConfig, z_size: int, hidden: int, state: EvolutionState, metrics: dict,
            resumed_from: int) -> dict:
    """The run's summary (``metrics``: its last generation's); once there is a controller, its meta.json
    says so too, ``complete`` when every generation asked for is done."""
    final = {**metrics, "generation": state.generation, "best_eval": state.gate.best_eval,
             "episodes": state.episodes, "env_steps": state.env_steps, "train_seconds": state.train_seconds,
             "complete": state.generation >= config.generations, "n_params": state.n_params,
             "resumed_from": resumed_from}
    if state.generation == 0:
        return final  # stopped before a first generation: no controller yet
    write_meta(config.out_dir, "controller", {**to_dict(config), "z_size": z_size, "hidden": hidden}, final,
               seed=config.seed, extra=_meta_extra(state))
    load_controller(config.out_dir, z_size, hidden)  # what was written loads
    return final


@contextmanager
def _rollout_pools(weights, config: EvolveConfig):
    """The pool of the training rollouts (hopeless ones end early) and that of the periodic evaluations and
    second tests (whole episodes; None without evaluations): on this machine, or on the Ray cluster of
    ``--ray-address`` (``WM_RAY_ADDRESS``), whose workers both share."""
    settings = [RolloutSettings(config.env, config.max_steps, config.early_stop, config.early_stop_steps)]
    if config.eval_every:
        settings.append(RolloutSettings(config.env, config.max_steps, early_stop=False))
    with rollout_pools(weights, settings, config.workers, ray_address(config)) as pools:
        yield pools[0], (pools[1] if config.eval_every else None)


def _start_or_resume(config: EvolveConfig, z_size: int, hidden: int, history: History,
                     world: str | None) -> tuple[cma.CMAEvolutionStrategy, EvolutionState, Average | None]:
    """The CMA-ES, state and averaged mean of the evolution in ``config.out_dir``: the saved ones
    (``_resume``), or a new evolution's. Its history is cut back to them, and its config.json written."""
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_not_orphaned(out_dir)
    if has_checkpoint(out_dir):
        es, state, average = _resume(config, z_size, hidden, history, world)
    else:
        es, average = new_es(config, z_size, hidden), None
        state = EvolutionState(
            generation=0, n_params=num_params(z_size, hidden),
            lineage=tuple(ancestry(config.init_from, es.mean)) if config.init_from else (),
            # A run from a trained controller ships it until its first periodic evaluation has scored it
            # against the run's own controllers.
            gate=GateState(np.asarray(es.mean, np.float32), start_pending=bool(config.init_from),
                           shipped_world=_world_of(config.init_from) if config.init_from else None))
        if history.path.exists():  # the start of a run killed in its first generation
            history.truncate_after(EvolveMetric.GENERATION, 0)
    atomic_write_json(out_dir / "config.json", {**to_dict(config), "z_size": z_size, "hidden": hidden})
    return es, state, average


def _resume(config: EvolveConfig, z_size: int, hidden: int, history: History,
            world: str | None) -> tuple[cma.CMAEvolutionStrategy, EvolutionState, Average | None]:
    """The saved evolution, its state brought up to date (``upgrade_state``) and its checkpoint completed
    (``params.npz``, should a kill have cut it short), its history cut back to it (generations after it are
    run again)."""
    out_dir = config.out_dir
    es, saved, params, average = _load_es(out_dir)
    n = num_params(z_size, hidden)
    if saved.get("n_params") != n:
        raise ArtifactError(f"{out_dir}: holds a controller of {saved.get('n_params')} parameters, this world "
                            f"model needs {n}; pass another --run-dir or delete {out_dir}")
    _check_resumable(out_dir, config)
    if history.path.exists():
        history.truncate_after(EvolveMetric.GENERATION, saved["generation"])
    try:
        state = upgrade_state(saved, params, es, config, z_size, hidden, history)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field missing or of another kind
        raise ArtifactError(f"{out_dir / CMA_STATE}: its evolution state does not fit this version "
                            f"({type(e).__name__}: {e}); delete {out_dir} to start over") from None
    save_params(out_dir, state.gate.params, z_size, hidden)
    if state.world_model_sha256 not in (None, world) and world:
        log.warning("%s: V or M has changed since this evolution last ran; its controller was evolved on the "
                    "codes of the old ones (a fresh evolution --init-from it adapts it faster)", config.run_dir)
        if state.gate.best_eval is not None:
            # The kept controller's score is of the old V and M. The next evaluation scores it again on these, and
            # that is the bar (on fixed tracks it would otherwise stay the old one's). Once per change: the next
            # generation records these V and M.
            state = dataclasses.replace(state, gate=dataclasses.replace(state.gate, start_pending=True))
    return es, state, average
