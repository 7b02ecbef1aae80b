"""The small-machine setting, for a host with little memory such as Streamlit Community Cloud (an app gets
at most 2.7 GB and up to 2 cores there).

Turn it on with ``WM_SMALL_MACHINE=1`` in the server's environment, or as a root-level Streamlit secret
(``WM_SMALL_MACHINE = "1"`` in ``.streamlit/secrets.toml`` or in Community Cloud's secrets box): Streamlit
makes root-level secrets environment variables when its server starts, so it is read here, at each use,
from the environment. What it changes (figures: BENCHMARKS.md, "Memory"):

- The app runs one job at a time, all stages together (``core.app.jobs.JobRegistry``): every training job
  holds its own TensorFlow, about 0.65 GB before it trains.
- Jobs start with one thread per math library (BLAS, OpenMP, TensorFlow's two pools; ``JOB_ENV``), so a
  training job leaves the other core to the server, whose race steps 50 times a second. (This saves no
  memory to speak of; measured: the same peak for a VAE job.)
- (Whatever the setting, jobs run at a lower OS priority than the server: ``job_nice``, ``WM_JOB_NICE``.)
- The race's AI reads V's and M's weights from the weights cache; when they are not cached yet (after a
  reboot, say), a child process loads them with Keras and fills the cache (``core.models.agent``), so the
  server does not import TensorFlow for a race. The Home page starts that load at the first visit, before
  a job can run beside it.
"""

from __future__ import annotations

import os
from typing import Mapping

SMALL_MACHINE_ENV = "WM_SMALL_MACHINE"
JOB_NICE_ENV = "WM_JOB_NICE"
DEFAULT_JOB_NICE = 10  # added to a job's niceness: training yields the cores to the server's 50 Hz races
MAX_NICE = 19
TRUE_WORDS = ("1", "true", "yes", "on")
SMALL_MACHINE_MAX_JOBS = 1  # jobs running at once, all stages together
# One thread per math library: worker processes always start so (core.envs.env.spawn_context), jobs on a
# small machine too.
SINGLE_THREAD_ENV = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
JOB_ENV = SINGLE_THREAD_ENV  # what a job's process adds to its environment on a small machine


def small_machine(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the small-machine setting is on (``WM_SMALL_MACHINE`` is 1, true, yes or on)."""
    value = (os.environ if environ is None else environ).get(SMALL_MACHINE_ENV, "")
    return value.strip().lower() in TRUE_WORDS


def max_jobs() -> int | None:
    """Jobs the app runs at once, all stages together; None: no limit beyond one per stage."""
    return SMALL_MACHINE_MAX_JOBS if small_machine() else None


def job_nice(environ: Mapping[str, str] | None = None) -> int:
    """How much lower a job's OS priority is than the server's (``WM_JOB_NICE``, 0 to 19, default 10).

    Every job and its worker processes run at this niceness, so a training job takes only what the server
    leaves of the cores: its race ticks come first (at 10 a job gets about a tenth of a core the server
    wants). 0 runs jobs at the server's priority. A value that is not a whole number gives the default."""
    raw = (os.environ if environ is None else environ).get(JOB_NICE_ENV, "").strip()
    try:
        return min(MAX_NICE, max(0, int(raw))) if raw else DEFAULT_JOB_NICE
    except ValueError:
        return DEFAULT_JOB_NICE


def lower_priority(nice: int) -> None:
    """Lower this process's OS priority by ``nice`` steps, and that of its session's scheduling group.

    Linux's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``, on by default in many distributions and
    VMs) share the cores between sessions first, and a niceness counts only within its session. A job runs
    in a session of its own, so a nice process alone would still get as much of the cores as the whole
    server's session (measured: an evolution at niceness 19 took 0.65 of 2 cores beside four races that got
    0.71). The session's group therefore gets the job's niceness too (``/proc/self/autogroup``), when this
    process leads its session (a job does: ``start_new_session``), never the session of whoever started it;
    where there is no such file (another OS, autogroups compiled out) the niceness alone is what there is."""
    if nice <= 0:
        return
    niceness = os.nice(nice)
    if os.getsid(0) != os.getpid():
        return  # the group is a session's that this process did not start: the caller's (a server's, a shell's)
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(niceness))
    except OSError:
        pass


def job_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a job's process starts with: ``env``, plus ``JOB_ENV`` on a small machine (a value
    already set in ``env`` is kept)."""
    out = dict(env)
    if small_machine(env):
        for var, value in JOB_ENV.items():
            out.setdefault(var, value)
    return out
