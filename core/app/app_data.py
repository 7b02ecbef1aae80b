"""What the app's pages read to show artifacts: folders, metadata, histories, sample frames, videos.

Relative paths (``runs``, ``data/rollouts``, ``models``) are resolved against ``data_root()``: the project
folder, or ``$WORLD_MODELS_ROOT`` when set (tests point it at a temporary folder). Background jobs run with
that folder as their working directory, so a config's relative paths mean the same thing to both.
Nothing here raises for a missing or half-written artifact: the pages show what exists.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from core import CODE_ROOT
from core.config import DEFAULT_DATA_DIR, DEFAULT_RUN_DIR, SHIPPED_MODEL_DIR, SHIPPED_OUTPUTS_DIR
from core.models.controller import LATEST_FILE, SNAPSHOT_FILE, SNAPSHOT_KINDS, params_sha256, snapshot_params
from core.stages import STAGES
from core.storage.artifacts import PARTS, WEIGHT_FILES, ArtifactError, read_history
from core.storage.checkpoints import newest_checkpoint
from core.storage.reports import check_report, compare_reports

ROOT_ENV = "WORLD_MODELS_ROOT"  # environment variable overriding the folder relative paths start from
# Real frames shipped with the app (scripts/make_sample_frames.py), shown while no episodes are collected:
# frames.npz (8 frames of 8 tracks) and one short episode (ep_*.npz, 24 steps of one track).
SAMPLE_DATA_DIR = CODE_ROOT / "assets" / "samples"
SAMPLE_FRAMES_FILE = "frames.npz"


def data_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or CODE_ROOT).resolve()


def resolve(path: Path | str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else data_root() / path


def relative(path: Path | str) -> str:
    """``path`` as the app shows it: relative to the data root when inside it, else in full."""
    path = resolve(path)
    try:
        return str(path.relative_to(data_root()))
    except ValueError:
        return str(path)


def jobs_dir() -> Path:
    """Where the app's job records and logs live."""
    return resolve(DEFAULT_RUN_DIR) / "jobs"


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mtime(path: Path | str) -> float:
    """Modification time of ``path``, 0.0 when missing (a cache key that changes when a file does)."""
    try:
        return resolve(path).stat().st_mtime
    except OSError:
        return 0.0


def when(timestamp: float | str | None) -> str:
    """A local date and time for a Unix time or an ISO date; '' for none."""
    if not timestamp:
        return ""
    if isinstance(timestamp, str):
        try:
            moment = _dt.datetime.fromisoformat(timestamp)
        except ValueError:
            return timestamp
    else:
        moment = _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


# --- artifacts ---------------------------------------------------------------------------------------


def artifact(folder: Path | str, kind: str, writing: Iterable[Path | str] = ()) -> dict | None:
    """What one artifact folder holds: None without weights, else ``path``, ``kind``, ``complete`` (training
    finished), ``training`` (the folder is among ``writing``, the output folders of the app's running jobs),
    ``created``, ``metrics``, ``config``, ``shipped`` (where an exported controller picked outside its
    evolution came from, ``export --params``; else None). A run outside the app (the command line) cannot be told from one
    that stopped part way: both are neither complete nor training."""
    folder = resolve(folder)
    weights = folder / WEIGHT_FILES[kind]
    if not weights.exists():
        return None
    meta = _read_json(folder / "meta.json") or {}
    config = _read_json(folder / "config.json") or meta.get("config") or {}
    metrics = meta.get("metrics") or {}
    training = folder.resolve() in {resolve(d).resolve() for d in writing}
    return {"path": str(folder), "kind": kind, "complete": bool(metrics.get("complete")), "training": training,
            "created": meta.get("created") or when(weights.stat().st_mtime), "metrics": metrics,
            "config": config, "updated": weights.stat().st_mtime, "shipped": meta.get("shipped")}


def world_model(model_dir: Path | str) -> dict:
    """The three parts of a world-model folder (each ``artifact()`` or None), its evaluation report if
    any (see ``evaluation()``), and ``usable``: V, M and C all present."""
    model_dir = resolve(model_dir)
    parts = {kind: artifact(model_dir / kind, kind) for kind in PARTS}
    return {**parts, "path": str(model_dir), "evaluation": evaluation(model_dir),
            "usable": all(parts.values())}


