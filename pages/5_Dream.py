"""Dream: M rolled forward on its own predictions and decoded by V, steered by you, by C, or side by side
with the real env on the same actions."""

import numpy as np
import streamlit as st

from core.app import app_data
from core.pipeline.dream import (
    DREAM_FPS,
    Dream,
    dream_captions,
    dream_records,
    gif,
    hstack,
    side_by_side,
    upscale,
    with_captions,
)
from core.storage.dataset import EpisodeError, load_episode
from pages import _ui


def episode_box_px(names: list[str]) -> int:
    """The Episode box's width in pixels: its longest name whole (about 7 px a character, 60 for the box's
    padding and arrow), within 200..340 so that the boxes beside it keep their room at 1366 px."""
    return min(340, max(200, 60 + 7 * max(map(len, names), default=0)))


st.title("Dream")
st.markdown("Here nothing is simulated: each frame is **imagined**. M predicts the next code z from the "
            "current one and the action, V decodes it into a picture, and the dream goes on from there. "
            "M also predicts the **reward** and whether the **episode ends**. The temperature makes M's "
            "choices bolder (higher) or safer (lower).")

choices = app_data.model_dirs(require=("vae", "rnn"))
if not choices:
    st.info("No world model to dream with yet: it needs V and M (train them on the Train VAE and Train RNN "
            "pages), or the shipped model in `models/`.")
    st.stop()

cols = st.columns([2, 2, 1])
model_dir = cols[0].selectbox("World model", choices, key="dream.model_dir",
                              help="The folder whose vae/ and rnn/ (and controller/) dream.")
tau = cols[1].slider("Temperature τ", 0.0, 2.0, 1.0, 0.05, key="dream.tau",
                     help="0: always M's most likely next frame. 1: as M learned it. Above 1: wilder dreams.")
fps = cols[2].selectbox("Frames a second", [20, DREAM_FPS, 50], index=1, key="dream.fps")
try:
    model = _ui.load_world_model(model_dir)
except Exception as e:  # an artifact that does not load: say what and where
    st.error(f"Could not load the world model in `{model_dir}/`: {e}")
    st.stop()


def play(frames: np.ndarray, captions: list[str], loop: bool) -> None:
    """Show a dream as an animation (an animated GIF plays in every browser at ``fps``; the rate is kept with
    it, since a GIF keeps the rate it was encoded at)."""
    st.session_state["dream.animation"] = {"gif": gif(with_captions(upscale(frames), captions), fps=fps, loop=loop),
                                           "fps": fps}


def new_dream(start: str, episode: str | None, step: int, seed: int) -> Dream:
    dream = Dream(model, tau=tau, seed=seed)
    if start == "real" and episode:
        try:
            dream.reset_from_episode(load_episode(episode), step)
        except EpisodeError as e:
            st.error(f"{e}. This dream starts from a random z instead; pick another episode for a real start.")
    st.session_state["dream"] = dream
    st.session_state["dream.key"] = (model_dir, id(model.w))
    play(dream.frames(), dream_captions(dream), loop=False)
    return dream


mode = st.segmented_control("Who drives", ["You", "The controller", "Real vs dream"], default="You",
                            key="dream.mode", required=True)
if model.controller_error:
    st.warning(f"The controller in `{model_dir}/` cannot drive these V and M ({model.controller_error}); you can "
               "steer the dream yourself, or let a random driver run it beside the real env.")
if mode == "The controller" and model.controller is None:
    if not model.controller_error:
        st.warning(f"`{model_dir}/` has no controller yet (evolve one on the Evolve page); you can steer yourself.")
    mode = "You"

