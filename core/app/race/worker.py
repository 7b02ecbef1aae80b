"""Each car of a live race in a process of its own, so that the race server's one Python process (and its
GIL, which Streamlit's page runs share) only carries frames and keys.

A car's env, its AI (V + M + C) and the PNG of each frame cost milliseconds a step; four races against the AI
stepped on threads of the server held its GIL for most of every tick and fell to 22 frames a second on two
cores (BENCHMARKS.md, "Races beside a training job"). ``RemoteDriver`` is a ``session.Driver`` whose car
steps in a ``CarProcess``: the server sends it an action (or asks the AI to drive) and gets back the new
observation, its PNG and the car's score, steps and tiles. The race's logic (countdown, pause, keys, logs,
scoring by replay) stays in the server's ``RaceSession``, unchanged.

The process: ``python -c ENTRY FD`` (``main`` below), started from the code's own folder (``CODE_ROOT``, first
on its ``PYTHONPATH``, as jobs are), talking over one socket. Messages are a JSON header and raw arrays,
never pickles; the AI's weights travel as arrays. A car's process ends when its car is closed (its race
ended, or the AI's run it drove on is over), when the socket closes (the server ended, however it ended),
or when its parent is gone. ``CarPool`` keeps ``SPARES`` processes started, so a race starts without
waiting for Python's imports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import numpy as np

from core import CODE_ROOT
from core.app.race.errors import RaceError
from core.app.race.session import Driver
from core.machine import SINGLE_THREAD_ENV

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # seconds a new car process has to import and build its env
STEP_TIMEOUT_S = 10.0  # seconds a step may take before the car's process is taken for dead
DRIVE_ON_TIMEOUT_S = 600.0  # seconds an AI run driven on to its end may take
CLOSE_WAIT_S = 2.0  # seconds a closed car's process has to exit before it is killed
DRIVE_ON_NICE = 10  # the AI's runs driven on after the race ended are background work, like jobs (WM_JOB_NICE)
SPARES = 2  # car processes kept started and idle (a race against the AI takes two)
ENTRY = "from core.app.race.worker import main; main()"  # what a car's process runs (not -m: the package imports it)


# --------------------------------------------------------------------------------------------------
# Messages: a JSON header, then the raw bytes of each array (dtype and shape in the header)


def pack(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    arrays = {name: np.ascontiguousarray(a) for name, a in (arrays or {}).items()}
    head = dict(header, arrays=[[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()])
    text = json.dumps(head, separators=(",", ":")).encode()
    return len(text).to_bytes(4, "big") + text + b"".join(a.tobytes() for a in arrays.values())


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    n = int.from_bytes(data[:4], "big")
    header = json.loads(data[4:4 + n])
    arrays, at = {}, 4 + n
    for name, dtype, shape in header.pop("arrays"):
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arrays[name] = np.frombuffer(data[at:at + size], dtype).reshape(shape).copy()
        at += size
    return header, arrays


def _state(driver: Driver) -> dict:
    return {"score": driver.score, "steps": driver.steps, "tiles": driver.tiles, "total": driver.total_tiles,
            "skipped": driver.skipped, "outcome": driver.outcome}


# --------------------------------------------------------------------------------------------------
# The server's side


class CarProcess:
    """The server's handle on one car's process: ``request`` (or ``ask``, then ``answer``), and ``close``
    (which ends it). One request at a time: ``ask`` holds the handle until ``answer``."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, **SINGLE_THREAD_ENV, SDL_VIDEODRIVER="dummy", TF_CPP_MIN_LOG_LEVEL="2")
        # The child imports the code this server runs, from its own folder (never a data folder's).
        env["PYTHONPATH"] = os.pathsep.join([str(CODE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                                if p and p != str(CODE_ROOT)])
        try:
            self.process = subprocess.Popen([sys.executable, "-c", ENTRY, str(child.fileno())],
                                            cwd=CODE_ROOT, env=env, pass_fds=[child.fileno()],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._lock = threading.Lock()  # held from ask to answer
        self.closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def ask(self, header: dict, arrays: dict | None = None) -> None:
        """Send a request; its answer is read by ``answer``, which must follow."""
        self._lock.acquire()
        try:
            self._conn.send_bytes(pack(header, arrays))
        except OSError as e:
            self._lock.release()
            raise self._died(f"{type(e).__name__}: {e}") from None
        except BaseException:
            self._lock.release()
            raise

    def answer(self, timeout: float) -> tuple[dict, dict[str, np.ndarray]]:
        """The answer to the request ``ask`` sent: (header, arrays); RaceError when the process failed, died
        or did not answer within ``timeout`` seconds."""
        try:
            return self._receive(timeout)
        finally:
            self._lock.release()

    def request(self, header: dict, arrays: dict | None = None, timeout: float = STEP_TIMEOUT_S):
        self.ask(header, arrays)
        return self.answer(timeout)

    def _receive(self, timeout: float) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            if not self._conn.poll(timeout):
                self.kill()
                raise RaceError(f"the car's process (pid {self.pid}) did not answer in {timeout:.0f} s")
            header, arrays = unpack(self._conn.recv_bytes())
        except (EOFError, OSError) as e:
            raise self._died(f"{type(e).__name__}: {e}") from None
        if "error" in header:
            raise RaceError(f"the car's process failed: {header['error']}")
        return header, arrays

    def _died(self, detail: str) -> RaceError:
        try:
            code = self.process.wait(CLOSE_WAIT_S)  # its socket closed as it exited: the code follows
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        why = (f"stopped answering ({detail})" if code is None else
               f"was killed (signal {-code})" if code < 0 else f"exited with code {code}")
        return RaceError(f"the car's process (pid {self.pid}) {why}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.close()

    def close(self) -> None:
        """End the process: it exits when its socket closes; one that has not within CLOSE_WAIT_S is killed
        (by a thread of its own, so closing never waits). Safe to call twice, from any thread."""
        if self.closed:
            return
        self.closed = True
        try:
            self._conn.close()
        except OSError:
            pass
        threading.Thread(target=self._reap, name="race-car-reap", daemon=True).start()

    def _reap(self) -> None:
        try:
            self.process.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CarPool:
    """Car processes started ahead of the races that take them (``SPARES`` of them, topped up in the
    background), so that starting a race does not wait for a new Python to import NumPy and Box2D."""

    def __init__(self, spares: int = SPARES):
        self.spares = spares
        self._idle: list[CarProcess] = []
        self._lock = threading.Lock()
        self._starting = 0
        self._closed = False

    def take(self) -> CarProcess:
        with self._lock:
            car = self._idle.pop(0) if self._idle else None
        if car is not None and car.process.poll() is not None:  # died while it waited
            car.close()
            car = None
        self.top_up()
        return car or CarProcess()

    def top_up(self) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self.spares - len(self._idle) - self._starting
            self._starting += max(0, missing)
        for _ in range(missing):
            threading.Thread(target=self._start_one, name="race-car-spare", daemon=True).start()

    def _start_one(self) -> None:
        try:
            car = CarProcess()
        except OSError:
            log.exception("a spare car process could not be started")
            car = None
        with self._lock:
            self._starting -= 1
            if car is not None and not self._closed:
                self._idle.append(car)
                car = None
        if car is not None:
            car.close()

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for car in idle:
            car.close()


class RemoteDriver(Driver):
    """A ``Driver`` whose car (env and AI) steps in a ``CarProcess`` (its ``env``); this object keeps what
    the race reads: the last observation and its PNG, the score, steps, tiles and the action log.

    The AI's weights go to the process once, as arrays: ``agent`` must be a ``core.models.agent.Agent``."""

    def __init__(self, label: str, kind: str, seed: int, process: CarProcess, env_kind: str, agent=None,
                 model: str = ""):
        self.label, self.kind, self.seed, self.model = label, kind, seed, model
        self.env, self.agent = process, agent
        try:
            arrays = {}
            if agent is not None:
                if not hasattr(agent, "w") or not hasattr(agent, "controller"):
                    raise TypeError(f"{type(agent).__name__} cannot drive in a car's process: it takes a "
                                    "core.models.agent.Agent (or RaceRegistry(workers=False))")
                arrays = {f"w.{name}": np.asarray(value) for name, value in agent.w.items()}
                arrays["params"] = agent.controller.get_params()
            header, arrays = process.request({"op": "start", "env": env_kind, "seed": seed, "kind": kind},
                                             arrays, START_TIMEOUT_S)
        except BaseException:
            process.close()
            raise
        self.actions: list[np.ndarray] = []
        self._update(header, arrays)

    def _update(self, header: dict, arrays: dict[str, np.ndarray]) -> None:
        self.score, self.steps, self.outcome = header["score"], header["steps"], header["outcome"]
        self.tiles, self.total_tiles, self.skipped = header["tiles"], header["total"], header["skipped"]
        self.obs, self._png = arrays["obs"], arrays["png"].tobytes()

    def reset(self) -> None:
        self.actions = []
        self._update(*self.env.request({"op": "reset"}))

    def finish(self) -> None:
        """The race is over: end the car's process now (a finished race never steps again; what it shows
        stays here). A run handed over to be driven on has its own handle, and ends its process itself."""
        if self.env is not None:
            self.env.close()
            self.env = None

    def begin_step(self, action: np.ndarray | None, max_steps: int) -> None:
        action = None if action is None else [float(a) for a in np.asarray(action, np.float32).reshape(3)]
        self.env.ask({"op": "step", "action": action, "max_steps": max_steps})

    def end_step(self) -> None:
        header, arrays = self.env.answer(STEP_TIMEOUT_S)
        self.actions.append(np.array(header["action"], np.float32))
        self._update(header, arrays)

    def step(self, action: np.ndarray, max_steps: int) -> None:
        self.begin_step(action, max_steps)
        self.end_step()

    def drive_to_end(self, max_steps: int, between_steps=None) -> None:
        """Let the AI drive on until its run is over, in its process (at DRIVE_ON_NICE, as background work),
        then end the process. ``between_steps`` is not used: the process paces nothing of the server's."""
        try:
            header, arrays = self.env.request({"op": "drive_to_end", "max_steps": max_steps}, None,
                                              DRIVE_ON_TIMEOUT_S)
            self.actions.extend(np.asarray(arrays.pop("actions"), np.float32))
            self._update(header, arrays)
        finally:
            self.env.close()


def remote_driver_factory(pool: CarPool, env_kind: str):
    """A ``session.DriverFactory`` whose cars step in processes taken from ``pool``."""
    def make(label: str, kind: str, seed: int, agent, model: str) -> RemoteDriver:
        return RemoteDriver(label, kind, seed, pool.take(), env_kind, agent=agent, model=model)
    return make


# --------------------------------------------------------------------------------------------------
# The car's side


def _reply(conn: Connection, driver: Driver, **extra) -> None:
    arrays = {"obs": driver.obs, "png": np.frombuffer(driver.png(), np.uint8)}
    arrays.update(extra.pop("arrays", {}))
    conn.send_bytes(pack(dict(_state(driver), **extra), arrays))


def serve(conn: Connection) -> None:
    """Answer the server's requests for one car until it closes the socket (or asks to stop)."""
    from core.app.race.replay import make_race_env
    from core.models.agent import Agent

    parent = os.getppid()
    driver: Driver | None = None
    try:
        while True:
            try:
                header, arrays = unpack(conn.recv_bytes())
            except (EOFError, OSError):
                return  # the server closed the car, or is gone
            op = header["op"]
            try:
                if op == "start":
                    agent = None
                    if header["kind"] == "ai":
                        weights = {name[2:]: a for name, a in arrays.items() if name.startswith("w.")}
                        agent = Agent(weights, arrays["params"])
                    driver = Driver("", header["kind"], make_race_env(header["env"]), int(header["seed"]), agent)
                    _reply(conn, driver)
                elif op == "reset":
                    driver.reset()
                    _reply(conn, driver)
                elif op == "step":
                    action = header["action"]
                    action = driver.agent.act(driver.obs) if action is None else np.array(action, np.float32)
                    driver.step(action, int(header["max_steps"]))
                    _reply(conn, driver, action=[float(a) for a in driver.actions[-1]])
                elif op == "drive_to_end":
                    os.nice(DRIVE_ON_NICE)
                    first = driver.steps
                    while not driver.done:
                        if os.getppid() != parent:
                            return  # the server is gone: nobody would record the run
                        driver.step(driver.agent.act(driver.obs), int(header["max_steps"]))
                    _reply(conn, driver, arrays={"actions": driver.action_log()[first:]})
                    return
                else:
                    return
            except Exception as e:  # noqa: BLE001 - the server reports it to the player and ends the race
                conn.send_bytes(pack({"error": f"{type(e).__name__}: {e}"}))
                return
    finally:
        if driver is not None:
            driver.env.close()


def main() -> None:
    import signal

    import cv2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the server's to handle
    cv2.setNumThreads(1)
    serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
