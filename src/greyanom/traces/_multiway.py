"""MultiwayPCADetector: multiway PCA of batch traces (Nomikos & MacGregor 1994, Wise et al. 1999)."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from greyanom._threads import threaded
from greyanom._validation import plain_key_columns
from greyanom.traces._persist import TracePersistMixin
from greyanom.traces import _wafer_scorer as ws
from greyanom.traces._wafer_scorer import (
    WAFER_MODEL_CONSTRAINTS, WaferFeatures, WaferScorer, wafer_limit, wafer_lots, wafer_order,
)
from greyanom.base import BaseDetector
from greyanom.traces._keys import normalise_keys, wafer_index

__all__ = ["MultiwayPCADetector", "resample_traces"]


def resample_traces(df, *, time, value, trace_keys, group_keys, n_points):
    """Interpolate every trace onto ``n_points`` of normalised step time.

    The step time of a trace runs from its first to its last finite sample (``u = 0 .. 1``);
    each trace is linearly interpolated at ``u = 0, 1/(n_points-1), ..., 1`` and the
    resampled traces of a wafer are laid side by side (the wafer-wise unfolding of multiway
    PCA).

    Returns
    -------
    frame : pandas.DataFrame
        Index the wafer keys (order of first appearance); columns a MultiIndex
        ``group_keys + ("feature",)`` with features ``"u00"``, ``"u01"``, ... NaN where a
        wafer has no finite sample of a group.
    """
    gk = tuple(group_keys) or ("group",)
    d = df[[*trace_keys, *group_keys, time, value]]
    d = d[np.isfinite(d[time].to_numpy(np.float64)) & np.isfinite(d[value].to_numpy(np.float64))]
    if not group_keys:
        d = d.assign(group="all")
    wafers = pd.unique(pd.MultiIndex.from_frame(df[list(trace_keys)])) if len(trace_keys) > 1 else pd.unique(df[trace_keys[0]])
    d = d.sort_values([*gk, *trace_keys, time], kind="mergesort")
    grid = np.linspace(0.0, 1.0, n_points)
    rows = {}
    t_all = d[time].to_numpy(np.float64)
    v_all = d[value].to_numpy(np.float64)
    codes = d.groupby([*gk, *trace_keys], sort=False).ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    keys = d[[*gk, *trace_keys]].to_numpy(dtype=object)[starts]
    ng = len(gk)
    for (a, b), key in zip(zip(starts, ends), keys):
        t, v = t_all[a:b], v_all[a:b]
        span = t[-1] - t[0]
        u = (t - t[0]) / span if span > 0 else np.zeros_like(t)
        g = tuple(key[:ng])
        w = tuple(key[ng:]) if len(trace_keys) > 1 else key[ng]
        rows.setdefault(g, {})[w] = np.interp(grid, u, v)
    groups = sorted(rows, key=lambda g: tuple(map(str, g)))
    feat = [f"u{j:02d}" for j in range(n_points)]
    blocks = []
    for g in groups:
        block = pd.DataFrame.from_dict(rows[g], orient="index", columns=feat).reindex(wafers)
        block.columns = pd.MultiIndex.from_tuples([(*g, f) for f in feat], names=[*gk, "feature"])
        blocks.append(block)
    out = pd.concat(blocks, axis=1)
    out.index = wafer_index(out.index, trace_keys)
    return out


class MultiwayPCADetector(TracePersistMixin, BaseDetector):
    """Multiway PCA of process traces: the field's classic batch monitoring baseline.

    Each trace (one wafer, one ``group_keys`` group, e.g. one (step, sensor)) is resampled
    to ``n_points`` points of normalised step time; the resampled traces of a wafer are
    unfolded into one row (Nomikos & MacGregor 1994). The rows are scaled by a robust
    per-lot scaler (per-lot median and robust scale with a floor, clipping), then a PCA
    model gives Q (squared prediction error) and Hotelling's T²; the wafer score is
    ``Q / delta_Q`` by default (``statistic``), with ``delta_Q`` the median held-out
    training Q. The control limit comes from cross-fitted training scores (``cv`` folds of
    wafers), not from in-sample scores, which are far too low with more variables than wafers.

    Parameters
    ----------
    time, value : str, default="t", "value"
        Columns of the sample times and values (long format, one row per sample).
    trace_keys : tuple of str, default=("wafer",)
        Columns that identify a wafer.
    group_keys : tuple of str, default=("step", "sensor")
        Columns of the groups unfolded side by side.
    lot_key : str or None, default="lot"
        Column of the lot (or experiment): each lot is centred on its own training median.
    order_key : str or None, default=None
        Column of each wafer's run order within its lot (numbers or datetimes): with it, the
        variables that drift within a lot are centred on the median of the ``n_neighbours``
        training wafers of the lot nearest in run order, as in
        :class:`~greyanom.ShapeSignatureDetector`. ``None``: every variable on its lot median.
    n_neighbours : int >= 3, default=6
        Training wafers whose median centres a drifting variable (``order_key``).
    n_points : int, default=20
        Resampling points per trace.
    n_components : int, default=4
        Principal components (at most a fifth of the unfolded variables; ``n_components_``).
    statistic : {"q", "t2", "combined"}, default="q"
        Wafer score: ``Q / delta_Q`` (squared prediction error), ``T^2 / delta_T`` or their
        sum. On LAM 9600, Q alone separates the faults best (T^2 of held-out normal wafers
        is noisy with more variables than wafers).
    scale_floor : float, default=1.0
        The robust scale of a variable is at least this fraction of its standard deviation
        (within the lot), so quantised sensors do not dominate.
    clip : float, default=8.0
        Scaled values are clipped to ``[-clip, clip]``.
    new_lots : {"pooled", "self"}, default="pooled"
        Lots not seen in training: centred on the pooled training median, or (``"self"``) on
        their own median when they have at least 3 wafers (this hides a shift common to the
        whole lot).
    cv : int, default=5
        Folds of the cross-fitting that sets the control limit.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Control limit from the cross-fitted training scores: a float is the
        lognormal prediction limit at ``1 - contamination`` from them, ``"auto"`` their median
        plus three robust standard deviations (see
        :func:`~greyanom.traces._wafer_scorer.wafer_limit`).
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training wafer scores set ``offset_``, ``wafer_threshold_`` (and fill
        ``heldout_scores_``): ``"heldout"``, the cross-fitted wafer scores; ``"in_sample"``,
        the fitted model's own training scores (optimistic: the limit then flags more than
        ``contamination`` of new normal wafers). The wafer model is cross-fitted either
        way, so both cost the same.
    random_state : int, RandomState instance or None, default=None
        Seeds the assignment of wafers to the ``cv`` folds whose held-out scores set the
        control limit; the same seed gives the same numbers. ``None`` uses a fixed seed (0),
        so that the limit does not change from fit to fit; nothing else is random.

    Attributes
    ----------
    wafer_model_ : greyanom.traces._wafer_model.WaferModel
        The frozen scaler and PCA model.
    wafer_columns_ : pandas.MultiIndex
        The unfolded variables.
    wafer_heldout_scores_ : pandas.Series
        Cross-fitted scores of the training wafers.
    wafer_threshold_, threshold_ : float
        The control limit (the same value); ``offset_ = -threshold_``.

    References
    ----------
    .. [1] P. Nomikos, J. F. MacGregor, "Monitoring batch processes using multiway principal
       component analysis", AIChE J. 40 (1994) 1361-1375.
    .. [2] B. M. Wise et al., "A comparison of principal component analysis, multiway
       principal component analysis, trilinear decomposition and parallel factor analysis
       for fault detection in a semiconductor etch process", J. Chemometrics 13 (1999).

    Examples
    --------
    >>> from greyanom import MultiwayPCADetector
    >>> from greyanom.datasets import make_pi_lots
    >>> df = make_pi_lots(n_lots=4, wafers_per_lot=6, random_state=0)
    >>> det = MultiwayPCADetector(group_keys=("sensor",), random_state=0).fit(df)
    >>> det.score_wafers(df).shape
    (24,)
    """

    _saved_attrs = (
        "wafer_columns_", "n_components_", "wafer_model_", "wafer_heldout_scores_", "wafer_threshold_",
        "n_features_", "decision_scores_", "heldout_scores_", "threshold_", "offset_",
    )

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "time": [str],
        "value": [str],
        "trace_keys": [tuple, list, str],
        "group_keys": [tuple, list, str],
        "lot_key": [str, None],
        "n_points": [Interval(numbers.Integral, 2, None, closed="left")],
        **WAFER_MODEL_CONSTRAINTS,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        time="t",
        value="value",
        trace_keys=("wafer",),
        group_keys=("step", "sensor"),
        lot_key="lot",
        order_key=None,
        n_neighbours=6,
        n_points=20,
        n_components=4,
        statistic="q",
        scale_floor=1.0,
        clip=8.0,
        new_lots="pooled",
        cv=5,
        contamination="auto",
        calibration="heldout",
        random_state=None,
    ):
        self.time = time
        self.value = value
        self.trace_keys = trace_keys
        self.group_keys = group_keys
        self.lot_key = lot_key
        self.order_key = order_key
        self.n_neighbours = n_neighbours
        self.n_points = n_points
        self.n_components = n_components
        self.statistic = statistic
        self.scale_floor = scale_floor
        self.clip = clip
        self.new_lots = new_lots
        self.cv = cv
        self.contamination = contamination
        self.calibration = calibration
        self.random_state = random_state

    def _restore_unpickled(self):
        if "order_key" not in vars(self):
            self.order_key = None  # pickled before run-order centring: every variable on its lot median
            self.n_neighbours = 6

    def _check_frame(self, X, name="X"):
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"{name} must be a long-format pandas DataFrame, got {type(X).__name__}.")
        tk, gk = normalise_keys(self.trace_keys, self.group_keys)
        need = [self.time, self.value, *tk, *gk] + [k for k in (self.lot_key, self.order_key) if k is not None]
        missing = [c for c in need if c not in X.columns]
        if missing:
            raise ValueError(f"{name} has no column(s) {missing}; expected columns {need}.")
        for col in (self.time, self.value):
            if not pd.api.types.is_numeric_dtype(X[col]):
                raise TypeError(f"{name}[{col!r}] must be numeric, got dtype {X[col].dtype}.")
        if len(X) == 0:
            raise ValueError(f"{name} has no rows.")
        return tk, gk

    def _wafer_features(self, X):
        tk, gk = self._check_frame(X)
        X = plain_key_columns(X, [*tk, *gk, self.lot_key])  # categorical keys as plain labels
        F = resample_traces(
            X, time=self.time, value=self.value, trace_keys=tk, group_keys=gk, n_points=self.n_points
        )
        if hasattr(self, "wafer_columns_"):
            F = F.reindex(columns=self.wafer_columns_)
        missing = F.isna().any(axis=1).to_numpy()
        status = pd.Series(np.where(missing, "missing_group", "ok"), index=F.index, name="status", dtype=object)
        return WaferFeatures(F, wafer_lots(X, tk, self.lot_key, F.index), status,
                             wafer_order(X, tk, self.order_key, F.index))

    def _fit(self, X):
        for attr in ("wafer_columns_",):
            if hasattr(self, attr):
                delattr(self, attr)
        wf = self._wafer_features(X)
        if len(wf.features) < 2 * self.cv and len(wf.features) < 4:
            raise ValueError(f"X has {len(wf.features)} wafer(s); MultiwayPCADetector needs at least 4.")
        scorer = WaferScorer.fit(
            wf, n_components=self.n_components, statistic=self.statistic, scale_floor=self.scale_floor,
            clip=self.clip, new_lots=self.new_lots, cv=self.cv, contamination=self.contamination,
            random_state=self.random_state, n_neighbours=self.n_neighbours,
        )
        for name, value in scorer.attributes().items():
            setattr(self, name, value)
        self.n_features_ = len(self.wafer_columns_)
        return scorer.score(wf).to_numpy()  # in-sample: the final model on its training wafers

    def _heldout_scores(self, X, train_scores):
        # the cross-fitted wafer scores computed in _fit (no refit)
        return self.wafer_heldout_scores_.to_numpy()

    def _set_offset(self, train_scores):
        # one control limit: predict_wafers' wafer_threshold_ is the contract's threshold_, the
        # wafer limit (lognormal prediction limit) of the scores `calibration` names
        self.threshold_ = float(wafer_limit(train_scores, self.contamination))
        self.offset_ = -self.threshold_
        self.wafer_threshold_ = self.threshold_

    def _score(self, X):
        return self.score_wafers(X).to_numpy()

    @threaded
    def score(self, X, y=None):
        """Wafer anomaly scores as an array (the values of :meth:`score_wafers`).

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.
        y : None
            Ignored.

        Returns
        -------
        scores : ndarray of shape (n_wafers,)
        """
        check_is_fitted(self, "wafer_model_")
        return self._score(X)

    # -- wafer answers: the wafer scorer on the resampled traces ---------------------------------
    def _wafer_scorer(self):
        check_is_fitted(self, "wafer_model_")
        return WaferScorer.of(self)

    @threaded
    def score_wafers(self, X):
        return self._wafer_scorer().score(self._wafer_features(X))

    @threaded
    def predict_wafers(self, X):
        return self._wafer_scorer().predict(self._wafer_features(X))

    @threaded
    def explain_wafers(self, X):
        return self._wafer_scorer().explain(self._wafer_features(X))

    @threaded
    def wafer_status(self, X):
        return self._wafer_scorer().status(self._wafer_features(X))

    @threaded
    def explain_wafer_features(self, X):
        return self._wafer_scorer().explain_features(self._wafer_features(X))

    score_wafers.__doc__ = ws.SCORE_WAFERS_DOC
    predict_wafers.__doc__ = ws.PREDICT_WAFERS_DOC
    explain_wafers.__doc__ = ws.EXPLAIN_WAFERS_DOC
    wafer_status.__doc__ = ws.WAFER_STATUS_DOC
    explain_wafer_features.__doc__ = ws.EXPLAIN_WAFER_FEATURES_DOC

    @threaded
    def explain(self, X):
        """Per-group contributions to each wafer's score (the contract's ``explain``).

        Parameters
        ----------
        X : pandas.DataFrame
            Long-format traces.

        Returns
        -------
        explanation : pandas.DataFrame
            One row per wafer (index ``trace_keys``, the order of :meth:`score`); one column
            per group (the Q and T² contributions of its resampled points, summed; a tuple
            label for several group keys) and nothing else: ``explanation.sum(axis=1)``
            equals ``score(X)`` exactly. The same table as :meth:`explain_wafers`;
            :meth:`explain_wafer_features` splits it per point and :meth:`wafer_status` gives
            each wafer's status.

        Examples
        --------
        >>> from greyanom import MultiwayPCADetector
        >>> from greyanom.datasets import make_pi_lots
        >>> df = make_pi_lots(n_lots=4, wafers_per_lot=6, sensors=("v", "u"), random_state=0)
        >>> det = MultiwayPCADetector(group_keys=("sensor",), random_state=0).fit(df)
        >>> list(det.explain(df).columns)
        ['u', 'v']
        """
        check_is_fitted(self, "wafer_model_")
        return self.explain_wafers(X)
