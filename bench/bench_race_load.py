"""Races beside a training job: does an evolution on the same machine turn races into slow motion?

    python -m bench.bench_race_load [--quick] [--nice 10,0] [--seconds 15] [--modes vs_ai,solo]
                                    [--browser-nice 0,10] [--before] [--profile]

One ``streamlit run Home.py`` over a fresh app folder (the shipped ``models/``), and together on this
machine, for each job priority of ``--nice`` (``WM_JOB_NICE``, ``core.machine.job_nice``):

- one evolution job, started as the app starts jobs (``core.app.jobs.JobRegistry``) on a copy of the shipped
  V and M, 2 worker processes, small generations (popsize 4, one 300-step rollout each, no evaluations);
- four racers against the AI: each race is started on the Race page in Chromium (its token read from the
  page's socket), then driven by a Python WebSocket client that takes it over, drives in circles (gas and
  left) and flips the gas at random moments, 50 to 150 ms apart: frames a second of the running race, and
  key press to the first frame whose step used it (p95);
- the Dream page in Chromium, the controller dreaming 150 steps at a time, again as soon as each GIF is made;
- a page (Home, then the Leaderboard, in turn) loaded in Chromium every second: seconds from ``goto`` to
  Streamlit's "connected, script done" (p95).

Goals (issue #26): every racer at least 45 frames/s, key-to-frame p95 at most 60 ms, page load p95 at most
2 s, and the evolution losing no generation (its history numbered 1, 2, ... without a gap, the job still
running). The evolution's pace alone, before the load starts, is measured too. Other work on the machine
shows directly in these figures: the section states the load average it ran under; rerun it on a quiet
machine for the figures that count.

Without ``--before`` the cars step where the app steps them on this machine (``default_workers``: in processes
of their own from 4 cores, on the server's threads below). ``--before`` runs each row twice in the same run:
first with every car stepped on the server's own threads (``WM_RACE_WORKERS=0``), then in car processes, and
gives the ratios. ``--profile`` samples the server's process with py-spy while the races run (only the
thread holding the GIL, ``--gil``) and says where its GIL went: the cars' env steps, the AI, PNG encoding,
the car processes' messages, page runs, the race socket. Every row also says where the machine's cores went
while the races ran (CPU seconds a wall second of the server's, the job's and Chromium's process trees, this
process's race clients, everything else, and idle time, from /proc), and what a delivered frame cost the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import CHROMIUM, CHROMIUM_FLAGS, READY, ROOT, machine_info, streamlit_server
from core.app.race.registry import default_workers

GOAL_FPS = 45.0  # frames a second of each running race
GOAL_KEY_P95_MS = 60.0  # key press -> first frame whose step used it, 95th percentile
GOAL_PAGE_P95_S = 2.0  # page load, 95th percentile
RACERS = 4
MODE_NAMES = {"vs_ai": "4 against the AI", "solo": "4 alone"}
PAGES = ("", "leaderboard")  # loaded in turn, one a second
ALONE_S = 20.0  # seconds the evolution runs alone first, for its pace


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[int(0.95 * (len(values) - 1))] if values else float("nan")


@dataclass
class Racer:
    fps: float = 0.0
    frames: int = 0
    skipped: int = 0
    latency_ms: list = field(default_factory=list)
    error: str = ""


@dataclass
class Scenario:
    nice: int
    mode: str
    browser_nice: int = 0
    without: tuple = ()  # parts of the load left out (diagnosis): "dream", "pages"
    workers: bool = True  # each car in a process of its own (WM_RACE_WORKERS=1), else on the server's threads
    gil: dict = field(default_factory=dict)  # --profile: share of the server's GIL samples by part
    racers: list = field(default_factory=list)
    page_loads_s: list = field(default_factory=list)
    page_errors: int = 0
    dreams: int = 0
    generations_alone: float = 0.0  # generations a minute, the job alone
    generations_loaded: float = 0.0  # ... during the load
    history_ok: bool = False
    job_status: str = ""
    generations: int = 0
    load: tuple = (0.0, 0.0)
    cores: dict = field(default_factory=dict)  # part of the machine -> CPU seconds a wall second while racing


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_PARTS = ("server", "job", "chromium", "bench", "other", "idle")
CPU_PART_NAMES = {"server": "race server (Streamlit, races, pages)", "job": "evolution job", "chromium":
                  "Chromium", "bench": "race clients (this bench)", "other": "other processes", "idle": "idle"}


def _processes() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds of the process and of its children it has waited for)} from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS)
    return table


def cpu_snapshot(server: int, job: int | None) -> dict[str, float]:
    """CPU seconds so far of each part of the machine: the server's process tree (its car processes
    included), the job's, Chromium's (this process's other children: Playwright's driver and the browser),
    this process (the race clients), everything else, and the cores' idle time (from /proc/stat)."""
    roots, me = {server: "server", job: "job"}, os.getpid()
    table, spent = _processes(), dict.fromkeys(CPU_PARTS, 0.0)
    for pid, (_, seconds) in table.items():
        part, walk = "other", pid
        while walk in table:
            if walk in roots:
                part = roots[walk]
                break
            if walk == me:
                part = "bench" if pid == me else "chromium"
                break
            walk = table[walk][0]
        spent[part] += seconds
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait; user..softirq are work, steal is the hypervisor's
    busy = sum(ticks[:7]) - idle
    spent["other"] = busy / CLOCK_TICKS - sum(spent[p] for p in ("server", "job", "chromium", "bench"))
    spent["idle"] = idle / CLOCK_TICKS
    return spent


