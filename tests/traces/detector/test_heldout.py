"""Held-out trace scores of ShapeSignatureDetector without per-fold refits (issue 21, part C).

The fold models come from a Laplace-EM over the other folds' traces started at the fitted
normal model, with E-steps linearised at the full-model fits (``traces/_heldout.py``); the
per-fold refits (``refit=True``) are the reference.
"""

import numpy as np
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.base import threshold_from_scores
from greyanom.datasets import make_pi_lots
from greyanom.traces import Traces
from greyanom.traces._analyser import TraceAnalyser
from greyanom.traces._fit import _fit_arrays
from greyanom.traces._heldout import linearised_estep
from greyanom.traces._hierarchy import _units, fit_lot, laplace_m_step


def _alpha(t, s):
    g, R, w, y, p, c = s
    tau = t - t.min()
    return R * np.exp(-g * tau / 2) * np.cos(w * tau - p) + c * tau + y


@pytest.fixture(scope="module")
def lot():
    rng = np.random.default_rng(3)
    mu = np.array([0.3, 2.0, 0.5, 10.0, 0.2, 0.01])
    S = mu + np.array([0.03, 0.2, 0.01, 0.05, 0.05, 0.002]) * rng.standard_normal((40, 6))
    t = np.linspace(0.0, 30.0, 60)
    traces = Traces.from_arrays([t] * len(S), [_alpha(t, s) + 0.05 * rng.standard_normal(t.size) for s in S])
    return traces, fit_lot(traces, max_iter=60, tol=1e-6)


def _prior_fit(traces, mu, sd, sigma):
    fit = _fit_arrays(traces, prior=(mu, sd), noise_sd=sigma)
    good = np.asarray(fit.success, dtype=bool) & np.isfinite(fit.pp).all(axis=1)
    return fit, good


def test_first_m_step_is_that_of_the_em_started_at_the_model(lot):
    traces, full = lot
    sub = Traces(traces.t[traces.offsets[10]:], traces.z[traces.offsets[10]:], traces.offsets[10:] - traces.offsets[10])
    ref = fit_lot(sub, init=(full.noise_sd, full.prior_mean, full.prior_sd), max_iter=1)
    fit, good = _prior_fit(sub, full.prior_mean, full.prior_sd, full.noise_sd)
    mu, sd, sigma = laplace_m_step(fit.pp[good], fit.ssr[good], fit.n_points[good].astype(float), fit.jtj[good],
                                   full.noise_sd, full.prior_sd, *_units(sub))
    np.testing.assert_allclose(mu, ref.prior_mean, rtol=1e-12)
    np.testing.assert_allclose(sd, ref.prior_sd, rtol=1e-12)
    assert sigma == pytest.approx(ref.noise_sd, rel=1e-12)


def test_linearised_e_step_tracks_the_refit_under_a_new_prior(lot):
    traces, full = lot
    mu, sd, sigma = full.prior_mean, full.prior_sd, full.noise_sd
    fit, good = _prior_fit(traces, mu, sd, sigma)
    x, ssr, jtj = fit.pp[good], fit.ssr[good], fit.jtj[good]
    jtr = sigma**2 * (x - mu) / sd**2  # the fits' optimality under (mu, sd, sigma)
    mu2, sd2, sigma2 = mu + 0.3 * sd, 1.3 * sd, 1.1 * sigma
    new, ok = _prior_fit(traces, mu2, sd2, sigma2)
    assert ok[good].all()
    x_lin, ss_lin = linearised_estep(x, ssr, jtj, jtr, sigma2, mu2, sd2)
    moved = np.abs(new.pp[good] - x) / sd
    err = np.abs(new.pp[good] - x_lin) / sd
    assert np.median(moved) > 0.02  # the new prior moves the signatures
    assert np.median(err) < 0.05 * np.median(moved)
    np.testing.assert_allclose(ss_lin, new.ssr[good], rtol=2e-3)


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=3, wafers_per_lot=10, sensors=("v", "u"), n_points=60, random_state=2)


@pytest.fixture(scope="module")
def fitted(lots):
    kw = dict(group_keys=("sensor",), lot_key="lot", n_jobs=1, random_state=0)
    return {cal: ShapeSignatureDetector(calibration=cal, **kw).fit(lots) for cal in ("heldout", "in_sample")}


