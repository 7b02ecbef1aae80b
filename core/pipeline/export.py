"""Export: a trained world model into the shipped folder (``models/`` by default).

Only what the app and a resumed evolution need travels: weights, ``config.json``, ``meta.json``,
``history.jsonl``, the controller's evaluation and (optionally) its CMA-ES state; never checkpoints with
optimizer slots or the RNN's encoded-frame cache. The new folder is assembled beside the old one and
swapped in with renames, so an interrupted export leaves the previous model in place.

The controller shipped is the run's kept one (``params.npz``), or with ``params`` another one of the same
V and M (a CMA-ES mean screened on validation tracks, say). Its evaluation report must be of those very
parameters: a report of another controller is refused when named, and left out when it is the run's own.
A controller picked outside the evolution's gate goes into the shipped CMA-ES state as the one to beat,
unscored: an evolution resumed from the export scores it at its first periodic evaluation (as it does the
controller of a run started ``--init-from``), and ``state.json`` says where it came from (``shipped``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.config import EVAL_SEED_BASE, ExportConfig, validate
from core.models.controller import PARAMS_FILE, load_params_file, params_sha256, save_params
from core.pipeline.evolve import CMA_STATE, STATE, _load_es, _save_es, has_checkpoint
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import WEIGHT_FILES, ArtifactError, RunLock, atomic_write_json, read_json, read_meta
from core.storage.reports import read_report
from core.storage.weights_cache import world_model_sha256

log = logging.getLogger(__name__)


SHIPPED_FILES = {  # what an export copies of each part
    "vae": (WEIGHT_FILES["vae"], "config.json", "meta.json", "history.jsonl"),
    "rnn": (WEIGHT_FILES["rnn"], "config.json", "meta.json", "history.jsonl"),
    "controller": (WEIGHT_FILES["controller"], "latest.npz", "config.json", "meta.json", "history.jsonl", "evaluation.json",
                   "state.json"),
}
TRAINING_STATE = (CMA_STATE,)
REQUIRED = {*WEIGHT_FILES.values(), "config.json"}


def export(config: ExportConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Copy ``run_dir``'s vae/, rnn/ and controller/ into ``out_dir``; returns the files and their size."""
    validate(config)
    src, dst = Path(config.run_dir), Path(config.out_dir).resolve()
    _recover_swap(dst)
    _check_destination(src, dst)
    for flag, path in (("--params", config.params), ("--evaluation", config.evaluation)):
        if path and not Path(path).is_file():
            raise ArtifactError(f"{flag} {path}: no such file")
    # Training writes its weights at every checkpoint and an evolution its controller every generation:
    # refuse while any part is being written (RunLock says which) rather than copy parts of two moments.
    with contextlib.ExitStack() as locks:
        for kind in SHIPPED_FILES:
            if (src / kind).is_dir():
                locks.enter_context(RunLock(src / kind, "training"))
        return _export(config, src, dst, on_progress)


def _recover_swap(dst: Path) -> None:
    """Put back the previous model that a crash between the final two renames of an export left as
    ``.<name>.old`` with nothing at ``dst``."""
    old = dst.with_name(f".{dst.name}.old")
    if old.is_dir() and not dst.exists():
        log.warning("%s: restoring the model an interrupted export left in %s", dst, old)
        old.rename(dst)


def _check_destination(src: Path, dst: Path) -> None:
    """``dst`` is replaced as a whole (its loose files carried over): it must be new, hold only files, or
    be an earlier export; never a folder of other folders (the project folder, say) or the run itself."""
    src = src.resolve()
    if src == dst:
        raise ArtifactError(f"--run-dir and --out-dir are both {src}; export needs another destination")
    if dst in src.parents:
        raise ArtifactError(f"--out-dir {dst} contains --run-dir {src}; export into a folder of its own")
    if dst.exists() and not dst.is_dir():
        raise ArtifactError(f"--out-dir {dst} is a file; export needs a folder")
    if dst.is_dir() and not any((dst / kind).is_dir() for kind in SHIPPED_FILES):
        folders = sorted(p.name for p in dst.iterdir() if p.is_dir())
        if folders:  # a model card beside the model is fine; other folders mean this is not a model folder
            raise ArtifactError(f"--out-dir {dst} holds other folders ({', '.join(folders[:3])}) and no world "
                                "model (no vae/, rnn/ or controller/); export into a new folder, or over an "
                                "earlier export")


