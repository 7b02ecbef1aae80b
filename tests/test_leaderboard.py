"""The leaderboard: name validation, storage of runs with their action logs, and its queries."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.app.leaderboard import (NAME_MAX_CHARS, InvalidName, Leaderboard, Run, blob_to_actions, actions_to_blob,
                                  db_path, human_vs_ai_figure, plot_text, validate_player_name)


def make_run(player="Ann", kind="human", seed=1, score=10.0, model="", steps=5):
    actions = np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (steps, 1))
    return Run(player=player, kind=kind, model=model, seed=seed, score=score, steps=steps, tiles=3,
               total_tiles=300, outcome="time", actions=actions, race_id="r")


@pytest.fixture
def board(tmp_path):
    return Leaderboard(tmp_path / "board.sqlite3")


@pytest.mark.parametrize("raw, expected", [
    ("Ann", "Ann"),
    ("  Ann \t  Lee  ", "Ann Lee"),
    ("🏎️ speedy", "🏎️ speedy"),
    ("👩‍👩‍👧", "👩‍👩‍👧"),  # emoji joined with U+200D stays whole
    ("<script>alert(1)</script>"[:NAME_MAX_CHARS], "<script>alert(1)</script>"[:NAME_MAX_CHARS]),
    ("Robert'); DROP TABLE runs;--"[:NAME_MAX_CHARS], "Robert'); DROP TABLE runs;--"[:NAME_MAX_CHARS]),
    ("e\u0301", "\u00e9"),  # NFC
])
def test_valid_names_are_cleaned_not_escaped(raw, expected):
    assert validate_player_name(raw) == expected


@pytest.mark.parametrize("raw, reason", [
    ("", "empty"),
    ("   \n ", "empty"),
    ("x" * 10_000, "at most"),
    ("evil\u202etxt.exe", "U+202E"),  # right-to-left override disguises a name
    ("bell\x07", "U+0007"),
    ("nul\x00", "U+0000"),
    (None, "text"),
    (42, "text"),
])
def test_bad_names_are_refused_with_the_reason(raw, reason):
    with pytest.raises(InvalidName, match=re.escape(reason)):
        validate_player_name(raw)


def test_errors_never_repeat_the_name():
    """Pages show these messages (as Markdown); they must carry no user text."""
    for bad in ("<b>" * 5000, "**bold** [x](javascript:alert(1))" * 300, "ok\x07<i>"):
        with pytest.raises(InvalidName) as e:
            validate_player_name(bad)
        assert "<" not in str(e.value) and "*" not in str(e.value) and len(str(e.value)) < 120


def test_html_and_sql_in_names_are_stored_verbatim_and_do_no_harm(board):
    names = ["<img src=x onerror=alert(1)>"[:NAME_MAX_CHARS], "x'); DROP TABLE runs;--", "🏁🏁🏁"]
    for i, name in enumerate(names):
        board.add(make_run(player=name, score=float(i)))
    stored = board.runs()["player"].tolist()
    assert sorted(stored) == sorted(names)
    assert board.count() == 3  # the table is still there
    assert board.runs(player="x'); DROP TABLE runs;--")["player"].tolist() == ["x'); DROP TABLE runs;--"]


def test_action_log_round_trips_exactly(board):
    actions = np.random.default_rng(0).uniform([-1, 0, 0], [1, 1, 1], (37, 3)).astype(np.float32)
    run_id = board.add(Run("Ann", "human", "", 9, 1.5, 37, 2, 300, "ended", actions))
    got = board.get(run_id)
    np.testing.assert_array_equal(got["actions"], actions)
    assert got["seed"] == 9 and got["steps"] == 37
    np.testing.assert_array_equal(blob_to_actions(actions_to_blob(actions)), actions)
    assert board.get(run_id + 100) is None


def test_add_rejects_bad_runs(board):
    with pytest.raises(ValueError, match="kind"):
        board.add(make_run(kind="robot"))
    with pytest.raises(ValueError, match="shape"):
        board.add(Run("Ann", "human", "", 1, 0.0, 1, 0, 1, "time", np.zeros((1001, 3), np.float32)))
    with pytest.raises(InvalidName):
        board.add(make_run(player=""))
    assert board.count() == 0


def test_filters_best_per_player_and_tracks(board):
    board.add(make_run("Ann", seed=1, score=10))
    board.add(make_run("Ann", seed=1, score=30))
    board.add(make_run("Ann", seed=2, score=50))
    board.add(make_run("Bob", seed=1, score=20))
    board.add(make_run("AI", kind="ai", model="models", seed=1, score=40))
    board.add(make_run("AI", kind="ai", model="runs", seed=1, score=5))

    assert board.tracks() == [1, 2]
    assert board.runs(seed=1)["score"].tolist() == [40, 30, 20, 10, 5]
    assert board.runs(kind="ai")["model"].tolist() == ["models", "runs"]
    assert board.runs(seed=2, kind="ai").empty

    best = board.best_per_player(seed=1)
    assert list(zip(best["player"], best["model"], best["score"], best["runs"])) == [
        ("AI", "models", 40, 1), ("Ann", "", 30, 2), ("Bob", "", 20, 1), ("AI", "runs", 5, 1)]
    best_people = board.best_per_player(kind="human")
    assert list(zip(best_people["player"], best_people["score"])) == [("Ann", 50), ("Bob", 20)]
    with pytest.raises(ValueError):
        board.runs(kind="'; --")

    vs = board.human_vs_ai()
    assert vs["seed"].tolist() == [1, 1]  # track 2 has no AI run
    assert dict(zip(vs["kind"], vs["best"])) == {"ai": 40, "human": 30}


def test_chart_escapes_names_for_plotly(board):
    board.add(make_run("<a href='javascript:x'>hi</a>"[:NAME_MAX_CHARS], seed=3, score=1))
    board.add(make_run("AI", kind="ai", model="models", seed=3, score=2))
    fig = human_vs_ai_figure(board)
    texts = [t for trace in fig.data if trace.text is not None for t in trace.text]
    assert texts and all("<a" not in t for t in texts)
    assert plot_text("<b>") == "&lt;b&gt;"
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert sorted(float(y) for trace in bars for y in trace.y) == [1.0, 2.0]


def test_database_path_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WM_LEADERBOARD_DB", str(tmp_path / "x.sqlite3"))
    assert db_path() == tmp_path / "x.sqlite3"
    assert db_path(tmp_path / "y.sqlite3") == tmp_path / "y.sqlite3"
    monkeypatch.delenv("WM_LEADERBOARD_DB")
    assert db_path().name == "leaderboard.sqlite3"


def test_viewing_the_board_does_not_wait_for_a_writer(board):
    """A page view opens a Leaderboard and reads; while a finishing race holds the write lock it must
    neither write the schema again nor wait for the lock."""
    import sqlite3
    import time
    board.add(make_run())
    writer = sqlite3.connect(board.path, timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, as an insert in progress holds it
    try:
        started = time.monotonic()
        viewer = Leaderboard(board.path)
        assert len(viewer.runs()) == 1 and viewer.count() == 1
        assert time.monotonic() - started < 5
    finally:
        writer.rollback()
        writer.close()


def test_a_new_database_file_gets_its_table_again(tmp_path):
    path = tmp_path / "board.sqlite3"
    Leaderboard(path).add(make_run())
    path.unlink()
    assert Leaderboard(path).count() == 0
