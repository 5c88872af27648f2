"""fit_traces: recovery, regimes, special cases, priors, warm starts, results, errors."""

import numba
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from greyanom.traces import PARAM_NAMES, SignatureFit, Traces, fit_traces, objective_terms


def alpha(p, tau):
    g, r, w, y, phi, c = p
    return r * np.exp(-g * tau / 2) * np.cos(w * tau - phi) + c * tau + y


def _irregular(rng, n=120, lo=2.0, hi=42.0):
    return np.sort(rng.uniform(lo, hi, n))


TRUE = np.array([0.25, 1.5, 0.6, 3.0, 0.4, 0.02])


def test_recovers_underdamped_signature_from_noisy_irregular_traces():
    rng = np.random.default_rng(0)
    times, values = [], []
    for _ in range(20):
        t = _irregular(rng)
        times.append(t)
        values.append(alpha(TRUE, t - t[0]) + rng.normal(0, 0.01, t.size))
    fit = fit_traces(Traces.from_arrays(times, values))
    assert isinstance(fit, SignatureFit) and len(fit) == 20
    assert list(fit.params.columns) == list(PARAM_NAMES)
    assert fit.success.all() and (fit.regime == "underdamped").all()
    np.testing.assert_allclose(fit.params.median().to_numpy(), TRUE, rtol=0.02, atol=0.01)
    np.testing.assert_allclose(fit.x, [t[0] for t in times])
    assert (fit.params.omega >= 0).all() and (fit.params.phi.abs() <= np.pi / 2).all()
    np.testing.assert_allclose(fit.noise_sd, 0.01, rtol=0.3)
    np.testing.assert_allclose(fit.cost, fit.ssr / 2)
    # Laplace covariance: close to the sample spread of the 20 fits
    sd_laplace = np.sqrt(np.median(np.diagonal(fit.covariance, axis1=1, axis2=2), axis=0))
    sd_sample = fit.params.std().to_numpy()
    assert np.all(sd_sample / sd_laplace < 2.5) and np.all(sd_sample / sd_laplace > 0.4)
    assert fit.covariance_of(0).shape == (6, 6)
    frame = fit.to_frame()
    assert {"regime", "status", "n_iter", "cost", "ssr", "n_points", "x"} <= set(frame.columns)


def test_covariance_matches_scipy_curve_fit():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(1)
    t = _irregular(rng, 150)
    z = alpha(TRUE, t - t[0]) + rng.normal(0, 0.02, t.size)
    fit = fit_traces(Traces.from_arrays([t], [z]))
    popt, pcov = curve_fit(lambda tt, *p: alpha(p, tt - t[0]), t, z, p0=fit.params.iloc[0].to_numpy())
    np.testing.assert_allclose(fit.params.iloc[0].to_numpy(), popt, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.covariance[0], pcov, rtol=0.05, atol=1e-3 * np.abs(pcov).max())


def _fit_one(t, z, **kw):
    return fit_traces(Traces.from_arrays([t], [z]), **kw)


def test_critically_damped_loop_fits_cleanly():
    t = np.linspace(0, 30, 100)
    tau = t - t[0]
    z = (1.0 + 0.8 * tau) * np.exp(-0.4 * tau / 2) + 0.01 * tau + 2.0
    fit = _fit_one(t, z)
    assert fit.success[0] and fit.regime[0] == "critical"
    assert fit.ssr[0] < 1e-16
    gen = fit.general.iloc[0]
    np.testing.assert_allclose([gen.gamma, gen.A, gen.B, gen.c, gen.y], [0.4, 1.0, 0.8, 0.01, 2.0], rtol=1e-6, atol=1e-8)
    assert np.isnan(fit.params.R[0]) and np.isnan(fit.params.omega[0])
    np.testing.assert_allclose(fit.params[["gamma", "y", "c"]].iloc[0], [0.4, 2.0, 0.01], rtol=1e-6)


def test_overdamped_loop_is_two_exponentials():
    t = np.linspace(0, 40, 120)
    z = 1.0 * np.exp(-0.074 * t) - 0.6 * np.exp(-0.276 * t) + 0.5
    fit = _fit_one(t, z)
    assert fit.success[0] and fit.regime[0] == "overdamped"
    assert fit.ssr[0] < 1e-14
    g = fit.general.iloc[0]
    mu = np.sqrt(-g.kappa)
    np.testing.assert_allclose(sorted([g.gamma / 2 - mu, g.gamma / 2 + mu]), [0.074, 0.276], rtol=1e-5)
    # the paper's (11) cannot represent it: R, omega, phi are NaN in the general fit ...
    assert np.isnan(fit.params.omega[0])
    # ... and a paper-space fit with a prior gives the best (11) can do, finite and bounded
    prior = (np.array([0.3, 0.0, 0.1, 0.5, 0.0, 0.0]), np.array([1.0, 10.0, 1.0, 10.0, 10.0, 1.0]))
    paper = _fit_one(t, z, prior=prior, noise_sd=0.01)
    assert paper.success[0] and np.isfinite(paper.params.to_numpy()).all()
    assert np.isfinite(paper.hessian[0]).all()
    assert paper.ssr[0] > 1e3 * fit.ssr[0]


