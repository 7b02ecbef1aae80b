"""The Race and Leaderboard pages under Streamlit's AppTest (no browser: the race view's JavaScript is
covered by tests/browser/test_race_browser.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.app import race
from core.app.leaderboard import Leaderboard, Run
from core.app.race import KEY_GAS, RaceConfig
from core.app.race.registry import RaceRegistry
from tests.test_leaderboard import damage_runs_table

ROOT = Path(__file__).resolve().parents[1]
RACE_PAGE = str(ROOT / "pages" / "6_Race.py")
BOARD_PAGE = str(ROOT / "pages" / "7_Leaderboard.py")
CONFIG = RaceConfig(max_steps=20, min_steps=8, countdown_s=0.0, max_races=2)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    reg = RaceRegistry(CONFIG, board_path=tmp_path / "board.sqlite3")
    monkeypatch.setattr(race.registry, "_REGISTRY", reg)
    monkeypatch.setattr(race, "warm_up", lambda model_dir: None)  # no TensorFlow load in the background
    monkeypatch.setenv("WM_LEADERBOARD_DB", str(tmp_path / "board.sqlite3"))
    yield reg
    reg.shutdown()


def messages(at, kind):
    return [e.value for e in getattr(at, kind)]


def test_race_page_validates_then_races_and_shows_scores_and_video(registry):
    at = AppTest.from_file(RACE_PAGE, default_timeout=60).run()
    assert not at.exception
    at.text_input[0].set_value("   ")
    at.button[0].click().run()  # the form's submit button
    assert any("player name" in m for m in messages(at, "error"))
    assert registry.active() == 0

    at.text_input[0].set_value("Ann")  # a track number out of range reaches the page, which refuses it
    at.radio[1].set_value("Pick a track")
    at.number_input[0].set_value(-5)
    at.button[0].click().run()
    assert any("track -5 is out of range" in m for m in messages(at, "error"))
    assert registry.active() == 0

    at.text_input[0].set_value("<script>alert(1)</script>"[:24])
    at.radio[1].set_value("Pick a track")
    at.number_input[0].set_value(17)
    at.button[0].click().run()
    assert not at.exception and not at.error
    session = registry.for_owner(at.session_state["race_owner"])
    assert session is not None and session.seed == 17 and session.player == "<script>alert(1)</script>"[:24]
    assert any("Track 17" in h.value for h in at.subheader)

    while not session.finished:  # the WebSocket ticker's job, done here by hand
        session.set_keys(KEY_GAS)
        session.tick()
    registry.wait_scored()
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["label"].tolist() == [session.player] and table["steps"].tolist() == [20]
    assert table["score"].iloc[0] == pytest.approx(session.human.score)

    next(b for b in at.button if "video" in b.label).click().run()
    assert not at.exception
    assert at.get("video") and at.get("download_button")

    next(b for b in at.button if b.label == "Race again on this track").click().run()
    again = registry.for_owner(at.session_state["race_owner"])
    assert again is not session and again.seed == 17 and registry.get(session.token) is None


def test_a_reloaded_race_page_finds_its_race_again(registry):
    at = AppTest.from_file(RACE_PAGE, default_timeout=60).run()
    owner = at.session_state["race_owner"]
    assert at.query_params["racer"] == [owner] or at.query_params["racer"] == owner
    at.text_input[0].set_value("Ann")
    at.button[0].click().run()
    session = registry.for_owner(owner)
    assert session is not None

    session.attach()  # its view's socket is connected: the same URL in another tab is someone else
    shared = AppTest.from_file(RACE_PAGE, default_timeout=60)
    shared.query_params["racer"] = owner
    shared.run()
    assert not shared.exception and shared.session_state["race_owner"] != owner
    assert registry.for_owner(owner) is session

    session.detach()  # the page reloads: its socket closes first
    reloaded = AppTest.from_file(RACE_PAGE, default_timeout=60)  # a new Streamlit session, same URL
    reloaded.query_params["racer"] = owner
    reloaded.run()
    assert not reloaded.exception
    assert reloaded.session_state["race_owner"] == owner
    assert any(f"Track {session.seed}" in h.value for h in reloaded.subheader)
    assert registry.active() == 1

    for junk in ("../../etc", "A" * 16, "<b>x</b>", ""):  # a forged or broken id gets a fresh one
        other = AppTest.from_file(RACE_PAGE, default_timeout=60)
        other.query_params["racer"] = junk
        other.run()
        assert not other.exception and other.session_state["race_owner"] not in (owner, junk)
        assert not other.subheader or not any("Track" in h.value for h in other.subheader)


def test_race_page_tells_the_next_person_to_wait(registry):
    for owner in ("a", "b"):
        registry.create(owner=owner, player="Ann", seed=1, mode="solo")
    at = AppTest.from_file(RACE_PAGE, default_timeout=60).run()
    at.text_input[0].set_value("Cy")
    at.button[0].click().run()
    assert not at.exception
    assert any("wait" in w for w in messages(at, "warning"))
    assert registry.for_owner(at.session_state["race_owner"]) is None


def test_race_page_offers_only_solo_without_a_world_model(registry, monkeypatch):
    monkeypatch.setattr(race, "available_models", lambda root=None: [])
    at = AppTest.from_file(RACE_PAGE, default_timeout=60).run()
    assert at.radio[0].options == ["Drive alone"]
    assert any("No trained world model" in m for m in messages(at, "info"))


def add(board, player, kind, seed, score, model=""):
    actions = np.tile(np.array([[0, 1, 0]], np.float32), (10, 1))
    return board.add(Run(player, kind, model, seed, score, 10, 2, 300, "time", actions))


@pytest.mark.parametrize("where", ["WM_LEADERBOARD_DB", "secrets"])
def test_leaderboard_page_filters_charts_and_renders(registry, where, request):
    """Once on the SQLite file the environment names, once on PostgreSQL named by the app's secrets."""
    at = AppTest.from_file(BOARD_PAGE, default_timeout=60)
    if where == "secrets":
        url = request.getfixturevalue("postgres").new_database()
        at.secrets["connections"] = {"leaderboard": {"url": url}}
        board = Leaderboard(url)
    else:
        board = Leaderboard()
    at.run()
    assert not at.exception and any("No runs yet" in m for m in messages(at, "info"))

    add(board, "<img src=x onerror=alert(1)>"[:24], "human", 4, 50.0)
    add(board, "<img src=x onerror=alert(1)>"[:24], "human", 4, 70.0)
    add(board, "Bob'); DROP TABLE runs;--"[:24], "human", 5, 10.0)
    ai_run = add(board, "AI", "ai", 4, 60.0, model="models")
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["score"].tolist() == [70.0, 60.0, 10.0]  # best per player
    assert at.get("plotly_chart")

    at.radio[0].set_value("AI").run()
    assert at.dataframe[0].value["kind"].tolist() == ["ai"]
    at.radio[0].set_value("Everyone").run()
    at.radio[1].set_value("All runs").run()
    at.selectbox[0].set_value(4).run()
    assert at.dataframe[0].value["score"].tolist() == [70.0, 60.0, 50.0]

    at.multiselect[0].set_value([ai_run]).run()
    next(b for b in at.button if b.label == "Render video").click().run()
    assert not at.exception and at.get("video")
    assert board.count() == 4


