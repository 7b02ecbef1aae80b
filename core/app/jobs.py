"""Background jobs: one pipeline stage running in a child process, watched and stopped from the app.

A ``Job`` runs ``python -m core.app.jobs <stage> <fd> <nice>`` in its own process, so training never blocks
the server; the child first lowers its OS priority by ``nice`` (``core.machine.job_nice``, default 10), and that of
the session it leads (``core.machine.lower_priority``: Linux shares the cores between sessions first), so that it
and its worker processes take only what the server's races leave of the cores. The child reads the stage's config (one JSON line) on stdin, calls the stage function with an
``on_progress`` that writes ``{"event": "progress", "step", "total", "metrics"}`` JSON lines to the pipe
``fd``, and ends with a ``done`` or ``error`` event. Stopping writes ``stop`` to the child's stdin; the
child's ``on_progress`` then returns False and the stage stops cleanly after its checkpoint. If the server
dies, the child sees end-of-file on stdin and stops the same way, so the run can be resumed later.

Why a fresh interpreter rather than ``multiprocessing``: Streamlit replaces ``sys.modules["__main__"]``
with the page script, and a spawned child re-runs ``__main__`` first, i.e. it would execute the app.

``JobRegistry`` holds every job of the process (the app shares one per folder, ``shared_registry``; not a
Streamlit cache, which "Clear cache" would empty while jobs still run). Each job's
record (stage, config, status, progress, error) and log are written to ``<jobs_dir>/<id>.json`` and
``<id>.log``, so after a server restart the registry lists past jobs, and a job that was running shows as
``interrupted``, ready to be resumed from its checkpoint (every stage resumes when re-run on the same
folder).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core import CODE_ROOT
from core.errors import is_user_error
from core.machine import SMALL_MACHINE_ENV, job_env, job_nice, lower_priority, max_jobs
from core.stages import JOB_STAGES, STAGES
from core.storage.artifacts import atomic_write_text

ACTIVE = ("starting", "running", "stopping")  # statuses of a job whose process is (still) alive
FINISHED = ("done", "stopped", "failed", "interrupted")
LOG_LINES = 400  # lines of the child's output kept in memory
HISTORY_POINTS = 5000  # progress records kept in memory; older ones are thinned out
SAVE_INTERVAL = 2.0  # seconds between writes of a running job's record


def _title(stage: str) -> str:
    return STAGES[stage].title if stage in STAGES else stage


class JobAlreadyRunning(RuntimeError):
    """A job of this stage is active; ``job`` is the one to watch instead."""

    def __init__(self, job: "Job"):
        super().__init__(f"a {_title(job.stage)} job is already running "
                         f"(job {job.id}, step {job.step} of {job.total or '?'})")
        self.job = job


class JobConflict(JobAlreadyRunning):
    """An active job of another stage trains a V or M that this one reads, or reads the V or M this one
    would train: run one after the other, or the reader sees weights change under it."""

    def __init__(self, job: "Job", folder: str, writes: bool):
        RuntimeError.__init__(self, f"the running {_title(job.stage)} job (job {job.id}) "
                                    f"{'trains' if writes else 'reads'} `{folder}`, which this one "
                                    f"{'reads' if writes else 'would train'}; wait for it to end or stop it "
                                    "first")
        self.job = job


class JobLimit(JobConflict):
    """The small-machine setting (``core.machine``) runs at most ``limit`` jobs at once, all stages together,
    and that many are running; ``job`` is one of them."""

    def __init__(self, job: "Job", limit: int):
        RuntimeError.__init__(self, f"this app runs {limit} job{'' if limit == 1 else 's'} at a time "
                                    f"({SMALL_MACHINE_ENV}=1: a small machine), and the {_title(job.stage)} job "
                                    f"(job {job.id}) is running; wait for it to end or stop it first")
        self.job = job


@dataclass
class Job:
    """One stage run in a child process. Read it through ``snapshot()`` from other threads."""

    id: str
    stage: str
    config: dict
    out_dir: str
    status: str = "starting"
    step: int = 0
    total: int = 0
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # dicts: step, total, time (s since start), **metrics
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    error: str | None = None  # plain words for the page
    error_detail: str | None = None  # the child's traceback, for bugs
    result: dict | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    pid: int | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one record write at a time
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _record_path: Path | None = field(default=None, repr=False)
    _log_file: Any = field(default=None, repr=False)
    _last_save: float = field(default=0.0, repr=False)

    @property
    def title(self) -> str:
        return _title(self.stage)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    def cancel(self) -> None:
        """Ask the stage to stop at its next safe point (it writes a checkpoint first)."""
        with self._lock:
            if not self.active:
                return
            self._cancel.set()
            self.status = "stopping"
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.write(b"stop\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
        self._save(force=True)

    def kill(self) -> None:
        """End the child at once (no checkpoint of the step in progress). For a stage that ignores ``cancel``."""
        self._cancel.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; returns whether it has."""
        if self._proc is None and not self.active:
            return True
        return self._finished.wait(timeout)

    def snapshot(self) -> dict:
        """A consistent copy of the job's state, safe to read while the job runs."""
        with self._lock:
            return {"id": self.id, "stage": self.stage, "title": self.title, "status": self.status,
                    "step": self.step, "total": self.total, "fraction": self.fraction,
                    "metrics": dict(self.metrics), "history": list(self.history), "log": list(self.log),
                    "error": self.error, "error_detail": self.error_detail, "result": self.result,
                    "config": dict(self.config), "out_dir": self.out_dir, "started_at": self.started_at,
                    "ended_at": self.ended_at, "elapsed": self.elapsed, "pid": self.pid,
                    "cancel_requested": self.cancel_requested}

    # --- the reader side, run by the job's threads -------------------------------------------------

    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "progress":
                self.step, self.total = int(event["step"]), int(event["total"])
                metrics = event.get("metrics") or {}
                if metrics:
                    self.metrics = metrics
                    self.history.append({"step": self.step, "total": self.total,
                                         "time": round(time.time() - self.started_at, 3), **metrics})
                    if len(self.history) > HISTORY_POINTS:
                        self.history = self.history[::2]
                if self.status == "starting":
                    self.status = "running"
            elif kind == "done":
                self.result = event.get("result")
                self.status = "stopped" if self._cancel.is_set() or event.get("stopped") else "done"
            elif kind == "error" and event.get("stopped"):
                self.status = "stopped"
            elif kind == "error":
                self.error = event.get("message") or "the job failed"
                self.error_detail = event.get("traceback")
                self.status = "failed"
        self._save(force=kind != "progress")

    def _on_log(self, line: str) -> None:
        with self._lock:
            self.log.append(line)
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            except (OSError, ValueError):
                pass

    def _on_exit(self, returncode: int) -> None:
        with self._lock:
            if self.status in ACTIVE:  # the child died without saying how it ended
                if self._cancel.is_set():
                    self.status = "stopped"
                else:
                    self.status = "failed"
                    reason = "it was killed (out of memory?)" if returncode < 0 else f"exit code {returncode}"
                    last = [ln for ln in self.log if ln.strip()][-3:]
                    self.error = (f"The {self.title} worker process ended unexpectedly ({reason})."
                                  + (" Last output: " + " | ".join(last) if last else ""))
            self.ended_at = time.time()
        self._save(force=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._finished.set()

    def _save(self, force: bool = False) -> None:
        """Write the job's record (not its history: the stage's own history.jsonl has that)."""
        if self._record_path is None:
            return
        # Three threads save (events, exit, the page's stop): one at a time, each with a snapshot taken
        # under the lock, so the last record written is always the newest state.
        with self._save_lock:
            now = time.time()
            if not force and now - self._last_save < SAVE_INTERVAL:
                return
            self._last_save = now
            snap = self.snapshot()
            record = {k: snap[k] for k in ("id", "stage", "status", "step", "total", "metrics", "error",
                                           "error_detail", "result", "config", "out_dir", "started_at",
                                           "ended_at", "pid")}
            try:
                atomic_write_text(self._record_path, json.dumps(record, default=str))
            except OSError:
                pass

    @classmethod
    def from_record(cls, record: dict, record_path: Path) -> "Job":
        """A past job read back from its record; one that was active when the server stopped is
        ``interrupted``."""
        job = cls(id=record["id"], stage=record["stage"], config=record.get("config") or {},
                  out_dir=record.get("out_dir", ""), status=record.get("status", "interrupted"),
                  step=int(record.get("step") or 0), total=int(record.get("total") or 0),
                  metrics=record.get("metrics") or {}, error=record.get("error"),
                  error_detail=record.get("error_detail"), result=record.get("result"),
                  started_at=float(record.get("started_at") or 0.0), ended_at=record.get("ended_at"),
                  pid=record.get("pid"))
        job._record_path = record_path
        log_path = record_path.with_suffix(".log")
        if log_path.exists():
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            job.log.extend(lines[-LOG_LINES:])
        if job.status in ACTIVE:
            job.status = "interrupted"
            job.error = None
            job.ended_at = job.ended_at or record_path.stat().st_mtime
            job._save(force=True)
        job._finished.set()
        return job


class JobRegistry:
    """Every job of this process, at most one active per stage.

    ``jobs_dir``: where job records and logs go (None: kept in memory only). ``cwd``: the working folder
    of the children, against which relative paths in configs are resolved. ``nice``: how much lower the
    children's OS priority is than this process's (None: ``core.machine.job_nice()`` at each start).
    """

    def __init__(self, jobs_dir: Path | str | None = None, cwd: Path | str | None = None,
                 python: str = sys.executable, keep: int = 50, nice: int | None = None):
        self.jobs_dir = Path(jobs_dir) if jobs_dir else None
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.python = python
        self.keep = keep
        self.nice = nice
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        if self.jobs_dir is not None:
            self._load_past()

    def _load_past(self) -> None:
        if not self.jobs_dir.is_dir():
            return
        for path in sorted(self.jobs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)[-self.keep:]:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                self._jobs[record["id"]] = Job.from_record(record, path)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a torn or foreign file: not a job we can show

    def jobs(self, stage: str | None = None) -> list[Job]:
        """Jobs, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        jobs = [j for j in jobs if stage is None or j.stage == stage]
        return sorted(jobs, key=lambda j: j.started_at, reverse=True)

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

    def active(self, stage: str) -> Job | None:
        return next((j for j in self.jobs(stage) if j.active), None)

    def latest(self, stage: str) -> Job | None:
        jobs = self.jobs(stage)
        return jobs[0] if jobs else None

    def start(self, stage: str, config: Any) -> Job:
        """Validate ``config`` (a stage config dataclass) and run its stage in a child process.

        Raises ``ConfigError`` for a bad value, ``JobAlreadyRunning`` when this stage has an active job,
        ``JobConflict`` when an active job trains a V or M this one reads, or reads the one it would train,
        and ``JobLimit`` when the small-machine setting's number of jobs are running (``core.machine``).
        """
        from core.config import to_dict, validate
        if stage not in JOB_STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(JOB_STAGES)}")
        if not isinstance(config, STAGES[stage].config):
            raise TypeError(f"{stage} takes a {STAGES[stage].config.__name__}, got {type(config).__name__}")
        validate(config)
        config_dict = to_dict(config)
        with self._lock:
            running = next((j for j in self._jobs.values() if j.stage == stage and j.active), None)
            if running is not None:
                raise JobAlreadyRunning(running)
            limit, active = max_jobs(), [j for j in self._jobs.values() if j.active]
            if limit is not None and len(active) >= limit:
                raise JobLimit(min(active, key=lambda j: j.started_at), limit)
            out_dir = STAGES[stage].out_dir(config_dict)
            reads = {self._place(p) for p in STAGES[stage].world_model_inputs(config_dict)}
            for other in (j for j in self._jobs.values() if j.active):
                if self._place(other.out_dir) in reads:
                    raise JobConflict(other, other.out_dir, writes=True)
                other_reads = STAGES[other.stage].world_model_inputs(other.config)
                if self._place(out_dir) in {self._place(p) for p in other_reads}:
                    raise JobConflict(other, out_dir, writes=False)
            job = Job(id=uuid.uuid4().hex[:8], stage=stage, config=config_dict, out_dir=out_dir)
            self._jobs[job.id] = job
        try:
            self._launch(job)
        except OSError as e:
            with job._lock:
                job.status, job.error, job.ended_at = "failed", f"could not start the worker process: {e}", time.time()
            job._finished.set()
        return job

    def _place(self, folder: str) -> str:
        """One name per folder, however a config spells it: jobs run in ``cwd``, so relative paths start
        there, and links are followed."""
        return os.path.realpath(os.path.join(self.cwd, folder))

    def _launch(self, job: Job) -> None:
        if self.jobs_dir is not None:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            job._record_path = self.jobs_dir / f"{job.id}.json"
            job._log_file = open(self.jobs_dir / f"{job.id}.log", "a", encoding="utf-8")
        read_fd, write_fd = os.pipe()
        env = job_env(os.environ)  # with the small-machine setting, fewer threads (core.machine)
        # The child imports the code this server runs, not whatever else a PYTHONPATH or an install names core.
        env["PYTHONPATH"] = os.pathsep.join([str(CODE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                                  if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("SDL_VIDEODRIVER", "dummy")
        try:
            # A session of its own: Ctrl+C in the server's terminal reaches the child as end-of-file on
            # stdin (a clean stop with a checkpoint), not as a KeyboardInterrupt in the middle of a write.
            nice = job_nice() if self.nice is None else self.nice
            proc = subprocess.Popen([self.python, "-m", "core.app.jobs", job.stage, str(write_fd), str(nice)],
                                    cwd=self.cwd,
                                    env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True)
        except BaseException:
            os.close(read_fd)
            if job._log_file is not None:
                job._log_file.close()
                job._log_file = None
            raise
        finally:
            os.close(write_fd)
        # Under the job's lock, so that a Stop clicked meanwhile either finds no process yet (and is sent
        # here, after the config) or finds the config already written (and sends it itself).
        with job._lock:
            job._proc, job.pid = proc, proc.pid
            try:
                proc.stdin.write((json.dumps(job.config) + "\n").encode())
                if job._cancel.is_set():
                    proc.stdin.write(b"stop\n")
                proc.stdin.flush()
            except OSError:
                pass  # the child died at once; the threads below report how, with its output
        job._save(force=True)
        events = threading.Thread(target=_read_events, args=(job, read_fd), daemon=True,
                                  name=f"job-{job.id}-events")
        output = threading.Thread(target=_read_output, args=(job, proc), daemon=True, name=f"job-{job.id}-log")
        events.start()
        output.start()
        threading.Thread(target=_reap, args=(job, proc, events, output), daemon=True,
                         name=f"job-{job.id}-wait").start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every active job and wait for them (tests; the server relies on end-of-file instead)."""
        for job in self.jobs():
            if job.active:
                job.cancel()
        deadline = time.time() + timeout
        for job in self.jobs():
            if not job.wait(max(0.0, deadline - time.time())):
                job.kill()
                job.wait(5.0)


_SHARED: dict[tuple[Path, Path], JobRegistry] = {}
_SHARED_LOCK = threading.Lock()


def shared_registry(jobs_dir: Path | str, cwd: Path | str) -> JobRegistry:
    """The process-wide registry of ``jobs_dir``: every session and page of the app gets the same one, for
    as long as the server runs (a second registry over the folder would read running jobs as
    interrupted, and let a second job of their stage start)."""
    key = (Path(jobs_dir).resolve(), Path(cwd).resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = JobRegistry(*key)
        return _SHARED[key]


def _read_events(job: Job, fd: int) -> None:
    with os.fdopen(fd, "rb") as pipe:
        for raw in pipe:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            job._on_event(event)


def _read_output(job: Job, proc: subprocess.Popen) -> None:
    for raw in proc.stdout:
        job._on_log(raw.decode("utf-8", errors="replace").rstrip("\n"))


def _reap(job: Job, proc: subprocess.Popen, events: threading.Thread, output: threading.Thread) -> None:
    returncode = proc.wait()
    events.join(10.0)
    output.join(10.0)
    try:
        proc.stdin.close()
    except OSError:
        pass
    job._on_exit(returncode)


# --- the child ---------------------------------------------------------------------------------------


def _child(stage: str, fd: int, nice: int = 0) -> int:
    """Run ``stage`` with the config read from stdin, reporting over pipe ``fd``, ``nice`` steps below the
    server's priority (its worker processes inherit it); see the module doc."""
    lower_priority(nice)
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
    write_lock = threading.Lock()
    stop = threading.Event()

    def send(event: dict) -> None:
        line = json.dumps(event, default=_jsonable)
        with write_lock:
            if out.closed:
                return
            try:
                out.write(line + "\n")
                out.flush()
            except OSError:  # the server is gone (its end of the pipe closed): stop at the next safe point
                _server_gone(out)
                stop.set()

    def watch_stdin() -> None:
        # "stop" from the server, or end-of-file because the server is gone: stop at the next safe point.
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    try:
        from core.config import from_dict
        config = from_dict(STAGES[stage].config, json.loads(sys.stdin.readline()))
        threading.Thread(target=watch_stdin, daemon=True, name="stop-watch").start()
        function = STAGES[stage].prepare(config)

        def on_progress(step: int, total: int, metrics: Mapping[str, object]) -> bool:
            send({"event": "progress", "step": int(step), "total": int(total), "metrics": dict(metrics)})
            return not stop.is_set()

        result = function(config, on_progress)
        if not isinstance(result, dict):
            result = {"result": result}
        send({"event": "done", "result": result, "stopped": stop.is_set()})
        return 0
    except InterruptedError:  # a stage stopped where it has no checkpoint to write (e.g. while encoding)
        send({"event": "error", "message": "stopped", "stopped": True})
        return 0
    except Exception as e:  # reported to the page: plain words for user errors, the traceback for bugs
        user_error = is_user_error(e)
        message = str(e) if user_error else f"{_title(stage)} failed: {type(e).__name__}: {e}"
        send({"event": "error", "message": message,
              "traceback": None if user_error else traceback.format_exc()})
        return 1
    finally:
        with write_lock:
            try:
                out.close()
            except OSError:
                pass


def _server_gone(events) -> None:
    """Silence a child whose server has exited: its pipes are closed, and a stage writing a warning or a
    progress line to them would fail with BrokenPipeError before it reaches its checkpoint."""
    try:
        events.close()
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # NumPy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
