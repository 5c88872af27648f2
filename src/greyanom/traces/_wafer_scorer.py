"""Wafer-level scoring shared by the trace detectors (pandas side of :mod:`greyanom.traces._wafer_model`).

Each trace detector turns ``X`` into :class:`WaferFeatures` (one row per wafer, one column
per (group, feature), the lot of each wafer and a status per wafer) and owns a
:class:`WaferScorer`: the shared :class:`~greyanom.traces._wafer_model.WaferModel` with a
cross-fitted control limit, which gives the scores, labels and exact explanations.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.utils._param_validation import Interval, StrOptions

from greyanom.traces import _wafer_model as wm
from greyanom.base import threshold_from_scores

__all__ = ["WaferFeatures", "WaferScorer", "wafer_limit", "wafer_lots", "wafer_order"]


def wafer_limit(heldout, contamination):
    """Wafer control limit from the cross-fitted scores of the training wafers.

    With a float ``contamination`` the limit is the lognormal *prediction limit*: with ``m`` and
    ``sd`` the mean and standard deviation (``ddof=1``) of the logarithms of the ``n`` held-out
    scores,

    .. math::

        \\exp\\left(m + t_{n-1}(1 - \\text{contamination})\\, sd \\sqrt{1 + 1/n}\\right)

    with :math:`t_{n-1}` the quantile of Student's t with ``n - 1`` degrees of freedom: the limit
    that a new wafer's score exceeds with probability ``contamination`` when the logarithms of
    the scores are normal, *their mean and spread estimated from the same n scores*
    (the textbook prediction interval of a normal sample). The plug-in quantile of the fitted
    lognormal (``t`` replaced by the normal quantile, without the ``sqrt(1 + 1/n)``), the limit
    before, is exceeded more often than that, because the estimated spread is as often too
    small as too large and the tail is steep. With 80 scores and ``contamination=0.01`` the
    multiplier of ``sd`` is 2.389 instead of 2.326.

    With ~80 training wafers the empirical 99th percentile is about the largest held-out score,
    and one unusual training wafer moves it a long way; the fitted tail uses every score and, on
    logarithms, weighs an extreme one less. The wafer scores are sums of squares (``Q``, the
    level term): positive and right-skewed, which the lognormal follows. On the development
    splits of LAM 9600 (``benchmarks/wafer_limit_dev.py``) the lognormal plug-in limit flagged
    more faults than the empirical percentile for the shape detector, the multiway PCA and the
    max|z| baseline alike, but its false alarms on held-out normal wafers were about twice the
    nominal rate: 2.19 % at 0.01 on 61 development splits for the shape detector, against
    1.88 % for the prediction limit (see the shape detector guide).

    ``"auto"``, fewer than 3 scores, or a score that is not positive (no logarithm) fall back
    to :func:`greyanom.base.threshold_from_scores` on the scores themselves.

    Parameters
    ----------
    heldout : array-like of shape (n_wafers,)
        Held-out (cross-fitted) wafer scores of the training wafers; finite.
    contamination : "auto" or float in (0, 0.5]
        Expected share of new normal wafers above the limit.

    Returns
    -------
    limit : float

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.traces._wafer_scorer import wafer_limit
    >>> s = np.exp(np.random.default_rng(0).normal(size=100_000))
    >>> round(wafer_limit(s, 0.01), 1)  # exp(2.326), the 99 % quantile of the standard lognormal
    10.2
    >>> logs = np.log(s[:20])
    >>> plug_in = np.exp(logs.mean() + 2.326 * logs.std(ddof=1))  # the fitted lognormal's 99 % quantile
    >>> round(float(wafer_limit(s[:20], 0.01) / plug_in), 2)  # 20 scores: t_19 and sqrt(1 + 1/20) widen it
    1.27
    """
    s = np.asarray(heldout, dtype=np.float64).ravel()
    if isinstance(contamination, str) or s.size < 3 or not np.isfinite(s).all() or (s <= 0).any():
        return float(threshold_from_scores(s, contamination))  # validates, and says what is wrong
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {contamination!r}.")
    logs = np.log(s)
    sd = float(logs.std(ddof=1))
    if sd == 0:
        return float(s[0])
    n = logs.size
    return float(np.exp(logs.mean() + stats.t.ppf(1.0 - contamination, n - 1) * sd * np.sqrt(1.0 + 1.0 / n)))


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
        Status of each wafer, see ``greyanom.traces._status.WAFER_STATUSES`` (before the ``new_lot`` check).
    order : ndarray of shape (n_wafers,) or None
        Run order of each wafer within its lot (floats, NaN unknown); ``None`` without an
        ``order_key``.
    """

    features: pd.DataFrame
    lots: np.ndarray
    status: pd.Series
    order: np.ndarray | None = None


def _per_wafer(df, trace_keys, key, index):
    """The first ``key`` value of each wafer's rows (a pandas or dask frame), for the wafers of ``index``."""
    first = df.groupby(list(trace_keys), sort=False)[key].first()
    if hasattr(first, "compute"):
        first = first.compute()
    return first.reindex(index)


