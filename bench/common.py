"""Helpers shared by the benchmarks: machine description and robust timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def machine_info() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    versions = [f"Python {platform.python_version()}", f"NumPy {numpy.__version__}"]
    for name in ("gymnasium", "tensorflow", "keras", "streamlit"):
        try:
            import importlib.metadata as md
            versions.append(f"{name} {md.version(name if name != 'tensorflow' else 'tensorflow-cpu')}")
        except Exception:  # noqa: BLE001 - a missing package only shortens the line
            pass
    return f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; " + ", ".join(versions)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
