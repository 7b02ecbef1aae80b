"""The Docker image, built and run for real: every page in Chromium through the container's port, a race
against the shipped AI started on the Race page and driven over the WebSocket by a Python client, the
player's run on the leaderboard in the volume and still there after a restart, and the app running as a
user other than root.

The image builds on ``$WM_DOCKER_BASE_IMAGE`` (default ``wm-base:bookworm``, made by
scripts/make-base-image.sh from this machine's apt mirror when missing, as root). pip inside the build
gets the package index settings this machine's pip uses (``pip config`` and ``PIP_*``), where they are
URLs a container can reach. The built image stays tagged ``world-models:test`` (and its build stage
``world-models:test-build``) for the next run, whose build is then cached; the container and the volume
are removed. Screenshots and the measured times go to
test-output/docker/.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.common import race_heartbeat, stop_process
from core.app.race import KEY_GAS, KEY_LEFT
from core.app.race.server import WS_PATH, decode_frame
from tests.browser.harness import BROWSER_MARKS, chromium_page, ready, shot
from tests.browser.test_pages_browser import PAGES, no_exceptions
from tests.browser.test_race_browser import goto, grid_cells, wait_status
from tests.conftest import ROOT

IMAGE = "world-models:test"
BUILD_STAGE = "world-models:test-build"  # the Dockerfile's build stage, tagged so that its cache is kept
BASE_IMAGE = os.environ.get("WM_DOCKER_BASE_IMAGE", "wm-base:bookworm")
OUT = ROOT / "test-output" / "docker"
PLAYER = "Docker racer"
TRACK = 4242
HEALTHY_TIMEOUT_S = 180  # seconds for `docker run` (or a restart) to report healthy
END_AFTER_STEPS = 300  # the client ends the race after this many steps (6 s at 50 a second): past the 250 a
# person's run ended early needs to reach the leaderboard (RaceConfig.min_steps)
RACE_TIMEOUT_S = 240  # seconds for that race (at 50 steps a second: a few; far slower on a busy machine)
RACE_STEPS = 400  # the container's races (WM_RACE_MAX_STEPS): the AI's run, driven on after the player ends the
# race, goes 100 steps past END_AFTER_STEPS rather than 700 to CarRacing's 1000

pytestmark = [pytest.mark.docker, *BROWSER_MARKS, pytest.mark.timeout(1800)]
TIMES: dict[str, float] = {}  # what the module measured, written to OUT / times.json


def docker(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _daemon_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker_daemon(tmp_path_factory):
    """A Docker daemon to talk to: the running one, else one started here (as root) and stopped after."""
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is missing (apt-get install -y docker.io)")
    if _daemon_answers():
        yield
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("no Docker daemon answers, and this user cannot start one (dockerd as root)")
    log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "w")
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _daemon_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"dockerd could not be started (see {log.name})")
            time.sleep(0.5)
        yield
    finally:
        stop_process(daemon, 30)
        log.close()


def pip_build_args() -> list[str]:
    """``--build-arg`` for the package index settings this machine's pip uses: index-url,
    extra-index-url and trusted-host from ``pip config`` and ``PIP_*``, keeping only http(s) URLs (a
    file:// index or a local folder is not reachable from inside the build); and the proxy variables."""
    settings: dict[str, str] = {}
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1]
        if name in ("index-url", "extra-index-url", "trusted-host"):
            settings[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "trusted-host"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            settings[name] = env
    args = []
    for name, value in settings.items():
        if name != "trusted-host":
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            args += ["--build-arg", f"PIP_{name.upper().replace('-', '_')}={value}"]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(var):
            args += ["--build-arg", f"{var}={os.environ[var]}"]
    return args


def image_id(ref: str) -> str | None:
    result = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


@pytest.fixture(scope="module")
def image(docker_daemon, tmp_path_factory) -> str:
    """``world-models:test`` built from the Dockerfile (cached layers reused), its build stage tagged
    ``world-models:test-build`` so the next build finds the venv in the cache; the images these tags
    pointed to before, if any, are removed."""
    if image_id(BASE_IMAGE) is None:
        if BASE_IMAGE != "wm-base:bookworm" or os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"the base image {BASE_IMAGE} is missing; make it with scripts/make-base-image.sh "
                        "(root, debootstrap) or pull one and set WM_DOCKER_BASE_IMAGE")
        made = subprocess.run(["bash", str(ROOT / "scripts" / "make-base-image.sh"), BASE_IMAGE],
                              capture_output=True, text=True, timeout=1200)
        assert made.returncode == 0, made.stderr[-3000:]
    before = {tag: image_id(tag) for tag in (BUILD_STAGE, IMAGE)}
    log = tmp_path_factory.mktemp("build") / "build.log"
    args = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *pip_build_args()]
    start = time.monotonic()
    with open(log, "w") as out:
        for target in (["--target", "build", "-t", BUILD_STAGE], ["-t", IMAGE]):
            # The build's steps share the host's network: a step container on Docker's bridge adds and removes a
            # network interface, and Chromium fails every request in flight when one changes
            # (net::ERR_NETWORK_CHANGED), in the browser tests that run beside this one.
            built = subprocess.run(["docker", "build", "--network", "host", *args, *target, str(ROOT)], stdout=out,
                                   stderr=subprocess.STDOUT, timeout=1500)
            assert built.returncode == 0, f"docker build failed:\n{log.read_text()[-5000:]}"
    TIMES["build_s"] = time.monotonic() - start
    TIMES["image_bytes"] = float(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    for tag, old in before.items():
        if old and old != image_id(tag):
            docker("image", "rm", old, check=False)  # still in use elsewhere: then it stays
    return IMAGE


def wait_healthy(container: str, since: float) -> float:
    """Seconds from ``since`` until Docker reports ``container`` healthy; fails with its log otherwise."""
    deadline = since + HEALTHY_TIMEOUT_S
    while True:
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - since
        if not state.get("Running") or health == "unhealthy" or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "60", container, check=False)
            pytest.fail(f"{container} is {state.get('Status')} / {health}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def container(image):
    """The image running with a fresh named volume at /data, published on 127.0.0.1 (a port Docker
    picks); yields its name. The container and the volume are removed afterwards."""
    name = f"wm-test-{secrets.token_hex(4)}"
    docker("volume", "create", name)
    try:
        start = time.monotonic()
        # The image's HEALTHCHECK runs its check every 10 s; run every second here (the same check), the
        # container is reported healthy about as soon as it is (a restart keeps the setting).
        docker("run", "-d", "--name", name, "-p", "127.0.0.1::8501", "-v", f"{name}:/data",
               "--health-interval", "1s", "-e", f"WM_RACE_MAX_STEPS={RACE_STEPS}", image)
        try:
            TIMES["run_to_healthy_s"] = wait_healthy(name, start)
            yield name
        finally:
            docker("rm", "-f", name, check=False)
    finally:
        docker("volume", "rm", name, check=False)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "times.json").write_text(json.dumps(TIMES, indent=1) + "\n")


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile", viewport={"width": 1280, "height": 1400}) as page:
        yield page


