"""Every page of the app in a real browser: ``streamlit run Home.py`` and Debian's Chromium via Playwright.

The app runs over a temporary root (``$WORLD_MODELS_ROOT``) holding the session's tiny data and world
model. Each page must render with no Streamlit exception; a collect job is started, survives a reload and
is stopped from the page; a dream is steered with the arrow keys and plays as a GIF at 25 frames a second;
the race WebSocket answers on the same port. A second server over a copy of the real shipped model alone (no
runs/, no collected episodes: a fresh clone) is seen at a laptop's 1366x900: the training pages show the shipped
model first, and Home's table of endings fits its column. Screenshots go to test-output/pages/ (look at them).
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.parse
import urllib.request

import pytest

from tests.browser.harness import BROWSER_MARKS, OUTSIDE, PAGE_TROUBLES, chromium_page, ready, shot, streamlit_app
from tests.conftest import ROOT, make_app_root

SHOTS = ROOT / "test-output" / "pages"
PAGES = [  # (url path, page title shown as its h1)
    ("", "Do neural nets dream of fast cars?"),
    ("collect", "Collect"),
    ("train_vae", "Train VAE (V)"),
    ("train_rnn", "Train RNN (M)"),
    ("evolve", "Evolve (C)"),
    ("dream", "Dream"),
    ("race", "Race"),
    ("leaderboard", "Leaderboard"),
]

pytestmark = BROWSER_MARKS


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile", viewport={"width": 1400, "height": 2400}) as page:
        yield page


def no_exceptions(page, where: str) -> None:
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:2000]}"


def test_every_page_renders_without_an_exception_and_asks_no_other_host(app_url, page):
    for path, title in PAGES:
        page.goto(app_url + path)
        ready(page)
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        time.sleep(1.0)  # let images, charts and fragments settle before the picture
        ready(page)
        no_exceptions(page, path or "home")
        shot(page, SHOTS, path or "home")
    outside = [t for t in PAGE_TROUBLES[id(page)] if t.startswith(OUTSIDE)]
    assert not outside, outside


def test_a_collect_job_survives_a_reload_and_stops_from_the_page(app_url, page):
    other_tab = page.context.new_page()  # open before the job starts; it is never reloaded
    other_tab.goto(app_url + "collect")
    ready(other_tab)
    page.goto(app_url + "collect")
    ready(page)
    for label, value in (("Out dir", "data/browser"), ("Episodes", "50"), ("Workers", "1")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        ready(page)
    page.get_by_role("button", name="Start collecting").click()
    stop = page.get_by_role("button", name="Stop collecting")
    stop.wait_for(timeout=60_000)
    page.get_by_text("of 50 episodes").first.wait_for(timeout=60_000)
    no_exceptions(page, "collect, running")
    shot(page, SHOTS, "collect-running")
    # The other tab notices the job on its own (it looks every 5 s) and shows its progress and Stop button.
    other_tab.get_by_role("button", name="Stop collecting").wait_for(timeout=20_000)
    other_tab.close()
    page.reload()  # a new browser session: the job lives in the server's registry, not in the session
    ready(page)
    stop.wait_for(timeout=60_000)
    stop.click()
    page.get_by_text("was stopped").first.wait_for(timeout=120_000)
    no_exceptions(page, "collect, stopped")
    shot(page, SHOTS, "collect-stopped")


def test_a_dream_is_steered_with_the_arrow_keys_and_plays_at_25_fps(app_url, page):
    from PIL import Image
    page.goto(app_url + "dream")
    ready(page)
    caption = page.get_by_text("Dream step 0")
    caption.wait_for(timeout=60_000)
    page.locator("body").press("ArrowUp")  # the Gas button's shortcut
    page.get_by_text("Dream step 0").wait_for(state="detached", timeout=60_000)
    ready(page)
    no_exceptions(page, "dream after a key")
    text = page.get_by_text("Dream step").first.inner_text()
    steps = int(text.split("Dream step")[1].split()[0])
    assert 0 < steps <= 10  # ten steps a key press, fewer if the tiny M predicts the end first
    src = page.locator("[data-testid='stImage'] img").first.get_attribute("src")
    data = urllib.request.urlopen(urllib.parse.urljoin(app_url, src), timeout=10).read()
    gif = Image.open(io.BytesIO(data))
    assert data[:6] == b"GIF89a" and gif.n_frames == steps + 1 and gif.info["duration"] == 40  # 25 frames/s
    shot(page, SHOTS, "dream-steered")
    page.get_by_test_id("stButtonGroup").get_by_text("Real vs dream").click()
    ready(page)
    page.get_by_role("button", name="Run side by side").click()
    page.get_by_text("Left: the real env").wait_for(timeout=120_000)
    ready(page)
    no_exceptions(page, "real vs dream")
    shot(page, SHOTS, "dream-side-by-side")


def test_the_latent_explorer_shows_c_s_action_live_as_a_slider_moves(app_url, page):
    page.goto(app_url + "train_vae")
    ready(page)
    page.get_by_text("decoded with your z").first.wait_for(timeout=60_000)
    ready(page)
    bars = page.locator(".wm-action-bar")
    # The image and its caption can reach the browser before the bars below them do, in the same script run.
    page.wait_for_function("document.querySelectorAll('.wm-action-bar').length >= 3", timeout=60_000)
    assert [bars.nth(i).get_attribute("data-action") for i in range(bars.count())] == ["steer", "gas", "brake"]

    def shown() -> dict:
        """Each bar's value and its drawn width as a fraction of its track."""
        out = {}
        for i in range(3):
            bar = bars.nth(i)
            track = bar.locator("xpath=..").bounding_box()
            out[bar.get_attribute("data-action")] = (float(bar.get_attribute("data-value")),
                                                     bar.bounding_box()["width"] / track["width"])
        return out

    before = shown()
    for name, (value, width) in before.items():  # steer is drawn from the middle, gas and brake from the left
        assert width == pytest.approx(abs(value) / 2 if name == "steer" else value, abs=0.02), name
    thumb = page.get_by_role("slider", name="z[").first
    thumb.focus()
    page.keyboard.press("End")  # the first dimension to +4
    page.wait_for_function("v => document.querySelector(\".wm-action-bar[data-action='gas']\")"
                           ".getAttribute('data-value') !== v", arg=bars.nth(1).get_attribute("data-value"),
                           timeout=60_000)
    ready(page)
    after = shown()
    assert after != before
    for name, (value, width) in after.items():
        assert width == pytest.approx(abs(value) / 2 if name == "steer" else value, abs=0.02), name
    no_exceptions(page, "latent explorer")
    shot(page, SHOTS, "train_vae-explorer-action")


