import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import KFold

from greyanom import PCADetector
from greyanom.decision import DecisionPolicy, calibrate


def test_calibrate_equals_manual_cross_fitting(rng):
    X = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 10))
    det = PCADetector(n_components=3)
    scores = calibrate(det, X, cv=4, random_state=0)
    expected = np.empty(120)
    for tr, te in KFold(4, shuffle=True, random_state=0).split(X):
        expected[te] = clone(det).fit(X[tr]).score(X[te])
    np.testing.assert_allclose(scores, expected)
    assert not hasattr(det, "offset_")  # the detector itself is not fitted
    # held-out scores are larger than in-sample ones (the optimism cross-fitting removes)
    assert np.median(scores) > np.median(clone(det).fit(X).score(X))


def test_calibrate_tables_and_images(rng):
    df = pd.DataFrame(rng.normal(size=(60, 5)), columns=list("abcde"))
    s = calibrate(PCADetector(n_components=2), df, cv=3, random_state=1)
    assert s.shape == (60,) and np.isfinite(s).all()
    images = rng.uniform(size=(30, 8, 8))
    s = calibrate(PCADetector(n_components=4), images, cv=3, random_state=1)
    assert s.shape == (30,) and np.isfinite(s).all()
    np.testing.assert_array_equal(s, calibrate(PCADetector(n_components=4), images, cv=3, random_state=1))


def test_calibrate_bad_input(rng):
    X = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="method"):
        calibrate(PCADetector(), X, method="predict")
    with pytest.raises(ValueError, match="at least 20"):
        calibrate(PCADetector(), X, cv=20)
    with pytest.raises(ValueError, match="cv must be"):
        calibrate(PCADetector(), X, cv=1)
    with pytest.raises(TypeError, match="score_wafers"):
        calibrate(PCADetector(), X, method="score_wafers")


def test_calibrate_wafer_folds():
    from greyanom import ShapeSignatureDetector
    from greyanom.datasets import make_pi_lots

    df = make_pi_lots(n_lots=2, wafers_per_lot=10, n_points=60, random_state=3)
    det = ShapeSignatureDetector(lot_key=None, random_state=0)
    with pytest.raises(ValueError, match="score_wafers"):
        calibrate(det, df)
    scores = calibrate(det, df, cv=4, random_state=0, method="score_wafers")
    wafers = pd.unique(df["wafer"])
    assert isinstance(scores, pd.Series)
    assert scores.index.tolist() == list(wafers)
    # every wafer is scored by a model fitted on the other folds' wafers
    folds = list(KFold(4, shuffle=True, random_state=0).split(wafers))
    tr, te = folds[0]
    model = clone(det).fit(df[df["wafer"].isin(wafers[tr])])
    expected = model.score_wafers(df[df["wafer"].isin(wafers[te])])
    np.testing.assert_allclose(scores.loc[expected.index], expected.to_numpy())
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.06).fit(scores.dropna())
    assert policy.n_calibration_ == scores.notna().sum()


def test_trace_detector_threshold_from_wafer_folds():
    from greyanom import ShapeSignatureDetector
    from greyanom.base import threshold_from_scores
    from greyanom.datasets import make_pi_lots

    df = make_pi_lots(n_lots=3, wafers_per_lot=6, n_points=60, random_state=4)
    det = ShapeSignatureDetector(lot_key="lot", n_initial_lots=2, n_jobs=1).fit(df)
    # the detector's own wafer folds (ShapeSignatureDetector._heldout_scores): one held-out
    # score per training trace, deterministic, and not the in-sample scores
    assert len(det.heldout_scores_) == len(det.train_scores_)
    assert np.isfinite(det.heldout_scores_).all()
    assert not np.allclose(det.heldout_scores_, det.decision_scores_)
    again = ShapeSignatureDetector(lot_key="lot", n_initial_lots=2, n_jobs=1).fit(df)
    np.testing.assert_array_equal(again.heldout_scores_, det.heldout_scores_)
    assert det.threshold_ == pytest.approx(threshold_from_scores(det.heldout_scores_, "auto"))
    assert len(det.decision_scores_) == len(det.train_scores_)
