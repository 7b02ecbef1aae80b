"""The race: a person drives CarRacing with the keyboard, alone or against the AI on the same track, or
watches the AI drive.

Time moves only through ``RaceSession.tick()``: one tick is one env step (1/50 s of CarRacing time) or
one tick of the countdown. A session is therefore deterministic and testable without a clock;
``core.race_server`` calls ``tick()`` 50 times a second and streams the frames to the browser.

Every action a car takes is logged (float32 (steps, 3)). When a race ends, the server replays each log on
the track seed and stores what the replay scores on the leaderboard (``core.leaderboard``), so a score
never comes from a browser. The same logs render the race to MP4.

Modes: ``solo`` (a person), ``vs_ai`` (a person and the AI side by side, each on its own copy of the
track), ``watch`` (the AI alone).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from core import app_data
from core.artifacts import ArtifactError
from core.config import ENV_CHOICES, SHIPPED_MODEL_DIR, ConfigError, param, validate
from core.env import FPS, make_env, tiles_visited
from core.laps import LapTracker
from core.leaderboard import Leaderboard, Run, validate_player_name
from core.progress import ProgressCallback, keep_going

log = logging.getLogger(__name__)

MODES = ("solo", "vs_ai", "watch")
MODE_LABELS = {"solo": "Drive alone", "vs_ai": "Race the AI", "watch": "Watch the AI"}

# Bits of the key mask the browser sends: arrows or WASD.
KEY_LEFT, KEY_RIGHT, KEY_GAS, KEY_BRAKE = 1, 2, 4, 8
KEY_MASK_ALL = KEY_LEFT | KEY_RIGHT | KEY_GAS | KEY_BRAKE
GAS = 1.0  # throttle while the gas key is held (Gymnasium's keyboard play: 1.0)
BRAKE = 0.8  # brake while the brake key is held (Gymnasium's keyboard play: 0.8)

SEED_MAX = 2**31 - 1  # track seeds a player may pick: 0..SEED_MAX
RANDOM_SEED_LIMIT = 1_000_000  # random tracks are drawn from [0, RANDOM_SEED_LIMIT)
MAX_COMMANDS = 32  # queued control messages per session; more are dropped


def _default_max_races() -> int:
    """WM_MAX_RACES, kept within the config's range (1..64) so that a large value caps rather than breaks."""
    try:
        return min(64, max(1, int(os.environ.get("WM_MAX_RACES", "4"))))
    except ValueError:
        return 4


@dataclass(frozen=True)
class RaceConfig:
    """Live races: length, countdowns, how many run at once, and what drives the AI."""

    max_steps: int = param(1000, "env steps a run may take at most (CarRacing's own limit: 1000 = 20 s)",
                           minimum=1, maximum=1000)
    countdown_s: float = param(3.0, "seconds of countdown before the start", minimum=0.0, maximum=10.0)
    resume_countdown_s: float = param(1.0, "seconds of countdown after a pause", minimum=0.0, maximum=10.0)
    max_races: int = param(_default_max_races(), "races driven at once; the next person is asked to wait "
                                                  "(env var WM_MAX_RACES)", minimum=1, maximum=64)
    idle_timeout_s: float = param(600.0, "seconds a race without a connection, or paused, is kept before it "
                                         "is dropped", minimum=1.0)
    env: str = param("fast", "CarRacing implementation of the live race (fast: same frames, faster)",
                     choices=ENV_CHOICES)
    model_dir: str = param(SHIPPED_MODEL_DIR, "world model (vae/, rnn/, controller/) the AI drives with")

    @property
    def countdown_ticks(self) -> int:
        return int(round(self.countdown_s * FPS))

    @property
    def resume_ticks(self) -> int:
        return int(round(self.resume_countdown_s * FPS))


class RaceError(ValueError):
    """A race that cannot start or go on; the message is for the player."""


class RaceFull(RaceError):
    """Every race slot is taken; the player should wait and try again."""


def keys_to_action(mask: int) -> np.ndarray:
    """Key mask (bits KEY_LEFT, KEY_RIGHT, KEY_GAS, KEY_BRAKE) -> float32 (3,) action (steer, gas, brake).

    Left and right together cancel out, as in Gymnasium's own keyboard play.
    """
    steer = (-1.0 if mask & KEY_LEFT else 0.0) + (1.0 if mask & KEY_RIGHT else 0.0)
    return np.array([steer, GAS if mask & KEY_GAS else 0.0, BRAKE if mask & KEY_BRAKE else 0.0], np.float32)


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_LIMIT)