@pytest.mark.parametrize(
    "name, p, regimes",
    [
        ("constantly driven oscillator", [0.2, 1.0, 0.8, 1.0, 0.3, 0.0], {"underdamped"}),
        ("pure exponential", [0.3, 2.0, 0.0, 1.0, 0.0, 0.0], {"critical", "overdamped"}),
        ("constant", [0.3, 0.0, 0.5, 4.0, 0.0, 0.0], {"degenerate"}),
        ("ramp", [0.3, 0.0, 0.5, 4.0, 0.0, 0.05], {"degenerate"}),
    ],
)
def test_special_cases_of_the_paper_fit_cleanly(name, p, regimes):
    rng = np.random.default_rng(2)
    t = _irregular(rng, 90)
    z = alpha(np.array(p), t - t[0])
    fit = _fit_one(t, z)
    assert fit.success[0], (name, fit.message[0])
    assert fit.regime[0] in regimes, (name, fit.regime[0])
    assert fit.ssr[0] < 1e-14 * max(1.0, (z**2).sum())
    np.testing.assert_allclose(fit.predict([t])[0], z, atol=1e-7)
    np.testing.assert_allclose(fit.params[["y", "c"]].iloc[0], [p[3], p[5]], atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(shift=st.floats(-500.0, 500.0, allow_nan=False), seed=st.integers(0, 50))
def test_fit_is_invariant_to_a_shift_of_the_time_axis(shift, seed):
    rng = np.random.default_rng(seed)
    t = _irregular(rng, 80)
    z = alpha(TRUE, t - t[0]) + rng.normal(0, 0.01, t.size)
    a = _fit_one(t, z)
    b = _fit_one(t + shift, z)
    np.testing.assert_allclose(b.x, a.x + shift, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(b.params.to_numpy(), a.params.to_numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.ssr, a.ssr, rtol=1e-6)


def test_prior_fit_is_a_stationary_point_of_the_documented_objective():
    rng = np.random.default_rng(3)
    times = [_irregular(rng, n) for n in (60, 80, 3)]  # the last trace is too short alone
    values = [alpha(TRUE, t - t[0]) + rng.normal(0, 0.05, t.size) for t in times]
    tr = Traces.from_arrays(times, values, keys=["w1", "w2", "w3"])
    mean = TRUE + np.array([0.02, 0.1, 0.01, 0.05, 0.05, 0.001])
    sd = np.array([0.05, 0.3, 0.05, 0.2, 0.2, 0.01])
    fit = fit_traces(tr, prior=(mean, sd), noise_sd=0.05)
    assert fit.model == "paper" and fit.has_prior
    assert fit.success.all()
    assert list(fit.params.index) == ["w1", "w2", "w3"]
    f, g, h = objective_terms(tr, fit.params, prior=(mean, sd), noise_sd=0.05)
    np.testing.assert_allclose(f, fit.cost, rtol=1e-10)
    f2, _, _ = objective_terms(tr, fit.params[list(reversed(PARAM_NAMES))], prior=(mean, sd), noise_sd=0.05)
    np.testing.assert_allclose(f2, f)
    np.testing.assert_allclose(h, fit.hessian, rtol=1e-8, atol=1e-8)
    # gradient vanishes at the optimum, relative to its scale
    scale = np.sqrt(np.abs(np.diagonal(h, axis1=1, axis2=2)))
    assert np.all(np.abs(g) / scale < 1e-4)
    # the 3-point trace is held near the prior mean
    np.testing.assert_allclose(fit.params.iloc[2], mean, atol=3 * sd.max())
    # documented objective, by hand
    tau = times[0] - times[0][0]
    s = fit.params.iloc[0].to_numpy()
    r = values[0] - alpha(s, tau)
    ref = 0.5 * tau.size * np.log(0.05**2) + r @ r / (2 * 0.05**2) + np.sum(np.log(sd) + (s - mean) ** 2 / (2 * sd**2))
    np.testing.assert_allclose(fit.cost[0], ref, rtol=1e-10)
    cov = fit.covariance_of(0)
    np.testing.assert_allclose(cov @ fit.hessian[0], np.eye(6), atol=1e-6)
    np.testing.assert_allclose(fit.jtj[0], fit.jtj[0].T)


def test_prior_keeps_omega_and_phi_inside_their_bounds():
    rng = np.random.default_rng(4)
    t = _irregular(rng, 60)
    p = np.array([0.25, 1.5, 0.02, 3.0, 1.5, 0.02])  # phi near the bound, omega near 0
    z = alpha(p, t - t[0]) + rng.normal(0, 0.02, t.size)
    mean = np.array([0.25, 1.5, -0.5, 3.0, 2.5, 0.0])  # a prior pulling out of the box
    fit = _fit_one(t, z, prior=(mean, np.ones(6)), noise_sd=0.02)
    assert fit.params.omega[0] >= 0.0
    assert abs(fit.params.phi[0]) <= np.pi / 2 + 1e-12


def test_warm_start_converges_to_the_same_signature_faster():
    rng = np.random.default_rng(5)
    times = [_irregular(rng) for _ in range(10)]
    values = [alpha(TRUE, t - t[0]) + rng.normal(0, 0.01, t.size) for t in times]
    tr = Traces.from_arrays(times, values)
    cold = fit_traces(tr)
    init = cold.params.to_numpy().copy()
    init[3] = np.nan  # one row without a start: cold start for that row
    warm = fit_traces(tr, init=init)
    np.testing.assert_allclose(warm.params.to_numpy(), cold.params.to_numpy(), rtol=1e-6, atol=1e-8)
    assert warm.n_iter.sum() < cold.n_iter.sum()


def test_failures_are_data_with_one_warning():
    tr = Traces.from_arrays([np.arange(4.0), np.arange(50.0), np.zeros(0)], [np.zeros(4), np.sin(np.arange(50.0)), np.zeros(0)])
    with pytest.warns(ConvergenceWarning, match="2 of 3") as record:
        fit = fit_traces(tr)
    assert len([w for w in record if issubclass(w.category, ConvergenceWarning)]) == 1
    np.testing.assert_array_equal(fit.status[[0, 2]], [-1, -1])
    assert not fit.success[0] and fit.success[1]
    assert "Too few points" in fit.message[0]
    assert fit.regime[0] == "failed" and np.isnan(fit.params.iloc[0]).all()
    assert fit.covariance_of(0) is None
    # with a prior a short trace is fine
    fit = fit_traces(tr[:1], prior=(TRUE, np.ones(6)), noise_sd=0.1)
    assert fit.success[0]


def test_n_jobs_sets_and_restores_numba_threads():
    tr = Traces.from_arrays([np.arange(20.0)], [np.sin(np.arange(20.0))])
    before = numba.get_num_threads()
    fit_traces(tr, n_jobs=1)
    assert numba.get_num_threads() == before
    fit_traces(tr, n_jobs=-1)
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="n_jobs"):
        fit_traces(tr, n_jobs=0)
    assert numba.get_num_threads() == before


def test_small_batches_run_on_one_thread_by_default():
    from greyanom.traces._fit import SMALL_BATCH, numba_threads

    before = numba.get_num_threads()
    with numba_threads(None, SMALL_BATCH - 1) as n:
        assert n == 1 == numba.get_num_threads()
    with numba_threads(None, SMALL_BATCH) as n:
        assert n == before == numba.get_num_threads()
    with numba_threads(-1, 3) as n:  # an explicit n_jobs wins
        assert n == numba.config.NUMBA_NUM_THREADS
    assert numba.get_num_threads() == before


def test_predict_shapes_and_values():
    t = np.linspace(10, 30, 60)
    z = alpha(TRUE, t - 10)
    fit = _fit_one(t, z)
    shared = np.linspace(10, 30, 7)
    out = fit.predict(shared)
    assert out.shape == (1, 7)
    np.testing.assert_allclose(out[0], alpha(TRUE, shared - 10), atol=1e-7)
    np.testing.assert_allclose(fit.predict(Traces.from_arrays([t], [z]))[0], z, atol=1e-7)
    with pytest.raises(ValueError, match="traces"):
        fit.predict([t, t])


def test_frame_input_keeps_keys():
    rng = np.random.default_rng(6)
    rows = []
    for wafer in ("w2", "w1"):
        t = _irregular(rng, 70)
        rows.append(pd.DataFrame({"wafer": wafer, "t": t, "value": alpha(TRUE, t - t[0])}))
    fit = fit_traces(Traces.from_frame(pd.concat(rows)))
    assert list(fit.params.index) == ["w1", "w2"]
    np.testing.assert_allclose(fit.params.to_numpy(), np.vstack([TRUE, TRUE]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(prior=(TRUE, np.ones(6))), ValueError, "noise_sd is required"),
        (dict(prior=(TRUE, np.ones(5)), noise_sd=1.0), ValueError, "prior sd"),
        (dict(prior=(TRUE, -np.ones(6)), noise_sd=1.0), ValueError, "strictly positive"),
        (dict(prior=TRUE, noise_sd=1.0), TypeError, "pair"),
        (dict(prior=(TRUE, np.ones(6)), noise_sd=1.0, model="general"), ValueError, "model='paper'"),
        (dict(noise_sd=[1.0, 2.0]), ValueError, "noise_sd"),
        (dict(init=np.zeros((2, 6))), ValueError, "init"),
        (dict(model="black-box"), ValueError, "model"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(tol=2.0), ValueError, "tol"),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match):
    tr = Traces.from_arrays([np.arange(10.0)], [np.zeros(10)])
    with pytest.raises(exc, match=match):
        fit_traces(tr, **kwargs)


def test_traces_argument_must_be_traces():
    with pytest.raises(TypeError, match="Traces"):
        fit_traces([np.arange(10.0)])
    with pytest.raises(TypeError, match="Traces"):
        objective_terms(np.zeros(3), np.zeros((1, 6)))
