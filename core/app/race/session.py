"""One race: a person drives CarRacing with the keyboard, alone or against the AI on the same track, or
watches the AI drive.

Time moves only through ``RaceSession.tick()``: one tick is one env step (1/50 s of CarRacing time) or
one tick of the countdown. A session is therefore deterministic and testable without a clock;
``core.app.race.server`` calls ``tick()`` 50 times a second and streams the frames to the browser.

Every action a car takes is logged (float32 (steps, 3)). When a race ends, the server replays each log on
the track seed and stores what the replay scores on the leaderboard (``core.app.leaderboard``), so a score
never comes from a browser. The same logs render the race to MP4.

Modes: ``solo`` (a person), ``vs_ai`` (a person and the AI side by side, each on its own copy of the
track), ``watch`` (the AI alone).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from core.app.race.ai import model_label
from core.app.race.errors import RaceError
from core.app.race.replay import make_race_env
from core.config import ENV_CHOICES, SHIPPED_MODEL_DIR, param
from core.envs.env import FPS, tiles_visited
from core.envs.laps import LapTracker

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
# zlib level 1 without libpng's per-row filter search: 0.18 ms a 96 x 96 frame against 0.42 with the search,
# and 2.3 KB against 2.4 (the flat colours of a rendered frame compress as well unfiltered)
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def _env_int(name: str, default: int, low: int, high: int) -> int:
    """Whole-number env var ``name``, kept within ``low..high`` so that a large value caps rather than breaks;
    ``default`` when unset or not a whole number."""
    try:
        return min(high, max(low, int(os.environ.get(name, str(default)))))
    except ValueError:
        return default


def _default_max_races() -> int:
    """WM_MAX_RACES, kept within the config's range (1..64)."""
    return _env_int("WM_MAX_RACES", 4, 1, 64)


def _default_max_steps() -> int:
    """WM_RACE_MAX_STEPS, kept within the config's range (1..1000): shorter races for tests and demos."""
    return _env_int("WM_RACE_MAX_STEPS", 1000, 1, 1000)


@dataclass(frozen=True)
class RaceConfig:
    """Live races: length, countdowns, how many run at once, and what drives the AI."""

    max_steps: int = param(_default_max_steps(), "env steps a run may take at most (CarRacing's own limit: "
                                                 "1000 = 20 s; env var WM_RACE_MAX_STEPS)", minimum=1, maximum=1000)
    min_steps: int = param(250, "env steps a person's run needs to go on the leaderboard when the player ends it "
                                "(250 = 5 s); a run that ends on its own (lap, off the map, time up) always counts",
                           minimum=0, maximum=1000)
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

    @property
    def min_seconds(self) -> float:
        return self.min_steps / FPS


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


_OWNER_ID = re.compile(r"[0-9a-f]{16}")


def parse_owner(raw: object) -> str | None:
    """A race owner id from a URL (16 lowercase hex digits), or None for anything else."""
    return raw if isinstance(raw, str) and _OWNER_ID.fullmatch(raw) else None


