"""Reference tests of the losses against plain NumPy loops."""

import math

import numpy as np

from core.models.mdnrnn import mdn_nll
from core.models.vae import kl_divergence, kl_with_tolerance, reconstruction_loss


def test_mdn_nll_matches_numpy_loop():
    rng = np.random.default_rng(0)
    n, z, k = 5, 4, 3
    y = rng.normal(size=(n, z)).astype(np.float32)
    logits = rng.normal(size=(n, z, k))
    log_pi = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    mu = rng.normal(size=(n, z, k)).astype(np.float32)
    log_sigma = rng.normal(scale=0.5, size=(n, z, k)).astype(np.float32)
    expected = np.zeros((n, z))
    for i in range(n):
        for d in range(z):
            p = 0.0
            for j in range(k):
                s = math.exp(log_sigma[i, d, j])
                p += math.exp(log_pi[i, d, j]) * math.exp(-0.5 * ((y[i, d] - mu[i, d, j]) / s) ** 2) / (
                    s * math.sqrt(2 * math.pi))
            expected[i, d] = -math.log(p)
    got = mdn_nll(y, log_pi, mu, log_sigma).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mdn_nll_is_stable_far_from_every_mean():
    y = np.full((1, 1), 50.0, np.float32)
    log_pi = np.log(np.full((1, 1, 2), 0.5, np.float32))
    got = mdn_nll(y, log_pi, np.zeros((1, 1, 2), np.float32), np.full((1, 1, 2), -3.0, np.float32)).numpy()
    assert np.isfinite(got).all() and got[0, 0] > 1000


def test_kl_matches_closed_form_and_tolerance_clamps():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(6, 8)).astype(np.float32)
    logvar = rng.normal(size=(6, 8)).astype(np.float32)
    expected = np.array([sum(0.5 * (math.exp(lv) + m * m - 1 - lv) for m, lv in zip(mr, lr))
                         for mr, lr in zip(mu, logvar)])
    np.testing.assert_allclose(kl_divergence(mu, logvar).numpy(), expected, rtol=1e-5)
    # Close to the prior the KL is tiny, and the tolerance lifts it to kl_tolerance * z_size.
    small = kl_with_tolerance(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32), 0.5).numpy()
    np.testing.assert_allclose(small, [4.0, 4.0])
    big = kl_with_tolerance(mu * 10, logvar, 0.5).numpy()
    np.testing.assert_allclose(big, kl_divergence(mu * 10, logvar).numpy(), rtol=1e-5)


def test_reconstruction_loss_is_summed_squared_error_per_frame():
    x = np.zeros((2, 64, 64, 3), np.float32)
    x_hat = np.full((2, 64, 64, 3), 0.5, np.float32)
    np.testing.assert_allclose(reconstruction_loss(x, x_hat).numpy(), [64 * 64 * 3 * 0.25] * 2)
