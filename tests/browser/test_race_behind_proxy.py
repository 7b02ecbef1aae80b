"""The race behind a reverse proxy that serves the app under ``/~/+/`` only, as Streamlit Community Cloud
does, both ways such a proxy can work: ``strip`` cuts the prefix off (the app runs at its root), ``keep``
passes it on (the app runs with ``--server.baseUrlPath`` set to it). Through the proxy, Chromium races the
AI with the keyboard to the end of the race and finds the runs on the Leaderboard. A race page that builds
its socket's URL from the site root (``/api/race/ws``) gets the proxy's 404 and never sees a frame.

Screenshots go to test-output/race-proxy/.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from tests.browser.harness import BROWSER_MARKS, chromium_page, shot, streamlit_app
from tests.browser.prefix_proxy import PREFIX, PrefixProxy
from tests.browser.test_race_browser import PLAYER, canvas, data, goto, grid_cells, wait_status
from tests.conftest import ROOT, make_app_root

SHOTS = ROOT / "test-output" / "race-proxy"
SEED = "4343"
RACE_STEPS = 300  # the race runs 6 s, not CarRacing's 20: the test drives only its first 20 steps or so

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module", params=["strip", "keep"])
def proxied(request, tmp_path_factory, tiny_data, tiny_world_model):
    """(the app's URL through the proxy, the proxy, the mode): one app and one proxy per mode."""
    strip = request.param == "strip"
    root = make_app_root(tmp_path_factory.mktemp(f"proxied_{request.param}"), tiny_data, tiny_world_model)
    with streamlit_app(root, base_url_path="" if strip else PREFIX,
                       env={"WM_RACE_MAX_STEPS": str(RACE_STEPS)}) as app_url:
        proxy = PrefixProxy(urlparse(app_url).port, strip=strip)
        with proxy as url:
            yield url, proxy, request.param


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile", viewport={"width": 1280, "height": 1100}) as page:
        yield page


def test_a_race_through_a_prefix_proxy_drives_finishes_and_reaches_the_leaderboard(proxied, page):
    base, proxy, mode = proxied
    outside = base.removesuffix(PREFIX) + "/_stcore/health"
    with pytest.raises(urllib.error.HTTPError) as refused:  # the proxy passes nothing outside its prefix
        urllib.request.urlopen(outside, timeout=5)
    assert refused.value.code == 404
    assert urllib.request.urlopen(base + "_stcore/health", timeout=5).status == 200

    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(urlparse(ws.url).path))
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    goto(page, base, "race")
    for attempt in range(3):
        # The form's widget code loads lazily after the click; a network change (Docker's test starting or
        # removing its container beside this one) fails those requests, and the page is loaded again.
        page.get_by_text("Race the AI", exact=True).click()
        try:
            page.get_by_label("Your name (for the leaderboard)").wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            goto(page, base, "race")
    page.get_by_label("Your name (for the leaderboard)").fill(PLAYER)
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill(SEED)
    seed.press("Tab")
    page.get_by_role("button", name="Start race").click()

    page.wait_for_selector(".race", timeout=30_000)
    try:
        wait_status(page, "countdown", timeout=30_000)
    except Exception:
        shot(page, SHOTS, f"{mode}-no-frames")
        raise AssertionError(f"no frame came through the proxy ({mode}): the race's sockets went to {sockets}, "
                             f"the proxy refused {[p for p in proxy.refused if 'race' in p]}")
    assert PREFIX + "api/race/ws" in sockets, sockets
    wait_status(page, "running")
    start_frame, start_step = canvas(page), int(data(page, "step"))

    page.keyboard.down("ArrowUp")
    deadline = time.monotonic() + 15
    while int(data(page, "step")) <= start_step + 20 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert int(data(page, "step")) > start_step + 20
    assert data(page, "mask") == "4" and int(data(page, "ack")) >= 1  # the key went in, and a step used it
    assert canvas(page) != start_frame
    page.keyboard.up("ArrowUp")
    assert float(data(page, "score")) != 0.0
    shot(page, SHOTS, f"{mode}-driving")

    wait_status(page, "finished", timeout=120_000)  # the race runs out its RACE_STEPS
    page.get_by_role("button", name="Render the race as a video (MP4)").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER, "AI")
    assert PLAYER in cells and "AI" in cells
    shot(page, SHOTS, f"{mode}-results")

    goto(page, base, "leaderboard")
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER, SEED, "AI")
    assert PLAYER in cells and SEED in cells and "AI" in cells
    shot(page, SHOTS, f"{mode}-leaderboard")
    assert not [path for path in proxy.refused if "race" in path], proxy.refused
