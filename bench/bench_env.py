"""Stock CarRacing-v3 against FastCarRacing-v3: steps a second, measured in the same run.

    python -m bench.bench_env [--quick]

Both envs step through the same seeds and the same Brownian actions. Runs alternate stock, fast, fast,
stock, ... so that a change in machine load during the benchmark hits both alike; the ratio is taken
per pair of neighbouring runs and its median reported. Resets are not timed. A cProfile of the fast
env then shows where the rest of its step goes.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.metadata as md
import os
import pstats
import statistics
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402

from bench.common import machine_info  # noqa: E402

LOW = np.array([-1.0, 0.0, 0.0])
HIGH = np.array([1.0, 1.0, 1.0])

# cProfile rows grouped into the parts of a step, matched on pieces of the built-in's name.
PARTS = (
    ("SDL_gfx road and grass polygons (`gfxdraw`)", ("gfxdraw.filled_polygon", "gfxdraw.aapolygon")),
    ("`smoothscale` to 96x96 (x pass on 1000x700, HUD band, y pass)", ("transform.smoothscale",)),
    ("`Surface.fill` (background band, HUD band)", ("'fill' of 'pygame.surface.Surface'",)),
    ("car and HUD polygons (`pygame.draw`)", ("draw.polygon", "draw.lines")),
    ("Box2D world step", ("b2World_Step",)),
)


def brownian_actions(seed: int, n: int) -> list[np.ndarray]:
    """float32 (3,) actions, a random walk in [-1,0,0]..[1,1,1]: the data-collection policy."""
    rng = np.random.default_rng(seed)
    a = np.array([0.0, 0.5, 0.0])
    out = []
    for _ in range(n):
        a = np.clip(a + rng.normal(0.0, 0.25, 3), LOW, HIGH)
        out.append(a.astype(np.float32))
    return out


def time_steps(env, seed: int, actions: list[np.ndarray]) -> float:
    """Seconds of wall clock spent in ``env.step`` over ``actions`` (resets excluded)."""
    env.reset(seed=seed)
    spent = 0.0
    for a in actions:
        t = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(a)
        spent += time.perf_counter() - t
        if terminated or truncated:
            env.reset(seed=seed + 1000)
    return spent


def compare(runs: int, steps: int) -> dict[str, list[float]]:
    """Steps a second of each env, ``runs`` runs of ``steps`` steps each, interleaved ABBA."""
    from core.envs.fast_car_racing import make_car_racing

    envs = {"stock": make_car_racing(fast=False), "fast": make_car_racing(fast=True)}
    for env in envs.values():  # first frame loads fonts and sets pygame up; keep it out of the timings
        env.reset(seed=0)
        env.step(np.zeros(3, np.float32))
    rates: dict[str, list[float]] = {"stock": [], "fast": []}
    for run in range(runs):
        actions = brownian_actions(run, steps)
        order = ("stock", "fast") if run % 2 == 0 else ("fast", "stock")
        for kind in order:
            rates[kind].append(steps / time_steps(envs[kind], run, actions))
    for env in envs.values():
        env.close()
    return rates


ENVPOOL_VERSION = "1.2.5"  # requirements-dev.txt; a benchmark-only peer, never imported by core/


def envpool_rates(runs: int, steps: int) -> tuple[list[float], list[float]] | str:
    """EnvPool's C++ ``CarRacing-v3`` (1 env, 1 thread) against the stock env: steps a second of each,
    ``runs`` runs of the same Brownian actions as ``compare``, interleaved with stock runs of their own so
    that the ratio is taken between neighbours. Returns ``(envpool, stock)`` rates, or why there is no row.
    EnvPool draws its tracks with its own generator, so its tracks are not the stock env's."""
    try:
        import envpool
    except ImportError as e:
        return f"EnvPool is not installed ({e}; `pip install envpool=={ENVPOOL_VERSION}`)"
    except Exception as e:  # a wheel built against other libraries than these fails on import in its own ways
        return f"EnvPool does not load here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    from core.envs.fast_car_racing import make_car_racing

    stock = make_car_racing(fast=False)
    stock.reset(seed=0)
    stock.step(np.zeros(3, np.float32))
    rates: tuple[list[float], list[float]] = ([], [])
    for run in range(runs):
        actions = brownian_actions(run, steps)
        pool = envpool.make("CarRacing-v3", env_type="gymnasium", num_envs=1, batch_size=1, num_threads=1,
                            seed=run)
        pool.reset()
        pool.step(np.zeros((1, 3), np.float32))
        order = (0, 1) if run % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                pool.reset()
                t = time.perf_counter()
                for a in actions:  # EnvPool resets an ended episode on the next step by itself
                    pool.step(a[None])
                rates[0].append(steps / (time.perf_counter() - t))
            else:
                rates[1].append(steps / time_steps(stock, run, actions))
        pool.close()
    stock.close()
    return rates


