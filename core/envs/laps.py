"""How an episode of CarRacing ended, from the tiles the car's wheels touched.

CarRacing ends an episode early only when every tile of the track has been visited (or the car leaves the
playfield, at -100), so a single skipped tile turns a finished lap into a drive to the step limit. The
endings, in ``OUTCOMES`` order:

* ``lap finished``: every tile visited;
* ``left the field``: off the playfield, -100;
* ``lost the road``: at the step limit, with no wheel on the road for the last ``LOST_ROAD_STEPS`` steps;
* ``tiles skipped``: at the step limit, the lap driven round but tiles skipped (corners cut, or the road
  left and rejoined further on);
* ``out of steps``: at the step limit, with tiles still ahead (some may have been skipped too), on the road
  or off it for fewer than ``LOST_ROAD_STEPS`` steps;
* ``stopped early``: a training rollout cut short as hopeless (``core.pipeline.rollout``).
"""

from __future__ import annotations

import numpy as np

OUTCOMES = ("lap finished", "left the field", "lost the road", "tiles skipped", "out of steps", "stopped early")
LOST_ROAD_STEPS = 50  # no wheel on the road for this many last steps: the car had lost it
MEANINGS = {  # each ending in a few words, for tables
    "lap finished": "every tile visited before the step limit",
    "left the field": "drove off the playfield (-100)",
    "lost the road": f"at the step limit, off the road for its last {LOST_ROAD_STEPS}+ steps",
    "tiles skipped": "at the step limit, lap driven round but tiles left behind",
    "out of steps": "at the step limit, still on its way round",
    "stopped early": "cut short in training: no new tile for --early-stop-steps steps",
}


class LapTracker:
    """Where the car got to on its lap; call ``update`` after each env step.

    CarRacing numbers the tiles from the start line on, in the driving direction. The car's place is the
    foremost tile its wheels touch; it moves forward when that lies less than a quarter of the track ahead
    of its place before. The furthest tile reached only moves on such moves, by less than a quarter of the
    track, so driving in reverse (from the start onto the last tiles, or after a spin) is no progress. The
    lap is driven round when, from the last quarter, a forward move reaches a tile in the first eighth.
    Unvisited tiles behind the furthest reached, or all of them once the lap is round, were skipped; the
    others lie ahead. A shortcut across the grass past a quarter of the track is not followed: its tiles
    count as ahead.
    """

    def __init__(self, env) -> None:
        self.base = env.unwrapped
        self.n = len(self.base.track)
        self.quarter, self.eighth = max(1, self.n // 4), self.n // 8
        self.furthest = self.at = 0  # the furthest tile reached, and the car's place
        self.round = False
        self.steps = self.last_on_road = 0
        self._unvisited: tuple[tuple, tuple[int, int]] = ((), (0, 0))  # (what it depends on, the answer)

    def update(self) -> None:
        self.steps += 1
        touched = [tile.idx for wheel in self.base.car.wheels for tile in wheel.tiles]
        if not touched:
            return
        self.last_on_road = self.steps
        if self.round:
            return
        # Each touched tile's offset from the car's place, within half a track either way: the largest is
        # its new place.
        front = max((i - self.at + self.n // 2) % self.n - self.n // 2 for i in touched)
        if front == 0:  # still on its place
            return
        self.at = (self.at + front) % self.n
        if not 0 < front < self.quarter:  # backwards, or a jump too far to follow
            return
        if self.furthest >= self.n - self.quarter and self.at <= self.eighth:
            self.round = True
        elif self.furthest < self.at < self.furthest + self.quarter:
            self.furthest = self.at

    def unvisited(self) -> tuple[int, int]:
        """(skipped, ahead): unvisited tiles behind the furthest reached (all of them once round), and beyond.

        Worked out again only when the env's count of visited tiles, the furthest tile or the lap's roundness
        has changed (a live race asks every step; walking the 300 tiles took 0.14 ms)."""
        count = getattr(self.base, "tile_visited_count", None)  # CarRacing counts each tile's first visit
        key = (count, self.furthest, self.round)
        if count is None or key != self._unvisited[0]:
            missed = [tile.idx for tile in self.base.road if not tile.road_visited]
            skipped = len(missed) if self.round else sum(i <= self.furthest for i in missed)
            self._unvisited = key, (skipped, len(missed) - skipped)
        return self._unvisited[1]

    def ending(self, terminated: bool, lap_finished: bool) -> tuple[str, int, int]:
        """(outcome, skipped, ahead) of the episode as it stands: ``terminated`` and the env's
        ``info["lap_finished"]`` from its last step."""
        skipped, ahead = self.unvisited()
        return outcome(lap_finished if terminated else None, self.steps - self.last_on_road, skipped,
                       ahead), skipped, ahead


def outcome(lap_finished: bool | None, off_road_steps: int, skipped: int, ahead: int) -> str:
    """The ending (one of ``OUTCOMES`` but the last) of an episode that ``lap_finished`` (True), left the
    playfield (False) or ran to the step limit (None), whose car was off the road for its last
    ``off_road_steps`` steps, with ``skipped`` tiles behind it and ``ahead`` in front unvisited."""
    if lap_finished is not None:
        return OUTCOMES[0] if lap_finished else OUTCOMES[1]
    if off_road_steps >= LOST_ROAD_STEPS:
        return OUTCOMES[2]
    return OUTCOMES[3] if ahead == 0 and skipped > 0 else OUTCOMES[4]


def endings(ended: list[str], returns: list[float], **per_episode: list[float]) -> list[dict]:
    """One row per ending that occurs, in ``OUTCOMES`` order: ``ended``, its ``episodes``, their
    ``mean_return`` and, for each list in ``per_episode`` (``skipped=[...]``), ``mean_<name>``."""
    rows = []
    for name in OUTCOMES:
        picked = [i for i, e in enumerate(ended) if e == name]
        if picked:
            rows.append({"ended": name, "episodes": len(picked),
                         "mean_return": float(np.mean([returns[i] for i in picked])),
                         **{f"mean_{k}": float(np.mean([v[i] for i in picked])) for k, v in per_episode.items()}})
    return rows


def report_endings(report: dict) -> list[dict] | None:
    """``endings`` of an evaluation report's ``ended``, ``returns`` and ``skipped``; None when it lacks them or
    they do not fit (lists of one length, known endings, whole numbers of tiles, numbers for returns)."""
    ended, returns, skipped = (report.get(k) for k in ("ended", "returns", "skipped"))
    if not all(isinstance(v, list) for v in (ended, returns, skipped)) or not (
            len(ended) == len(returns) == len(skipped)):
        return None
    if not all(e in OUTCOMES for e in ended) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in skipped) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in returns):
        return None
    return endings(ended, returns, skipped=skipped)