def app_url(name: str) -> str:
    """The app's URL on this machine (Docker may publish another port after a restart)."""
    host, port = docker("port", name, "8501/tcp").stdout.split()[0].rsplit(":", 1)
    assert host == "127.0.0.1", host  # published on loopback only
    return f"http://127.0.0.1:{port}/"


def in_container(name: str, *command: str) -> str:
    return docker("exec", name, *command).stdout.strip()


def leaderboard_rows(name: str) -> list[list]:
    """(player, kind, seed, steps) of every run in the volume's leaderboard, read inside the container."""
    script = ("import json, os, sqlite3; con = sqlite3.connect(os.environ['WM_LEADERBOARD_DB']); "
              "print(json.dumps(con.execute('SELECT player, kind, seed, steps FROM runs ORDER BY id').fetchall()))")
    return json.loads(in_container(name, "python3", "-c", script))


def test_the_app_runs_as_a_user_other_than_root_with_the_shipped_model_and_the_cli_in_reach(container):
    name = container
    assert in_container(name, "id", "-u") != "0"
    assert docker("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip() not in ("", "root", "0")
    # The volume had no models/: the entry point linked the image's own (the race test drives with it).
    assert in_container(name, "readlink", "/data/models") == "/app/models"
    # Nothing of the app is writable by it but the volume.
    assert in_container(name, "sh", "-c", "touch /app/x 2>/dev/null && echo writable || echo read-only") == "read-only"
    # The CLI runs in the data root, as the app's jobs do (python -m core.app.jobs there), and writes into it.
    docker("exec", "-w", "/data", name, "python3", "-m", "core", "collect", "--out-dir", "data/docker-check",
           "--episodes", "1", "--max-steps", "30", "--workers", "1", "--quiet", timeout=300)
    files = in_container(name, "ls", "/data/data/docker-check").split()
    assert "manifest.json" in files and sum(f.startswith("ep_") and f.endswith(".npz") for f in files) == 1, files


def test_every_page_renders_through_the_containers_port(container, page):
    url = app_url(container)
    for path, title in PAGES:
        page.goto(url + path)
        ready(page)
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        time.sleep(1.0)
        ready(page)
        no_exceptions(page, path or "home")
        shot(page, OUT, path or "home")


async def _drive(ws_url: str, token: str) -> dict:
    """Take the race over with ``token``, resume it, hold gas and left (circles: the car stays on the map), end the
    race after END_AFTER_STEPS steps and read frames until it is over; what arrived."""
    import websockets

    async with websockets.connect(ws_url, max_size=2**22, open_timeout=20) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        ready_msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert ready_msg["type"] == "ready", ready_msg
        await ws.send(json.dumps({"type": "resume"}))
        await ws.send(json.dumps({"type": "keys", "mask": KEY_GAS | KEY_LEFT, "seq": 1}))
        seen = {"ready": ready_msg["race"], "frames": 0, "pngs": 0, "steps": [], "acked": False}
        beats = asyncio.create_task(race_heartbeat(ws))  # "still here", as the page says, or the race pauses
        deadline = time.monotonic() + RACE_TIMEOUT_S
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(message, bytes), message  # text here is an error from the server
            meta, images = decode_frame(message)
            seen["frames"] += 1
            seen["pngs"] += sum(image[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
            seen["steps"].append(meta["step"])
            seen["acked"] |= meta["ack"] == 1
            seen["last"] = meta
            if meta["status"] == "running" and "running_at" not in seen:
                seen["running_at"], seen["running_step"] = time.monotonic(), meta["step"]
            if meta["status"] == "finished":
                beats.cancel()
                return seen
            if meta["step"] >= END_AFTER_STEPS and not seen.get("ended"):
                await ws.send(json.dumps({"type": "end"}))
                seen["ended"], seen["ended_at"], seen["ended_step"] = True, time.monotonic(), meta["step"]
        raise AssertionError(f"the race did not finish in {RACE_TIMEOUT_S} s: {seen.get('last')}")


def test_a_race_over_the_websocket_lands_on_the_leaderboard_in_the_volume_and_survives_a_restart(container, page):
    name = container
    url = app_url(name)
    # The Race page starts a race against the shipped AI; its view's socket says hello with the token.
    tokens: list[str] = []

    def on_socket(ws) -> None:
        def sent(payload) -> None:
            try:
                msg = json.loads(payload)
            except (TypeError, ValueError):
                return
            if isinstance(msg, dict) and msg.get("type") == "hello":
                tokens.append(msg["token"])
        ws.on("framesent", sent)

    page.on("websocket", on_socket)
    goto(page, url, "race")
    page.get_by_text("Race the AI", exact=True).click()
    page.get_by_label("Your name (for the leaderboard)").fill(PLAYER)
    page.get_by_text("Pick a track").click()
    seed = page.get_by_label("Track number (seed), when you pick one")
    seed.fill(str(TRACK))
    seed.press("Tab")
    page.get_by_role("button", name="Start race").click()
    wait_status(page, "countdown", timeout=60_000)
    deadline = time.monotonic() + 20
    while not tokens and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert tokens, "the race view never said hello on the race socket"

    # The page goes (its socket closes and the race waits, paused) and a Python client takes the race
    # over with the token: it resumes and drives. (Chromium drawing the race on this machine's cores would
    # slow the container's race down by half or more.)
    page.goto("about:blank")
    ws_url = url.replace("http://", "ws://").rstrip("/") + WS_PATH
    start = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # its own thread and event loop, apart from Playwright's
        seen = pool.submit(asyncio.run, _drive(ws_url, tokens[-1])).result(RACE_TIMEOUT_S + 60)
    TIMES["race_s"] = time.monotonic() - start
    TIMES["race_steps_per_s"] = ((seen["ended_step"] - seen["running_step"])
                                 / max(1e-9, seen["ended_at"] - seen["running_at"]))
    assert seen["ready"]["kinds"] == ["human", "ai"] and seen["ready"]["labels"] == [PLAYER, "AI"]
    assert seen["frames"] > 100 and seen["pngs"] == 2 * seen["frames"]
    assert seen["acked"] and seen["steps"] == sorted(seen["steps"])
    steps = seen["last"]["step"]
    assert END_AFTER_STEPS <= steps < RACE_STEPS and seen["last"]["status"] == "finished"
    assert seen["last"]["max_steps"] == RACE_STEPS
    assert [d["outcome"] for d in seen["last"]["drivers"]] == ["ended", "ended"]

    # The server replays the player's run into the volume's leaderboard, then drives the AI's car on to the end
    # of its own run in the background and records that too.
    deadline = time.monotonic() + 180
    while len(rows := leaderboard_rows(name)) < 2 and time.monotonic() < deadline:
        time.sleep(1.0)
    assert rows[0] == [PLAYER, "human", TRACK, steps], rows
    assert len(rows) == 2 and rows[1][:3] == ["AI", "ai", TRACK] and rows[1][3] > steps, rows
    goto(page, url, "leaderboard")
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=30_000)
    cells = grid_cells(page, PLAYER, str(TRACK))
    assert PLAYER in cells and str(TRACK) in cells, cells
    shot(page, OUT, "leaderboard")

    # A restart keeps it: the leaderboard lives in the volume.
    start = time.monotonic()
    docker("restart", name, timeout=180)
    TIMES["restart_to_healthy_s"] = wait_healthy(name, start)
    assert leaderboard_rows(name) == rows
    url = app_url(name)
    page.goto("about:blank")
    goto(page, url, "leaderboard")
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=60_000)
    cells = grid_cells(page, PLAYER, str(TRACK))
    assert PLAYER in cells and str(TRACK) in cells, cells
    no_exceptions(page, "leaderboard after a restart")
    shot(page, OUT, "leaderboard-after-restart")
