#!/usr/bin/env bash
# Install the app's dependencies and start it on http://localhost:8501 (arguments go to streamlit).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh
install_requirements requirements.txt
export SDL_VIDEODRIVER=dummy TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m streamlit run Home.py "$@"
