# The World Models app: Streamlit on port 8501, with the shipped world model; rollouts, runs, the
# leaderboard and the weights cache live in the volume /data.
#
#   docker build -t world-models .
#   docker run -p 8501:8501 -v wm:/data world-models
#
# Without a container registry, build on a local Debian image (scripts/make-base-image.sh makes it):
#   docker build --build-arg BASE_IMAGE=wm-base:bookworm -t world-models .
# pip's index settings (a mirror, a proxy's index) come in as build args and stay out of the final image:
#   --build-arg PIP_INDEX_URL=... --build-arg PIP_EXTRA_INDEX_URL=... --build-arg PIP_TRUSTED_HOST=...
# Written for the classic builder too (Docker 20.10 without BuildKit): no RUN --mount, no heredocs.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: the virtual environment, then what the app never loads taken out of it -------------------
FROM ${BASE_IMAGE} AS build
# binutils for strip; tini to run the app as PID 1 (signals, orphaned worker processes).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils tini >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
# `python3 -m venv`: the python:3.11 images have /usr/local/bin/python3, Debian's has /usr/bin/python3.
# Then out (about 0.6 GB of 2.6 GB): C++ headers for building extensions (tensorflow/include alone is
# 287 MB), the packages' own test suites, and the static symbol tables (.symtab/.strtab) of TensorFlow's
# and Arrow's shared libraries; their dynamic symbols, which loading needs, stay (as in Debian's own
# packages). One step, so that the build cache holds the venv once. The imports at the end check that the
# stripped libraries still load.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q -r /tmp/requirements.txt \
 && cd /opt/venv/lib/python3*/site-packages \
 && rm -rf tensorflow/include pyarrow/include pyarrow/src \
 && find . -type d -name tests -prune -exec rm -rf {} + \
 && find tensorflow pyarrow -type f -name '*.so*' -exec strip --strip-unneeded {} + \
 && TF_CPP_MIN_LOG_LEVEL=2 /opt/venv/bin/python -c "import tensorflow, pyarrow, cv2, streamlit, gymnasium"

# --- the app ------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
 && mkdir /data && chown app:app /data
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/venv /opt/venv
# The code and the shipped model stay root's: the app never writes there.
COPY . /app
WORKDIR /app
# The env's numba kernels, compiled here once, so that no container compiles them on its first episode or
# race (7-8 s of a core, more on a busy machine). The cache is the app user's in case a new signature comes.
RUN NUMBA_CACHE_DIR=/opt/numba-cache SDL_VIDEODRIVER=dummy /opt/venv/bin/python -m core.envs.fast_car_racing \
 && chown -R app:app /opt/numba-cache
# PYTHONPATH: the app's jobs run `python -m core.app.jobs` in /data, and the CLI anywhere (the scripts
# install the project in editable mode for the same reason).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    WORLD_MODELS_ROOT=/data \
    WM_LEADERBOARD_DB=/data/leaderboard.sqlite3 \
    WORLD_MODELS_CACHE=/data/cache/weights \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    SDL_VIDEODRIVER=dummy \
    TF_CPP_MIN_LOG_LEVEL=2
USER app
VOLUME /data
EXPOSE 8501
# Python, not curl (the slim images have none). No --start-interval: Docker 20.10 does not know it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/bin/sh", "/app/scripts/docker-entrypoint.sh"]
CMD ["streamlit", "run", "Home.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
