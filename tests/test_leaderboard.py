"""The leaderboard: name validation, storage of runs with their action logs, and its queries.

Every test that stores runs does so twice, on SQLite and on PostgreSQL (``leaderboard_at`` in conftest.py;
the PostgreSQL server is the test session's own)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa

from core.app import leaderboard
from core.app.leaderboard import (
    NAME_MAX_CHARS,
    SCHEMA_VERSION,
    InvalidName,
    Leaderboard,
    LeaderboardError,
    Run,
    actions_to_blob,
    blob_to_actions,
    db_path,
    db_url,
    human_vs_ai_figure,
    mask_password,
    plot_text,
    validate_player_name,
)
from tests.conftest import ROOT


def make_run(player="Ann", kind="human", seed=1, score=10.0, model="", steps=5):
    actions = np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (steps, 1))
    return Run(player=player, kind=kind, model=model, seed=seed, score=score, steps=steps, tiles=3,
               total_tiles=300, outcome="time", actions=actions, race_id="r")


@pytest.fixture
def board(leaderboard_at):
    return Leaderboard(leaderboard_at)


def forget_prepared(monkeypatch):
    """Make this process open databases as a new process would: reading (and upgrading) their schema."""
    monkeypatch.setattr(leaderboard, "_PREPARED", set())


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


def test_viewing_the_board_does_not_wait_for_a_writer(board, monkeypatch):
    """A page view opens a Leaderboard and reads; while a finishing race holds the write lock (an insert in
    progress) it must neither write the schema again nor wait for the lock."""
    board.add(make_run())
    forget_prepared(monkeypatch)
    engine = sa.create_engine(db_url(board._url.render_as_string(hide_password=False)), poolclass=sa.NullPool)
    with engine.connect() as writer:
        writer.exec_driver_sql("BEGIN IMMEDIATE" if board.backend == "sqlite" else "BEGIN")
        writer.execute(sa.insert(leaderboard.runs_table).values(
            player="Bob", kind="human", model="", seed=1, score=0.0, steps=0, tiles=0, total_tiles=1,
            outcome="time", created_at="2024-01-01T00:00:00Z", race_id="", actions=b""))
        started = time.monotonic()
        viewer = Leaderboard(board._url.render_as_string(hide_password=False))
        assert len(viewer.runs()) == 1 and viewer.count() == 1  # the uncommitted row is not seen
        assert time.monotonic() - started < 5
        writer.rollback()
    engine.dispose()


def test_a_new_database_file_gets_its_table_again(tmp_path):
    path = tmp_path / "board.sqlite3"
    Leaderboard(path).add(make_run())
    path.unlink()
    assert Leaderboard(path).count() == 0


# --- where the leaderboard lives --------------------------------------------------------------------


def test_an_explicit_location_beats_the_url_variable_which_beats_the_file_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("WM_LEADERBOARD_DB", str(tmp_path / "file.sqlite3"))
    assert Leaderboard().path == tmp_path / "file.sqlite3"
    monkeypatch.setenv("WM_LEADERBOARD_URL", f"sqlite:///{tmp_path / 'url.sqlite3'}")
    assert Leaderboard().path == tmp_path / "url.sqlite3"
    assert Leaderboard(tmp_path / "given.sqlite3").path == tmp_path / "given.sqlite3"
    assert Leaderboard(f"sqlite:///{tmp_path / 'given-url.sqlite3'}").path == tmp_path / "given-url.sqlite3"
    assert sorted(p.name for p in tmp_path.glob("*.sqlite3")) == [
        "file.sqlite3", "given-url.sqlite3", "given.sqlite3", "url.sqlite3"]


def test_the_default_file_lives_in_the_app_root(monkeypatch, tmp_path):
    """In Docker, WORLD_MODELS_ROOT is the volume: the leaderboard must be in it to outlive the container."""
    monkeypatch.setenv("WORLD_MODELS_ROOT", str(tmp_path))
    assert db_path() == tmp_path.resolve() / "leaderboard.sqlite3"
    Leaderboard().add(make_run())
    assert (tmp_path / "leaderboard.sqlite3").is_file()


def test_a_path_with_url_characters_is_a_file(tmp_path):
    path = tmp_path / "a b?c%d#e.sqlite3"
    Leaderboard(path).add(make_run())
    assert path.is_file() and Leaderboard(path).count() == 1


def test_a_bare_postgresql_url_uses_psycopg(postgres):
    url = postgres.new_database().replace("postgresql+psycopg://", "postgresql://")
    board = Leaderboard(url)
    assert board.backend == "postgresql" and board.path is None
    board.add(make_run())
    assert Leaderboard(url.replace("postgresql://", "postgres://")).count() == 1


@pytest.mark.parametrize("url, reason", [
    ("mysql://ann:hunter2@db.example/board", "not 'mysql'"),
    ("postgresql://ann:hunter2@db.example:port/board", "not a database URL"),
    ("sqlite://", "needs a file"),
])
def test_a_url_that_names_no_usable_database_is_refused_by_name(url, reason):
    with pytest.raises(LeaderboardError, match=re.escape(reason)) as e:
        Leaderboard(url)
    assert mask_password(url) in str(e.value) and "hunter2" not in str(e.value)


def test_an_unreachable_server_is_named_with_its_password_masked():
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://ann:s3cr%40t@127.0.0.1:{port}/board"
    with pytest.raises(LeaderboardError) as e:
        Leaderboard(url)
    message = str(e.value)
    assert f"postgresql+psycopg://ann:***@127.0.0.1:{port}/board cannot be reached" in message
    assert "refused" in message.lower() and "s3cr" not in message and "\n" not in message
    assert e.value.backend == "postgresql" and e.value.action == "reached"


def test_a_database_that_does_not_exist_on_the_server_is_explained(postgres):
    with pytest.raises(LeaderboardError, match=r"/no_such_board cannot be reached \(.*no_such_board"):
        Leaderboard(postgres.url("no_such_board"))


def test_a_file_that_is_not_a_database_is_explained(tmp_path):
    path = tmp_path / "notes.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LeaderboardError, match=re.escape(f"{path} cannot be read (file is not a database)")):
        Leaderboard(path)


def damage_runs_table(path) -> None:
    """Overwrite the pages of a SQLite leaderboard's runs table (not its indexes) with garbage."""
    # In a fresh interpreter: once TensorFlow is loaded in this one, sqlite3 may run on the SQLite that
    # TensorFlow carries, which is built without the dbstat table.
    script = ("import json, sqlite3, sys; con = sqlite3.connect(sys.argv[1]); "
              "con.execute('PRAGMA wal_checkpoint(TRUNCATE)'); "
              "print(json.dumps([con.execute('PRAGMA page_size').fetchone()[0], [p for (p,) in con.execute("
              "\"SELECT pageno FROM dbstat WHERE name = 'runs' AND pagetype = 'leaf'\")]]))")
    page_size, pages = json.loads(subprocess.run([sys.executable, "-c", script, str(path)], check=True,
                                                 capture_output=True, text=True).stdout)
    assert pages
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(b"\xff" * page_size)


