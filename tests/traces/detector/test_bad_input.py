"""Bad input: clear errors or per-trace statuses, never a crash or a silent NaN score."""

import numpy as np
import pandas as pd
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=3, wafers_per_lot=6, sensors=("v", "u"), random_state=3)


@pytest.fixture(scope="module")
def det(lots):
    return ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=2, n_jobs=1).fit(lots)


def _new(lots):
    return lots[lots["lot"] == "L02"].copy()


def test_missing_and_unknown_columns(lots):
    with pytest.raises(ValueError, match=r"no column\(s\) \['step'\]"):
        ShapeSignatureDetector(group_keys=("sensor", "step")).fit(lots)
    with pytest.raises(ValueError, match="no column"):
        ShapeSignatureDetector(time="time").fit(lots)
    with pytest.raises(TypeError, match="long-format pandas DataFrame"):
        ShapeSignatureDetector().fit(lots.to_numpy())
    with pytest.raises(TypeError, match="must be numeric"):
        ShapeSignatureDetector(group_keys=("sensor",), value="fault").fit(lots.assign(fault="x"))


def test_nan_values_are_dropped_with_a_warning(det, lots):
    new = _new(lots)
    new.loc[new.index[:5], "value"] = np.nan
    with pytest.warns(UserWarning, match="dropped 5 row"):
        s = det.score(new)
    assert s.notna().all()


def test_nan_keys_are_an_error(det, lots):
    new = _new(lots)
    new["wafer"] = new["wafer"].astype(object)
    new.loc[new.index[0], "wafer"] = None
    with pytest.raises(ValueError, match="missing values in key column"):
        det.score(new)


def test_too_short_trace_gets_a_status_not_a_silent_nan(det, lots):
    new = _new(lots)
    short = new[(new["wafer"] == "L02W00") & (new["sensor"] == "v")].index[4:]
    new = new.drop(short)
    with pytest.warns(UserWarning, match="too_short"):
        e = det.explain(new)
    assert e.loc[("v", "L02W00"), "status"] == "too_short"
    assert np.isnan(e.loc[("v", "L02W00"), "score"])
    ok = e.drop(("v", "L02W00"))
    assert ok["score"].notna().all() and (ok["status"] == "ok").all()
    with pytest.warns(UserWarning):
        assert det.predict(new)[("v", "L02W00")] == -1


def test_lot_with_one_wafer_uses_the_normal_prior(det, lots):
    new = lots[lots["wafer"] == "L02W03"]
    sig = det.signatures(new)
    assert (sig["prior"] == "normal").all() and sig["score"].notna().all()


def test_unknown_group(det, lots):
    new = _new(lots)
    new.loc[new["sensor"] == "u", "sensor"] = "w"
    with pytest.warns(UserWarning, match="unknown_group"):
        e = det.explain(new)
    assert (e.xs("w", level="sensor")["status"] == "unknown_group").all()
    assert e.xs("v", level="sensor")["score"].notna().all()


def test_fit_errors(lots):
    one = lots[lots["wafer"] == "L00W00"]
    with pytest.raises(ValueError, match="needs at least 2"):
        ShapeSignatureDetector(group_keys=("sensor",)).fit(one)
    with pytest.raises(ValueError, match="n_initial_lots=9"):
        ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=9).fit(lots)
    with pytest.raises(ValueError, match="n_initial_lots needs lot_key"):
        ShapeSignatureDetector(group_keys=("sensor",), lot_key=None, n_initial_lots=1).fit(lots)
    dup = pd.concat([lots, lots.iloc[:1]])
    with pytest.raises(ValueError, match="duplicated sample time"):
        ShapeSignatureDetector(group_keys=("sensor",)).fit(dup)
    moved = lots.copy()
    moved.loc[moved.index[0], "lot"] = "L01"
    with pytest.raises(ValueError, match="more than one 'lot'"):
        ShapeSignatureDetector(group_keys=("sensor",)).fit(moved)
    with pytest.raises(ValueError, match="share column"):
        ShapeSignatureDetector(group_keys=("wafer",)).fit(lots)


def test_not_fitted(lots):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ShapeSignatureDetector().score(lots)


def test_unusable_group_is_skipped_with_a_warning(lots):
    train = lots[lots["lot"].isin(["L00", "L01"])]
    # sensor "u" keeps a single wafer: no normal model for it, "v" still works
    train = train[(train["sensor"] == "v") | (train["wafer"] == "L00W00")]
    with pytest.warns(UserWarning, match="no normal model"):
        det = ShapeSignatureDetector(group_keys=("sensor",), n_jobs=1).fit(train)
    assert list(det.normal_model_.index) == ["v"]
    with pytest.warns(UserWarning, match="unknown_group"):
        e = det.explain(_new(lots))
    assert (e.xs("u", level="sensor")["status"] == "unknown_group").all()
