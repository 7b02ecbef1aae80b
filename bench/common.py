"""Helpers shared by the benchmarks, and by the tests that start the same servers: machine description,
robust timing, and ``streamlit run Home.py`` on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
# Debian's Chromium, driven by Playwright: its path, the flags this closed network needs, and the selector of a
# Streamlit page that is connected with no script running.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("[data-testid='stApp'][data-test-connection-state='CONNECTED']"
         "[data-test-script-state='notRunning']")


def machine_info() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    versions = [f"Python {platform.python_version()}", f"NumPy {numpy.__version__}"]
    for name in ("gymnasium", "tensorflow", "keras", "streamlit"):
        try:
            import importlib.metadata as md
            versions.append(f"{name} {md.version(name if name != 'tensorflow' else 'tensorflow-cpu')}")
        except Exception:  # noqa: BLE001 - a missing package only shortens the line
            pass
    return f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; " + ", ".join(versions)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 3,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` calls (after ``warmup`` calls), by ``clock``
    (``time.process_time``: this process's CPU time, which other work on the machine hardly moves)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End a server started here (by its Popen): ask, wait up to ``timeout`` seconds, then kill."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def streamlit_server(root: Path, env: dict[str, str], base: str = "", args: tuple[str, ...] = (),
                     timeout: float = 90, code: Path = ROOT) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run Home.py`` on 127.0.0.1 with ``env`` (its whole environment), logging to
    ``root/streamlit.log``; yields (its URL, its process) once its health check answers. ``base``: a path
    prefix given as ``--server.baseUrlPath`` (the URL ends with it); ``args`` go to ``streamlit run``. A
    server that does not answer within ``timeout`` seconds is a RuntimeError with the end of its log. ``code``:
    the checkout whose app runs (default this one; a benchmark may compare another)."""
    port = free_port()
    base = base.strip("/") + "/" if base.strip("/") else ""
    log_path = root / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(code / "Home.py"), "--server.port",
                                 str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false",
                                 *(["--server.baseUrlPath", base] if base else []), *args],
                                cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/{base}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url + "_stcore/health", timeout=1).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"streamlit did not start:\n{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.3)
            yield url, proc
        finally:
            stop_process(proc, 30)


# --- a race client, as the Race page's view talks to the race socket ----------------------------------

_BEATS: set = set()  # heartbeat tasks of open clients (the event loop keeps only weak references)


async def race_heartbeat(ws) -> None:
    """Say "still here" every HEARTBEAT_S on race socket ``ws``, as the page does (a silent client is let go
    and its race paused), until the socket closes."""
    import websockets

    from core.app.race.server import HEARTBEAT_S
    try:
        while True:
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(HEARTBEAT_S)
    except websockets.ConnectionClosed:
        pass


async def join_race(url: str, token: str, max_size: int = 2**20):
    """A client on ``token``'s race at ``url`` (the race socket), with its heartbeat running; RuntimeError
    when the server does not answer the hello with "ready"."""
    import websockets
    ws = await websockets.connect(url, max_size=max_size)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise RuntimeError(f"race refused: {ready}")
    task = asyncio.create_task(race_heartbeat(ws))
    _BEATS.add(task)
    task.add_done_callback(_BEATS.discard)
    return ws
