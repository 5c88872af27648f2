"""The array-level scoring module: frozen NormalModel and FitConfig, unit-free scores."""

import dataclasses
import pickle

import numpy as np
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces._scoring import FitConfig, NormalModel, nominal_start, trace_origins


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=3, wafers_per_lot=6, sensors=("v", "u"), random_state=5)


@pytest.fixture(scope="module")
def det(lots):
    return ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=2, n_jobs=1).fit(lots)


def test_normal_models_are_frozen_dataclasses(det):
    models = det._analyser().models()
    assert set(models) == {("u",), ("v",)}
    m = models[("v",)]
    assert isinstance(m, NormalModel)
    row = det.normal_model_.loc["v"]
    assert m.noise_sd == row["noise_sd"] and m.mu.shape == (6,) and m.sd.shape == (6,)
    assert m.prior[0] == m.noise_sd and m.prior[1] is m.mu
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.noise_sd = 1.0


def test_config_is_frozen_and_picklable(det):
    cfg = det._analyser().cfg
    assert isinstance(cfg, FitConfig) and cfg.group_keys == ("sensor",) and cfg.lot_fits
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # dask ships it to workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.min_points = 3
    assert dataclasses.replace(cfg, group=("v",)).group == ("v",)


def test_scores_do_not_depend_on_the_units(lots, det):
    scaled = lots.assign(value=lots["value"] * 1e9)
    det9 = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=2, n_jobs=1).fit(scaled)
    np.testing.assert_allclose(det9.score(scaled), det.score(lots), rtol=1e-6, atol=1e-6)
    nm, nm9 = det.normal_model_, det9.normal_model_
    np.testing.assert_allclose(nm9["noise_sd"], nm["noise_sd"] * 1e9, rtol=1e-6)
    np.testing.assert_allclose(nm9["mu_R"], nm["mu_R"] * 1e9, rtol=1e-6)
    np.testing.assert_allclose(nm9["mu_omega"], nm["mu_omega"], rtol=1e-6)


def test_nominal_start_and_origins():
    t = np.linspace(0.0, 10.0, 41)  # interval 0.25
    aligned = [t, t + 0.1, t - 0.1, t]
    t_start, t_tol = nominal_start(aligned)
    assert t_start == 0.0 and t_tol == pytest.approx(0.14 + 8 * 0.25)  # 10-90 % range 0.14
    o = trace_origins([t[2:], t[30:], t], t_start, t_tol)
    np.testing.assert_array_equal(o, [0.0, np.nan, 0.0])  # 30 samples missing: too far
    offset = [t + k for k in range(4)]  # one clock offset per trace
    assert np.isnan(nominal_start(offset)[1])
    np.testing.assert_array_equal(trace_origins(offset, *nominal_start(offset)), np.full(4, np.nan))
    np.testing.assert_array_equal(trace_origins(offset, 0.0, np.nan, starts=[1, 2, 3, 4]), [1, 2, 3, 4])
