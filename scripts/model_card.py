"""A world model's card, from the artifacts' own files: a summary, or the whole page docs/MODEL_CARD.md.

    python scripts/model_card.py [models]                                # the summary (models/README.md)
    python scripts/model_card.py models --write docs/MODEL_CARD.md       # the model card page

Reads only the artifacts' own files: each part's meta.json, config.json and history.jsonl, the controller's
evaluation.json and state.json, and the evaluation reports kept in ``<model>/reports/``. Nothing is retyped
by hand, so the card always matches the model.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from core.envs.laps import MEANINGS, report_endings
from core.models.controller import PARAMS_KEYS
from core.storage.artifacts import atomic_write_text, read_history, read_json, read_meta
from core.storage.checkpoints import training_seconds
from core.storage.reports import compare_reports, read_reports, verdict_words

ROOT = Path(__file__).resolve().parents[1]

HIST_BIN = 100  # width of a score bin in the histogram
BAR_CHARS = 40  # characters of the longest histogram bar


def histogram(returns: list[float]) -> list[str]:
    lo = int(min(returns) // HIST_BIN) * HIST_BIN
    hi = int(max(returns) // HIST_BIN) * HIST_BIN
    counts = {b: 0 for b in range(lo, hi + HIST_BIN, HIST_BIN)}
    for r in returns:
        counts[int(r // HIST_BIN) * HIST_BIN] += 1
    most = max(counts.values())
    return [f"{b:>5} to {b + HIST_BIN:<5} {'#' * max(1 if n else 0, round(n / most * BAR_CHARS)):<{BAR_CHARS}} {n}"
            for b, n in counts.items()]


def learning_curve(records: list[dict], rows: int = 15) -> list[str]:
    every = max(1, len(records) // rows)
    picked = [r for r in records if r["generation"] % every == 0 or r is records[-1]]
    lines = ["| generation | best | mean | periodic evaluation: mean / best candidate (/ averaged mean; shipped) |", "|---:|---:|---:|---|"]
    last_eval = "–"
    evals = {r["generation"]: r for r in records if "eval_mean_params" in r}
    for r in picked:
        past = [g for g in evals if g <= r["generation"]]
        if past:
            e = evals[max(past)]
            tracks = f", {e['eval_episodes']} tracks" if "eval_episodes" in e else ""
            average = f" / {e['eval_mean_average']:.0f}" if "eval_mean_average" in e else ""
            average += f"; shipped {e['eval_shipped']:.0f}" if "eval_shipped" in e else ""
            last_eval = (f"{e['eval_mean_params']:.0f} / {e['eval_best_candidate']:.0f}{average} "
                         f"(gen {max(past)}{tracks})")
        lines.append(f"| {r['generation']} | {r['best']:.0f} | {r['mean']:.0f} | {last_eval} |")
    return lines


def _rollouts(records: list[dict], latest: int) -> str:
    """Rollouts per candidate, by generation where the history ``records`` say (a resumed evolution may
    change them); otherwise the setting of the latest run."""
    known = [(r["generation"], r["rollouts"]) for r in records if "rollouts" in r]
    if not known:
        return f"{latest} rollouts in the latest run"
    spans: list[list[int]] = []  # [first generation, last generation, rollouts]
    for gen, n in known:
        if spans and spans[-1][2] == n:
            spans[-1][1] = gen
        else:
            spans.append([gen, gen, n])
    if len(spans) == 1 and len(known) == len(records):
        return f"{spans[0][2]} rollouts"
    return ", ".join(f"{n} rollouts in generations {a}-{b}" for a, b, n in spans)


def _f(metrics: dict, key: str, spec: str) -> str:
    """A metric formatted, or '–' where the run did not measure it (no held-out episodes, say)."""
    value = metrics.get(key)
    return "–" if value is None else format(value, spec)


def _epochs(n: float) -> str:
    return f"{n:.0f} epoch{'' if round(n) == 1 else 's'}"


def _train_seconds(part_dir: Path) -> float:
    seconds = training_seconds(part_dir)
    return float("nan") if seconds is None else seconds


def _fine_tuned(meta: dict, seconds: float) -> str:
    """What a V or M started ``--init-from`` trained weights adds up to: the earlier trainings (``lineage``,
    oldest first) and the wall time of all of them; empty for one trained from random weights."""
    lineage = meta.get("lineage") or []
    if not lineage:
        return ""
    known = [e for e in lineage if e.get("train_seconds") is not None]
    earlier = "; ".join(f"{e.get('epochs') or 0:.0f} epochs on {e.get('train_episodes')} episodes in "
                        f"{e['train_seconds'] / 60:.0f} min" for e in known)
    unknown = len(known) < len(lineage)
    if unknown:
        earlier = f"{earlier}; weights of unknown cost" if earlier else "weights of unknown cost"
    if seconds != seconds:  # this run's own time is not in its history (nan)
        return f", fine-tuned from weights trained before ({earlier})"
    total = seconds + sum(e["train_seconds"] for e in known)
    return f", fine-tuned from weights trained before ({earlier}); in all{' (known)' if unknown else ''} " \
           f"{total / 60:.0f} min"


def _controller_line(state: dict, config: dict, records: list[dict]) -> str:
    """C's training: this evolution, and the earlier ones it started from (``lineage``), with totals."""
    this = (f"{state['generation']} generations of CMA-ES (population {config['popsize']} x "
            f"{_rollouts(records, config['rollouts'])})")
    cost = (f"{state['episodes']:,} episodes, {state['env_steps']:,} env steps, "
            f"{state['train_seconds'] / 3600:.2f} h wall on {config['workers']} cores")
    best = ("the shipped controller was picked apart from its periodic evaluations (below)" if state.get("shipped")
            else f"best periodic evaluation {_f(state, 'best_eval', '.1f')}")
    lineage = state.get("lineage") or []
    if not lineage:
        return f"- C: {this}, {cost}; {best}"
    known = [e for e in lineage if "generation" in e]
    earlier = "; then ".join(f"{e['generation']} generations (population {e.get('popsize', '?')} x "
                             f"{e.get('rollouts', '?')} rollouts at its end, {e['episodes']:,} episodes, "
                             f"{e['train_seconds'] / 3600:.2f} h)" for e in known)
    if len(known) < len(lineage):
        earlier = "an evolution of unknown cost" + (f"; then {earlier}" if earlier else "")
    total = (f"{state['generation'] + sum(e['generation'] for e in known)} generations, "
             f"{state['episodes'] + sum(e['episodes'] for e in known):,} episodes, "
             f"{state['env_steps'] + sum(e['env_steps'] for e in known):,} env steps, "
             f"{(state['train_seconds'] + sum(e['train_seconds'] for e in known)) / 3600:.2f} h wall")
    return (f"- C: {earlier}; then, starting from that controller, {this}: {cost}; {best}. "
            f"In all{' (known)' if len(known) < len(lineage) else ''}: {total}")


