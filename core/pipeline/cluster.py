"""Episodes on a Ray cluster (``--ray-address``); the local process pool (``core.pipeline.rollout``) stays the
default, and Ray is needed only here (``pip install -r requirements-cluster.txt``).

The stage's process never imports Ray. A ``RayPool`` starts a driver process of its own, which connects to the
cluster, puts what every worker needs (the world model) into Ray's object store once, and starts one actor
per CPU of the cluster: a worker process that keeps its state (weights, env) between tasks, as a process of
the local pool does. A task is a module-level function and its arguments, the same function the local pool
runs; results come back in task order. The project's ``core`` package travels with the job (Ray's
``py_modules``), so the nodes need the Python packages of requirements.txt and requirements-cluster.txt but
no copy of the project, and every node runs the driver's code.

Faults. A worker or a node lost mid-task: its task runs again on another worker, and a replacement worker is
asked for (it starts once the cluster has a free CPU). Every task is a pure function of its arguments, so the
results are those of a run without the fault. No worker able to run for ``WM_RAY_TIMEOUT`` seconds (default
60: the cluster has no free CPU, or has gone away) is a ``ClusterError``: a ``UserError`` that leaves the
stage's last checkpoint to resume from.

Why a driver process of its own: when a cluster goes away, Ray ends the process that drives it once its
control store has been silent for a minute, and some of its calls wait until then. The stage's process
watches its driver instead, and turns its silence or its end into a ``ClusterError``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from core.envs.env import spawn_context, worker_setup
from core.errors import UserError
from core.machine import SINGLE_THREAD_ENV

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-cluster.txt"
TIMEOUT_ENV = "WM_RAY_TIMEOUT"  # seconds without a worker able to run before a ClusterError
DEFAULT_TIMEOUT = 60.0  # s
HEARTBEAT = 1.0  # s between the driver's signs of life while tasks run
WATCHDOG_SLACK = 10.0  # s the stage waits for its driver beyond the timeout before it calls it hung
CLOSE_WAIT = 10.0  # s a closing driver gets to disconnect before it is killed
CORE_DIR = Path(__file__).resolve().parents[1]  # the ``core`` package, shipped to the workers


class ClusterError(UserError):
    """The Ray cluster cannot run the stage's episodes (not installed, unreachable, full, or gone); the
    message names the address and what to do."""


def ray_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def require_cluster(address: str) -> None:
    """Raise ClusterError when Ray is not installed here (saying how to install it), or when nothing can answer
    at ``address`` (``unreachable``)."""
    if not ray_installed():
        raise ClusterError(f"--ray-address {address}: Ray is not installed here; install it with "
                           f"`{INSTALL_HINT}` (the local worker processes need no Ray: leave --ray-address and "
                           "WM_RAY_ADDRESS empty)")
    if reason := unreachable(address):
        raise _cannot_connect(address, reason)


def unreachable(address: str, timeout: float = 3.0) -> str:
    """Why nothing can answer at ``address`` (a ``host:port`` of a head's GCS, or ``ray://host[:port]``), or ""
    when something listens there or the address is of another kind ("auto"): a port that refuses or a host
    that does not resolve is known at once, where Ray would try to connect for 10 s or more first."""
    import socket
    target, default_port = address.strip(), ""
    if target.startswith("ray://"):
        target, default_port = target[len("ray://"):], "10001"  # Ray Client's port
    host, colon, port = target.rpartition(":")
    if not colon:
        host, port = target, default_port
    if not host or not port.isdigit():
        return ""
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        return f"nothing listens on port {port} of {host}"
    except socket.gaierror:
        return f"the host {host} is unknown"
    except TimeoutError:
        return ""  # a firewall may drop the probe; Ray has the last word
    except OSError as e:
        return e.strerror or type(e).__name__
    return ""


def _cannot_connect(address: str, reason: str) -> ClusterError:
    return ClusterError(f"--ray-address {address}: cannot connect to a Ray cluster there ({reason}); start one "
                        "with `ray start --head` (docs/CLUSTER.md), or check the address")


def timeout_seconds() -> float:
    """``WM_RAY_TIMEOUT`` in seconds (default 60)."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ClusterError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ClusterError(f"{TIMEOUT_ENV}={value!r} must be more than 0 seconds")
    return seconds


# --- the stage's side ------------------------------------------------------------------------------------


class RayPool:
    """Runs tasks on one actor per CPU of the Ray cluster at ``address`` (at most ``max_workers``).

    Each actor runs ``initializer(*initargs)`` once when it starts (``initargs`` go to the object store once,
    not with each actor or task); ``map(fn, tasks)`` then runs ``fn(*task)`` on them. ``info``: the cluster as
    the driver found it (``nodes``, ``cpus``, ``workers``, ``dashboard``). ``lost``: tasks run again after
    their worker was lost.
    """

    def __init__(self, address: str, initializer: Callable[..., None], initargs: tuple = (),
                 max_workers: int | None = None):
        require_cluster(address)
        self.address, self.timeout, self.lost = address, timeout_seconds(), 0
        context = spawn_context()
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_driver_main, name="ray-driver", daemon=True,
                                        args=(child, address, initializer, tuple(initargs), max_workers,
                                              self.timeout))
        self._process.start()
        child.close()
        try:
            self.info: dict = self._receive("ready")[1]
        except BaseException:
            self.close()
            raise

    def map(self, fn: Callable[..., Any], tasks: Iterable[tuple]) -> Iterator[Any]:
        """``fn(*task)`` of each task, in task order, each yielded as soon as it and those before it are done.
        Closing the iterator early cancels the tasks not started (those running finish first)."""
        tasks = list(tasks)
        if not tasks:
            return
        self._conn.send(("map", fn, tasks))
        results: dict[int, Any] = {}
        yielded, finished = 0, False
        try:
            while yielded < len(tasks):
                message = self._receive("result")
                results[message[1]] = message[2]
                while yielded in results:
                    yield results.pop(yielded)
                    yielded += 1
            self._receive("done")
            finished = True
        finally:
            if not finished and self._process is not None and self._process.is_alive():
                self._conn.send(("cancel",))
                self._receive("done")

    def _receive(self, wanted: str) -> tuple:
        """The driver's next message of kind ``wanted``; a lost worker is logged on the way, an error raised."""
        while True:
            if not self._conn.poll(self.timeout + WATCHDOG_SLACK):
                self._kill()
                raise ClusterError(f"--ray-address {self.address}: the Ray cluster has not answered for "
                                   f"{self.timeout + WATCHDOG_SLACK:g} s (unreachable or gone); run the same "
                                   "command again to resume from the last checkpoint")
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                code = self._kill()
                raise ClusterError(f"--ray-address {self.address}: the connection to the Ray cluster ended (its "
                                   f"driver process exited with code {code}): the cluster is unreachable or gone; "
                                   "run the same command again to resume from the last checkpoint") from None
            kind = message[0]
            if kind == wanted:
                return message
            if kind == "lost":
                self.lost += 1
                log.warning("a Ray worker was lost (%s); its episode runs again on another worker", message[1])
            elif kind == "error":
                self._kill()
                raise (ClusterError if message[2] else RuntimeError)(message[1])
            # "alive": the driver's heartbeat; a stray "done" of a cancelled map is skipped as well

    def close(self) -> None:
        """Disconnect from the cluster (its workers end with the driver)."""
        if self._process is None:
            return
        if self._process.is_alive():
            try:
                self._conn.send(("close",))
            except OSError:
                pass
            self._process.join(CLOSE_WAIT)
        self._kill()

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join()
        self._conn.close()
        return process.exitcode

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cluster_status(address: str, timeout: float = 20.0) -> dict:
    """The Ray cluster at ``address`` as it is now: ``nodes`` (alive), ``cpus``, ``free_cpus`` and
    ``dashboard`` (its URL, or "" without one). Asked from a short-lived process of its own, so this process
    never becomes a Ray driver; ClusterError when Ray is missing or the cluster does not answer in
    ``timeout`` seconds."""
    require_cluster(address)
    context = spawn_context()
    conn, child = context.Pipe()
    process = context.Process(target=_status_main, args=(child, address), name="ray-status", daemon=True)
    process.start()
    child.close()
    try:
        message = conn.recv() if conn.poll(timeout) else ("error", f"no answer in {timeout:g} s")
    except EOFError:
        message = ("error", f"the query process exited with code {process.exitcode}")
    finally:
        process.join(CLOSE_WAIT if message[0] == "status" else 0)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
    if message[0] != "status":
        raise ClusterError(f"Ray cluster {address}: {message[1]}")
    return message[1]


