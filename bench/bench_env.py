"""Stock CarRacing-v3 against FastCarRacing-v3: steps a second, measured in the same run.

    python -m bench.bench_env [--quick]

Both envs step through the same seeds and the same Brownian actions. Runs alternate stock, fast, fast,
stock, ... so that a change in machine load during the benchmark hits both alike; the ratio is taken
per pair of neighbouring runs and its median reported. Resets are not timed. Timers around the
functions that do each part of a fast step then show where it goes, and two fresh processes measure
the compile time of the compiled kernels (empty cache) and their load time (filled cache).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import statistics
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402

from bench.common import machine_info  # noqa: E402

LOW = np.array([-1.0, 0.0, 0.0])
HIGH = np.array([1.0, 1.0, 1.0])

def brownian_actions(seed: int, n: int) -> list[np.ndarray]:
    """float32 (3,) actions, a random walk in [-1,0,0]..[1,1,1]: the data-collection policy."""
    rng = np.random.default_rng(seed)
    a = np.array([0.0, 0.5, 0.0])
    out = []
    for _ in range(n):
        a = np.clip(a + rng.normal(0.0, 0.25, 3), LOW, HIGH)
        out.append(a.astype(np.float32))
    return out


def time_steps(env, seed: int, actions: list[np.ndarray], clock=time.perf_counter) -> float:
    """Seconds spent in ``env.step`` over ``actions`` (resets excluded), by ``clock``: the wall clock, or
    ``time.process_time`` for this process's CPU time."""
    env.reset(seed=seed)
    spent = 0.0
    for a in actions:
        t = clock()
        _, _, terminated, truncated, _ = env.step(a)
        spent += clock() - t
        if terminated or truncated:
            env.reset(seed=seed + 1000)
    return spent