def _shipped_line(state: dict) -> list[str]:
    """Where a controller picked outside the evolution's own evaluations (``export --params``) came from."""
    shipped = state.get("shipped")
    if not shipped:
        return []
    what = PARAMS_KEYS.get(shipped.get("key"), "parameters")
    when = f" of generation {shipped['generation']}" if "generation" in shipped else ""
    return [f"- Shipped controller: the {what}{when} from `{shipped['file']}` (parameters "
            f"{shipped['params_sha256'][:12]}), picked outside the evolution rather than by its periodic "
            f"evaluations; the evolution had reached generation {shipped.get('generation_of_run', '?')} and kept "
            f"another controller ({str(shipped.get('run_params_sha256'))[:12]})"]


def _read(model_dir: Path) -> dict:
    """Everything the card reads: each part's meta.json, the evolution's state and history, the evaluation."""
    report_path = model_dir / "controller" / "evaluation.json"
    return {"vae": read_meta(model_dir / "vae", "vae"), "rnn": read_meta(model_dir / "rnn", "rnn"),
            "ctrl": read_meta(model_dir / "controller", "controller"),
            "state": read_json(model_dir / "controller" / "state.json", "evolution state"),
            "records": read_history(model_dir / "controller" / "history.jsonl"),
            "report": read_json(report_path, "evaluation") if report_path.exists() else None,
            "vae_s": _train_seconds(model_dir / "vae"), "rnn_s": _train_seconds(model_dir / "rnn")}


