"""Print a Markdown summary of a world model's training and evaluation (for README.md / models/README.md).

    python scripts/model_card.py [models]

Reads only the artifacts' own files: each part's meta.json and history.jsonl, and the controller's
evaluation.json and state.json. Nothing is retyped by hand, so the summary always matches the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.storage.artifacts import read_history, read_json, read_meta  # noqa: E402
from core.models.controller import PARAMS_KEYS  # noqa: E402
from core.envs.laps import report_endings  # noqa: E402
from core.storage.checkpoints import training_seconds  # noqa: E402

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


def main(model_dir: Path) -> None:
    vae, rnn = read_meta(model_dir / "vae", "vae"), read_meta(model_dir / "rnn", "rnn")
    ctrl = read_meta(model_dir / "controller", "controller")
    state = read_json(model_dir / "controller" / "state.json", "evolution state")
    report_path = model_dir / "controller" / "evaluation.json"
    out = [f"World model in `{model_dir.name}/`", ""]
    if report_path.exists():
        rep = read_json(report_path, "evaluation")
        out += [f"- **Score: {rep['mean']:.1f} ± {rep['std']:.1f}** over {rep['episodes']} episodes of the "
                f"{rep['env']} env on tracks {rep['seeds'][0]}..{rep['seeds'][-1]} (min {rep['min']:.1f}, median "
                f"{rep['median']:.1f}, max {rep['max']:.1f}; {rep['solved_fraction']:.0%} of episodes ≥ 900)"]
        ended = report_endings(rep)  # counted from the per-track lists, not taken from the file
        if ended:
            out += ["- How its episodes ended: " + "; ".join(
                f"{e['ended']} {e['episodes']} (mean {e['mean_return']:.1f}, {e['mean_skipped']:.1f} tiles skipped)"
                for e in ended)]
    vm, rm = vae["metrics"], rnn["metrics"]
    records = read_history(model_dir / "controller" / "history.jsonl")
    vae_s, rnn_s = (_train_seconds(model_dir / part) for part in ("vae", "rnn"))
    out += [f"- V: z = {vae['config']['z_size']}, {vm.get('train_frames', 0):,} training frames from "
            f"{vm.get('train_episodes')} episodes, {_epochs(vm['epoch'])} in {vae_s / 60:.0f} min"
            f"{_fine_tuned(vae, vae_s)}; reconstruction "
            f"loss {_f(vm, 'r_loss', '.1f')} (train) / {_f(vm, 'val_r_loss', '.1f')} (held-out "
            f"{vm.get('heldout_episodes', 0)} episodes), KL {_f(vm, 'val_kl', '.1f')}",
            f"- M: LSTM {rnn['config']['hidden']}, {rnn['config']['mixtures']} Gaussians, {_epochs(rm['epoch'])} in "
            f"{rnn_s / 60:.0f} min (after encoding the frames once){_fine_tuned(rnn, rnn_s)}; MDN loss {_f(rm, 'mdn', '.3f')} (train) / "
            f"{_f(rm, 'val_mdn', '.3f')} (held-out), reward MSE {_f(rm, 'val_reward', '.3f')}, episode-end loss "
            f"{_f(rm, 'val_done', '.4f')}",
            _controller_line(state, ctrl["config"], records)] + _shipped_line(state) + [""]
    if records:
        out += ["Learning curve (fitness = mean return of a candidate over its training tracks):", ""]
        out += learning_curve(records) + [""]
    if report_path.exists():
        out += ["Scores on the evaluation tracks:", "", "```"] + histogram(rep["returns"]) + ["```", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models")
