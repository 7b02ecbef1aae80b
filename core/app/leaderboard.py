"""The leaderboard: every finished race run, people and AI, in one database table.

A run is stored with its action log (float32 (steps, 3), little-endian bytes) and the track seed, so
anyone can replay it; its score is what the server's own replay of that log scored
(``core.app.race.session.replay_run``), never a number a browser sent.

Where the table lives (``Leaderboard(location)``, ``db_url``), first match wins:

1. ``location``: a database URL (``postgresql+psycopg://user:password@host:5432/dbname``, or
   ``sqlite:///path``) or a SQLite file path. The app passes ``url`` from ``[connections.leaderboard]`` in
   its Streamlit secrets here; this module never reads Streamlit's secrets itself.
2. ``$WM_LEADERBOARD_URL``: a database URL.
3. ``$WM_LEADERBOARD_DB``: a SQLite file path.
4. ``leaderboard.sqlite3`` in the app's data root (``core.app.app_data.data_root()``: ``$WORLD_MODELS_ROOT``
   when set, else the repository root; git-ignored).

SQLite is the embedded default (one file, WAL journal: readers never wait for a writer); PostgreSQL holds
the leaderboard where files do not survive a restart (Streamlit Community Cloud). Both go through
SQLAlchemy Core with the same queries, every value bound as a parameter. The schema is versioned in a
``schema_version`` table (``SCHEMA_VERSION``, ``_MIGRATIONS``); a file made before that table existed
(``PRAGMA user_version = 1``) opens as version 0 and is brought up to date in place, keeping its rows.

Player names are validated here (``validate_player_name``) and stored as typed; pages show them as text,
never as HTML or Markdown. A database that cannot be reached, read or written raises
``LeaderboardError``, one line naming the database with any password masked.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import sqlite3
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from core.app.app_data import data_root
from core.errors import UserError

URL_ENV_VAR = "WM_LEADERBOARD_URL"  # a database URL
DB_ENV_VAR = "WM_LEADERBOARD_DB"  # a SQLite file path
DB_FILE = "leaderboard.sqlite3"  # the default file's name, in the data root
BACKENDS = ("sqlite", "postgresql")
NAME_MAX_CHARS = 24  # characters (code points) in a player name
ZWJ = "\u200d"  # zero-width joiner: allowed inside emoji sequences (👩‍👩‍👧), nowhere else
EMOJI_BEFORE_ZWJ = ("So", "Sk", "Mn")  # an emoji, a skin tone or a variation selector (U+FE0F) before a joiner
# Letters and symbols that draw nothing: a name of them would look empty, or disguise another.
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")
KINDS = ("human", "ai")
OUTCOMES = ("lap", "off-track", "time", "ended")  # lap done, left the playfield, out of steps, gave up
MAX_STEPS = 1000  # CarRacing's own episode limit; longer logs are rejected
ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)  # CarRacing's action space: steer, gas, brake
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)
SEED_LIMIT = 2**63  # track seeds are 0 <= seed < SEED_LIMIT (a signed 64-bit column)
BUSY_TIMEOUT_S = 30.0  # seconds a SQLite writer waits for another's lock before giving up; a finished run is
# worth the wait on a loaded machine
CONNECT_TIMEOUT_S = 10  # seconds to wait for a PostgreSQL server to answer
REASON_MAX_CHARS = 300  # characters of a database's own error message kept in a LeaderboardError
_MIGRATION_LOCK_KEY = 0x574D4C42  # PostgreSQL advisory lock held while the schema is upgraded ('WMLB')

_metadata = sa.MetaData()
runs_table = sa.Table(
    "runs", _metadata,
    # SQLite's rowid alias must be exactly INTEGER; AUTOINCREMENT (as the first schema had) never reuses ids.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("player", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, sa.CheckConstraint("kind IN ('human', 'ai')"), nullable=False),
    sa.Column("model", sa.Text, nullable=False, server_default=""),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("tiles", sa.Integer, nullable=False),
    sa.Column("total_tiles", sa.Integer, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),  # ISO 8601 UTC, 2024-05-01T12:00:00Z
    sa.Column("race_id", sa.Text, nullable=False, server_default=""),
    sa.Column("actions", sa.LargeBinary, nullable=False),  # float32 (steps, 3), little-endian
    sa.Index("runs_seed", "seed"),
    sa.Index("runs_kind_score", "kind", "score"),
    sqlite_autoincrement=True,
)
version_table = sa.Table(
    "schema_version", _metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),  # one row per step applied
    sa.Column("applied_at", sa.Text, nullable=False),
)
_COLUMN_NAMES = ("id", "player", "kind", "model", "seed", "score", "steps", "tiles", "total_tiles", "outcome",
                 "created_at", "race_id")
_COLUMNS = [runs_table.c[name] for name in _COLUMN_NAMES]


def _create_runs(con: sa.Connection) -> None:
    """Version 1: the runs table and its indexes. A file made before versioning has them already."""
    runs_table.create(con, checkfirst=True)


# Step i takes the schema from version i to i + 1. To change the schema, append a step; never edit one.
_MIGRATIONS: tuple[Callable[[sa.Connection], None], ...] = (_create_runs,)
SCHEMA_VERSION = len(_MIGRATIONS)

_PREPARED: set[tuple] = set()  # databases whose schema this process has made sure of
_PREPARED_LOCK = threading.Lock()
_ENGINES: dict[tuple[str, int], sa.Engine] = {}  # (URL, pid) -> engine; a forked child makes its own
_ENGINES_LOCK = threading.Lock()


class InvalidName(UserError, ValueError):
    """A player name that cannot be stored; the message says why without repeating the name."""


def _use_wal(path: Path) -> None:
    """Switch the SQLite file at ``path`` to write-ahead logging. The switch needs the file to itself, and
    SQLite answers "database is locked" at once, without waiting out its busy timeout, when another process
    opening the same new file holds a lock then (several writers starting together): it is tried again for
    up to BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    raw = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        while True:
            try:
                raw.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        raw.close()


