"""What the pages share: the job registry, settings forms built from config metadata, the live job panel,
plots, and cached model loads. The page layer only: widgets in, one call into ``core``, results out."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import math
from typing import Any, Callable

import plotly.graph_objects as go
import streamlit as st

from core.app import app_data, jobs
from core.app.jobs import JobAlreadyRunning, JobConflict, JobRegistry
from core.config import DEFAULT_DATA_DIR, DEFAULT_RUN_DIR, SHIPPED_MODEL_DIR, ConfigError, from_dict, range_problem
from core.envs.laps import MEANINGS
from core.metrics import ENCODING, Training
from core.stages import STAGES, TRAINING_STAGES
from core.storage.artifacts import WEIGHT_FILES, ArtifactError

POLL_SECONDS = 1.0  # how often a running job's panel refreshes
IDLE_POLL_SECONDS = 5.0  # how often a page with no running job looks for one started elsewhere (another tab)


# --- leaderboard -------------------------------------------------------------------------------------


def leaderboard_url() -> str | None:
    """The leaderboard's database URL from the app's secrets: ``url`` under ``[connections.leaderboard]``, the
    shape ``st.connection("leaderboard", type="sql")`` reads. None without one: ``core.app.leaderboard`` then
    uses WM_LEADERBOARD_URL, WM_LEADERBOARD_DB or its SQLite file."""
    try:
        url = st.secrets.get("connections", {}).get("leaderboard", {}).get("url")
    except FileNotFoundError:  # no secrets file (StreamlitSecretNotFoundError), or one that does not parse
        return None
    url = str(url or "").strip()
    return url or None


# --- jobs --------------------------------------------------------------------------------------------


def registry() -> JobRegistry:
    """The process-wide job registry: every session and page sees the same jobs."""
    return jobs.shared_registry(app_data.jobs_dir(), app_data.data_root())


def current_job(stage: str):
    """The job a page shows: the stage's running job, else this session's last, else the latest."""
    reg = registry()
    return reg.active(stage) or reg.get(st.session_state.get(f"job.{stage}")) or reg.latest(stage)


def active_out_dirs() -> list[str]:
    """The artifact folders the app's running training jobs write (relative to the data root, as in their
    configs); an evaluation writes into a controller folder too, but does not change the controller."""
    return [job.out_dir for job in registry().jobs() if job.active and job.stage in TRAINING_STAGES]


def shown_config(snap: dict | None, config: Any, cls: type) -> dict:
    """The settings behind what a job panel shows: those of the job shown (the form may say something else,
    e.g. after a reload reset it to the defaults), else the form's, else the stage's defaults."""
    if snap is not None and snap.get("config"):
        return dict(snap["config"])
    return dataclasses.asdict(config if config is not None else cls())


def shown_folders(stage: str, snap: dict | None, config: Any, cls: type) -> app_data.Shown:
    """The folders a training page shows (``app_data.shown_folders``) for the settings of ``shown_config``:
    the run's own part, or the shipped model read-only; its episodes, or the app's sample frames."""
    settings = shown_config(snap, config, cls)
    return app_data.shown_folders(settings["run_dir"], settings.get("data_dir", DEFAULT_DATA_DIR),
                                  STAGES[stage].part, active_out_dirs())


def current_snapshot(stage: str) -> dict | None:
    """The snapshot of the job a page shows (``current_job``), or None."""
    job = current_job(stage)
    return job.snapshot() if job is not None else None


def shipped_note(shown: app_data.Shown, what: str, frames: bool = True) -> None:
    """Says that the page shows the shipped model, read-only, because the run folder has no ``what`` yet (and,
    with ``frames``, where the frames shown come from)."""
    why = ("" if shown.run_dir == shown.model_dir else f": `{shown.run_dir}/` has no {what} of its own yet")
    samples = app_data.SAMPLE_DATA_DIR.relative_to(app_data.CODE_ROOT)
    frames = (f" The frames are samples shipped with the app (`{samples}/`): no episodes are collected yet."
              if frames and shown.sample else "")
    st.info(f"**The shipped model, read-only** (`{shown.model_dir}/`){why}. Train your own with the form below, "
            f"in a run folder of your own: the page shows yours once its training starts.{frames}",
            icon=":material/visibility:")


def start_job(stage: str, config: Any) -> None:
    """Start ``stage`` with ``config`` and remember the job's id in this session; explain a refusal."""
    try:
        job = registry().start(stage, config)
    except JobConflict as e:
        st.warning(f"Not started: {e}.")
        page_link(e.job.stage, f"Go to the running {e.job.title} job")
        return
    except JobAlreadyRunning as e:
        st.warning(f"{e}. It is shown below; stop it first to start another.")
        page_link(e.job.stage, f"Go to the running {e.job.title} job")
        return
    except ConfigError as e:
        st.error(f"Check the settings: {e}")
        return
    st.session_state[f"job.{stage}"] = job.id
    st.session_state[f"job.{stage}.watching"] = job.id


