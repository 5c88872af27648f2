"""ShapeSignatureDetector on simulated PI-loop lots."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces import Traces

PARAMS = ["gamma", "R", "omega", "y", "phi", "c"]
FAULTS = {"setpoint_offset": 1, "controller_gain": 1, "noise_burst": 1}


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(
        n_lots=5, wafers_per_lot=8, sensors=("v", "u"), faults=FAULTS, n_clean_lots=3, random_state=0
    )


@pytest.fixture(scope="module")
def fitted(lots):
    det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=3, n_jobs=1)
    return det.fit(lots)


@pytest.fixture(scope="module")
def explained(fitted, lots):
    return fitted.explain(lots)


def _faulty(lots):
    return lots.groupby("wafer", sort=False)["fault"].first()


def test_normal_model_and_training_scores(fitted, lots):
    nm = fitted.normal_model_
    assert list(nm.index) == ["u", "v"] and nm.index.name == "sensor"
    assert (nm["n_traces"] == 24).all()
    assert {f"mu_{p}" for p in PARAMS} <= set(nm.columns) and {f"sd_{p}" for p in PARAMS} <= set(nm.columns)
    assert np.isfinite(nm[[f"sd_{p}" for p in PARAMS]].to_numpy()).all()
    assert (nm[[f"sd_{p}" for p in PARAMS]].to_numpy() > 0).all()
    # v has noise 0.01, u has noise 0.01 * kc
    assert abs(nm.loc["v", "noise_sd"] / 0.01 - 1) < 0.15
    assert abs(nm.loc["u", "noise_sd"] / 0.015 - 1) < 0.15
    # centred training scores: about 0 on average; the limit sits above them
    assert abs(fitted.train_scores_.mean()) < 1.5
    assert fitted.threshold_ > fitted.train_scores_.median()
    assert fitted.offset_ == -fitted.threshold_


def test_score_is_a_series_and_faults_score_high(fitted, lots, explained):
    s = fitted.score(lots)
    assert isinstance(s, pd.Series) and s.index.names == ["sensor", "wafer"]
    assert s.notna().all() and len(s) == 2 * 40
    pd.testing.assert_series_equal(s, explained["score"].rename("score"))
    wafer = fitted.score_wafers(lots)
    assert list(wafer.index[:3]) == ["L00W00", "L00W01", "L00W02"]
    # issue 9: the wafer score is the wafer model's score, no longer the sum of trace scores
    ew = fitted.explain_wafers(lots)
    np.testing.assert_allclose(ew[["u", "v"]].sum(axis=1), wafer.to_numpy(), rtol=1e-12, atol=1e-12)
    # the per-trace paper scores, summed per wafer, still separate these faults
    summed = s.groupby(level="wafer", sort=False).sum().reindex(wafer.index)
    fault = _faulty(lots).reindex(wafer.index)
    held_out = summed[fault.isna() & wafer.index.str.startswith(("L03", "L04"))]
    for f in FAULTS:
        assert summed[fault == f].iloc[0] > held_out.max(), f
    pred = fitted.predict(lots)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_allclose(fitted.score_samples(lots), -s)
    np.testing.assert_allclose(fitted.decision_function(lots), -s - fitted.offset_)
    np.testing.assert_array_equal(pred.to_numpy(), np.where(-s - fitted.offset_ >= 0, 1, -1))


def test_explain_is_an_exact_decomposition(fitted, explained):
    e = explained
    terms = ["fit", *PARAMS]
    np.testing.assert_allclose(e[terms].sum(axis=1), e["score"], rtol=0, atol=1e-9)
    sd = fitted.normal_model_.loc[e.index.get_level_values("sensor"), [f"sd_{p}" for p in PARAMS]].to_numpy()
    np.testing.assert_allclose(e[[f"dz_{p}" for p in PARAMS]].to_numpy(), e[[f"d_{p}" for p in PARAMS]].to_numpy() * sd)
    assert (e["status"] == "ok").all()


def test_explain_names_the_faulted_parameter(explained, lots):
    fault = _faulty(lots)
    e = explained.xs("v", level="sensor")
    top = e[["fit", *PARAMS]].idxmax(axis=1)
    w = {f: fault.index[fault == f][0] for f in FAULTS}
    assert top[w["setpoint_offset"]] == "y"
    assert top[w["noise_burst"]] == "fit"
    assert top[w["controller_gain"]] in ("gamma", "R", "omega", "phi")


def test_score_raw_is_the_uncentred_objective(fitted, lots, explained):
    raw = fitted.score_raw(lots)
    sig = fitted.signatures(lots)
    nm = fitted.normal_model_.loc[sig.index.get_level_values("sensor")]
    sigma = nm["noise_sd"].to_numpy()
    z = (sig[PARAMS].to_numpy() - nm[[f"mu_{p}" for p in PARAMS]].to_numpy()) / nm[[f"sd_{p}" for p in PARAMS]].to_numpy()
    expected = (
        0.5 * sig["n_points"].to_numpy() * np.log(sigma**2)
        + sig["ssr"].to_numpy() / (2 * sigma**2)
        + (np.log(nm[[f"sd_{p}" for p in PARAMS]].to_numpy()) + 0.5 * z**2).sum(axis=1)
    )
    np.testing.assert_allclose(raw.to_numpy(), expected, rtol=1e-10)
    # the raw score moves with the trace length, the centred score does not (notes T11)
    fault = _faulty(lots).reindex(sig.index.get_level_values("wafer"))
    normal = fault.isna().to_numpy() & (sig.index.get_level_values("sensor") == "v")
    slope_raw = np.polyfit(sig["n_points"][normal], raw[normal], 1)[0]
    slope_c = np.polyfit(sig["n_points"][normal], explained["score"][normal], 1)[0]
    assert abs(slope_c) < 0.25 * abs(slope_raw)


def test_centred_score_is_unit_free(lots):
    one = lots[lots["sensor"] == "v"]
    scaled = one.assign(value=one["value"] * 1000.0 + 5.0)
    kw = dict(n_initial_lots=3, n_jobs=1, lot_prior="normal")
    a = ShapeSignatureDetector(**kw).fit(one).score(one)
    b = ShapeSignatureDetector(**kw).fit(scaled).score(scaled)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-3, atol=1e-3)


def test_signatures_and_table(fitted, lots):
    sig = fitted.signatures(lots)
    assert list(sig.columns) == [*PARAMS, "ssr", "n_points", "lot", "prior", "score", "status"]
    assert (sig["prior"] == "lot").all()
    table = fitted.signature_table(lots)
    assert table.shape == (40, 2 * 8)
    assert table.columns.names == ["sensor", "parameter"]
    assert list(table.index[:2]) == ["L00W00", "L00W01"]
    assert table.loc["L00W03", ("v", "gamma")] == sig.loc[("v", "L00W03"), "gamma"]


def test_explain_change_is_exact_for_the_prior_part(fitted, lots):
    fault = _faulty(lots)
    after = fault.index[fault == "setpoint_offset"][0]
    before = "L02W00"
    ch = fitted.explain_change(lots, before, after)
    assert ch.index.names == ["sensor", "parameter"]
    s = fitted.score(lots)
    for sensor in ("u", "v"):
        c = ch.xs(sensor, level="sensor")
        assert list(c.index) == [*PARAMS, "fit"]
        np.testing.assert_allclose(c["contribution"].sum(), s[(sensor, after)] - s[(sensor, before)], atol=1e-8)
        np.testing.assert_allclose(c["taylor"], c["gradient"] * c["delta"])
        nm = fitted.normal_model_.loc[sensor]
        mu = nm[[f"mu_{p}" for p in PARAMS]].to_numpy(float)
        sd = nm[[f"sd_{p}" for p in PARAMS]].to_numpy(float)
        za, zb = (c["after"][PARAMS].to_numpy(float) - mu) / sd, (c["before"][PARAMS].to_numpy(float) - mu) / sd
        np.testing.assert_allclose(c["prior_midpoint"][PARAMS].to_numpy(float), 0.5 * (za**2 - zb**2), rtol=1e-9)
    assert ch.xs("v", level="sensor")["contribution"].drop("fit").idxmax() == "y"
    with pytest.raises(ValueError, match="before="):
        fitted.explain_change(lots, "nope", after)


def test_traces_input_and_no_lot(lots):
    one = lots[(lots["sensor"] == "v") & lots["lot"].isin(["L00", "L01", "L02"])]
    traces = Traces.from_frame(one, by=("wafer",))
    det = ShapeSignatureDetector(lot_key=None, n_jobs=1).fit(traces)
    s = det.score(traces)
    assert s.index.name == "wafer" and len(s) == 24
    same = ShapeSignatureDetector(lot_key=None, n_jobs=1).fit(one).score(one)
    np.testing.assert_allclose(s.to_numpy(), same.to_numpy())


def test_clone_and_params():
    det = ShapeSignatureDetector(group_keys=("sensor",), lot_prior="mean")
    assert clone(det).get_params()["lot_prior"] == "mean"
    with pytest.raises(ValueError):
        ShapeSignatureDetector(lot_prior="bogus").fit(pd.DataFrame({"t": [0.0], "value": [0.0]}))
