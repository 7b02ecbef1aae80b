"""CarRacing environments and the frame preprocessing every stage shares.

``obs96``: uint8 (96, 96, 3), what CarRacing returns. ``frame``: uint8 (64, 64, 3), what V sees: rows 0:84
(the HUD at the bottom dropped) resized to 64x64 with area interpolation.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from core.envs.actions import ACTION_HIGH, ACTION_LOW, ACTION_SIZE  # noqa: F401 - part of env's face
from core.machine import SINGLE_THREAD_ENV

FRAME_SIZE = 64  # pixels, V's input side
CROP_ROWS = 84  # rows of the 96-row observation kept (paper: 0:84 drops the HUD)
FPS = 50  # CarRacing's simulation steps a second




def spawn_context():
    """A ``spawn`` multiprocessing context whose children start with one BLAS thread each.

    BLAS sizes its thread pool when NumPy is first imported, which in a spawned child happens while it
    unpickles its task, before any initializer runs; so the limit must already be in the environment the
    child inherits. Without it two workers on two cores run four spinning BLAS threads and every small
    matrix product of the agent gets several times slower.
    """
    import multiprocessing as mp
    for var, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(var, value)
    return mp.get_context("spawn")


def worker_setup() -> None:
    """Set up a worker process: exit when the parent dies, so a killed stage never leaves orphans
    burning CPU; no threads of its own in OpenCV; no SDL window. Ctrl-C in the terminal reaches the whole
    process group: workers ignore it and let the parent stop cleanly at its next checkpoint."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    cv2.setNumThreads(1)


def _exit_with_parent() -> None:
    parent = os.getppid()
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1  # Linux prctl option: signal this process when its parent exits
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() == parent:
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def make_env(kind: str = "fast", **kwargs: Any) -> gym.Env:
    """CarRacing-v3: ``kind="stock"`` is Gymnasium's own; ``kind="fast"`` is the bit-identical fast one."""
    if kind == "stock":
        return gym.make("CarRacing-v3", **kwargs)
    if kind == "fast":
        from core.envs.fast_car_racing import make_car_racing
        return make_car_racing(fast=True, **kwargs)
    raise ValueError(f"env kind {kind!r} is not one of fast, stock")


def preprocess(obs96: np.ndarray) -> np.ndarray:
    """uint8 (96, 96, 3) observation -> uint8 (64, 64, 3) frame for V."""
    return cv2.resize(obs96[:CROP_ROWS], (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)


def tiles_visited(env: gym.Env) -> tuple[int, int]:
    """(tiles visited, tiles on the track) of a CarRacing env, through any wrappers."""
    base = env.unwrapped
    return int(getattr(base, "tile_visited_count", 0)), int(len(getattr(base, "track", []) or []))
