#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (Python packages, Chromium for the
# browser tests, PostgreSQL for the leaderboard's tests on PostgreSQL, Docker and debootstrap for the
# image's test), then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
{ command -v docker && command -v dockerd; } >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and not root; the tests that need them will be skipped" >&2
    fi
fi
# Docker for tests/test_docker.py (as root): Debian's daemon, started here when none answers and stopped
# at the end, and the local base image the test builds on (no container registry needed).
if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
    if ! docker info >/dev/null 2>&1; then
        dockerd >/var/log/dockerd.log 2>&1 &
        dockerd_pid=$!
        trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null || true' EXIT
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "note: the Docker daemon did not start (see /var/log/dockerd.log); the docker tests will be skipped" >&2
    elif ! docker image inspect wm-base:bookworm >/dev/null 2>&1; then
        bash scripts/make-base-image.sh >/dev/null \
            || echo "note: the base image could not be made; tests/test_docker.py will say why" >&2
    fi
fi
source scripts/python-env.sh
install_requirements requirements-dev.txt
export SDL_VIDEODRIVER=dummy TF_CPP_MIN_LOG_LEVEL=2
# The fast env's numba kernels, compiled once while pytest starts: otherwise every process that steps the env
# before the first cache file is written compiles its own (7-8 s of a core each). A failure here shows in the
# env's tests.
"$PY" -m core.envs.fast_car_racing >/dev/null 2>&1 &
# One worker more than the cores (at most 6), one test file each (module fixtures such as a browser module's
# app server are made once): many tests wait on a server, a browser or a child process, and a third worker
# on 2 cores fills those waits (pytest 9.0 min with 3 workers, 10.5-12 with 2 and 10.6 with 4, in one
# session). WM_TEST_WORKERS=N sets the number, 0 runs everything in this process.
cores=$(nproc 2>/dev/null || echo 2)
workers=$(( cores + 1 > 6 ? 6 : cores + 1 ))
"$PY" -m pytest -n "${WM_TEST_WORKERS:-$workers}" --dist loadfile "$@"  # not exec: the trap above stops a Docker daemon started here
