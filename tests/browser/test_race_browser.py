"""The race in a real browser: Chromium drives the Race page with the keyboard against the AI on the same
track, ends the race, downloads the MP4 and finds both runs on the Leaderboard.

Runs ``streamlit run Home.py`` over a temporary app root holding the tiny world model (the AI) and Debian's
/usr/bin/chromium through Playwright. Screenshots go to test-output/race-browser/.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.browser.harness import BROWSER_MARKS, chromium_page, ready, shot, streamlit_app
from tests.conftest import ROOT

SHOTS = ROOT / "test-output" / "race-browser"
PLAYER = "Pat <i>x</i>"  # must show as typed, never as markup

# Races of this module's app run 600 steps (12 s), not CarRacing's 1000: long enough for everything the first
# test does while its race runs (about 7 s of driving), and each race here waits for its end.
RACE_STEPS = 600

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def app_url(app_root):
    """The app over ``app_root`` with races of RACE_STEPS steps, each car in a process of its own (the default
    from 4 cores; the cars on the server's threads, the default on 2, are what the other race pages' and the
    Docker image's browser tests drive)."""
    with streamlit_app(app_root, env={"WM_RACE_MAX_STEPS": str(RACE_STEPS), "WM_RACE_WORKERS": "1"}) as url:
        yield url


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile", viewport={"width": 1280, "height": 1100}, accept_downloads=True) as page:
        yield page


def goto(page, base: str, path: str) -> None:
    if page.url in ("", "about:blank"):
        # Streamlit shows a "Page not found" modal over the right page when a fresh server's first visit is
        # a deep link (streamlit/streamlit#8860); it makes the page below inert. Open Home first.
        page.goto(base)
        ready(page)
    page.goto(base + path)
    ready(page)


def canvas(page) -> str:
    return page.locator(".race canvas").first.evaluate("c => c.toDataURL()")


def data(page, name: str) -> str:
    return page.locator(".race").get_attribute(f"data-{name}")


def grid_cells(page, *must_have: str, timeout: float = 20.0) -> list[str]:
    """Text of st.dataframe's cells (its accessible grid, drawn a moment after the canvas), once every
    string of ``must_have`` is among them or ``timeout`` seconds have passed."""
    cells = page.locator("[data-testid='stDataFrame'] td[role='gridcell']")
    deadline = time.monotonic() + timeout
    while True:
        texts = cells.all_text_contents()
        if all(m in texts for m in must_have) or time.monotonic() > deadline:
            return texts
        page.wait_for_timeout(250)


def wait_status(page, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f".race[data-status='{status}']", timeout=timeout)


def test_race_the_ai_end_download_and_find_both_runs(app_url, page, tmp_path):
    base = app_url
    goto(page, base, "race")
    page.get_by_text("Race the AI", exact=True).click()
    page.get_by_label("Your name (for the leaderboard)").fill(PLAYER)
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill("4242")
    seed.press("Tab")
    page.get_by_role("button", name="Start race").click()

    wait_status(page, "countdown")
    shot(page, SHOTS, "1-countdown")
    assert page.locator(".race .name").first.text_content() == PLAYER  # text, not markup
    assert page.locator(".race .name").nth(1).text_content() == "AI"  # the AI drives the same track beside
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
    shot(page, SHOTS, "2-driving")
    assert float(data(page, "score")) != 0.0

    page.keyboard.press("p")
    wait_status(page, "paused")
    paused_step = data(page, "step")
    page.wait_for_timeout(400)
    assert data(page, "step") == paused_step
    page.keyboard.press("p")
    wait_status(page, "running")

    # A reload closes the race's socket (the race pauses) and the URL's owner id leads back to it; Streamlit's
    # client asks only the app's own paths (no /race/_stcore/health or /race/_stcore/host-config 404s).
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.reload()
    wait_status(page, "paused", timeout=60_000)
    assert missing == []
    assert int(data(page, "step")) >= int(paused_step)
    page.keyboard.press("p")
    wait_status(page, "running")
    # Another window takes the keyboard: the race lets go of the keys and pauses.
    page.keyboard.down("ArrowUp")
    page.evaluate("() => window.dispatchEvent(new Event('blur'))")
    wait_status(page, "paused")
    assert data(page, "mask") == "0"
    page.keyboard.up("ArrowUp")
    page.keyboard.press("p")
    wait_status(page, "running")
    # A key with Ctrl, Cmd or Alt held is the browser's (Ctrl+R, Alt+Left), never the car's.
    taken = page.evaluate("() => { const e = new KeyboardEvent('keydown', {code: 'ArrowUp', key: 'ArrowUp', "
                          "ctrlKey: true, cancelable: true, bubbles: true}); window.dispatchEvent(e); "
                          "return e.defaultPrevented; }")
    page.wait_for_timeout(300)
    assert taken is False and data(page, "mask") == "0"
    # Another tab in front of this one: the page tells the server, which pauses the race (its silence while
    # hidden, timers throttled, would not count as a lost network).
    page.evaluate("() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true}); "
                  "document.dispatchEvent(new Event('visibilitychange')); }")
    wait_status(page, "paused")
    page.locator(".race .message").filter(has_text="in the background").wait_for(timeout=10_000)
    page.evaluate("() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true}); "
                  "document.dispatchEvent(new Event('visibilitychange')); }")
    page.keyboard.press("p")
    wait_status(page, "running")
    # With no key pressed the page still says it is there (every 0.25 s): the race is not let go.
    page.wait_for_timeout(2500)
    assert data(page, "status") == "running" and data(page, "connected") == "true"

    # The race runs out its time: the AI's run counts only when it ends on its own, not cut short.
    wait_status(page, "finished", timeout=120_000)
    # Over: the arrow keys are the page's again (scrolling, the video's seek bar).
    taken = page.evaluate("() => { const e = new KeyboardEvent('keydown', {code: 'ArrowDown', key: 'ArrowDown', "
                          "cancelable: true, bubbles: true}); window.dispatchEvent(e); return e.defaultPrevented; }")
    assert taken is False
    page.get_by_role("button", name="Render the race as a video (MP4)").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER, "AI")
    assert PLAYER in cells and "AI" in cells and "ai" in cells and "human" in cells
    page.get_by_role("button", name="Render the race as a video (MP4)").click()  # both cars, side by side
    page.locator("[data-testid='stVideo']").wait_for(timeout=60_000)
    shot(page, SHOTS, "3-results")
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Download the MP4").click()
    mp4 = tmp_path / "race.mp4"
    download.value.save_as(mp4)
    assert mp4.stat().st_size > 1000 and mp4.read_bytes()[4:8] == b"ftyp"
    assert download.value.suggested_filename == "race-track-4242.mp4"

    page.get_by_role("button", name="Race again on this track").click()  # and end this one at once
    wait_status(page, "running", timeout=60_000)
    page.locator(".race button.end").click()
    wait_status(page, "finished")
    # The results' outcome cell (the grid's cells are hidden text under its canvas: a page-wide "ended" can find one
    # of them first and wait for it to show for ever).
    assert "ended" in grid_cells(page, "ended", timeout=30)
    # Too short for the leaderboard, and the page says why; the AI's run is driven on to its end and shown.
    page.get_by_text(f"{PLAYER}'s run is not on the Leaderboard: it was ended after").wait_for(timeout=30_000)
    page.get_by_text("You vs the AI").wait_for(timeout=30_000)
    grid_cells(page, str(RACE_STEPS), timeout=90)
    shot(page, SHOTS, "3b-ended-early")
    end = f"at the end of the AI's run (step {RACE_STEPS})"
    assert end in grid_cells(page, end)

    goto(page, base, "leaderboard")
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER, "AI")
    assert PLAYER in cells and "4242" in cells and "AI" in cells  # both runs of the race
    shot(page, SHOTS, "4-leaderboard")