def test_the_race_websocket_is_served_on_the_app_port(app_url):
    from websockets.sync.client import connect

    from core.app.race.server import WS_PATH
    with connect(app_url.replace("http://", "ws://").rstrip("/") + WS_PATH, open_timeout=10) as ws:
        assert ws.protocol.state.name == "OPEN"


def test_a_page_first_opened_by_its_file_name_still_gets_the_apps_navigation(tmp_path, tiny_data,
                                                                                   tiny_world_model, page):
    """A fresh server whose first visitor types /Evolve (the file name, not the app's lowercase link) must
    still run Home's navigation (grouped sections, no ``_ui`` helper listed as a page), so that unknown path
    gets Streamlit's "Page not found" and the Home page, as it does on a server that has run before."""
    root = make_app_root(tmp_path / "root", tiny_data, tiny_world_model)
    with streamlit_app(root) as url:
        page.goto(url + "Evolve")
        ready(page)
        time.sleep(1.0)
        ready(page)
        nav = page.locator("[data-testid='stSidebarNav']").inner_text()
        assert "Train" in nav and "Play" in nav, nav
        assert "ui" not in nav.split(), nav
        no_exceptions(page, "/Evolve")
        shot(page, SHOTS, "first-visit-Evolve")


# --- a fresh clone: the shipped model alone, on a laptop's screen -----------------------------------------------

LAPTOP = {"width": 1366, "height": 900}


@pytest.fixture(scope="module")
def new_user_url(tmp_path_factory):
    """The app over a copy of the real models/ and nothing else (no runs/, no data/), as a new user sees it."""
    root = tmp_path_factory.mktemp("new_user_root")
    shutil.copytree(ROOT / "models", root / "models")
    with streamlit_app(root) as url:
        yield url


@pytest.fixture
def laptop(tmp_path):
    with chromium_page(tmp_path / "profile", viewport=LAPTOP) as page:
        yield page


def on_first_screen(locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] < LAPTOP["height"] and box["height"] > 0


def test_a_new_user_sees_the_shipped_model_first_on_the_training_pages(new_user_url, laptop):
    """Train VAE, Train RNN and Evolve with no runs/ and no episodes: the shipped model's note and curves on the
    first screen, above the form; further down its reconstructions and latent explorer (on the sample frames),
    M's predictions (on the sample episode), and the published score beside the user's own evaluation."""
    page = laptop
    for path, title, below in (("train_vae", "Train VAE (V)", ["Bottom: V's reconstructions", "decoded with your z"]),
                               ("train_rnn", "Train RNN (M)", ["on the sample episode shipped with the app"]),
                               ("evolve", "Evolve (C)", ["Your evaluation", "Published score"])):
        page.goto(new_user_url + path)
        ready(page)
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        note = page.get_by_text("The shipped model, read-only")
        note.first.wait_for(timeout=60_000)
        chart = page.locator("[data-testid='stPlotlyChart']").first
        chart.wait_for(timeout=60_000)
        assert on_first_screen(note.first) and on_first_screen(chart), path  # above the form, not under it
        ready(page)
        no_exceptions(page, path)
        shot(page, SHOTS, f"new-user-{path}")
        for text in below:
            content = page.get_by_text(text, exact=text == "Published score").first  # not "Its published score"
            content.wait_for(timeout=120_000)
            content.scroll_into_view_if_needed()
        time.sleep(1.0)
        no_exceptions(page, path)
        shot(page, SHOTS, f"new-user-{path}-below")


def test_homes_table_of_endings_fits_a_laptop_screen(new_user_url, laptop):
    """The shipped model's table of how its 100 episodes ended sits in half of the page: every column shows,
    with no sideways scrolling."""
    page = laptop
    page.goto(new_user_url)
    ready(page)
    table = page.locator("[data-testid='stDataFrame']").first
    table.wait_for(timeout=60_000)
    table.scroll_into_view_if_needed()
    time.sleep(1.0)
    scroller = table.locator(".dvn-scroller").first  # the data grid's scrolling box
    scroll_width, client_width = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert scroll_width <= client_width + 1, f"the table scrolls sideways: {scroll_width} px in {client_width} px"
    main = page.locator("[data-testid='stMainBlockContainer']").bounding_box()
    box = table.bounding_box()
    assert box["x"] + box["width"] <= main["x"] + main["width"] + 1
    assert page.get_by_text("not finished").count() == 0  # the shipped controller is the shipped one
    no_exceptions(page, "home")
    shot(page, SHOTS, "new-user-home-endings")