# --- the driver's side (its own process) ----------------------------------------------------------------


class _Worker:
    """A Ray actor: a worker process of the cluster that keeps its state between tasks."""

    def __init__(self, initializer: Callable[..., None], *initargs: Any):
        initializer(*initargs)

    def ready(self) -> int:
        return os.getpid()

    def call(self, fn: Callable[..., Any], task: tuple) -> Any:
        return fn(*task)


def _connect(address: str):
    import ray
    try:
        context = ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                           runtime_env={"py_modules": [str(CORE_DIR)], "env_vars": dict(SINGLE_THREAD_ENV)})
    except Exception as e:  # ConnectionError, ValueError of a malformed address, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _cannot_connect(address, first) from None
    url = getattr(context, "dashboard_url", "") or ""
    return ray, (f"http://{url}" if url and "://" not in url else url)


def _status_main(conn, address: str) -> None:
    worker_setup()
    try:
        ray, dashboard = _connect(address)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        status = {"nodes": len(nodes), "cpus": int(sum(n["Resources"].get("CPU", 0) for n in nodes)),
                  "free_cpus": int(ray.available_resources().get("CPU", 0)), "dashboard": dashboard}
        conn.send(("status", status))
        ray.shutdown()
    except Exception as e:  # reported to the asking process, which raises ClusterError
        conn.send(("error", str(e)))
    finally:
        conn.close()
        os._exit(0)  # Ray's exit hooks may wait on a cluster that has gone away


