"""How evolve's gate keeps a controller: the same tracks every time against the scores the kept controller
was picked with, or fresh tracks that it drives too (``--fresh-tracks``). A simulation, not a measurement.

    python -m bench.bench_gate [--runs 2000] [--quick] [--out F.md]

A return is a controller's quality plus the noise of that controller on that track: independent, with
the standard deviation bench_selection measured at a plateau (117), and the same on every drive of the
same controller on the same track (evaluation is deterministic). Track difficulty is left out: both
gates compare controllers on the same tracks, where it cancels. Each periodic evaluation scores three
candidates (the CMA-ES mean, the best candidate, the averaged mean: qualities spread by 20 around the
mean's, which moves by ``climb`` per evaluation) on 8 tracks; the best challenges the kept controller,
as ``core.pipeline.evolve.challenge`` decides: it must beat the kept controller's 8-track score, then lead it on 24
other tracks by more than one standard error of the lead.

- fixed tracks: the kept controller's 8-track score is the one it was picked with, and its 24-track
  returns are those of the test it passed;
- fresh tracks: new tracks at every evaluation, driven by the kept controller too.

Reported, over many simulated evolutions of 40 evaluations (200 generations at --eval-every 5): the kept
controller's true quality at the end against the CMA-ES mean's, how often it was replaced, how many of
those replacements were by a worse controller, and the episodes the evaluations drove; and on fresh tracks
the same by ``--confirm-margin``, which trades replacements by worse controllers against lag.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

NOISE = 117.0  # sd of one return beyond the track's difficulty (bench_selection, at a plateau)
SPREAD = 20.0  # sd of the three evaluated candidates' quality around the CMA-ES mean's
EVAL_TRACKS, CONFIRM_TRACKS, CANDIDATES = 8, 24, 3
EVALUATIONS = 40
MARGIN = 1.0  # --confirm-margin
CLIMBS = (0.0, 1.0, 3.0)  # the CMA-ES mean's true gain per evaluation
MARGINS = (0.5, 1.0, 1.5, 2.0)  # --confirm-margin values compared on fresh tracks


def simulate(fresh: bool, climb: float, runs: int, rng: np.random.Generator, margin: float = MARGIN) -> dict:
    """One gate on ``runs`` simulated evolutions; returns its averages."""
    end_gap, replaced, worse, episodes = [], [], [], []
    for _ in range(runs):
        kept_q = 0.0
        kept_screen = kept_q + rng.normal(0, NOISE, EVAL_TRACKS).mean()  # its periodic score when it was picked
        kept_confirm = kept_q + rng.normal(0, NOISE, CONFIRM_TRACKS)  # its returns on the confirmation tracks
        n_replaced = n_worse = n_episodes = 0
        for j in range(1, EVALUATIONS + 1):
            mean_q = climb * j
            qualities = mean_q + rng.normal(0, SPREAD, CANDIDATES)
            screens = qualities + rng.normal(0, NOISE, (CANDIDATES, EVAL_TRACKS)).mean(axis=1)
            n_episodes += CANDIDATES * EVAL_TRACKS
            if fresh:  # the kept controller drives this evaluation's tracks; its confirmation tracks are new
                kept_screen = kept_q + rng.normal(0, NOISE, EVAL_TRACKS).mean()
                n_episodes += EVAL_TRACKS
            pick = int(np.argmax(screens))
            if screens[pick] <= kept_screen:
                continue
            if fresh:
                kept_confirm = kept_q + rng.normal(0, NOISE, CONFIRM_TRACKS)
                n_episodes += CONFIRM_TRACKS
            challenger = qualities[pick] + rng.normal(0, NOISE, CONFIRM_TRACKS)
            n_episodes += CONFIRM_TRACKS
            lead = challenger - kept_confirm
            if lead.mean() > margin * lead.std(ddof=1) / np.sqrt(CONFIRM_TRACKS):
                n_replaced += 1
                n_worse += qualities[pick] < kept_q
                kept_q, kept_screen, kept_confirm = qualities[pick], screens[pick], challenger
        end_gap.append(kept_q - climb * EVALUATIONS)
        replaced.append(n_replaced)
        worse.append(n_worse)
        episodes.append(n_episodes)
    return {"gap": float(np.mean(end_gap)), "gap_se": float(np.std(end_gap) / np.sqrt(runs)),
            "replaced": float(np.mean(replaced)), "worse": float(np.mean(worse)),
            "episodes": float(np.mean(episodes))}


def report(results: dict, margins: dict, runs: int, seconds: float) -> str:
    lines = ["## Keeping a controller: fixed or fresh evaluation tracks (simulation)", "",
             f"A simulation of evolve's gate (`python -m bench.bench_gate`; {runs} simulated evolutions of "
             f"{EVALUATIONS} periodic evaluations per cell, {seconds:.0f} s; deterministic, seed 0): returns are "
             f"quality + noise of sd {NOISE:.0f} per controller and track (bench_selection's plateau figure), "
             f"three candidates per {EVAL_TRACKS}-track evaluation with qualities spread by {SPREAD:.0f} around "
             f"the CMA-ES mean's, which climbs by the amount in the first column per evaluation; a challenger "
             f"must beat the kept controller's {EVAL_TRACKS}-track score, then lead it on {CONFIRM_TRACKS} "
             f"other tracks by more than {MARGIN:g} standard error.", "",
             "| the mean climbs per evaluation | tracks | kept controller against the mean at the end | "
             "replacements | of them by a worse controller | evaluation episodes |",
             "|---:|---|---:|---:|---:|---:|"]
    training = EVALUATIONS * 5 * 16 * 4
    for climb in CLIMBS:
        for fresh in (False, True):
            r = results[(climb, fresh)]
            lines.append(f"| {climb:g} | {'fresh' if fresh else 'fixed'} | {r['gap']:+.1f} ± {r['gap_se']:.1f} | "
                         f"{r['replaced']:.1f} | {r['worse']:.2f} | {r['episodes']:.0f} |")
    lines += ["", "On fixed tracks the kept controller's scores are the luckiest of many draws on those very "
              "tracks, so a challenger has to beat its luck as well as its quality; on fresh tracks it has to "
              "beat the kept controller as it drives today. For scale, the training itself drives "
              f"{training:,} episodes in those {EVALUATIONS} evaluations' 200 generations at population 16 x 4 "
              "rollouts. The kept controller does not feed back into the evolution (CMA-ES never sees it), so "
              "the gate only decides what is shipped; the model leaves out that the real candidates' spread "
              "and climb vary along a run.", "",
              "On fresh tracks, by `--confirm-margin` (kept controller against the mean at the end / "
              "replacements by a worse controller, per climb):", "",
              "| margin (standard errors) | " + " | ".join(f"climb {c:g}" for c in CLIMBS) + " |",
              "|---:|" + "---:|" * len(CLIMBS)]
    for margin in MARGINS:
        cells = [f"{margins[(margin, c)]['gap']:+.1f} / {margins[(margin, c)]['worse']:.2f}" for c in CLIMBS]
        lines.append(f"| {margin:g}{' (default)' if margin == MARGIN else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(runs: int) -> tuple[dict, dict, float]:
    """Both gates by climb, and fresh tracks by margin and climb."""
    rng = np.random.default_rng(0)
    started = time.monotonic()
    results = {(climb, fresh): simulate(fresh, climb, runs, rng) for climb in CLIMBS for fresh in (False, True)}
    margins = {(margin, climb): simulate(True, climb, runs, rng, margin) for margin in MARGINS for climb in CLIMBS}
    return results, margins, time.monotonic() - started


def run(quick: bool = False) -> str:
    return _report_of(300 if quick else 2000)


def _report_of(runs: int) -> str:
    results, margins, seconds = measure(runs)
    return report(results, margins, runs, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="simulated evolutions per cell")
    parser.add_argument("--quick", action="store_true", help="300 simulated evolutions per cell")
    parser.add_argument("--out", default="", help="also write the section to this Markdown file")
    args = parser.parse_args()
    if args.runs < 1:
        sys.exit("error: --runs must be at least 1")
    runs = 300 if args.quick else args.runs
    text = _report_of(runs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
