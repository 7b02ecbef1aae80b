"""World Models for CarRacing-v3: the app's entry point (``streamlit run Home.py``).

This file is read two ways. Streamlit runs it as ``__main__`` on every rerun: then it sets up the
navigation over pages/ and runs the chosen page. ``streamlit run`` also finds the ``app = st.App(...)``
assignment below (by reading the source) and has uvicorn import this file as the module ``Home``: then it
builds the ASGI app that serves Streamlit together with the race WebSocket, on the same port.
"""

from pathlib import Path

import streamlit as st

from core.app import app_data, race
from core.config import DEFAULT_DATA_DIR, DEFAULT_RUN_DIR, SHIPPED_MODEL_DIR
from core.machine import SMALL_MACHINE_ENV, small_machine
from core.metrics import EvolveMetric, RnnMetric, VaeMetric
from core.models.controller import PARAMS_KEYS

ICON = Path(__file__).parent / "assets" / "icon.png"
DIAGRAM = """
digraph world_models {
    rankdir=LR; bgcolor="transparent";
    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, color="#555555"];
    edge [fontname="Helvetica", fontsize=10, color="#666666"];
    env [label="CarRacing-v3\\nframe 96x96", fillcolor="#e8e8e8"];
    V [label="V  (vision)\\nconvolutional VAE\\n64x64 frame -> z", fillcolor="#cfe3ff"];
    M [label="M  (memory)\\nMDN-RNN, LSTM\\npredicts next z, reward, end", fillcolor="#ffe2c6"];
    C [label="C  (controller)\\nlinear, 867 numbers\\nevolved with CMA-ES", fillcolor="#d6f5d6"];
    env -> V [label="observation"];
    V -> C [label="z"];
    V -> M [label="z"];
    M -> C [label="h"];
    C -> env [label="action\\nsteer, gas, brake"];
    C -> M [label="action", style=dashed];
    M -> M [label="dream: next z", style=dashed, color="#d08030"];
}
"""


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def home() -> None:
    st.title("Do neural nets dream of fast cars?")
    st.markdown(
        "A **world model** (Ha & Schmidhuber, 2018) learns to drive in three parts. **V**, a variational "
        "autoencoder, squeezes each frame into a short code *z*. **M**, a recurrent network, learns what "
        "comes next: from *z* and the action it predicts the next *z*, the reward and whether the episode "
        "ends, so it can **dream** whole drives. **C**, a tiny linear controller, picks the action from *z* "
        "and M's memory *h*; it is evolved with CMA-ES. Collect data, train V and M, evolve C, then dream "
        "inside the model and race the AI yourself.")
    st.graphviz_chart(DIAGRAM)

    st.subheader("What exists")
    from pages import _ui
    default = app_data.default_model_dir()
    writing = _ui.active_out_dirs()
    summaries = [app_data.data_summary(folder) for folder in app_data.data_folders_found()]
    summaries = [summary for summary in summaries if summary["episodes"]]
    cols = st.columns(4)
    with cols[0]:
        st.markdown("**Data**")
        if summaries:
            st.metric("Episodes", sum(summary["episodes"] for summary in summaries),
                      help="in " + ", ".join(app_data.relative(summary["path"]) for summary in summaries))
            for summary in summaries:
                folder = app_data.relative(summary["path"])
                where = f"`{folder}`: " if len(summaries) > 1 or folder != DEFAULT_DATA_DIR else ""
                unlisted = (f" ({summary['unlisted']} not in its manifest yet: frames and returns are of the "
                            "others)" if summary["unlisted"] else "")
                st.caption(f"{where}{summary['episodes']} episodes{unlisted}, {summary['frames']:,} frames · mean "
                           f"return {_fmt(summary['mean_return'])} · {app_data.when(summary['updated'])}")
        else:
            st.caption(f"No episodes in `{DEFAULT_DATA_DIR}` yet: start on the Collect page.")
    for col, kind, title, metric in zip(cols[1:], ("vae", "rnn", "controller"), ("V (VAE)", "M (MDN-RNN)", "C (controller)"),
                                        ("val_r_loss", "val_mdn", "best_eval")):
        with col:
            st.markdown(f"**{title}**")
            folders = app_data.model_dirs(require=(kind,))
            for folder in folders:
                art = app_data.artifact(app_data.resolve(folder) / kind, kind, writing)
                m, cfg = art["metrics"], art["config"]
                if kind == "vae":
                    line = (f"z = {cfg.get('z_size', '?')} · held-out reconstruction loss "
                            f"{_fmt(m.get(VaeMetric.HELD_OUT_RECONSTRUCTION, m.get(VaeMetric.RECONSTRUCTION)))}")
                elif kind == "rnn":
                    mdn = m.get(RnnMetric.HELD_OUT_MDN, m.get(RnnMetric.MDN))
                    line = f"h = {cfg.get('hidden', '?')} · held-out MDN loss {_fmt(mdn, '.3f')}"
                else:
                    gens = m.get(EvolveMetric.GENERATION, 0)
                    line = f"{gens} generation{'' if gens == 1 else 's'} · best evaluation {_fmt(m.get('best_eval'))}"
                    if art["shipped"]:  # picked outside the evolution's own evaluations
                        picked = art["shipped"].get("generation")
                        what = PARAMS_KEYS.get(art["shipped"].get("key"), "controller")
                        line = (f"{gens} generation{'' if gens == 1 else 's'} · ships the {what}"
                                f"{f' of generation {picked}' if picked is not None else ''}, picked outside its evolution")
                # Training that was not started from the app (the command line) looks like a stopped run. The
                # shipped model is what it is: its evolution was exported before its last generation, by choice.
                state = ("shipped" if app_data.is_shipped_model(folder) else "training" if art["training"] else
                         "complete" if art["complete"] else "not finished")
                st.markdown(f"`{folder}/` · {state}" + (" · **loaded by default**" if folder == default else ""))
                st.caption(f"{line} · {app_data.when(art['created'])}")
            if not folders:
                st.caption("Not trained yet.")

    model = app_data.world_model(default)
    if small_machine():  # load the AI's weights now, before a job can run beside the load (core.machine)
        race.warm_up(default)
    report = model["evaluation"]
    if model["usable"]:
        shipped = "the shipped world model" if default == SHIPPED_MODEL_DIR else "your trained world model"
        score = ""
        if report and report["current"] is False:
            score = (f" Its controller has been evolved further since its last evaluation, so that score "
                     f"({report['mean']:.0f} ± {report['std']:.0f} over {report['episodes']} tracks, "
                     f"{app_data.when(report.get('date'))}) belongs to an earlier controller; evaluate the "
                     "current one on the Evolve page.")
        elif report:
            planned = (report.get("config") or {}).get("episodes")
            stopped = (f"; an evaluation stopped after {report['episodes']} of {planned} tracks"
                       if report.get("complete") is False and planned else "")
            score = (f" It scored **{report['mean']:.0f} ± {report['std']:.0f}** over {report['episodes']} "
                     f"evaluation tracks ({report.get('env', '?')} env, {app_data.when(report.get('date'))}"
                     f"{stopped}).")
        st.success(f"Dream and Race use {shipped} in `{default}/`.{score}")
        _how_it_learned(default, report)
    else:
        st.info(f"No complete world model yet (V, M and C in `{SHIPPED_MODEL_DIR}/` or `{DEFAULT_RUN_DIR}/`). "
                "Train one with the pages on the left, or from the command line: `python -m core --help`.")

    st.subheader("The pipeline")
    st.markdown(
        "1. **Collect**: drive with smoothed random actions and keep the frames, actions and rewards.\n"
        "2. **Train VAE**: learn V, frame to *z* and back.\n"
        "3. **Train RNN**: learn M on sequences of *z* and actions.\n"
        "4. **Evolve**: find C's 867 numbers with CMA-ES by driving the real environment; evaluate the best.\n"
        "5. **Dream**: roll M forward on its own predictions and watch what it imagines.\n"
        "6. **Race** the AI on the same track, and put your time on the **Leaderboard**.")
    st.caption("Every stage runs as a background job: it keeps going when you change page or reload, and "
               "resumes from its checkpoint after a stop.")
    if small_machine():
        st.caption(f"This app runs with the small-machine setting (`{SMALL_MACHINE_ENV}`): one job at a time, "
                   "each with one thread per math library, so that it fits a host with little memory.")