def _driver_main(conn, address: str, initializer: Callable[..., None], initargs: tuple, max_workers: int | None,
                 timeout: float) -> None:
    worker_setup()  # exit with the stage's process; Ctrl-C is the stage's to handle
    healthy = False
    try:
        driver = _Driver(conn, address, initializer, initargs, max_workers, timeout)
        conn.send(("ready", driver.info))
        driver.serve()
        healthy = True
    except ClusterError as e:
        conn.send(("error", str(e), True))
    except Exception as e:
        import traceback
        conn.send(("error", f"the Ray driver failed: {type(e).__name__}: {e}\n{traceback.format_exc()}", False))
    finally:
        if healthy:
            import ray
            ray.shutdown()
        conn.close()
        os._exit(0)  # Ray's exit hooks may wait on a cluster that has gone away


class _Driver:
    """Connects to the cluster, keeps one actor per CPU and runs the stage's maps on them."""

    def __init__(self, conn, address: str, initializer: Callable[..., None], initargs: tuple,
                 max_workers: int | None, timeout: float):
        self.conn, self.address, self.timeout = conn, address, timeout
        self.ray, dashboard = _connect(address)
        import ray.exceptions as rex
        # A lost worker: its task runs again elsewhere. (An exception of the task itself is RayTaskError.)
        self.lost_errors = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError,
                            rex.LocalRayletDiedError)
        self.initargs = [self.ray.put(a) for a in initargs]  # into the object store once
        self.actor_class = self.ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self.initializer = initializer
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        self.cpus = int(sum(n["Resources"].get("CPU", 0) for n in nodes))
        self.target = max(1, min(self.cpus, max_workers or self.cpus))
        self.starting: dict = {}  # readiness ref -> actor not yet ready
        self.idle: list = []  # ready actors with no task
        self.busy, self.started = 0, False  # started: a worker has been ready
        for _ in range(self.target):
            self._start_worker()
        waited = time.monotonic()
        while not self.idle:
            self._wait_for(list(self.starting), waited, running=False)
        self.info = {"nodes": len(nodes), "cpus": self.cpus, "workers": self.target, "dashboard": dashboard}

    def _start_worker(self) -> None:
        """Ask for one more worker, up to one per CPU; it joins once the cluster places and starts it."""
        if len(self.starting) + len(self.idle) + self.busy < self.target:
            actor = self.actor_class.remote(self.initializer, *self.initargs)
            self.starting[actor.ready.remote()] = actor

    def _wait_for(self, refs: list, since: float, running: bool) -> list:
        """Those of ``refs`` done within a heartbeat (workers that became ready are moved to ``idle``); a
        ClusterError once no worker could run for the timeout since ``since``."""
        done, _ = self.ray.wait(refs, num_returns=1, timeout=HEARTBEAT) if refs else ([], [])
        if not done:
            self.conn.send(("alive",))
        tasks = [ref for ref in done if ref not in self.starting]
        for ref in done:
            if ref in self.starting:
                actor = self.starting.pop(ref)
                try:
                    self.ray.get(ref)
                    self.idle.append(actor)
                    self.started = True
                except self.lost_errors:
                    self._start_worker()
        if not self.idle and not running and time.monotonic() - since > self.timeout:
            if self.started:
                raise ClusterError(f"--ray-address {self.address}: lost every Ray worker and got none back within "
                                   f"{self.timeout:g} s: the cluster has gone away or lost its nodes; run the same "
                                   "command again to resume from the last checkpoint")
            raise ClusterError(f"--ray-address {self.address}: no Ray worker could start within {self.timeout:g} s "
                               f"(the cluster has {self.cpus} CPUs; each worker needs one free): free some or add a "
                               "node (`ray start --address ...` on another machine), or leave --ray-address empty "
                               f"to run here; {TIMEOUT_ENV} sets the wait")
        return tasks

    def serve(self) -> None:
        while True:
            message = self.conn.recv()
            if message[0] == "close":
                return
            if message[0] == "map":
                self._map(message[1], message[2])
            # a "cancel" that crossed the end of its map is ignored

    def _map(self, fn: Callable[..., Any], tasks: list[tuple]) -> None:
        queue, running, cancelled = deque(range(len(tasks))), {}, False
        since = time.monotonic()  # when a worker last could run
        while (queue and not cancelled) or running:
            while queue and not cancelled and self.idle:
                actor, index = self.idle.pop(), queue.popleft()
                running[actor.call.remote(fn, tasks[index])] = (actor, index)
                self.busy += 1
            done = self._wait_for([*running, *self.starting], since, running=bool(running))
            if running or self.idle:
                since = time.monotonic()
            for ref in done:
                actor, index = running.pop(ref)
                self.busy -= 1
                try:
                    result = self.ray.get(ref)
                except self.lost_errors as e:
                    queue.appendleft(index)
                    self.conn.send(("lost", type(e).__name__))
                    self._start_worker()
                    continue
                self.idle.append(actor)
                if not cancelled:
                    self.conn.send(("result", index, result))
            if self.conn.poll() and self.conn.recv()[0] == "cancel":
                cancelled = True
        self.conn.send(("done",))