def _export(config: ExportConfig, src: Path, dst: Path, on_progress: ProgressCallback) -> dict:
    for kind in SHIPPED_FILES:
        read_meta(src / kind, kind)  # only finished (or cleanly stopped) stages export
    from core.models.agent import load_world_model
    weights, params = load_world_model(src)  # V, M and C load and fit together
    picked_on = read_json(src / "controller" / "meta.json", "controller metadata").get("world_model_sha256")
    if not config.params and picked_on and picked_on != world_model_sha256(src):  # --params: its report's check
        raise ArtifactError(f"{src}: its controller was evolved on other V and M than the ones there now (trained "
                            "further since?), and would drive on codes it has never seen; evolve it on these "
                            f"(python -m core evolve --run-dir {src} ...) until it keeps a controller of its own "
                            "before exporting")
    if config.training_state:  # without the CMA-ES state, params.npz agrees with the rest of what ships
        _check_checkpoint_complete(src / "controller", params)
    z_size, hidden = weights["mu_w"].shape[1], weights["lstm_recurrent"].shape[0]
    source = None
    if config.params:
        run_params = params
        params, source = load_params_file(config.params, z_size, hidden)
        source["run_params_sha256"] = params_sha256(run_params)
        if source["params_sha256"] == source["run_params_sha256"]:
            source = None  # the run's own controller: a plain export
    report, notes = _shipped_report(config, src, params)
    for note in notes:
        log.warning(note)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.new."))
    copied, total_bytes = [], 0
    try:
        for i, (kind, names) in enumerate(SHIPPED_FILES.items()):
            (staging / kind).mkdir()
            wanted = names + (TRAINING_STATE if kind == "controller" and config.training_state else ())
            for name in wanted:
                if kind == "controller" and name in _written_apart(source is not None):
                    continue
                if (src / kind / name).exists():
                    shutil.copy2(src / kind / name, staging / kind / name)
                    copied.append(f"{kind}/{name}")
                elif name in REQUIRED:
                    raise ArtifactError(f"{src / kind / name}: missing; finish that stage before exporting")
            on_progress(i + 1, len(SHIPPED_FILES), {"part": kind})
        if source is not None:
            copied += _ship_params(src / "controller", staging / "controller", params, source, z_size, hidden,
                                   config.training_state)
        if report is not None:
            atomic_write_json(staging / "controller" / "evaluation.json", report)
            copied.append("controller/evaluation.json")
        total_bytes = sum((staging / name).stat().st_size for name in copied)
        keep = [p for p in dst.iterdir() if p.name not in SHIPPED_FILES] if dst.exists() else []
        for p in keep:  # files of the folder that are not part of the model (a README, say) stay
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, staging / p.name)
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            dst.rename(old)
        staging.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = {"out_dir": str(dst), "files": len(copied), "megabytes": round(total_bytes / 2**20, 2),
              "params_sha256": params_sha256(params), "evaluation": None if report is None else report["mean"]}
    if source is not None:
        result["params_from"] = source["file"]
    if notes:
        result["notes"] = notes
    return result


def _check_checkpoint_complete(controller_dir: Path, params: np.ndarray) -> None:
    """Refuse a run whose last evolution checkpoint was cut short: its CMA-ES state (written first) names
    another controller than its ``params.npz`` (a kill between the two writes). Shipping that pair would
    send out a controller with the state of the next generation."""
    if not has_checkpoint(controller_dir):  # a pickled one of an earlier version is refused: convert it first
        return
    _, state, saved, _ = _load_es(controller_dir)  # a damaged state is refused, not shipped
    if params_sha256(saved) != params_sha256(params):
        raise ArtifactError(
            f"{controller_dir}: its last checkpoint was cut short (its CMA-ES state is of generation "
            f"{state['generation']}, its {PARAMS_FILE} of the one before); resume the evolution (python -m core "
            f"evolve --run-dir {controller_dir.parent} ...), which completes it as it starts, then export")


def _written_apart(other_params: bool) -> tuple[str, ...]:
    """The controller files not copied as they are: the evaluation (checked against the shipped parameters),
    and with other parameters than the run's, those, the evolution state and metadata (marked), and
    ``latest.npz`` (the run's last generation, not the shipped controller's: left out)."""
    return ("evaluation.json",) + (("params.npz", "state.json", "meta.json", CMA_STATE, "latest.npz")
                                   if other_params else ())


