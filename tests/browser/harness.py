"""What the browser tests share: ``streamlit run Home.py`` on a free port over a temporary app root, and
Debian's Chromium (/usr/bin/chromium) driven by Playwright, with the flags this closed network needs.

A module of its own, not conftest.py: pytest imports conftest.py as ``conftest``, and a test module importing
``tests.browser.conftest`` got a second copy of it, with a ``SERVERS`` of its own that the failure report never
saw. This module is imported by one name everywhere.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from bench.common import CHROMIUM, CHROMIUM_FLAGS, READY, streamlit_server

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
PAGE_TROUBLES: dict[int, list[str]] = {}  # per open page (by id): requests that failed, got an HTTP error or
# went to another host
SEEN: dict[int, int] = {}  # per open page: how many of its troubles ``ready`` has looked at
CHUNK_ERROR = "Failed to fetch dynamically imported module"
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
OUTSIDE = "asked a host outside this machine:"  # the app must work in a closed network and tell no one of a visit


@contextmanager
def chromium_page(profile: Path, **context_args):
    """A fresh Chromium profile and one page; ``context_args`` go to Playwright's browser context."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                                       headless=True, **context_args)
        page = browser.new_page()
        troubles = PAGE_TROUBLES.setdefault(id(page), [])

        def failed(request) -> None:
            troubles.append(f"failed: {request.method} {request.url} ({request.failure})")

        def sent(request) -> None:
            host = urlsplit(request.url).hostname
            if request.url.startswith(("http", "ws")) and host not in ("127.0.0.1", "localhost"):
                troubles.append(f"{OUTSIDE} {request.url}")

        def answered(response) -> None:
            if response.status >= 400:
                troubles.append(f"HTTP {response.status}: {response.request.method} {response.url}")

        page.on("request", sent)
        page.on("requestfailed", failed)
        page.on("response", answered)
        try:
            yield page
        finally:
            PAGE_TROUBLES.pop(id(page), None)
            SEEN.pop(id(page), None)
            browser.close()


def ready(page, timeout: float = 90_000) -> None:
    """Wait until Streamlit is connected and no script runs.

    A page that lost requests to a network change (Chromium fails every request in flight with
    net::ERR_NETWORK_CHANGED when a network interface comes or goes, as Docker's do when the image's test
    starts or removes its container beside the browser tests), before or after it got ready, or whose lazily
    loaded widget code did not arrive ("Failed to fetch dynamically imported module"), is loaded once more, as
    a person would, up to 3 times. The requests that failed are kept for the failure report (``PAGE_TROUBLES``).
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    troubles = PAGE_TROUBLES.setdefault(id(page), [])
    deadline = time.monotonic() + timeout / 1000
    reloads = 0
    while True:
        seen = SEEN.get(id(page), 0)
        left_ms = max(1.0, 1000 * (deadline - time.monotonic()))
        try:
            page.wait_for_selector(READY, timeout=min(2000.0, left_ms))
            is_ready = True
        except PlaywrightTimeout:
            if left_ms <= 2000:
                raise
            is_ready = False
        lost = any(NETWORK_CHANGED in t for t in troubles[seen:])
        SEEN[id(page)] = len(troubles)
        if reloads < 3 and (lost or (is_ready and page.get_by_text(CHUNK_ERROR).count())):
            reloads += 1
            troubles.append(f"reloaded {page.url}: {NETWORK_CHANGED if lost else CHUNK_ERROR}")
            SEEN[id(page)] = len(troubles)
            try:
                page.reload()
            except PlaywrightError as e:  # the document itself lost to a network change: the next round retries
                troubles.append(f"reload failed: {e}".splitlines()[0])
            continue
        if is_ready:
            return


def shot(page, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
