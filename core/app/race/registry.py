"""The races a server holds: who owns which (a random owner id in the page's URL), how many may run at
once, and what happens to a finished one (scored by replay, recorded on the leaderboard).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from core.app.leaderboard import Leaderboard, Run, validate_player_name
from core.app.race.ai import load_agent, single_threaded_blas
from core.app.race.errors import RaceError, RaceFull
from core.app.race.replay import replay_run
from core.app.race.session import MODES, FinishedRace, RaceConfig, RaceSession, check_seed, parse_owner
from core.config import validate

log = logging.getLogger(__name__)


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