def _score_line(rep: dict) -> str:
    return (f"- **Score: {rep['mean']:.1f} ± {rep['std']:.1f}** over {rep['episodes']} episodes of the "
            f"{rep['env']} env on tracks {rep['seeds'][0]}..{rep['seeds'][-1]} (min {rep['min']:.1f}, median "
            f"{rep['median']:.1f}, max {rep['max']:.1f}; {rep['solved_fraction']:.0%} of episodes ≥ 900)")


def _endings_line(ended: list[dict]) -> str:
    return "- How its episodes ended: " + "; ".join(
        f"{e['ended']} {e['episodes']} (mean {e['mean_return']:.1f}, {e['mean_skipped']:.1f} tiles skipped)"
        for e in ended)


def _part_lines(a: dict) -> list[str]:
    """The V, M, C (and shipped controller) lines of the summary."""
    vae, rnn, vae_s, rnn_s = a["vae"], a["rnn"], a["vae_s"], a["rnn_s"]
    vm, rm = vae["metrics"], rnn["metrics"]
    return [f"- V: z = {vae['config']['z_size']}, {vm.get('train_frames', 0):,} training frames from "
            f"{vm.get('train_episodes')} episodes, {_epochs(vm['epoch'])} in {vae_s / 60:.0f} min"
            f"{_fine_tuned(vae, vae_s)}; reconstruction "
            f"loss {_f(vm, 'r_loss', '.1f')} (train) / {_f(vm, 'val_r_loss', '.1f')} (held-out "
            f"{vm.get('heldout_episodes', 0)} episodes), KL {_f(vm, 'val_kl', '.1f')}",
            f"- M: LSTM {rnn['config']['hidden']}, {rnn['config']['mixtures']} Gaussians, {_epochs(rm['epoch'])} in "
            f"{rnn_s / 60:.0f} min (after encoding the frames once){_fine_tuned(rnn, rnn_s)}; MDN loss "
            f"{_f(rm, 'mdn', '.3f')} (train) / {_f(rm, 'val_mdn', '.3f')} (held-out), reward MSE "
            f"{_f(rm, 'val_reward', '.3f')}, episode-end loss {_f(rm, 'val_done', '.4f')}",
            _controller_line(a["state"], a["ctrl"]["config"], a["records"])] + _shipped_line(a["state"])


def summary(model_dir: Path) -> list[str]:
    """The summary (models/README.md quotes it): score, endings, V, M, C; learning curve; histogram."""
    a = _read(model_dir)
    rep, records = a["report"], a["records"]
    out = [f"World model in `{model_dir.name}/`", ""]
    if rep is not None:
        out.append(_score_line(rep))
        ended = report_endings(rep)  # counted from the per-track lists, not taken from the file
        if ended:
            out.append(_endings_line(ended))
    out += _part_lines(a) + [""]
    if records:
        out += ["Learning curve (fitness = mean return of a candidate over its training tracks):", ""]
        out += learning_curve(records) + [""]
    if rep is not None:
        out += ["Scores on the evaluation tracks:", "", "```"] + histogram(rep["returns"]) + ["```", ""]
    return out


def main(model_dir: Path) -> None:
    print("\n".join(summary(model_dir)))


# The model card page (docs/MODEL_CARD.md) ---------------------------------------------------------------