def wafer_lots(df, trace_keys, lot_key, index):
    """Lot of each wafer of ``index`` (first lot value of its rows)."""
    if lot_key is None:
        return np.full(len(index), "all", dtype=object).astype(str)
    return _per_wafer(df, trace_keys, lot_key, index).astype(str).to_numpy()


def wafer_order(df, trace_keys, order_key, index):
    """Run order of each wafer of ``index`` (first ``order_key`` value of its rows) as floats, or None.

    Numbers are taken as they are; time stamps (datetime64) become seconds. A wafer without a
    value is NaN (it is centred on its lot median). Anything else is a ``TypeError`` naming
    ``order_key``.
    """
    if order_key is None:
        return None
    if not isinstance(df, pd.DataFrame) and not hasattr(df, "compute"):
        raise TypeError(
            f"order_key={order_key!r} needs the traces as a pandas or dask frame with that column, "
            f"got {type(df).__name__}."
        )
    values = _per_wafer(df, trace_keys, order_key, index)
    if pd.api.types.is_datetime64_any_dtype(values):
        ns = values.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
        return np.where(values.isna().to_numpy(), np.nan, ns / 1e9)
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise TypeError(
            f"order_key={order_key!r} must hold numbers (a run position) or time stamps, got dtype {values.dtype}."
        )
    return values.to_numpy(dtype=np.float64)


#: Parameter constraints of the wafer model, shared by the detectors that use it.
WAFER_MODEL_CONSTRAINTS = {
    "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    "statistic": [StrOptions({"q", "t2", "combined"})],
    "scale_floor": [Interval(numbers.Real, 0, None, closed="left")],
    "clip": [Interval(numbers.Real, 0, None, closed="neither")],
    "new_lots": [StrOptions({"pooled", "self"})],
    "cv": [Interval(numbers.Integral, 2, None, closed="left")],
    "order_key": [str, None],
    "n_neighbours": [Interval(numbers.Integral, 3, None, closed="left")],
}


