#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (Python packages, Chromium for the
# browser tests), then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: chromium missing and not root; the browser tests will be skipped" >&2
    fi
fi
source scripts/python-env.sh
install_requirements requirements-dev.txt
export SDL_VIDEODRIVER=dummy TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m pytest "$@"
