"""A PostgreSQL server of the test session's own, for the leaderboard's tests on PostgreSQL.

Debian's ``postgresql`` package binaries (``/usr/lib/postgresql/<version>/bin``; ``scripts/run-tests.sh``
installs them) make a cluster in a temporary folder; the server listens on 127.0.0.1 on a free port and puts
its Unix socket in that folder. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user (made by the package), else to ``nobody``. Each test gets a database of its own
(``new_database``); ``stop`` ends the one server process this module started, by its pid, and removes
the folder. Authentication is ``trust``: only this machine's loopback can reach the server.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import free_port

USER = "wm"  # the cluster's superuser
START_TIMEOUT_S = 30.0  # seconds to wait for the server to accept connections
STOP_TIMEOUT_S = 15.0  # seconds to wait for a fast shutdown before killing the process


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb``, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _run_as() -> dict:
    """Popen arguments that drop root to the user owning the cluster; none when not root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


class PostgresServer:
    """One ``postgres`` process on 127.0.0.1; ``url(database)`` gives SQLAlchemy URLs for it."""

    def __init__(self, bindir: Path):
        self.bindir = Path(bindir)
        self.folder: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="wm-postgres-"))
        run_as = _run_as()
        if run_as:
            os.chown(self.folder, run_as["user"], run_as["group"])
        data = self.folder / "data"
        init = subprocess.run([self.bindir / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                               "--locale=C", "--no-sync", "--no-instructions"],
                              capture_output=True, text=True, timeout=120, **run_as)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
        for attempt in range(3):  # another process may take the free port between the probe and the bind
            self.port = free_port()
            log = open(self.folder / "server.log", "ab")
            self.proc = subprocess.Popen(
                [self.bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(self.port), "-k", self.folder,
                 # A throwaway cluster: durability only costs time here.
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 # Each test's database keeps its pooled connections open until the session ends.
                 "-c", "max_connections=300"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **run_as)
            log.close()
            if self._wait_ready():
                return
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log()[-3000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop_process()
        return False

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        name = f"board_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')  # the name is made here, never from input
        return self.url(name)

    def stop_process(self) -> None:
        """End the server this object started (fast shutdown, then a kill if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        self.stop_process()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