@dataclass(frozen=True)
class WaferScorer:
    """The fitted wafer model of a trace detector, and the wafer answers it gives.

    A detector fits one with :meth:`fit` on the wafer features of its training data, keeps
    its fields as learned attributes (:meth:`attributes`: ``wafer_model_``,
    ``wafer_columns_``, ``n_components_``, ``wafer_heldout_scores_``, ``wafer_threshold_``)
    and rebuilds it from them with :meth:`of`; ``score_wafers``, ``predict_wafers``,
    ``explain_wafers``, ``wafer_status`` and ``explain_wafer_features`` of both trace detectors call it by name
    on the :class:`WaferFeatures` of ``X``.
    """

    model: wm.WaferModel
    columns: pd.Index
    n_components: int
    heldout: pd.Series
    threshold: float
    new_lots: str = "pooled"

    @classmethod
    def fit(cls, wf, *, n_components, statistic, scale_floor, clip, new_lots, cv, contamination, random_state,
            level_features=(), level_weight=0.0, level_term="residual", level_subspace_weight=0.5, cv_repeats=1,
            n_neighbours=6):
        """Fit the wafer model on training features, with cross-fitted held-out scores and limit.

        The limit is :func:`wafer_limit` of the held-out scores at ``contamination``.

        ``level_features`` names the features (last column level) that the max-type level
        term runs over, weighted by ``level_weight``, on the residuals or the scaled features
        (``level_term``, ``level_subspace_weight``; see :func:`greyanom.traces._wafer_model.cross_fit`).
        ``cv_repeats`` fold splits of ``cv`` folds are pooled in the cross-fitting (its ``n_repeats``).
        With the wafers' run order (``wf.order``), the features that drift within a lot are
        centred on the ``n_neighbours`` training wafers of the lot nearest in run order.
        """
        # folds drawn on the wafers in key order, so the fit does not depend on the row order
        order = np.argsort(wf.features.index.to_numpy(dtype=object).astype(str), kind="stable")
        F = wf.features.iloc[order]
        lots = np.asarray(wf.lots)[order]
        run_order = None if wf.order is None else np.asarray(wf.order, dtype=np.float64)[order]
        usable = F.notna().all(axis=0).to_numpy() | (F.notna().mean(axis=0).to_numpy() >= 0.5)
        columns = F.columns[usable]
        # a training wafer without a feature takes the feature's median (it is normal)
        X = F[columns]
        X = X.fillna(X.median()).to_numpy(dtype=np.float64)
        # at most a fifth of the features go into the PCA subspace, so that Q keeps most
        # directions (with few features, a component would absorb e.g. the noise level)
        k = int(min(n_components, max(1, X.shape[1] // 5)))
        model, heldout, _ = wm.cross_fit(
            X, lots, order=run_order, n_neighbours=n_neighbours, n_splits=cv, n_repeats=cv_repeats,
            random_state=random_state,
            level_mask=columns.get_level_values(-1).isin(list(level_features)), level_weight=level_weight,
            level_term=level_term, level_subspace_weight=level_subspace_weight,
            n_components=k, scale_floor=scale_floor, clip=clip, statistic=statistic,
        )
        return cls(
            model=model,
            columns=columns,
            n_components=k,
            heldout=pd.Series(heldout, index=F.index, name="score").reindex(wf.features.index),
            threshold=wafer_limit(heldout, contamination),
            new_lots=new_lots,
        )

    @classmethod
    def of(cls, detector):
        """The scorer of a fitted detector (from its learned attributes)."""
        return cls(
            model=detector.wafer_model_,
            columns=detector.wafer_columns_,
            n_components=detector.n_components_,
            heldout=detector.wafer_heldout_scores_,
            threshold=detector.wafer_threshold_,
            new_lots=detector.new_lots,
        )

    def attributes(self):
        """The detector's learned attributes that hold this scorer."""
        return {
            "wafer_columns_": self.columns,
            "n_components_": self.n_components,
            "wafer_model_": self.model,
            "wafer_heldout_scores_": self.heldout,
            "wafer_threshold_": self.threshold,
        }

    def analyse(self, wf):
        """Scores, contributions and statuses of the wafers of ``wf``."""
        F = wf.features.reindex(columns=self.columns)
        raw = F.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(raw)
        model = self.model
        Z, known = wm.scale_rows(
            model, np.where(bad, 0.0, raw), wf.lots, order=wf.order, new_lots=self.new_lots, min_lot_size=3
        )
        # a feature that could not be computed counts as the worst in-range value, never as normal
        Z[bad] = model.clip
        score, contrib, q, t2 = wm.wafer_terms(model, Z)
        status = wf.status.copy()
        status[(~known) & (status == "ok").to_numpy()] = "new_lot"
        return score, contrib, status, F.index

    def score(self, wf):
        """Wafer scores (a Series indexed by the wafer keys)."""
        score, _, _, index = self.analyse(wf)
        return pd.Series(score, index=index, name="score")

    def predict(self, wf):
        """+1 under the control limit, -1 above it."""
        s = self.score(wf)
        return pd.Series(np.where(s.to_numpy() > self.threshold, -1, 1), index=s.index, name="label")

    def explain(self, wf):
        """Per-group contributions: only them, so that ``sum(axis=1)`` is exactly the score."""
        _, contrib, _, index = self.analyse(wf)
        groups, codes = self._groups()
        G = np.zeros((codes.size, len(groups)))
        G[np.arange(codes.size), codes] = 1.0
        return pd.DataFrame(contrib @ G, index=index, columns=pd.Index(groups, tupleize_cols=False))

    def status(self, wf):
        """Status of each wafer (``WAFER_STATUSES``), a Series named ``status``."""
        _, _, status, index = self.analyse(wf)
        return pd.Series(status.to_numpy(), index=index, name="status")

    def explain_features(self, wf):
        """Per-feature contributions (columns ``group_keys + ("feature",)``); rows sum to the score."""
        _, contrib, _, index = self.analyse(wf)
        return pd.DataFrame(contrib, index=index, columns=self.columns)

    def _groups(self):
        labels = [c[:-1] if len(c) > 2 else c[0] for c in self.columns]
        groups = list(dict.fromkeys(labels))
        pos = {g: i for i, g in enumerate(groups)}
        return groups, np.array([pos[g] for g in labels], dtype=np.int64)


#: Docstrings of the wafer methods, shared by the two trace detectors (which delegate to a
#: :class:`WaferScorer`).
SCORE_WAFERS_DOC = """Wafer-level anomaly score (higher = more anomalous), one per wafer.

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
PREDICT_WAFERS_DOC = """+1 for wafers under the wafer control limit ``wafer_threshold_``, -1 above it.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        labels : pandas.Series of int
        """
EXPLAIN_WAFERS_DOC = """Per-group contributions to the wafer score; each row sums exactly to ``score_wafers``.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        explanation : pandas.DataFrame
            One row per wafer (the index of ``score_wafers``); one column per group (the
            feature contributions of the group summed; a tuple label for several group keys)
            and nothing else, so that ``explanation.sum(axis=1)`` equals ``score_wafers(X)``
            and ``explanation.idxmax(axis=1)`` names the group that weighs most. Each wafer's
            status (a group missing, a trace not fitted, a new lot) is :meth:`wafer_status`.
        """
WAFER_STATUS_DOC = """Status of each wafer: whether its score rests on every group's fitted traces.

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        status : pandas.Series of str
            Indexed as ``score_wafers(X)``, named ``status``: ``"ok"``, ``"missing_group"``,
            ``"unfitted"`` or ``"new_lot"`` (:data:`greyanom.traces._status.WAFER_STATUSES`).
        """
EXPLAIN_WAFER_FEATURES_DOC = """Per-feature contributions (columns ``group_keys + ("feature",)``); rows sum to the score."""
