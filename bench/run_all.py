"""Run every benchmark and write BENCHMARKS.md.

    python -m bench.run_all [--quick] [--slow] [--out FILE]

Each module in SECTIONS and SLOW_SECTIONS exposes ``run(quick) -> str`` (a Markdown section), and each
runs in a fresh interpreter of its own (``--section``): what a module sets as it is imported (one BLAS and
TensorFlow thread for the agent's figures, say) takes effect only before NumPy and TensorFlow load, and
must not carry over to the next section. Run it on a quiet machine: the figures are ratios measured within
one run, but absolute numbers move with load. The slow sections (minutes of driving each) run only with
``--slow``; otherwise their section in the existing file is kept as it is.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("bench.bench_env", "bench.bench_agent", "bench.bench_load", "bench.bench_dream", "bench.bench_race",
            "bench.bench_gate", "bench.bench_ui_latency")
SLOW_SECTIONS = ("bench.bench_selection", "bench.bench_memory", "bench.bench_ray", "bench.bench_race_load")


def kept_section(text: str, name: str) -> str | None:
    """The section of an earlier BENCHMARKS.md that ``name`` wrote (up to and including its timing line)."""
    end_marker = f"_({name}:"
    end = text.find(end_marker)
    if end < 0:
        return None
    start = text.rfind("\n## ", 0, end)
    line_end = text.find("\n", end)
    return text[start + 1:line_end if line_end >= 0 else len(text)].strip() if start >= 0 else None


def run_section(name: str, quick: bool) -> str:
    """The Markdown section of benchmark module ``name``, run in a fresh interpreter; a failure is reported
    as the section, so that one failing benchmark does not hide the others."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "section.md"
        cmd = [sys.executable, "-m", "bench.run_all", "--section", name, "--out", str(out)] + ["--quick"] * quick
        proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        if proc.returncode == 0 and out.exists():
            return out.read_text(encoding="utf-8")
        return f"## {name}\n\nFailed (exit code {proc.returncode}):\n\n```\n{proc.stderr[-4000:]}\n```\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, rougher figures")
    parser.add_argument("--slow", action="store_true", help="also run the slow sections (about 40 minutes)")
    parser.add_argument("--out", help="default: BENCHMARKS.md, or with --quick bench-quick.md (rough figures "
                                      "never replace the measured ones by accident)")
    parser.add_argument("--section", help="run this one module and write its section alone to --out")
    args = parser.parse_args()
    args.out = args.out or ("bench-quick.md" if args.quick else "BENCHMARKS.md")
    if args.section:
        section = importlib.import_module(args.section).run(quick=args.quick)
        Path(args.out).write_text(section, encoding="utf-8")
        return
    from bench.common import machine_info
    try:
        earlier = open(args.out, encoding="utf-8").read()
    except OSError:
        earlier = ""
    parts = ["# Benchmarks", "",
             f"Written by `python -m bench.run_all{' --quick' if args.quick else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "", machine_info(), ""]
    for name in SECTIONS + SLOW_SECTIONS:
        if name in SLOW_SECTIONS and not args.slow:
            kept = kept_section(earlier, name)
            if kept:
                parts += [kept, ""]
            continue
        started = time.monotonic()
        print(f"running {name} ...", flush=True)
        section = run_section(name, args.quick)
        parts += [section.strip(), "", f"_({name}: {time.monotonic() - started:.0f} s)_", ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