def test_heldout_scores_follow_the_refitted_folds(fitted, lots):
    det = fitted["heldout"]
    an = TraceAnalyser.of(det)
    approx = an.heldout_scores(lots, det.cv, det.random_state)
    refit = an.heldout_scores(lots, det.cv, det.random_state, refit=True)
    assert approx.index.sort_values().equals(refit.index.sort_values())  # the same traces, the same folds
    refit = refit[approx.index]
    assert np.corrcoef(approx, refit)[0, 1] > 0.995
    thr = [threshold_from_scores(s.to_numpy(), det.contamination) for s in (approx, refit)]
    assert thr[0] == pytest.approx(thr[1], rel=0.03)
    np.testing.assert_array_equal(np.sort(det.heldout_scores_), np.sort(approx.to_numpy()))
    assert det.threshold_ == pytest.approx(thr[0])
    # held out: above the in-sample scores of the same traces
    assert np.median(approx) > np.median(det.train_scores_[approx.index])


def test_in_sample_calibration_and_the_wafer_path_are_unchanged(fitted):
    held, ins = fitted["heldout"], fitted["in_sample"]
    np.testing.assert_array_equal(ins.heldout_scores_, ins.decision_scores_)
    assert ins.threshold_ == threshold_from_scores(ins.decision_scores_, ins.contamination)
    assert held.threshold_ > ins.threshold_
    np.testing.assert_array_equal(held.decision_scores_, ins.decision_scores_)
    np.testing.assert_array_equal(held.wafer_heldout_scores_, ins.wafer_heldout_scores_)
    assert held.wafer_threshold_ == ins.wafer_threshold_


def test_fold_em_stops_at_its_last_finite_prior(lot):
    from types import SimpleNamespace

    from greyanom.traces._heldout import _fold_em
    from greyanom.traces._scoring import NormalModel

    traces, full = lot
    model = NormalModel(full.noise_sd, full.prior_mean, full.prior_sd)
    fit, good = _prior_fit(traces, model.mu, model.sd, model.noise_sd)
    x, ssr, npts, jtj = fit.pp[good], fit.ssr[good], fit.n_points[good].astype(float), fit.jtj[good]
    jtr = model.noise_sd**2 * (x - model.mu) / model.sd**2
    cfg = SimpleNamespace(max_em_iter=50, em_tol=1e-6)
    mu, sd, sigma, ok = _fold_em(x[5:], ssr[5:], npts[5:], jtj[5:], jtr[5:], model, *_units(traces), cfg)
    assert ok and not np.allclose(sd, model.sd)
    # a parameter the data do not identify (no curvature) and whose prior is flat: no step
    jtj0 = jtj.copy()
    jtj0[:, 0, :] = jtj0[:, :, 0] = 0.0
    flat = NormalModel(model.noise_sd, model.mu, np.r_[1e200, model.sd[1:]])
    mu, sd, sigma, ok = _fold_em(x, ssr, npts, jtj0, jtr, flat, *_units(traces), cfg)
    assert not ok
    np.testing.assert_array_equal(sd, flat.sd)
    assert np.isfinite(mu).all() and sigma == flat.noise_sd


def test_fold_models_move_the_fitted_model_by_the_leave_out_change(lot):
    from types import SimpleNamespace

    from greyanom.traces._heldout import _fold_models
    from greyanom.traces._scoring import NormalModel

    traces, full = lot
    # a model that is not the EM's fixed point of these fits (as an EM stopped at max_em_iter)
    model = NormalModel(1.1 * full.noise_sd, full.prior_mean + 0.2 * full.prior_sd, 0.8 * full.prior_sd)
    fit = _fit_arrays(traces, prior=(model.mu, model.sd), noise_sd=model.noise_sd)
    trace_fold = np.arange(len(traces)) % 4
    parts = [(SimpleNamespace(v=traces.z), trace_fold, (np.arange(len(traces)), fit))]
    cfg = SimpleNamespace(max_em_iter=20, em_tol=1e-4, group=())
    out = _fold_models(parts, model, np.array([-1, 0, 1]), cfg)
    # leaving nothing out gives the fitted model back, exactly
    np.testing.assert_allclose(out[-1].mu, model.mu, rtol=0, atol=1e-12 * np.abs(model.mu).max())
    np.testing.assert_allclose(out[-1].sd, model.sd, rtol=1e-12)
    assert out[-1].noise_sd == pytest.approx(model.noise_sd, rel=1e-12)
    # leaving a fold out moves it, by a fraction of a prior sd
    for f in (0, 1):
        assert not np.allclose(out[f].sd, model.sd, rtol=1e-6)
        assert np.max(np.abs(out[f].mu - model.mu) / model.sd) < 0.5
