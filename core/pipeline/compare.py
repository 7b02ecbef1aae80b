"""Stage compare: two evaluation reports of the same tracks, track by track (the paired difference, its
standard error and a verdict; the statistics are ``core.storage.reports.compare_reports``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import CompareConfig, validate
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import atomic_write_json, now_iso
from core.storage.reports import compare_reports, read_reports

log = logging.getLogger(__name__)


def compare(config: CompareConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Compare two evaluation reports (``compare_reports``); write the result to ``config.out`` if given.
    Reading two files takes no time, so ``on_progress`` is never called; it is taken like every stage's."""
    validate(config)
    baseline, challenger = read_reports(config.baseline), read_reports(config.challenger)
    result = {**compare_reports(baseline, challenger), "baseline": config.baseline,
              "challenger": config.challenger, "env": baseline.get("env"), "date": now_iso()}
    if config.out:
        atomic_write_json(Path(config.out), result)
    return result
