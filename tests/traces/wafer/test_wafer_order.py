"""Run-order centring of the wafer model (``order``, the detectors' ``order_key``)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from greyanom.traces import _wafer_model as wm


def _naive_centre(ref, ref_lots, ref_order, lot, order, k):
    """The median of the k rows of ``lot`` nearest in order (own order left out, earlier first at a tie)."""
    if not np.isfinite(order):
        return None
    cand = [i for i in range(len(ref_lots)) if ref_lots[i] == lot and np.isfinite(ref_order[i]) and ref_order[i] != order]
    cand.sort(key=lambda i: (abs(ref_order[i] - order), ref_order[i]))
    pick = cand[:k]
    if len(pick) < wm.MIN_NEIGHBOURS:
        return None
    return np.median(ref[pick], axis=0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 8), n=st.integers(1, 30))
def test_neighbour_centres_against_a_naive_reference(seed, k, n):
    rng = np.random.default_rng(seed)
    ref_lots = rng.choice(["a", "b", "c"], size=n)
    ref_order = rng.integers(0, 12, size=n).astype(float)  # ties and repeated orders
    ref_order[rng.random(n) < 0.1] = np.nan
    ref = rng.normal(size=(n, 3))
    lots = np.array(["a", "b", "c", "d", "a"])
    order = np.array([3.0, 5.5, 0.0, 2.0, np.nan])
    centres, has = wm.neighbour_centres(ref, ref_lots, ref_order, lots, order, k)
    for i in range(lots.size):
        expect = _naive_centre(ref, ref_lots, ref_order, lots[i], order[i], k)
        assert has[i] == (expect is not None)
        if expect is None:
            assert np.isnan(centres[i]).all()
        else:
            np.testing.assert_allclose(centres[i], expect, rtol=0, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(2, 12))
def test_leave_one_out_medians(seed, m):
    X = np.round(np.random.default_rng(seed).normal(size=(m, 4)), 1)  # ties
    expect = np.array([np.median(np.delete(X, i, axis=0), axis=0) for i in range(m)])
    np.testing.assert_array_equal(wm._leave_one_out_medians(X), expect)


def _drift_lots(seed=0, n_lots=3, per_lot=30):
    """Feature 0 drifts along the run order within each lot (as a chamber ages), the others do not.

    Returns the rows, their lots and run orders, and each lot's offset of feature 0.
    """
    rng = np.random.default_rng(seed)
    lots = np.repeat([f"L{i}" for i in range(n_lots)], per_lot)
    order = np.tile(np.arange(per_lot, dtype=float), n_lots)
    offset = rng.normal(size=n_lots)
    F = rng.normal(size=(lots.size, 6))
    F[:, 0] = _drift(order) + np.repeat(offset, per_lot) + 0.1 * rng.normal(size=lots.size)
    return F, lots, order, offset


def _drift(order):
    return 3.0 * np.sin(order / 8.0)


def test_a_drifting_feature_is_centred_on_its_run_order_neighbours():
    F, lots, order, _ = _drift_lots()
    m = wm.fit_wafer_model(F, lots, order=order, n_neighbours=6, scale_floor=0.5)
    assert m.local.tolist() == [True, False, False, False, False, False]
    np.testing.assert_array_equal(m.ref_rows, F[:, :1])
    # a training wafer scored again is centred as in the fit: on its neighbours, itself left out
    Z, _ = wm.scale_rows(m, F, lots, order=order)
    centres = np.array([_naive_centre(F[:, :1], lots, order, lots[i], order[i], 6) for i in range(F.shape[0])])
    lot_scale = m.lot_scale[np.searchsorted(m.lots, lots)]
    np.testing.assert_allclose(Z[:, 0], np.clip((F[:, 0] - centres[:, 0]) / lot_scale[:, 0], -m.clip, m.clip))
    # the others keep the lot median, as without the order
    plain = wm.fit_wafer_model(F, lots, scale_floor=0.5)
    np.testing.assert_array_equal(Z[:, 1:], wm.scale_rows(plain, F, lots)[0][:, 1:])
    # the scale of the drifting feature is its spread about the neighbours, far below the lot's
    assert (m.lot_scale[:, 0] < 0.5 * plain.lot_scale[:, 0]).all()


def test_run_order_finds_a_shift_that_the_drift_hides():
    """A fault that moves the drifting feature by half the drift's amplitude: ranked first with the order."""
    F, lots, order, offset = _drift_lots(seed=1)
    rng = np.random.default_rng(2)
    test_lots = np.repeat(["L0", "L1", "L2"], 10)
    test_order = rng.uniform(0, 29, size=30)
    T = rng.normal(size=(30, 6))
    T[:, 0] = _drift(test_order) + offset[np.arange(30) // 10] + 0.1 * rng.normal(size=30)
    y = np.arange(30) % 3 == 0
    T[y, 0] += 1.5
    auc = {}
    for name, o, to in (("lot median", None, None), ("run order", order, test_order)):
        m, _, _ = wm.cross_fit(F, lots, order=o, random_state=0, n_components=2, scale_floor=0.5,
                               level_mask=np.ones(6, dtype=bool), level_weight=1.0)
        auc[name] = roc_auc_score(y, wm.wafer_terms(m, wm.scale_rows(m, T, test_lots, order=to)[0])[0])
    assert auc["run order"] > 0.85 and auc["run order"] > auc["lot median"] + 0.3, auc


def test_without_a_usable_order_the_model_is_the_lot_median_one():
    F, lots, order, _ = _drift_lots()
    plain, h_plain, _ = wm.cross_fit(F, lots, random_state=0, n_components=2)
    for o in (np.full(order.shape, np.nan), order):
        m, h, _ = wm.cross_fit(F, lots, order=o, random_state=0, n_components=2)
        if np.isnan(o).all():
            assert not m.has_local
            np.testing.assert_array_equal(h, h_plain)
            np.testing.assert_array_equal(m.components, plain.components)
        else:
            assert m.has_local
    # a wafer of an unseen lot, or without an order, is centred and scaled as without the run order
    m = wm.fit_wafer_model(F, lots, order=order, n_components=2)
    p = wm.fit_wafer_model(F, lots, n_components=2)
    rows, row_lots = F[:4] + 0.5, np.array(["new", "L0", "L1", "L0"])
    for o in (np.array([4.0, np.nan, np.nan, np.nan]), None):
        np.testing.assert_array_equal(wm.scale_rows(m, rows, row_lots, order=o)[0], wm.scale_rows(p, rows, row_lots)[0])
    with_order = wm.scale_rows(m, rows, row_lots, order=np.array([4.0, np.nan, np.nan, 4.0]))[0]
    assert with_order[3, 0] != wm.scale_rows(p, rows, row_lots)[0][3, 0]
    np.testing.assert_array_equal(m.median_lot_scale, p.lot_scale[:, m.local])
    np.testing.assert_array_equal(m.median_scale, p.scale[m.local])


def test_cross_fitted_rows_are_centred_on_neighbours_from_the_other_folds_only():
    """Each held-out Q of the cross-fitting is that of a model fitted without the fold, its rows
    centred on neighbours from the other folds."""
    F, lots, order, _ = _drift_lots(seed=4)
    model, heldout, folds = wm.cross_fit(F, lots, order=order, random_state=3, n_components=2)
    assert model.has_local
    for k in np.unique(folds):
        test = folds == k
        m = wm.fit_wafer_model(F[~test], lots[~test], order=order[~test], n_components=2)
        assert m.ref_rows.shape[0] == (~test).sum()
        Z, _ = wm.scale_rows(m, F[test], lots[test], order=order[test])
        np.testing.assert_allclose(heldout[test], wm.wafer_terms(m, Z)[2] / model.delta_q, rtol=1e-12)


def test_arrays_round_trip_with_run_order_centring():
    F, lots, order, _ = _drift_lots()
    m, _, _ = wm.cross_fit(F, lots, order=order, random_state=0, n_components=2)
    m2 = wm.WaferModel.from_arrays(m.to_arrays(), list(m.lots), m.statistic)
    np.testing.assert_array_equal(m2.local, m.local)
    np.testing.assert_array_equal(m2.ref_lots, m.ref_lots)
    Z, _ = wm.scale_rows(m, F + 0.1, lots, order=order)
    Z2, _ = wm.scale_rows(m2, F + 0.1, lots, order=order)
    np.testing.assert_array_equal(wm.wafer_terms(m, Z)[0], wm.wafer_terms(m2, Z2)[0])


def test_bad_order_is_refused():
    F, lots, order, _ = _drift_lots()
    with pytest.raises(ValueError, match="order must have one value per row"):
        wm.fit_wafer_model(F, lots, order=order[:-1])
    with pytest.raises(TypeError, match="order must be numeric"):
        wm.fit_wafer_model(F, lots, order=order.astype(str))


# -- the detectors' order_key -------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    from greyanom.datasets import make_pi_lots

    df = make_pi_lots(n_lots=4, wafers_per_lot=14, sensors=("v", "u"), faults={"setpoint_offset": 2},
                      n_clean_lots=3, random_state=3)
    df["run"] = df.groupby("lot", sort=False)["wafer"].transform(lambda w: pd.factorize(w)[0] + 1)
    v = df["sensor"] == "v"
    df.loc[v, "value"] += 0.01 * df.loc[v, "run"]  # sensor v drifts along each lot (its sd across wafers: 0.03)
    return df


@pytest.fixture(scope="module")
def shape_run(runs):
    from greyanom import ShapeSignatureDetector

    return ShapeSignatureDetector(group_keys=("sensor",), order_key="run", n_jobs=1, random_state=0).fit(runs)


def test_shape_detector_reads_the_run_order_and_saves_it(shape_run, runs, tmp_path):
    import greyanom

    m = shape_run.wafer_model_
    local = shape_run.wafer_columns_[m.local]
    # the drifting sensor's level features are centred on run-order neighbours, the steady sensor's are not
    assert "raw_mean" in local.get_level_values("feature") and set(local.get_level_values("sensor")) == {"v"}
    assert set(m.ref_order) == set(range(1, 15)) and m.ref_rows.shape[1] == len(local)
    s = shape_run.score_wafers(runs)
    assert np.isfinite(s.to_numpy()).all()
    np.testing.assert_allclose(shape_run.explain_wafers(runs).sum(axis=1).to_numpy(), s.to_numpy(), rtol=1e-12)
    # the order reaches the scores: with every wafer's order unknown, the lot medians centre them
    unknown = shape_run.score_wafers(runs.assign(run=np.nan))
    assert not np.array_equal(unknown.to_numpy(), s.to_numpy())
    shape_run.save(tmp_path / "run.safetensors")
    back = greyanom.load(tmp_path / "run.safetensors")
    assert back.get_params()["order_key"] == "run" and back.get_params()["n_neighbours"] == 6
    np.testing.assert_array_equal(back.score_wafers(runs).to_numpy(), s.to_numpy())


def test_time_stamps_order_as_run_numbers_do(shape_run, runs):
    from sklearn.base import clone

    stamped = runs.assign(run=pd.Timestamp("2026-01-01") + pd.to_timedelta(runs["run"], unit="h"))
    det = clone(shape_run).fit(stamped)
    np.testing.assert_allclose(det.score_wafers(stamped).to_numpy(), shape_run.score_wafers(runs).to_numpy(),
                               rtol=1e-12)


def test_bad_order_key_is_refused(runs):
    from greyanom import MultiwayPCADetector, ShapeSignatureDetector

    with pytest.raises(ValueError, match="'slot'"):
        ShapeSignatureDetector(group_keys=("sensor",), order_key="slot").fit(runs)
    with pytest.raises(TypeError, match="order_key='lot'.*numbers"):
        ShapeSignatureDetector(group_keys=("sensor",), lot_key=None, order_key="lot", n_jobs=1).fit(runs)
    with pytest.raises(ValueError, match="order_key"):
        ShapeSignatureDetector(group_keys=("sensor",), order_key="lot").fit(runs)
    with pytest.raises(ValueError, match="n_neighbours"):
        ShapeSignatureDetector(group_keys=("sensor",), order_key="run", n_neighbours=2).fit(runs)
    with pytest.raises(ValueError, match="'slot'"):
        MultiwayPCADetector(group_keys=("sensor",), order_key="slot").fit(runs)


def test_multiway_pca_takes_the_run_order_and_old_pickles_load_without_it(runs):
    import pickle

    from greyanom import MultiwayPCADetector

    det = MultiwayPCADetector(group_keys=("sensor",), order_key="run", random_state=0).fit(runs)
    assert det.wafer_model_.local is not None
    s = det.score_wafers(runs)
    np.testing.assert_allclose(det.explain_wafers(runs).sum(axis=1).to_numpy(), s.to_numpy(), rtol=1e-12)
    plain = MultiwayPCADetector(group_keys=("sensor",), random_state=0).fit(runs)
    state = plain.__getstate__()
    del state["order_key"], state["n_neighbours"]  # as pickled before the option
    old = MultiwayPCADetector.__new__(MultiwayPCADetector)
    old.__setstate__(state)
    assert old.get_params()["order_key"] is None
    np.testing.assert_array_equal(old.score_wafers(runs).to_numpy(), plain.score_wafers(runs).to_numpy())
    assert pickle.loads(pickle.dumps(det)).get_params()["order_key"] == "run"