def encode_image(obs: np.ndarray) -> bytes:
    """uint8 (96, 96, 3) RGB -> PNG bytes (lossless, so the browser's pixelated upscale stays crisp)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(obs, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------------------------------
# A live race


class Driver:
    """One car on its own copy of the track: env, last observation, action log and running score.

    This one steps in the calling process; ``core.app.race.worker.RemoteDriver`` steps the same car in a
    process of its own (the race server's), with the same attributes and methods.
    """

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
        self._png: bytes | None = None
        if self.agent is not None:
            self.agent.reset()

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def begin_step(self, action: np.ndarray | None, max_steps: int) -> None:
        """Start one step with ``action`` (float32 (3,)), or the agent's own when None; ``end_step`` waits for
        it. Here the step is done at once; a car in a process of its own steps meanwhile, so the cars of a
        race step side by side."""
        self.step(self.agent.act(self.obs) if action is None else action, max_steps)

    def end_step(self) -> None:
        """Wait for the step ``begin_step`` started."""

    def finish(self) -> None:
        """The race is over. This car keeps its env (what it shows and holds stays readable); one stepping in a
        process of its own ends it."""

    def png(self) -> bytes:
        """The last observation as PNG bytes (``encode_image``), encoded once per step."""
        if self._png is None:
            self._png = encode_image(self.obs)
        return self._png

    def step(self, action: np.ndarray, max_steps: int) -> None:
        action = np.array(action, dtype=np.float32).reshape(3)
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        self._png = None
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

    def hand_over(self) -> Driver:
        """A Driver that carries this car's run on from here, with this one's env and agent; this one keeps
        what the player saw (its last frame, score and steps) and no longer holds the env.

        The AI's run is deterministic, so when the player ends a race the AI's car can be driven on to the
        end of its own run without anyone watching (``drive_to_end``, on the registry's background thread)."""
        rest = copy.copy(self)
        rest.actions = list(self.actions)
        self.obs = self.obs.copy()  # the env may write its next frame into the same array
        self.env = self.agent = None
        return rest

    def drive_to_end(self, max_steps: int, between_steps: Callable[[float], None] = lambda seconds: None) -> None:
        """Let the agent drive until the run is over, then close the env. ``between_steps(seconds)`` is called
        after each step with the seconds it took (the registry paces the drive with it)."""
        try:
            while not self.done:
                start = time.perf_counter()
                self.step(self.agent.act(self.obs), max_steps)
                between_steps(time.perf_counter() - start)
        finally:
            self.env.close()

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
                 clock: Callable[[], float] = time.monotonic, driver_factory: DriverFactory | None = None):
        """``driver_factory(label, kind, seed, agent, model)`` makes each car (default: a ``Driver`` stepping
        here, on ``env_factory()``, by default the race env of ``config.env``)."""
        if mode not in MODES:
            raise RaceError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.id = secrets.token_hex(6)
        self.token = secrets.token_urlsafe(24)  # bearer of this may steer; only the owner's page gets it
        self.owner, self.seed, self.mode, self.player, self.config = owner, int(seed), mode, player, config
        self._on_finish, self._clock = on_finish, clock
        env_factory = env_factory or (lambda: make_race_env(config.env))
        make_driver = driver_factory or (lambda label, kind, seed, agent, model:
                                         Driver(label, kind, env_factory(), seed, agent=agent, model=model))
        cars = []
        if mode in ("solo", "vs_ai"):
            cars.append((player, "human", None, ""))
        if mode in ("vs_ai", "watch"):
            if agent is None:
                raise RaceError("this mode needs an AI but none was given")
            cars.append(("AI", "ai", agent, model_label(config.model_dir)))
        self.drivers: list[Driver] = []
        try:
            for label, kind, car_agent, model in cars:
                self.drivers.append(make_driver(label, kind, self.seed, car_agent, model))
        except BaseException:
            for d in self.drivers:  # the car made before one that failed must not hold its env (or process)
                d.env.close()
            raise
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
        self.ai_pending = False  # the AI's run is being driven on to its end, after the player ended the race
        self._start()

    # -- state ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self.attempt += 1
        self.status = "countdown" if self.config.countdown_ticks > 0 else "running"
        self.countdown = self.config.countdown_ticks
        self.pause_reason = ""
        self.ack = 0  # seq of the last key state applied to a step
        self.version += 1
        self.results, self.submit_error, self.ai_pending = None, None, False

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

    def hide(self) -> None:
        """The page went to the background (another tab, a minimised window): pause at the next tick, with
        the reason "hidden". Its browser may then throttle its timers, so its silence means nothing."""
        self._commands.append("hide")

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
        """The player gives up: runs still going end now and the race is over. The AI's run, once it has
        started, is handed over to be driven on to its own end in the background (``Driver.hand_over``).
        With ``record=False`` (a race abandoned for another) nothing goes to the leaderboard."""
        with self._lock:
            if self.status == "finished":
                return
            going_on = []
            for d in self.drivers:
                if not d.done:
                    if record and d.kind == "ai" and d.steps > 0 and self._on_finish is not None:
                        going_on.append(d.hand_over())
                    d.outcome = "ended"
            self._finish(record, going_on)

    def _finish(self, record: bool = True, going_on: list[Driver] | None = None) -> None:
        self.status, self.pause_reason = "finished", ""
        self.version += 1
        for d in self.drivers:
            d.finish()
        if record and self._on_finish is not None:
            self.ai_pending = bool(going_on)  # the registry clears it once the AI's run is scored
            # A snapshot: the player may restart before the runs are scored.
            self._on_finish(FinishedRace(self, self.race_id, self.attempt, self.seed, self.finished_runs(),
                                         going_on=going_on or [], min_steps=self.config.min_steps,
                                         max_steps=self.config.max_steps))

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
                going = [d for d in self.drivers if not d.done]
                for d in going:  # the AI (None) drives itself
                    d.begin_step(keys_to_action(mask) if d.kind == "human" else None, self.config.max_steps)
                for d in going:
                    d.end_step()
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
        elif name == "hide":
            self.pause("hidden")

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

    def frame(self) -> tuple[int, dict, list[bytes]]:
        """(version, meta, images): ``view()`` with each car's observation as PNG bytes (``Driver.png``)."""
        with self._lock:
            version, meta, _ = self.view()
            return version, meta, [d.png() for d in self.drivers]

    def status_dict(self) -> dict:
        """What the page shows: status, scores so far (once finished: as they stood when the race ended) and,
        once scored, the scored runs; ``ai_pending`` while the AI's run is still being driven to its end."""
        with self._lock:
            return {"status": self.status, "reason": self.pause_reason, "seed": self.seed, "mode": self.mode,
                    "connected": self.connected, "steps": self.steps, "attempt": self.attempt,
                    "drivers": [d.summary() for d in self.drivers],
                    "results": None if self.results is None else list(self.results),
                    "submit_error": self.submit_error, "ai_pending": self.ai_pending,
                    "min_steps": self.config.min_steps}

    def finished_runs(self) -> list[tuple[dict, np.ndarray]]:
        """(driver summary, action log) of the runs that are over: every person's run with a step, and the
        AI's when it ended on its own (one cut short by the player goes on in the background)."""
        with self._lock:
            return [(d.summary(), d.action_log()) for d in self.drivers
                    if d.steps > 0 and (d.kind == "human" or d.outcome != "ended")]

    def close(self) -> None:
        with self._lock:
            for d in self.drivers:
                if d.env is not None:  # a handed-over env is closed by whoever drives it on
                    d.env.close()


DriverFactory = Callable[[str, str, int, object, str], Driver]  # (label, kind, seed, agent, model) -> a car


@dataclass(frozen=True)
class FinishedRace:
    """The runs of one finished attempt, copied when it finished."""

    session: RaceSession | None
    race_id: str
    attempt: int
    seed: int
    runs: list  # [(summary dict of the driver, float32 (steps, 3) action log)]
    going_on: list = ()  # [Driver]: the AI's runs the player cut short, to be driven on to their end
    min_steps: int = 0  # a person's run the player ended counts from this many steps (RaceConfig.min_steps)
    max_steps: int = 1000  # the race's limit, for the runs driven on


def unrecorded_reason(driver: dict, min_steps: int) -> str:
    """Why a scored run stays off the leaderboard, or "" when it goes on. ``driver``: its summary, with the
    replay's steps and outcome. A person's run the player ended needs ``min_steps`` steps; a run that ended
    on its own (lap, off the map, time up) always counts, as does every AI run."""
    if driver["kind"] != "human" or driver["outcome"] != "ended" or driver["steps"] >= min_steps:
        return ""
    return (f"it was ended after {driver['steps']} steps ({driver['steps'] / FPS:.1f} s of race time), and a "
            f"run ended before its time needs {min_steps} steps ({min_steps / FPS:g} s) to count")


def versus_ai(status: dict) -> list[dict]:
    """The person against the AI, from a finished race's ``RaceSession.status_dict()``: rows of ``when``,
    ``you``, ``ai`` (None while the AI's run is still being driven) and ``gap`` (you - AI). When the player
    ended the race before the AI's run was over, one row for the moment it ended (the live scores) and one
    for the end of the AI's own run (the scored runs); else one row, the end. [] without both cars."""
    at_end = {d["kind"]: d for d in status["drivers"]}
    scored = {r["kind"]: r for r in status["results"] or []}
    if "human" not in scored or "ai" not in at_end:
        return []
    rows = []
    if at_end["ai"]["outcome"] == "ended":
        rows.append({"when": f"when the race ended (step {status['steps']})", "you": at_end["human"]["score"],
                     "ai": at_end["ai"]["score"]})
    ai = scored.get("ai")
    if ai is not None:
        rows.append({"when": f"at the end of the AI's run (step {ai['steps']})", "you": scored["human"]["score"],
                     "ai": ai["score"]})
    elif status["ai_pending"]:
        rows.append({"when": "at the end of the AI's run", "you": scored["human"]["score"], "ai": None})
    return [dict(r, gap=None if r["ai"] is None else r["you"] - r["ai"]) for r in rows]