def page_link(stage: str, label: str) -> None:
    try:
        st.page_link(STAGES[stage].page, label=label, icon=":material/arrow_forward:")
    except Exception:  # outside st.navigation (a page run on its own) there is no page to link to
        st.caption(f"{label}: the {STAGES[stage].title} page")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _encoding(record: dict) -> bool:
    """Whether a progress record is of M's first phase, encoding the episodes with V (counted in episodes)."""
    return record.get(Training.PHASE) == ENCODING


def _eta(snap: dict) -> str:
    """Time left at the pace of the current phase (encoding episodes and training batches go at other rates
    and count other things)."""
    hist = [r for r in snap["history"] if r.get("step")]
    if hist:
        hist = [r for r in hist if _encoding(r) == _encoding(hist[-1])]
    if len(hist) < 2 or not snap["total"]:
        return ""
    first, last = hist[0], hist[-1]
    rate = (last["step"] - first["step"]) / max(1e-6, last["time"] - first["time"])
    if rate <= 0:
        return ""
    return f" · about {_duration((snap['total'] - snap['step']) / rate)} left"


def job_status(snap: dict | None, unit: str = "steps") -> None:
    """Status, progress, error and log of a job snapshot."""
    if snap is None:
        st.caption("No job has run on this page yet.")
        return
    status, step, total = snap["status"], snap["step"], snap["total"]
    encoding = _encoding(snap["metrics"])
    where = (f"{step} of {total} {'episodes encoded' if encoding else unit}") if total else "starting"
    if status == "starting":
        st.progress(0.0, text=f"Job {snap['id']}: starting the worker process…")
    elif status in ("running", "stopping"):
        text = f"Job {snap['id']}: {where} · {_duration(snap['elapsed'])}{_eta(snap)}"
        if status == "stopping":
            text += " · stopping after the current step (a checkpoint is written first)"
        st.progress(snap["fraction"], text=text)
    elif status == "done":
        st.success(f"Job {snap['id']} finished: {where} in {_duration(snap['elapsed'])}.")
    elif status == "stopped" and encoding:
        st.info(f"Job {snap['id']} was stopped at {where}, before training began. Start it again with the "
                "same folder: it keeps the episodes encoded so far and encodes the rest first.")
    elif status == "stopped":
        st.info(f"Job {snap['id']} was stopped at {where}. Start it again with the same folder to resume "
                "from its checkpoint.")
    elif status == "interrupted":
        st.warning(f"Job {snap['id']} was interrupted at {where} when the server stopped. Start it again "
                   "with the same folder to resume from its checkpoint.")
    elif status == "failed":
        st.error(f"Job {snap['id']} failed: {snap['error']}")
        if snap.get("error_detail"):
            with st.expander("Technical details"):
                st.code(snap["error_detail"], language=None)
    if snap["log"]:
        with st.expander("Log"):
            st.code("\n".join(snap["log"][-60:]), language=None)


def job_panel(stage: str, live: Callable[[dict | None], None] | None = None, unit: str = "steps",
              stop_label: str = "Stop") -> None:
    """The job of ``stage`` with a Stop button, refreshed every second while it runs; ``live(snapshot)``
    draws the page's own live content (curves, pictures) inside the same refresh."""
    job = current_job(stage)
    running = job is not None and job.active

    @st.fragment(run_every=POLL_SECONDS if running else None)
    def panel() -> None:
        job = current_job(stage)
        snap = job.snapshot() if job is not None else None
        if snap is not None and job.active:
            if st.button(stop_label, key=f"stop.{stage}", icon=":material/stop:",
                         disabled=snap["cancel_requested"],
                         help="Stops at the next safe point; the run resumes from its checkpoint later."):
                job.cancel()
                snap = job.snapshot()
        job_status(snap, unit)
        if live is not None:
            live(snap)
        # The job ended while this panel was polling: rerun the whole page once to show the new artifacts
        # and stop polling.
        watching = st.session_state.get(f"job.{stage}.watching")
        if snap is not None and snap["status"] in ("starting", "running", "stopping"):
            st.session_state[f"job.{stage}.watching"] = snap["id"]
        elif watching is not None and snap is not None and watching == snap["id"]:
            st.session_state[f"job.{stage}.watching"] = None
            st.rerun()

    panel()
    if not running:
        watch_for_job(stage)


