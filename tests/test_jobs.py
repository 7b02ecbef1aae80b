"""Background jobs: real stages in child processes, progress, stop, failure, restart and resume."""

import json
import os
import time
from pathlib import Path

import pytest

from core.app import app_data
from core.app.jobs import JobAlreadyRunning, JobRegistry
from core.config import CollectConfig, VAEConfig, to_dict
from core.machine import JOB_NICE_ENV, job_nice
from core.storage.artifacts import read_history, read_json
from tests.conftest import TEST_ENV


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def registry(tmp_path):
    reg = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    yield reg
    reg.shutdown(timeout=30)


def test_collect_job_reports_progress_and_leaves_episodes(registry, tmp_path, monkeypatch):
    # Another package named core on the path (an editable install of another checkout, say) is not the one
    # the job runs: the child imports the server's code.
    shadow = tmp_path / "shadow" / "core"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the wrong core')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    job = registry.start("collect", CollectConfig(out_dir="data", episodes=2, max_steps=20, workers=1,
                                                  env=TEST_ENV))
    assert job.active and job.pid
    assert job.wait(120), "collect job did not finish"
    snap = job.snapshot()
    assert snap["status"] == "done", snap["error"]
    assert (snap["step"], snap["total"]) == (2, 2)
    returns = [r["return"] for r in snap["history"] if "return" in r]
    assert len(returns) == 2  # one progress record per episode, with its return
    assert snap["result"]["episodes"] == 2 and snap["result"]["frames"] == 42
    assert sorted(p.name for p in (tmp_path / "data").glob("ep_*.npz")) == ["ep_0000000.npz", "ep_0000001.npz"]
    record = read_json(tmp_path / "jobs" / f"{job.id}.json")
    assert record["status"] == "done" and record["stage"] == "collect"


