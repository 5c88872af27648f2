"""Fits of many small batches run as one kernel call with the same results, row for row."""

import numpy as np
import pytest

from greyanom.traces import _fit
from greyanom.traces._hierarchy import _fit_lot, _fit_lot_steps
from greyanom.traces._ragged import Traces


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


def test_split_chunks_sorts_once_like_groupby():
    """A partition is sorted and cut once: the chunks, their traces and the samples come out as
    ``groupby(by, sort=True)`` and a per-chunk sort by trace key and time give them."""
    import dataclasses

    import pandas as pd

    from greyanom.traces._frames import _split_chunks

    rng = np.random.default_rng(2)
    rows = [(g, lot, w, t, rng.normal(), 100.0 + i)
            for i, (g, lot, w) in enumerate([(g, lot, w) for g in ("b", "a") for lot in (2, 1) for w in "yxz"])
            for t in rng.permutation(rng.integers(3, 9))]
    df = pd.DataFrame(rows, columns=["sensor", "lot", "wafer", "t", "value", "start"]).sample(frac=1, random_state=0)
    df.loc[df.index[:3], "lot"] = np.nan  # rows without a key belong to no chunk
    cfg = dataclasses.make_dataclass("Cfg", ["time", "value", "trace_keys", "start_time", "clock_origin"])(
        "t", "value", ("wafer",), "start", None)
    keys, chunks, first_rows = _split_chunks(df, ["sensor", "lot"], cfg)
    expected = list(df.groupby(["sensor", "lot"], sort=True))
    assert keys == [k for k, _ in expected]
    n_traces = 0
    for chunk, (_, part) in zip(chunks, expected):
        part = part.sort_values(["wafer", "t"], kind="mergesort")
        np.testing.assert_array_equal(chunk.t, part["t"].to_numpy())
        np.testing.assert_array_equal(chunk.v, part["value"].to_numpy())
        sizes = part.groupby("wafer", sort=True).size().to_numpy()
        np.testing.assert_array_equal(chunk.n_points, sizes)
        np.testing.assert_array_equal(chunk.starts, part.groupby("wafer", sort=True)["start"].first())
        assert chunk.clock is None
        n_traces += len(chunk)
    assert len(first_rows) == n_traces
