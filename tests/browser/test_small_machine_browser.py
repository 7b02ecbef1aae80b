"""The small-machine setting given as a root-level Streamlit secret (as on Community Cloud): the Home page
says it is on, and a race against the AI runs without TensorFlow in the server's process (a child process
loads V and M once and fills the weights cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.browser.harness import BROWSER_MARKS, chromium_page, streamlit_app
from tests.browser.test_race_browser import data, goto, wait_status
from tests.conftest import make_app_root

pytestmark = BROWSER_MARKS


def server_pid(url: str) -> int:
    """The ``streamlit run`` process serving ``url`` (found by its port on its command line)."""
    port = str(urlparse(url).port)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"streamlit" in b" ".join(args) and b"--server.port" in args and port.encode() in args:
                return int(entry.name)
    raise AssertionError(f"no streamlit process on port {port}")


def tensorflow_loaded(pid: int) -> bool:
    return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()


def test_a_small_machine_secret_keeps_tensorflow_out_of_the_server_for_a_race(tmp_path, tiny_data,
                                                                            tiny_world_model):
    root = make_app_root(tmp_path / "root", tiny_data, tiny_world_model)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('WM_SMALL_MACHINE = "1"\n', encoding="utf-8")
    cache = tmp_path / "weights-cache"  # empty, as after a reboot
    with streamlit_app(root, args=("--secrets.files", str(secrets)),
                       env={"WORLD_MODELS_CACHE": str(cache), "WM_SMALL_MACHINE": ""}) as url, \
            chromium_page(tmp_path / "profile", viewport={"width": 1280, "height": 1100}) as page:
        pid = server_pid(url)
        goto(page, url, "")
        page.get_by_text("small-machine setting").wait_for(timeout=30_000)
        deadline = time.monotonic() + 120  # the first visit has a child load V and M into the cache
        while not (cache.is_dir() and any(cache.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cache.is_dir() and any(cache.iterdir()), "the weights cache was not filled"
        assert not tensorflow_loaded(pid)

        goto(page, url, "race")
        page.get_by_text("Race the AI", exact=True).click()
        page.get_by_label("Your name (for the leaderboard)").fill("Sam")
        page.get_by_role("button", name="Start race").click()
        wait_status(page, "running", timeout=60_000)
        step = int(data(page, "step"))
        deadline = time.monotonic() + 15
        while int(data(page, "step")) <= step + 10 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert int(data(page, "step")) > step + 10  # both cars drive: the AI's agent runs in the server
        assert page.locator(".race .name").nth(1).text_content() == "AI"
        assert not tensorflow_loaded(pid)
