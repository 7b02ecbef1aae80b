"""Train RNN: M learns what comes next; loss curves and its one-step predictions against the real frames."""

import numpy as np
import streamlit as st

from core import app_data
from core.config import RNNConfig
from core.dataset import EpisodeError, list_episodes, load_episode
from core.dream import one_step_predictions
from pages import _ui

st.title("Train RNN (M)")
st.markdown("M is an LSTM with a **mixture density** output: from the code z of a frame and the action, it "
            "predicts a mixture of Gaussians over the next z (the **MDN** loss is its negative "
            "log-likelihood), plus the **reward** that follows and whether the episode **ends**. The frames "
            "are encoded by V once, then M trains on sequences of codes.")

with st.expander("Settings", expanded=True):
    config = _ui.config_form(RNNConfig, "rnn")
_ui.start_button("train-rnn", config, noun="training")
run_dir = config.run_dir if config is not None else RNNConfig().run_dir
rnn_dir = str(app_data.resolve(run_dir) / "rnn")
data_dir = config.data_dir if config is not None else RNNConfig().data_dir


def live(snap) -> None:
    if snap and snap["status"] in ("starting", "running") and "encoded" in snap["metrics"]:
        m = snap["metrics"]
        st.caption(f"Encoding the episodes with V first: {m['encoded']} of {m['of']}.")
    records = app_data.history(rnn_dir)
    if not records:
        return
    cols = st.columns(3)
    for col, (name, title) in zip(cols, (("mdn", "MDN loss (negative log-likelihood a dimension)"),
                                         ("reward", "Reward loss (squared error)"),
                                         ("done", "Episode-end loss (cross-entropy)"))):
        with col:
            _ui.line_chart(records, "step", {"train": name, "held out": f"val_{name}"}, title, key=f"rnn.{name}")


_ui.job_panel("train-rnn", live, unit="batches", stop_label="Stop training")

st.subheader("One-step predictions")
st.caption("M is fed the real past and asked for the next frame: its most likely next z, decoded by V, next to "
           "the real next frame and V's own reconstruction of it (the best M can do). Refreshes when the "
           "weights change.")


@st.cache_data(show_spinner=False, max_entries=16)
def predictions(run_dir: str, versions: tuple, episode: str, start: int, count: int) -> dict:
    model = _ui.load_world_model(run_dir, with_controller=False)
    return one_step_predictions(model, load_episode(episode), start=start, count=count)


job = _ui.current_job("train-rnn")


@st.fragment(run_every=_ui.POLL_SECONDS if job is not None and job.active else None)
def prediction_view() -> None:
    parts = app_data.world_model(run_dir)
    if parts["vae"] is None or parts["rnn"] is None:
        st.caption(f"Needs V and M in `{run_dir}/` (M appears at its first checkpoint).")
        return
    episodes = list_episodes(app_data.resolve(data_dir))
    if not episodes:
        st.caption(f"No episodes in `{data_dir}` to predict on.")
        return
    cols = st.columns([2, 3])
    name = cols[0].selectbox("Episode", [p.name for p in episodes], key="rnn.pred_episode")
    path = next(p for p in episodes if p.name == name)
    try:
        steps = load_episode(path).steps
    except EpisodeError as e:
        st.error(f"{e}. Pick another episode.")
        return
    if steps <= 8:
        st.caption(f"`{name}` has {steps} steps, too few to predict 8 of them; pick a longer episode.")
        return
    start = cols[1].slider("From step", 0, steps - 8, min(200, steps - 8), key="rnn.pred_start")
    versions = (parts["vae"]["updated"], parts["rnn"]["updated"])
    try:
        out = predictions(run_dir, versions, str(path), int(start), 8)
    except Exception as e:  # M and V that do not fit together, a file being replaced: say so
        st.error(f"Could not predict with the model in `{run_dir}/`: {e}")
        return
    st.image(app_data.grid([out["real_next"], out["recon_next"], out["predicted"]], scale=2),
             caption=f"Steps {out['steps'][0]}–{out['steps'][-1]}. Rows: real next frame · V's reconstruction · "
                     "M's prediction.")
    rewards = " · ".join(f"{p:+.2f} ({r:+.2f})" for p, r in zip(out["pred_reward"], out["real_reward"]))
    st.caption(f"Predicted reward (real): {rewards}. Highest predicted end probability: "
               f"{np.max(out['done_prob']):.0%}.")


prediction_view()
