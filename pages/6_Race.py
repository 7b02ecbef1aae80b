"""Race: drive CarRacing with the keyboard, race the AI on the same track, or watch the AI drive.

The frames and the keys travel over the race WebSocket (core/race_server.py), not through reruns; this
page starts the race, shows the view component and, when the race is over, the scores and the video.
"""

import secrets
from pathlib import Path

import pandas as pd
import streamlit as st

from core.app import race
from core.app.leaderboard import NAME_MAX_CHARS, InvalidName
from core.app.race.server import component_data
from pages import _ui

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "race"
race_view = st.components.v2.component(
    "world_models_race_view",
    css=(ASSETS / "race.css").read_text(encoding="utf-8"),
    js=(ASSETS / "race.js").read_text(encoding="utf-8"),
)

st.title("Race")
registry = race.get_registry(_ui.leaderboard_url())
# The owner id also lives in the URL (?racer=...): a reload starts a new Streamlit session, and the id in
# the URL leads it back to the race it left, which waits paused, instead of stranding it. Only such a race:
# a link copied from a tab whose race is still connected gets an owner of its own (RaceRegistry.reclaim).
owner = (st.session_state.get("race_owner") or registry.reclaim(st.query_params.get("racer"))
         or secrets.token_hex(8))
st.session_state["race_owner"] = owner
if st.query_params.get("racer") != owner:
    st.query_params["racer"] = owner
session = registry.for_owner(owner)


def start(**race_args) -> None:
    try:
        with st.spinner("Loading the AI's world model…" if race_args["mode"] != "solo" else "Building the track…"):
            registry.create(owner=owner, **race_args)
    except race.RaceFull as e:
        st.warning(f"{e}. Races running now: {registry.active()}.", icon="⏳")
    except (race.RaceError, InvalidName) as e:
        st.error(str(e))
    else:
        st.rerun()


@st.fragment(run_every=1.0)
def wait_for_scores(token: str) -> None:
    current = registry.get(token)
    if current is None or (current.finished and current.results is not None and not current.ai_pending):
        st.rerun()
    elif current.finished and current.results is None:
        st.caption("Scoring: the server replays the runs on the track…")
    elif current.finished:
        st.caption("The AI drives its run on to the end on the server; its final score shows here in a moment…")


def show_versus(status: dict) -> None:
    rows = race.versus_ai(status)
    if not rows:
        return
    st.markdown("**You vs the AI**")
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "when": "", "you": st.column_config.NumberColumn("you", format="%.1f"),
        "ai": st.column_config.NumberColumn("the AI", format="%.1f"),
        "gap": st.column_config.NumberColumn("you − AI", format="%+.1f")})
    if len(rows) > 1:
        st.caption("You ended the race before the AI's run was over: the server drives the AI on to the end of "
                   "its own run (it drives the same way every time), and that whole run is the one on the "
                   "Leaderboard.")
    gap = rows[-1]["gap"]
    if gap is None:
        return
    if gap > 0:
        st.success(f"You beat the AI by {gap:.1f} points.")
    else:
        st.info(f"The AI wins this one by {-gap:.1f} points.")


def show_results(status: dict) -> None:
    if status["submit_error"]:
        st.error(status["submit_error"])
    if not status["results"]:
        if not status["submit_error"] and not status["ai_pending"]:
            st.info("Nothing to score: the race ended before anyone drove.")
        return
    results = pd.DataFrame(status["results"])
    st.dataframe(results[["label", "kind", "score", "tiles", "total_tiles", "skipped", "steps", "outcome",
                          "run_id"]],
                 hide_index=True, column_config={
                     "label": "driver", "score": st.column_config.NumberColumn(format="%.1f"),
                     "total_tiles": "of tiles", "skipped": "tiles skipped", "run_id": "leaderboard run"})
    for row in results[results["unrecorded"] != ""].itertuples():
        st.warning(f"{row.label}'s run is not on the Leaderboard: {row.unrecorded}.")
    if results["skipped"].gt(0).any():
        st.caption("A lap ends only once every tile is visited: a tile skipped on a corner keeps the car "
                   "driving to the time limit at -0.1 a step.")
    if session.mode == "vs_ai":
        show_versus(status)
    recorded = results[results["run_id"].notna()]
    if recorded.empty:
        return
    video_key = f"race_video_{session.race_id}"
    run_ids = [int(i) for i in recorded["run_id"]]
    if len(run_ids) > 1:  # both cars side by side, or one of them
        labels = dict(zip(run_ids, recorded["label"]))
        # A select box shows names as typed (a radio's labels are Markdown: "**x**" would show bold).
        pick = st.selectbox("Video of", [None, *run_ids], key=f"{video_key}_who",
                            format_func=lambda i: "Both, side by side" if i is None else labels[i])
        run_ids = run_ids if pick is None else [pick]
    if st.button("Render the race as a video (MP4)"):
        try:
            with st.spinner("Replaying the race and encoding the video…"):
                st.session_state[video_key] = {"runs": run_ids, "mp4": race.render_video(run_ids, registry.board())}
        except race.RaceError as e:
            st.error(str(e))
    video = st.session_state.get(video_key)
    if video is not None and video["runs"] == run_ids:  # a video of another choice waits for a new render
        st.video(video["mp4"], format="video/mp4")
        st.download_button("Download the MP4", video["mp4"], file_name=f"race-track-{session.seed}.mp4",
                           mime="video/mp4")


if session is None:
    st.caption("Drive CarRacing-v3 yourself, on a random track or one you pick, alone or against the world "
               "model's AI on the same track. Runs go to the Leaderboard, scored by the server: a run you end "
               f"yourself once it has lasted {registry.config.min_steps} steps "
               f"({registry.config.min_seconds:g} s), one that ends on its own always.")
    models = race.available_models()
    modes = list(race.MODES) if models else ["solo"]
    if models:
        race.warm_up(models[0])
    with st.form("race_setup"):
        mode = st.radio("Mode", modes, format_func=race.MODE_LABELS.get, horizontal=True)
        name = st.text_input("Your name (for the leaderboard)", max_chars=NAME_MAX_CHARS)
        track = st.radio("Track", ["Random track", "Pick a track"], horizontal=True)
        # No min or max: the box would keep a number out of range from the server (see _ui.config_form);
        # the race checks the track number itself and says what is wrong.
        seed = st.number_input("Track number (seed), when you pick one", value=0, step=1)
        model = st.selectbox("AI model", models) if models else None
        go = st.form_submit_button("Start race", type="primary")
    if not models:
        st.info("No trained world model was found (vae/, rnn/ and controller/ in models/, runs/, a folder of "
                "runs/ or a runs* folder such as runs2/), so only driving alone is on. Train one on the earlier "
                "pages to race the AI.")
    st.caption(f"Races running now: {registry.active()} of {registry.config.max_races}.")
    if go:
        start(player=name, mode=mode, model_dir=model,
              seed=race.random_seed() if track == "Random track" else int(seed))
else:
    status = session.status_dict()
    st.subheader(f"Track {session.seed} · {race.MODE_LABELS[session.mode]}")
    race_view(key=f"race_view_{session.id}", data=component_data(session), on_finished_change=lambda: None)

    if not session.finished or status["results"] is None:
        wait_for_scores(session.token)
    else:
        show_results(status)
        if status["ai_pending"]:
            wait_for_scores(session.token)

    again, new = st.columns(2)
    if again.button("Race again on this track", disabled=not session.finished):
        start(player=session.player, mode=session.mode, seed=session.seed, model_dir=session.config.model_dir)
    if new.button("New race" if session.finished else "Leave this race"):
        registry.close(session.token)
        st.rerun()
