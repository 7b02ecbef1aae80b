"""Evaluation reports: their summary, their check when read, and two of them compared track by track.

Pure functions of the JSON that ``python -m core evaluate`` writes (``core.pipeline.evaluate``), with nothing of
Gymnasium or TensorFlow, so a page that shows or compares reports loads quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.envs.laps import report_endings
from core.storage.artifacts import ArtifactError, read_json

EPISODE_FIELDS = ("steps", "tiles", "skipped", "ended")  # per-episode lists beside returns, where known
Z_95 = 1.959964  # two-sided 95% quantile of the normal distribution
Z_80 = 0.841621  # one-sided 80% quantile: the power asked of a suggested number of tracks
MIN_TRACKS_FOR_VERDICT = 10  # below this the spread of the differences is itself too rough to decide on
TIE = 1e-6  # returns closer than this on a track are equal (float noise, not driving)
T_95_FEW = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student's t tables, where the expansion below is off


def summarize(returns: list[float]) -> dict:
    r = np.asarray(returns, dtype=float)
    return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max()),
            "median": float(np.median(r)), "solved_fraction": float((r >= 900).mean())}


def per_episode(episodes: dict[int, dict]) -> dict:
    """The per-episode lists (``EPISODE_FIELDS``) of ``episodes`` (by seed, in report order) that every episode
    has, with ``endings`` when ``ended`` and ``skipped`` are known (an older partial run has neither)."""
    rows = list(episodes.values())
    lists = {k: [e[k] for e in rows] for k in EPISODE_FIELDS if all(k in e for e in rows)}
    table = report_endings({**lists, "returns": [e["return"] for e in rows]})
    return {**lists, "endings": table} if table is not None else lists


def t_95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom: from tables up to df = 4, then a
    Cornish-Fisher expansion around the normal quantile (within 0.004 of the tables from df = 5 on)."""
    if df in T_95_FEW:
        return T_95_FEW[df]
    z = Z_95
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def read_report(path: Path | str) -> dict:
    """An evaluation report written by ``evaluate``, read and checked (``check_report``)."""
    return check_report(read_json(path, "evaluation report"), str(path))


def read_reports(paths: str) -> dict:
    """One report, or several of one controller separated by commas (``a.json,b.json``: the same controller,
    V and M, env and step limit on other tracks) joined into one: their tracks pooled, the summary redone,
    ``complete`` only if all are."""
    names = [name.strip() for name in paths.split(",") if name.strip()]
    reports = [read_report(name) for name in names]
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    for name, report in zip(names[1:], reports[1:]):
        for key in ("params_sha256", "world_model_sha256", "env", "max_steps"):
            a, b = first.get(key), report.get(key)
            if a != b and not (key == "world_model_sha256" and None in (a, b)):  # older reports lack it
                raise ArtifactError(f"{name}: not the same evaluation as {names[0]} ({key}: {b} against {a}); "
                                    "only reports of one controller, driven the same way, can be joined")
    episodes = {}
    for name, report in zip(names, reports):
        extra = {k: report[k] for k in EPISODE_FIELDS if isinstance(report.get(k), list)}
        for i, (seed, ret) in enumerate(zip(report["seeds"], report["returns"])):
            if seed in episodes:
                raise ArtifactError(f"{name}: track {seed} is in another of the joined reports too")
            episodes[seed] = {"return": ret, **{k: v[i] for k, v in extra.items()}}
    seeds = sorted(episodes)
    joined = {**first, **summarize([episodes[s]["return"] for s in seeds]), "seeds": seeds,
              "returns": [episodes[s]["return"] for s in seeds], "episodes": len(seeds),
              "complete": all(r.get("complete") is not False for r in reports), "joined": names}
    for key in (*EPISODE_FIELDS, "endings"):
        joined.pop(key, None)
    return {**joined, **per_episode({s: episodes[s] for s in seeds})}


def check_report(data: object, where: str) -> dict:
    """``data`` as an evaluation report: per-track ``seeds`` (whole numbers) and ``returns`` (finite numbers)
    of equal length, any other per-track list (``EPISODE_FIELDS``) as long, no track twice (ArtifactError
    naming ``where`` otherwise); seeds as int, returns as float, the summary (``summarize``, ``episodes``)
    and ``endings`` recomputed from the per-track lists (``endings`` left out where they do not give one):
    what a file says of them is not trusted."""
    what = f"{where}: not an evaluation report of python -m core evaluate"
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), list) or not isinstance(
            data.get("returns"), list):
        raise ArtifactError(f"{what} (it has no per-track seeds and returns)")
    seeds, returns = data["seeds"], data["returns"]
    if len(seeds) != len(returns) or not seeds:
        raise ArtifactError(f"{what} ({len(seeds)} seeds, {len(returns)} returns)")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in returns):
        raise ArtifactError(f"{what} (its seeds are not all whole numbers or its returns not all numbers)")
    try:
        returns = [float(r) for r in returns]
    except OverflowError:
        returns = [float("inf")]
    if len(set(seeds)) != len(seeds) or not np.all(np.isfinite(returns)):
        raise ArtifactError(f"{what} (a track twice, or a return that is not finite)")
    odd = [k for k in EPISODE_FIELDS if k in data and not (isinstance(data[k], list) and len(data[k]) == len(seeds))]
    if odd:
        raise ArtifactError(f"{what} (its per-track {', '.join(odd)} do not match its {len(seeds)} tracks)")
    checked = {k: v for k, v in data.items() if k != "endings"}
    table = report_endings({**data, "returns": returns})  # recomputed: a table in the file is not trusted
    return {**checked, **summarize(returns), "episodes": len(returns), "seeds": seeds, "returns": returns,
            **({"endings": table} if table is not None else {})}