def default_model_dir() -> str:
    """The world model the app loads unless told otherwise: the shipped ``models``, or ``runs`` when only
    that one holds V, M and C (the Race page makes the same choice)."""
    if not world_model(SHIPPED_MODEL_DIR)["usable"] and world_model(DEFAULT_RUN_DIR)["usable"]:
        return DEFAULT_RUN_DIR
    return SHIPPED_MODEL_DIR


def _candidate_dirs(root: Path) -> list[Path]:
    """Where world models live: ``models/``, ``runs/``, the folders in ``runs/`` (``runs/mine``) and the
    project's other run folders named ``runs*`` (``runs2``, which docs/CLI.md uses for a second evolution)."""
    runs = root / DEFAULT_RUN_DIR
    found = [root / SHIPPED_MODEL_DIR, runs]
    if runs.is_dir():
        found += sorted(p for p in runs.iterdir() if p.is_dir())
    if root.is_dir():
        found += sorted(p for p in root.glob(DEFAULT_RUN_DIR + "?*") if p.is_dir())
    return found


def model_dirs(require: Iterable[str] = PARTS, root: Path | str | None = None, any_part: bool = False) -> list[str]:
    """World-model folders (relative to ``root``, as typed in configs) holding the weights of every part in
    ``require`` (with ``any_part``: of at least one), the default one first. ``root``: the app's folder
    unless given. The one list every page picks a world model from."""
    root = Path(root) if root is not None else data_root()
    require = tuple(require)
    check = any if any_part else all
    first = [root / default_model_dir()] if root == data_root() else []
    found = []
    for path in first + _candidate_dirs(root):
        name = path.relative_to(root).as_posix()
        if name not in found and check((path / kind / WEIGHT_FILES[kind]).is_file() for kind in require):
            found.append(name)
    return found


def is_shipped_model(path: Path | str) -> bool:
    """Whether ``path`` is the shipped world model's folder or inside it (the app never writes there)."""
    shipped = resolve(SHIPPED_MODEL_DIR).resolve()
    return resolve(path).resolve().is_relative_to(shipped)


@dataclasses.dataclass(frozen=True)
class Shown:
    """What a training page shows for one part of the world model: whose, and on which frames."""

    run_dir: str  # the run folder asked for (by the form, or the job shown)
    model_dir: str  # the world-model folder shown (holding vae/, rnn/, controller/), as the form names folders
    data_dir: str  # the episodes its frames come from (one folder, or several separated by commas)
    shipped: bool  # model_dir is the shipped model, shown read-only (the run folder has no such part yet)
    sample: bool  # data_dir is the app's sample frames (SAMPLE_DATA_DIR): no episodes are collected yet


def shown_folders(run_dir: str, data_dir: str, part: str, writing: Iterable[Path | str] = ()) -> Shown:
    """The folders a training page shows for ``part`` (vae, rnn, controller), given the run and data folders
    of its form (or of its last job): ``run_dir`` once it holds that part of its own (weights, the history
    of a run under way, or a folder among ``writing``, the output folders of running jobs), else the shipped
    model, read-only (else ``run_dir`` still, when the shipped model lacks the part too); ``data_dir`` when it
    holds episodes, else the sample frames shipped with the app (when they are there)."""
    own = resolve(run_dir) / part
    writing = {resolve(d).resolve() for d in writing}
    mine = (own / WEIGHT_FILES[part]).is_file() or (own / "history.jsonl").is_file() or own.resolve() in writing
    instead = not mine and (resolve(SHIPPED_MODEL_DIR) / part / WEIGHT_FILES[part]).is_file()
    model_dir = SHIPPED_MODEL_DIR if instead else run_dir
    sample = resolve(data_dir).resolve() == SAMPLE_DATA_DIR or (not episode_files(data_dir) and SAMPLE_DATA_DIR.is_dir())
    return Shown(run_dir=run_dir, model_dir=model_dir, data_dir=str(SAMPLE_DATA_DIR) if sample else data_dir,
                 shipped=is_shipped_model(model_dir), sample=sample)


