"""The detector's per-trace gradient comes from the fit kernel, and equals a second evaluation."""

import numpy as np
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces import Traces, objective_terms

PARAMS = ["gamma", "R", "omega", "y", "phi", "c"]


@pytest.mark.parametrize("lot_prior", ["em", "normal"])
def test_explain_gradient_equals_objective_terms_under_the_normal_model(lot_prior):
    lots = make_pi_lots(n_lots=4, wafers_per_lot=6, sensors=("v", "u"), n_clean_lots=4, random_state=1)
    det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=3, lot_prior=lot_prior, n_jobs=1)
    det.fit(lots)
    a = det.analyse(lots)
    e = det.explain(a)
    res = a.traces
    assert set(res["prior"]) == {"lot" if lot_prior == "em" else "normal"}
    for sensor in ("u", "v"):
        tr = Traces.from_frame(lots[lots["sensor"] == sensor], by=("wafer",))
        keys = [(sensor, w) for w in tr.keys]
        r = res.loc[keys]
        nm = det.normal_model_.loc[sensor]
        mu = nm[[f"mu_{p}" for p in PARAMS]].to_numpy(np.float64)
        sd = nm[[f"sd_{p}" for p in PARAMS]].to_numpy(np.float64)
        _, g, h = objective_terms(
            tr, r[PARAMS], prior=(mu, sd), noise_sd=float(nm["noise_sd"]), origin=r["origin"].to_numpy()
        )
        got = e.loc[keys, [f"d_{p}" for p in PARAMS]].to_numpy()
        scale = np.sqrt(np.abs(np.diagonal(h, axis1=1, axis2=2))) + np.abs(g)
        assert np.all(np.abs(got - g) <= 1e-8 * scale)
