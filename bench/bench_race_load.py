"""Races beside a training job: does an evolution on the same machine turn races into slow motion?

    python -m bench.bench_race_load [--quick] [--nice 10,0] [--seconds 15] [--modes vs_ai,solo]
                                    [--browser-nice 0,10]

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, machine_info, streamlit_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("[data-testid='stApp'][data-test-connection-state='CONNECTED']"
         "[data-test-script-state='notRunning']")
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
    """Chromium, started ``nice`` steps below this process's priority (0: as it is). In use the browser runs
    on the visitor's machine; here it shares the server's cores, and its rendering (the Dream page's GIF at 25
    frames a second, a page a second) is load that a server would not carry."""
    if nice <= 0:
        return CHROMIUM
    wrapper = work / f"chromium-nice-{nice}"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {nice} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def run_scenario(nice: int, mode: str, work: Path, seconds: float, log, browser_nice: int = 0,
                 without: tuple[str, ...] = ()) -> Scenario:
    from playwright.sync_api import sync_playwright
    folder = app_folder(work / f"{mode}-nice-{nice}")
    env = dict(os.environ, WORLD_MODELS_ROOT=str(folder), WM_LEADERBOARD_DB=str(folder / "board.sqlite3"),
               SDL_VIDEODRIVER="dummy", TF_CPP_MIN_LOG_LEVEL="2", WM_MAX_RACES=str(RACERS), PYTHONPATH=str(ROOT))
    out = Scenario(nice, mode, browser_nice, without)
    with streamlit_server(folder, env, timeout=300) as (url, _), sync_playwright() as p:
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
            racing.start()
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
            out.generations_loaded = 60 * (generations(job) - g0) / (time.monotonic() - t0)
            out.racers = results["racers"]
            out.load = (out.load[0], os.getloadavg()[0])
            out.job_status = job.snapshot()["status"]
            registry.shutdown(timeout=60)
            out.history_ok, out.generations = history_without_gaps(folder)
        finally:
            browser.close()
    return out


def section(scenarios: list[Scenario], seconds: float, started: float) -> str:
    def ok(good: bool) -> str:
        return "met" if good else "**missed**"

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
        ("| races | WM_JOB_NICE | Chromium's nice | load avg (1 min) before / after | racers frames/s (min / mean) | key-to-frame p95 "
         "(worst racer) | page load p95 (n) | dreams made | evolution: generations/min alone / under load, "
         "history | goals |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        good = [r for r in s.racers if not r.error]
        fps = [r.fps for r in good]
        key = max((p95(r.latency_ms) for r in good), default=float("nan"))
        page = p95(s.page_loads_s)
        met = (len(good) == RACERS and min(fps, default=0) >= GOAL_FPS and key <= GOAL_KEY_P95_MS
               and page <= GOAL_PAGE_P95_S and s.history_ok and s.job_status in ("running", "stopped", "done"))
        errors = "".join(f"; racer failed: {r.error}" for r in s.racers if r.error)
        lines.append(
            f"| {MODE_NAMES[s.mode]}{''.join(f', no {w}' for w in s.without)} | {s.nice} | {s.browser_nice} | {s.load[0]:.1f} / {s.load[1]:.1f} | {min(fps, default=float('nan')):.1f} / "
            f"{statistics.mean(fps) if fps else float('nan'):.1f} (skipped steps {sum(r.skipped for r in good)}"
            f"{errors}) | {key:.0f} ms | {page:.2f} s ({len(s.page_loads_s)}, {s.page_errors} failed) | "
            f"{s.dreams} | {s.generations_alone:.1f} / {s.generations_loaded:.1f}, "
            f"{s.generations} generations {'numbered without a gap' if s.history_ok else '**with a gap**'}, job "
            f"{s.job_status} | {ok(met)} |")
    lines += ["", f"Measured in {(time.monotonic() - started) / 60:.0f} min on {os.cpu_count()} cores.", ""]
    return "\n".join(lines)


def run(quick: bool = False, nices: tuple[int, ...] = (10, 0), seconds: float | None = None,
        modes: tuple[str, ...] = ("vs_ai",), browser_nices: tuple[int, ...] = (0,),
        without: tuple[str, ...] = ()) -> str:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    seconds = seconds or (8.0 if quick else 15.0)
    started = time.monotonic()
    scenarios = []
    with tempfile.TemporaryDirectory(prefix="bench-race-load-") as tmp:
        for mode in modes:
            for nice in nices:
                for browser_nice in browser_nices:
                    scenarios.append(run_scenario(nice, mode, Path(tmp), seconds, lambda m: print(m, flush=True),
                                                  browser_nice, without))
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
    parser.add_argument("--without", default="", help="leave out parts of the load, to see what costs what: "
                                                      "dream, pages (comma-separated)")
    args = parser.parse_args()
    print(run(args.quick, tuple(int(n) for n in args.nice.split(",")), args.seconds, tuple(args.modes.split(",")),
              tuple(int(n) for n in args.browser_nice.split(",")), tuple(filter(None, args.without.split(",")))))


if __name__ == "__main__":
    main()
