"""Train RNN: M learns what comes next; loss curves and its one-step predictions against the real frames."""

from pathlib import Path

import numpy as np
import streamlit as st

from core.app import app_data
from core.config import RNNConfig
from core.metrics import RnnMetric, Training
from core.pipeline.dream import one_step_predictions
from core.storage.dataset import EpisodeError, load_episode
from pages import _ui

st.title("Train RNN (M)")
st.markdown("M is an LSTM with a **mixture density** output: from the code z of a frame and the action, it "
            "predicts a mixture of Gaussians over the next z (the **MDN** loss is its negative "
            "log-likelihood), plus the **reward** that follows and whether the episode **ends**. The frames "
            "are encoded by V once, then M trains on sequences of codes.")

shipped_view = st.container()  # the shipped M, read-only, while the run folder has no M of its own

with st.expander("Settings", expanded=True):
    config = _ui.config_form(RNNConfig, "rnn")
_ui.start_button("train-rnn", config, noun="training")


def show_losses(model_dir: str, key: str) -> None:
    records = app_data.history(Path(model_dir) / "rnn")
    if not records:
        return
    cols = st.columns(3)
    for col, (name, title) in zip(cols, ((RnnMetric.MDN, "MDN loss (NLL a dimension)"),
                                         (RnnMetric.REWARD, "Reward loss (squared error)"),
                                         (RnnMetric.DONE, "Episode-end loss (cross-entropy)"))):
        with col:
            _ui.line_chart(records, Training.STEP, {"train": name, "held out": name.held_out()}, title,
                           key=f"{key}.{name}")


def live(snap) -> None:
    if snap and snap["status"] in ("starting", "running") and RnnMetric.ENCODED in snap["metrics"]:
        m = snap["metrics"]
        st.caption(f"Encoding the episodes with V first: {m[RnnMetric.ENCODED]} of {m[RnnMetric.TO_ENCODE]}.")
    shown = _ui.shown_folders("train-rnn", snap, config, RNNConfig)
    if not shown.shipped:  # the shipped M is shown at the top of the page
        show_losses(shown.model_dir, key="rnn")


top = _ui.shown_folders("train-rnn", _ui.current_snapshot("train-rnn"), config, RNNConfig)
if top.shipped:
    with shipped_view:
        _ui.shipped_note(top, "M")
        show_losses(top.model_dir, key="rnn.shipped")
_ui.job_panel("train-rnn", live, unit="batches", stop_label="Stop training")


@st.cache_data(show_spinner=False, max_entries=16)
def predictions(run_dir: str, versions: tuple, episode: str, episode_version: float, start: int,
                count: int) -> dict:
    model = _ui.load_world_model(run_dir, with_controller=False)
    return one_step_predictions(model, load_episode(episode), start=start, count=count)


@st.cache_data(show_spinner=False, max_entries=1024)
def episode_steps(path: str, version: float) -> tuple[int, str | None]:
    """Steps of an episode file and, for one that does not load, why (read once per file version: the view
    refreshes every second while M trains)."""
    try:
        return load_episode(path).steps, None
    except EpisodeError as e:
        return 0, str(e)


job = _ui.current_job("train-rnn")
# While M trains, the view follows the job's folders (the form may have been reset by a reload since); the
# shipped model's V and M while the run folder has no M, the sample episode while no episodes are collected.
shown = _ui.shown_folders("train-rnn", job.snapshot() if job is not None and job.active else None, config, RNNConfig)
run_dir, data_dir = shown.model_dir, shown.data_dir


@st.fragment(run_every=_ui.POLL_SECONDS if job is not None and job.active else None)
def prediction_view() -> None:
    parts = app_data.world_model(run_dir)
    if parts["vae"] is None or parts["rnn"] is None:
        st.caption(f"Needs V and M in `{run_dir}/` (M appears at its first checkpoint).")
        return
    episodes = app_data.episode_files(data_dir)
    if not episodes:
        st.caption(f"No episodes in `{data_dir}` to predict on.")
        return
    cols = st.columns([2, 3])
    several = len({p.parent for p in episodes}) > 1  # several data folders may share file names
    labels = {app_data.relative(p) if several else p.name: p for p in episodes}
    name = cols[0].selectbox("Episode", list(labels), key="rnn.pred_episode")
    path = labels[name]
    steps, error = episode_steps(str(path), app_data.mtime(path))
    if error:
        st.error(f"{error}. Pick another episode.")
        return
    if steps <= 8:
        st.caption(f"`{name}` has {steps} steps, too few to predict 8 of them; pick a longer episode.")
        return
    start = cols[1].slider("From step", 0, steps - 8, min(200, steps - 8), key="rnn.pred_start")
    versions = (parts["vae"]["updated"], parts["rnn"]["updated"])
    try:
        out = predictions(run_dir, versions, str(path), app_data.mtime(path), int(start), 8)
    except Exception as e:  # M and V that do not fit together, a file being replaced: say so
        st.error(f"Could not predict with the model in `{run_dir}/`: {e}")
        return
    whose = f"V and M of `{run_dir}/`" + (", the shipped model, read-only" if shown.shipped else "")
    source = ", on the sample episode shipped with the app (no episodes are collected yet)" if shown.sample else ""
    st.image(app_data.grid([out["real_next"], out["recon_next"], out["predicted"]], scale=2),
             caption=f"Steps {out['steps'][0]}–{out['steps'][-1]}. Rows: real next frame · V's reconstruction · "
                     f"M's prediction ({whose}{source}).")
    rewards = " · ".join(f"{p:+.2f} ({r:+.2f})" for p, r in zip(out["pred_reward"], out["real_reward"]))
    st.caption(f"Predicted reward (real): {rewards}. Highest predicted end probability: "
               f"{np.max(out['done_prob']):.0%}.")


# Beside the shipped M's curves while it is shown (above the form), else below the job.
with shipped_view if top.shipped else st.container():
    st.subheader("One-step predictions")
    st.caption("M is fed the real past and asked for the next frame: its most likely next z, decoded by V, next "
               "to the real next frame and V's own reconstruction of it (the best M can do). Refreshes when the "
               "weights change.")
    prediction_view()
    if top.shipped:
        st.subheader("Train your own")
