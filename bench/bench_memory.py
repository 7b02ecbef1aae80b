"""Peak memory of the app as Streamlit Community Cloud runs it: the Streamlit server, one training job and
one race against the AI at once, the resident memory of all their processes added up.

    python -m bench.bench_memory [--quick] [--stages train-vae,train-rnn,evolve] [--settings default,small]

For each stage and setting: ``streamlit run Home.py`` over a fresh app folder (the shipped ``models/``, an
empty weights cache as after a reboot, a leaderboard of its own), whose Home page Chromium (Playwright,
/usr/bin/chromium) opens; the stage's job started the way the app starts jobs (``core.app.jobs``:
``python -m core.app.jobs <stage>``, the page's default settings); once the job is under way, Chromium
races the AI on the Race page with the gas held until the race is over and scored, and renders its video.
Meanwhile a sampler adds up VmRSS (``/proc/<pid>/status``) over the server's and the job's process trees
ten times a second; the peak of that sum is the figure (and the same with mapped files counted once, from
``/proc/<pid>/smaps``). Chromium is the player's browser, elsewhere: not counted.

Settings: ``default`` (the environment as it is) and ``small`` (``WM_SMALL_MACHINE=1``, see
``core.machine``). Goal (issue 22): at most 2.0 GB all together; Community Cloud stops an app at 2.7 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from bench.common import CHROMIUM, CHROMIUM_FLAGS, READY, streamlit_server

ROOT = Path(__file__).resolve().parents[1]
GOAL_GB = 2.0  # all processes together
CLOUD_LIMIT_GB = 2.7  # Community Cloud's limit for an app
SAMPLE_S = 0.1  # seconds between samples
FILE_EVERY = 10  # samples between two reads of the processes' mapped files
GB = 1024 ** 3
STAGES = ("train-vae", "train-rnn", "evolve")
SETTINGS = {"default": {}, "small": {"WM_SMALL_MACHINE": "1"}}
SEED = 4242  # the race's track
SHOTS = ROOT / "test-output" / "bench-memory"  # a screenshot of the page when a race fails


# --- /proc ---------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", encoding="utf-8") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def process_tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    """``pid`` and every process below it, less forks that have not run their program yet: such a child
    (its parent's command line) shows its parent's pages as its own, shared until it execs, and counting
    them would count the parent twice."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        parent_cmd = _cmdline(p)
        todo.extend(k for k in kids.get(p, ()) if _cmdline(k) != parent_cmd)
    return out


STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssShmem")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (its peak), RssAnon and RssShmem of ``pid`` in KiB; empty once it has exited."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in STATUS_FIELDS:
                    out[name] = int(line.split()[1])
    except OSError:
        pass
    return out


def file_pages_kb(pids: list[int]) -> int:
    """Resident pages of mapped files (libraries, mostly) over ``pids``, each file region counted once: the
    page cache holds one copy however many processes map it (TensorFlow's libraries, ~0.4 GB, in the
    server and in a job). From ``/proc/<pid>/smaps``: a mapping's Rss less its Anonymous (copied-on-write)
    part, the largest per (device, inode, offset) among the processes."""
    regions: dict[tuple[str, str, str], int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
                key, rss = None, 0
                for line in f:
                    head = line.split(None, 5)
                    if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header
                        key = (head[3], head[4], head[2]) if head[4] != "0" else None
                    elif key is not None and head[0] == "Rss:":
                        rss = int(head[1])
                    elif key is not None and head[0] == "Anonymous:":
                        regions[key] = max(regions.get(key, 0), rss - int(head[1]))
        except OSError:
            continue  # gone meanwhile
    return sum(regions.values())


def command_name(pid: int) -> str:
    words = [a.decode(errors="replace") for a in _cmdline(pid).split(b"\0") if a]
    if len(words) >= 3 and words[1] == "-m":  # python -m core.app.jobs evolve 5 -> core.app.jobs evolve
        return " ".join(words[2:4])
    if words and "multiprocessing" in " ".join(words):
        return "worker (multiprocessing)"
    if "load_world_model_weights" in " ".join(words):  # core.models.agent's child filling the weights cache
        return "V and M loader (child)"
    return Path(words[0]).name if words else "?"


@dataclass
class Sampler:
    """Adds up the resident memory of some process trees (role -> root pid) every SAMPLE_S seconds."""

    roots: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0  # KiB, VmRSS added up
    peak_role: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    role_at_peak: dict[str, int] = field(default_factory=dict)
    peak_once: int = 0  # KiB, private memory added up plus each mapped file's pages once
    hwm: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # pid -> (role, name, VmHWM KiB)
    samples: int = 0
    file_kb: int = 0  # the latest file_pages_kb, refreshed every FILE_EVERY samples (reading smaps is slow)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> int:
        kids = _children()
        by_role, private, pids = {}, 0, []
        for role, root in list(self.roots.items()):
            total = 0
            for pid in process_tree(root, kids):
                pids.append(pid)
                mem = memory_kb(pid)
                total += mem.get("VmRSS", 0)
                private += mem.get("RssAnon", 0) + mem.get("RssShmem", 0)
                if "VmHWM" in mem:
                    name = self.hwm[pid][1] if pid in self.hwm else command_name(pid)
                    self.hwm[pid] = (role, name, max(mem["VmHWM"], self.hwm.get(pid, ("", "", 0))[2]))
            by_role[role] = total
            self.peak_role[role] = max(self.peak_role[role], total)
        if self.samples % FILE_EVERY == 0:
            self.file_kb = file_pages_kb(pids)
        self.peak_once = max(self.peak_once, private + self.file_kb)
        total = sum(by_role.values())
        if total > self.peak_total:
            self.peak_total, self.role_at_peak = total, by_role
        self.samples += 1
        return total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the app, its job, a race ----------------------------------------------------------------------------


def collect_data(folder: Path, episodes: int) -> None:
    """Brownian episodes of 1000 steps, as the Collect page makes them."""
    subprocess.run([sys.executable, "-m", "core", "collect", "--out-dir", str(folder), "--episodes",
                    str(episodes), "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, SDL_VIDEODRIVER="dummy"))


def app_folder(folder: Path, data: Path, stage: str) -> Path:
    """An app folder: the shipped models/, and runs/bench holding what ``stage`` reads (V for M, V and M
    for C)."""
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("reports"))
    run = folder / "runs" / "bench"
    run.mkdir(parents=True)
    for part in {"train-vae": (), "train-rnn": ("vae",), "evolve": ("vae", "rnn")}[stage]:
        shutil.copytree(ROOT / "models" / part, run / part)
    (folder / "data").mkdir()
    (folder / "data" / "rollouts").symlink_to(data)
    return folder


def stage_config(stage: str, folder: Path):
    """The stage's config as the page's form fills it (its defaults), on the bench's run folder; M trains
    for more epochs than its default, which the bench's few episodes would get through before the race."""
    from core.config import EvolveConfig, RNNConfig, VAEConfig
    run, data = str(folder / "runs" / "bench"), str(folder / "data" / "rollouts")
    return {"train-vae": lambda: VAEConfig(data_dir=data, run_dir=run),
            "train-rnn": lambda: RNNConfig(data_dir=data, run_dir=run, epochs=1000),
            "evolve": lambda: EvolveConfig(run_dir=run)}[stage]()


@contextmanager
def browser_page(profile: Path) -> Iterator:
    """A page of Debian's Chromium driven by Playwright (a fresh profile)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM,
                                                       args=CHROMIUM_FLAGS, headless=True,
                                                       viewport={"width": 1280, "height": 1100})
        try:
            yield browser.new_page()
        finally:
            browser.close()


def open_home(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(READY, timeout=300_000)


def settle(pid: int, timeout: float = 300.0) -> None:
    """Wait until ``pid`` has no child processes (the weights loader a first visit may start)."""
    deadline = time.monotonic() + timeout
    while len(process_tree(pid, _children())) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)


def race_the_ai(page, url: str, log) -> dict:
    """Race the AI on the Race page with the gas held to the end, wait for the scores, render the video.
    Returns seconds spent in each part."""
    times = {}
    page.goto(url + "race")
    page.wait_for_selector(READY, timeout=300_000)
    page.get_by_text("Race the AI", exact=True).click()
    page.get_by_label("Your name (for the leaderboard)").fill("bench")
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill(str(SEED))
    seed.press("Tab")
    started = time.monotonic()
    page.get_by_role("button", name="Start race").click()
    page.wait_for_selector(".race[data-status='running']", timeout=600_000)
    times["start"] = time.monotonic() - started
    log(f"    race running after {times['start']:.0f} s")
    page.keyboard.down("ArrowUp")
    started = time.monotonic()
    page.wait_for_selector(".race[data-status='finished']", timeout=1_200_000)
    page.keyboard.up("ArrowUp")
    render = page.get_by_role("button", name="Render the race as a video (MP4)")
    render.wait_for(timeout=600_000)
    times["race"] = time.monotonic() - started
    log(f"    race over and scored after {times['race']:.0f} s")
    started = time.monotonic()
    render.click()
    page.locator("[data-testid='stVideo']").wait_for(timeout=600_000)
    times["video"] = time.monotonic() - started
    log(f"    video after {times['video']:.0f} s")
    return times


@dataclass
class Scenario:
    stage: str
    setting: str
    server_idle_kb: int = 0
    sampler: Sampler | None = None
    times: dict = field(default_factory=dict)
    job_step: str = ""
    load: tuple[float, float] = (0.0, 0.0)  # load average (1 min) before and after


def run_scenario(stage: str, setting: str, data: Path, work: Path, warmup_s: float, min_job_s: float,
                 log) -> Scenario:
    """The app starts, someone opens its Home page, starts a job, and once it is under way races the AI."""
    from core.app.jobs import JobRegistry
    folder = app_folder(work / f"{stage}-{setting}", data, stage)
    env = dict(os.environ, WORLD_MODELS_ROOT=str(folder), WM_LEADERBOARD_DB=str(folder / "board.sqlite3"),
               WORLD_MODELS_CACHE=str(folder / "weights-cache"), SDL_VIDEODRIVER="dummy",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.pop("WM_SMALL_MACHINE", None)
    env.update(SETTINGS[setting])
    result = Scenario(stage, setting)
    load_before = os.getloadavg()[0]
    with streamlit_server(folder, env) as (url, server), browser_page(folder / "chromium-profile") as page, \
            Sampler({"server": server.pid}) as sampler:
        open_home(page, url)
        settle(server.pid)
        result.server_idle_kb = sum(memory_kb(pid).get("VmRSS", 0) for pid in process_tree(server.pid, _children()))
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the job inherits the server's environment, as under the app
        jobs = JobRegistry(jobs_dir=folder / "bench-jobs", cwd=folder)
        try:
            job = jobs.start(stage, stage_config(stage, folder))
            job_started = time.monotonic()
            sampler.roots["job"] = job.pid
            log(f"  {stage} / {setting}: job {job.id} started (pid {job.pid}); race in {warmup_s:.0f} s")
            time.sleep(warmup_s)
            if not job.active:
                raise RuntimeError(f"the {stage} job ended early ({job.status}): {job.error}\n"
                                   + "\n".join(list(job.log)[-20:]))
            try:
                result.times = race_the_ai(page, url, log)
            except Exception:
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / f"{stage}-{setting}-failed.png"), full_page=True)
                log(f"  the race failed; the page is in {SHOTS}")
                raise
            while time.monotonic() - job_started < min_job_s and job.active:
                time.sleep(1)
            snap = job.snapshot()
            phase = snap["metrics"].get("phase")
            result.job_step = f"{snap['step']} of {snap['total']}" + (f" ({phase})" if phase else "")
            job.cancel()
            job.wait(120)
            if job.status == "failed":
                raise RuntimeError(f"the {stage} job failed: {job.error}")
        finally:
            os.environ.clear()
            os.environ.update(saved)
            jobs.shutdown(30)
    result.sampler = sampler
    result.load = (load_before, os.getloadavg()[0])
    log(f"  {stage} / {setting}: peak {sampler.peak_total / 1024 ** 2:.2f} GiB all together "
        f"(server {sampler.peak_role['server'] / 1024 ** 2:.2f}, job {sampler.peak_role['job'] / 1024 ** 2:.2f}; "
        f"files once: {sampler.peak_once / 1024 ** 2:.2f})")
    return result


# --- the section ---------------------------------------------------------------------------------------


def _gb(kb: int) -> str:
    return f"{kb * 1024 / GB:.2f}"


def _lscpu() -> list[str]:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()[:10]
    except (OSError, subprocess.CalledProcessError):
        return []


def section(results: list[Scenario], quick: bool, episodes: int, seconds: float) -> str:
    from bench.common import machine_info
    lines = [
        "## Memory: server + one training job + one race against the AI",
        "",
        f"`python -m bench.bench_memory{' --quick' if quick else ''}`: `streamlit run Home.py` over a fresh app "
        "folder (the shipped `models/`, an empty weights cache as after a reboot); Chromium opens its Home "
        "page; one job starts as the app starts jobs (the page's default settings, on "
        f"{episodes} Brownian episodes of 1000 steps); once the job is under way, Chromium races the AI on the "
        "Race page with the gas held to the end, then renders the race's video. Resident memory of the "
        f"server's and the job's process trees every {SAMPLE_S:.1f} s, two ways: VmRSS added up (a library "
        "mapped by two processes counts twice), and private memory (RssAnon) added up plus each mapped file's "
        "resident pages once (what the machine holds: the page cache keeps one copy of TensorFlow's "
        f"libraries). Peaks over the run; GB = 2^30 bytes. Goal: at most {GOAL_GB:.1f} GB of VmRSS added "
        f"up (Community Cloud stops an app at {CLOUD_LIMIT_GB} GB). Settings: `default`, and `small` "
        "(`WM_SMALL_MACHINE=1`, `core.machine`).",
        "",
        machine_info(),
        "",
        "```",
        *_lscpu(),
        "```",
        "",
        "| job | setting | server idle | server peak | job peak | all together: VmRSS added up | files "
        "counted once | goal |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = r.sampler
        lines.append(f"| {r.stage} | {r.setting} | {_gb(r.server_idle_kb)} | {_gb(s.peak_role['server'])} | "
                     f"{_gb(s.peak_role['job'])} | **{_gb(s.peak_total)}** | {_gb(s.peak_once)} | "
                     f"{'met' if s.peak_total * 1024 <= GOAL_GB * GB else '**missed**'} |")
    lines.append("")
    for setting in dict.fromkeys(r.setting for r in results):
        worst = max((r for r in results if r.setting == setting), key=lambda r: r.sampler.peak_total)
        lines.append(f"- Highest peak, setting `{setting}`: **{_gb(worst.sampler.peak_total)} GB** ({worst.stage}; "
                     f"{_gb(worst.sampler.peak_once)} GB with mapped files counted once).")
    lines += ["", "The largest processes of each run (each one's own peak, VmHWM, GB), how long the race took "
                  "(a 20 s race runs in slow motion while a job takes the cores), how far the job got, and the "
                  "load average (1 min) before and after:", ""]
    for r in results:
        big = sorted(r.sampler.hwm.values(), key=lambda h: -h[2])[:5]
        parts = ", ".join(f"{role}: {name} {_gb(kb)}" for role, name, kb in big)
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in r.times.items())
        lines.append(f"- {r.stage} / {r.setting}: {parts}; race: {timing}; the job reached step {r.job_step}; "
                     f"load {r.load[0]:.1f} / {r.load[1]:.1f}")
    lines += ["", f"Measured in {seconds / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, stages: tuple[str, ...] = STAGES, settings: tuple[str, ...] = tuple(SETTINGS),
        log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> str:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    episodes = 4 if quick else 24  # 24 x 1000 frames fill the VAE's shuffle buffer (20000 frames)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        log(f"collecting {episodes} episodes ...")
        collect_data(work / "data", episodes)
        results = [run_scenario(stage, setting, work / "data", work, warmup_s=15 if quick else 40,
                                min_job_s=60 if quick else 150, log=log)
                   for setting in settings for stage in stages]
    return section(results, quick, episodes, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="less data, shorter jobs, rougher figures")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"jobs to measure, of {', '.join(STAGES)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    args = parser.parse_args()
    stages = tuple(s for s in args.stages.split(",") if s)
    settings = tuple(s for s in args.settings.split(",") if s)
    for name, given, allowed in (("--stages", stages, STAGES), ("--settings", settings, tuple(SETTINGS))):
        bad = [s for s in given if s not in allowed]
        if bad or not given:
            parser.error(f"{name}={','.join(given)}: each must be one of {', '.join(allowed)}")
    started = time.monotonic()
    print(run(args.quick, stages, settings))
    print(f"_(bench.bench_memory: {time.monotonic() - started:.0f} s)_")


if __name__ == "__main__":
    main()
