"""One status table: every status the trace side writes is a key of ``traces._status``."""

import warnings

import numpy as np

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces import _kernels, _status
from greyanom.traces._fit import fit_traces
from greyanom.traces._ragged import Traces


def test_fit_codes_messages_and_regimes_come_from_the_table():
    codes = [c for name, c in vars(_status).items() if name.startswith("ST_")]
    assert sorted(codes) == sorted(_status.STATUS_MESSAGES)
    np.testing.assert_array_equal(_status.fit_messages(np.array(codes)), [_status.STATUS_MESSAGES[c] for c in codes])
    for name in ("ST_FEW", "ST_RANGE", "RG_FAILED", "RG_DEGENERATE"):
        assert getattr(_kernels, name) == getattr(_status, name)  # the kernels write the table's codes
    t = np.linspace(0, 1, 20)
    fit = fit_traces(Traces.from_arrays([t, t[:3]], [np.cos(5 * t), t[:3]]))
    assert list(fit.status)[1] == _status.ST_FEW and fit.message[1] == _status.STATUS_MESSAGES[_status.ST_FEW]
    assert set(fit.regime) <= set(_status.REGIMES)


def test_trace_and_wafer_statuses_are_in_the_tables():
    lots = make_pi_lots(n_lots=4, wafers_per_lot=5, sensors=("v", "u"), random_state=2)
    det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=3, random_state=0).fit(lots)
    odd = lots[~((lots["wafer"] == lots["wafer"].iloc[-1]) & (lots["sensor"] == "u"))]  # a missing group
    first = (odd["wafer"] == odd["wafer"].iloc[0]) & (odd["sensor"] == "v")
    short = odd[~first | (first.cumsum() <= 3)]  # a too-short trace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = det.analyse(short)
    assert "too_short" in set(a.traces["status"])
    assert set(a.traces["status"]) <= set(_status.TRACE_STATUSES)
    wafer_status = set(det.wafer_status(a))
    assert {"missing_group", "unfitted"} <= wafer_status <= set(_status.WAFER_STATUSES)