def controller_sha256(model_dir: Path | str) -> str | None:
    """The hash an evaluation report stores of the controller it drove (of C's float32 parameters), for the
    controller now in ``model_dir``; None without a readable one."""
    try:
        with np.load(resolve(model_dir) / "controller" / WEIGHT_FILES["controller"], allow_pickle=False) as f:
            params = f["params"]
    except (OSError, ValueError, KeyError):
        return None
    return params_sha256(params)


def _for_controller(report: dict | None, model_dir: Path | str) -> dict | None:
    """``report`` checked (``core.storage.reports.check_report``, which recomputes its summary and ``endings``; None
    for a file that is not an evaluation report), with ``current``: True when it evaluated the controller
    now in ``model_dir``, False when an earlier one (evolution has replaced params.npz since), None when it
    cannot tell (no hash stored)."""
    if report is None:
        return None
    try:
        report = check_report(report, str(model_dir))
    except ArtifactError:
        return None
    stored = report.get("params_sha256")
    return {**report, "current": None if not stored else stored == controller_sha256(model_dir)}


def evaluation(model_dir: Path | str) -> dict | None:
    """The ``evaluate`` report stored with a world model (for the shipped one: the committed report), or
    None; ``current`` says whether it is of the controller now there (see ``_for_controller``)."""
    return _for_controller(_read_json(resolve(model_dir) / "controller" / "evaluation.json"), model_dir)


def outputs_dir(model_dir: Path | str) -> Path:
    """Where the app writes a world model's evaluations and videos: its controller/ folder, except for the
    shipped model, whose folder stays exactly as committed (its outputs go to runs/shipped-model/)."""
    path = resolve(model_dir)
    if path == resolve(SHIPPED_MODEL_DIR):
        return resolve(SHIPPED_OUTPUTS_DIR)
    return path / "controller"


def own_evaluation(model_dir: Path | str) -> dict | None:
    """The report of the user's own evaluation of a world model, the one the app writes into ``outputs_dir``
    (for a run folder its stored report; for the shipped model ``runs/shipped-model/evaluation.json``, never
    its published one); with ``current`` as in ``evaluation()``."""
    return _for_controller(_read_json(outputs_dir(model_dir) / "evaluation.json"), model_dir)


def published_evaluation() -> dict | None:
    """The shipped model's published report (``models/controller/evaluation.json``, shipped with it by
    ``export``), which no evaluation in the app replaces; None without one."""
    return evaluation(SHIPPED_MODEL_DIR)


def tracks(report: dict) -> str:
    """The tracks a report drove, in words: "tracks 1000000–1000099", "track 1000000", or "3 tracks from
    1000000 to 1000007" when they are not one run of seeds."""
    seeds = sorted(int(s) for s in report.get("seeds") or [])
    if not seeds:
        return "tracks unknown"
    if len(seeds) == 1:
        return f"track {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"tracks {seeds[0]}–{seeds[-1]}"
    return f"{len(seeds)} tracks from {seeds[0]} to {seeds[-1]}"


def against_shipped(report: dict | None, model_dir: Path | str) -> dict | None:
    """An evaluation ``report`` of ``model_dir`` against the shipped model's stored one, track by track
    (``core.storage.reports.compare_reports``); None for the shipped model itself, for a report of a controller no
    longer in ``model_dir``, without a shipped report, or when the two share no track or were driven
    otherwise (another env or step limit)."""
    if not report or report.get("current") is False or is_shipped_model(model_dir):
        return None  # nothing, an earlier controller's score, or the shipped model itself
    shipped = evaluation(SHIPPED_MODEL_DIR)
    if not shipped or shipped["current"] is False:  # a report of a controller no longer shipped
        return None
    try:
        return compare_reports(shipped, check_report(report, str(model_dir)))
    except ArtifactError:
        return None