MB = 1e6  # bytes in a megabyte, as file sizes are quoted


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def _what_it_is(model_dir: Path, a: dict) -> list[str]:
    vae, rnn, ctrl, state = a["vae"]["config"], a["rnn"]["config"], a["ctrl"]["config"], a["state"]
    n_params = state.get("n_params", 3 * (ctrl["z_size"] + ctrl["hidden"] + 1))
    sizes = {part: _folder_bytes(model_dir / part) for part in ("vae", "rnn", "controller")}
    rows = [("V", "vae", f"ConvVAE: a 64x64x3 frame -> z of {vae['z_size']} (KL tolerance {vae['kl_tolerance']})"),
            ("M", "rnn", f"MDN-RNN: LSTM {rnn['hidden']} on [z, a], {rnn['mixtures']} Gaussians per dimension of "
                         "the next z, heads for the next reward and the episode's end"),
            ("C", "controller", f"a = squash(W [z, h] + b), {n_params} parameters, evolved with CMA-ES "
                                "(its CMA-ES state travels with it)")]
    out = ["## What it is", "",
           "A World Models agent (Ha & Schmidhuber, 2018) for Gymnasium's `CarRacing-v3`, the world model the app "
           f"loads by default. Each part is a folder of `{model_dir.name}/` with its weights, the `config.json` that "
           "built it, `meta.json` (library versions, seed, git commit, a hash of its training data, final metrics) "
           "and `history.jsonl` (its training curve).", "",
           "| part | what it is | files |", "|---|---|---:|"]
    out += [f"| {name} (`{part}/`) | {what} | {sizes[part] / MB:.1f} MB |" for name, part, what in rows]
    out += [f"| in all | | {sum(sizes.values()) / MB:.1f} MB |", ""]
    built = []
    for name, key in (("V", "vae"), ("M", "rnn"), ("C", "ctrl")):
        meta = a[key]
        versions = ", ".join(f"{k} {v}" for k, v in sorted((meta.get("versions") or {}).items()))
        built.append((name, versions, meta.get("git_commit") or "unknown", meta.get("seed")))
    if len({b[1] for b in built}) == 1:
        out.append(f"Trained with {built[0][1]}; " + ", ".join(
            f"{name} at commit {commit} (seed {seed})" for name, _, commit, seed in built) + ".")
    else:
        out += [f"- {name}: {versions}; commit {commit} (seed {seed})" for name, versions, commit, seed in built]
    return out + [""]


def _score_section(model_dir: Path, rep: dict) -> list[str]:
    out = ["## Score", "", _score_line(rep), ""]
    ended = report_endings(rep)
    if ended:
        out += ["How its episodes ended (counted from the report's per-track lists):", "",
                "| ended | meaning | episodes | mean return | tiles skipped (mean) |", "|---|---|---:|---:|---:|"]
        out += [f"| {e['ended']} | {MEANINGS.get(e['ended'], '')} | {e['episodes']} | {e['mean_return']:.1f} | "
                f"{e['mean_skipped']:.1f} |" for e in ended]
        out.append("")
    out += ["Scores on the evaluation tracks:", "", "```"] + histogram(rep["returns"]) + ["```", ""]
    steps = f" --max-steps {rep['max_steps']}" if "max_steps" in rep else ""
    out += ["Evaluation is deterministic for one agent on one CPU (the same tracks, controller and env). A "
            "track's return is chaotic in an action's last bits, so an agent whose arithmetic differs "
            "(another CPU's ONNX Runtime kernels, or the Keras agent that drove reports before the ONNX Runtime "
            "step) drives most tracks to other returns around the same mean. This drives the same tracks:",
            "", "```bash",
            f"python -m core evaluate --model-dir {model_dir.name} --env {rep['env']} --episodes {rep['episodes']} "
            f"--first-seed {rep['seeds'][0]}{steps} --out eval.json", "```", ""]
    return out