@st.fragment(run_every=IDLE_POLL_SECONDS)
def watch_for_job(stage: str) -> None:
    """Draws nothing; reruns the page once a job of ``stage`` is running that it did not show (started from
    another tab, or by another visitor), so that its panel, Stop button and live view appear."""
    if registry().active(stage) is not None:
        st.rerun()


# --- Ray cluster -------------------------------------------------------------------------------------


@st.cache_data(ttl=30, show_spinner="Asking the Ray cluster…")
def _cluster_summary(address: str) -> dict:
    from core.app.cluster_view import cluster_summary
    return cluster_summary(address)


def cluster_panel(stage: str, config: Any) -> None:
    """Where ``stage``'s episodes run when its form (or ``WM_RAY_ADDRESS``) names a Ray cluster: the cluster's
    nodes, CPUs and dashboard link, and the episodes an hour its running job reaches. Nothing for the local
    worker processes."""
    from core.app.cluster_view import episodes_per_hour
    from core.config import ray_address
    address = ray_address(config) if config is not None else ""
    if not address:
        return
    status = _cluster_summary(address)
    if "error" in status:
        st.warning(f"Ray cluster `{address}`: {status['error']}", icon=":material/cloud_off:")
        return
    job = current_job(stage)
    snap = job.snapshot() if job is not None and job.active else None
    on_it = snap is not None and (snap["config"].get("ray_address") or address) == address
    rate = episodes_per_hour(snap) if on_it else None
    dashboard = f" · [dashboard]({status['dashboard']})" if status["dashboard"] else ""
    reached = f" · **{rate:,.0f} episodes/hour** in the running job" if rate else ""
    st.caption(f":material/cloud: Episodes run on the Ray cluster `{address}`: {status['nodes']} "
               f"node{'s' * (status['nodes'] != 1)}, {status['cpus']} CPUs ({status['free_cpus']} free), one worker "
               f"per CPU{reached}{dashboard}.")


# --- settings ----------------------------------------------------------------------------------------


def label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _float_step(value: float) -> float:
    if value <= 0:
        return 0.01
    return 10.0 ** math.floor(math.log10(value))


def config_form(cls: type, prefix: str, defaults: dict | None = None, hide: tuple[str, ...] = (),
                columns: int = 3, fixed: dict | None = None):
    """Widgets for the fields of a stage config, built from their metadata (help, choices, range);
    returns the validated config, or None when a value is wrong (``start_button`` then says which).

    A number box gets no min or max: with them Streamlit's box never sends a typed number out of range to
    the server, and the script would go on with the last valid value while the box shows the typed one.
    Without them every typed number, and an emptied box (None), reaches the config's validator.
    ``defaults``: page defaults that differ from the dataclass's; ``hide``: fields left at their default;
    ``fixed``: values set by the page (not shown). Values survive page changes within the session.
    """
    defaults, fixed = dict(defaults or {}), dict(fixed or {})
    values: dict[str, Any] = {}
    shown = [f for f in dataclasses.fields(cls) if f.name not in hide and f.name not in fixed]
    cols = st.columns(columns)
    for i, f in enumerate(shown):
        key = f"{prefix}.{f.name}"
        default = defaults.get(f.name, f.default)
        if key not in st.session_state:
            st.session_state[key] = st.session_state.get(f"_keep.{key}", default)
        meta = f.metadata
        with cols[i % columns]:
            if meta.get("choices"):
                st.selectbox(label(f.name), list(meta["choices"]), key=key, help=meta.get("help"))
            elif isinstance(f.default, bool):
                st.checkbox(label(f.name), key=key, help=meta.get("help"))
            elif isinstance(f.default, int):
                st.number_input(label(f.name), value=None, step=1, key=key, help=_with_range(meta))
            elif isinstance(f.default, float):
                st.number_input(label(f.name), value=None, step=_float_step(float(default)), format="%g",
                                key=key, help=_with_range(meta))
            else:
                st.text_input(label(f.name), key=key, help=meta.get("help"))
        values[f.name] = st.session_state[key]
        st.session_state[f"_keep.{key}"] = values[f.name]
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif f.name in hide:
            values[f.name] = defaults.get(f.name, f.default)
    try:
        config, problem = from_dict(cls, values), None
    except ConfigError as e:
        config, problem = None, settings_problem(e)
    st.session_state[_problem_key(cls)] = problem  # for start_button, which shows it beside Start
    return config