def cma_mean(model_dir: Path | str) -> dict | None:
    """The CMA-ES mean an evolution in ``model_dir`` saved last (``controller/latest.npz``, rewritten every
    generation): ``generation`` and ``average`` (whether it holds an averaged mean too); None without a
    readable one (the shipped model keeps none)."""
    try:
        with np.load(resolve(model_dir) / "controller" / LATEST_FILE, allow_pickle=False) as f:
            return ({"generation": int(f["generation"]), "average": "average" in f.files} if "mean" in f.files
                    else None)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def copy_cma_mean(model_dir: Path | str, which: str = "mean") -> Path:
    """Freeze the evolution's current CMA-ES mean (or, ``which="average"``, its averaged mean) into
    ``outputs_dir(model_dir)`` and return the copy's path (``snapshot_params``: named by the generation and
    the hash, ``mean-gen45-1a2b3c4d.npz``, kept as it is when there already). ArtifactError without one."""
    return snapshot_params(resolve(model_dir) / "controller", which, outputs_dir(model_dir))


def params_evaluation(report_path: Path | str) -> dict | None:
    """The report of an evaluation of a controller file (``evaluate --params``) with ``out_path`` (where it
    is) and ``params_file`` (the file it drove), or None while there is none."""
    report = _read_json(resolve(report_path))
    if not report or not isinstance(report.get("params_source"), dict):
        return None
    try:
        report = check_report(report, str(report_path))
    except ArtifactError:
        return None
    return {**report, "out_path": str(resolve(report_path)), "params_file": report["params_source"].get("file")}


def export_command(run_dir: Path | str, params_file: Path | str, report: Path | str) -> str:
    """The shell command that ships ``params_file`` with ``run_dir``'s V and M and its evaluation ``report``
    into the app's shipped model, to paste in the project folder: paths inside it relative, others in full
    (an app root set by $WORLD_MODELS_ROOT elsewhere), each quoted for the shell."""

    def arg(path: Path | str) -> str:
        path = resolve(path)
        try:
            return shlex.quote(str(path.relative_to(CODE_ROOT)))
        except ValueError:
            return shlex.quote(str(path))

    out = arg(SHIPPED_MODEL_DIR)
    return (f"python -m core export --run-dir {arg(run_dir)} --params {arg(params_file)} --evaluation {arg(report)}"
            + (f" --out-dir {out}" if out != SHIPPED_MODEL_DIR else ""))


def snapshot_kind(params_file: str | None) -> str | None:
    """What a snapshot file (``copy_cma_mean``) holds, from its name: "mean", "average", or None for another
    file (or none)."""
    name = Path(params_file).name if params_file else ""
    return next((which for which in SNAPSHOT_KINDS if name.startswith(f"{which}-gen")), None)


def latest_mean_evaluation(model_dir: Path | str, which: str = "mean") -> dict | None:
    """The newest report of a copy of ``model_dir``'s CMA-ES mean (or averaged mean: ``copy_cma_mean``), or
    None."""
    pattern = SNAPSHOT_FILE.format(which=which, generation="*", sha8="*").replace(".npz", ".evaluation.json")
    reports = [params_evaluation(p) for p in outputs_dir(model_dir).glob(pattern)]
    reports = [r for r in reports if r]
    return max(reports, key=lambda r: str(r.get("date", ""))) if reports else None


def history(out_dir: Path | str) -> list[dict]:
    """The metrics a stage logged in ``<out_dir>/history.jsonl`` (empty if none)."""
    return read_history(resolve(out_dir) / "history.jsonl")


def data_summary(data_dir: Path | str = DEFAULT_DATA_DIR) -> dict:
    """Episodes, frames and returns of a data folder: the episodes are its files (those its manifest lists,
    with their steps and returns, and any it does not list yet, ``unlisted``); listed files since deleted
    do not count."""
    data_dir = resolve(data_dir)
    manifest = _read_json(data_dir / "manifest.json") or {}
    files = sorted(data_dir.glob("ep_*.npz")) if data_dir.is_dir() else []
    names = {f.name for f in files}
    entries = [e for e in manifest.get("episodes") or [] if isinstance(e, dict) and e.get("file") in names]
    unlisted = len(names - {e["file"] for e in entries})
    returns = [float(e["return"]) for e in entries]
    return {"path": str(data_dir), "episodes": len(entries) + unlisted, "unlisted": unlisted, "files": len(files),
            "frames": int(sum(e["steps"] + 1 for e in entries)), "returns": returns,
            "mean_return": float(np.mean(returns)) if returns else None, "entries": entries,
            "config": manifest.get("config") or {},
            "updated": max((f.stat().st_mtime for f in files), default=None)}


