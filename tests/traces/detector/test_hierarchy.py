"""The hierarchical lot fit: Laplace-EM recovers the between-wafer spread, plain BCD collapses it."""

import numpy as np
import pytest

from greyanom.traces import Traces
from greyanom.traces._hierarchy import PARAMS, fit_lot


def _alpha(t, s):
    g, R, w, y, p, c = s
    tau = t - t.min()
    return R * np.exp(-g * tau / 2) * np.cos(w * tau - p) + c * tau + y


def _lot(rng, tau, n_traces=40, n_points=60, noise=0.05):
    mu = np.array([0.3, 2.0, 0.5, 10.0, 0.2, 0.01])
    S = mu + tau * rng.standard_normal((n_traces, 6))
    t = np.linspace(0.0, 30.0, n_points)
    Z = [_alpha(t, s) + noise * rng.standard_normal(n_points) for s in S]
    return Traces.from_arrays([t] * n_traces, Z), S


def test_laplace_em_recovers_spread_and_bcd_collapses_it():
    rng = np.random.default_rng(0)
    # The omega spread is about 1.3 estimation standard errors (I tau^2 < 3): the paper's BCD
    # has no non-zero fixed point there (paper notes T10); the other spreads are larger.
    tau = np.array([0.03, 0.2, 0.003, 0.012, 0.05, 0.0])
    traces, S = _lot(rng, tau, n_traces=150)
    em = fit_lot(traces, update="laplace", max_iter=60, tol=1e-4)
    bcd = fit_lot(traces, update="bcd", max_iter=60, tol=1e-4)
    sample_sd = S.std(axis=0)
    for d in (0, 1, 2, 3, 4):
        assert 0.7 * sample_sd[d] < em.prior_sd[d] < 1.4 * sample_sd[d], PARAMS[d]
    assert abs(em.noise_sd / 0.05 - 1) < 0.05
    # BCD: the omega spread collapses to (almost) zero; EM keeps it
    assert bcd.prior_sd[2] < 0.1 * sample_sd[2]
    assert bcd.converged and bcd.n_iter < em.n_iter
    # c has no true spread: EM shrinks it towards 0 but never below the floor or to NaN
    assert np.all(np.isfinite(em.prior_sd)) and em.prior_sd[5] > 0
    assert list(em.history.columns) == ["noise_sd", *[f"sd_{p}" for p in PARAMS]]


def test_fit_lot_mean_update_keeps_spread_and_moves_mean():
    rng = np.random.default_rng(1)
    traces, S = _lot(rng, np.array([0.03, 0.2, 0.02, 0.1, 0.05, 0.0]), n_traces=12)
    mu0 = np.array([0.3, 2.0, 0.5, 9.5, 0.2, 0.01])
    sd0 = np.array([0.03, 0.2, 0.02, 0.1, 0.05, 1e-3])
    res = fit_lot(traces, init=(0.05, mu0, sd0), update="mean", max_iter=10)
    np.testing.assert_array_equal(res.prior_sd, sd0)
    assert res.noise_sd == 0.05
    assert abs(res.prior_mean[3] - S[:, 3].mean()) < 0.1


def test_fit_lot_errors():
    rng = np.random.default_rng(2)
    traces, _ = _lot(rng, np.full(6, 0.01), n_traces=3)
    with pytest.raises(ValueError, match="at least 2 traces"):
        fit_lot(traces[[0]])
    with pytest.raises(ValueError, match="update must be"):
        fit_lot(traces, update="newton")
    with pytest.raises(ValueError, match="init="):
        fit_lot(traces, update="mean")


def test_fit_lot_says_what_a_run_without_convergence_means(caplog):
    import logging

    rng = np.random.default_rng(1)
    traces, _ = _lot(rng, np.array([0.03, 0.2, 0.02, 0.1, 0.05, 0.001]), n_traces=10)
    with caplog.at_level(logging.INFO, logger="greyanom"):
        res = fit_lot(traces, update="laplace", max_iter=1, tol=1e-12)
    assert not res.converged
    (msg,) = [r.getMessage() for r in caplog.records if "did not converge" in r.getMessage()]
    assert "in 1 iterations (last relative change " in msg and "tol 1e-12" in msg
    assert "raise max_iter (max_em_iter on the trace detectors) or tol (em_tol)" in msg
    assert "LotFit.converged is False" in msg


def test_fit_lot_in_tiny_units_is_the_fit_in_ordinary_units_scaled():
    # the floors on sigma and sigma_S follow the data's units below 1: a lot scaled by 1e-20
    # fits as the same lot scaled by 0.05 (values below 1, where the floors follow the units too),
    # floors included (BCD drives sigma_S of R and y onto them)
    rng = np.random.default_rng(7)
    traces, _ = _lot(rng, 0.02, n_traces=12)
    t = [traces.t[traces.offsets[i]:traces.offsets[i + 1]] for i in range(len(traces))]
    z = [traces.z[traces.offsets[i]:traces.offsets[i + 1]] for i in range(len(traces))]
    assert 0.05 * np.abs(traces.z).max() < 1
    ref = fit_lot(Traces.from_arrays(t, [0.05 * v for v in z]), update="bcd")
    tiny = fit_lot(Traces.from_arrays(t, [1e-20 * v for v in z]), update="bcd")
    units = np.array([2e-19 if p in ("R", "y", "c") else 1.0 for p in PARAMS])
    assert tiny.n_iter == ref.n_iter
    np.testing.assert_allclose(tiny.noise_sd, 2e-19 * ref.noise_sd, rtol=1e-6)
    np.testing.assert_allclose(tiny.prior_sd, units * ref.prior_sd, rtol=1e-6)
    np.testing.assert_allclose(tiny.prior_mean, units * ref.prior_mean, rtol=1e-6)