def _problem_key(cls: type) -> str:
    return f"_problem.{cls.__name__}"


def settings_problem(e: ConfigError) -> str:
    """A config error as a form says it: the field by its label (``Episodes: -5 is too small: it must be at
    least 1``); a rule over several fields as the validator words it."""
    return str(e) if e.field is None else _said(label(e.field), e.value, e.problem)


def number_problem(name: str, value, minimum: float | None = None, maximum: float | None = None) -> str | None:
    """What is wrong with the value of the number box called ``name``, worded as the settings forms word
    it, or None when it is within ``minimum``..``maximum``. For the boxes outside the forms, which get no
    min or max either (see ``config_form``)."""
    problem = range_problem(value, minimum, maximum)
    return None if problem is None else _said(name, value, problem)


def _said(name: str, value, problem: str) -> str:
    return f"{name} {problem}" if value is None else f"{name}: {value!r} {problem}"


def _with_range(meta) -> str | None:
    """A number field's help text with its allowed range, which the box no longer enforces."""
    low, high = meta.get("min"), meta.get("max")
    if low is None and high is None:
        return meta.get("help")
    if low is None:
        allowed = f"at most {high}"
    elif high is None:
        allowed = f"greater than {low}" if meta.get("above_min") else f"at least {low}"
    else:
        allowed = f"{low} to {high}"
    return f"{meta.get('help')} (allowed: {allowed})"


def start_button(stage: str, config, noun: str | None = None, key: str | None = None,
                 prepare: Callable[[Any], Any] | None = None) -> None:
    """Start (or Resume, when an earlier run of the same folder stopped part way) ``stage``. Refuses a
    folder inside the shipped model, and says so when the folder is done already. ``prepare``, run on the
    click, returns the config to start (for what must happen then and not on every rerun, such as copying
    a file the job reads); an ArtifactError from it is shown. With no config (a wrong value in the form) it
    says what ``config_form`` found wrong and stays off."""
    problem = st.session_state.get(_problem_key(STAGES[stage].config))
    if config is None and problem:
        st.error(f"Check the settings: {problem}")
    values = dataclasses.asdict(config) if config is not None else None
    out = STAGES[stage].out_dir(values) if values is not None else None
    if STAGES[stage].go_on and out is not None and app_data.is_shipped_model(out):
        further = (f"to fine-tune the shipped {'V' if stage == 'train-vae' else 'M'}, give a new folder and set "
                   f"**Init from** to `{out}`" if stage in ("train-vae", "train-rnn") else
                   f"to train the shipped model further, copy it first (`cp -r {SHIPPED_MODEL_DIR} "
                   f"{DEFAULT_RUN_DIR}2`) and use the copy")
        st.error(f"`{out}` is inside `{SHIPPED_MODEL_DIR}/`, the shipped world model, which the app never "
                 f"changes. Pick another folder (`{DEFAULT_RUN_DIR}`, `{DEFAULT_RUN_DIR}2`, …); {further}.")
        values = config = None
    resume = app_data.resume_point(stage, values) if values is not None else None
    finished = resume is not None and resume["finished"]
    if finished:
        raise_field, folder_field = STAGES[stage].go_on
        if stage == "collect":
            done = f"`{out}` already holds {resume['done']} episodes, as many as asked for."
        elif stage == "evolve":
            done = f"The evolution in `{out}` has already run its {resume['done']} generations."
        else:
            epochs = resume["epochs"]
            done = (f"`{out}` is already trained: {resume['done']} of {resume['total']} batches, the {epochs} "
                    f"epoch{'' if epochs == 1 else 's'} it was set to; with the same data and batch settings, "
                    "starting it again adds nothing.")
        st.info(f"{done} To go on from there, raise **{raise_field}**. To start a new run from scratch, set "
                f"**{folder_field}** to another folder.")
    label = "Resume" if resume and not finished else "Start"
    noun = noun or STAGES[stage].title.lower()
    help_text = None
    if label == "Resume":
        help_text = (f"An earlier run stopped at {resume['done']} of {resume['total']} {resume['unit']}; "
                     "it continues from its checkpoint.")
        if resume["done"] >= resume["total"]:  # a finished training run, with more epochs asked for now
            help_text = (f"The run in `{out}` finished the {resume['epochs']} epochs it was set to; it continues "
                         f"from its checkpoint to {values['epochs']}.")
    if st.button(f"{label} {noun}", key=key or f"start.{stage}", type="primary", icon=":material/play_arrow:",
                 disabled=config is None or (finished and stage in ("collect", "evolve")), help=help_text):
        if prepare is not None:
            try:
                config = prepare(config)
            except ArtifactError as e:
                st.error(str(e))
                return
        start_job(stage, config)