def data_folders_found() -> list[str]:
    """The data folders the app knows of, as the app names them: the default one, then every other
    folder beside it (``data/*``) that holds episodes or a collect manifest."""
    default = resolve(DEFAULT_DATA_DIR)
    found = [default] if default.is_dir() else []
    if default.parent.is_dir():
        found += sorted(p for p in default.parent.iterdir() if p.is_dir() and p != default
                        and ((p / "manifest.json").exists() or any(p.glob("ep_*.npz"))))
    return [relative(p) for p in found]


def episode_files(data_dir: Path | str) -> list[Path]:
    """Episode files of a training stage's ``data_dir``: one folder or several separated by commas."""
    from core.storage.dataset import NoDataError, data_folders, list_episodes
    try:
        folders = data_folders(str(data_dir))
    except NoDataError:
        return []
    return [p for folder in folders for p in list_episodes(resolve(folder))]


def data_version(data_dir: Path | str) -> float:
    """A cache key that changes when episodes come or go in ``data_dir`` (one folder or several separated by
    commas): the newest modification time of its folders, which an episode written or removed updates. One
    stat a folder, not one a file."""
    from core.storage.dataset import NoDataError, data_folders
    try:
        folders = data_folders(str(data_dir))
    except NoDataError:
        return 0.0
    return max((mtime(folder) for folder in folders), default=0.0)


def episode_name(path: Path | str) -> str:
    """An episode file as a list of episodes shows it: its folder's name and the file's stem
    (``rollouts/ep_0000012``), short enough for a narrow box; the data folders the app lists are siblings
    under ``data/``, so their names tell them apart."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}"


def resume_point(stage: str, config: dict) -> dict | None:
    """How far an earlier run of ``stage`` into the same folder got: ``{"done": n, "total": m, "unit": ...,
    "finished": bool}``; None when there is nothing to resume. ``finished``: the run reached what it was set
    to (collect: every track of ``config`` is in the folder; evolve: its generations are done; train stages:
    the checkpoint reached its total and ``config`` asks for no more epochs, which adds nothing unless the
    data or batch settings changed since). Train stages also give ``epochs``, those the earlier run was set
    to."""
    if stage == "collect":
        # Collect drives tracks seed .. seed + episodes - 1 and keeps those already in the folder.
        from core.storage.dataset import episode_path
        out = resolve(config["out_dir"])
        wanted = range(int(config["seed"]), int(config["seed"]) + int(config["episodes"]))
        have = sum(episode_path(out, s).exists() for s in wanted) if out.is_dir() else 0
        return ({"done": have, "total": len(wanted), "unit": "episodes", "finished": have == len(wanted)}
                if have else None)
    if stage in ("train-vae", "train-rnn"):
        out = resolve(STAGES[stage].out_dir(config))
        ckpt = newest_checkpoint(out)  # where the next run resumes from, even after a crash mid-swap
        state = _read_json(ckpt / "state.json") if ckpt is not None else None
        if not state:
            return None
        done, total = int(state.get("step", 0)), int(state.get("total", 0))
        # A training run counts its batches from its epochs: more epochs than the last run had go on from the
        # checkpoint, the same or fewer stop at once.
        epochs = int((_read_json(out / "config.json") or {}).get("epochs") or 0)
        return {"done": done, "total": total, "unit": "batches", "epochs": epochs,
                "finished": done >= total and int(config["epochs"]) <= epochs}
    if stage == "evolve":
        state = _read_json(resolve(config["run_dir"]) / "controller" / "state.json")
        if not state:
            return None
        done, total = int(state.get("generation", 0)), int(config["generations"])
        return {"done": done, "total": total, "unit": "generations", "finished": done >= total}
    return None


# --- frames, pictures and videos ------------------------------------------------------------------------


def sample_moments(data_dir: Path | str, count: int = 8,
                   seed: int = 0) -> tuple[np.ndarray, list[tuple[str, int] | None]]:
    """``count`` uint8 (64, 64, 3) frames spread over the episodes of ``data_dir`` (one folder or several
    separated by commas; fewer frames if there are fewer episodes), and where each is: (episode file, step), or None for the
    app's sample frames, which come with no drive. The same frames for the same folders and seed."""
    from core.storage.dataset import EpisodeError, load_episode
    if resolve(data_dir).resolve() == SAMPLE_DATA_DIR:  # frames of several tracks, picked once (shown_folders)
        frames = sample_data_frames()[:count]  # frames of 8 tracks, with no drive around them (h = 0)
        return frames, [None] * len(frames)
    paths = episode_files(data_dir)
    if not paths:
        return np.zeros((0, 64, 64, 3), np.uint8), []
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    frames, where = [], []
    for i in sorted(chosen):
        try:
            obs = load_episode(paths[i]).obs
        except EpisodeError:
            continue
        # Skip the zoom-in of the first second: those frames show the track from far away.
        lo = min(60, len(obs) - 1)
        t = int(rng.integers(lo, len(obs)))
        frames.append(obs[t])
        where.append((str(paths[i]), t))
    return (np.stack(frames) if frames else np.zeros((0, 64, 64, 3), np.uint8)), where