def _reports_by_controller(model_dir: Path, a: dict) -> list[tuple[str, dict[tuple[int, int], str]]]:
    """The evaluation reports kept with the model (``<model>/reports/*.json`` and the controller's own), by
    controller: [(name, {(first track, last track): path})], this model first, then the controllers it
    descends from (newest first, as ``lineage`` lists them), then any others by name. A report's name is its
    file's without the trailing ``-<first track>``; its path is given as ``<model folder name>/...``, as the
    page shows it (read it with ``_path``)."""
    own = a["report"]["params_sha256"] if a["report"] else None
    found: dict[str, tuple[str, dict]] = {}
    paths = [model_dir / "controller" / "evaluation.json"] if a["report"] else []
    paths += sorted((model_dir / "reports").glob("*.json"))
    for path in paths:
        shown = f"{model_dir.name}/{path.relative_to(model_dir).as_posix()}"
        rep = read_reports(str(path))
        sha = rep.get("params_sha256") or shown
        name = "this model" if sha == own else re.sub(r"-\d+$", "", path.stem).replace("-", " ")
        found.setdefault(sha, (name, {}))[1].setdefault((rep["seeds"][0], rep["seeds"][-1]), shown)
    order = [own] + [e.get("params_sha256") for e in reversed(a["state"].get("lineage") or [])]
    ranked = sorted(found, key=lambda sha: (order.index(sha) if sha in order else len(order), found[sha][0]))
    return [found[sha] for sha in ranked]


def _path(model_dir: Path, shown: str) -> str:
    """The file a path as the page shows it (``models/reports/x.json``) names, for reading."""
    return str(model_dir / shown.split("/", 1)[1])


def _tracks(rng: tuple[int, int]) -> str:
    return f"tracks {rng[0]}..{rng[1]}"


def _comparison_section(model_dir: Path, a: dict) -> list[str]:
    models = _reports_by_controller(model_dir, a)
    if len(models) < 2:
        return []
    own_name, own = models[0]
    eval_range = (a["report"]["seeds"][0], a["report"]["seeds"][-1])
    ranges = sorted(own)
    joined = {name: {rng: read_reports(_path(model_dir, shown)) for rng, shown in reports.items()}
              for name, reports in models}
    everywhere = [rng for rng in ranges if all(rng in reports for _, reports in models)]
    for name, reports in models:
        if len(everywhere) > 1:
            joined[name]["all"] = read_reports(",".join(_path(model_dir, reports[rng]) for rng in everywhere))

    def means(key: object) -> str:
        """Mean ± std of each controller on the tracks ``key``, this model's in bold."""
        values = [f"{joined[name][key]['mean']:.1f} ± {joined[name][key]['std']:.1f}" if key in joined[name]
                  else "–" for name, _ in models]
        return " | ".join([f"**{values[0]}**"] + values[1:])

    def laps(r: dict) -> str:  # reports from before endings were kept have no "ended"
        return str(sum(e == "lap finished" for e in r["ended"])) if isinstance(r.get("ended"), list) else "–"

    out = ["## Against earlier models", "",
           f"From the evaluation reports kept in `{model_dir.name}/reports/` (of the controllers this one was "
           "evolved from, and of this one on more tracks) and its own:", "",
           "| | " + " | ".join(name for name, _ in models) + " |", "|---|" + "---:|" * len(models)]
    for rng in ranges:
        label = _tracks(rng) + (" (the evaluation tracks)" if rng == eval_range else "")
        out.append(f"| {label} | {means(rng)} |")
        if rng == eval_range:
            per = {name: joined[name].get(rng) for name, _ in models}
            for row, fmt in (("median", lambda r: f"{r['median']:.1f}"),
                             ("episodes at 900 or more", lambda r: str(sum(x >= 900 for x in r["returns"]))),
                             (f"laps finished within the {a['report'].get('max_steps', 1000)} steps", laps),
                             ("episodes below 600", lambda r: str(sum(x < 600 for x in r["returns"]))),
                             ("minimum", lambda r: f"{r['min']:.1f}")):
                out.append(f"| {row} | " + " | ".join(fmt(r) if r else "–" for r in per.values()) + " |")
    if len(everywhere) > 1:
        n = len(joined[own_name]["all"]["seeds"])
        out.append(f"| all {n} tracks | {means('all')} |")
    out += ["", "Its lead over each, paired track by track (`python -m core compare`; ± one standard error):", ""]
    commands = []
    for name, reports in models[1:]:
        keys = [rng for rng in ranges if rng in reports] + (["all"] if "all" in joined[name] else [])
        for key in keys:
            res = compare_reports(joined[name][key], joined[own_name][key])
            where = f"all {res['tracks']} tracks" if key == "all" else _tracks(key)
            ci = res["ci95"]
            interval = f"95% interval {_signed(ci[0])} to {_signed(ci[1])}; " if ci else ""
            se = f" ± {res['lead_se']:.1f}" if res["lead_se"] is not None else ""
            out.append(f"- over the {name}, {where}: **{_signed(res['lead'])}{se}** ({interval}won {res['wins']}, "
                       f"lost {res['losses']}, tied {res['ties']}): {verdict_words(res, 'the ' + name)}")
        common = [rng for rng in ranges if rng in reports]
        commands.append(f"python -m core compare --baseline {','.join(reports[r] for r in common)} \\\n"
                        f"    --challenger {','.join(own[r] for r in common)}")
    out += ["", "```bash"] + commands + ["```", ""]
    return out


