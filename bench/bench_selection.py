"""How well a few rollouts per candidate rank CMA-ES's candidates, measured at a saved evolution's state.

    python -m bench.bench_selection [--model-dir models] [--tracks 32] [--workers 2] [--quick] [--out F.md]
    python -m bench.run_all --slow      # the same, as a section of BENCHMARKS.md (18 min on 2 cores)

One generation's candidates (``es.ask()`` on a copy of the saved CMA-ES; nothing is written back) and the
CMA-ES mean each drive the same tracks to the end (fast env, no early stop, training-range seeds). From the
returns, candidates x tracks, the script reports:

- the variance of the returns in three parts: the candidates' own quality (what selection should see),
  the tracks (shared by every candidate of a generation, so common tracks cancel it) and candidate x track
  (the noise left in a k-track fitness, whose standard deviation shrinks as 1 / sqrt(k));
- for k = 1, 2, 4, 8, 16 tracks per candidate: k tracks are drawn (the same for every candidate, as
  ``evolve`` does) and the candidates ranked by their mean there, then scored on the other tracks:
  the rank correlation of the two, and how much of the k-track top half (CMA-ES's parents) is also the
  top half on the other tracks (0.5 is chance).

It answers how many rollouts per candidate a generation needs at that state of the evolution, which is
where the compute of a long evolution goes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info

TRACK_SEED_BASE = 700_000  # training-range tracks (evaluation uses 1,000,000 on)
K_VALUES = (1, 2, 4, 8, 16)
DRAWS = 4000  # random track subsets per k


def drive(model_dir: Path, tracks: int, workers: int, quick: bool) -> dict:
    """Returns of one generation's candidates and of the CMA-ES mean, on the same tracks."""
    from core.models.agent import load_world_model_weights
    from core.pipeline.evolve import _load_es
    from core.pipeline.rollout import RolloutPool, RolloutSettings
    controller = model_dir / "controller"
    es, state, _, _ = _load_es(controller)
    es = copy.deepcopy(es)
    candidates = [np.asarray(c, np.float32) for c in es.ask()]
    mean = np.asarray(es.mean, np.float32)
    seeds = [TRACK_SEED_BASE + i for i in range(tracks)]
    settings = RolloutSettings("fast", 100 if quick else 1000, early_stop=False)
    weights = load_world_model_weights(model_dir)
    everyone = candidates + [mean]
    started, done = time.monotonic(), 0
    returns = np.zeros((len(everyone), len(seeds)))
    with RolloutPool(weights, settings, workers) as pool:
        for i, result in enumerate(pool.map([(p, s) for p in everyone for s in seeds])):
            returns[i // len(seeds), i % len(seeds)] = result.total_reward
            done += 1
            if done % len(seeds) == 0:
                print(f"  {done}/{returns.size} episodes, {time.monotonic() - started:.0f} s", file=sys.stderr)
    return {"model_dir": str(model_dir), "returns": returns[:-1], "mean_returns": returns[-1], "seeds": seeds,
            "sigma": float(es.sigma),
            "generation": int(state["generation"]),
            "popsize": len(candidates), "seconds": time.monotonic() - started, "steps": settings.max_steps}


def mean_squares(r: np.ndarray) -> tuple[float, float, float]:
    """Two-way analysis of returns r (candidates x tracks, one episode each): the mean squares of the
    candidates, of the tracks and of the candidate x track residual."""
    c, t = r.shape
    grand, row, col = r.mean(), r.mean(1), r.mean(0)
    ms_cand = t * ((row - grand) ** 2).sum() / (c - 1)
    ms_track = c * ((col - grand) ** 2).sum() / (t - 1)
    ms_err = ((r - row[:, None] - col[None, :] + grand) ** 2).sum() / ((c - 1) * (t - 1))
    return float(ms_cand), float(ms_track), float(ms_err)


def variance_parts(r: np.ndarray) -> dict:
    """Standard deviations of the candidate effect, the track effect and the candidate x track residual."""
    c, t = r.shape
    ms_cand, ms_track, ms_err = mean_squares(r)
    return {"candidate": float(np.sqrt(max(ms_cand - ms_err, 0.0) / t)),
            "track": float(np.sqrt(max(ms_track - ms_err, 0.0) / c)),
            "noise": float(np.sqrt(ms_err))}


def f_ratio(r: np.ndarray) -> float:
    """Mean square of the candidates over the candidate x track mean square (1 when candidates are equal)."""
    ms_cand, _, ms_err = mean_squares(r)
    return ms_cand / ms_err


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)