def envpool_row(result: tuple[list[float], list[float]] | str) -> list[str]:
    """The EnvPool peer row for the table, and its ratio to the stock env below it."""
    if isinstance(result, str):
        return [f"| EnvPool `CarRacing-v3` (C++; peer, not used by the project) | – | – | skipped: {result} |"]
    pool, stock = result
    ratios = sorted(p / s for p, s in zip(pool, stock))
    med = statistics.median(pool)
    return [f"| EnvPool {md.version('envpool')} `CarRacing-v3`, 1 env, 1 thread (C++; peer, not used by the "
            f"project) | {med:.0f} | {1000 / med:.2f} | {min(pool):.0f}–{max(pool):.0f} |",
            f"| _EnvPool / stock, neighbouring runs (stock {statistics.median(stock):.0f} steps/s in them)_ | "
            f"**{statistics.median(ratios):.2f}x** | | {ratios[0]:.2f}x–{ratios[-1]:.2f}x |"]


def profile_fast(steps: int) -> tuple[float, list[tuple[str, float]]]:
    """cProfile of the fast env over ``steps`` steps: (profiled ms a step, [(part, ms a step)])."""
    from core.envs.fast_car_racing import make_car_racing

    env = make_car_racing(fast=True)
    env.reset(seed=7)
    actions = brownian_actions(7, steps)
    profiler = cProfile.Profile()
    profiler.enable()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset(seed=8)
    profiler.disable()
    env.close()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ncalls, own s, cumulative s, callers)
    total = sum(own for _, _, own, _, _ in stats.values())
    parts = {name: 0.0 for name, _ in PARTS}
    rest = 0.0
    for (_, _, func), (_, _, own, _, _) in stats.items():
        for name, keys in PARTS:
            if func.startswith(("<built-in", "<method")) and any(key in func for key in keys):
                parts[name] += own
                break
        else:
            rest += own
    rows = [(name, 1000 * s / steps) for name, s in parts.items()]
    rows.append(("Python + NumPy: car dynamics, geometry and culling, HUD, wrappers", 1000 * rest / steps))
    return 1000 * total / steps, rows


def run(quick: bool = False) -> str:
    """Benchmark both envs and return a Markdown section for BENCHMARKS.md."""
    runs, steps = (4, 200) if quick else (6, 1000)
    load_before = os.getloadavg()[0]
    rates = compare(runs, steps)
    peer = envpool_rates(runs, steps)
    load_after = os.getloadavg()[0]
    profiled_ms, parts = profile_fast(300 if quick else 1000)

    stock, fast = rates["stock"], rates["fast"]
    ratios = [f / s for s, f in zip(stock, fast)]
    versions = []
    for name in ("pygame-ce", "Box2D"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    lines = [
        "## CarRacing env: stock vs FastCarRacing",
        "",
        machine_info() + (", " + ", ".join(versions) if versions else ""),
        f"(load average {load_before:.1f} before, {load_after:.1f} after; "
        f"the env uses one core)",
        "",
        f"{runs} runs of {steps} steps per env, the same seeds and Brownian actions for both, runs "
        "interleaved stock/fast, wall clock of `env.step` only, `gymnasium.make` with its usual wrappers.",
        "",
        "| env | steps/s (median) | ms a step | slowest–fastest run |",
        "|---|---:|---:|---:|",
    ]
    for name, r in (("stock `CarRacing-v3`", stock), ("`FastCarRacing-v3`", fast)):
        med = statistics.median(r)
        lines.append(f"| {name} | {med:.0f} | {1000 / med:.2f} | {min(r):.0f}–{max(r):.0f} |")
    lines += envpool_row(peer)
    lines += [
        "",
        f"Speed-up: **{statistics.median(ratios):.2f}x** (median over runs; "
        f"{min(ratios):.2f}x–{max(ratios):.2f}x). Observations, rewards, terminations and infos are "
        "bit-identical to the stock env (`tests/test_fast_env.py`).",
        "",
        f"Where a fast step goes (cProfile, {300 if quick else 1000} steps; profiling itself inflates the "
        f"Python share; {profiled_ms:.2f} ms a step profiled):",
        "",
        "| part | ms a step | share |",
        "|---|---:|---:|",
    ]
    for name, ms in parts:
        lines.append(f"| {name} | {ms:.2f} | {100 * ms / profiled_ms:.0f}% |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (for CI)")
    print(run(parser.parse_args().quick))
