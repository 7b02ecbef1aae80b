"""Leaderboard: every finished race, people and AI, scored by the server's replay of each action log."""

import pandas as pd
import streamlit as st

from core.app import race
from core.app.leaderboard import Leaderboard, LeaderboardError, human_vs_ai_figure
from pages import _ui

ALL_RUNS_SHOWN = 500  # rows of "All runs", best first



def unreadable(e: LeaderboardError) -> None:
    if e.backend == "sqlite":
        fix = "move the file aside (the app starts a new one) or point WM_LEADERBOARD_DB at another"
    else:
        fix = ("check that the database server is up and that its URL (`url` under `[connections.leaderboard]` "
               "in the app's secrets, or WM_LEADERBOARD_URL) is right")
    st.error(f"The leaderboard database `{e.where}` cannot be {e.action} ({e.reason}). Reload in a moment; "
             f"if it stays, {fix}.")
    st.stop()


st.title("Leaderboard")
try:
    board = Leaderboard(_ui.leaderboard_url())
    tracks = board.tracks()
except LeaderboardError as e:  # locked for long, unreachable, unreadable, or not a database
    unreadable(e)
if not tracks:
    st.info("No runs yet. Drive one on the Race page: it shows up here when it ends.")
    st.stop()

track_col, who_col, view_col = st.columns(3)
track = track_col.selectbox("Track", [None, *tracks], key="leaderboard.track",
                            format_func=lambda s: "All tracks" if s is None else f"Track {s}")
who = who_col.radio("Drivers", ["Everyone", "People", "AI"], horizontal=True, key="leaderboard.who")
view = view_col.radio("Show", ["Best per player", "All runs"], horizontal=True, key="leaderboard.view")
kind = {"Everyone": None, "People": "human", "AI": "ai"}[who]

try:  # a database damaged past its index reads its tracks and fails here
    runs = (board.best_per_player(track, kind) if view == "Best per player"
            else board.runs(track, kind, limit=ALL_RUNS_SHOWN))
    figure = human_vs_ai_figure(board, track)
except LeaderboardError as e:
    unreadable(e)
columns = {"player": "player", "kind": "driver", "model": "AI model", "seed": "track",
           "score": st.column_config.NumberColumn("score", format="%.1f"), "tiles": "tiles",
           "total_tiles": "of tiles", "steps": "steps", "outcome": "outcome",
           "created_at": st.column_config.DatetimeColumn("date (UTC)", format="YYYY-MM-DD HH:mm"),
           "id": "run", "runs": "runs"}
runs = runs.assign(created_at=pd.to_datetime(runs["created_at"], utc=True))
st.dataframe(runs[[c for c in columns if c in runs.columns]], column_config=columns, hide_index=True)
if view == "All runs" and len(runs) == ALL_RUNS_SHOWN:
    st.caption(f"The best {ALL_RUNS_SHOWN} runs; pick a track or a kind of driver to see others.")

if figure.data and any(len(trace.x) for trace in figure.data):
    st.plotly_chart(figure)
else:
    st.caption("The chart compares people and the AI on tracks both have driven; race the AI to fill it.")

with st.expander("Watch runs of one track as a video"):
    # A video shows runs of one track side by side: the track comes first, and the runs offered are its own
    # (no "Select all", at most two), so runs of two tracks can never be picked together.
    shown_tracks = [seed for seed in tracks if seed in set(runs["seed"].astype(int))]  # most raced first
    if track is None and len(shown_tracks) > 1:
        st.caption("A video shows runs of one track side by side: pick the track, then one or two of its runs.")
        video_track = st.selectbox("Track of the video", shown_tracks, key="leaderboard.video_track",
                                   format_func=lambda s: f"Track {s}")
    else:
        video_track = track if track is not None else next(iter(shown_tracks), None)
    of_track = runs[runs["seed"] == video_track]
    labels = {int(r.id): f"run {r.id} · {r.player} · {r.score:.1f}" for r in of_track.itertuples()}
    picked = st.multiselect(f"Runs of track {video_track} (one, or two side by side)" if labels
                            else "Runs (none with these filters)", list(labels),
                            max_selections=2, select_all=False, key=f"leaderboard.video_runs.{video_track}",
                            format_func=lambda i: labels.get(int(i), str(i)), disabled=not labels)
    picked = [int(i) for i in picked]
    if st.button("Render video", disabled=not picked):
        try:
            with st.spinner("Replaying and encoding…"):
                st.session_state["leaderboard_video"] = {"runs": picked, "mp4": race.render_video(picked, board)}
        except race.RaceError as e:
            st.error(str(e))
    video = st.session_state.get("leaderboard_video")
    if video is not None and video["runs"] == picked:  # a video of other runs waits for a new render
        st.video(video["mp4"], format="video/mp4")
        st.download_button("Download the MP4", video["mp4"], file_name="race.mp4", mime="video/mp4")