def compare(runs: int, steps: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Steps a second of each env, ``runs`` runs of ``steps`` steps each, interleaved ABBA, by ``clock``.

    ``time.process_time`` counts CPU time: on a shared machine a wall-clock run also counts the time other
    processes hold the core, which swings a ratio by 2x from run to run; CPU time counts only this process's
    work (cache and memory contention still slow it).
    """
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
            rates[kind].append(steps / time_steps(envs[kind], run, actions, clock))
    for env in envs.values():
        env.close()
    return rates


# The parts of a fast step, timed by wrapping the functions that do them: (label, owner, attribute).
FAST_PARTS = (
    ("field, grass and road: fill and SDL_gfx polygons (`raster.draw_track`)", "raster", "draw_track"),
    ("car: Box2D transforms, stripes and `pygame.draw.polygon` port (`_draw_car`)", "env", "_draw_car"),
    ("HUD: indicators and score (`raster.draw_hud`)", "raster", "draw_hud"),
    ("smoothscale x pass (`raster.shrink_x_changed`)", "raster", "shrink_x_changed"),
    ("smoothscale y pass (`raster.shrink_y`)", "raster", "shrink_y"),
    ("Box2D world step", "box2d", "Step"),
)


def profile_fast(steps: int) -> tuple[float, list[tuple[str, float]]]:
    """Where a fast step goes: (CPU ms a step, [(part, CPU ms a step)]), the rest being Python and NumPy.

    Each part's function is wrapped with a CPU-time timer (far less overhead than cProfile, which
    doubled the Python share); the last row is the step's time minus the parts.
    """
    import Box2D

    from core.envs import raster
    from core.envs.fast_car_racing import FastCarRacing, make_car_racing

    owners = {"raster": raster, "env": FastCarRacing, "box2d": Box2D.b2World}
    spent = {label: 0.0 for label, _, _ in FAST_PARTS}
    originals = []

    def timed(label, func):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - start

        return wrapper

    for label, owner, name in FAST_PARTS:
        originals.append((owners[owner], name, getattr(owners[owner], name)))
        setattr(owners[owner], name, timed(label, getattr(owners[owner], name)))
    try:
        env = make_car_racing(fast=True)
        env.reset(seed=7)
        env.step(np.zeros(3, np.float32))
        for label in spent:
            spent[label] = 0.0
        total = 0.0
        for a in brownian_actions(7, steps):
            start = time.process_time()
            _, _, terminated, truncated, _ = env.step(a)
            total += time.process_time() - start
            if terminated or truncated:
                before = dict(spent)
                env.reset(seed=8)  # not timed
                spent.update(before)
        env.close()
    finally:
        for owner, name, func in originals:
            setattr(owner, name, func)
    rows = [(label, 1000 * s / steps) for label, s in spent.items()]
    rows.append(("rest: car dynamics, rewards, geometry set-up, wrappers (Python, NumPy)",
                 1000 * (total - sum(spent.values())) / steps))
    return 1000 * total / steps, rows


def compile_seconds() -> tuple[float, float]:
    """Seconds the first ``reset`` of a new process takes beyond a later one, with an empty numba cache
    (the kernels compile) and then with that cache filled (they load): (cold, warm)."""
    import subprocess
    import sys
    import tempfile

    probe = (
        "import os, time; os.environ.setdefault('SDL_VIDEODRIVER', 'dummy');"
        "from core.envs.fast_car_racing import make_car_racing;"
        "env = make_car_racing(fast=True); t = time.perf_counter(); env.reset(seed=0);"
        "first = time.perf_counter() - t; t = time.perf_counter(); env.reset(seed=0);"
        "print(first - (time.perf_counter() - t))"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold, warm = (
            float(subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
            for _ in range(2)
        )
    return cold, warm


def cpu_lines(cpu: dict[str, list[float]]) -> list[str]:
    """Markdown lines for ``compare``'s result in CPU time."""
    ratios = [f / s for s, f in zip(cpu["stock"], cpu["fast"])]
    lines = [
        "The same runs timed in CPU seconds of `env.step` (what the wall clock shows minus the time other "
        "processes held the core):",
        "",
        "| env | steps per CPU second (median) | CPU ms a step | slowest–fastest run |",
        "|---|---:|---:|---:|",
    ]
    for name, r in (("stock `CarRacing-v3`", cpu["stock"]), ("`FastCarRacing-v3`", cpu["fast"])):
        med = statistics.median(r)
        lines.append(f"| {name} | {med:.0f} | {1000 / med:.2f} | {min(r):.0f}–{max(r):.0f} |")
    lines += [
        "",
        f"Speed-up in CPU time: **{statistics.median(ratios):.2f}x** (median over runs; "
        f"{min(ratios):.2f}x–{max(ratios):.2f}x).",
        "",
    ]
    return lines


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


def run(quick: bool = False) -> str:
    """Benchmark both envs and return a Markdown section for BENCHMARKS.md."""
    runs, steps = (3, 100) if quick else (6, 1000)
    load_before = os.getloadavg()[0]
    rates = compare(runs, steps)
    cpu = compare(runs, steps, time.process_time)
    peer = envpool_rates(runs, steps)
    load_after = os.getloadavg()[0]
    profiled_ms, parts = profile_fast(150 if quick else 1000)
    cold, warm = compile_seconds()

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
    ]
    lines += cpu_lines(cpu)
    lines += [
        f"Where a fast step goes ({150 if quick else 1000} steps, each part's function timed in CPU time; "
        f"{profiled_ms:.2f} ms a step in this run):",
        "",
        "| part | ms a step | share |",
        "|---|---:|---:|",
    ]
    for name, ms in parts:
        lines.append(f"| {name} | {ms:.2f} | {100 * ms / profiled_ms:.0f}% |")
    lines += [
        "",
        f"The compiled kernels (`core/envs/raster.py`, numba) compile on a machine's first reset: "
        f"{cold:.1f} s; later processes load them from the cache in {warm:.2f} s. Neither is in the "
        "step figures.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (for CI)")
    print(run(parser.parse_args().quick))
