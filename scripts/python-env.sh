# Sourced by start-app.sh and run-tests.sh: picks the Python to install into and sets $PY.
#
# A Python that pip may install into (pyenv, conda, an active virtual environment) is used as it is.
# Where python3 is the system's own and refuses pip (Debian and Ubuntu: "externally-managed-environment",
# PEP 668), or site-packages is not writable, a virtual environment in .venv/ is made once and used.
# Override with WM_PYTHON=/path/to/python.

venv_python() {
    local dir="$1"
    if [ ! -x "$dir/bin/python" ]; then
        if ! python3 -m venv "$dir" 2>/dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                rm -rf "$dir"
                python3 -m venv "$dir"
            else
                echo "error: python3 cannot make a virtual environment; install python3-venv (apt-get install" \
                     "python3-venv) or set WM_PYTHON to a Python that pip may install into" >&2
                exit 1
            fi
        fi
        echo "note: made a virtual environment in $PWD/$dir (python3 here refuses pip installs); the app and" \
             "tests run from it: $PWD/$dir/bin/python" >&2
    fi
    PY="$dir/bin/python"
}

if [ -n "${WM_PYTHON:-}" ]; then
    PY="$WM_PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
elif python3 -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
in_venv = sys.prefix != sys.base_prefix
sys.exit(0 if (in_venv or not managed) and os.access(sysconfig.get_path("purelib"), os.W_OK) else 1)'; then
    PY=python3
else
    venv_python .venv
fi

# requirements file -> installed, plus this project in editable mode (so `import core` works from anywhere)
install_requirements() {
    "$PY" -m pip install -q --disable-pip-version-check -r "$1"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
}