def app_folder(folder: Path) -> Path:
    """The shipped models/, and runs/bench holding a copy of its V and M for the evolution."""
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("reports"))
    for part in ("vae", "rnn"):
        shutil.copytree(ROOT / "models" / part, folder / "runs" / "bench" / part)
    return folder


def start_evolution(folder: Path, nice: int):
    from core.app.jobs import JobRegistry
    from core.config import EvolveConfig
    # The job runs `python -m core.app.jobs` in the app folder, as the app does: it finds core/ here.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    registry = JobRegistry(folder / "jobs", cwd=folder, nice=nice)
    config = EvolveConfig(run_dir=str(folder / "runs" / "bench"), generations=100_000, popsize=4, rollouts=1,
                          max_steps=300, eval_every=0, average=0, confirm_episodes=0, workers=2)
    return registry, registry.start("evolve", config)


def generations(job) -> int:
    return job.snapshot()["step"]


def history_without_gaps(folder: Path) -> tuple[bool, int]:
    from core.storage.artifacts import read_history
    records = [r for r in read_history(folder / "runs" / "bench" / "controller" / "history.jsonl")
               if "generation" in r and "best" in r]
    numbers = [int(r["generation"]) for r in records]
    return numbers == list(range(1, len(numbers) + 1)), len(numbers)


# --- the browser side --------------------------------------------------------------------------------------

def start_race(context, url: str, i: int, mode: str) -> str:
    """Start a race on the Race page in a new page (``mode``: vs_ai or solo); its token (from the page's hello
    on the race socket). The page is closed then, so the race waits paused for the client that takes it."""
    page = context.new_page()
    tokens = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: tokens.append(payload)
                                          if isinstance(payload, str) and '"hello"' in payload else None))
    page.goto(url + "race")
    page.wait_for_selector(READY, timeout=300_000)
    if mode == "vs_ai":
        page.get_by_text("Race the AI", exact=True).click()
    page.get_by_label("Your name (for the leaderboard)").fill(f"racer {i}")
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill(str(100 + i))
    seed.press("Tab")
    page.get_by_role("button", name="Start race").click()
    deadline = time.monotonic() + 300
    while not tokens:
        if time.monotonic() > deadline:
            raise RuntimeError("the race page never opened its socket")
        page.wait_for_timeout(100)
    page.close()
    return json.loads(tokens[0])["token"]


def open_dream(context, url: str):
    page = context.new_page()
    page.goto(url + "dream")
    page.wait_for_selector(READY, timeout=300_000)
    page.get_by_text("The controller", exact=True).click()
    page.wait_for_selector(READY, timeout=120_000)
    return page


