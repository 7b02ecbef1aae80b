"""Evolve: CMA-ES searches C's parameters by driving the real env; evaluate the result and watch it drive."""

import dataclasses
from pathlib import Path

import streamlit as st

from core.app import app_data
from core.config import SHIPPED_MODEL_DIR, EvaluateConfig, EvolveConfig, RecordConfig
from core.metrics import EpisodeMetric
from core.metrics import EvolveMetric as E
from core.models.controller import PARAMS_KEYS
from core.pipeline.evolve import FIXED_ON_RESUME, average_against_mean, saved_settings
from core.storage.artifacts import ArtifactError
from core.storage.reports import verdict_words
from pages import _ui

st.title("Evolve (C)")
st.markdown("C is a single linear layer from [z, h] to steer, gas and brake: 867 numbers with the paper's "
            "sizes. **CMA-ES** proposes a population of parameter vectors, each drives the real CarRacing "
            "(seeing it through V and M), and the distribution moves towards the vectors that scored best. "
            "The fitness of a candidate is its mean return over a few tracks.")

shipped_view = st.container()  # the shipped C's evolution, read-only, while the run folder has no C of its own

with st.expander("Settings", expanded=True):
    config = _ui.config_form(EvolveConfig, "evolve")


def differing_settings(run_dir: str, values: dict) -> dict:
    """The settings the evolution in ``run_dir`` last ran with that ``values`` (the form's) change; the
    generations to reach are the form's to raise, never offered back."""
    saved = saved_settings(app_data.resolve(run_dir))
    return {k: v for k, v in saved.items() if k != "generations" and values.get(k) != v}


def use_settings() -> None:
    """Set the form to the saved settings of the folder its Run dir names now (the click may come with an
    edit of Run dir)."""
    try:
        differ = differing_settings(st.session_state["evolve.run_dir"], {})
    except ArtifactError:
        return  # the page says why on this rerun
    for name, value in differ.items():
        st.session_state[f"evolve.{name}"] = value


if config is not None:  # a resumable evolution keeps its settings on the command line; here the form says
    try:
        differ = differing_settings(config.run_dir, dataclasses.asdict(config))
    except ArtifactError as e:
        st.error(f"{e}")
        differ = {}
    if differ:
        fixed = [_ui.label(k) for k in FIXED_ON_RESUME if k in differ]
        st.info(f"The evolution in `{config.run_dir}/` last ran with other settings: "
                + ", ".join(f"{_ui.label(k)} {v}" for k, v in differ.items())
                + (f". {' and '.join(fixed)} must stay as saved to resume it (its CMA-ES state fixes "
                   f"{'them' if len(fixed) > 1 else 'it'}); the other settings can change: a resumed "
                   "evolution runs its next generations with this form's values." if fixed else
                   ". If you resume it, its next generations run with this form's values instead."))
        st.button("Use its saved settings", on_click=use_settings, key="evolve.use_saved",
                  icon=":material/settings_backup_restore:")
_ui.start_button("evolve", config, noun="evolution")
_ui.cluster_panel("evolve", config)
run_dir = (config or EvolveConfig()).run_dir