def compare_reports(baseline: dict, challenger: dict) -> dict:
    """The challenger's lead over the baseline on the tracks both reports drove, track by track.

    Track difficulty varies far more than good controllers differ (returns spread by 100-200 from track to
    track, controllers near each other by 10-30), so only paired differences tell them apart. Returns
    ``seeds`` (the common tracks) with both returns on each; ``lead`` (mean of challenger - baseline),
    ``lead_sd`` and ``lead_se`` (spread of the differences and standard error of the lead; None for one
    track) and ``ci95`` (Student's t interval); ``wins`` / ``losses`` / ``ties`` (tracks); ``verdict``
    ("better" or "worse" when the interval excludes 0, "undecided", or "too few tracks" below
    MIN_TRACKS_FOR_VERDICT) and, when undecided, ``tracks_to_decide``: about how many tracks would show a
    lead of this size and spread 4 times in 5. Reports of another env or step limit cannot be compared
    (ArtifactError).
    """
    for key in ("env", "max_steps"):
        if baseline.get(key) != challenger.get(key):
            raise ArtifactError(f"the reports were driven with other settings ({key}: baseline "
                                f"{baseline.get(key)}, challenger {challenger.get(key)}); evaluate both the "
                                "same way")
    base = dict(zip(baseline["seeds"], baseline["returns"]))
    chal = dict(zip(challenger["seeds"], challenger["returns"]))
    common = sorted(set(base) & set(chal))
    if not common:
        raise ArtifactError("the reports share no track: evaluate both with the same --first-seed and "
                            "--episodes")
    base_returns, chal_returns = [base[s] for s in common], [chal[s] for s in common]
    diffs = np.subtract(chal_returns, base_returns)
    diffs[np.abs(diffs) < TIE] = 0.0
    n = len(common)
    lead = float(diffs.mean())
    result = {"tracks": n, "first_seed": common[0], "last_seed": common[-1], "seeds": common,
              "baseline_returns": base_returns, "challenger_returns": chal_returns,
              "only_baseline": len(base) - n, "only_challenger": len(chal) - n,
              "baseline_mean": float(np.mean(base_returns)), "challenger_mean": float(np.mean(chal_returns)),
              "lead": lead, "lead_sd": None, "lead_se": None, "ci95": None,
              "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum()), "ties": int((diffs == 0).sum()),
              "same_controller": bool(baseline.get("params_sha256")
                                      and baseline.get("params_sha256") == challenger.get("params_sha256")),
              "complete": baseline.get("complete") is not False and challenger.get("complete") is not False}
    if n > 1:
        sd = float(diffs.std(ddof=1))
        se = sd / np.sqrt(n)
        half = t_95(n - 1) * se
        result.update(lead_sd=sd, lead_se=float(se), ci95=[lead - half, lead + half])
    if n < MIN_TRACKS_FOR_VERDICT:
        result["verdict"] = "too few tracks"
    elif result["ci95"][0] > 0:
        result["verdict"] = "better"
    elif result["ci95"][1] < 0:
        result["verdict"] = "worse"
    else:
        result["verdict"] = "undecided"
        if lead != 0 and result["lead_sd"] > 0:
            result["tracks_to_decide"] = int(np.ceil(((Z_95 + Z_80) * result["lead_sd"] / abs(lead)) ** 2))
    return result


def verdict_words(result: dict, baseline: str = "the baseline") -> str:
    """A ``compare_reports`` verdict in words: "better than <baseline>", "worse than ...", "no difference
    shown; about N tracks would show a lead this size (4 times in 5)", or "too few tracks to tell"."""
    verdict = result["verdict"]
    if verdict in ("better", "worse"):
        return f"{verdict} than {baseline}"
    if verdict == "too few tracks":
        return "too few tracks to tell"
    more = (f"; about {result['tracks_to_decide']} tracks would show a lead this size (4 times in 5)"
            if "tracks_to_decide" in result else "")
    return f"no difference shown{more}"
