"""The analysis behind the benchmarks that measure rather than time: variance parts of candidates' returns,
and BENCHMARKS.md keeping a slow section that a plain run does not redo; the race load bench's CPU accounting."""

import time

import numpy as np
import pytest

from bench.bench_selection import f_ratio, selection_quality, variance_parts
from bench.run_all import kept_section


def test_returns_without_noise_split_exactly_into_candidates_and_tracks():
    a = np.array([-30.0, -10.0, 0.0, 5.0, 15.0, 20.0])  # candidates' quality
    b = np.array([100.0, -50.0, 20.0, -70.0, 0.0])  # tracks' difficulty
    r = 800 + a[:, None] + b[None, :]
    parts = variance_parts(r)
    assert parts["candidate"] == pytest.approx(a.std(ddof=1)) and parts["track"] == pytest.approx(b.std(ddof=1))
    assert parts["noise"] == pytest.approx(0, abs=1e-9)
    quality = selection_quality(r, 1, 50, np.random.default_rng(0))  # one track already ranks them all
    assert quality["rank_corr"] == pytest.approx(1) and quality["top_half"] == 1


def test_pure_noise_ranks_at_chance():
    r = np.random.default_rng(1).normal(0, 100, (16, 200))
    assert variance_parts(r)["candidate"] < 10 and 0.7 < f_ratio(r) < 1.4
    quality = selection_quality(r, 4, 400, np.random.default_rng(2))
    assert abs(quality["rank_corr"]) < 0.1 and 0.45 < quality["top_half"] < 0.55


def test_a_plain_benchmark_run_keeps_the_slow_section_it_does_not_redo():
    text = ("# Benchmarks\n\n## Env\n\nfast\n\n_(bench.bench_env: 5 s)_\n\n## Ranking\n\n| k | r |\n\nWhat it says.\n\n"
            "_(bench.bench_selection: 1110 s, run by itself)_\n")
    assert kept_section(text, "bench.bench_selection") == ("## Ranking\n\n| k | r |\n\nWhat it says.\n\n"
                                                          "_(bench.bench_selection: 1110 s, run by itself)_")
    assert kept_section(text, "bench.bench_race") is None


def test_without_noise_both_gates_keep_the_best_controller_and_with_it_fresh_tracks_keep_a_better_one(monkeypatch):
    import bench.bench_gate as gate
    results = {fresh: gate.simulate(fresh, 0.0, 300, np.random.default_rng(0)) for fresh in (False, True)}
    # With the plateau's noise the kept controller of fixed tracks must also beat its own luck.
    assert results[True]["gap"] - results[False]["gap"] > 3 * np.hypot(results[True]["gap_se"],
                                                                        results[False]["gap_se"])
    assert results[True]["episodes"] > results[False]["episodes"]  # the kept controller drives too
    monkeypatch.setattr(gate, "NOISE", 1e-9)
    for fresh in (False, True):
        r = gate.simulate(fresh, 1.0, 50, np.random.default_rng(0))
        assert r["worse"] == 0 and r["gap"] > 0  # every better challenger passes, no worse one does


def test_each_benchmark_section_runs_in_an_interpreter_of_its_own():
    """A section's import-time settings (the agent's one BLAS thread) must take effect before NumPy loads
    and must not reach the next section: each runs in a fresh interpreter, and a failing one is reported
    in its place rather than stopping the others."""
    from bench.run_all import run_section
    section = run_section("bench.bench_gate", quick=True)
    assert section.startswith("## Keeping a controller") and "| margin" in section
    failed = run_section("bench.no_such_bench", quick=True)
    assert failed.startswith("## bench.no_such_bench\n\nFailed (exit code 1)") and "No module named" in failed


def test_the_race_load_bench_counts_each_process_trees_cpu_where_it_belongs():
    """bench_race_load's table of where the cores went: a child that burns CPU counts for the tree it is named
    the root of (the job here), this process for the bench, and the machine's other work for "other"."""
    import subprocess
    import sys

    from bench.bench_race_load import CPU_PARTS, RACERS, Racer, Scenario, cores_table, cpu_snapshot
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.6\n"
                                                     "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before = cpu_snapshot(server=-1, job=burner.pid)
        deadline = time.monotonic() + 30
        while cpu_snapshot(server=-1, job=burner.pid)["job"] - before["job"] < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = cpu_snapshot(server=-1, job=burner.pid)
    finally:
        burner.kill()
        burner.wait()
    assert after["job"] - before["job"] >= 0.5  # the child's CPU, counted while it is alive
    assert after["server"] == before["server"] == 0.0  # no such process: nothing counted for it
    assert set(after) == set(CPU_PARTS) and after["idle"] >= before["idle"]
    shares = dict.fromkeys(CPU_PARTS, 0.1) | {"server": 0.9}
    scenario = Scenario(10, "vs_ai", racers=[Racer(fps=45.0) for _ in range(RACERS)], cores=shares)
    row = cores_table([scenario])[-2]
    assert row.endswith("| 0.90 | 0.10 | 0.10 | 0.10 | 0.10 | 0.10 | 5.0 ms | 0.90 cores |"), row
