"""The benchmarks that time the app still run end to end (``--quick``, each in its own interpreter as
``bench.run_all`` runs them) and write the sections BENCHMARKS.md is made of: the env (its profile reaches
into pygame's internals) and the race server (a server process and a WebSocket client), the two most
likely to break unseen. The figures themselves are not checked here: timings belong to the benchmarks."""

import re
import tempfile
from pathlib import Path

import pytest

from bench.run_all import run_section

NUMBER = r"\d+(?:\.\d+)?"


def rows(section: str) -> list[list[str]]:
    """The cells of every Markdown table row that holds a number, header and rule rows left out."""
    out = []
    for line in section.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: ") and re.search(NUMBER, line):
            out.append([cell.strip() for cell in line.strip("|").split("|")])
    return out


@pytest.mark.parametrize("name, heading, rows_at_least, summary, peer", [
    ("bench.bench_env", "## CarRacing env: stock vs FastCarRacing", 6, rf"Speed-up: \*\*{NUMBER}x\*\*",
     rf"\| EnvPool \S+ `CarRacing-v3`.*\| {NUMBER} \|.*\n\| _EnvPool / stock.*\*\*{NUMBER}x\*\*"
     r"|skipped: EnvPool (is not installed|does not load)"),
    ("bench.bench_race", "## Race streaming", 4, r"\| 4 races at once, frames/s per race \(min / mean\) \| "
                                                 rf"{NUMBER} / {NUMBER}", None),
])
def test_a_timing_benchmark_writes_its_section(name, heading, rows_at_least, summary, peer):
    def temp_folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("bench-race-*"))

    before = temp_folders()
    section = run_section(name, quick=True)
    if "4408" in section and section.startswith(f"## {name}\n\nFailed"):
        # The race's watchdog let a bench client go that a loaded machine had kept silent for 1.5 s (close code
        # 4408, as it lets a dropped network go): a starved client, not a broken bench. Measured once more.
        section = run_section(name, quick=True)
    assert not section.startswith(f"## {name}\n\nFailed"), section
    assert section.startswith(heading)
    assert len(rows(section)) >= rows_at_least, section
    assert re.search(summary, section), section
    assert peer is None or re.search(peer, section), section  # a peer measured, or skipped with its reason
    assert not re.search(r"\bnan\b", section, re.IGNORECASE), section  # a figure that was never measured
    assert temp_folders() <= before, "the benchmark left its temporary folders behind"
