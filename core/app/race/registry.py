"""The races a server holds: who owns which (a random owner id in the page's URL), how many may run at
once, and what happens to a finished one (scored by replay, recorded on the leaderboard, and the AI's run,
when the player ended the race before it was over, driven on to its end in the background and recorded too).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

from core.app.leaderboard import Leaderboard, Run, validate_player_name
from core.app.race.ai import load_agent, single_threaded_blas
from core.app.race.errors import RaceError, RaceFull
from core.app.race.replay import replay_run
from core.app.race.session import (
    MODES,
    Driver,
    FinishedRace,
    RaceConfig,
    RaceSession,
    check_seed,
    parse_owner,
    unrecorded_reason,
)
from core.app.race.worker import CarPool, remote_driver_factory
from core.config import validate
from core.machine import small_machine

log = logging.getLogger(__name__)

PROCESS_CARS_MIN_CPUS = 4  # cores from which cars step in processes of their own by default
DRIVE_ON_REST = 3.0  # while races are live, an AI run driven on rests this many times as long as each step took


def default_workers(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> bool:
    """Whether cars step in processes of their own: WM_RACE_WORKERS (1 yes, 0 no); unset, yes on a machine of
    ``PROCESS_CARS_MIN_CPUS`` cores or more (``cpus``, default ``os.cpu_count()``) that is not a small machine
    (WM_SMALL_MACHINE), where ten car processes of about 50 MB each (four races against the AI and two spares)
    would crowd the server. On 2 cores the processes only trade the GIL for context switches: four races
    against the AI beside an evolution kept 0.82x the frames on threads, and pages loaded 1.29x slower
    (bench_race_load --before, BENCHMARKS.md)."""
    environ = os.environ if environ is None else environ
    value = environ.get("WM_RACE_WORKERS", "").strip()
    if value:
        return value != "0"
    return (cpus or os.cpu_count() or 1) >= PROCESS_CARS_MIN_CPUS and not small_machine(environ)


def score_and_record(race: FinishedRace, board: Leaderboard) -> list[dict]:
    """Replay each run of a finished race on its seed and store the replayed score of each run that counts
    (``session.unrecorded_reason``: a person's run ended after fewer than ``race.min_steps`` steps does not).

    Returns one dict per run: label, kind, model, score (the replay's), live_score, steps, tiles,
    total_tiles, skipped (tiles left behind, live), outcome, run_id (None when not recorded) and
    unrecorded (why not, or "").
    """
    results = []
    for driver, actions in race.runs:
        replay = replay_run(race.seed, actions)
        if abs(replay.score - driver["score"]) > 1e-6 or replay.steps != driver["steps"]:
            log.warning("race %s: %s scored %.3f live but %.3f in the replay (%d vs %d steps)", race.race_id,
                        driver["label"], driver["score"], replay.score, driver["steps"], replay.steps)
        # The replay says how the run ended; when its log ran out first, the race's own step limit ended it or
        # the player did. (What the live run said is only compared: a score, a step count or an ending never
        # comes from anywhere but the replay.)
        outcome = replay.outcome or ("time" if replay.steps >= race.max_steps else "ended")
        why_not = unrecorded_reason(dict(driver, steps=replay.steps, outcome=outcome), race.min_steps)
        player = driver["label"] if driver["kind"] == "human" else "AI"
        run_id = None if why_not else board.add(
            Run(player=player, kind=driver["kind"], model=driver["model"], seed=race.seed, score=replay.score,
                steps=replay.steps, tiles=replay.tiles, total_tiles=replay.total_tiles, outcome=outcome,
                actions=actions[:replay.steps], race_id=race.race_id))
        results.append({"label": driver["label"], "kind": driver["kind"], "model": driver["model"],
                        "score": replay.score, "live_score": driver["score"], "steps": replay.steps,
                        "tiles": replay.tiles, "total_tiles": replay.total_tiles,
                        "skipped": driver.get("skipped", 0), "outcome": outcome, "run_id": run_id,
                        "unrecorded": why_not})
    return results


class RaceRegistry:
    """Every live race of this process, by token; caps how many run at once.

    A race counts against ``max_races`` until it finishes. A race whose browser has been gone longer
    than ``idle_timeout_s`` is dropped. Each Streamlit session (``owner``) has at most one race.
    Finished runs go to ``Leaderboard(board_path)``: a SQLite file, a database URL, or None for the default.

    ``workers``: step each car in a process of its own (``core.app.race.worker``), off this process's GIL
    (default: ``default_workers()``); False steps them on the server's threads (tests whose stand-in agents
    cannot travel, and the benchmark's "before").
    """

    def __init__(self, config: RaceConfig | None = None, board_path: Path | str | None = None,
                 clock: Callable[[], float] = time.monotonic, agent_loader: Callable[[str], object] | None = None,
                 workers: bool | None = None):
        self.config = validate(config or RaceConfig())
        self.board_path = board_path
        self._clock = clock
        self._load_agent = agent_loader or load_agent  # model_dir -> a fresh agent (benchmarks pass their own)
        self._races: dict[str, RaceSession] = {}
        self._lock = threading.Lock()
        self._pending = 0  # slots reserved by races being built
        self._scorer = ThreadPoolExecutor(1, thread_name_prefix="race-score")
        # The AI's runs that players cut short, driven on one at a time beside the live races.
        self._driver = ThreadPoolExecutor(1, thread_name_prefix="race-ai-drive")
        self._driving = 0  # runs queued or being driven on (at most config.max_races)
        self.cars = CarPool() if (default_workers() if workers is None else workers) else None

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
            cars = remote_driver_factory(self.cars, config.env) if self.cars is not None else None
            session = RaceSession(seed=seed, mode=mode, player=player, config=config, owner=owner, agent=agent,
                                  on_finish=self._score_later, clock=self._clock, driver_factory=cars)
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
        going_on = list(race.going_on)
        with self._lock:
            room = max(0, self.config.max_races - self._driving)
            self._driving += min(room, len(going_on))
        for rest in going_on[room:]:  # players ending race after race faster than the AI's runs are driven
            rest.env.close()
            error = error or "the server is busy: the AI's run was not driven on to its end, so it is not recorded"
        self._set_results(race, results, error, pending=room > 0 and bool(going_on))
        for rest in going_on[:room]:
            self._driver.submit(self._drive_on, race, rest)

    def _set_results(self, race: FinishedRace, results: list[dict], error: str | None, pending: bool) -> None:
        session = race.session
        with session._lock:
            if session.attempt == race.attempt:
                session.results = (session.results or []) + results
                session.submit_error = session.submit_error or error
                session.ai_pending = pending

    def _drive_on(self, race: FinishedRace, rest: Driver) -> None:
        """Drive the AI's cut-short run to its own end, then score and record it like any finished run."""
        try:
            rest.drive_to_end(race.max_steps, self._pace)
            scored = dataclasses.replace(race, runs=[(rest.summary(), rest.action_log())], going_on=[])
            results, error = score_and_record(scored, self.board()), None
        except Exception as e:  # a broken database or a failing step must not take the race server down
            log.exception("driving on the AI's run of race %s failed", race.race_id)
            results, error = [], f"the AI's run could not be finished and saved: {e}"
        finally:
            with self._lock:
                self._driving -= 1
        self._set_results(race, results, error, pending=False)

    def _pace(self, seconds: float) -> None:
        """Between two steps of an AI run driven on: while live races tick, rest DRIVE_ON_REST times as long as
        the step took, so it takes at most a quarter of a core and mostly leaves the GIL to their 50 Hz
        tickers (at 1 instead of 3, one live race on two busy cores fell from 50 to about 42 steps a second);
        with none live, only yield it."""
        time.sleep(DRIVE_ON_REST * seconds if self.active() else 0.0)

    def wait_scored(self, timeout: float = 60.0) -> None:
        """Block until scoring queued so far is done, and the AI's runs it drives on (tests, benchmarks)."""
        self._scorer.submit(lambda: None).result(timeout)
        self._driver.submit(lambda: None).result(timeout)

    def close_all(self) -> None:
        with self._lock:
            races = list(self._races.values())
            self._races.clear()
        for s in races:
            s.close()

    def shutdown(self) -> None:
        self.close_all()
        self._scorer.shutdown(wait=True)
        self._driver.shutdown(wait=True)
        if self.cars is not None:
            self.cars.shutdown()


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
            if _REGISTRY.cars is not None:
                _REGISTRY.cars.top_up()  # the first race need not wait for its cars' processes to start
        elif board_path is not None:
            _REGISTRY.board_path = board_path
        return _REGISTRY
