"""Collect: random-policy episodes of CarRacing, watched as they come in, browsed as small videos."""

import streamlit as st

from core.app import app_data
from core.config import CollectConfig
from core.metrics import EpisodeMetric
from pages import _ui

st.title("Collect")
st.markdown("The car drives with **smoothed random actions** (each of steer, gas and brake follows a slow "
            "random walk), which covers the road and the grass far better than pressing random keys. Every "
            "episode is saved with its 64x64 frames, actions, rewards and track seed; V and M learn from them.")

with st.expander("Settings", expanded=True):
    config = _ui.config_form(CollectConfig, "collect")
_ui.start_button("collect", config, noun="collecting")


def live(snap) -> None:
    shown = _ui.shown_config(snap, config, CollectConfig)
    data = app_data.data_summary(shown["out_dir"])
    cols = st.columns(4)
    cols[0].metric("Episodes", f"{data['episodes']} / {shown['episodes']}", help=f"in `{shown['out_dir']}`")
    cols[1].metric("Frames", f"{data['frames']:,}")
    cols[2].metric("Mean return", "–" if data["mean_return"] is None else f"{data['mean_return']:.1f}")
    last = snap["metrics"] if snap else {}
    if last.get(EpisodeMetric.RETURN) is not None:
        cols[3].metric("Last episode", f"{last[EpisodeMetric.RETURN]:.1f}",
                       help=f"track seed {last.get(EpisodeMetric.EPISODE)}, {last.get(EpisodeMetric.STEPS)} steps")
    if data["returns"]:
        _ui.histogram(data["returns"], "Returns of the collected episodes", "return", key="collect.returns")


_ui.job_panel("collect", live, unit="episodes", stop_label="Stop collecting")


@st.cache_data(show_spinner="Encoding the video…", max_entries=64)
def episode_video(path: str, version: float) -> bytes:
    return app_data.episode_video(path, scale=3)


st.subheader("Browse episodes")
folder = config.out_dir if config is not None else CollectConfig().out_dir
data = app_data.data_summary(folder)
entries = data["entries"]
if not entries:
    st.caption(f"No episodes in `{folder}` yet.")
else:
    per_row = 4
    first = st.number_input("First episode shown", value=0, step=per_row, key="collect.browse_first",
                            help=f"Episodes are listed by track seed; four are shown at a time (0 to "
                                 f"{len(entries) - 1}).")
    problem = _ui.number_problem("First episode shown", first, 0, len(entries) - 1)
    if problem:
        st.warning(problem)
    cols = st.columns(per_row)
    for col, entry in zip(cols, [] if problem else entries[first:first + per_row]):
        path = app_data.resolve(folder) / entry["file"]
        with col:
            try:
                st.video(episode_video(str(path), app_data.mtime(path)), loop=True, muted=True)
            except Exception as e:  # a corrupt file: say so and keep showing the others
                st.error(f"{entry['file']}: {e}")
            st.caption(f"track {entry['seed']} · {entry['steps']} steps · return {entry['return']:.1f}")