def _niceness(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:  # it has ended
        return None


def _autogroup_nice(pid: int) -> int | None:
    """The niceness of ``pid``'s session's scheduling group (``/proc/<pid>/autogroup``: "/autogroup-N nice X");
    None without autogroups."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def test_jobs_and_their_workers_run_at_a_lower_priority_than_the_server(tmp_path, monkeypatch):
    """Races tick 50 times a second in the server's process: a job (and each of its worker processes) runs
    WM_JOB_NICE steps below it, so training takes only the cores the races leave."""
    monkeypatch.setenv(JOB_NICE_ENV, "7")
    registry = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    try:
        job = registry.start("collect", CollectConfig(out_dir="data", episodes=4, max_steps=150, workers=2,
                                                      env=TEST_ENV))
        want = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
        wait_for(lambda: _niceness(job.pid) == want or not job.active, 60, "the job to lower its priority")
        assert _niceness(job.pid) == want
        # Its session's scheduling group too: between sessions Linux shares the cores first, niceness aside.
        if _autogroup_nice(os.getpid()) is not None:  # Linux with autogroups (this machine: on)
            assert _autogroup_nice(job.pid) == want
        workers: dict[int, int | None] = {}
        while job.active and len(workers) < 2:
            workers.update({c: _niceness(c) for c in _children(job.pid) if c not in workers})
            time.sleep(0.05)
        assert job.wait(120) and job.snapshot()["status"] == "done", job.snapshot()["error"]
        assert len(workers) >= 2 and set(workers.values()) <= {want, None}, workers
    finally:
        registry.shutdown(timeout=30)
    assert job_nice({JOB_NICE_ENV: "99"}) == 19 and job_nice({JOB_NICE_ENV: "-5"}) == 0
    assert job_nice({}) == job_nice({JOB_NICE_ENV: "soon"}) == 10


def test_second_start_is_refused_and_stop_ends_the_job_cleanly(registry, tmp_path):
    config = CollectConfig(out_dir="data", episodes=30, max_steps=1000, workers=1, env=TEST_ENV)
    job = registry.start("collect", config)
    with pytest.raises(JobAlreadyRunning) as refused:
        registry.start("collect", config)
    assert refused.value.job is job and job.id in str(refused.value)
    wait_for(lambda: job.status == "running", what="the job to report progress")
    job.cancel()
    assert job.snapshot()["status"] == "stopping"
    assert job.wait(120)
    snap = job.snapshot()
    assert snap["status"] == "stopped" and snap["error"] is None
    assert snap["step"] < 30
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert len(manifest["episodes"]) == snap["result"]["episodes"] < 30
    assert registry.active("collect") is None


def test_a_stop_clicked_before_the_worker_process_exists_still_reaches_it(registry, tmp_path):
    """Stop can land between the job's creation and its process's start; it must not be lost."""
    from core.app.jobs import Job
    config = CollectConfig(out_dir="data", episodes=30, max_steps=1000, workers=1, env=TEST_ENV)
    job = Job(id="early", stage="collect", config=to_dict(config), out_dir="data")
    registry._jobs[job.id] = job
    job.cancel()
    assert job.snapshot()["status"] == "stopping"
    registry._launch(job)
    assert job.wait(120)
    snap = job.snapshot()
    assert snap["status"] == "stopped" and snap["error"] is None
    assert snap["result"]["episodes"] < 30


def test_the_app_shares_one_registry_per_folder(tmp_path):
    """Pages get the registry from here, not from a Streamlit cache that "Clear cache" would empty."""
    from core.app.jobs import shared_registry
    first = shared_registry(tmp_path / "jobs", tmp_path)
    assert shared_registry(tmp_path / "jobs" / ".." / "jobs", tmp_path) is first
    assert shared_registry(tmp_path / "other", tmp_path) is not first


def test_a_user_error_fails_the_job_in_plain_words(registry):
    job = registry.start("train-vae", VAEConfig(data_dir="no/such/folder", z_size=8, epochs=1))
    assert job.wait(120)
    snap = job.snapshot()
    assert snap["status"] == "failed"
    assert "no/such/folder" in snap["error"] and "collect" in snap["error"]
    assert snap["error_detail"] is None  # a user error carries no traceback


def test_after_a_restart_jobs_are_read_back_and_a_stopped_training_resumes(tmp_path, tiny_data):
    """Stop a VAE training job part way, 'restart the server' (a new registry over the same folder), see
    the stopped job and the one that was running when the server died, then resume from the checkpoint."""
    config = VAEConfig(data_dir=str(tiny_data), run_dir="run", z_size=8, epochs=2, batch_size=16,
                       holdout=0.0)
    first = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    job = first.start("train-vae", config)
    wait_for(lambda: job.step >= 1, timeout=120, what="a training batch")
    job.cancel()
    assert job.wait(120)
    stopped_at = job.snapshot()["result"]["step"]
    assert job.status == "stopped" and 0 < stopped_at < job.total
    # A record left "running" by a server that died.
    (tmp_path / "jobs" / "deadbeef.json").write_text(json.dumps(
        {"id": "deadbeef", "stage": "collect", "status": "running", "step": 3, "total": 9,
         "config": {"out_dir": "data"}, "out_dir": "data", "started_at": 1.0}))

    again = JobRegistry(tmp_path / "jobs", cwd=tmp_path)
    assert again.get(job.id).status == "stopped"
    assert again.get("deadbeef").status == "interrupted" and again.get("deadbeef").step == 3
    assert again.latest("train-vae").id == job.id and again.active("train-vae") is None
    resume = app_data.resume_point("train-vae", {"run_dir": str(tmp_path / "run")})
    assert resume["done"] == stopped_at and resume["total"] == job.total

    resumed = again.start("train-vae", config)
    assert resumed.wait(180)
    snap = resumed.snapshot()
    assert snap["status"] == "done", snap["error"]
    assert snap["result"]["resumed_from"] == stopped_at and snap["result"]["complete"]
    assert snap["history"][0]["step"] > stopped_at  # it went on from the checkpoint, not from zero
    assert read_history(tmp_path / "run" / "vae" / "history.jsonl")
    assert read_json(tmp_path / "run" / "vae" / "meta.json")["metrics"]["complete"]


def test_a_job_whose_server_is_gone_stops_cleanly_at_a_checkpoint(tmp_path, tiny_data):
    """The server exits (crash, Ctrl+C, restart) while a child trains: its pipes close. The child must
    write its checkpoint and metadata and exit 0, not die of BrokenPipeError on its next progress line."""
    import os
    import subprocess
    import sys

    config = VAEConfig(data_dir=str(tiny_data), run_dir="run", z_size=8, epochs=3, batch_size=16, holdout=0.0)
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "core.app.jobs", "train-vae", str(write_fd)], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            pass_fds=(write_fd,))
    os.close(write_fd)
    proc.stdin.write((json.dumps(vars(config)) + "\n").encode())
    proc.stdin.flush()
    with os.fdopen(read_fd, "rb") as events:
        for raw in events:
            event = json.loads(raw)
            if event.get("event") == "progress" and event["step"] >= 1:
                break
    # The server is gone: its ends of the event pipe (closed above), of stdout and of stdin close.
    proc.stdout.close()
    proc.stdin.close()
    assert proc.wait(120) == 0
    meta = read_json(tmp_path / "run" / "vae" / "meta.json")
    assert meta["metrics"]["complete"] is False and meta["metrics"]["step"] >= 1


def test_a_job_that_reads_a_v_or_m_another_job_trains_is_refused(registry):
    """M encoded with a V still training (or an evolution whose V changes under it) would record weights it
    never used: such jobs run one after the other. Evaluations beside an evolution are fine."""
    from core.app.jobs import Job, JobConflict
    from core.config import EvaluateConfig, EvolveConfig, RNNConfig
    from core.stages import STAGES
    vae = Job(id="vae", stage="train-vae", config=to_dict(VAEConfig(run_dir="runs")), out_dir="runs/vae",
              status="running")
    registry._jobs[vae.id] = vae
    with pytest.raises(JobConflict, match="trains `runs/vae`, which this one reads") as refused:
        registry.start("train-rnn", RNNConfig(run_dir="runs"))
    assert refused.value.job is vae
    (registry.cwd / "runs").mkdir()
    (registry.cwd / "also-runs").symlink_to(registry.cwd / "runs")
    for same in (str(registry.cwd / "runs"), "./runs/../runs", "also-runs"):  # one folder, other spellings
        with pytest.raises(JobConflict):
            registry.start("evaluate", EvaluateConfig(model_dir=same))
    vae.status = "done"
    evolve = Job(id="evo", stage="evolve", config=to_dict(EvolveConfig(run_dir="runs")), out_dir="runs/controller",
                 status="running")
    registry._jobs[evolve.id] = evolve
    with pytest.raises(JobConflict, match="reads `runs/vae`, which this one would train"):
        registry.start("train-vae", VAEConfig(run_dir="runs"))
    assert STAGES["evaluate"].world_model_inputs(to_dict(EvaluateConfig(model_dir="runs"))) == {"runs/vae", "runs/rnn"}
    assert STAGES["train-vae"].world_model_inputs(to_dict(VAEConfig(run_dir="runs2"))) == set()  # reads only data
    assert registry.active("train-vae") is None and registry.active("train-rnn") is None
    evolve.status = "done"  # it has no process for the registry to stop


def test_a_process_that_does_not_lead_its_session_leaves_the_sessions_group_alone():
    """lower_priority in a process started without a session of its own (not as the app starts jobs) lowers
    only that process: its session's scheduling group is its parent's, here this test's."""
    import subprocess
    import sys
    if _autogroup_nice(os.getpid()) is None:
        pytest.skip("no autogroups here (/proc/self/autogroup)")
    code = "import os; from core.machine import lower_priority; lower_priority(5); print(os.nice(0))"
    before = _autogroup_nice(os.getpid())
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    assert _autogroup_nice(os.getpid()) == before
    led = subprocess.run([sys.executable, "-c", code + "; print(open('/proc/self/autogroup').read().split()[-1])"],
                         capture_output=True, text=True, timeout=60, start_new_session=True)
    assert led.returncode == 0, led.stderr
    assert led.stdout.split()[1] == led.stdout.split()[0]  # a session leader's group gets its niceness
