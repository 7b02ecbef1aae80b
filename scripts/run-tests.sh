#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (Python packages, Chromium for the
# browser tests, PostgreSQL for the leaderboard's tests on PostgreSQL), then run the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and not root; the tests that need them will be skipped" >&2
    fi
fi
source scripts/python-env.sh
install_requirements requirements-dev.txt
export SDL_VIDEODRIVER=dummy TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m pytest "$@"
