"""The race in a real browser: Chromium drives the Race page with the keyboard, ends the race, downloads
the MP4 and finds the run on the Leaderboard.

Runs the app with ``streamlit run`` (Home.py when it serves the race routes, else a two-page harness of
the same pages and routes) and Debian's /usr/bin/chromium through Playwright. Screenshots go to
test-output/race-browser/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "race-browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("[data-testid='stApp'][data-test-connection-state='CONNECTED']"
         "[data-test-script-state='notRunning']")
PLAYER = "Pat <i>x</i>"  # must show as typed, never as markup

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

HARNESS = """\
import streamlit as st
from core.race_server import race_routes

if __name__ != "__main__":
    app = st.App(__file__, routes=race_routes())
else:
    st.navigation([st.Page({race!r}, title="Race", url_path="race"),
                   st.Page({board!r}, title="Leaderboard", url_path="leaderboard")]).run()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("race_app")
    home = ROOT / "Home.py"
    if home.exists() and "race_routes" in home.read_text(encoding="utf-8"):
        entry = home
    else:
        entry = tmp / "race_app.py"
        entry.write_text(HARNESS.format(race=str(ROOT / "pages" / "6_Race.py"),
                                        board=str(ROOT / "pages" / "7_Leaderboard.py")), encoding="utf-8")
    port = _free_port()
    env = dict(os.environ, WM_LEADERBOARD_DB=str(tmp / "board.sqlite3"), PYTHONPATH=str(ROOT),
               SDL_VIDEODRIVER="dummy", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(entry), "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "_stcore/health", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"streamlit did not start:\n{(tmp / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.3)
    yield url, entry == home
    proc.terminate()
    proc.wait(15)
    log.close()


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1280, "height": 1100}, accept_downloads=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def goto(page, base: str, title: str, harness: bool) -> None:
    if harness:
        page.goto(base + title.lower())
    else:
        page.goto(base)
        page.wait_for_selector(READY, timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text(title, exact=False).first.click()
    page.wait_for_selector(READY, timeout=60_000)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def canvas(page) -> str:
    return page.locator(".race canvas").first.evaluate("c => c.toDataURL()")


def data(page, name: str) -> str:
    return page.locator(".race").get_attribute(f"data-{name}")


def grid_cells(page, must_have: str, timeout: float = 20.0) -> list[str]:
    """Text of st.dataframe's cells (its accessible grid, drawn a moment after the canvas)."""
    cells = page.locator("[data-testid='stDataFrame'] td[role='gridcell']")
    deadline = time.monotonic() + timeout
    while True:
        texts = cells.all_text_contents()
        if must_have in texts or time.monotonic() > deadline:
            return texts
        page.wait_for_timeout(250)


def wait_status(page, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f".race[data-status='{status}']", timeout=timeout)


def test_drive_end_download_and_find_the_run(app_url, page, tmp_path):
    base, uses_home = app_url
    goto(page, base, "Race", harness=not uses_home)
    page.get_by_label("Your name (for the leaderboard)").fill(PLAYER)
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill("4242")
    seed.press("Tab")
    page.get_by_role("button", name="Start race").click()

    wait_status(page, "countdown")
    shot(page, "1-countdown")
    assert page.locator(".race .name").first.text_content() == PLAYER  # text, not markup
    assert page.locator(".race .name i").count() == 0
    wait_status(page, "running")
    start_frame, start_step = canvas(page), int(data(page, "step"))

    page.keyboard.down("ArrowUp")
    page.wait_for_timeout(1200)
    assert data(page, "mask") == "4"
    # The frame rate is bench_race's business; here the race only has to go on (a loaded machine is slower).
    deadline = time.monotonic() + 15
    while int(data(page, "step")) <= start_step + 20 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert int(data(page, "step")) > start_step + 20
    moved_frame = canvas(page)
    assert moved_frame != start_frame
    page.keyboard.down("KeyA")  # WASD steer too
    page.wait_for_timeout(700)
    assert data(page, "mask") == "5" and int(data(page, "ack")) >= 3
    page.keyboard.up("KeyA")
    page.keyboard.up("ArrowUp")
    shot(page, "2-driving")
    assert float(data(page, "score")) != 0.0

    page.keyboard.press("p")
    wait_status(page, "paused")
    paused_step = data(page, "step")
    page.wait_for_timeout(400)
    assert data(page, "step") == paused_step
    page.keyboard.press("p")
    wait_status(page, "running")

    page.locator(".race button.end").click()
    wait_status(page, "finished")
    page.get_by_role("button", name="Render the race as a video (MP4)").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER)
    assert PLAYER in cells and "ended" in cells
    page.get_by_role("button", name="Render the race as a video (MP4)").click()
    page.locator("[data-testid='stVideo']").wait_for(timeout=60_000)
    shot(page, "3-results")
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Download the MP4").click()
    mp4 = tmp_path / "race.mp4"
    download.value.save_as(mp4)
    assert mp4.stat().st_size > 1000 and mp4.read_bytes()[4:8] == b"ftyp"
    assert download.value.suggested_filename == "race-track-4242.mp4"

    goto(page, base, "Leaderboard", harness=not uses_home)
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER)
    assert PLAYER in cells and "4242" in cells
    shot(page, "4-leaderboard")
