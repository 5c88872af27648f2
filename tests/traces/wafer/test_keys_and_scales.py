"""Trace detectors on categorical keys and on traces scaled by 1e200 and 1e-200."""

import warnings

import numpy as np
import pandas as pd
import pytest

import greyanom
from greyanom import MultiwayPCADetector, ShapeSignatureDetector
from greyanom.traces._persist import pack, unpack
from greyanom.datasets import make_pi_lots

DETECTORS = {
    "mpca": lambda: MultiwayPCADetector(group_keys=("sensor",), random_state=0),
    "shape": lambda: ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=3, random_state=0),
}


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=4, wafers_per_lot=6, sensors=("v", "u"), faults={"setpoint_offset": 2},
                        random_state=0)


@pytest.fixture(scope="module")
def plain(lots):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {name: make().fit(lots) for name, make in DETECTORS.items()}


def _quiet(fn, *args):
    """Call ``fn`` with every RuntimeWarning an error (numpy's too) and UserWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        return fn(*args)


# -- categorical keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DETECTORS))
@pytest.mark.parametrize("columns", [["wafer"], ["lot", "sensor"], ["wafer", "lot", "sensor"]])
def test_categorical_keys_work_as_their_values(name, columns, lots, plain, tmp_path):
    cat = lots.astype({c: "category" for c in columns})
    det = _quiet(DETECTORS[name]().fit, cat)
    ref = plain[name]
    pd.testing.assert_series_equal(_quiet(det.score_wafers, cat), _quiet(ref.score_wafers, lots))
    np.testing.assert_array_equal(np.asarray(_quiet(det.score, cat)), np.asarray(_quiet(ref.score, lots)))
    explained = _quiet(det.explain, cat)
    assert not isinstance(explained.index.dtype, pd.CategoricalDtype)
    back = greyanom.load(det.save(tmp_path / "cat.safetensors"))
    pd.testing.assert_series_equal(_quiet(back.score_wafers, cat), _quiet(det.score_wafers, cat))


def test_saved_labels_of_a_categorical_index_are_its_values():
    arrays = {}
    doc = pack("index", pd.CategoricalIndex(["b", "a", "b"], name="wafer"), arrays)
    pd.testing.assert_index_equal(unpack(doc, arrays), pd.Index(["b", "a", "b"], name="wafer", dtype="str"))


# -- 1e200 and 1e-200 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1e200, 1e-200])
def test_multiway_pca_is_unit_free_at_extreme_scales(factor, lots, plain):
    scaled = lots.assign(value=lots["value"] * factor)
    det = _quiet(DETECTORS["mpca"]().fit, scaled)
    ref = plain["mpca"]
    np.testing.assert_allclose(_quiet(det.score, scaled), _quiet(ref.score, lots), rtol=1e-9, atol=1e-12)
    assert det.threshold_ == pytest.approx(ref.threshold_, rel=1e-9)
    # a model fitted in the usual units scores the scaled traces finite (and far out)
    scores = _quiet(ref.score, scaled)
    assert np.isfinite(scores).all() and scores.min() > ref.threshold_


@pytest.mark.parametrize("factor", [1e200, 1e-200])
def test_shape_detector_scores_scaled_traces_finite_or_flagged(factor, lots, plain):
    det = plain["shape"]
    scaled = lots.assign(value=lots["value"] * factor)
    explained = _quiet(det.explain, scaled)
    nan = explained["score"].isna().to_numpy()
    # a NaN trace score always comes with its status, never "ok"
    assert set(explained.loc[nan, "status"]) <= {"out_of_range"}
    assert (explained.loc[~nan, "status"] != "out_of_range").all()
    wafers = _quiet(det.explain_wafers, scaled)
    assert np.isfinite(wafers.sum(axis=1).to_numpy()).all()
    status = _quiet(det.wafer_status, scaled)
    assert set(status) <= {"ok", "unfitted", "new_lot"}
    if nan.any():
        assert (status == "unfitted").any()


def test_shape_detector_fit_on_extreme_scales(lots):
    # fitting in units that overflow the fit is a clear error; tiny units fit without NaN or warning
    with pytest.raises(ValueError, match="no normal model could be fitted"):
        _quiet(DETECTORS["shape"]().fit, lots.assign(value=lots["value"] * 1e200))
    tiny = lots.assign(value=lots["value"] * 1e-200)
    det = _quiet(DETECTORS["shape"]().fit, tiny)
    assert np.isfinite(np.asarray(_quiet(det.score, tiny))).all()
    assert np.isfinite(_quiet(det.score_wafers, tiny).to_numpy()).all()


def test_shape_detector_in_tiny_units_scores_as_in_ordinary_ones(lots, plain):
    # traces scaled by 1e-20: the lot-fit floors, the raw-sd floor and the wafer model's scale
    # floor follow the data's units below 1, so the detector fitted on them gives the scores
    # and limits it gives on the traces themselves (with absolute floors, every trace scored
    # about the same, -42 or -30)
    ref = plain["shape"]
    tiny = lots.assign(value=lots["value"] * 1e-20)
    det = _quiet(DETECTORS["shape"]().fit, tiny)
    np.testing.assert_allclose(np.asarray(_quiet(det.score, tiny)), np.asarray(_quiet(ref.score, lots)), rtol=1e-6)
    np.testing.assert_allclose(_quiet(det.score_wafers, tiny), _quiet(ref.score_wafers, lots), rtol=1e-6)
    assert det.wafer_threshold_ == pytest.approx(ref.wafer_threshold_, rel=1e-6)
    assert det.threshold_ == pytest.approx(ref.threshold_, rel=1e-6)
    assert (_quiet(det.wafer_status, tiny) == _quiet(ref.wafer_status, lots)).all()