if mode in ("You", "The controller"):
    episodes = app_data.episode_files(",".join(app_data.data_folders_found()))
    with st.container(horizontal=True, vertical_alignment="bottom"):
        start = st.radio("Start from", ["real", "random"], horizontal=True, key="dream.start",
                         format_func=lambda s: {"real": "a real frame", "random": "a random z"}[s],
                         disabled=not episodes)
        episode, step = None, 0
        if start == "real" and episodes:
            episode = st.selectbox("Episode", [str(p) for p in episodes], key="dream.episode",
                                   format_func=app_data.episode_name,
                                   width=episode_box_px([app_data.episode_name(p) for p in episodes]))
            step = st.number_input("Frame", value=100, step=10, key="dream.frame",
                                   help="M first watches the real frames and actions up to here (0 to 1000).")
        seed = st.number_input("Seed", value=0, key="dream.seed", help="seed of M's sampling (0 to 1000000)")
        # The boxes have no min or max (the browser would keep a number out of range from the script): checked here.
        problem = _ui.number_problem("Frame", step, 0, 1000) or _ui.number_problem("Seed", seed, 0, 10**6)
        if st.button("New dream", icon=":material/refresh:", key="dream.new", disabled=problem is not None):
            new_dream(start if episodes else "random", episode, int(step), int(seed))
    if problem:
        st.error(problem)
    dream = st.session_state.get("dream")
    if dream is None or st.session_state.get("dream.key") != (model_dir, id(model.w)):  # other V or M: start over
        if problem:
            st.stop()
        dream = new_dream(start if episodes else "random", episode if episodes else None, int(step), int(seed))
    dream.tau = tau


@st.fragment
def drive() -> None:
    dream = st.session_state["dream"]
    latest = _ui.load_world_model(model_dir)  # cached; on every run, full or of this fragment: the newest C
    if latest.w is dream.model.w:
        dream.model = latest
    t0 = dream.t
    if mode == "You":
        chunk = st.slider("Steps a key press", 1, 50, 10, key="dream.chunk",
                          help="How far the dream runs on each press (at 50 steps a second of game time).")
        st.caption("Steer with the buttons or the arrow keys (Space coasts).")
        with st.container(horizontal=True):
            pressed = None
            for name, label, icon, key in (("left", "Left", ":material/arrow_back:", "Left"),
                                           ("gas", "Gas", ":material/arrow_upward:", "Up"),
                                           ("brake", "Brake", ":material/arrow_downward:", "Down"),
                                           ("right", "Right", ":material/arrow_forward:", "Right"),
                                           ("coast", "Coast", ":material/pause:", "Space")):
                if st.button(label, icon=icon, shortcut=key, key=f"dream.key.{name}", disabled=dream.ended):
                    pressed = name
        if pressed is not None:
            dream.run(chunk, pressed)
    else:
        steps = st.slider("Steps to dream", 25, 500, 150, 25, key="dream.steps")
        if st.button("Let the controller drive", icon=":material/smart_toy:", key="dream.controller",
                     disabled=dream.ended):
            dream.run(steps, "controller")
    if dream.t > t0:  # only the new steps are decoded and encoded
        start = max(0, t0)
        play(dream.frames(start), dream_captions(dream, start, actions=mode == "The controller"), loop=False)
    show(dream)


def show(dream: Dream) -> None:
    cols = st.columns([1, 1])
    with cols[0]:
        animation = st.session_state.get("dream.animation")
        if animation:
            caption = f"Dream step {dream.t} · τ = {dream.tau:g} · {animation['fps']} frames a second"
            if animation["fps"] != fps:
                caption += f" (the next steps and replays play at {fps})"
            st.image(animation["gif"], caption=caption)
        if dream.ended:
            st.warning(f"M predicts that the episode ends at step {dream.ended_at}. Start a new dream to go on.")
        if dream.t and st.button("Replay the whole dream", key="dream.replay", icon=":material/replay:"):
            play(dream.frames(), dream_captions(dream, actions=mode == "The controller"), loop=True)
            st.rerun(scope="fragment")
    with cols[1]:
        st.metric("Predicted return so far", f"{dream.total_reward:+.1f}", help="the sum of M's predicted rewards")
        if dream.t:
            # Charts take the browser longer to draw than a key press takes to dream: drawn only while open,
            # closed at first while you steer.
            controller = mode == "The controller"
            charts = st.expander("C's actions and M's predictions, step by step" if controller else
                                 "M's predictions, step by step", expanded=controller, key=f"dream.charts.{mode}",
                                 on_change="rerun")
            if charts.open:
                records = dream_records(dream)
                with charts:
                    if controller:
                        _ui.line_chart(records, "step", {"steer": "steer", "gas": "gas", "brake": "brake"},
                                       "The action taken at each step", key="dream.actions", height=240)
                    _ui.line_chart(records, "step", {"predicted reward": "reward",
                                                     "probability the episode ends": "end"},
                                   "What M predicts at each step", key="dream.predictions", height=240)


