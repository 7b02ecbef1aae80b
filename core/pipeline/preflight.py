"""Checks of a stage's inputs that need no TensorFlow, named by ``Stage.preflight`` and run before the stage's
module loads: a missing data folder or V is named in a fraction of a second, not after the seconds TensorFlow
takes to import. The stage checks the same again (and more) when it runs."""

from __future__ import annotations

from core.config import RNNConfig, VAEConfig
from core.storage.artifacts import require_weights
from core.storage.dataset import existing_data_folders


def data_there(config: VAEConfig | RNNConfig) -> None:
    """Every folder of ``config.data_dir`` exists (a NoDataError names the first missing one)."""
    existing_data_folders(config.data_dir)


def v_and_data_there(config: RNNConfig) -> None:
    """V's weights are in the run folder, and every data folder exists."""
    require_weights(config.vae_dir, "vae")
    data_there(config)
