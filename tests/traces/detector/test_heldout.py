"""Held-out trace scores of ShapeSignatureDetector without per-fold refits (issue 21, part C).

The fold models come from a Laplace-EM over the other folds' traces started at the fitted
normal model, with E-steps linearised at the full-model fits (``traces/_heldout.py``); the
per-fold refits (``refit=True``) are the reference.
"""

import dataclasses

import numpy as np
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.base import threshold_from_scores
from greyanom.datasets import make_pi_lots
from greyanom.traces import Traces
from greyanom.traces._analyser import TraceAnalyser
from greyanom.traces._fit import _fit_arrays
from greyanom.traces import _heldout
from greyanom.traces._heldout import linearised_estep, ran_away
from greyanom.traces._hierarchy import _units, fit_lot, laplace_m_step
from greyanom.traces._scoring import NormalModel


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


def _fold_em_inputs(lot):
    """The lot's traces, its normal model and the arrays of their fits under it (a fold EM's inputs)."""
    traces, full = lot
    model = NormalModel(full.noise_sd, full.prior_mean, full.prior_sd)
    fit, good = _prior_fit(traces, model.mu, model.sd, model.noise_sd)
    x, ssr, npts, jtj = fit.pp[good], fit.ssr[good], fit.n_points[good].astype(float), fit.jtj[good]
    jtr = model.noise_sd**2 * (x - model.mu) / model.sd**2
    return traces, model, x, ssr, npts, jtj, jtr


def test_fold_em_stops_at_its_last_finite_prior(lot):
    from types import SimpleNamespace

    from greyanom.traces._heldout import _fold_em
    from greyanom.traces._scoring import NormalModel

    traces, model, x, ssr, npts, jtj, jtr = _fold_em_inputs(lot)
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


def test_segment_means_are_bit_for_bit_numpy_means():
    from greyanom.traces._hierarchy import _seg_mean

    rng = np.random.default_rng(0)
    sizes = np.r_[2, 3, 7, 8, 9, 31, 130, 1000, rng.integers(2, 60, size=20)]
    bounds = np.r_[0, np.cumsum(sizes)]
    x = rng.standard_normal((bounds[-1], 6)) * rng.lognormal(0, 3, size=(1, 6))
    got = _seg_mean(x, bounds)
    want = np.array([x[lo:hi].mean(axis=0) for lo, hi in zip(bounds[:-1], bounds[1:])])
    np.testing.assert_array_equal(got, want)


def test_lot_ems_run_together_give_each_lot_its_own_fit_bit_for_bit(lot):
    from greyanom.traces._fit import _concat_traces, _run_fits
    from greyanom.traces._hierarchy import _fit_lots_steps

    traces, full = lot

    def part(a, b):
        lo, hi = traces.offsets[a], traces.offsets[b]
        return Traces(traces.t[lo:hi], traces.z[lo:hi], traces.offsets[a:b + 1] - lo)

    lots = [part(0, 12), part(12, 13), part(13, 30), part(30, 40)]  # one of a single trace
    init = (full.noise_sd * np.array([1.0, 1.0, 1.3, 0.8]), np.tile(full.prior_mean, (4, 1)),
            full.prior_sd * np.array([[1.0], [1.0], [0.5], [2.0]]))
    (got,) = _run_fits([_fit_lots_steps(_concat_traces(lots), [len(t) for t in lots], init, max_iter=8, tol=1e-4)])
    assert isinstance(got[1], ValueError)
    for i in (0, 2, 3):
        ref = fit_lot(lots[i], init=(init[0][i], init[1][i], init[2][i]), max_iter=8, tol=1e-4)
        assert got[i].n_iter == ref.n_iter and got[i].converged == ref.converged
        assert got[i].noise_sd == ref.noise_sd
        np.testing.assert_array_equal(got[i].prior_mean, ref.prior_mean)
        np.testing.assert_array_equal(got[i].prior_sd, ref.prior_sd)
        np.testing.assert_array_equal(got[i].fit.pp, ref.fit.params.to_numpy())


def test_fold_ems_run_together_give_each_em_its_own_result(lot):
    from types import SimpleNamespace

    from greyanom.traces._heldout import _fold_em, _fold_ems
    from greyanom.traces._scoring import NormalModel

    traces, model, x, ssr, npts, jtj, jtr = _fold_em_inputs(lot)
    cfg = SimpleNamespace(max_em_iter=30, em_tol=1e-6)
    flat = NormalModel(model.noise_sd, model.mu, np.r_[1e200, model.sd[1:]])  # its EM cannot step
    jtj0 = jtj.copy()
    jtj0[:, 0, :] = jtj0[:, :, 0] = 0.0
    ems = [(slice(0, 30), model, jtj), (slice(10, 40), model, jtj), (slice(0, 40), flat, jtj0),
           (slice(5, 25), model, jtj)]
    rows = [np.arange(len(x))[s] for s, _, _ in ems]
    bounds = np.r_[0, np.cumsum([r.size for r in rows])]
    r = np.concatenate(rows)
    J = np.concatenate([j[s] for s, _, j in ems])
    units = _units(traces)
    got = _fold_ems(x[r], ssr[r], npts[r], J, jtr[r], bounds, [m for _, m, _ in ems],
                    np.full(len(ems), units[0]), np.tile(units[1], (len(ems), 1)), cfg)
    assert [g[3] for g in got] == [True, True, False, True]
    for (s, m, j), g in zip(ems, got):
        want = _fold_em(x[s], ssr[s], npts[s], j[s], jtr[s], m, *units, cfg)
        for a, b in zip(g, want):
            np.testing.assert_array_equal(a, b)