def selection_quality(r: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> dict:
    """Rank correlation between candidates' k-track means and their means on the other tracks, and the share
    of the k-track top half that is also the top half on the other tracks (averages over ``draws``)."""
    c, t = r.shape
    half = c // 2
    corr, overlap = [], []
    for _ in range(draws):
        pick = rng.permutation(t)
        seen, other = r[:, pick[:k]].mean(1), r[:, pick[k:]].mean(1)
        a, b = _ranks(seen), _ranks(other)
        corr.append(np.corrcoef(a, b)[0, 1])
        top_seen, top_other = set(np.argsort(-seen)[:half]), set(np.argsort(-other)[:half])
        overlap.append(len(top_seen & top_other) / half)
    return {"k": k, "rank_corr": float(np.nanmean(corr)), "top_half": float(np.mean(overlap))}


def report(data: dict) -> str:
    r = data["returns"]
    parts = variance_parts(r)
    rng = np.random.default_rng(0)
    rows = [selection_quality(r, k, DRAWS, rng) for k in K_VALUES if k < r.shape[1]]
    folder = data.get("model_dir", "models")
    option = "" if folder == "models" else f" --model-dir {folder}"
    lines = [
        "## Ranking CMA-ES candidates from a few rollouts",
        "",
        machine_info(),
        "",
        f"{data['popsize']} candidates of one generation (`es.ask()` of the saved CMA-ES of `{folder}/`, "
        f"generation {data['generation']}, sigma {data['sigma']:.4f}) and the CMA-ES mean, each on the same "
        f"{r.shape[1]} training-range tracks ({data['seeds'][0]}..{data['seeds'][-1]}), fast env, "
        f"{data['steps']} steps at most, no early stop; {r.size + r.shape[1]} episodes in "
        f"{data['seconds'] / 60:.1f} min. `python -m bench.bench_selection{option}`.",
        "",
        "| part of a return's variance | standard deviation |",
        "|---|---:|",
        f"| candidates (their quality: what selection should see) | {parts['candidate']:.1f} |",
        f"| tracks (shared by a generation's candidates; cancels in the ranking) | {parts['track']:.1f} |",
        f"| candidate x track (noise of one rollout, beyond the track's difficulty) | {parts['noise']:.1f} |",
        "",
        f"Candidates' mean return {r.mean():.1f} (best {r.mean(1).max():.1f}, worst {r.mean(1).min():.1f}); "
        f"the CMA-ES mean {data['mean_returns'].mean():.1f} on the same tracks.",
        "",
        "| rollouts per candidate (common tracks) | rank correlation with the other tracks | "
        "top half also top half elsewhere (0.5 = chance) | expected reliability |",
        "|---:|---:|---:|---:|",
    ]
    var_c, var_n = parts["candidate"] ** 2, parts["noise"] ** 2
    for row in rows:
        reliability = var_c / (var_c + var_n / row["k"]) if var_c + var_n > 0 else float("nan")
        lines.append(f"| {row['k']} | {row['rank_corr']:.2f} | {row['top_half']:.2f} | {reliability:.2f} |")
    lines += ["", "The candidates' part is estimated from one generation of "
              f"{r.shape[0]} candidates, so it is rough (an F-test of candidates against the noise: "
              f"F = {f_ratio(r):.2f} on {r.shape[0] - 1} and {(r.shape[0] - 1) * (r.shape[1] - 1)} degrees of "
              "freedom; about 1 means the candidates cannot be told apart on these tracks).", "",
              "Expected reliability: the share of a k-track fitness's variance across candidates that is "
              "their quality, candidate sd^2 / (candidate sd^2 + noise sd^2 / k). The rank correlation is "
              "measured against the other tracks' mean, itself noisy, so it reads lower than the ranking's "
              "agreement with the candidates' true order."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    """The section for ``bench.run_all --slow``: the shipped model, 32 tracks, 2 workers."""
    return report(drive(Path("models"), 4 if quick else 32, 2, quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--tracks", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 tracks of 100 steps: checks the script runs")
    parser.add_argument("--out", default="", help="also write the markdown section to this file")
    args = parser.parse_args()
    tracks = 4 if args.quick else args.tracks
    data = drive(Path(args.model_dir), tracks, args.workers, args.quick)
    text = report(data)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        np.savez(Path(args.out).with_suffix(".npz"), returns=data["returns"], mean_returns=data["mean_returns"],
                 seeds=np.array(data["seeds"]))


if __name__ == "__main__":
    main()
