"""Train VAE: V learns to squeeze a frame into z and back; loss curves, reconstructions, latent explorer."""

from pathlib import Path

import numpy as np
import streamlit as st

from core.app import app_data
from core.config import VAEConfig
from core.metrics import Training, VaeMetric
from core.storage.artifacts import ArtifactError
from pages import _ui

st.title("Train VAE (V)")
st.markdown("V is a convolutional variational autoencoder: it encodes each 64x64 frame as a Gaussian over a "
            "short code **z** and decodes z back to a frame. Its loss is the **reconstruction** error plus "
            "the **KL** divergence that keeps the codes close to a standard normal (clamped below a free "
            "budget, as in the paper), so that M can later predict and sample them.")

shipped_view = st.container()  # the shipped V, read-only, while the run folder has no V of its own

with st.expander("Settings", expanded=True):
    config = _ui.config_form(VAEConfig, "vae", defaults={"checkpoint_every": 100})
_ui.start_button("train-vae", config, noun="training")
# What the page and its latent explorer show: the V of the job shown (else of the form's run folder), or the
# shipped one while that folder has none; its episodes, or the sample frames while none are collected.
shown = _ui.shown_folders("train-vae", _ui.current_snapshot("train-vae"), config, VAEConfig)
vae_dir = str(Path(shown.model_dir) / "vae")
data_dir = shown.data_dir


@st.cache_data(show_spinner=False, max_entries=8)
def sample(data_dir: str, files: int, version: float) -> np.ndarray:
    return app_data.sample_frames(data_dir, count=8, seed=1)


def frames(data_dir: str) -> np.ndarray:
    files = app_data.episode_files(data_dir)
    return sample(data_dir, len(files), max((app_data.mtime(p) for p in files), default=0.0))


@st.cache_data(show_spinner=False, max_entries=8)
def reconstructions(vae_dir: str, version: float, real: np.ndarray) -> np.ndarray:
    # The frames themselves are part of the key (Streamlit hashes the array): new episodes bring new ones.
    return app_data.reconstruct(_ui.load_vae(vae_dir), real)


def show_training(shown: app_data.Shown, key: str) -> None:
    """V's loss curves and its reconstructions of real frames."""
    vae_dir, data_dir = str(Path(shown.model_dir) / "vae"), shown.data_dir
    records = app_data.history(vae_dir)
    train = [r for r in records if VaeMetric.RECONSTRUCTION in r]
    val = [r for r in records if VaeMetric.HELD_OUT_RECONSTRUCTION in r]
    if train or val:
        cols = st.columns(2)
        with cols[0]:
            _ui.line_chart(train + val, Training.STEP, {"reconstruction (train)": VaeMetric.RECONSTRUCTION,
                                                        "reconstruction (held out)": VaeMetric.HELD_OUT_RECONSTRUCTION},
                           "Reconstruction loss (summed squared error a frame)", key=f"{key}.r_loss")
        with cols[1]:
            _ui.line_chart(train + val, Training.STEP, {"KL (train, clamped)": VaeMetric.KL,
                                                        "KL (held out)": VaeMetric.HELD_OUT_KL},
                           "KL divergence (nats a frame)", key=f"{key}.kl")
    art = app_data.artifact(vae_dir, "vae")
    real = frames(data_dir)
    if art is None or len(real) == 0:
        st.caption("Reconstructions appear here once V has weights (at its first checkpoint).")
        return
    try:
        recon = reconstructions(vae_dir, art["updated"], real)
    except Exception as e:  # weights of another shape, a file being replaced: say so, keep the page
        st.warning(f"Could not load V from `{vae_dir}` for reconstructions: {e}")
        return
    source = "sample frames of 8 tracks, shipped with the app" if shown.sample else f"real frames of `{data_dir}`"
    st.image(app_data.grid([real, recon], scale=2),
             caption=f"Top: {source}. Bottom: V's reconstructions (`{vae_dir}`, "
                     f"weights of {app_data.when(art['updated'])}).")


def live(snap) -> None:
    shown = _ui.shown_folders("train-vae", snap, config, VAEConfig)
    if not shown.shipped:  # the shipped V is shown at the top of the page
        show_training(shown, key="vae")


if shown.shipped:
    with shipped_view:
        _ui.shipped_note(shown, "V")
        show_training(shown, key="vae.shipped")
        st.subheader("Train your own")
_ui.job_panel("train-vae", live, unit="batches", stop_label="Stop training")

st.subheader("Latent explorer")
st.caption("Move along single dimensions of z and see what V has learned they mean, and what C would do on "
           "seeing it. The dimensions V uses most (the largest spread of their codes over real frames) come first.")


