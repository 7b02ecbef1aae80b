"""What a user types into the app's forms, in a real browser at 1366x900: a number out of range reaches the
form's check and keeps Start off, never swapped for the last valid value; names in narrow boxes show whole.

Streamlit's number box with a min or max keeps a typed number out of range from the server (the box turns
red, the script goes on with the last valid value); only a browser shows that, so only a browser test can
catch it coming back. Screenshots go to test-output/forms/.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.browser.harness import BROWSER_MARKS, chromium_page, ready, shot, streamlit_app
from tests.conftest import ROOT, make_app_root

SHOTS = ROOT / "test-output" / "forms"
VIEWPORT = {"width": 1366, "height": 900}  # the screen of the user who found both problems

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_data, tiny_world_model):
    """(URL, root) of the app over a temporary root with the tiny data and world model."""
    root = make_app_root(tmp_path_factory.mktemp("forms_root"), tiny_data, tiny_world_model)
    shutil.copytree(tiny_data, root / "data" / "rollouts-controller")  # the longest name the app writes
    with streamlit_app(root) as url:
        yield url, root


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile", viewport=VIEWPORT) as page:
        yield page


def job_records(root) -> list:
    folder = root / "runs" / "jobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_negative_episode_count_keeps_collect_from_starting_and_names_the_field(app, page):
    url, root = app
    page.goto(url + "collect")
    ready(page)
    start = page.get_by_role("button", name=re.compile(r"^(Start|Resume) collecting$"))  # Resume: data/rollouts
    # holds the tiny data's two episodes
    start.wait_for(timeout=60_000)
    assert start.is_enabled()
    field = page.get_by_label("Episodes", exact=True)
    field.fill("3")
    field.press("Enter")
    ready(page)
    field.fill("-5")  # the user's steps: a valid value, then a negative one, then Start
    field.press("Tab")
    ready(page)
    message = page.get_by_text("Episodes: -5 is too small: it must be at least 1")
    message.wait_for(timeout=30_000)
    assert start.is_disabled()
    start.click(force=True)  # a click on the disabled button does nothing
    ready(page)
    shot(page, SHOTS, "collect-negative-episodes")
    assert page.get_by_role("button", name="Stop collecting").count() == 0
    assert job_records(root) == []
    assert field.input_value() == "-5"  # what was typed stays in the box
    field.fill("3")  # fixed: Start is back
    field.press("Tab")
    message.wait_for(state="detached", timeout=30_000)
    ready(page)
    assert start.is_enabled()


def test_the_dream_episode_box_shows_the_whole_name(app, page):
    url, _ = app
    page.goto(url + "dream")
    ready(page)
    page.get_by_text("Dream step 0").wait_for(timeout=60_000)
    box = page.get_by_role("combobox", name="Episode")  # the select box's text field holds the name shown
    box.click()
    page.get_by_role("option", name="rollouts-controller/ep_0000001").click()
    ready(page)
    shot(page, SHOTS, "dream-episode")
    assert box.input_value() == "rollouts-controller/ep_0000001"
    scroll, client = box.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert scroll <= client, f"{box.input_value()!r} is cut off: {scroll} px of text in {client} px"
    for label in ("Frame", "Seed"):  # the boxes beside it still show their numbers whole
        field = page.get_by_label(label, exact=True)
        scroll, client = field.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert scroll <= client and client >= 40, (label, scroll, client)