def test_the_video_picker_offers_runs_of_one_track_only(registry):
    """Runs of two tracks cannot be picked together: the track comes first, its runs second (at most two, and
    no "Select all", which used to pick runs of two tracks and fail)."""
    board = Leaderboard()
    on_4 = [add(board, name, "human", 4, score) for name, score in (("Ann", 50.0), ("Bob", 40.0), ("Cy", 30.0))]
    on_5 = add(board, "Dee", "human", 5, 60.0)
    at = AppTest.from_file(BOARD_PAGE, default_timeout=60).run()
    assert not at.exception
    picker = at.multiselect[0]
    assert picker.proto.max_selections == 2 and picker.proto.select_all == 0
    assert at.selectbox(key="leaderboard.video_track").value == 4  # the most raced track first
    assert sorted(int(o.split()[1]) for o in picker.options) == sorted(on_4)
    at.selectbox(key="leaderboard.video_track").set_value(5).run()
    assert [int(o.split()[1]) for o in at.multiselect[0].options] == [on_5]
    at.multiselect[0].set_value([on_5]).run()
    next(b for b in at.button if b.label == "Render video").click().run()
    assert not at.exception and not at.error and at.get("video")


def page_of_finished_race(registry, owner: str) -> AppTest:
    """The Race page its owner's reload opens once the race has been scored."""
    registry.wait_scored()
    at = AppTest.from_file(RACE_PAGE, default_timeout=60)
    at.query_params["racer"] = owner
    at.run()
    assert not at.exception
    return at