def sample_frames(data_dir: Path | str, count: int = 8, seed: int = 0) -> np.ndarray:
    """The frames of ``sample_moments``: uint8 (N, 64, 64, 3)."""
    return sample_moments(data_dir, count, seed)[0]


def sample_data_frames() -> np.ndarray:
    """The sample frames shipped with the app: uint8 (8, 64, 64, 3), one of each of 8 tracks
    (``SAMPLE_DATA_DIR``); none when the file is missing or not such frames."""
    try:
        with np.load(SAMPLE_DATA_DIR / SAMPLE_FRAMES_FILE, allow_pickle=False) as f:
            frames = f["frames"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return np.zeros((0, 64, 64, 3), np.uint8)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (64, 64, 3):
        return np.zeros((0, 64, 64, 3), np.uint8)
    return frames


def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """V's reconstruction (z = mu) of uint8 (N, 64, 64, 3) frames, as uint8."""
    if len(frames) == 0:
        return frames
    x = frames.astype(np.float32) / 255.0
    mu, _ = vae.encode(x)
    out = np.asarray(vae.decode(mu))
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode(vae, z: np.ndarray) -> np.ndarray:
    """uint8 (N, 64, 64, 3) frames for float32 (N, z) latents, with V's decoder compiled once (``tf.function``:
    a few milliseconds a call instead of tens, eager)."""
    compiled = vae.__dict__.get("_compiled_decode")
    if compiled is None:
        import tensorflow as tf
        compiled = tf.function(vae.decode, input_signature=[tf.TensorSpec((None, vae.z_size), tf.float32)])
        object.__setattr__(vae, "_compiled_decode", compiled)  # past Keras's tracking of attributes
    out = compiled(np.asarray(z, np.float32).reshape(-1, vae.z_size)).numpy()
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --- the latent explorer: z -> frame, and (z, h) -> C's action -------------------------------------------

EXPLORER_PRIOR_SEED = 0  # the explorer's "random z" start: the same draw from N(0, I) every time


def explorer_start(vae, frames: np.ndarray) -> dict:
    """What the latent explorer starts from, for V and uint8 (N, 64, 64, 3) real ``frames``; computed once
    for a V and a set of frames, not on every slider move. ``z`` float32 (N, z): V's codes (mu) of the frames;
    ``decoded`` uint8 (N, 64, 64, 3): those codes decoded; ``spread`` float32 (z,): the codes' std per
    dimension (1 without frames); ``order``: the dimensions by spread, largest first (the ones V uses most);
    ``prior`` float32 (z,): a draw from N(0, I), and ``prior_decoded`` uint8 (64, 64, 3) its frame."""
    prior = np.random.default_rng(EXPLORER_PRIOR_SEED).standard_normal(vae.z_size).astype(np.float32)
    if len(frames):
        z = np.asarray(vae.encode(frames.astype(np.float32) / 255.0)[0], np.float32)
        spread = z.std(axis=0)
    else:
        z, spread = np.zeros((0, vae.z_size), np.float32), np.ones(vae.z_size, np.float32)
    decoded = decode(vae, np.concatenate([z, prior[None]]))
    return {"z": z, "decoded": decoded[:-1], "spread": spread, "order": [int(d) for d in np.argsort(-spread, kind="stable")],
            "prior": prior, "prior_decoded": decoded[-1]}


def explorer_parts(vae_dir: Path | str) -> dict:
    """Where the explorer's M and C come from, for V in ``vae_dir`` (a run's ``vae/``): ``model_dir``, V's own
    run folder when it holds an M too (M gives h; else None), and ``controller_dir``, the C that acts: that
    run's, else the shipped model's (``shipped_controller`` True then); None without either."""
    run = resolve(vae_dir).parent
    model_dir = relative(run) if (run / "rnn" / WEIGHT_FILES["rnn"]).is_file() else None
    own = run / "controller"
    shipped = resolve(SHIPPED_MODEL_DIR) / "controller"
    if (own / WEIGHT_FILES["controller"]).is_file():
        controller_dir, borrowed = own, False
    elif (shipped / WEIGHT_FILES["controller"]).is_file():
        controller_dir, borrowed = shipped, own.resolve() != shipped.resolve()
    else:
        controller_dir, borrowed = None, False
    return {"model_dir": model_dir, "controller_dir": relative(controller_dir) if controller_dir else None,
            "shipped_controller": borrowed}


def memory_at(model, episode_path: Path | str, t: int) -> np.ndarray:
    """M's memory h float32 (hidden,) at step ``t`` of a real episode: what C sees beside frame t's code, after
    M has read the episode's frames (V's codes) and actions 0..t-1. ``model``: a ``core.pipeline.dream.WorldModel``."""
    from core.models.agent import remember
    from core.storage.dataset import load_episode
    episode = load_episode(resolve(episode_path))
    t = int(np.clip(t, 0, episode.steps))
    z = model.encode(episode.obs[:t])
    return remember(model.w, z, episode.action[:t])[0]


def controller_action(controller, z: np.ndarray, h: np.ndarray) -> dict[str, float]:
    """C's action for code z float32 (z,) and memory h float32 (hidden,), by name: ``steer`` in [-1, 1],
    ``gas`` and ``brake`` in [0, 1] (``core.models.controller.Controller.act``)."""
    from core.envs.actions import ACTION_NAMES
    action = controller.act(np.asarray(z, np.float32)[None], np.asarray(h, np.float32)[None])[0]
    return {name: float(v) for name, v in zip(ACTION_NAMES, action)}


def grid(rows: list[np.ndarray], gap: int = 2, scale: int = 2) -> np.ndarray:
    """Rows of uint8 (N, H, W, 3) frames as one picture, upscaled ``scale`` times."""
    from core.pipeline.dream import upscale
    width = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    out = np.full((len(rows) * (h + gap) - gap, width * (w + gap) - gap, 3), 250, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = frame
    return upscale(out, scale)


def episode_video(path: Path | str, scale: int = 3, fps: int = 50) -> bytes:
    """An episode file's frames as H.264 MP4 bytes (64x64 frames upscaled ``scale`` times)."""
    from core.pipeline.dream import upscale
    from core.pipeline.record import write_mp4
    from core.storage.dataset import load_episode
    frames = upscale(load_episode(resolve(path)).obs, scale)
    with tempfile.TemporaryDirectory() as tmp:
        out = write_mp4(frames, Path(tmp) / "episode.mp4", fps=fps)
        return out.read_bytes()
