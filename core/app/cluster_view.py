"""What the pages show of the Ray cluster a stage runs its episodes on (``core.pipeline.cluster``): its nodes,
CPUs and dashboard, and the episodes an hour a job reaches there."""

from __future__ import annotations

from core.metrics import EvolveMetric
from core.pipeline.cluster import ClusterError, cluster_status

STATUS_TIMEOUT = 10.0  # s a page waits for the cluster's answer
RATE_POINTS = 20  # progress points (the latest) a stage that counts episodes is timed over


def cluster_summary(address: str) -> dict:
    """The cluster at ``address``: ``nodes``, ``cpus``, ``free_cpus``, ``dashboard`` (a URL or ""), or
    ``error`` (why it could not be asked), and the ``address``."""
    try:
        return {"address": address, **cluster_status(address, STATUS_TIMEOUT)}
    except ClusterError as e:
        return {"address": address, "error": str(e)}


def episodes_per_hour(snap: dict | None) -> float | None:
    """The episodes an hour the job of ``snap`` (a job snapshot) reaches now: an evolution's last generation's
    (its ``episodes_per_hour``, evaluations included); for evaluate and collect, which count episodes, over
    their latest progress. None before there is a figure."""
    history = (snap or {}).get("history") or []
    rate = EvolveMetric.EPISODES_PER_HOUR
    rates = [r[rate] for r in history if isinstance(r.get(rate), (int, float))]
    if rates:
        return float(rates[-1])
    if (snap or {}).get("stage") not in ("evaluate", "collect"):
        return None
    timed = [r for r in history if isinstance(r.get("time"), (int, float)) and isinstance(r.get("step"), int)]
    if len(timed) < 2:
        return None
    first, last = timed[-min(len(timed), RATE_POINTS)], timed[-1]
    if last["time"] <= first["time"]:
        return None
    return 3600.0 * (last["step"] - first["step"]) / (last["time"] - first["time"])