def test_a_race_against_the_ai_renders_either_car_or_both(registry, tiny_world_model):
    owner = "0123456789abcdef"
    session = registry.create(owner=owner, player="**Ann**", seed=5, mode="vs_ai", model_dir=str(tiny_world_model))
    while not session.finished:
        session.set_keys(KEY_GAS)
        session.tick()
    at = page_of_finished_race(registry, owner)
    assert at.dataframe[0].value["kind"].tolist() == ["human", "ai"]
    who = next(r for r in at.selectbox if r.label == "Video of")
    assert len(who.options) == 3 and who.options[0] == "Both, side by side"
    assert who.options[1].startswith("**Ann**")  # the name as typed (a select box shows it so; a radio would not)
    ai_run = int(at.dataframe[0].value["run_id"].iloc[1])
    who.set_value(ai_run)
    next(b for b in at.button if "video" in b.label).click().run()
    assert not at.exception
    one = at.get("video")[0]
    who = next(r for r in at.selectbox if r.label == "Video of")
    who.set_value(None)
    next(b for b in at.button if "video" in b.label).click().run()
    assert not at.exception and at.get("download_button")
    assert one.proto.url != at.get("video")[0].proto.url  # one car, then both: another video


def drive(session, steps: int) -> None:
    while session.steps < steps:
        session.set_keys(KEY_GAS)
        session.tick()


def test_watching_the_ai_and_ending_early_still_records_its_whole_run(registry, tiny_world_model):
    owner = "fedcba9876543210"
    session = registry.create(owner=owner, player="", seed=5, mode="watch", model_dir=str(tiny_world_model))
    session.tick()
    session.end()
    at = page_of_finished_race(registry, owner)
    table = at.dataframe[0].value
    assert table["kind"].tolist() == ["ai"] and table["steps"].tolist() == [CONFIG.max_steps]
    assert table["outcome"].tolist() == ["time"] and table["run_id"].notna().all()


def test_a_race_against_the_ai_ended_early_compares_both_cars_and_fills_the_chart(registry, tiny_world_model):
    """Ended at step 10 of 20: the page shows the person's run at once and the AI's whole run when the server
    has driven it on; the Leaderboard's People vs AI chart then has the track."""
    from tests.test_race import GatedAgent
    agent = GatedAgent(gate_after=15)
    registry._load_agent = lambda model_dir: agent
    registry.cars = None  # the gate cannot cross processes: the cars step on this process's threads
    owner = "00112233445566ff"
    session = registry.create(owner=owner, player="Ann", seed=9, mode="vs_ai", model_dir=str(tiny_world_model))
    drive(session, 10)
    session.end()
    registry._scorer.submit(lambda: None).result(30)
    at = AppTest.from_file(RACE_PAGE, default_timeout=60)
    at.query_params["racer"] = owner
    at.run()
    assert not at.exception and at.dataframe[0].value["kind"].tolist() == ["human"]
    assert any("drives its run on to the end" in c.value for c in at.caption)
    versus = at.dataframe[1].value
    assert versus["when"].tolist() == ["when the race ended (step 10)", "at the end of the AI's run"]
    assert versus["ai"].isna().tolist() == [False, True]

    agent.gate.set()
    registry.wait_scored()
    at.run()
    assert not at.exception and at.dataframe[0].value["kind"].tolist() == ["human", "ai"]
    assert at.dataframe[0].value["steps"].tolist() == [10, CONFIG.max_steps]
    versus = at.dataframe[1].value
    assert versus["when"].tolist()[1] == f"at the end of the AI's run (step {CONFIG.max_steps})"
    assert versus["ai"].notna().all()
    assert any("beat the AI" in m for m in messages(at, "success")) or \
        any("The AI wins" in m for m in messages(at, "info"))

    board_page = AppTest.from_file(BOARD_PAGE, default_timeout=60).run()
    assert not board_page.exception and board_page.get("plotly_chart")
    assert not any("race the AI to fill it" in c.value for c in board_page.caption)