def show_evolution(model_dir: str, key: str) -> None:
    """Fitness per generation, how the training rollouts ended, and the gate's second tests."""
    records = app_data.history(Path(model_dir) / "controller")
    if not records:
        return
    _ui.line_chart(records, E.GENERATION, {"best": E.BEST, "mean": E.MEAN, "worst": E.WORST,
                                           "evaluated: CMA-ES mean": E.EVAL_MEAN_PARAMS,
                                           "evaluated: best candidate": E.EVAL_BEST_CANDIDATE,
                                           "evaluated: averaged mean": E.EVAL_MEAN_AVERAGE,
                                           "evaluated: start controller": E.EVAL_START,
                                           "evaluated: shipped controller": E.EVAL_SHIPPED,
                                           "second test: challenger": E.CONFIRM_CHALLENGER,
                                           "second test: shipped": E.CONFIRM_SHIPPED},
                   "Fitness per generation (mean return of a candidate)", "return", key=f"{key}.fitness")
    last = records[-1]
    laps = (f" {last[E.LAPS]:.0%} finished their lap, with {last[E.SKIPPED]:.1f} tiles skipped on average."
            if E.LAPS in last else "")
    st.caption(f"Generation {last[E.GENERATION]}: best {last[E.BEST]:.1f}, mean {last[E.MEAN]:.1f}, "
               f"step size sigma {last.get(E.SIGMA, float('nan')):.4f}; "
               f"{last.get(E.EARLY_STOPPED, 0):.0%} of rollouts were stopped early, having gone the "
               f"--early-stop-steps steps without a new tile.{laps}")
    if any(E.LAPS in r for r in records):
        shares = [{**r, "laps %": 100 * r[E.LAPS], "stopped early %": 100 * r.get(E.EARLY_STOPPED, 0)}
                  for r in records if E.LAPS in r]
        _ui.line_chart(shares, E.GENERATION, {"lap finished": "laps %", "stopped early": "stopped early %"},
                       "How the training rollouts ended (share per generation)", "% of rollouts",
                       key=f"{key}.endings")
    versus_mean = average_against_mean(records)
    if versus_mean:
        st.caption(f"The averaged mean against the mean on the same tracks: {versus_mean['lead']:+.1f} on average "
                   f"over {versus_mean['evaluations']} evaluation{'s' * (versus_mean['evaluations'] != 1)}, "
                   f"higher in {versus_mean['won']}.")
    tests = [r for r in records if E.CONFIRM_CHALLENGER in r]
    if tests:
        won = sum(r.get(E.CONFIRM_ACCEPTED, r[E.CONFIRM_CHALLENGER] > r[E.CONFIRM_SHIPPED]) for r in tests)
        st.caption(f"A controller that beats the shipped one in a periodic evaluation is tested again with it on "
                   f"{tests[-1].get(E.CONFIRM_EPISODES, '?')} other tracks, where it must lead by more than the "
                   f"noise of its lead: {won} of {len(tests)} challengers won there and were shipped.")


def live(snap) -> None:
    shown = _ui.shown_folders("evolve", snap, config, EvolveConfig)
    if not shown.shipped:  # the shipped C's evolution is shown at the top of the page
        show_evolution(shown.model_dir, key="evolve")


top = _ui.shown_folders("evolve", _ui.current_snapshot("evolve"), config, EvolveConfig)
if top.shipped:
    with shipped_view:
        _ui.shipped_note(top, "evolution", frames=False)
        show_evolution(top.model_dir, key="evolve.shipped")
        st.caption("Its published score, and your own evaluations of it, are under **Evaluate** below.")
        st.subheader("Train your own")
_ui.job_panel("evolve", live, unit="generations", stop_label="Stop evolution")

# --- evaluate -----------------------------------------------------------------------------------------

st.subheader("Evaluate")
st.caption("The controller drives tracks it never trained on (seeds from 1,000,000 up). The published "
           "protocol is 100 episodes of the stock env; fewer give a quicker, rougher estimate.")
choices = [d for d in dict.fromkeys([run_dir, *app_data.model_dirs()]) if app_data.world_model(d)["usable"]]
if not choices:
    st.caption(f"Needs V, M and C in `{run_dir}/` (C appears after the first generation).")
    model_dir = None
else:
    model_dir = st.selectbox("World model", choices, key="evolve.model_dir",
                             help="The folder whose vae/, rnn/ and controller/ drive.")
# The shipped model's folder is never exported over itself: its mean (if any) is not offered.
mean = app_data.cma_mean(model_dir) if model_dir and not app_data.is_shipped_model(model_dir) else None
DRIVEN = {"kept": "the kept controller (controller/params.npz)",
          "mean": "the CMA-ES mean of generation {generation} (controller/latest.npz)",
          "average": "the averaged mean of generation {generation} (controller/latest.npz)"}