class LeaderboardError(UserError, RuntimeError):
    """The leaderboard's database cannot be used. ``str()`` is one line naming it (password masked).

    ``where``: the SQLite file or the masked URL; ``backend``: 'sqlite', 'postgresql' or '' (a URL that names
    no usable database); ``action``: what failed ('opened', 'reached', 'read', 'written', 'used');
    ``reason``: the database's own message, on one line.
    """

    def __init__(self, where: str, backend: str, action: str, reason: str):
        self.where, self.backend, self.action, self.reason = where, backend, action, reason
        super().__init__(f"the leaderboard database {where} cannot be {action} ({reason})")


def validate_player_name(raw: object) -> str:
    """A clean player name, or ``InvalidName``.

    Unicode is normalised (NFC) and runs of whitespace become one space. Allowed: 1 to NAME_MAX_CHARS
    characters of letters, digits, punctuation, symbols and emoji (with their joiners), at least one of them
    not a mark. Rejected: control, format (zero-width, bidirectional marks and overrides) and private-use
    characters, fillers that draw nothing, and a joiner outside an emoji, all of which can disguise a name. HTML or SQL in a
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
    for i, ch in enumerate(name):
        category = unicodedata.category(ch)
        # Cf (format) is rejected except the zero-width joiner that builds emoji sequences.
        if category in ("Cc", "Co", "Cs", "Cn") or (category == "Cf" and ch != ZWJ) or ch in INVISIBLE:
            raise InvalidName(f"a player name may not contain the invisible or control character "
                              f"U+{ord(ch):04X}")
        if ch == ZWJ and not (0 < i < len(name) - 1 and unicodedata.category(name[i - 1]) in EMOJI_BEFORE_ZWJ
                              and unicodedata.category(name[i + 1]) == "So"):
            raise InvalidName("a player name may use the zero-width joiner (U+200D) only inside an emoji, "
                              "between two symbols")
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in name):
        raise InvalidName("a player name needs at least one letter, digit, punctuation mark or symbol "
                          "(this one has only marks or spaces)")
    return name


def db_path(path: Path | str | None = None) -> Path:
    """The SQLite file: ``path``, else ``$WM_LEADERBOARD_DB``, else leaderboard.sqlite3 in the data root."""
    if path:
        return Path(path)
    return Path(os.environ.get(DB_ENV_VAR) or data_root() / DB_FILE)


def is_url(location: object) -> bool:
    """Whether ``location`` reads as a database URL (``scheme://...``) rather than a file path."""
    return isinstance(location, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", location) is not None


def mask_password(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``; works on a URL that
    does not parse, since it is the one an error message must name."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)


def db_url(location: Path | str | None = None) -> str:
    """The leaderboard's database URL (with its password): ``location`` (a URL or a SQLite file path), else
    ``$WM_LEADERBOARD_URL``, else the SQLite file of ``db_path()``."""
    if is_url(location):
        return str(location)
    if location:
        return sa.URL.create("sqlite", database=str(location)).render_as_string(hide_password=False)
    url = os.environ.get(URL_ENV_VAR, "").strip()
    if url:
        return url
    return sa.URL.create("sqlite", database=str(db_path())).render_as_string(hide_password=False)


def _parse_url(url: str) -> sa.URL:
    """The SQLAlchemy URL of ``url``, with PostgreSQL's driver made psycopg (3) when none is named.
    Raises LeaderboardError for a URL that names no database this leaderboard can use."""
    def refuse(reason: str) -> LeaderboardError:
        return LeaderboardError(mask_password(url), "", "used", reason)

    try:
        parsed = sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise refuse("not a database URL; expected postgresql+psycopg://user:password@host:5432/dbname "
                     "or sqlite:///path/to/file.sqlite3") from None
    backend = "postgresql" if parsed.drivername in ("postgres", "postgresql") else parsed.get_backend_name()
    if backend not in BACKENDS:
        raise refuse(f"the leaderboard keeps its runs in {' or '.join(BACKENDS)}, not {backend!r}")
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise refuse("a SQLite leaderboard needs a file (sqlite:///path/to/file.sqlite3), not memory")
    return parsed


def _engine(url: sa.URL) -> sa.Engine:
    """One engine per database and process. SQLite connects per use (NullPool), so a file that is moved
    aside is never written through an old handle; PostgreSQL keeps a small pool, checked before use."""
    key = (url.render_as_string(hide_password=False), os.getpid())
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        if url.get_backend_name() == "sqlite":
            engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"timeout": BUSY_TIMEOUT_S})

            @sa.event.listens_for(engine, "connect")
            def _no_implicit_transactions(dbapi_con, record):
                dbapi_con.isolation_level = None  # transactions begin where SQLAlchemy says, below

            @sa.event.listens_for(engine, "begin")
            def _begin(con):
                # A writer takes the write lock up front: a read-then-write transaction that lost a race in
                # WAL mode fails at once instead of waiting its turn.
                immediate = con.get_execution_options().get("sqlite_write_lock")
                con.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=8,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        _ENGINES[key] = engine
        return engine


def _one_line(e: BaseException, password: str | None) -> str:
    """The database's own message (not SQLAlchemy's, which repeats the statement and its parameters)."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else (e.args[0] if e.args else e))
    text = " ".join(text.split()) or type(e).__name__
    if password:
        text = text.replace(password, "***")
    return text if len(text) <= REASON_MAX_CHARS else text[:REASON_MAX_CHARS - 1] + "…"


def actions_to_blob(actions: np.ndarray) -> bytes:
    return np.ascontiguousarray(actions, dtype="<f4").tobytes()


def blob_to_actions(blob: bytes) -> np.ndarray:
    """float32 (steps, 3) from a stored action log."""
    return np.frombuffer(blob, dtype="<f4").reshape(-1, 3).astype(np.float32)


def _check_seed(seed: object) -> int:
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"track seed {seed} is out of range (0 to {SEED_LIMIT - 1})")
    return seed


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
    """Runs in SQLite or PostgreSQL. Each call uses its own connection, so any thread may use one instance.

    ``location``: a database URL or a SQLite file path; None reads the environment (module docstring).
    ``path`` is the SQLite file (None on PostgreSQL); ``where`` names the database for people (a file
    path, or the URL with its password masked). Raises LeaderboardError when the database cannot be used.
    """

    def __init__(self, location: Path | str | None = None):
        url = db_url(location)
        self._url = _parse_url(url)
        self.backend = self._url.get_backend_name()
        self.path = Path(self._url.database) if self.backend == "sqlite" else None
        self.where = str(self.path) if self.path is not None else self._url.render_as_string(hide_password=True)
        self._engine = _engine(self._url)
        self._prepare()

    def __repr__(self) -> str:
        return f"Leaderboard({self.where!r})"

    def _error(self, action: str, e: BaseException) -> LeaderboardError:
        return LeaderboardError(self.where, self.backend, action, _one_line(e, self._url.password))

    @contextlib.contextmanager
    def _connect(self, action: str = "read", write: bool = False) -> Iterator[sa.Connection]:
        """A connection in a transaction for one block: committed when the block ends (rolled back if it
        raises). ``write`` takes SQLite's write lock at the start. Database errors become LeaderboardError."""
        try:
            con = self._engine.connect()
        except (sa_exc.SQLAlchemyError, sqlite3.Error, OSError) as e:
            raise self._error("reached" if self.backend != "sqlite" else "opened", e) from e
        try:
            with con.execution_options(sqlite_write_lock=write).begin():
                yield con
        except (sa_exc.SQLAlchemyError, sqlite3.Error, OSError) as e:
            raise self._error(action, e) from e
        finally:
            con.close()

    def _prepare(self) -> None:
        """Bring the schema to SCHEMA_VERSION (once per database and process). A page that only reads must
        not write, or wait for a writer's lock, on every view: the version is read first, and only an
        out-of-date schema takes the lock to upgrade it."""
        key = (self.backend, self.path.resolve() if self.path is not None
               else self._url.render_as_string(hide_password=False))
        with _PREPARED_LOCK:
            if key in _PREPARED and (self.path is None or self.path.exists()):
                return
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise self._error("opened", e) from e
            with self._connect("read") as con:
                version = self._check_version(con)
            if version < SCHEMA_VERSION:
                self._upgrade()
            _PREPARED.add(key)

    def _check_version(self, con: sa.Connection) -> int:
        version = _schema_version(con)
        if version > SCHEMA_VERSION:
            raise LeaderboardError(self.where, self.backend, "used",
                                   f"its schema is version {version}, newer than this app's {SCHEMA_VERSION}: "
                                   "run a newer version of the app, or point it at another database")
        return version

    def _upgrade(self) -> None:
        """Apply the missing migration steps under a lock, so processes starting together upgrade once."""
        if self.backend == "sqlite":
            # Kept in the file: readers never block a writer. Not allowed inside a transaction, so it goes
            # straight to the driver.
            try:
                _use_wal(self.path)
            except sqlite3.Error as e:
                raise self._error("written", e) from e
        with self._connect("written", write=True) as con:
            if self.backend == "postgresql":
                con.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            version_table.create(con, checkfirst=True)
            version = self._check_version(con)  # again, under the lock: another process may have upgraded
            for step in range(version, SCHEMA_VERSION):
                _MIGRATIONS[step](con)
                con.execute(sa.insert(version_table).values(version=step + 1, applied_at=_now()))

    def schema_version(self) -> int:
        """The database's schema version (SCHEMA_VERSION once opened)."""
        with self._connect() as con:
            return _schema_version(con)

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
        if not (np.isfinite(actions).all() and (actions >= ACTION_LOW).all() and (actions <= ACTION_HIGH).all()):
            raise ValueError("action log has values that are not numbers or lie outside CarRacing's action "
                             "space [-1, 0, 0]..[1, 1, 1]: no run can have made it")
        if not np.isfinite(run.score):
            raise ValueError(f"score {run.score!r} is not a number")
        seed = _check_seed(run.seed)
        row = dict(player=player, kind=run.kind, model=run.model[:200], seed=seed, score=float(run.score),
                   steps=int(run.steps), tiles=int(run.tiles), total_tiles=int(run.total_tiles),
                   outcome=run.outcome, created_at=_now(), race_id=run.race_id[:64],
                   actions=actions_to_blob(actions))
        with self._connect("written", write=True) as con:
            result = con.execute(sa.insert(runs_table).values(**row))
            return int(result.inserted_primary_key[0])

    def _where(self, seed: int | None, kind: str | None, player: str | None) -> list:
        clauses = []
        if seed is not None:
            clauses.append(runs_table.c.seed == _check_seed(seed))
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
            clauses.append(runs_table.c.kind == kind)
        if player is not None:
            clauses.append(runs_table.c.player == player)
        return clauses

    def _frame(self, query) -> pd.DataFrame:
        with self._connect() as con:
            result = con.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def runs(self, seed: int | None = None, kind: str | None = None, player: str | None = None,
             limit: int = 500) -> pd.DataFrame:
        """Runs, best score first (then oldest first), without their action logs."""
        return self._frame(sa.select(*_COLUMNS).where(*self._where(seed, kind, player))
                           .order_by(runs_table.c.score.desc(), runs_table.c.id).limit(int(limit)))

    def best_per_player(self, seed: int | None = None, kind: str | None = None) -> pd.DataFrame:
        """Each player's (each AI model's) best run, best first, with how many runs they made."""
        r = runs_table.c
        who = (r.kind, r.player, r.model)
        ranked = (sa.select(*_COLUMNS,
                            sa.func.row_number().over(partition_by=who, order_by=(r.score.desc(), r.id))
                            .label("place"),
                            sa.func.count().over(partition_by=who).label("runs"))
                  .where(*self._where(seed, kind, None)).subquery("ranked"))
        return self._frame(sa.select(*[ranked.c[name] for name in _COLUMN_NAMES], ranked.c.runs)
                           .where(ranked.c.place == 1).order_by(ranked.c.score.desc(), ranked.c.id))

    def tracks(self) -> list[int]:
        """Track seeds with at least one run, most raced first."""
        seed = runs_table.c.seed
        with self._connect() as con:
            rows = con.execute(sa.select(seed).group_by(seed).order_by(sa.func.count().desc(), seed)).fetchall()
        return [int(r[0]) for r in rows]

    def human_vs_ai(self, seed: int | None = None) -> pd.DataFrame:
        """Per track (and per kind): best and mean score and the number of runs; columns seed, kind,
        best, mean, runs. Only tracks both people and an AI drove."""
        r = runs_table.c
        both = sa.select(r.seed).group_by(r.seed).having(sa.func.count(sa.distinct(r.kind)) == 2)
        return self._frame(
            sa.select(r.seed, r.kind, sa.func.max(r.score).label("best"),
                      sa.cast(sa.func.avg(r.score), sa.Double).label("mean"), sa.func.count().label("runs"))
            .where(*self._where(seed, None, None), r.seed.in_(both))
            .group_by(r.seed, r.kind).order_by(r.seed, r.kind))

    def get(self, run_id: int) -> dict | None:
        """One run with its action log (``actions`` float32 (steps, 3)), or None."""
        with self._connect() as con:
            row = con.execute(sa.select(*_COLUMNS, runs_table.c.actions)
                              .where(runs_table.c.id == int(run_id))).mappings().fetchone()
        if row is None:
            return None
        run = dict(row)
        run["actions"] = blob_to_actions(bytes(run["actions"]))
        return run

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar_one())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _schema_version(con: sa.Connection) -> int:
    """The highest migration step recorded; 0 for an empty database and for a file made before versioning."""
    if not sa.inspect(con).has_table(version_table.name):
        return 0
    return int(con.execute(sa.select(sa.func.max(version_table.c.version))).scalar() or 0)


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