def dream_again(page) -> bool:
    """Ask for the next 150 dreamed steps (a new dream once M says the episode ended); whether it asked."""
    if not page.locator(READY).count():
        return False  # the last one is still being made
    drive = page.get_by_role("button", name="Let the controller drive")
    if drive.count() and drive.is_enabled():
        drive.click()
        return True
    page.get_by_role("button", name="New dream").click()
    return False


# --- the racers ----------------------------------------------------------------------------------------------

async def drive(url: str, token: str, seconds: float, seed: int) -> Racer:
    """Take the race over, resume it and drive in circles for ``seconds`` of running race, flipping the gas at
    random moments; the page's heartbeat (with the frames read) goes out every HEARTBEAT_S."""
    import websockets

    from core.app.race import KEY_GAS, KEY_LEFT
    from core.app.race.server import HEARTBEAT_S, decode_frame
    rng, out = random.Random(seed), Racer()
    ws = await websockets.connect(url, max_size=2**22, open_timeout=60)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if ready.get("type") != "ready":
        raise RuntimeError(f"race refused: {ready}")
    state = {"frames": 0, "seq": 1, "sent": {}, "running_since": None, "steps": []}
    await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS | KEY_LEFT, "seq": 1}))
    await ws.send(json.dumps({"type": "resume"}))

    async def beat():
        while True:
            await ws.send(json.dumps({"type": "ping", "frames": state["frames"]}))
            await asyncio.sleep(HEARTBEAT_S)

    async def press():
        while True:
            await asyncio.sleep(rng.uniform(0.05, 0.15))
            if state["running_since"] is None:
                continue
            state["seq"] += 1
            mask = KEY_LEFT | (KEY_GAS if state["seq"] % 2 else 0)
            state["sent"][state["seq"]] = time.perf_counter()
            await ws.send(json.dumps({"type": "keys", "mask": mask, "seq": state["seq"]}))

    tasks = [asyncio.create_task(beat()), asyncio.create_task(press())]
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), 30)
            try:
                meta, _ = decode_frame(message)
            except (ValueError, TypeError):  # text: an error from the server
                raise RuntimeError(f"the server said: {message}") from None
            now = time.perf_counter()
            state["frames"] += 1
            for seq in [s for s in state["sent"] if s <= meta["ack"]]:
                out.latency_ms.append(1000 * (now - state["sent"].pop(seq)))
            if meta["status"] != "running":
                if state["running_since"] is not None:
                    break  # finished (or paused): the measured part is over
                continue
            if state["running_since"] is None:
                state["running_since"] = now
            state["steps"].append(meta["step"])
            if now - state["running_since"] >= seconds:
                break
    finally:
        for task in tasks:
            task.cancel()
        await ws.close()
    steps = state["steps"]
    elapsed = time.perf_counter() - state["running_since"]
    out.frames, out.fps = len(steps), len(steps) / elapsed
    out.skipped = (steps[-1] - steps[0] + 1) - len(steps) if steps else 0
    return out


def race_all(url: str, tokens: list[str], seconds: float) -> list[Racer]:
    async def go():
        return await asyncio.gather(*[drive(url, t, seconds, i) for i, t in enumerate(tokens)],
                                    return_exceptions=True)
    results = asyncio.run(go())
    return [r if isinstance(r, Racer) else Racer(error=f"{type(r).__name__}: {r}") for r in results]


# --- one scenario --------------------------------------------------------------------------------------------