def test_heldout_scores_equal_those_before_the_batched_pass():
    """The held-out scores of a small simulated case, against those of the pass that ran the
    lot EMs and fold EMs one by one (stored before the batching; the fold EMs' Cholesky
    rounds differently from LAPACK's LU, hence the tolerance)."""
    from pathlib import Path

    ref = np.load(Path(__file__).parents[1] / "data" / "heldout_before_batching.npz")
    df = make_pi_lots(n_lots=3, wafers_per_lot=8, sensors=("v", "u"), n_points=50, random_state=7)
    det = ShapeSignatureDetector(group_keys=("sensor",), lot_key="lot", calibration="in_sample", n_jobs=1,
                                 random_state=0).fit(df)
    np.testing.assert_array_equal(det.score(df).to_numpy(), ref["train_scores"])  # the batched lot EMs: bit for bit
    s = TraceAnalyser.of(det).heldout_scores(df, det.cv, det.random_state)
    np.testing.assert_array_equal(s.index.to_frame().astype(str).agg("/".join, axis=1).to_numpy(), ref["heldout_index"])
    np.testing.assert_allclose(s.to_numpy(), ref["heldout"], rtol=1e-10, atol=1e-12)


def test_fit_reuses_the_analysis_fits_of_the_training_traces(monkeypatch):
    """``fit`` hands its analysis's fits under the normal model to the held-out pass, which then
    fits no trace under the normal model again, and gives what a fresh pass gives, bit for bit."""
    import greyanom.traces._heldout as heldout

    df = make_pi_lots(n_lots=3, wafers_per_lot=8, sensors=("v", "u"), n_points=50, random_state=7)
    orig, calls = heldout._prior_fit_steps, []

    def spy(chunk, model, cfg):
        calls.append(len(chunk))
        return orig(chunk, model, cfg)

    monkeypatch.setattr(heldout, "_prior_fit_steps", spy)
    det = ShapeSignatureDetector(group_keys=("sensor",), lot_key="lot", n_jobs=1, random_state=0).fit(df)
    assert calls == []
    fresh = TraceAnalyser.of(det).heldout_scores(df, det.cv, det.random_state)
    assert sum(calls) == len(det.train_status_)
    np.testing.assert_array_equal(det.heldout_scores_, fresh.to_numpy())
    assert not hasattr(det, "_heldout_state")


def test_ran_away_bounds_the_move_of_a_fold_model():
    full = NormalModel(noise_sd=2.0, mu=np.zeros(6), sd=np.ones(6))
    near = NormalModel(noise_sd=2.5, mu=np.full(6, 3.0), sd=np.full(6, 0.2))
    assert not ran_away(near, full)
    for far in (
        dataclasses.replace(full, sd=np.r_[11.0, np.ones(5)]),  # a spread 11 times the full model's
        dataclasses.replace(full, sd=np.r_[np.ones(5), 0.05]),  # or a twentieth of it
        dataclasses.replace(full, noise_sd=25.0),  # the noise level
        dataclasses.replace(full, mu=np.r_[0, 0, 12.0, 0, 0, 0]),  # a mean 12 spreads away
        dataclasses.replace(full, sd=np.r_[np.nan, np.ones(5)]),
    ):
        assert ran_away(far, full)


def test_a_fold_model_that_ran_away_is_refitted_as_refit_does(fitted, lots, monkeypatch):
    """Where the linearised fold EM runs away (a group whose parameters the traces barely
    identify; on LAM 9600 spreads of 1e9 and beyond), the fold's traces are scored under the
    group's model refitted without the fold: the scores ``refit=True`` gives them."""
    det = fitted["heldout"]
    an = TraceAnalyser.of(det)
    real = _heldout._all_fold_models

    def runaway(by_group, models, folds, cfg):
        out = real(by_group, models, folds, cfg)
        out[("v",)] = {f: dataclasses.replace(m, sd=m.sd * 1e9) for f, m in out[("v",)].items()}
        return out

    before = an.heldout_scores(lots, det.cv, det.random_state)
    refit = an.heldout_scores(lots, det.cv, det.random_state, refit=True)
    monkeypatch.setattr(_heldout, "_all_fold_models", runaway)
    after = an.heldout_scores(lots, det.cv, det.random_state)
    v = after.index.get_level_values("sensor") == "v"
    np.testing.assert_allclose(after[v].to_numpy(), refit[after.index[v]].to_numpy(), rtol=1e-9)
    # the other group keeps its linearised fold models
    np.testing.assert_array_equal(after[~v].to_numpy(), before[after.index[~v]].to_numpy())
    assert not np.allclose(before[after.index[v]], refit[after.index[v]], rtol=1e-6)