drive = "kept" if mean is None else st.radio(
    "Controller", [c for c in DRIVEN if c != "average" or mean["average"]], horizontal=True,
    key="evaluate.controller", format_func=lambda c: DRIVEN[c].format(**mean),
    help="The kept controller is the one evolution's gate kept: the app drives it and export ships it. The "
         "mean of the search distribution often drives better than any single candidate, and its moving "
         "average over the last generations (the averaged mean) better still at a plateau, where the mean "
         "wanders with each generation's noisy selection; evolution keeps either only once it wins a periodic "
         "evaluation and a second test. Evaluating one copies it into the folder's outputs, so that a good "
         "score can be shipped with it (the command is shown after).")
with st.expander("Evaluation settings"):
    outputs = app_data.outputs_dir(model_dir or run_dir)
    eval_config = _ui.config_form(EvaluateConfig, "evaluate", defaults={"episodes": 20}, hide=("out", "params"),
                                  fixed={"model_dir": model_dir or run_dir, "out": str(outputs / "evaluation.json")})


def drive_a_copy(config: EvaluateConfig) -> EvaluateConfig:
    """The evaluation of a copy of the current CMA-ES mean or averaged mean, its report beside the copy."""
    copy = app_data.copy_cma_mean(config.model_dir, drive)
    return dataclasses.replace(config, params=str(copy), out=str(copy.with_suffix(".evaluation.json")))


if model_dir is not None:
    _ui.start_button("evaluate", eval_config, noun="evaluation", prepare=None if drive == "kept" else drive_a_copy)
    _ui.cluster_panel("evaluate", eval_config)


def report_line(report: dict) -> str:
    """A report's score, labelled with its episodes, env, tracks and date."""
    return (f"{report['episodes']} episodes, {report.get('env', '?')} env, {app_data.tracks(report)}, "
            f"{app_data.when(report.get('date'))}: **{report['mean']:.1f} ± {report['std']:.1f}** "
            f"(min {report['min']:.0f}, max {report['max']:.0f})")


def show_published(published: dict) -> None:
    """The shipped model's published score: no evaluation in the app replaces it."""
    earlier = (" · of an **earlier controller** than the one shipped now" if published["current"] is False else "")
    st.markdown(f"**Published score** · the shipped model (`{SHIPPED_MODEL_DIR}/controller/evaluation.json`), "
                f"{report_line(published)}{earlier}")
    _ui.histogram(published["returns"], "Returns on the evaluation tracks", "return", key="evaluate.published",
                  bins=20)
    if published.get("endings") and published["current"] is not False:
        _ui.endings_table(published["endings"], key="evaluate.published_endings")


def live_evaluation(snap) -> None:
    published = app_data.published_evaluation()
    left, right = st.columns(2) if published else (None, st.container())
    if left is not None:
        with left:
            show_published(published)
    with right:
        shown, driven, report = show_own_evaluation(snap)
    versus = app_data.against_shipped(report, shown) if report else None
    if versus:
        show_against_shipped(versus, f"the {PARAMS_KEYS[driven]}" if driven != "kept" else "this world model")
    if driven != "kept" and report:
        show_how_to_ship(report, shown)