# --- pictures and plots ------------------------------------------------------------------------------

SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")  # Plotly's D3 palette, cycled for more series


def line_chart(records: list[dict], x: str, series: dict[str, str], title: str, y_title: str = "",
               key: str | None = None, log_y: bool = False, height: int = 300) -> None:
    """Plotly lines of ``records`` (dicts): ``series`` maps a legend label to a record key."""
    fig = go.Figure()
    all_x, all_y = [], []
    for (label, field), color in zip(series.items(), itertools.cycle(SERIES_COLORS)):
        pts = [(r[x], r[field]) for r in records if r.get(field) is not None and r.get(x) is not None]
        if pts:
            xs, ys = zip(*pts)
            all_x += xs
            all_y += ys
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(pts) < 40 else "lines",
                                     name=label, line={"color": color}))
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis_title=x, yaxis_title=y_title, legend={"orientation": "h", "y": -0.25})
    if log_y:
        fig.update_yaxes(type="log")
    elif all_y and max(all_y) - min(all_y) < 1e-9:  # one value (a first generation): a range around it
        pad = max(1.0, abs(all_y[0]) * 0.1)
        fig.update_yaxes(range=[all_y[0] - pad, all_y[0] + pad])
    whole = all_x and all(isinstance(v, (int, float)) and float(v).is_integer() for v in all_x)
    if whole and max(all_x) - min(all_x) < 10:
        fig.update_xaxes(dtick=1)  # generations and epochs: no ticks between whole numbers
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


ACTION_BARS_CSS = """<style>
.wm-action { display: grid; grid-template-columns: 3.5em 1fr 3.2em; gap: 4px 8px; align-items: center;
             font-size: 0.85rem; max-width: 22rem; }
.wm-action-track { position: relative; height: 0.7rem; background: #eceff3; border-radius: 3px; }
.wm-action-track.centred::after { content: ""; position: absolute; left: 50%; top: -2px; bottom: -2px;
                                   border-left: 1px solid #7f7f7f; }
.wm-action-bar { position: absolute; top: 0; bottom: 0; border-radius: 3px; }
.wm-action-value { font-variant-numeric: tabular-nums; text-align: right; }
</style>"""
ACTION_COLORS = {"steer": SERIES_COLORS[0], "gas": SERIES_COLORS[2], "brake": SERIES_COLORS[3]}


def action_bars(action: dict[str, float]) -> None:
    """An action (``core.app.app_data.controller_action``) as three bars: steer from the middle (left is
    negative), gas and brake from the left. Plain HTML: no chart library to load on every slider move."""
    rows = []
    for name, value in action.items():
        if name == "steer":
            left, width, track = 50 + 50 * min(0.0, value), 50 * abs(value), "wm-action-track centred"
        else:
            left, width, track = 0.0, 100 * value, "wm-action-track"
        rows.append(f'<span>{name}</span><div class="{track}"><div class="wm-action-bar" data-action="{name}" '
                    f'data-value="{value:.3f}" style="left: {left:.1f}%; width: {width:.1f}%; '
                    f'background: {ACTION_COLORS.get(name, SERIES_COLORS[0])}"></div></div>'
                    f'<span class="wm-action-value">{value:+.2f}</span>')
    st.html(ACTION_BARS_CSS + f'<div class="wm-action">{"".join(rows)}</div>')


def histogram(values: list[float], title: str, x_title: str, key: str | None = None, bins: int = 30) -> None:
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, marker={"color": SERIES_COLORS[0]}))
    fig.update_layout(title=title, height=280, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=x_title,
                      yaxis_title="episodes", bargap=0.05)
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


