"""fit, score and explain on a dask DataFrame over a distributed LocalCluster equal the in-process results."""

import numpy as np
import pandas as pd
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


def test_dask_equals_in_process():
    lots = make_pi_lots(n_lots=3, wafers_per_lot=5, sensors=("v", "u"), faults=["setpoint_slope"],
                        n_clean_lots=2, random_state=5)
    kw = dict(group_keys=("sensor",), n_initial_lots=2, n_jobs=1, random_state=0)
    det = ShapeSignatureDetector(**kw).fit(lots)
    expected_score = det.score(lots).sort_index()
    expected_explain = det.explain(lots).sort_index()
    ddf = dd.from_pandas(lots, npartitions=3)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream:
            ddet = ShapeSignatureDetector(**kw).fit(ddf)
            score = ddet.score(ddf)
            explain = ddet.explain(ddf)
            wafer = ddet.score_wafers(ddf)
        # the per-group and per-lot work ran as tasks on the cluster
        keys = [str(t["key"]) for t in stream.data]
        assert any("_fit_partition" in k for k in keys)
        assert sum("_analyse_partition" in k for k in keys) >= 2
    pd.testing.assert_frame_equal(ddet.normal_model_, det.normal_model_, check_exact=False, rtol=1e-9)
    assert ddet.threshold_ == pytest.approx(det.threshold_, rel=1e-9)
    pd.testing.assert_series_equal(score.sort_index(), expected_score, check_exact=False, rtol=1e-8)
    num = expected_explain.columns.drop("status")
    np.testing.assert_allclose(explain.sort_index()[num].to_numpy(float), expected_explain[num].to_numpy(float),
                               rtol=1e-7, atol=1e-9)
    # the wafer level (issue 9) on dask input equals the in-process one
    pd.testing.assert_series_equal(
        wafer.sort_index(), det.score_wafers(lots).sort_index(), check_exact=False, rtol=1e-6
    )


def test_dask_start_time_column_equals_in_process():
    lots = make_pi_lots(n_lots=3, wafers_per_lot=4, sensors=("v",), random_state=6)
    lots["t0"] = lots.groupby("wafer")["t"].transform("min")
    new = lots[lots["lot"] == "L02"]
    new = new.drop(new[new["wafer"] == "L02W00"].index[:2])  # the step start stays in t0
    kw = dict(group_keys=("sensor",), n_initial_lots=2, n_jobs=1, start_time="t0")
    det = ShapeSignatureDetector(**kw).fit(lots)
    expected = det.score(new).sort_index()
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster):
        ddet = ShapeSignatureDetector(**kw).fit(dd.from_pandas(lots, npartitions=2))
        score = ddet.score(dd.from_pandas(new, npartitions=2))
    pd.testing.assert_series_equal(score.sort_index(), expected, check_exact=False, rtol=1e-8)
    a = det.analyse(new).traces
    assert a.loc[("v", "L02W00"), "origin"] == new.loc[new["wafer"] == "L02W00", "t0"].iloc[0]


def test_dask_run_order_equals_in_process():
    """``order_key`` is read from a dask frame as from a pandas one, in fit and in score_wafers."""
    lots = make_pi_lots(n_lots=3, wafers_per_lot=10, sensors=("v",), random_state=7)
    lots["run"] = lots.groupby("lot", sort=False)["wafer"].transform(lambda w: pd.factorize(w)[0] + 1)
    v = lots["sensor"] == "v"
    lots.loc[v, "value"] += 0.01 * lots.loc[v, "run"]  # a drift along each lot
    kw = dict(group_keys=("sensor",), order_key="run", n_jobs=1, random_state=0)
    det = ShapeSignatureDetector(**kw).fit(lots)
    assert det.wafer_model_.has_local
    ddet = ShapeSignatureDetector(**kw).fit(dd.from_pandas(lots, npartitions=2))
    np.testing.assert_array_equal(ddet.wafer_model_.local, det.wafer_model_.local)
    pd.testing.assert_series_equal(
        ddet.score_wafers(dd.from_pandas(lots, npartitions=3)).sort_index(), det.score_wafers(lots).sort_index(),
        check_exact=False, rtol=1e-6,
    )
