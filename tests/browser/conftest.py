"""What the browser tests share: ``streamlit run Home.py`` on a free port over a temporary app root, and
Debian's Chromium (/usr/bin/chromium) driven by Playwright, with the flags this closed network needs."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bench.common import streamlit_server
from tests.conftest import make_app_root

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("[data-testid='stApp'][data-test-connection-state='CONNECTED']"
         "[data-test-script-state='notRunning']")
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


@contextmanager
def streamlit_app(root: Path, base_url_path: str = "", args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """``streamlit run Home.py`` with ``root`` as WORLD_MODELS_ROOT and its own leaderboard; yields the URL.
    With ``base_url_path`` the app runs with ``--server.baseUrlPath`` and the URL ends with that path;
    ``args`` go to ``streamlit run`` as well, ``env`` adds to its environment."""
    env = {**os.environ, "WORLD_MODELS_ROOT": str(root), "WM_LEADERBOARD_DB": str(root / "board.sqlite3"),
           "SDL_VIDEODRIVER": "dummy", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with streamlit_server(root, env, base_url_path, args, timeout=60) as (url, proc):
        SERVERS[url] = (proc.pid, root / "streamlit.log")
        try:
            yield url
        finally:
            SERVERS.pop(url, None)


SERVERS: dict[str, tuple[int, Path]] = {}  # the running apps' URLs: their server's pid and log
FAILURES = Path(__file__).resolve().parents[2] / "test-output" / "failures"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test gets, in its report, the Python stacks (py-spy, where installed) and the end of
    the log of each app server running in its process (what the server was doing when the page did not
    answer), and a screenshot of its page in test-output/failures/."""
    report = yield
    if not (report.failed and call.when == "call"):
        return report
    for url, (pid, log) in list(SERVERS.items()):
        if shutil.which("py-spy"):
            try:
                dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                                      timeout=30)
                report.sections.append((f"app server {url} stacks (py-spy dump)", dump.stdout + dump.stderr))
            except (OSError, subprocess.TimeoutExpired) as e:
                report.sections.append((f"app server {url} stacks (py-spy dump)", f"no dump: {e}"))
        report.sections.append((f"app server {url} log (end)", log.read_text(errors="replace")[-4000:]))
    page = getattr(item, "funcargs", {}).get("page")
    if page is not None:
        try:
            shot(page, FAILURES, item.name.replace("/", "_")[:120])
            report.sections.append(("page", f"{page.url}; screenshot in {FAILURES}"))
        except Exception as e:  # noqa: BLE001 - a page that is gone: the report says so
            report.sections.append(("page", f"no screenshot: {e}"))
    return report


@pytest.fixture(scope="module")
def app_root(tmp_path_factory, tiny_data, tiny_world_model) -> Path:
    """A temporary app root with the tiny data and world model; its leaderboard is board.sqlite3 in it."""
    return make_app_root(tmp_path_factory.mktemp("browser_root"), tiny_data, tiny_world_model)


@pytest.fixture(scope="module")
def app_url(app_root):
    """The app served over ``app_root``, one server per test module."""
    with streamlit_app(app_root) as url:
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