def endings_table(endings: list[dict], key: str | None = None) -> None:
    """How a report's episodes ended (``core.envs.laps.endings`` rows): episodes, mean return, tiles skipped;
    four short columns, so that the table fits half of a 1366-pixel-wide page, and the meanings below it."""
    st.dataframe([{"how it ended": e["ended"], "episodes": e["episodes"], "mean return": round(e["mean_return"], 1),
                   "tiles skipped": round(e["mean_skipped"], 1)} for e in endings],
                 hide_index=True, key=key, width="stretch",
                 column_config={"tiles skipped": st.column_config.NumberColumn(
                     help="tiles of the lap left behind, mean per episode")})
    meanings = "; ".join(f"*{e['ended']}*: {MEANINGS[e['ended']]}" for e in endings if e["ended"] in MEANINGS)
    st.caption(f"{meanings}. An episode ends before the step limit only when every tile is visited (or the car "
               "leaves the playfield, -100): one tile skipped on a corner and the car drives on to the limit.")


def paired_scatter(seeds: list[int], base: list[float], other: list[float], base_name: str, other_name: str,
                   key: str | None = None) -> None:
    """One point per track: ``base`` return across, ``other`` up; above the diagonal the other one did better."""
    low, high = min(min(base), min(other)), max(max(base), max(other))
    fig = go.Figure([
        go.Scatter(x=[low, high], y=[low, high], mode="lines", name="equal", line={"color": "#7f7f7f", "dash": "dot"}),
        go.Scatter(x=base, y=other, mode="markers", name="tracks", marker={"color": SERIES_COLORS[0]},
                   text=[f"track {s}" for s in seeds], hovertemplate="%{text}: %{x:.1f} -> %{y:.1f}<extra></extra>")])
    fig.update_layout(title="Track by track", height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis_title=base_name, yaxis_title=other_name, showlegend=False)
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


# --- models, cached per file version -------------------------------------------------------------------


@contextlib.contextmanager
def _kept_out_of_gc():
    """Streamlit runs Python's full garbage collection after every script and fragment run, twice once Keras
    is loaded (``keras.backend.clear_session`` collects too). Over the ~400,000 objects of TensorFlow, Keras and
    a loaded model each collection costs about 0.2 s of CPU (0.6 s of waiting on a busy 2-core machine): most
    of what a slider move or a key press took. Loaded models live as long as the server, so once one is loaded
    everything alive is moved to the collector's permanent generation (``gc.freeze``) and is no longer scanned.
    Unfreezing first lets this one collection reclaim models dropped from the cache since the last load."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()


@st.cache_resource(show_spinner="Loading V…", max_entries=4)
def _vae(path: str, version: float):
    from core.models.vae import load_vae
    with _kept_out_of_gc():
        return load_vae(path)


def load_vae(vae_dir: str):
    """The VAE in ``vae_dir`` (reloaded when its weights change, e.g. at a training checkpoint)."""
    path = app_data.resolve(vae_dir)
    return _vae(str(path), app_data.mtime(path / WEIGHT_FILES["vae"]))


@st.cache_resource(show_spinner="Loading the world model…", max_entries=4)
def _world_model(path: str, versions: tuple):
    from core.pipeline.dream import WorldModel
    with _kept_out_of_gc():
        return WorldModel.load(path, with_controller=False)


@st.cache_resource(show_spinner=False, max_entries=16)
def _controller(path: str, version: float, z_size: int, hidden: int):
    from core.models.controller import load_controller
    return load_controller(path, z_size, hidden)


def load_controller(controller_dir: str, z_size: int, hidden: int):
    """The controller in ``controller_dir`` for a V of ``z_size`` and an M of ``hidden``, read again when its
    file changes; ArtifactError when there is none or it does not fit."""
    path = app_data.resolve(controller_dir)
    params = path / app_data.WEIGHT_FILES["controller"]
    return _controller(str(path), app_data.mtime(params), z_size, hidden)


def load_world_model(model_dir: str, with_controller: bool = True):
    """V and M of ``model_dir`` for dreams and predictions, reloaded when their weights change, and its C, read
    again when its file changes (an evolution rewrites it every generation; V and M stay loaded). A C that
    does not load leaves the model without one, ``controller_error`` saying why: V and M still dream."""
    path = app_data.resolve(model_dir)
    versions = tuple(app_data.mtime(path / part / app_data.WEIGHT_FILES[part]) for part in ("vae", "rnn"))
    model = _world_model(str(path), versions)
    params = path / "controller" / app_data.WEIGHT_FILES["controller"]
    if not with_controller or not params.exists():
        return model
    try:
        return model.with_controller(_controller(str(params.parent), app_data.mtime(params), model.z_size,
                                                 model.hidden))
    except ArtifactError as e:
        return model.with_controller(None, str(e))

