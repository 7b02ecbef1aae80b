"""The leaderboard: every finished race run, people and AI, in one SQLite file.

A run is stored with its action log (float32 (steps, 3), little-endian bytes) and the track seed, so
anyone can replay it; its score is what the server's own replay of that log scored
(``core.app.race.session.replay_run``), never a number a browser sent.

The file is ``leaderboard.sqlite3`` in the repository root (git-ignored) unless ``WM_LEADERBOARD_DB``
names another. Player names are validated here (``validate_player_name``) and stored as typed; pages
show them as text, never as HTML or Markdown, and every query binds its values as parameters.
"""

from __future__ import annotations

import contextlib
import html
import os
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from core import CODE_ROOT
from core.errors import UserError

ROOT = CODE_ROOT
DB_ENV_VAR = "WM_LEADERBOARD_DB"
DEFAULT_DB = ROOT / "leaderboard.sqlite3"
NAME_MAX_CHARS = 24  # characters (code points) in a player name
KINDS = ("human", "ai")
OUTCOMES = ("lap", "off-track", "time", "ended")  # lap done, left the playfield, out of steps, gave up
MAX_STEPS = 1000  # CarRacing's own episode limit; longer logs are rejected
SCHEMA_VERSION = 1

_SCHEMA = """
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

_COLUMNS = "id, player, kind, model, seed, score, steps, tiles, total_tiles, outcome, created_at, race_id"


_PREPARED: set[Path] = set()  # database files whose table this process has made sure of
_PREPARED_LOCK = threading.Lock()


class InvalidName(UserError, ValueError):
    """A player name that cannot be stored; the message says why without repeating the name."""


def validate_player_name(raw: object) -> str:
    """A clean player name, or ``InvalidName``.

    Unicode is normalised (NFC) and runs of whitespace become one space. Allowed: 1 to NAME_MAX_CHARS
    characters of letters, digits, punctuation, symbols and emoji (with their joiners). Rejected: control
    and private-use characters and bidirectional overrides, which can disguise a name. HTML or SQL in a
    name is allowed and kept as typed: it is only ever bound as a query parameter and shown as text.
    """
    if not isinstance(raw, str):
        raise InvalidName(f"a player name must be text, not {type(raw).__name__}")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise InvalidName("enter a player name (it may not be empty or only spaces)")
    if len(name) > NAME_MAX_CHARS:
        # The name itself is not quoted back: pages show this message, and it should carry no user text.
        raise InvalidName(f"a player name may have at most {NAME_MAX_CHARS} characters; this one has {len(name)}")
    for ch in name:
        category = unicodedata.category(ch)
        # Cf (format) is rejected except the zero-width joiner that builds emoji sequences.
        if category in ("Cc", "Co", "Cs", "Cn") or (category == "Cf" and ch != "\u200d"):
            raise InvalidName(f"a player name may not contain the invisible or control character "
                              f"U+{ord(ch):04X}")
    return name


def db_path(path: Path | str | None = None) -> Path:
    """The database file: ``path``, else ``$WM_LEADERBOARD_DB``, else leaderboard.sqlite3 at the root."""
    if path:
        return Path(path)
    return Path(os.environ.get(DB_ENV_VAR) or DEFAULT_DB)


def actions_to_blob(actions: np.ndarray) -> bytes:
    return np.ascontiguousarray(actions, dtype="<f4").tobytes()


def blob_to_actions(blob: bytes) -> np.ndarray:
    """float32 (steps, 3) from a stored action log."""
    return np.frombuffer(blob, dtype="<f4").reshape(-1, 3).astype(np.float32)


@dataclass(frozen=True)
class Run:
    """One scored run, as it goes into the table (``actions`` float32 (steps, 3))."""

    player: str
    kind: str
    model: str
    seed: int
    score: float
    steps: int
    tiles: int
    total_tiles: int
    outcome: str
    actions: np.ndarray
    race_id: str = ""


class Leaderboard:
    """Runs in SQLite. Each call opens its own connection, so any thread may use one instance."""

    def __init__(self, path: Path | str | None = None):
        self.path = db_path(path)
        self._prepare()

    def _prepare(self) -> None:
        """Create the table (once per file and process): a page that only reads must not write, or wait
        for a writer's lock, on every view."""
        key = self.path.resolve()
        with _PREPARED_LOCK:
            if key in _PREPARED and self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    con.execute("PRAGMA journal_mode = WAL")  # kept in the file: readers never block a writer
                    con.executescript(_SCHEMA)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _PREPARED.add(key)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one block: committed when the block ends (rolled back if it raises), then closed."""
        con = sqlite3.connect(self.path, timeout=10.0)
        try:
            with con:
                yield con
        finally:
            con.close()

    def add(self, run: Run) -> int:
        """Store ``run``; returns its id. Raises ValueError for a run that is not a valid one."""
        player = validate_player_name(run.player)
        if run.kind not in KINDS:
            raise ValueError(f"kind {run.kind!r} is not one of {', '.join(KINDS)}")
        if run.outcome not in OUTCOMES:
            raise ValueError(f"outcome {run.outcome!r} is not one of {', '.join(OUTCOMES)}")
        actions = np.asarray(run.actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != 3 or len(actions) > MAX_STEPS:
            raise ValueError(f"action log has shape {actions.shape}, expected (steps <= {MAX_STEPS}, 3)")
        if not (0 <= int(run.seed) < 2**63):
            raise ValueError(f"track seed {run.seed} is out of range")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO runs (player, kind, model, seed, score, steps, tiles, total_tiles, outcome, "
                "created_at, race_id, actions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (player, run.kind, run.model[:200], int(run.seed), float(run.score), int(run.steps),
                 int(run.tiles), int(run.total_tiles), run.outcome, created, run.race_id[:64],
                 actions_to_blob(actions)))
            return int(cur.lastrowid)

    def _where(self, seed: int | None, kind: str | None, player: str | None) -> tuple[str, list]:
        clauses, args = [], []
        if seed is not None:
            clauses.append("seed = ?")
            args.append(int(seed))
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
            clauses.append("kind = ?")
            args.append(kind)
        if player is not None:
            clauses.append("player = ?")
            args.append(player)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def runs(self, seed: int | None = None, kind: str | None = None, player: str | None = None,
             limit: int = 500) -> pd.DataFrame:
        """Runs, best score first (then oldest first), without their action logs."""
        where, args = self._where(seed, kind, player)
        with self._connect() as con:
            return pd.read_sql_query(
                f"SELECT {_COLUMNS} FROM runs{where} ORDER BY score DESC, id ASC LIMIT ?", con,
                params=[*args, int(limit)])

    def best_per_player(self, seed: int | None = None, kind: str | None = None) -> pd.DataFrame:
        """Each player's (each AI model's) best run, best first, with how many runs they made."""
        where, args = self._where(seed, kind, None)
        query = (f"SELECT {_COLUMNS}, runs FROM ("
                 f"  SELECT {_COLUMNS},"
                 f"    ROW_NUMBER() OVER (PARTITION BY kind, player, model ORDER BY score DESC, id ASC) AS rank,"
                 f"    COUNT(*) OVER (PARTITION BY kind, player, model) AS runs"
                 f"  FROM runs{where}) WHERE rank = 1 ORDER BY score DESC, id ASC")
        with self._connect() as con:
            return pd.read_sql_query(query, con, params=args)

    def tracks(self) -> list[int]:
        """Track seeds with at least one run, most raced first."""
        with self._connect() as con:
            rows = con.execute("SELECT seed FROM runs GROUP BY seed ORDER BY COUNT(*) DESC, seed").fetchall()
        return [int(r[0]) for r in rows]

    def human_vs_ai(self, seed: int | None = None) -> pd.DataFrame:
        """Per track (and per kind): best and mean score and the number of runs; columns seed, kind,
        best, mean, runs. Only tracks both people and an AI drove."""
        where, args = self._where(seed, None, None)
        query = (f"SELECT seed, kind, MAX(score) AS best, AVG(score) AS mean, COUNT(*) AS runs FROM runs{where} "
                 "GROUP BY seed, kind HAVING seed IN (SELECT seed FROM runs GROUP BY seed "
                 "HAVING COUNT(DISTINCT kind) = 2) ORDER BY seed, kind")
        with self._connect() as con:
            return pd.read_sql_query(query, con, params=args)

    def get(self, run_id: int) -> dict | None:
        """One run with its action log (``actions`` float32 (steps, 3)), or None."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute(f"SELECT {_COLUMNS}, actions FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            return None
        run = dict(row)
        run["actions"] = blob_to_actions(run["actions"])
        return run

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def plot_text(text: str) -> str:
    """``text`` made safe for Plotly labels, which read a subset of HTML (``<a href>``, ``<b>``, ...)."""
    return html.escape(text, quote=True)


