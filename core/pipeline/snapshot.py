"""Stage snapshot: freeze a run's current CMA-ES mean or averaged mean into its controller folder,
as a parameters file that evaluate, export and the Dream page can take (``controller.snapshot_params``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.config import SHIPPED_MODEL_DIR, SnapshotConfig, validate
from core.models.controller import PARAMS_KEYS, params_sha256, snapshot_params
from core.progress import ProgressCallback, keep_going
from core.storage.artifacts import ArtifactError

log = logging.getLogger(__name__)


def snapshot(config: SnapshotConfig, on_progress: ProgressCallback = keep_going) -> dict:
    """Freeze ``run_dir``'s current CMA-ES mean or averaged mean into ``run_dir/controller/`` (see
    ``snapshot_params``); returns the file, what it holds and its generation. The shipped model's folder is
    refused: it stays as committed."""
    validate(config)
    if Path(config.run_dir).resolve() == Path(SHIPPED_MODEL_DIR).resolve():
        raise ArtifactError(f"{config.run_dir}: the shipped model, kept as committed; copy it into a run folder "
                            f"to evolve it further (mkdir -p runs1 && cp -r {config.run_dir}/. runs1/) and take "
                            "snapshots there")
    path = snapshot_params(Path(config.run_dir) / "controller", config.which)
    with np.load(path, allow_pickle=False) as f:
        generation, sha = int(f["generation"]), params_sha256(f[config.which])
    on_progress(1, 1, {})
    return {"run_dir": config.run_dir, "file": str(path), "holds": PARAMS_KEYS[config.which],
            "generation": generation, "params_sha256": sha}
