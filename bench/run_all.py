"""Run every benchmark and write BENCHMARKS.md.

    python -m bench.run_all [--quick] [--slow] [--out BENCHMARKS.md]

Each module in SECTIONS and SLOW_SECTIONS exposes ``run(quick) -> str`` (a Markdown section). Run it on a
quiet machine: the figures are ratios measured within one run, but absolute numbers move with load. The
slow sections (minutes of driving each) run only with ``--slow``; otherwise their section in the existing
file is kept as it is.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from bench.common import machine_info

SECTIONS = ("bench.bench_env", "bench.bench_agent", "bench.bench_load", "bench.bench_dream", "bench.bench_race",
            "bench.bench_gate")
SLOW_SECTIONS = ("bench.bench_selection",)


def kept_section(text: str, name: str) -> str | None:
    """The section of an earlier BENCHMARKS.md that ``name`` wrote (up to and including its timing line)."""
    end_marker = f"_({name}:"
    end = text.find(end_marker)
    if end < 0:
        return None
    start = text.rfind("\n## ", 0, end)
    line_end = text.find("\n", end)
    return text[start + 1:line_end if line_end >= 0 else len(text)].strip() if start >= 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, rougher figures")
    parser.add_argument("--slow", action="store_true", help="also run the slow sections (about 20 minutes)")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
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
        try:
            section = importlib.import_module(name).run(quick=args.quick)
        except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others
            section = f"## {name}\n\nFailed:\n\n```\n{traceback.format_exc()}\n```\n"
        parts += [section.strip(), "", f"_({name}: {time.monotonic() - started:.0f} s)_", ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