def human_vs_ai_figure(board: Leaderboard, seed: int | None = None):
    """A Plotly figure: best human vs best AI score per track (grouped bars), every run as a dot."""
    import plotly.graph_objects as go

    summary = board.human_vs_ai(seed)
    fig = go.Figure()
    colors = {"human": "#1f77b4", "ai": "#d62728"}
    names = {"human": "people (best)", "ai": "AI (best)"}
    for kind in KINDS:
        part = summary[summary["kind"] == kind]
        fig.add_bar(x=part["seed"].astype(str), y=part["best"], name=names[kind], marker_color=colors[kind],
                    customdata=np.stack([part["mean"], part["runs"]], axis=-1) if len(part) else None,
                    hovertemplate="track %{x}<br>best %{y:.1f}<br>mean %{customdata[0]:.1f} "
                                  "over %{customdata[1]} runs<extra></extra>")
    if len(summary):
        seeds = summary["seed"].unique().tolist()
        runs = pd.concat([board.runs(seed=int(s), limit=200) for s in seeds], ignore_index=True)
        for kind in KINDS:
            part = runs[runs["kind"] == kind]
            fig.add_scatter(x=part["seed"].astype(str), y=part["score"], mode="markers", name=f"{kind} runs",
                            marker=dict(color=colors[kind], size=7, opacity=0.45, line=dict(width=0)),
                            text=[plot_text(p) for p in part["player"]],
                            hovertemplate="%{text}<br>track %{x}: %{y:.1f}<extra></extra>", showlegend=False)
    fig.update_layout(barmode="group", xaxis_title="track (seed)", yaxis_title="score",
                      xaxis_type="category", legend_title_text="", margin=dict(t=30, b=10),
                      title="People vs AI on the same tracks")
    return fig