def show_own_evaluation(snap) -> tuple[str | None, str, dict | None]:
    """The user's evaluation: of the running job, else the report of the world model of the job shown (else of
    the one picked above). Returns that world model, what drove (see DRIVEN) and the report (None while a job
    runs, or without one)."""
    job = snap["config"] if snap is not None and snap.get("config") else None
    running = snap is not None and snap["status"] in ("starting", "running", "stopping")
    # A running job shows what it drives; after it, the controller picked above is shown.
    driven = (app_data.snapshot_kind(job.get("params")) or "kept") if running else drive
    if running:
        returns = [r[EpisodeMetric.RETURN] for r in snap["history"] if EpisodeMetric.RETURN in r]
        of = (f", the {PARAMS_KEYS[driven]}" if driven != "kept" else
              f", controller `{job['params']}`" if job.get("params") else "")
        if returns:
            st.markdown(f"**Your evaluation** · `{job['model_dir']}/`{of}: {len(returns)} episodes so far")
            _ui.histogram(returns, "Returns on the evaluation tracks", "return", key="evaluate.returns", bins=20)
        return job["model_dir"], driven, None
    shown = job["model_dir"] if job else model_dir
    if not shown:
        return None, driven, None
    report = (app_data.own_evaluation(shown) if driven == "kept" else
              app_data.latest_mean_evaluation(shown, driven))
    where = app_data.relative(app_data.outputs_dir(shown) / "evaluation.json")
    if not report:
        st.markdown(f"**Your evaluation** · none of `{shown}/` yet"
                    + (f": its report will go to `{where}`, beside the published score, never over it."
                       if app_data.is_shipped_model(shown) else "."))
        return shown, driven, None
    what = (f"the {PARAMS_KEYS[driven]} of generation {report['params_source'].get('generation', '?')} in `{shown}/`"
            if driven != "kept" else f"`{shown}/`")
    source = f"**Your evaluation** · {what}, {report_line(report)}"
    if driven == "kept" and app_data.is_shipped_model(shown):
        source += f" · in `{where}` (the published score stays as shipped)"
    if report.get("current") is False:
        source += (" · of an **earlier controller**: evolution has replaced this folder's controller since. "
                   "Evaluate again to score the current one.")
    st.markdown(source)
    _ui.histogram(report["returns"], "Returns on the evaluation tracks", "return", key="evaluate.returns", bins=20)
    if report.get("endings"):
        _ui.endings_table(report["endings"], key="evaluate.endings")
    return shown, driven, report


def show_how_to_ship(report: dict, model_dir: str) -> None:
    """The command that ships an evaluated CMA-ES mean (or averaged mean) with its report, or why this report
    cannot."""
    if not report.get("complete"):
        st.caption("This report cannot ship this controller: its evaluation stopped part way. Starting it again "
                   "goes on where it stopped while the evolution is still at that generation; after that it "
                   "evaluates the newer one.")
        return
    if not report.get("held_out"):
        st.caption("This report cannot ship this controller: it was not driven on the evaluation tracks (from "
                   "1,000,000).")
        return
    st.markdown("To ship this controller with the V and M it drove on, as the app's default model (the published "
                "protocol is 100 episodes of the stock env; export refuses to copy a folder whose evolution is "
                "still running, so stop it first), run in the project folder:")
    st.code(app_data.export_command(model_dir, report["params_file"], report["out_path"]), language="bash")


def show_against_shipped(c: dict, label: str) -> None:
    lead = (f"**{c['lead']:+.1f}**" if c["ci95"] is None else
            f"**{c['lead']:+.1f} ± {c['lead_se']:.1f}** (lead ± standard error; 95% interval "
            f"{c['ci95'][0]:+.1f} to {c['ci95'][1]:+.1f})")
    st.markdown(f"Against the shipped model on the {c['tracks']} tracks both drove: {lead}, {c['wins']} tracks "
                f"won, {c['losses']} lost: **{verdict_words(c, 'the shipped model')}**.")
    _ui.paired_scatter(c["seeds"], c["baseline_returns"], c["challenger_returns"], "shipped model",
                       label, key="evaluate.paired")


_ui.job_panel("evaluate", live_evaluation, unit="episodes", stop_label="Stop evaluation")

# --- watch ----------------------------------------------------------------------------------------------

st.subheader("Watch an episode")
video_dir = app_data.outputs_dir(model_dir or run_dir)
with st.expander("Recording settings"):
    record_config = _ui.config_form(RecordConfig, "record", hide=("actions", "out", "fps"),
                                    fixed={"model_dir": model_dir or run_dir, "actions": "",
                                           "out": str(video_dir / "watch.mp4")})
if model_dir is not None:
    _ui.start_button("record", record_config, noun="recording")


def live_record(snap) -> None:
    if snap is None or snap["status"] != "done" or not snap["result"]:
        return
    out = Path(snap["result"].get("out", ""))
    if out.exists():
        st.video(str(out), autoplay=True, muted=True)
        st.caption(f"Track {snap['result'].get('seed')}: return {snap['result'].get('return', 0):.1f} in "
                   f"{snap['result'].get('steps')} steps.")


_ui.job_panel("record", live_record, unit="steps", stop_label="Stop recording")