@st.cache_data(show_spinner=False, max_entries=8)
def moments(data_dir: str, version: float) -> tuple[np.ndarray, list[tuple[str, int] | None]]:
    return app_data.sample_moments(data_dir, count=8, seed=1)  # the frames of the reconstructions above


@st.cache_data(show_spinner=False, max_entries=8)
def start_points(vae_key: tuple, data_key: tuple, _vae, _real: np.ndarray) -> dict:
    # Computed once for a V and a set of frames, not on every slider move.
    return app_data.explorer_start(_vae, _real)


@st.cache_data(show_spinner="M reads the episode up to this frame…", max_entries=64)
def memory(model_key: tuple, episode: str, step: int, _model) -> np.ndarray:
    return app_data.memory_at(_model, episode, step)


def what_c_does(z: np.ndarray, parts: dict, model, moment: tuple[str, int] | None, model_note: str | None) -> None:
    """C's action on the z of the sliders and M's memory at the start's moment of a real drive."""
    st.markdown("**What C would do**")
    if model is None:
        st.caption(model_note or "C acts on z and M's memory h: its action appears here once this run has an M "
                   "too (Train RNN).")
        return
    if parts["controller_dir"] is None:
        st.caption("No controller to ask yet: evolve one on the Evolve page.")
        return
    try:
        controller = _ui.load_controller(parts["controller_dir"], model.z_size, model.hidden)
    except ArtifactError as e:
        st.caption(f"The controller in `{parts['controller_dir']}` cannot act on this V and M: {e}")
        return
    if moment is not None:
        h = memory((parts["model_dir"], id(model.w)), moment[0], moment[1], model)
        where = f"M's memory h at this frame ({app_data.relative(moment[0])}, step {moment[1]})"
    else:
        h = np.zeros(model.hidden, np.float32)
        where = "an empty memory (h = 0, as at the start of an episode)"
    _ui.action_bars(app_data.controller_action(controller, z, h))
    whose = (f"C of `{parts['controller_dir']}` (this run has none yet)" if parts["shipped_controller"]
             else f"C of `{parts['controller_dir']}`")
    st.caption(f"{whose}, on your z and {where}.")


@st.fragment
def explorer() -> None:
    art = app_data.artifact(vae_dir, "vae")
    if art is None:
        st.caption(f"No VAE in `{vae_dir}` yet.")
        return
    parts = app_data.explorer_parts(vae_dir)
    model, model_note = None, None
    if parts["model_dir"]:
        try:  # V and M of the run together: M's memory for C, and V from the same load
            model = _ui.load_world_model(parts["model_dir"], with_controller=False)
        except Exception as e:  # an M of another V (another z), a file being replaced: V alone still explores
            model_note = f"C's action needs M's memory, and the M in `{parts['model_dir']}` does not load: {e}"
    try:
        vae = model.vae if model is not None else _ui.load_vae(vae_dir)
    except Exception as e:
        st.error(f"Could not load V from `{vae_dir}`: {e}")
        return
    data_key = (data_dir, app_data.data_version(data_dir))
    real, where = moments(*data_key)
    start = start_points((vae_dir, art["updated"], id(vae)), data_key, vae, real)
    options = ["random z (prior)"] + [f"real frame {i + 1}" for i in range(len(real))]
    choice = st.selectbox("Start from", options, index=1 if len(real) else 0, key="vae.explore_start")
    i = options.index(choice) - 1  # -1: the prior
    base = start["z"][i] if i >= 0 else start["prior"]
    spread, order = start["spread"], start["order"]
    dims = st.multiselect("Dimensions", order, default=order[:min(8, vae.z_size)], key="vae.explore_dims",
                          format_func=lambda d: f"z[{d}] (spread {spread[d]:.2f})")
    z = base.copy()
    cols = st.columns([3, 2])
    with cols[0]:
        slider_cols = st.columns(2)
        for j, d in enumerate(dims):
            with slider_cols[j % 2]:
                z[d] = st.slider(f"z[{d}]", -4.0, 4.0, float(np.clip(base[d], -4, 4)), 0.05,
                                 key=f"vae.z.{choice}.{d}")
    with cols[1]:
        shown = [start["decoded"][i] if i >= 0 else start["prior_decoded"], app_data.decode(vae, z[None])[0]]
        if i >= 0:
            shown = [real[i]] + shown
        st.image(app_data.grid([np.stack(shown)], scale=3),
                 caption=("real · " if i >= 0 else "") + "decoded start · decoded with your z")
        what_c_does(z, parts, model, where[i] if i >= 0 else None, model_note)  # None: h = 0


explorer()
