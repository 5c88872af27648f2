"""Fits of many small batches run as one kernel call with the same results, row for row."""

import numpy as np
import pytest

from greyanom.shape import _fit
from greyanom.shape._hierarchy import _fit_lot, _fit_lot_steps
from greyanom.shape.traces import Traces


def _traces(rng, n):
    ts = [np.sort(rng.uniform(0, 10, rng.integers(8, 40))) for _ in range(n)]
    vs = [np.exp(-0.5 * t) * np.sin(2 * t) + 0.1 * t + rng.normal(0, 0.05, t.size) for t in ts]
    return Traces.from_arrays(ts, vs)


FIELDS = ("pp", "ssr", "jtj", "jtr", "gradient", "status", "n_iter", "cost")


def test_fit_many_equals_separate_calls():
    rng = np.random.default_rng(0)
    a, b, c = _traces(rng, 30), _traces(rng, 50), _traces(rng, 7)
    mu, sd = np.array([0.5, 1.0, 2.0, 0.0, 0.0, 0.1]), np.ones(6)
    requests = [
        _fit._FitRequest(a, {"prior": (mu, sd), "noise_sd": 0.05}),
        _fit._FitRequest(b, {"prior": (mu * 1.1, 2 * sd), "noise_sd": 0.07, "origin": np.zeros(50),
                            "init": np.tile(mu, (50, 1))}),
        _fit._FitRequest(c, {"model": "paper"}),  # another kind of fit: its own call
    ]
    together = _fit._fit_many(requests)
    for r, t in zip(requests, together):
        s = _fit._fit_arrays(r.traces, **r.kwargs)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(t, f), getattr(s, f), err_msg=f)


def test_lot_fits_in_lock_step_equal_one_by_one():
    rng = np.random.default_rng(1)
    lots = [_traces(rng, n) for n in (12, 20, 9)]
    init = (0.05, np.array([0.5, 1.0, 2.0, 0.0, 0.0, 0.1]), np.ones(6))
    one_by_one = [_fit_lot(t, init=init) for t in lots]
    together = _fit._run_fits([_fit_lot_steps(t, init=init) for t in lots])
    for s, t in zip(one_by_one, together):
        assert s.n_iter == t.n_iter and s.converged == t.converged
        np.testing.assert_array_equal(s.prior_sd, t.prior_sd)
        np.testing.assert_array_equal(s.fit.pp, t.fit.pp)


def test_run_fits_raises_what_a_step_raises():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="at least 2 traces"):
        _fit._run_fits([_fit_lot_steps(_traces(rng, 1))])
