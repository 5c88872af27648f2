"""Wafer features of the shape detector: trace level and mean residual per segment of step time."""

import numpy as np
import pandas as pd
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces._hierarchy import PARAMS
from greyanom.traces._scoring import N_SEGMENTS, SEGMENT_COLS
from greyanom.traces._features import WAFER_FEATURES


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=5, wafers_per_lot=8, sensors=("v", "u"), n_clean_lots=5, random_state=3)


@pytest.fixture(scope="module")
def det(lots):
    # lot_prior="normal": the signature of the trace table is the fit the features come from
    return ShapeSignatureDetector(
        group_keys=("sensor",), n_initial_lots=4, lot_prior="normal", n_jobs=1, random_state=0
    ).fit(lots)


def _paper_curve(p, tau):
    gamma, R, omega, y, phi, c = (p[PARAMS.index(k)] for k in ("gamma", "R", "omega", "y", "phi", "c"))
    return R * np.exp(-0.5 * gamma * tau) * np.cos(omega * tau - phi) + c * tau + y


def test_level_and_residual_segments_match_a_numpy_reference(det, lots):
    res = det.analyse(lots).traces
    assert {"raw_mean", *SEGMENT_COLS} <= set(WAFER_FEATURES)
    checked = 0
    for (sensor, wafer), g in lots.groupby(["sensor", "wafer"], sort=False):
        row = res.loc[(sensor, wafer)]
        if row["status"] != "ok":
            continue
        g = g.sort_values("t")
        t, v = g["t"].to_numpy(float), g["value"].to_numpy(float)
        x0 = row["origin"] if np.isfinite(row["origin"]) else t[0]
        assert row["duration"] == pytest.approx(t[-1] - x0)
        r = v - _paper_curve(row[list(PARAMS)].to_numpy(float), t - x0)
        seg = np.minimum(((t - x0) / row["duration"] * N_SEGMENTS).astype(int), N_SEGMENTS - 1)
        want = [r[seg == j].mean() if (seg == j).any() else 0.0 for j in range(N_SEGMENTS)]
        np.testing.assert_allclose(row[SEGMENT_COLS].to_numpy(float), want, rtol=1e-6, atol=1e-9)
        assert row["raw_mean"] == pytest.approx(v.mean())
        checked += 1
    assert checked > 50


def test_a_late_offset_shows_in_the_last_residual_segment_and_the_wafer_score(det, lots):
    """A shift of the last part of a step, which the fitted curve smooths over, raises the wafer score."""
    w = "L04W03"
    one = lots[lots["lot"] == "L04"]
    trace = (one["wafer"] == w) & (one["sensor"] == "v")
    t = one.loc[trace, "t"]
    late = trace & (one["t"] >= t.min() + 0.8 * (t.max() - t.min()))
    shifted = one.copy()
    sd = float(det.normal_model_.loc["v", "noise_sd"])
    shifted.loc[late, "value"] += 4.0 * sd
    a0, a1 = det.analyse(one), det.analyse(shifted)
    f0, f1 = a0.wafers.features.loc[w, "v"], a1.wafers.features.loc[w, "v"]
    # the fitted curve bends towards the shift; the residual means per segment keep what it misses
    assert (f1[SEGMENT_COLS] - f0[SEGMENT_COLS]).abs().max() > 1.0 * sd
    assert f1[SEGMENT_COLS[-1]] - f0[SEGMENT_COLS[-1]] > 1.0 * sd
    assert f1["raw_mean"] > f0["raw_mean"]
    res_cols = [("v", c) for c in SEGMENT_COLS]
    c0 = det.explain_wafer_features(a0).loc[w, res_cols].sum()
    c1 = det.explain_wafer_features(a1).loc[w, res_cols].sum()
    assert c1 > c0 + 0.5
    s0, s1 = det.score_wafers(a0), det.score_wafers(a1)
    assert s0[w] < det.wafer_threshold_ < s1[w]
    np.testing.assert_allclose(det.explain_wafers(a1)[["u", "v"]].sum(axis=1), s1, rtol=1e-12)
    pd.testing.assert_series_equal(s0.drop(w), s1.drop(w))