def _how_it_learned(model_dir: str, report: dict | None) -> None:
    """The default model's fitness per generation of CMA-ES, and its scores on the evaluation tracks."""
    from pages import _ui
    records = app_data.history(app_data.resolve(model_dir) / "controller")
    left, right = st.columns(2)
    with left:
        if records:
            _ui.line_chart(records, "generation", {"best": "best", "mean": "mean",
                                                   "evaluated: CMA-ES mean": "eval_mean_params",
                                                   "evaluated: best candidate": "eval_best_candidate",
                                                   "evaluated: averaged mean": "eval_mean_average",
                                                   "evaluated: shipped controller": "eval_shipped"},
                           "How C learned: fitness per generation", "return", key="home.fitness")
    with right:
        if report and report.get("returns"):
            whose = "An earlier controller's scores" if report["current"] is False else "Scores"
            _ui.histogram(report["returns"], f"{whose} on {report['episodes']} unseen tracks", "return",
                          key="home.returns", bins=20)
            if report.get("endings") and report["current"] is not False:
                _ui.endings_table(report["endings"], key="home.endings")


# The pages under Home, by section: (file, title, icon, url_path).
PAGES = {
    "Train": [
        ("pages/1_Collect.py", "Collect", ":material/sports_motorsports:", "collect"),
        ("pages/2_Train_VAE.py", "Train VAE", ":material/visibility:", "train_vae"),
        ("pages/3_Train_RNN.py", "Train RNN", ":material/memory:", "train_rnn"),
        ("pages/4_Evolve.py", "Evolve", ":material/genetics:", "evolve"),
    ],
    "Play": [
        ("pages/5_Dream.py", "Dream", ":material/bedtime:", "dream"),
        ("pages/6_Race.py", "Race", ":material/flag:", "race"),
        ("pages/7_Leaderboard.py", "Leaderboard", ":material/leaderboard:", "leaderboard"),
    ],
}


