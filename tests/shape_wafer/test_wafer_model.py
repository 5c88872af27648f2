"""The shared wafer model: robust per-lot scaler, PCA, exact Q / T² contributions, cross-fitting."""

import numpy as np
import pytest

from greyanom.traces import _wafer_model as wm


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n, p = 60, 12
    latent = rng.normal(size=(n, 2)) @ rng.normal(size=(2, p))
    F = latent + 0.1 * rng.normal(size=(n, p))
    lots = np.repeat(["a", "b", "c"], n // 3)
    F[lots == "b"] += 5.0  # lots sit at different levels
    F[:, 3] = np.where(rng.random(n) < 0.1, 1.0, 0.0)  # a quantised sensor, mostly 0
    return F, lots


@pytest.mark.parametrize("statistic", ["q", "t2", "combined"])
def test_contributions_sum_exactly_to_the_score(data, statistic):
    F, lots = data
    m, _, _ = wm.cross_fit(F, lots, random_state=0, statistic=statistic)
    Z, known = wm.scale_rows(m, F + 0.3, lots)
    score, contrib, q, t2 = wm.wafer_terms(m, Z)
    np.testing.assert_allclose(contrib.sum(axis=1), score, rtol=1e-12, atol=1e-12)
    expect = {"q": q / m.delta_q, "t2": t2 / m.delta_t, "combined": q / m.delta_q + t2 / m.delta_t}[statistic]
    np.testing.assert_allclose(score, expect)
    assert known.all()


def test_q_and_t2_against_a_naive_reference(data):
    F, lots = data
    m = wm.fit_wafer_model(F, lots, n_components=3)
    Z, _ = wm.scale_rows(m, F, lots)
    _, _, q, t2 = wm.wafer_terms(m, Z)
    for i in range(5):
        z = Z[i]
        proj = sum(np.dot(z, v) * v for v in m.components)
        assert np.isclose(q[i], np.sum((z - proj) ** 2))
        assert np.isclose(t2[i], sum(np.dot(z, v) ** 2 / lam for v, lam in zip(m.components, m.variances)))


def test_per_lot_centre_removes_the_lot_level_and_scale_has_a_floor(data):
    F, lots = data
    m = wm.fit_wafer_model(F, lots)
    Z, _ = wm.scale_rows(m, F, lots)
    for lot in "abc":
        assert np.abs(np.median(Z[lots == lot], axis=0)).max() < 1e-9
    # the quantised column has MAD 0 but a scale of at least scale_floor * sd
    assert (m.lot_scale[:, 3] > 0.5 * F[:, 3].std() * 0.5).all()
    assert np.abs(Z).max() <= m.clip


def test_unseen_lot_pooled_or_self(data):
    F, lots = data
    m = wm.fit_wafer_model(F, lots)
    new = F[lots == "b"][:6] + 2.0
    Zp, known = wm.scale_rows(m, new, ["z"] * 6, new_lots="pooled")
    assert not known.any()
    np.testing.assert_allclose(Zp, np.clip((new - m.center) / m.scale, -m.clip, m.clip))
    Zs, _ = wm.scale_rows(m, new, ["z"] * 6, new_lots="self")
    assert np.abs(np.median(Zs, axis=0)).max() < 1e-9  # centred on itself: the shift is gone
    Z2, _ = wm.scale_rows(m, new[:2], ["z"] * 2, new_lots="self")  # too small: pooled
    np.testing.assert_allclose(Z2, Zp[:2])


def test_cross_fitted_scores_are_held_out(data):
    F, lots = data
    m, heldout, folds = wm.cross_fit(F, lots, n_splits=5, random_state=0)
    Z, _ = wm.scale_rows(m, F, lots)
    insample, _, _, _ = wm.wafer_terms(m, Z)
    assert np.median(heldout) == pytest.approx(1.0)  # normalised by the held-out median Q
    assert np.median(insample) < np.median(heldout)  # in-sample scores are optimistic
    assert set(np.unique(folds)) == set(range(5))
    for lot in "abc":  # every lot in every fold
        assert len(np.unique(folds[lots == lot])) == 5
    m2, heldout2, _ = wm.cross_fit(F, lots, n_splits=5, random_state=0)
    np.testing.assert_array_equal(heldout, heldout2)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        wm.fit_wafer_model(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="2 rows"):
        wm.fit_wafer_model(np.ones((1, 3)))
    m = wm.fit_wafer_model(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="shape"):
        wm.scale_rows(m, np.ones((2, 4)))
    with pytest.raises(ValueError, match="statistic"):
        wm.fit_wafer_model(np.ones((4, 2)) + np.arange(4)[:, None], statistic="bogus")


def test_arrays_round_trip(data):
    F, lots = data
    m, _, _ = wm.cross_fit(F, lots, random_state=0)
    m2 = wm.WaferModel.from_arrays(m.to_arrays(), list(m.lots), m.statistic)
    Z, _ = wm.scale_rows(m, F, lots)
    np.testing.assert_array_equal(wm.wafer_terms(m, Z)[0], wm.wafer_terms(m2, Z)[0])