def test_a_table_damaged_past_its_index_fails_in_one_line(tmp_path):
    """The page's first read (``tracks``) uses only the seed index; a table damaged beyond it fails later,
    and that too must be a LeaderboardError, not a driver's exception."""
    path = tmp_path / "board.sqlite3"
    board = Leaderboard(path)
    for i in range(60):
        board.add(make_run(seed=i % 3, score=float(i), steps=200))
    damage_runs_table(path)
    assert board.tracks() == [0, 1, 2]
    with pytest.raises(LeaderboardError, match=r"cannot be read \(database disk image is malformed\)$"):
        board.best_per_player()


# --- schema versions --------------------------------------------------------------------------------

# The schema exactly as the leaderboard made it before versions were kept in a table (PRAGMA user_version 1).
SCHEMA_BEFORE_VERSIONING = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    player      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('human', 'ai')),
    model       TEXT    NOT NULL DEFAULT '',
    seed        INTEGER NOT NULL,
    score       REAL    NOT NULL,
    steps       INTEGER NOT NULL,
    tiles       INTEGER NOT NULL,
    total_tiles INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    race_id     TEXT    NOT NULL DEFAULT '',
    actions     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_seed ON runs (seed);
CREATE INDEX IF NOT EXISTS runs_kind_score ON runs (kind, score);
"""


def test_a_file_made_before_schema_versions_opens_with_its_runs(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    actions = np.random.default_rng(1).uniform([-1, 0, 0], [1, 1, 1], (25, 3)).astype(np.float32)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.executescript(SCHEMA_BEFORE_VERSIONING)
    con.execute("PRAGMA user_version = 1")
    rows = [("Ann", "human", "", 7, 120.5, 25, 4, 250, "time", "2024-05-01T12:00:00Z", "r1", actions),
            ("AI", "ai", "models g12", 7, 300.25, 25, 9, 250, "lap", "2024-05-01T12:00:01Z", "r1", actions[:10]),
            ("Bob", "human", "", 9, -3.0, 25, 0, 260, "off-track", "2024-05-02T08:00:00Z", "r2", actions[:1])]
    for row in rows:
        con.execute("INSERT INTO runs (player, kind, model, seed, score, steps, tiles, total_tiles, outcome, "
                    "created_at, race_id, actions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row[:-1], row[-1].astype("<f4").tobytes()))
    con.execute("DELETE FROM runs WHERE id = 3")  # AUTOINCREMENT: id 3 is never handed out again
    con.execute("INSERT INTO runs (player, kind, model, seed, score, steps, tiles, total_tiles, outcome, "
                "created_at, race_id, actions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*rows[2][:-1], rows[2][-1].astype("<f4").tobytes()))
    con.commit()
    con.close()

    forget_prepared(monkeypatch)
    board = Leaderboard(path)
    assert board.schema_version() == SCHEMA_VERSION
    assert board.count() == 3 and board.tracks() == [7, 9]
    assert board.runs()[["id", "player", "score", "created_at"]].values.tolist() == [
        [2, "AI", 300.25, "2024-05-01T12:00:01Z"], [1, "Ann", 120.5, "2024-05-01T12:00:00Z"],
        [4, "Bob", -3.0, "2024-05-02T08:00:00Z"]]
    np.testing.assert_array_equal(board.get(1)["actions"], actions)
    np.testing.assert_array_equal(board.get(2)["actions"], actions[:10])
    assert board.get(2)["model"] == "models g12" and board.get(4)["outcome"] == "off-track"
    assert board.add(make_run("Cy", seed=9)) == 5
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    tables = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    con.close()
    old_table = SCHEMA_BEFORE_VERSIONING.split(";")[0].replace(" IF NOT EXISTS", "")
    assert tables["runs"].split() == old_table.split()  # upgraded in place, not rebuilt


def test_a_new_schema_step_upgrades_an_existing_database_once(leaderboard_at, monkeypatch):
    """How a future schema change will go: a step appended to _MIGRATIONS runs once on a database made by
    the current version, keeping its rows, however many processes open it."""
    old = Leaderboard(leaderboard_at)
    old.add(make_run("Ann"))
    forget_prepared(monkeypatch)

    def add_player_index(con):
        con.execute(sa.text("CREATE INDEX runs_player ON runs (player)"))  # fails if run twice
    monkeypatch.setattr(leaderboard, "_MIGRATIONS", (*leaderboard._MIGRATIONS, add_player_index))
    monkeypatch.setattr(leaderboard, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    board = Leaderboard(leaderboard_at)
    assert board.schema_version() == SCHEMA_VERSION + 1 and board.runs()["player"].tolist() == ["Ann"]
    forget_prepared(monkeypatch)
    assert Leaderboard(leaderboard_at).count() == 1
    with board._connect() as con:
        assert "runs_player" in {i["name"] for i in sa.inspect(con).get_indexes("runs")}
        assert con.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all() == [
            *range(1, SCHEMA_VERSION + 2)]


def test_a_database_of_a_newer_version_is_refused(leaderboard_at, monkeypatch):
    board = Leaderboard(leaderboard_at)
    with board._connect(write=True) as con:
        con.execute(sa.insert(leaderboard.version_table).values(version=SCHEMA_VERSION + 5, applied_at="later"))
    forget_prepared(monkeypatch)
    with pytest.raises(LeaderboardError, match=f"schema is version {SCHEMA_VERSION + 5}, newer than this app's "
                                               f"{SCHEMA_VERSION}"):
        Leaderboard(leaderboard_at)


# --- concurrency ------------------------------------------------------------------------------------

WRITERS = 8  # processes
RUNS_EACH = 15  # finished runs each writes

WRITER = """
import sys
import numpy as np
from core.app.leaderboard import Leaderboard, Run
location, player, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # everyone starts together
board = Leaderboard(location)  # a new database: the writers also race to create its schema
for i in range(runs):
    board.add(Run(player, "human", "", i % 4, float(i), 3, 1, 300, "time", np.zeros((3, 3), np.float32),
                  race_id=f"{player}-{i}"))
print("done", flush=True)
"""


def test_writers_in_many_processes_lose_no_run(leaderboard_at):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, leaderboard_at, f"p{n}", str(RUNS_EACH)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in range(WRITERS)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "done", err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    board = Leaderboard(leaderboard_at)
    runs = board.runs(limit=10_000)
    assert board.count() == len(runs) == WRITERS * RUNS_EACH
    assert set(runs["race_id"]) == {f"p{n}-{i}" for n in range(WRITERS) for i in range(RUNS_EACH)}
    assert runs["id"].is_unique and board.schema_version() == SCHEMA_VERSION