def navigation():
    pages = {"World Models": [st.Page(home, title="Home", icon=":material/home:", default=True)]}
    for section, entries in PAGES.items():
        pages[section] = [st.Page(file, title=title, icon=icon, url_path=url_path)
                          for file, title, icon, url_path in entries]
    return st.navigation(pages)


if __name__ == "__main__":  # a script run (Streamlit executes this file as __main__ on every rerun)
    # The car on its road, cut from a stock frame: a file served by the app itself (a ":material/...:" icon is
    # fetched by each browser from fonts.gstatic.com, which a closed network does not reach).
    st.set_page_config(page_title="World Models · CarRacing", page_icon=str(ICON), layout="wide")
    navigation().run()
elif __name__ != "__mp_main__":  # imported by uvicorn (not by a multiprocessing child re-running __main__)
    from streamlit.runtime.pages_manager import PagesManager
    # With a pages/ folder, a server's first script run would otherwise use the legacy pages/ discovery: a
    # first visit to /Evolve (the file's name) would run that page alone, without this file's navigation.
    PagesManager.uses_pages_directory = False
    from pathlib import Path

    from streamlit.file_util import get_static_dir

    from core.app.page_html import page_routes
    from core.app.race.server import race_routes
    url_paths = [url_path for entries in PAGES.values() for *_, url_path in entries]
    app = st.App(__file__, routes=race_routes() + page_routes(url_paths, Path(get_static_dir()) / "index.html"))