def _training_section(a: dict) -> list[str]:
    vae_s, rnn_s, state = a["vae_s"], a["rnn_s"], a["state"]
    parts, unknown = [], False
    for name, meta, seconds in (("V", a["vae"], vae_s), ("M", a["rnn"], rnn_s)):
        earlier = [e.get("train_seconds") for e in meta.get("lineage") or []]
        unknown |= math.isnan(seconds) or None in earlier
        parts.append((name, (0.0 if math.isnan(seconds) else seconds) + sum(t for t in earlier if t is not None)))
    lineage = state.get("lineage") or []
    unknown |= any("train_seconds" not in e for e in lineage)
    parts.append(("C", state["train_seconds"] + sum(e.get("train_seconds", 0.0) for e in lineage)))
    total = sum(t for _, t in parts)
    spent = ", ".join(f"{name} {t / 3600:.2f} h" if t >= 3600 else f"{name} {t / 60:.0f} min" for name, t in parts)
    out = ["## Training", ""] + _part_lines(a) + [
        f"- Training in all{' (known)' if unknown else ''}: {total / 3600:.1f} h wall ({spent}); collecting the "
        "episodes and encoding the frames for M are not counted", ""]
    if a["records"]:
        out += ["Learning curve of its last evolution (fitness = mean return of a candidate over its training "
                "tracks):", ""] + learning_curve(a["records"]) + [""]
    return out


def page(model_dir: Path) -> str:
    """The model card as a Markdown page (docs/MODEL_CARD.md): what it is, its score, how its episodes ended
    and their histogram, how it does against the earlier models whose reports it keeps, and its training."""
    a = _read(model_dir)
    out = [f"# Model card: the world model in `{model_dir.name}/`", "",
           "Generated by `scripts/model_card.py` from the model's own files (each part's `meta.json`, "
           "`config.json` and `history.jsonl`, the controller's `state.json` and `evaluation.json`, and the reports "
           f"in `{model_dir.name}/reports/`); regenerate it after an export rather than edit it:", "", "```bash",
           f"python scripts/model_card.py {model_dir.name} --write docs/MODEL_CARD.md", "```", "",
           "How it was trained, run by run and with what was not shipped: [TRAINING.md](TRAINING.md).", ""]
    out += _what_it_is(model_dir, a)
    if a["report"] is not None:
        out += _score_section(model_dir, a["report"]) + _comparison_section(model_dir, a)
    out += _training_section(a)
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A world model's card, from its own files.")
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "models"), help="default: models")
    parser.add_argument("--write", metavar="FILE", help="write the whole model card page there (docs/MODEL_CARD.md) "
                                                       "instead of printing the summary")
    args = parser.parse_args()
    if args.write:
        atomic_write_text(args.write, page(Path(args.model_dir)))
    else:
        main(Path(args.model_dir))
