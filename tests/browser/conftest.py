"""What the browser tests share: ``streamlit run Home.py`` on a free port over a temporary app root, and
Debian's Chromium (/usr/bin/chromium) driven by Playwright, with the flags this closed network needs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, make_app_root, stop_process

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("[data-testid='stApp'][data-test-connection-state='CONNECTED']"
         "[data-test-script-state='notRunning']")
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_app(root: Path, base_url_path: str = "", args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """``streamlit run Home.py`` with ``root`` as WORLD_MODELS_ROOT and its own leaderboard; yields the URL.
    With ``base_url_path`` the app runs with ``--server.baseUrlPath`` and the URL ends with that path;
    ``args`` go to ``streamlit run`` as well, ``env`` adds to its environment."""
    port = free_port()
    base = base_url_path.strip("/") + "/" if base_url_path.strip("/") else ""
    env = {**os.environ, "WORLD_MODELS_ROOT": str(root), "WM_LEADERBOARD_DB": str(root / "board.sqlite3"),
           "SDL_VIDEODRIVER": "dummy", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log_path = root / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "Home.py"), "--server.port",
                                 str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
                                 *(["--server.baseUrlPath", base] if base else []), *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/{base}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "_stcore/health", timeout=1).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.3)
            yield url
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_data, tiny_world_model):
    """The app served over a temporary root with the tiny data and world model, one server per test module."""
    root = make_app_root(tmp_path_factory.mktemp("browser_root"), tiny_data, tiny_world_model)
    with streamlit_app(root) as url:
        yield url


@contextmanager
def chromium_page(profile: Path, **context_args):
    """A fresh Chromium profile and one page; ``context_args`` go to Playwright's browser context."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, **context_args)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def ready(page, timeout: float = 90_000) -> None:
    """Wait until Streamlit is connected and no script runs."""
    page.wait_for_selector(READY, timeout=timeout)


def shot(page, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