def test_a_run_ended_too_soon_says_why_it_is_not_on_the_leaderboard(registry):
    owner = "0a1b2c3d4e5f6071"
    session = registry.create(owner=owner, player="Ann", seed=3, mode="solo")
    drive(session, 2)
    session.end()
    at = page_of_finished_race(registry, owner)
    (warning,) = messages(at, "warning")
    assert warning.startswith("Ann's run is not on the Leaderboard: it was ended after 2 steps")
    assert f"needs {CONFIG.min_steps} steps" in warning
    assert not any("video" in b.label for b in at.button) and registry.board().count() == 0


def test_a_leaderboard_file_that_is_not_a_database_is_explained(registry, tmp_path, monkeypatch):
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("WM_LEADERBOARD_DB", str(broken))
    at = AppTest.from_file(str(ROOT / "pages" / "7_Leaderboard.py"), default_timeout=60).run()
    assert not at.exception
    assert any("cannot be read" in m and "WM_LEADERBOARD_DB" in m for m in messages(at, "error"))


def test_a_leaderboard_damaged_past_its_track_index_is_explained(registry):
    """``tracks()`` reads only the seed index; a table damaged beyond it fails on the next reads."""
    board = Leaderboard()
    for i in range(40):
        add(board, "Ann", "human", 4, float(i))
    damage_runs_table(board.path)
    at = AppTest.from_file(BOARD_PAGE, default_timeout=60).run()
    assert not at.exception and not at.dataframe
    assert any("cannot be read (database disk image is malformed)" in m for m in messages(at, "error"))


def test_an_unreachable_leaderboard_server_is_explained_without_its_password(registry):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = AppTest.from_file(BOARD_PAGE, default_timeout=60)
    at.secrets["connections"] = {"leaderboard": {"url": f"postgresql+psycopg://ann:hunter2@127.0.0.1:{port}/lb"}}
    at.run()
    assert not at.exception and not at.dataframe
    (error,) = messages(at, "error")
    assert f"postgresql+psycopg://ann:***@127.0.0.1:{port}/lb` cannot be reached" in error
    assert "[connections.leaderboard]" in error and "hunter2" not in error


def test_races_are_stored_where_the_secrets_say(registry, postgres):
    """The Race page hands the secrets' database URL to the race registry, which stores finished runs there."""
    url = postgres.new_database()
    at = AppTest.from_file(RACE_PAGE, default_timeout=60)
    at.secrets["connections"] = {"leaderboard": {"url": url}}
    at.run()
    assert not at.exception and registry.board_path == url
    session = registry.create(owner="abc", player="Ann", seed=3, mode="solo")
    while not session.finished:
        session.set_keys(KEY_GAS)
        session.tick()
    registry.wait_scored()
    runs = Leaderboard(url).runs()
    assert runs["player"].tolist() == ["Ann"] and runs["seed"].tolist() == [3]
    assert Leaderboard(os.environ["WM_LEADERBOARD_DB"]).count() == 0  # nothing went to the SQLite file