def browser_executable(work: Path, nice: int) -> str:
    """Chromium, started ``nice`` steps below this process's priority, its session's scheduling group too (0:
    as it is). In use the browser runs on the visitor's machine; here it shares the server's cores, and its
    rendering (the Dream page's GIF at 25 frames a second, a page a second) is load that a server would not
    carry."""
    if nice <= 0:
        return CHROMIUM
    wrapper = work / f"chromium-nice-{nice}"
    # Playwright starts the browser in a session of its own, and Linux's autogroups share the cores between
    # sessions before niceness counts: the session's group gets the niceness too (core.machine.lower_priority).
    wrapper.write_text(f'#!/bin/sh\necho {nice} > /proc/self/autogroup 2>/dev/null\nexec nice -n {nice} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


# --- where the server's GIL goes (--profile) -----------------------------------------------------------------

GIL_PARTS = (  # (part, what in a sampled stack marks it), the first that matches counts
    ("Dream page", ("dream",)),  # first: a dream runs V, M and C too
    ("page runs (Streamlit scripts)", ("script_runner", "exec_func_with_error_handling", "pages/", "Home.py")),
    ("car env steps", ("car_racing", "Driver.step", "laps.py", "tiles_visited")),
    ("AI (V + M + C)", ("models/agent.py", "controller.py")),
    ("PNG encoding", ("encode_image",)),
    ("car processes' messages", ("race/worker.py",)),
    ("race ticker and socket", ("race/server.py", "race/session.py")),
    ("Streamlit's event loop (sessions, file watcher)", ("streamlit/runtime", "streamlit/watcher")),
    ("network I/O (uvicorn, websockets)", ("websockets", "uvicorn", "starlette")),
)


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling ``pid``'s thread that holds the GIL for ``seconds`` (None when py-spy is missing)."""
    if shutil.which("py-spy") is None:
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--gil",
                             "--nonblocking", "--format", "raw", "--rate", "200", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gil_shares(raw: Path, seconds: float) -> dict:
    """{part: share of the wall time the GIL was held for it} from py-spy's raw output ("stack count" lines);
    "held" is the total."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        part = next((name for name, marks in GIL_PARTS if any(m in stack for m in marks)), "other")
        counts[part] = counts.get(part, 0) + int(n)
    if not total:
        return {}
    samples = 200 * seconds  # py-spy's --rate
    return dict({part: n / samples for part, n in counts.items()}, held=total / samples)


def run_scenario(nice: int, mode: str, work: Path, seconds: float, log, browser_nice: int = 0,
                 without: tuple[str, ...] = (), workers: bool = True, profile: bool = False) -> Scenario:
    from playwright.sync_api import sync_playwright
    folder = app_folder(work / f"{mode}-nice-{nice}-browser-{browser_nice}-{'processes' if workers else 'threads'}"
                        f"{''.join('-no-' + w for w in without)}")
    env = dict(os.environ, WORLD_MODELS_ROOT=str(folder), WM_LEADERBOARD_DB=str(folder / "board.sqlite3"),
               SDL_VIDEODRIVER="dummy", TF_CPP_MIN_LOG_LEVEL="2", WM_MAX_RACES=str(RACERS), PYTHONPATH=str(ROOT),
               WM_RACE_WORKERS="1" if workers else "0")
    out = Scenario(nice, mode, browser_nice, without, workers)
    with streamlit_server(folder, env, timeout=300) as (url, server), sync_playwright() as p:
        ws_url = url.replace("http://", "ws://") + "api/race/ws"
        browser = p.chromium.launch_persistent_context(str(folder / "chromium-profile"),
                                                       executable_path=browser_executable(work, browser_nice),
                                                       args=CHROMIUM_FLAGS, headless=True,
                                                       viewport={"width": 1280, "height": 1000})
        try:
            home = browser.new_page()
            home.goto(url)
            home.wait_for_selector(READY, timeout=300_000)  # the first visit warms the AI's weights up
            registry, job = start_evolution(folder, nice)
            tokens = [start_race(browser, url, i, mode) for i in range(RACERS)]
            log(f"  {mode}, nice {nice}: {RACERS} races started; the evolution runs alone for {ALONE_S:.0f} s")
            wait_until = time.monotonic() + 300
            while generations(job) < 1 and time.monotonic() < wait_until and job.active:
                time.sleep(0.5)
            g0, t0 = generations(job), time.monotonic()
            time.sleep(ALONE_S)
            out.generations_alone = 60 * (generations(job) - g0) / (time.monotonic() - t0)
            dream = open_dream(browser, url) if "dream" not in without else None
            out.load = (os.getloadavg()[0], 0.0)
            results: dict = {}
            racing = threading.Thread(target=lambda: results.setdefault("racers", race_all(ws_url, tokens, seconds)))
            g0, t0 = generations(job), time.monotonic()
            cpu0 = cpu_snapshot(server.pid, job.pid)
            racing.start()
            spy = start_profile(server.pid, seconds, folder / "gil.txt") if profile else None
            page, n = browser.new_page(), 0
            while racing.is_alive():
                tick = time.monotonic()
                try:
                    if dream is not None and dream_again(dream):
                        out.dreams += 1
                    if "pages" not in without:
                        page.goto(url + PAGES[n % len(PAGES)])
                        page.wait_for_selector(READY, timeout=60_000)
                        out.page_loads_s.append(time.monotonic() - tick)
                except Exception as e:  # noqa: BLE001 - a page that fails to load counts, the run goes on
                    out.page_errors += 1
                    log(f"    page load failed: {type(e).__name__}: {str(e)[:200]}")
                n += 1
                time.sleep(max(0.0, tick + 1.0 - time.monotonic()))
            racing.join()
            cpu1, wall = cpu_snapshot(server.pid, job.pid), time.monotonic() - t0
            out.cores = {part: max(0.0, cpu1[part] - cpu0[part]) / wall for part in CPU_PARTS}  # exits can dip "other"
            if spy is not None:
                spy.wait(60)
                out.gil = gil_shares(folder / "gil.txt", seconds)
                if (folder / "gil.txt").exists():  # kept for a closer look (py-spy's raw format, one stack a line)
                    kept = Path(tempfile.gettempdir()) / f"bench_race_load-gil-{folder.name}.txt"
                    shutil.copy(folder / "gil.txt", kept)
                    log(f"  the server's GIL samples: {kept}")
            out.generations_loaded = 60 * (generations(job) - g0) / (time.monotonic() - t0)
            out.racers = results["racers"]
            out.load = (out.load[0], os.getloadavg()[0])
            out.job_status = job.snapshot()["status"]
            registry.shutdown(timeout=60)
            out.history_ok, out.generations = history_without_gaps(folder)
        finally:
            browser.close()
    return out


def _summary(s: Scenario) -> dict:
    good = [r for r in s.racers if not r.error]
    fps = [r.fps for r in good]
    return {"fps_min": min(fps, default=float("nan")), "fps_mean": statistics.mean(fps) if fps else float("nan"),
            "key": max((p95(r.latency_ms) for r in good), default=float("nan")), "page": p95(s.page_loads_s),
            "failed": len(s.racers) - len(good),
            "evolution": s.history_ok and s.job_status in ("running", "stopped", "done")}


def _label(s: Scenario) -> str:
    return (f"{MODE_NAMES[s.mode]}{''.join(f', no {w}' for w in s.without)}, job nice {s.nice}"
            f"{f', Chromium nice {s.browser_nice}' if s.browser_nice else ''}, cars in "
            f"{'processes' if s.workers else 'server threads'}")


def goals_table(scenarios: list[Scenario]) -> list[str]:
    """One row per run, one column per goal: the figure, and met or missed."""
    def cell(value: str, good: bool) -> str:
        return f"{value} {'met' if good else '**missed**'}"

    lines = ["| run | every racer >= 45 frames/s (slowest) | key-to-frame p95 <= 60 ms (worst racer) | "
             "page load p95 <= 2 s | evolution loses no generation | all goals |", "|---|---|---|---|---|---|"]
    for s in scenarios:
        m = _summary(s)
        fps_ok = m["failed"] == 0 and len(s.racers) == RACERS and m["fps_min"] >= GOAL_FPS
        key_ok, page_ok = m["key"] <= GOAL_KEY_P95_MS, m["page"] <= GOAL_PAGE_P95_S or "pages" in s.without
        page = "-" if "pages" in s.without else cell(f"{m['page']:.2f} s", page_ok)
        fps, key = cell(f"{m['fps_min']:.1f}", fps_ok), cell(f"{m['key']:.0f} ms", key_ok)
        evolution = cell(f"{s.generations} generations", m["evolution"])
        every = "met" if fps_ok and key_ok and page_ok and m["evolution"] else "**missed**"
        lines.append(f"| {_label(s)} | {fps} | {key} | {page} | {evolution} | {every} |")
    return lines


def ratios_table(scenarios: list[Scenario]) -> list[str]:
    """Cars in processes against cars on the server's threads, for each row run both ways (``--before``)."""
    pairs = [(b, a) for b in scenarios for a in scenarios if not b.workers and a.workers
             and (b.nice, b.mode, b.browser_nice, b.without) == (a.nice, a.mode, a.browser_nice, a.without)]
    if not pairs:
        return []
    lines = ["Processes against threads, measured in the same run (after / before; above 1 is better for frames "
             "and generations, below 1 for latencies):", "",
             "| run | frames/s, slowest racer | frames/s, mean | key-to-frame p95 | page load p95 | "
             "generations/min under load |", "|---|---|---|---|---|---|"]
    for b, a in pairs:
        mb, ma = _summary(b), _summary(a)

        def ratio(x: float, y: float, unit: str = "", digits: int = 1) -> str:
            return f"{y:.{digits}f}{unit} / {x:.{digits}f}{unit} = {y / x:.2f}" if x and x == x and y == y else "-"
        lines.append(f"| {MODE_NAMES[a.mode]}, job nice {a.nice} | {ratio(mb['fps_min'], ma['fps_min'])} | "
                     f"{ratio(mb['fps_mean'], ma['fps_mean'])} | {ratio(mb['key'], ma['key'], ' ms', 0)} | "
                     f"{ratio(mb['page'], ma['page'], ' s', 2)} | "
                     f"{ratio(b.generations_loaded, a.generations_loaded)} |")
    return lines + [""]


def cores_table(scenarios: list[Scenario]) -> list[str]:
    """Where the machine's cores went while the races ran, and what the races' frames cost the server."""
    measured = [s for s in scenarios if s.cores]
    if not measured:
        return []
    lines = [f"Where the {os.cpu_count()} cores went while the races ran (CPU seconds a wall second, from /proc; "
             "a part is a process tree: the server's includes its car processes, the job's its workers), and the "
             f"server's CPU per frame the racers got, with what {RACERS} races at {GOAL_FPS:.0f} frames/s would "
             "take of it:", "",
             "| run | " + " | ".join(CPU_PART_NAMES[p] for p in CPU_PARTS) + " | server CPU per frame | "
             f"server at {GOAL_FPS:.0f} frames/s |", "|---|" + "---:|" * (len(CPU_PARTS) + 2)]
    for s in measured:
        frames = sum(r.fps for r in s.racers if not r.error)
        per_frame = s.cores["server"] / frames if frames else float("nan")
        lines.append(f"| {_label(s)} | " + " | ".join(f"{s.cores[p]:.2f}" for p in CPU_PARTS)
                     + f" | {1000 * per_frame:.1f} ms | {per_frame * GOAL_FPS * RACERS:.2f} cores |")
    return lines + [""]


def gil_table(scenarios: list[Scenario]) -> list[str]:
    profiled = [s for s in scenarios if s.gil]
    if not profiled:
        return []
    parts = [name for name, _ in GIL_PARTS] + ["other"]
    lines = ["Where the server process's GIL went while the races ran (py-spy `--gil`, 200 samples a second; "
             "share of wall time, so 1.00 is one core's worth):", "",
             "| run | GIL held | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
    for s in profiled:
        lines.append(f"| {_label(s)} | {s.gil.get('held', 0):.2f} | "
                     + " | ".join(f"{s.gil.get(part, 0):.2f}" for part in parts) + " |")
    return lines + [""]


def section(scenarios: list[Scenario], seconds: float, started: float) -> str:
    lines = [
        "## Races beside a training job (bench_race_load)", "",
        (f"`python -m bench.bench_race_load`: `streamlit run Home.py` over a fresh app folder (the shipped "
         f"`models/`); an evolution job started as the app starts them (2 workers, popsize 4, one 300-step "
         f"rollout each, no evaluations) at the priority `WM_JOB_NICE` of each row; {RACERS} races against the "
         "AI started on the Race page in Chromium and driven by WebSocket clients (circles, the gas flipped at "
         f"random moments 50 to 150 ms apart; {seconds:.0f} s of each running race); the Dream page in "
         "Chromium with the controller dreaming 150 steps again as soon as each GIF is made; Home and the "
         "Leaderboard loaded in turn every second. Goals: each racer >= 45 frames/s, key-to-frame p95 <= 60 ms, "
         "page load p95 <= 2 s, the evolution losing no generation."), "",
        machine_info(), "",
        *goals_table(scenarios), "",
        *ratios_table(scenarios),
        *cores_table(scenarios),
        *gil_table(scenarios),
        ("| races | cars step in | WM_JOB_NICE | Chromium's nice | load avg (1 min) before / after | racers frames/s "
         "(min / mean) | key-to-frame p95 (worst racer) | page load p95 (n) | dreams made | evolution: "
         "generations/min alone / under load, history |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        m = _summary(s)
        errors = "".join(f"; racer failed: {r.error}" for r in s.racers if r.error)
        lines.append(
            f"| {MODE_NAMES[s.mode]}{''.join(f', no {w}' for w in s.without)} | "
            f"{'processes' if s.workers else 'server threads'} | {s.nice} | {s.browser_nice} | "
            f"{s.load[0]:.1f} / {s.load[1]:.1f} | {m['fps_min']:.1f} / {m['fps_mean']:.1f} (skipped steps "
            f"{sum(r.skipped for r in s.racers if not r.error)}{errors}) | {m['key']:.0f} ms | "
            f"{m['page']:.2f} s ({len(s.page_loads_s)}, {s.page_errors} failed) | {s.dreams} | "
            f"{s.generations_alone:.1f} / {s.generations_loaded:.1f}, {s.generations} generations "
            f"{'numbered without a gap' if s.history_ok else '**with a gap**'}, job {s.job_status} |")
    lines += ["", f"Measured in {(time.monotonic() - started) / 60:.0f} min on {os.cpu_count()} cores.", ""]
    return "\n".join(lines)


def run(quick: bool = False, nices: tuple[int, ...] = (10, 0), seconds: float | None = None,
        modes: tuple[str, ...] = ("vs_ai",), browser_nices: tuple[int, ...] = (0,),
        without: tuple[str, ...] = (), before: bool = False, profile: bool = False) -> str:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    seconds = seconds or (8.0 if quick else 15.0)
    started = time.monotonic()
    scenarios = []
    with tempfile.TemporaryDirectory(prefix="bench-race-load-") as tmp:
        for mode in modes:
            for nice in nices:
                for browser_nice in browser_nices:
                    for workers in ((False, True) if before else (default_workers({}),)):
                        scenarios.append(run_scenario(nice, mode, Path(tmp), seconds, lambda m: print(m, flush=True),
                                                      browser_nice, without, workers, profile))
    return section(scenarios, seconds, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter races, rougher figures")
    parser.add_argument("--nice", default="10,0", help="job priorities to run, comma-separated (default 10,0)")
    parser.add_argument("--seconds", type=float, help="seconds of each running race measured (default 15)")
    parser.add_argument("--modes", default="vs_ai", help="races: vs_ai (the goal's), solo, or both: vs_ai,solo")
    parser.add_argument("--browser-nice", default="0", help="Chromium's priorities to run, comma-separated "
                                                            "(default 0: as this process; 10 stands in for a "
                                                            "browser on another machine)")
    parser.add_argument("--before", action="store_true", help="run each row with the cars on the server's threads "
                                                              "too (WM_RACE_WORKERS=0, as before), and give ratios")
    parser.add_argument("--profile", action="store_true", help="sample the server's GIL with py-spy while the "
                                                               "races run, and say where it went")
    parser.add_argument("--without", default="", help="leave out parts of the load, to see what costs what: "
                                                      "dream, pages (comma-separated)")
    args = parser.parse_args()
    print(run(args.quick, tuple(int(n) for n in args.nice.split(",")), args.seconds, tuple(args.modes.split(",")),
              tuple(int(n) for n in args.browser_nice.split(",")), tuple(filter(None, args.without.split(","))),
              args.before, args.profile))


if __name__ == "__main__":
    main()