def test_a_race_socket_that_never_connects_is_explained(app_url, page):
    """A proxy that does not pass WebSockets: the view says the race cannot reach the server."""
    page.route_web_socket("**/api/race/ws", lambda ws: ws.close())
    goto(page, app_url, "race")
    page.get_by_label("Your name (for the leaderboard)").fill("Solo")
    page.get_by_role("button", name="Start race").click()
    page.get_by_text("The race cannot reach the server").wait_for(timeout=30_000)
    assert data(page, "status") == "reconnecting"


def test_on_a_768_pixel_screen_the_race_and_its_buttons_fit_in_sight(app_url, page):
    page.set_viewport_size({"width": 1366, "height": 768})
    goto(page, app_url, "race")
    page.get_by_label("Your name (for the leaderboard)").fill("Sam")
    page.get_by_role("button", name="Start race").click()
    wait_status(page, "countdown")
    page.locator(".race").scroll_into_view_if_needed()
    view, bar = (page.locator(f".race {part}").first.bounding_box() for part in (".view", ".bar"))
    assert view["width"] >= 192 and bar["y"] + bar["height"] <= 768, (view, bar)
    shot(page, SHOTS, "768-solo")


def test_the_video_picker_of_the_leaderboard_offers_one_tracks_runs(app_url, app_root, page):
    """"Select all" used to pick runs of two tracks, and the video failed; now the track comes first and the
    picker offers only its runs, at most two, without "Select all"."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from core.app.leaderboard import Leaderboard, Run
    board = Leaderboard(app_root / "board.sqlite3")
    actions = np.tile(np.array([[0, 1, 0]], np.float32), (30, 1))
    # Track 31 gets the most runs of the board (the race test above leaves at most 3 on its track), so it is the
    # video's track at first.
    for player, seed in (("Vic", 31), ("Wes", 31), ("Xan", 31), ("Uma", 31), ("Tom", 31), ("Yul", 32)):
        board.add(Run(player, "human", "", seed, 10.0, 30, 3, 300, "time", actions))
    goto(page, app_url, "leaderboard")
    page.get_by_text("Watch runs of one track as a video").click()
    page.get_by_text("Track of the video").wait_for(timeout=30_000)
    picker = page.locator("[data-testid='stMultiSelect']")
    page.get_by_text("Runs of track 31").wait_for(timeout=30_000)
    options = page.get_by_role("option")

    def open_list() -> None:
        for attempt in range(3):  # a rerun of the page (a pick, the board changed under it) closes the list
            if options.count() == 0:
                picker.click()
            try:
                options.first.wait_for(timeout=10_000)
                return
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
                page.keyboard.press("Escape")

    def pick_first() -> None:
        for attempt in range(3):  # the list can close between its opening and the click, as above
            open_list()
            try:
                options.first.click(timeout=10_000)
                return
            except PlaywrightTimeout:
                if attempt == 2:
                    raise

    open_list()
    texts = options.all_text_contents()
    assert not any("select all" in t.lower() for t in texts) and len(texts) == 5, texts
    assert all("Yul" not in t for t in texts)  # track 32's run is not offered with track 31's
    pick_first()
    page.wait_for_timeout(500)  # the pick reruns the page, which may close the list
    pick_first()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Render video").click()
    page.locator("[data-testid='stVideo']").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    shot(page, SHOTS, "5-leaderboard-video")