@st.fragment
def real_vs_dream() -> None:
    st.caption("The real env and the dream start from the same moment and get the same actions; the dream "
               "never sees another real frame. Where they part ways shows what M has not learned.")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        drivers = ["controller", "random"] if model.controller is not None else ["random"]
        driver = st.selectbox("Actions from", drivers, key="dream.sbs_driver",
                              format_func=lambda d: {"controller": "the controller, driving the real car",
                                                     "random": "smoothed random actions"}[d])
        seed = st.number_input("Track seed", value=1_000_000, key="dream.sbs_seed", help="0 to 10000000")
        steps = st.number_input("Steps", value=150, step=25, key="dream.sbs_steps", help="25 to 500")
        warmup = st.number_input("Warm-up steps", value=50, step=10, key="dream.sbs_warmup",
                                 help="M watches the real frames this long first (the camera zooms in at the "
                                      "start); 0 to 200.")
        problem = (_ui.number_problem("Track seed", seed, 0, 10**7) or _ui.number_problem("Steps", steps, 25, 500)
                   or _ui.number_problem("Warm-up steps", warmup, 0, 200))
        go = st.button("Run side by side", type="primary", icon=":material/compare:", key="dream.sbs_go",
                       disabled=problem is not None)
    if problem:
        st.error(problem)
    if go:
        with st.spinner("Driving the real env and dreaming…"):
            try:
                out = side_by_side(model, int(seed), int(steps), driver, int(warmup), tau)
            except ValueError as e:
                st.error(str(e))
                return
        real_total = np.concatenate([[0.0], np.cumsum(out["real_reward"])])
        dream_total = np.concatenate([[0.0], np.cumsum(out["dream_reward"])])
        captions = [f"t={t:4d}  real {r:+6.1f}  dream {d:+6.1f}" for t, (r, d) in enumerate(zip(real_total, dream_total))]
        frames = hstack(upscale(out["real"]), upscale(out["dream"]))
        st.session_state["dream.sbs"] = {"gif": gif(with_captions(frames, captions), fps=fps, loop=True),
                                         "real": real_total.tolist(), "dream": dream_total.tolist(),
                                         "done": out["done_prob"].tolist(), "model": (model_dir, id(model.w))}
    result = st.session_state.get("dream.sbs")
    if result and result.get("model") == (model_dir, id(model.w)):  # not another V and M's, nor reloaded ones
        cols = st.columns([1, 1])
        cols[0].image(result["gif"], caption="Left: the real env. Right: the dream, on the same actions.")
        with cols[1]:
            records = [{"step": i, "real": r, "dream": d} for i, (r, d) in enumerate(zip(result["real"], result["dream"]))]
            _ui.line_chart(records, "step", {"real return": "real", "dream's predicted return": "dream"},
                           "Return so far", key="dream.sbs_returns", height=260)
            ends = [i + 1 for i, p in enumerate(result["done"]) if p > 0.5]
            st.caption(f"M predicted the episode's end at step {ends[0]}." if ends else
                       "M did not predict an episode end.")


if mode == "Real vs dream":
    real_vs_dream()
else:
    drive()
