"""Race videos: the action logs of one track's runs replayed side by side, with each car's name and score,
rendered to MP4.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from core.app.leaderboard import Leaderboard
from core.app.race.errors import RaceError
from core.envs.env import FPS
from core.progress import ProgressCallback, keep_going

log = logging.getLogger(__name__)


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
    from core.pipeline.record import replay_frames

    if env_kind == "fast":
        try:
            import core.envs.fast_car_racing  # noqa: F401
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
    (yuv420p, 50 frames a second, side by side); returns the path. Uses ``core.pipeline.record.write_mp4``."""
    from core.pipeline.record import write_mp4

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
