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


@pytest.fixture
def wide():
    """Many independent features; feature 5 has rare large excursions (a noisy sensor)."""
    rng = np.random.default_rng(3)
    n, p = 120, 150
    F = rng.normal(size=(n, p))
    F[:, 5] += np.where(rng.random(n) < 0.1, rng.normal(scale=8.0, size=n), 0.0)
    lots = np.repeat(["a", "b"], n // 2)
    return F, lots


#: level term configurations: (level_term, level_subspace_weight)
LEVELS = [("scaled", 0.5), ("residual", 0.0), ("residual", 0.5)]


def _naive_level_values(m, Z, term, c):
    """Per-feature level values ``V`` of rows ``Z``, from the formulas of the module docstring."""
    P = m.components
    E = np.array([z - sum(np.dot(z, v) * v for v in P) for z in Z])  # residual off the subspace
    if term == "scaled":
        return m.level_weights * Z**2
    V = m.level_weights * E**2
    return V if c == 0 else np.maximum(V, m.scaled_level_weights * Z**2)


@pytest.mark.parametrize("term, c", LEVELS)
@pytest.mark.parametrize("statistic", ["q", "t2", "combined"])
def test_level_term_is_exact_and_goes_to_the_argmax_feature(wide, statistic, term, c):
    F, lots = wide
    mask = np.zeros(F.shape[1], dtype=bool)
    mask[::2] = True
    m, heldout, _ = wm.cross_fit(F, lots, random_state=0, statistic=statistic, level_mask=mask, level_weight=0.5,
                                 level_term=term, level_subspace_weight=c)
    assert m.has_level and np.isfinite(heldout).all()
    assert m.level_residual == (term == "residual") and (m.scaled_level_weights is not None) == (term == "residual" and c > 0)
    X = F[:10] + np.linspace(-3, 3, 10)[:, None]
    Z, _ = wm.scale_rows(m, X, lots[:10])
    score, contrib, q, t2 = wm.wafer_terms(m, Z)
    np.testing.assert_allclose(contrib.sum(axis=1), score, rtol=1e-12, atol=1e-12)
    base = {"q": q / m.delta_q, "t2": t2 / m.delta_t, "combined": q / m.delta_q + t2 / m.delta_t}[statistic]
    V = _naive_level_values(m, Z, term, c)
    naive = np.array([max(v[j] for j in np.flatnonzero(mask)) for v in V])
    np.testing.assert_allclose(score, base + 0.5 * naive / m.delta_m, rtol=1e-10)
    m0 = m.with_level(m.level_weights, m.delta_m, 0.0)  # the same model without the level term
    s0, c0, _, _ = wm.wafer_terms(m0, Z)
    extra = contrib - c0
    arg = np.argmax(V, axis=1)
    np.testing.assert_allclose(extra[np.arange(10), arg], score - s0, rtol=1e-10)
    assert np.count_nonzero(np.abs(extra) > 1e-12, axis=1).max() == 1
    assert mask[arg].all() and (m.level_weights[~mask] == 0).all()


def _naive_out_of_fold(F, lots, folds, **kw):
    """Out-of-fold scaled rows, residuals and Q of one fold split, each fold under a model fitted without it."""
    Zo, Eo, Q = np.empty_like(F), np.empty_like(F), np.empty(F.shape[0])
    for k in np.unique(folds):
        fk = wm.fit_wafer_model(F[folds != k], lots[folds != k], **kw)
        z = wm.scale_rows(fk, F[folds == k], lots[folds == k])[0]
        e = z - z @ fk.components.T @ fk.components
        Zo[folds == k], Eo[folds == k], Q[folds == k] = z, e, (e**2).sum(axis=1)
    return Zo, Eo, Q


@pytest.mark.parametrize("term, c", LEVELS)
def test_level_weights_are_the_out_of_fold_spread_and_weigh_a_noisy_feature_down(wide, term, c):
    F, lots = wide
    mask = np.ones(F.shape[1], dtype=bool)
    m, _, folds = wm.cross_fit(F, lots, random_state=0, level_mask=mask, level_weight=1.0, scale_floor=0.5,
                               level_term=term, level_subspace_weight=c)
    Zo, Eo, _ = _naive_out_of_fold(F, lots, folds, n_components=4, scale_floor=0.5)
    R = Eo if term == "residual" else Zo
    np.testing.assert_allclose(m.level_weights, 1.0 / (R**2).mean(axis=0), rtol=1e-12)
    V = m.level_weights * R**2
    if term == "residual" and c > 0:
        np.testing.assert_allclose(m.scaled_level_weights, c / (Zo**2).mean(axis=0), rtol=1e-12)
        V = np.maximum(V, m.scaled_level_weights * Zo**2)
    assert m.delta_m == pytest.approx(np.median(V.max(axis=1)), rel=1e-12)
    assert np.argmin(m.level_weights) == 5  # the noisy feature counts least


def test_residual_level_term_discounts_a_shift_along_normal_variation_and_keeps_one_across_it():
    """A joint level shift that some normal wafers also show (a chamber's first wafers, on LAM 9600)
    lies in the principal subspace: the residual level term does not count it, the scaled one does.
    A shift of one feature off that pattern counts in both."""
    rng = np.random.default_rng(7)
    n, p = 120, 40
    F = rng.normal(size=(n, p))
    first = rng.random(n) < 0.05  # 4 of the normal wafers: features 0-4 move together by 6
    F[first, :5] += 6.0
    lots = np.repeat(["a", "b"], n // 2)
    mask = np.ones(p, dtype=bool)
    along = rng.normal(size=(50, p))
    along[:, :5] += 6.0
    across = rng.normal(size=(50, p))
    across[:, 7] += 6.0
    normal = rng.normal(size=(50, p))
    new = np.repeat(["a", "b"], 25)

    def level(term, c):
        m, _, _ = wm.cross_fit(F, lots, random_state=0, level_mask=mask, level_weight=1.0, n_components=4,
                               scale_floor=0.5, level_term=term, level_subspace_weight=c)
        return [np.median(wm.level_term(m, wm.scale_rows(m, X, new)[0])[0] / m.delta_m) for X in (along, across, normal)]

    (sa, sx, sn), (ra, rx, rn), (ha, hx, hn) = level("scaled", 0.5), level("residual", 0.0), level("residual", 0.5)
    assert sa > 3 * sn and sx > 3 * sn  # the scaled term counts both shifts
    assert ra < 1.5 * rn and rx > 3 * rn  # the residual term only the one across the pattern
    assert 1.5 * ra < ha < 0.7 * sa  # with c = 0.5 the shift along the pattern counts, discounted
    assert hx > 3 * hn


def test_level_term_options_are_checked(wide):
    F, lots = wide
    with pytest.raises(ValueError, match="level_term must be 'residual' or 'scaled'"):
        wm.cross_fit(F, lots, level_mask=np.ones(F.shape[1], bool), level_weight=1.0, level_term="raw")
    with pytest.raises(ValueError, match=r"level_subspace_weight must be in \[0, 1\]"):
        wm.cross_fit(F, lots, level_mask=np.ones(F.shape[1], bool), level_weight=1.0, level_subspace_weight=1.5)


def test_level_term_catches_a_single_feature_shift_that_q_misses(wide):
    F, lots = wide
    rng = np.random.default_rng(4)
    mask = np.ones(F.shape[1], dtype=bool)
    normal = rng.normal(size=(200, F.shape[1]))
    shifted = rng.normal(size=(200, F.shape[1]))
    shifted[:, 11] += 5.5  # one feature moves; Q spreads it over 150 dimensions
    new_lots = np.repeat(["a", "b"], 100)
    flagged = {}
    for w in (0.0, 1.0):
        m, heldout, _ = wm.cross_fit(F, lots, random_state=0, level_mask=mask, level_weight=w, scale_floor=0.5)
        limit = np.quantile(heldout, 0.99)
        s_n = wm.wafer_terms(m, wm.scale_rows(m, normal, new_lots)[0])[0]
        s_f = wm.wafer_terms(m, wm.scale_rows(m, shifted, new_lots)[0])[0]
        flagged[w] = ((s_f > limit).mean(), (s_n > limit).mean())
    assert flagged[0.0][0] < 0.3 and flagged[1.0][0] > 0.75
    assert flagged[1.0][1] < 0.05


def test_arrays_round_trip_with_a_level_term_and_from_old_arrays(wide):
    F, lots = wide
    m, _, _ = wm.cross_fit(F, lots, random_state=0, level_mask=np.ones(F.shape[1], bool), level_weight=0.5)
    assert m.level_residual and m.scaled_level_weights is not None
    m2 = wm.WaferModel.from_arrays(m.to_arrays(), list(m.lots), m.statistic)
    Z, _ = wm.scale_rows(m, F, lots)
    np.testing.assert_array_equal(wm.wafer_terms(m, Z)[0], wm.wafer_terms(m2, Z)[0])
    # arrays written before the residual level term (five scalars): the level term on the scaled features
    ms, _, _ = wm.cross_fit(F, lots, random_state=0, level_mask=np.ones(F.shape[1], bool), level_weight=0.5,
                            level_term="scaled")
    five = dict(ms.to_arrays(), scalars=ms.to_arrays()["scalars"][:5])
    m5 = wm.WaferModel.from_arrays(five, list(ms.lots), ms.statistic)
    assert m5.has_level and not m5.level_residual and m5.scaled_level_weights is None
    np.testing.assert_array_equal(wm.wafer_terms(m5, Z)[0], wm.wafer_terms(ms, Z)[0])
    old = {k: v for k, v in m.to_arrays().items() if k != "level_weights"}
    old["scalars"] = old["scalars"][:3]  # arrays written before the level term
    m3 = wm.WaferModel.from_arrays(old, list(m.lots), m.statistic)
    assert not m3.has_level
    no_level = m.with_level(m.level_weights, m.delta_m, 0.0)
    np.testing.assert_array_equal(wm.wafer_terms(m3, Z)[0], wm.wafer_terms(no_level, Z)[0])


def test_repeated_cross_fitting_pools_the_out_of_fold_rows_of_every_split(wide):
    from greyanom._crossfit import make_folds, repeat_states

    F, lots = wide
    F, lots = F[:, :40], lots  # fewer features: the nested reference below refits 5 times
    mask = np.ones(F.shape[1], dtype=bool)
    kw = dict(level_mask=mask, level_weight=1.0, scale_floor=0.5, n_components=4)
    m, heldout, folds = wm.cross_fit(F, lots, n_repeats=3, random_state=0, **kw)
    splits = [make_folds(F.shape[0], 5, s, groups=lots) for s in repeat_states(0, 3)]
    np.testing.assert_array_equal(folds, splits[0])  # the first split is the plain one
    parts = [_naive_out_of_fold(F, lots, f, n_components=4, scale_floor=0.5) for f in splits]
    Zo, Eo, Q = (np.concatenate(x) for x in zip(*parts))  # 3 x 120 out-of-fold rows
    assert m.delta_q == pytest.approx(np.median(Q), rel=1e-12)
    np.testing.assert_allclose(m.level_weights, 1.0 / (Eo**2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.scaled_level_weights, 0.5 / (Zo**2).mean(axis=0), rtol=1e-12)
    V = np.maximum(m.level_weights * Eo**2, m.scaled_level_weights * Zo**2)
    assert m.delta_m == pytest.approx(np.median(V.max(axis=1)), rel=1e-12)
    # held out: each fold of the first split scored by the same repeated cross-fitting of the other folds
    for k in range(5):
        mk, _, _ = wm.cross_fit(F[folds != k], lots[folds != k], n_repeats=3, random_state=0, **kw)
        Zk = wm.scale_rows(mk, F[folds == k], lots[folds == k])[0]
        np.testing.assert_allclose(heldout[folds == k], wm.wafer_terms(mk, Zk)[0], rtol=1e-12)
    # without a level term: the first split's out-of-fold Q, over the median Q of all three splits
    q_model, q_heldout, _ = wm.cross_fit(F, lots, n_repeats=3, random_state=0, scale_floor=0.5, n_components=4)
    assert q_model.delta_q == pytest.approx(np.median(Q), rel=1e-12)
    np.testing.assert_allclose(q_heldout, parts[0][2] / np.median(Q), rtol=1e-12)


def test_one_repeat_is_the_plain_cross_fitting(wide):
    F, lots = wide
    kw = dict(level_mask=np.ones(F.shape[1], dtype=bool), level_weight=1.0, random_state=4)
    m1, h1, f1 = wm.cross_fit(F, lots, n_repeats=1, **kw)
    m0, h0, f0 = wm.cross_fit(F, lots, **kw)
    np.testing.assert_array_equal(h1, h0)
    np.testing.assert_array_equal(m1.level_weights, m0.level_weights)
    with pytest.raises(ValueError, match="n_repeats must be an integer >= 1"):
        wm.cross_fit(F, lots, n_repeats=0, **kw)


def test_repeated_cross_fitting_steadies_the_learned_weights_against_the_fold_draw(wide):
    """The level weights and normalisers depend on which wafers share a fold; pooling 6 splits
    takes most of that out (the spread over fold seeds falls by about sqrt(6) for independent
    draws; measured 0.41 of it for the weights, 0.78 for delta_q, whose median over 6 seeds is noisier)."""
    from greyanom._crossfit import repeat_states
    from greyanom.traces._wafer_model import _fit_calibrated

    F, lots = wide
    mask = np.ones(F.shape[1], dtype=bool)

    def spread(n_repeats):
        fits = [
            _fit_calibrated(F, lots, None, 5, repeat_states(seed, n_repeats), mask, 1.0, (True, 0.5),
                            dict(n_components=4, scale_floor=0.5))[0]
            for seed in range(6)
        ]
        logw = np.log([f.level_weights for f in fits])
        return logw.std(axis=0).mean(), np.std(np.log([f.delta_q for f in fits]))

    (w1, q1), (w6, q6) = spread(1), spread(6)
    assert w6 < 0.5 * w1 and q6 < q1