def check_seed(seed: object) -> int:
    """A track seed from user input, or RaceError."""
    try:
        value = int(str(seed).strip())
    except (TypeError, ValueError):
        raise RaceError(f"track {str(seed)[:40]!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise RaceError(f"track {value} is out of range: pick 0 to {SEED_MAX}")
    return value


def make_race_env(kind: str = "fast"):
    """The live env: the fast CarRacing when it is there, else Gymnasium's."""
    if kind == "fast":
        try:
            return make_env("fast")
        except ImportError:
            log.warning("core.fast_car_racing is missing; racing on the stock CarRacing-v3")
    return make_env("stock")


# --------------------------------------------------------------------------------------------------
# Replays


@dataclass(frozen=True)
class ReplayResult:
    """What a logged run scores when the server replays it on its track."""

    score: float
    steps: int
    tiles: int
    total_tiles: int
    outcome: str | None  # "lap", "off-track" or "time" when the episode ended; None when the log ran out


def _skip_render(mode: str) -> None:
    return None


def replay_run(seed: int, actions: np.ndarray, render: bool = False) -> ReplayResult:
    """Replay an action log (float32 (steps, 3)) on track ``seed`` in Gymnasium's own CarRacing-v3.

    Rewards and termination come from the physics and the tiles the car touches, never from pixels, so
    by default rendering is skipped (about 0.3 ms a step instead of 6-12 ms); ``render=True`` runs the
    env untouched, and the tests check both agree.
    """
    env = make_env("stock", disable_env_checker=True)
    if not render:
        env.unwrapped._render = _skip_render  # the step's observation is then None; rewards are unchanged
    try:
        env.reset(seed=int(seed))
        score, steps, outcome = 0.0, 0, None
        for action in np.asarray(actions, dtype=np.float32):
            _, reward, terminated, truncated, info = env.step(action)
            score += float(reward)
            steps += 1
            if terminated:
                outcome = "lap" if info.get("lap_finished") else "off-track"
                break
            if truncated:
                outcome = "time"
                break
        tiles, total = tiles_visited(env)
    finally:
        env.close()
    return ReplayResult(score, steps, tiles, total, outcome)


# --------------------------------------------------------------------------------------------------
# The AI


_BLAS_LIMITED = False


def single_threaded_blas() -> bool:
    """Make NumPy's BLAS single-threaded in this process (once); returns whether it could.

    The race steps each car on its own thread, 50 times a second. With BLAS free to start a thread per
    core, the agent's small matrix products (about 2 ms a step alone) took about 100 ms a step on two
    busy cores, as BLAS threads fought the race threads. Worker processes get the same effect from
    ``OPENBLAS_NUM_THREADS=1`` (``core.env.spawn_context``), but in the app's server NumPy is loaded
    before any race exists, so the limit is set on the loaded library.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return True
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1, user_api="blas")
        _BLAS_LIMITED = True
        return True
    except ImportError:
        pass
    import ctypes
    import glob
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                _BLAS_LIMITED = True
                return True
    log.warning("could not limit NumPy's BLAS to one thread; the AI may step slowly on a busy machine")
    return False


_AGENT_CACHE: dict[str, tuple[tuple[float, ...], dict, np.ndarray]] = {}  # folder -> (stamp, weights, params)
_AGENT_LOCK = threading.Lock()


WEIGHT_FILES = ("vae/vae.weights.h5", "rnn/rnn.weights.h5", "controller/params.npz")  # what the AI drives with


def _model_stamp(model_dir: Path) -> tuple[float, ...]:
    """The version of a model's weights: their modification times (an evolution also rewrites history,
    meta and state files every generation, which change nothing the AI loads)."""
    stamps = []
    for name in WEIGHT_FILES:
        try:
            stamps.append((model_dir / name).stat().st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)


def is_world_model(path: Path | str) -> bool:
    path = Path(path)
    return all((path / sub).is_dir() for sub in ("vae", "rnn", "controller")) and \
        (path / "controller" / "params.npz").exists()


def available_models(root: Path | str | None = None) -> list[str]:
    """World-model folders the AI can drive with (vae/, rnn/ and a controller), found as every page finds
    them (``app_data.model_dirs``: models/, runs/, runs/*/ and runs*/); paths relative to ``root``
    (default: the app's folder, as every page resolves paths), the default model first."""
    return app_data.model_dirs(root=root)  # it checks every part's weight file, so is_world_model holds


def resolve_model_dir(model_dir: str) -> Path:
    return app_data.resolve(model_dir)


def load_agent(model_dir: str):
    """A fresh ``core.agent.Agent`` for ``model_dir`` (weights loaded once per folder and version)."""
    from core.agent import Agent, load_world_model

    path = resolve_model_dir(model_dir)
    if not is_world_model(path):
        raise RaceError(f"no trained world model in {model_dir!r} (it needs vae/, rnn/ and controller/); "
                        "train one, or pick another model")
    key, stamp = str(path.resolve()), _model_stamp(path)
    with _AGENT_LOCK:
        cached = _AGENT_CACHE.get(key)
        if cached is None or cached[0] != stamp:  # one version per folder: a newer one replaces it
            try:
                weights, params = load_world_model(path)
            except ArtifactError as e:
                raise RaceError(f"the AI in {model_dir!r} cannot be loaded: {e}") from None
            cached = _AGENT_CACHE[key] = (stamp, weights, params)
        _, weights, params = cached
    return Agent(weights, params)


def model_label(model_dir: str) -> str:
    """How the leaderboard names an AI: its folder and its controller's CMA-ES generation, so runs of two
    versions of ``models/`` stay apart (``"models (generation 146)"``); the folder alone if unknown."""
    from core.artifacts import read_json
    try:
        generation = int(read_json(resolve_model_dir(model_dir) / "controller" / "state.json",
                                   "evolution state")["generation"])
    except (ArtifactError, KeyError, TypeError, ValueError):
        return model_dir
    return f"{model_dir} (generation {generation})"


_OWNER_ID = re.compile(r"[0-9a-f]{16}")


def parse_owner(raw: object) -> str | None:
    """A race owner id from a URL (16 lowercase hex digits), or None for anything else."""
    return raw if isinstance(raw, str) and _OWNER_ID.fullmatch(raw) else None


def warm_up(model_dir: str) -> None:
    """Load ``model_dir``'s weights in the background (TensorFlow's import and the load take seconds), so
    the race starts at once when the player asks for the AI. Errors wait for the real load to report."""
    path = resolve_model_dir(model_dir)
    if not is_world_model(path):
        return
    with _AGENT_LOCK:
        cached = _AGENT_CACHE.get(str(path.resolve()))
        if cached is not None and cached[0] == _model_stamp(path):
            return

    def load() -> None:
        try:
            load_agent(model_dir)
        except Exception:  # noqa: BLE001 - reported when the player starts the race
            log.debug("warming up %s failed", model_dir, exc_info=True)

    threading.Thread(target=load, name="race-warm-up", daemon=True).start()


# --------------------------------------------------------------------------------------------------
# A live race


class Driver:
    """One car on its own copy of the track: env, last observation, action log and running score."""

    def __init__(self, label: str, kind: str, env, seed: int, agent=None, model: str = ""):
        self.label, self.kind, self.env, self.seed, self.agent, self.model = label, kind, env, seed, agent, model
        self.reset()

    def reset(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed)
        self.actions: list[np.ndarray] = []
        self.score = 0.0
        self.steps = 0
        self.outcome: str | None = None  # set when this car's run is over
        self.tiles, self.total_tiles = tiles_visited(self.env)
        self.lap = LapTracker(self.env)
        self.skipped = 0  # tiles left unvisited behind the car: with any, the lap cannot finish
        if self.agent is not None:
            self.agent.reset()

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def step(self, action: np.ndarray, max_steps: int) -> None:
        action = np.array(action, dtype=np.float32).reshape(3)
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        self.actions.append(action)
        self.score += float(reward)
        self.steps += 1
        self.tiles, self.total_tiles = tiles_visited(self.env)
        self.lap.update()
        self.skipped = self.lap.unvisited()[0]
        if terminated:
            self.outcome = "lap" if info.get("lap_finished") else "off-track"
        elif truncated or self.steps >= max_steps:
            self.outcome = "time"

    def action_log(self) -> np.ndarray:
        return np.array(self.actions, dtype=np.float32).reshape(-1, 3)

    def summary(self) -> dict:
        return {"label": self.label, "kind": self.kind, "model": self.model, "score": self.score,
                "steps": self.steps, "tiles": self.tiles, "total_tiles": self.total_tiles,
                "skipped": self.skipped, "outcome": self.outcome}


COMMANDS = ("pause", "resume", "toggle_pause", "restart", "end")


class RaceSession:
    """One race: its drivers, the countdown/running/paused/finished state, the keys and the logs.

    Thread-safe: the server's ticker calls ``tick()`` from a worker thread while the socket handler calls
    ``set_keys`` and ``command`` (both only record the request; ``tick`` applies it) and the page calls
    ``end`` or reads ``status()``.
    """

    def __init__(self, *, seed: int, mode: str, player: str, config: RaceConfig, owner: str = "",
                 agent=None, env_factory: Callable[[], object] | None = None,
                 on_finish: Callable[["FinishedRace"], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise RaceError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.id = secrets.token_hex(6)
        self.token = secrets.token_urlsafe(24)  # bearer of this may steer; only the owner's page gets it
        self.owner, self.seed, self.mode, self.player, self.config = owner, int(seed), mode, player, config
        self._on_finish, self._clock = on_finish, clock
        env_factory = env_factory or (lambda: make_race_env(config.env))
        self.drivers: list[Driver] = []
        if mode in ("solo", "vs_ai"):
            self.drivers.append(Driver(player, "human", env_factory(), self.seed))
        if mode in ("vs_ai", "watch"):
            if agent is None:
                raise RaceError("this mode needs an AI but none was given")
            self.drivers.append(Driver("AI", "ai", env_factory(), self.seed, agent=agent,
                                       model=model_label(config.model_dir)))
        self._lock = threading.RLock()
        self._keys = (0, 0)  # (mask, seq): replaced as one tuple, so a reader never sees half an update
        self._commands: deque[str] = deque(maxlen=MAX_COMMANDS)
        self.attempt = 0
        self.version = 0  # grows whenever what the player sees changes
        self.connected = False
        self.last_seen = clock()
        self.paused_at: float | None = None  # when it was last paused, while it is
        self.results: list[dict] | None = None  # the scored runs of the last finished attempt
        self.submit_error: str | None = None
        self._start()

    # -- state ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self.attempt += 1
        self.status = "countdown" if self.config.countdown_ticks > 0 else "running"
        self.countdown = self.config.countdown_ticks
        self.pause_reason = ""
        self.ack = 0  # seq of the last key state applied to a step
        self.version += 1
        self.results, self.submit_error = None, None

    @property
    def race_id(self) -> str:
        return f"{self.id}-{self.attempt}"

    @property
    def human(self) -> Driver | None:
        return next((d for d in self.drivers if d.kind == "human"), None)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def steps(self) -> int:
        return max(d.steps for d in self.drivers)

    # -- input ------------------------------------------------------------------------------------

    def set_keys(self, mask: int, seq: int = 0) -> None:
        """Record the key state; the next step uses it. mask: int bits of KEY_*, seq: client counter."""
        self._keys = (int(mask) & KEY_MASK_ALL, int(seq))

    def command(self, name: str) -> None:
        """Queue a control request (one of COMMANDS) for the next tick; unknown names are ignored."""
        if name in COMMANDS:
            self._commands.append(name)

    # -- control (applied under the lock) -----------------------------------------------------------

    def pause(self, reason: str = "player") -> None:
        with self._lock:
            if self.status in ("countdown", "running"):
                self.status, self.pause_reason = "paused", reason
                self.paused_at = self._clock()
                self.version += 1

    def resume(self) -> None:
        with self._lock:
            if self.status == "paused":
                self.pause_reason, self.paused_at = "", None
                ticks = self.config.resume_ticks
                self.status, self.countdown = ("countdown", ticks) if ticks > 0 else ("running", 0)
                self.version += 1

    def restart(self) -> None:
        """Start over on the same track (a finished run stays on the leaderboard)."""
        with self._lock:
            for d in self.drivers:
                d.reset()
            self._start()

    def end(self, record: bool = True) -> None:
        """The player gives up: runs still going end now and the race is over. With ``record=False``
        (a race abandoned for another) nothing goes to the leaderboard."""
        with self._lock:
            if self.status == "finished":
                return
            for d in self.drivers:
                if not d.done:
                    d.outcome = "ended"
            self._finish(record)

    def _finish(self, record: bool = True) -> None:
        self.status, self.pause_reason = "finished", ""
        self.version += 1
        if record and self._on_finish is not None:
            # A snapshot: the player may restart before the runs are scored.
            self._on_finish(FinishedRace(self, self.race_id, self.attempt, self.seed, self.finished_runs()))

    def attach(self) -> None:
        with self._lock:
            self.connected = True
            self.last_seen = self._clock()

    def detach(self) -> None:
        """The browser's socket went away: pause, so the race waits for the player to come back."""
        with self._lock:
            self.connected = False
            self.last_seen = self._clock()
            self.pause("disconnected")

    # -- time -------------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance the race by one tick (1/FPS s): apply queued commands, then count down or step every car
        still going. Returns whether the view changed."""
        with self._lock:
            before = self.version
            while self._commands:
                self._apply(self._commands.popleft())
            if self.status == "countdown":
                self.countdown -= 1
                if self.countdown <= 0:
                    self.status, self.countdown = "running", 0
                self.version += 1
            elif self.status == "running":
                mask, seq = self._keys
                for d in self.drivers:
                    if d.done:
                        continue
                    action = keys_to_action(mask) if d.kind == "human" else d.agent.act(d.obs)
                    d.step(action, self.config.max_steps)
                self.ack = seq
                self.version += 1
                if all(d.done for d in self.drivers):
                    self._finish()
            return self.version != before

    def _apply(self, name: str) -> None:
        if name == "pause":
            self.pause("player")
        elif name == "resume":
            self.resume()
        elif name == "toggle_pause":
            self.resume() if self.status == "paused" else self.pause("player")
        elif name == "restart" and self.status != "finished":  # a finished race restarts from the page,
            self.restart()  # which checks the cap on races
        elif name == "end":
            self.end()

    # -- views ------------------------------------------------------------------------------------

    def view(self) -> tuple[int, dict, list[np.ndarray]]:
        """(version, meta, observations): what the player sees now; observations uint8 (96, 96, 3), one
        per driver, in the order of ``meta["drivers"]``."""
        with self._lock:
            meta = {
                "v": self.version, "status": self.status, "reason": self.pause_reason,
                "countdown": round(self.countdown / FPS, 2), "step": self.steps,
                "max_steps": self.config.max_steps, "t": round(self.steps / FPS, 2), "ack": self.ack,
                "attempt": self.attempt,
                "drivers": [{"label": d.label, "kind": d.kind, "score": round(d.score, 1), "tiles": d.tiles,
                             "total": d.total_tiles, "skipped": d.skipped, "done": d.done, "outcome": d.outcome or "",
                             "steps": d.steps} for d in self.drivers],
            }
            return self.version, meta, [d.obs for d in self.drivers]

    def status_dict(self) -> dict:
        """What the page shows: status, scores so far and, once scored, the leaderboard runs."""
        with self._lock:
            return {"status": self.status, "reason": self.pause_reason, "seed": self.seed, "mode": self.mode,
                    "connected": self.connected, "steps": self.steps, "attempt": self.attempt,
                    "drivers": [d.summary() for d in self.drivers], "results": self.results,
                    "submit_error": self.submit_error}

    def finished_runs(self) -> list[tuple[dict, np.ndarray]]:
        """(driver summary, action log) of the runs that go to the leaderboard: every person's run with a
        step, and the AI's when it ended on its own (not cut short by the player ending the race)."""
        with self._lock:
            return [(d.summary(), d.action_log()) for d in self.drivers
                    if d.steps > 0 and (d.kind == "human" or d.outcome != "ended")]

    def close(self) -> None:
        with self._lock:
            for d in self.drivers:
                d.env.close()


# --------------------------------------------------------------------------------------------------
# Scoring and the registry of live races


@dataclass(frozen=True)
class FinishedRace:
    """The runs of one finished attempt, copied when it finished."""

    session: RaceSession
    race_id: str
    attempt: int
    seed: int
    runs: list  # [(summary dict of the driver, float32 (steps, 3) action log)]


def score_and_record(race: FinishedRace, board: Leaderboard) -> list[dict]:
    """Replay each run of a finished race on its seed and store the replayed score.

    Returns one dict per run: label, kind, model, score (the replay's), live_score, steps, tiles,
    total_tiles, skipped (tiles left behind, live), outcome, run_id.
    """
    results = []
    for driver, actions in race.runs:
        replay = replay_run(race.seed, actions)
        if abs(replay.score - driver["score"]) > 1e-6 or replay.steps != driver["steps"]:
            log.warning("race %s: %s scored %.3f live but %.3f in the replay (%d vs %d steps)", race.race_id,
                        driver["label"], driver["score"], replay.score, driver["steps"], replay.steps)
        outcome = replay.outcome or driver["outcome"] or "ended"
        player = driver["label"] if driver["kind"] == "human" else "AI"
        run_id = board.add(Run(player=player, kind=driver["kind"], model=driver["model"], seed=race.seed,
                               score=replay.score, steps=replay.steps, tiles=replay.tiles,
                               total_tiles=replay.total_tiles, outcome=outcome, actions=actions[:replay.steps],
                               race_id=race.race_id))
        results.append({"label": driver["label"], "kind": driver["kind"], "model": driver["model"],
                        "score": replay.score, "live_score": driver["score"], "steps": replay.steps,
                        "tiles": replay.tiles, "total_tiles": replay.total_tiles,
                        "skipped": driver.get("skipped", 0), "outcome": outcome, "run_id": run_id})
    return results


class RaceRegistry:
    """Every live race of this process, by token; caps how many run at once.

    A race counts against ``max_races`` until it finishes. A race whose browser has been gone longer
    than ``idle_timeout_s`` is dropped. Each Streamlit session (``owner``) has at most one race.
    Finished runs go to ``Leaderboard(board_path)``: a SQLite file, a database URL, or None for the default.
    """

    def __init__(self, config: RaceConfig | None = None, board_path: Path | str | None = None,
                 clock: Callable[[], float] = time.monotonic, agent_loader: Callable[[str], object] | None = None):
        self.config = validate(config or RaceConfig())
        self.board_path = board_path
        self._clock = clock
        self._load_agent = agent_loader or load_agent  # model_dir -> a fresh agent (benchmarks pass their own)
        self._races: dict[str, RaceSession] = {}
        self._lock = threading.Lock()
        self._pending = 0  # slots reserved by races being built
        self._scorer = ThreadPoolExecutor(1, thread_name_prefix="race-score")

    def board(self) -> Leaderboard:
        return Leaderboard(self.board_path)

    def create(self, *, owner: str, player: str, seed: int, mode: str, model_dir: str | None = None,
               config: RaceConfig | None = None) -> RaceSession:
        """Start a race for ``owner`` (ending any race it had). Raises RaceError (bad input, no AI) or
        RaceFull (every slot taken)."""
        config = validate(config or self.config)
        if mode not in MODES:
            raise RaceError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        player = validate_player_name(player) if mode != "watch" else "AI"
        seed = check_seed(seed)
        if model_dir:
            config = _replace(config, model_dir=model_dir)
        with self._lock:
            self._reap_locked()
            # The owner's own race gives its slot to the new one; it is closed only once the new race
            # exists, so a refusal or an AI that fails to load leaves it (and its results) as they were.
            own = sum(1 for s in self._races.values() if s.owner == owner and not s.finished)
            if self._active_locked() - own + self._pending >= config.max_races:
                raise RaceFull(f"all {config.max_races} race slots are in use; please wait a moment and try again")
            self._pending += 1
        try:
            agent = None
            if mode in ("vs_ai", "watch"):
                single_threaded_blas()
                agent = self._load_agent(config.model_dir)
            session = RaceSession(seed=seed, mode=mode, player=player, config=config, owner=owner, agent=agent,
                                  on_finish=self._score_later, clock=self._clock)
            self.close_owner(owner)
            with self._lock:
                self._races[session.token] = session
        finally:
            with self._lock:
                self._pending -= 1
        return session

    def get(self, token: object) -> RaceSession | None:
        if not isinstance(token, str):
            return None
        with self._lock:
            return self._races.get(token)

    def for_owner(self, owner: str) -> RaceSession | None:
        with self._lock:
            return next((s for s in self._races.values() if s.owner == owner), None)

    def reclaim(self, raw: object) -> str | None:
        """The owner id ``raw`` (from a page's URL) when it leads back to a race whose browser has gone: the
        page was reloaded, and its race waits paused. None otherwise: an id whose race still has its browser
        is another tab's (a copied link must not take over, or end, someone's race), and an id without a
        race has nothing to lead back to."""
        owner = parse_owner(raw)
        session = self.for_owner(owner) if owner else None
        return owner if session is not None and not session.connected else None

    def close(self, token: str) -> None:
        with self._lock:
            session = self._races.pop(token, None)
        if session is not None:
            session.close()

    def close_owner(self, owner: str) -> None:
        session = self.for_owner(owner)
        if session is not None:
            session.end(record=False)
            self.close(session.token)

    def active(self) -> int:
        with self._lock:
            return self._active_locked()

    def _active_locked(self) -> int:
        return sum(1 for s in self._races.values() if not s.finished)

    def reap(self) -> None:
        with self._lock:
            self._reap_locked()

    def _reap_locked(self) -> None:
        now = self._clock()
        limit = self.config.idle_timeout_s
        # Gone that long, or paused that long with its page still open (it would hold its slot for ever).
        stale = [t for t, s in self._races.items()
                 if (not s.connected and now - s.last_seen > limit)
                 or (s.status == "paused" and s.paused_at is not None and now - s.paused_at > limit)]
        for token in stale:
            self._races.pop(token).close()

    def _score_later(self, race: FinishedRace) -> None:
        self._scorer.submit(self._score, race)

    def _score(self, race: FinishedRace) -> None:
        try:
            results = score_and_record(race, self.board())
            error = None
        except Exception as e:  # a broken database must not take the race server down
            log.exception("scoring race %s failed", race.race_id)
            results, error = [], f"the run could not be saved: {e}"
        session = race.session
        with session._lock:
            if session.attempt == race.attempt:
                session.results, session.submit_error = results, error

    def wait_scored(self, timeout: float = 30.0) -> None:
        """Block until scoring queued so far is done (tests, benchmarks)."""
        self._scorer.submit(lambda: None).result(timeout)

    def close_all(self) -> None:
        with self._lock:
            races = list(self._races.values())
            self._races.clear()
        for s in races:
            s.close()

    def shutdown(self) -> None:
        self.close_all()
        self._scorer.shutdown(wait=True)


def _replace(config: RaceConfig, **changes) -> RaceConfig:
    return validate(dataclasses.replace(config, **changes))


_REGISTRY: RaceRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry(board_path: Path | str | None = None) -> RaceRegistry:
    """The process-wide registry the race WebSocket and the pages share. ``board_path``: where finished runs
    go (a SQLite file or a database URL, as ``Leaderboard`` takes; the app passes its secrets' URL); None
    leaves it as it is (at first, the environment's choice)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = RaceRegistry(board_path=board_path)
        elif board_path is not None:
            _REGISTRY.board_path = board_path
        return _REGISTRY


# --------------------------------------------------------------------------------------------------
# Video


LABEL_BAR = 32  # pixels above each car's view for its name and score
VIDEO_SCALE = 4  # 96 x 96 observation -> 384 x 384 in the video


def _ascii(text: str) -> str:
    """OpenCV's fonts draw ASCII only; anything else becomes '?'."""
    return text.encode("ascii", "replace").decode("ascii")


def _panel(obs: np.ndarray, label: str, score: float, done: bool, scale: int) -> np.ndarray:
    view = cv2.resize(obs, (obs.shape[1] * scale, obs.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    bar = np.zeros((LABEL_BAR, view.shape[1], 3), np.uint8)
    text = f"{_ascii(label)[:18]}  {score:7.1f}" + ("  done" if done else "")
    cv2.putText(bar, text, (8, LABEL_BAR - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, view], axis=0)


def race_frames(seed: int, runs: Sequence[tuple[str, np.ndarray]], scale: int = VIDEO_SCALE,
                env_kind: str = "fast", on_progress: ProgressCallback = keep_going):
    """Yield uint8 RGB frames of ``runs`` (label, action log) replayed on track ``seed``, side by side;
    a run that ended holds its last frame. Stops early when ``on_progress`` returns falsy."""
    from core.record import replay_frames

    if env_kind == "fast":
        try:
            import core.fast_car_racing  # noqa: F401
        except ImportError:
            env_kind = "stock"
    sources = [replay_frames(seed, np.asarray(actions, np.float32), env_kind) for _, actions in runs]
    total = max(len(a) for _, a in runs) + 1
    last: list[np.ndarray | None] = [None] * len(runs)
    scores = [0.0] * len(runs)
    done = [False] * len(runs)
    try:
        for t in range(total):
            for i, source in enumerate(sources):
                if done[i]:
                    continue
                item = next(source, None)
                if item is None:
                    done[i] = True
                    continue
                last[i], reward, ended = item
                scores[i] += reward
                done[i] = done[i] or ended
            yield np.concatenate([_panel(last[i], runs[i][0], scores[i], done[i], scale)
                                  for i in range(len(runs))], axis=1)
            if t % 50 == 0 and not on_progress(t, total, {"score": scores[0]}):
                return
    finally:
        for source in sources:
            source.close()


def render_runs_mp4(seed: int, runs: Sequence[tuple[str, np.ndarray]], out: Path | str,
                    scale: int = VIDEO_SCALE, on_progress: ProgressCallback = keep_going) -> Path:
    """Render runs (label, float32 (steps, 3) action log) replayed on track ``seed`` to an H.264 MP4
    (yuv420p, 50 frames a second, side by side); returns the path. Uses ``core.record.write_mp4``."""
    from core.record import write_mp4

    if not runs:
        raise RaceError("there is no run to render")
    return write_mp4(race_frames(seed, runs, scale, on_progress=on_progress), out, fps=FPS)


def render_leaderboard_runs(board: Leaderboard, run_ids: Sequence[int], out: Path | str,
                            on_progress: ProgressCallback = keep_going) -> Path:
    """Render stored runs (all on one track) side by side to MP4."""
    rows = [board.get(i) for i in run_ids]
    if any(r is None for r in rows):
        raise RaceError(f"no such run among {list(run_ids)}")
    seeds = {r["seed"] for r in rows}
    if len(seeds) != 1:
        raise RaceError(f"runs {list(run_ids)} are on different tracks {sorted(seeds)}; pick runs of one track")
    runs = [(r["player"] if r["kind"] == "human" else f"AI {r['model']}", r["actions"]) for r in rows]
    return render_runs_mp4(seeds.pop(), runs, out, on_progress=on_progress)


def render_video(run_ids: Sequence[int], board: Leaderboard | None = None,
                 on_progress: ProgressCallback = keep_going) -> bytes:
    """MP4 bytes of stored runs (one track) side by side, for a page to show and offer as a download.

    Raises RaceError for runs that cannot be shown together and for a video that could not be written
    (no disk space, an encoder failure), so a page has one error to explain."""
    board = board or Leaderboard()
    try:
        with tempfile.TemporaryDirectory(prefix="race-video-") as tmp:
            path = render_leaderboard_runs(board, run_ids, Path(tmp) / "race.mp4", on_progress=on_progress)
            return path.read_bytes()
    except (OSError, RuntimeError, sqlite3.Error, ValueError) as e:  # ValueError: a damaged action log
        raise RaceError(f"the video could not be made ({type(e).__name__}: {e})") from e


__all__ = [
    "RaceConfig", "RaceError", "RaceFull", "RaceSession", "RaceRegistry", "Driver", "ReplayResult",
    "MODES", "MODE_LABELS", "KEY_LEFT", "KEY_RIGHT", "KEY_GAS", "KEY_BRAKE", "keys_to_action", "replay_run",
    "score_and_record", "get_registry", "available_models", "load_agent", "warm_up", "parse_owner", "model_label", "check_seed", "random_seed",
    "render_runs_mp4", "render_leaderboard_runs", "render_video", "race_frames", "ConfigError",
]
