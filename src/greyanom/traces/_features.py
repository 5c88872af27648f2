"""Wafer features of the shape detector and the result of :meth:`ShapeSignatureDetector.analyse`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from greyanom.traces._keys import wafer_index
from greyanom.traces._wafer_scorer import WaferFeatures
from greyanom.traces._scoring import CURVE_COLS, SEGMENT_COLS

__all__ = ["TraceAnalysis", "wafer_features", "WAFER_FEATURES", "LEVEL_FEATURES"]

#: Per-trace columns of the analysis that become wafer features, per group.
WAFER_FEATURES = (
    *CURVE_COLS,
    "log_sd",
    "feat_y",
    "feat_c",
    "raw_mean",
    "log_raw_sd",
    *SEGMENT_COLS,
    "duration",
    "n_points",
    "unfitted",
)

#: The per-trace level and spread features (a subset of :data:`WAFER_FEATURES`) over which the
#: wafer score's max-type level term runs (``level_weight``): the trace's mean, the log sd of
#: its samples and the log residual sd of its fit. The max|z| of per-(step, sensor) means and
#: sds is a strong baseline on setpoint faults; the curve and residual-segment features are
#: many and correlated, and a maximum over them picks up noise on normal wafers (development
#: splits of LAM 9600, benchmarks/shape_wafer_report.py: AUROC 0.97-0.98 with every feature
#: against 0.997 with these three), so they enter through Q only.
LEVEL_FEATURES = ("raw_mean", "log_raw_sd", "log_sd")


@dataclass(frozen=True)
class TraceAnalysis:
    """Every trace of a data set fitted and scored once (from :meth:`ShapeSignatureDetector.analyse`).

    Pass it instead of ``X`` to ``score``, ``explain``, ``signatures``, ``signature_table``,
    ``score_wafers``, ``predict_wafers`` and ``explain_wafers``: they are views of it and
    do not fit again.

    Attributes
    ----------
    traces : pandas.DataFrame
        One row per trace (index ``group_keys + trace_keys``): signature, score terms,
        gradient, wafer features, ``status``.
    wafers : WaferFeatures
        The wafer feature matrix, lots and per-wafer statuses.
    """

    traces: pd.DataFrame
    wafers: WaferFeatures

    def __len__(self):
        return len(self.traces)


def wafer_features(res, trace_keys, group_keys, lots_of_wafer, wafer_order, features=WAFER_FEATURES):
    """Pivot the per-trace analysis ``res`` into the wafer feature matrix.

    A trace that could not be fitted keeps its duration and sample count, its signature
    features are NaN (set to the clip value when scored) and its ``unfitted`` flag is 1; a
    (group) that has no trace for a wafer leaves all its features NaN.
    """
    tk, gk = tuple(trace_keys), tuple(group_keys)
    r = res.copy()
    # the features come from the normal-model-prior fit (``write_features``), and so does the
    # flag: a trace is unfitted when that fit gave it no features (``log_sd`` is finite for
    # every fitted trace), whatever the lot fit of its per-trace score did
    fitted = np.isfinite(r["log_sd"].to_numpy(dtype=np.float64))
    r["unfitted"] = (~fitted).astype(np.float64)
    r["n_points"] = r["n_points"].astype(np.float64)
    feats = list(features)
    r = r[feats].reset_index()
    if not gk:
        r["group"] = "all"
        gcols = ["group"]
    else:
        gcols = list(gk)
    wide = r.pivot_table(index=list(tk), columns=gcols, values=feats, aggfunc="first", dropna=False)
    # columns (feature, *groups) -> (*groups, feature), groups sorted
    wide.columns = wide.columns.reorder_levels([*range(1, len(gcols) + 1), 0])
    wide = wide.sort_index(axis=1, level=list(range(len(gcols))), sort_remaining=False)
    order = {f: i for i, f in enumerate(feats)}
    cols = sorted(wide.columns, key=lambda c: (tuple(map(str, c[:-1])), order[c[-1]]))
    wide = wide[cols]
    wide.columns = pd.MultiIndex.from_tuples(cols, names=[*gcols, "feature"])
    wide = wide.reindex(wafer_order)
    wide.index = wafer_index(wide.index, tk)
    bad = res.index[~fitted]
    bad_wafers = set(bad.droplevel(list(gk)) if gk else bad)
    missing = wide.isna().all(axis=1).to_numpy()
    grp_missing = np.zeros(len(wide), dtype=bool)
    if len(wide.columns):
        # a group absent for a wafer: its n_points feature is NaN
        npts = wide.xs("n_points", axis=1, level="feature")
        grp_missing = npts.isna().any(axis=1).to_numpy()
    status = np.where(grp_missing | missing, "missing_group", "ok").astype(object)
    in_bad = np.array([w in bad_wafers for w in wide.index], dtype=bool)
    status[in_bad & (status == "ok")] = "unfitted"
    return WaferFeatures(wide, np.asarray(lots_of_wafer).astype(str), pd.Series(status, index=wide.index, name="status"))