def _shipped_report(config: ExportConfig, src: Path, params: np.ndarray) -> tuple[dict | None, list[str]]:
    """The evaluation report to ship with ``params`` and what was left out or is doubtful on the way: a
    named report must be a finished held-out evaluation of these parameters on the run's V and M; the
    run's own is shipped only if it is of these parameters."""
    sha = params_sha256(params)
    if config.evaluation:
        report = read_report(config.evaluation)
        where = f"--evaluation {config.evaluation}"
        problem = _report_mismatch(report, sha, src)
        if problem:
            raise ArtifactError(f"{where}: {problem}; evaluate the controller you ship on {src}: python -m core "
                                f"evaluate --model-dir {src} --params <file> --out <report>")
        if report.get("complete") is not True:
            raise ArtifactError(f"{where}: a stopped evaluation; run it again to finish it, then export")
        held_out = report.get("held_out", all(seed >= EVAL_SEED_BASE for seed in report["seeds"]))  # older reports
        if held_out is not True:
            raise ArtifactError(f"{where}: not on held-out tracks (--first-seed below 1000000); ship an "
                                "evaluation on the evaluation tracks")
        return report, _report_doubts(report, where)
    own = src / "controller" / "evaluation.json"
    if not own.exists():
        return None, []
    report = read_report(own)
    problem = _report_mismatch(report, sha, src)
    if problem:
        return None, [f"{own} left out: {problem}; evaluate the shipped controller"]
    return report, _report_doubts(report, str(own))


def _report_mismatch(report: dict, sha: str, src: Path) -> str:
    """Why ``report`` is not of the controller ``sha`` on ``src``'s V and M ('' if nothing says so)."""
    if not report.get("params_sha256"):
        return "the report does not name its controller (no params_sha256)"
    if report["params_sha256"] != sha:
        return (f"a report of another controller (parameters {report['params_sha256'][:12]}, shipped "
                f"{sha[:12]})")
    world = world_model_sha256(src)
    if report.get("world_model_sha256") and report["world_model_sha256"] != world:
        return "a report of this controller driven with another V and M than the run's"
    return ""


def _report_doubts(report: dict, where: str) -> list[str]:
    """What a shipped report leaves open: an env other than the stock one, V and M it does not name."""
    doubts = []
    if report.get("env") != "stock":
        doubts.append(f"{where}: driven in the {report.get('env')} env, not the stock CarRacing-v3 that published "
                      "scores use")
    if not report.get("world_model_sha256"):
        doubts.append(f"{where}: made before reports named their V and M; check it was driven with the run's")
    return doubts


def _ship_params(src: Path, dst: Path, params: np.ndarray, source: dict, z_size: int, hidden: int,
                 training_state: bool) -> list[str]:
    """Write ``params`` as the shipped controller of ``dst`` (a controller folder being staged), with the
    run's evolution state and metadata marked accordingly: no periodic score and no confirmation of its own
    yet (``best_eval`` None, ``start_pending``), and ``shipped``: where it came from."""
    save_params(dst, params, z_size, hidden)
    written = ["controller/params.npz"]
    world = world_model_sha256(src.parent)  # its report was driven on these (_report_mismatch)
    state = read_json(src / STATE, "evolution state") if (src / STATE).exists() else None
    if training_state and has_checkpoint(src):
        es, state, _, average = _load_es(src)
        state = _as_shipped(state, source, world)
        _save_es(dst, es, state, params, average)
        written.append(f"controller/{CMA_STATE}")
    elif state is not None:
        state = _as_shipped(state, source, world)
    if state is not None:
        atomic_write_json(dst / STATE, state)
        written.append(f"controller/{STATE}")
    meta = read_meta(src, "controller")  # its metrics are the evolution's; its best_eval was the kept one's
    atomic_write_json(dst / "meta.json", {**meta, "metrics": {**meta["metrics"], "best_eval": None},
                                          "shipped": state["shipped"] if state else source,
                                          **({"world_model_sha256": world} if world else {})})
    return written + ["controller/meta.json"]


def _as_shipped(state: dict, source: dict, world: str | None) -> dict:
    """An evolution state whose controller to beat is ``source``'s, picked on the V and M ``world``:
    unscored, unconfirmed, and named."""
    state = {k: v for k, v in state.items() if k != "confirmed"}
    return {**state, "best_eval": None, "start_pending": True, "shipped_world": world,
            "shipped": {**source, "generation_of_run": state.get("generation")}}
