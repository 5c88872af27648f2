"""Wafer-level scoring shared by the trace detectors (pandas side of :mod:`greyanom.traces._wafer_model`).

A detector that mixes in :class:`WaferScoringMixin` provides ``_wafer_features(X)``, which
returns a :class:`WaferFeatures` (one row per wafer, one column per (group, feature), the lot
of each wafer and a status per wafer); the mixin fits the shared :class:`WaferModel` with
cross-fitted control limits and gives ``score_wafers``, ``predict_wafers`` and
``explain_wafers``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval, StrOptions

from greyanom.traces import _wafer_model as wm
from greyanom.base import threshold_from_scores
from greyanom.traces._keys import normalise_keys
from greyanom.traces._status import WAFER_STATUSES

__all__ = ["WaferFeatures", "WaferScoringMixin"]



@dataclass(frozen=True)
class WaferFeatures:
    """Feature matrix of a set of wafers.

    Attributes
    ----------
    features : pandas.DataFrame
        Index the wafer keys; columns a MultiIndex ``group_keys + ("feature",)``. NaN where a
        feature could not be computed (missing group, unfittable trace).
    lots : ndarray of shape (n_wafers,)
        Lot of each wafer (strings; all ``"all"`` without a lot key).
    status : pandas.Series
        Status of each wafer, see :data:`WAFER_STATUSES` (before the ``new_lot`` check).
    """

    features: pd.DataFrame
    lots: np.ndarray
    status: pd.Series


def wafer_lots(df, trace_keys, lot_key, index):
    """Lot of each wafer of ``index`` (first lot value of its rows)."""
    if lot_key is None:
        return np.full(len(index), "all", dtype=object).astype(str)
    lots = df.groupby(list(trace_keys), sort=False)[lot_key].first()
    return lots.reindex(index).astype(str).to_numpy()


#: Parameter constraints of the wafer model, shared by the detectors that use it.
WAFER_MODEL_CONSTRAINTS = {
    "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    "statistic": [StrOptions({"q", "t2", "combined"})],
    "scale_floor": [Interval(numbers.Real, 0, None, closed="left")],
    "clip": [Interval(numbers.Real, 0, None, closed="neither")],
    "new_lots": [StrOptions({"pooled", "self"})],
    "cv": [Interval(numbers.Integral, 2, None, closed="left")],
}


class WaferScoringMixin:
    """``score_wafers``, ``predict_wafers``, ``explain_wafers`` from a shared wafer model."""

    def _wafer_keys(self):
        return normalise_keys(self.trace_keys)[0]

    def _fit_wafer_model(self, wf, level_features=(), level_weight=0.0):
        """Fit the wafer model on training features; set the columns, limit and held-out scores.

        ``level_features`` names the features (last column level) that the max-type level
        term runs over, weighted by ``level_weight`` (see :func:`greyanom.traces._wafer_model.cross_fit`).
        """
        # folds drawn on the wafers in key order, so the fit does not depend on the row order
        order = np.argsort(wf.features.index.to_numpy(dtype=object).astype(str), kind="stable")
        F = wf.features.iloc[order]
        lots = np.asarray(wf.lots)[order]
        usable = F.notna().all(axis=0).to_numpy() | (F.notna().mean(axis=0).to_numpy() >= 0.5)
        self.wafer_columns_ = F.columns[usable]
        X = self._impute_train(F[self.wafer_columns_])
        # at most a fifth of the features go into the PCA subspace, so that Q keeps most
        # directions (with few features, a component would absorb e.g. the noise level)
        self.n_components_ = int(min(self.n_components, max(1, X.shape[1] // 5)))
        level_mask = self.wafer_columns_.get_level_values(-1).isin(list(level_features))
        model, heldout, _ = wm.cross_fit(
            X, lots, n_splits=self.cv, random_state=self.random_state,
            level_mask=level_mask, level_weight=level_weight,
            n_components=self.n_components_, scale_floor=self.scale_floor, clip=self.clip,
            statistic=self.statistic,
        )
        self.wafer_model_ = model
        self.wafer_heldout_scores_ = pd.Series(heldout, index=F.index, name="score").reindex(wf.features.index)
        self.wafer_threshold_ = float(threshold_from_scores(heldout, self.contamination))
        return self.wafer_heldout_scores_.to_numpy()

    @staticmethod
    def _impute_train(F):
        # a training wafer without a feature takes the feature's median (it is normal)
        return F.fillna(F.median()).to_numpy(dtype=np.float64)

    def _wafer_analysis(self, X):
        """Scores, contributions and statuses of the wafers of ``X``."""
        wf = X if isinstance(X, WaferFeatures) else self._wafer_features(X)
        F = wf.features.reindex(columns=self.wafer_columns_)
        raw = F.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(raw)
        model = self.wafer_model_
        Z, known = wm.scale_rows(
            model, np.where(bad, 0.0, raw), wf.lots, new_lots=self.new_lots, min_lot_size=3
        )
        # a feature that could not be computed counts as the worst in-range value, never as normal
        Z[bad] = model.clip
        score, contrib, q, t2 = wm.wafer_terms(model, Z)
        status = wf.status.copy()
        status[(~known) & (status == "ok").to_numpy()] = "new_lot"
        return score, contrib, status, F.index

    def score_wafers(self, X):
        """Wafer-level anomaly score (higher = more anomalous), one per wafer.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces (the columns named by the detector's parameters).

        Returns
        -------
        scores : pandas.Series
            Indexed by ``trace_keys``; ``Q / delta_Q`` (``statistic``) under the wafer model,
            plus the weighted level term where the detector has one (about 1 for held-out
            normal wafers with the default ``statistic="q"`` alone). Never NaN: every wafer
            of ``X`` has a score.
        """
        score, _, _, index = self._wafer_analysis(X)
        return pd.Series(score, index=index, name="score")

    def predict_wafers(self, X):
        """+1 for wafers under the wafer control limit ``wafer_threshold_``, -1 above it.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        labels : pandas.Series of int
        """
        s = self.score_wafers(X)
        return pd.Series(np.where(s.to_numpy() > self.wafer_threshold_, -1, 1), index=s.index, name="label")

    def explain_wafers(self, X):
        """Per-group contributions to the wafer score; each row sums exactly to ``score_wafers``.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        explanation : pandas.DataFrame
            One row per wafer; one column per group (the feature contributions of the group
            summed; a tuple label for several group keys), then ``score`` and ``status``.
        """
        score, contrib, status, index = self._wafer_analysis(X)
        groups, codes = self._wafer_groups()
        G = np.zeros((codes.size, len(groups)))
        G[np.arange(codes.size), codes] = 1.0
        out = pd.DataFrame(contrib @ G, index=index, columns=pd.Index(groups, tupleize_cols=False))
        out["score"] = score
        out["status"] = status.to_numpy()
        return out

    def _wafer_groups(self):
        cols = self.wafer_columns_
        labels = [c[:-1] if len(c) > 2 else c[0] for c in cols]
        groups = list(dict.fromkeys(labels))
        pos = {g: i for i, g in enumerate(groups)}
        return groups, np.array([pos[g] for g in labels], dtype=np.int64)

    def explain_wafer_features(self, X):
        """Per-feature contributions (columns ``group_keys + ("feature",)``); rows sum to the score."""
        score, contrib, _, index = self._wafer_analysis(X)
        return pd.DataFrame(contrib, index=index, columns=self.wafer_columns_)
