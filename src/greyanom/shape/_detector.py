"""ShapeSignatureDetector: grey-box anomaly scores for process traces (Vargas et al. 2018)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom._wafer_frames import WAFER_MODEL_CONSTRAINTS, WaferScoringMixin
from greyanom.base import BaseDetector
from greyanom.shape._frames import (
    STATUSES,
    _as_tuple,
    _engine,
    _fit_partition,
    _is_dask,
    analyse_frame,
    check_columns,
    fit_dask,
    prepare_frame,
    required_columns,
)
from greyanom.shape._hierarchy import PARAMS
from greyanom.shape._scoring import FitConfig, NormalModel, change_split
from greyanom.shape._wafer import TraceAnalysis, wafer_features

__all__ = ["ShapeSignatureDetector"]


class ShapeSignatureDetector(WaferScoringMixin, BaseDetector):
    """Grey-box anomaly detector for process traces run by PI control loops.

    Every trace (one (tool, sensor, step) group, one wafer) is summarised by its *shape
    signature* :math:`s = (\\gamma, R, \\omega, y, \\varphi, c)`, the parameters of the damped,
    linearly driven oscillator that the closed-loop ODE of a PI controller implies
    (Vargas et al. 2018, eq. 11). ``fit`` learns a normal model per group, the Gaussian prior
    :math:`(\\sigma^*, \\mu_S^*, \\sigma_S^*)` of the signatures and the noise level, by the
    hierarchical fit of eq. (14) with a Laplace-EM update. ``score`` refits the signatures of
    new traces lot by lot and scores each one by the negative log posterior (19) under the
    normal model, centred so that normal traces score about 0.

    Parameters
    ----------
    time : str, default="t"
        Column of the sample times.
    value : str, default="value"
        Column of the sensor values.
    start_time : str or None, default=None
        Column of the start time of each trace's step (the time origin ``x`` of eq. 11, the
        first row of each trace is read). ``None``: the group's nominal start, the median first
        sample time of its training traces (``t_start`` of ``normal_model_``), for every trace
        whose first sample lies within ``t_tol`` of it, when the training traces start
        together (within two sampling intervals); otherwise (``t_tol`` NaN: absolute clock
        times, a clock offset per wafer) each trace starts at its first sample, and only a
        ``start_time`` column makes the score robust to missing first samples.
    trace_keys : tuple of str, default=("wafer",)
        Columns that identify a trace within a group (usually the wafer).
    group_keys : tuple of str, default=()
        Columns of the (tool, sensor, step) group; one normal model is fitted per group.
    lot_key : str or None, default="lot"
        Column of the lot. The signatures of the traces of a lot are fitted together with a
        lot prior (eq. 14). ``None`` treats all traces of a group as one lot.
    n_initial_lots : int or None, default=None
        With ``k``, only the first ``k`` lots (in order of first appearance, i.e. time order
        when the rows are) form the normal model (the paper's initial fit); ``None`` uses all.
    max_em_iter : int, default=20
        Maximum number of Laplace-EM iterations of each hierarchical fit.
    em_tol : float, default=0.02
        Relative change of the hyperparameters at which EM stops.
    min_points : int, default=7
        Traces with fewer finite samples are not fitted (status ``"too_short"``).
    min_lot_size : int, default=3
        Lots with fewer fitted traces are scored with the normal-model prior instead of a
        lot prior (column ``prior`` of :meth:`signatures`).
    n_jobs : int or None, default=None
        Numba threads of the signature fits (passed to ``fit_traces``). ``None`` uses one
        thread for batches of fewer than 256 traces (starting the parallel region costs
        more than such a batch) and the current Numba setting otherwise; ``-1``: all cores.
    n_components : int, default=8
        Principal components of the wafer model (at most a fifth of the wafer features;
        the number used is ``n_components_``).
    statistic : {"q", "t2", "combined"}, default="q"
        Wafer score: Q (squared prediction error) of the scaled wafer features, T^2, or both.
    scale_floor : float, default=0.5
        The robust (per-lot MAD) scale of a wafer feature is at least this fraction of its
        standard deviation in the lot.
    clip : float, default=8.0
        Scaled wafer features are clipped to ``[-clip, clip]``; a feature that cannot be
        computed (unfittable trace, missing group) is set to ``clip``.
    new_lots : {"pooled", "self"}, default="pooled"
        Lots not seen in training: their wafers are centred on the pooled training median
        (``"pooled"``) or on their own median if they have at least 3 wafers (``"self"``).
    cv : int, default=5
        Wafer folds of the cross-fitting that sets the wafer control limit.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the training trace scores (see :class:`~greyanom.BaseDetector`)
        and ``wafer_threshold_`` from the cross-fitted training wafer scores.
    random_state : int, RandomState instance or None, default=None
        Accepted for the common contract; the fits are deterministic and do not use it.

    Attributes
    ----------
    normal_model_ : pandas.DataFrame
        One row per group: ``noise_sd`` (:math:`\\sigma^*`), ``mu_<p>`` and ``sd_<p>`` for each
        parameter, ``t_start`` and ``t_tol`` (the nominal step start and the tolerance on a
        trace's first sample time, see ``start_time``), ``n_traces``, ``em_iter`` and
        ``converged``. A group with fewer than two
        fittable traces gets no row (a warning names it); it scores as ``"unknown_group"``.
    train_scores_ : pandas.Series
        Centred scores of the normal-model traces, scored like new data (lot by lot).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    threshold_ : float
        Anomaly-score control limit, ``-offset_``.
    n_groups_ : int
        Number of groups with a normal model.
    wafer_model_ : greyanom._wafer_model.WaferModel
        The frozen wafer model (robust per-lot scaler, PCA) on the wafer features.
    wafer_columns_ : pandas.MultiIndex
        The wafer features, ``group_keys + ("feature",)``: the fitted curve at 8 points of
        normalised step time (``curve_0`` ... ``curve_7``), ``log_sd`` (log residual sd),
        ``feat_y`` and ``feat_c`` (level and slope), ``raw_mean`` (mean of the samples),
        ``res_0`` ... ``res_3`` (mean residual per quarter of step time), ``duration``, ``n_points`` and
        ``unfitted`` (1 for a trace that could not be fitted), per group.
    wafer_heldout_scores_ : pandas.Series
        Cross-fitted wafer scores of the training wafers.
    wafer_threshold_ : float
        Wafer control limit (from ``wafer_heldout_scores_`` at ``contamination``).

    See Also
    --------
    greyanom.shape.fit_traces : the per-trace signature fit.
    greyanom.shape.fit_lot : the hierarchical fit of one lot.

    Notes
    -----
    Score of a trace with :math:`n` points, residual sum of squares SSR and signature
    :math:`s`, with :math:`z_d = (s_d - \\mu^*_d)/\\sigma^*_{S,d}`:

    .. math::

        \\mathrm{score} = \\underbrace{\\frac{\\mathrm{SSR}}{2\\sigma^{*2}} - \\frac{n - p}{2}}_{\\texttt{fit}}
        + \\sum_d \\underbrace{\\tfrac12 (z_d^2 - 1)}_{\\texttt{gamma}, \\dots, \\texttt{c}}

    where :math:`p = \\mathrm{tr}(H^{-1} J^\\top J)/\\sigma^{*2}\\in[0, 6]` is the effective
    number of fitted parameters under the normal-model prior. Each term has expectation about 0
    on normal traces whatever their length and units (paper notes T11); ``score_raw`` is the
    uncentred eq. (19). The prior is the corrected Gaussian over D = 6 parameters; the start
    time ``x`` is data, not a parameter (notes T1, T3).

    References
    ----------
    .. [1] A. Vargas, M. R. Al Iqbal, J. S. Erickson, K. P. Bennett, "Grey-box process control
       mining for anomaly monitoring and deconstruction", ODD v5.0, KDD 2018, arXiv:1808.03709.

    Examples
    --------
    >>> from greyanom import ShapeSignatureDetector
    >>> from greyanom.datasets import make_pi_lots
    >>> df = make_pi_lots(n_lots=3, wafers_per_lot=6, random_state=0)
    >>> det = ShapeSignatureDetector(n_initial_lots=2).fit(df)
    >>> det.score(df).shape
    (18,)
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "time": [str],
        "value": [str],
        "start_time": [str, None],
        "trace_keys": [tuple, list, str],
        "group_keys": [tuple, list, str],
        "lot_key": [str, None],
        "lot_prior": [StrOptions({"em", "mean", "normal"})],
        "n_initial_lots": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "max_em_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "em_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "min_points": [Interval(numbers.Integral, 1, None, closed="left")],
        "min_lot_size": [Interval(numbers.Integral, 2, None, closed="left")],
        "n_jobs": [numbers.Integral, None],
        **WAFER_MODEL_CONSTRAINTS,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        time="t",
        value="value",
        start_time=None,
        trace_keys=("wafer",),
        group_keys=(),
        lot_key="lot",
        lot_prior="em",
        n_initial_lots=None,
        max_em_iter=20,
        em_tol=0.02,
        min_points=7,
        min_lot_size=3,
        n_jobs=None,
        n_components=8,
        statistic="q",
        scale_floor=0.5,
        clip=8.0,
        new_lots="pooled",
        cv=5,
        contamination="auto",
        random_state=None,
    ):
        self.time = time
        self.value = value
        self.start_time = start_time
        self.trace_keys = trace_keys
        self.group_keys = group_keys
        self.lot_key = lot_key
        self.lot_prior = lot_prior
        self.n_initial_lots = n_initial_lots
        self.max_em_iter = max_em_iter
        self.em_tol = em_tol
        self.min_points = min_points
        self.min_lot_size = min_lot_size
        self.n_jobs = n_jobs
        self.n_components = n_components
        self.statistic = statistic
        self.scale_floor = scale_floor
        self.clip = clip
        self.new_lots = new_lots
        self.cv = cv
        self.contamination = contamination
        self.random_state = random_state

    # -- input handling ---------------------------------------------------------------------
    def _keys(self):
        tk = (self.trace_keys,) if isinstance(self.trace_keys, str) else tuple(self.trace_keys)
        gk = (self.group_keys,) if isinstance(self.group_keys, str) else tuple(self.group_keys)
        if not tk:
            raise ValueError("trace_keys must name at least one column, got ().")
        overlap = set(tk) & set(gk)
        if overlap:
            raise ValueError(f"trace_keys and group_keys share column(s) {sorted(overlap)}.")
        return tk, gk

    def _cfg(self):
        tk, gk = self._keys()
        return FitConfig(
            time=self.time,
            value=self.value,
            start_time=self.start_time,
            trace_keys=tk,
            group_keys=gk,
            lot_key=self.lot_key,
            max_em_iter=self.max_em_iter,
            em_tol=self.em_tol,
            min_points=self.min_points,
            min_lot_size=self.min_lot_size,
            n_jobs=self.n_jobs,
            lot_prior=self.lot_prior,
        )

    def _required(self):
        return required_columns(self._cfg())

    def _check_columns(self, columns, name="X"):
        check_columns(columns, self._cfg(), name)

    def _prepare(self, X, name="X", return_keys=False):
        """Validate a long frame (or Traces); see :func:`greyanom.shape._frames.prepare_frame`."""
        return prepare_frame(X, self._cfg(), name, return_keys)

    def _initial_lots(self, lots_in_order):
        if self.n_initial_lots is None:
            return None
        if len(lots_in_order) < self.n_initial_lots:
            raise ValueError(
                f"n_initial_lots={self.n_initial_lots} but X has only {len(lots_in_order)} lot(s)."
            )
        return list(lots_in_order[: self.n_initial_lots])

    def _models(self):
        """``{group key tuple: NormalModel}`` from ``normal_model_``."""
        tk, gk = self._keys()
        return {
            tuple(row[k] for k in gk): NormalModel.from_row(row)
            for _, row in self.normal_model_.reset_index().iterrows()
        }

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, X):
        check_random_state(self.random_state)
        if self.n_initial_lots is not None and self.lot_key is None:
            raise ValueError("n_initial_lots needs lot_key: with lot_key=None there are no lots to count.")
        cfg = self._cfg()
        tk, gk = cfg.trace_keys, cfg.group_keys
        if _is_dask(X):
            table, train_frame = self._fit_dask(X, cfg)
        else:
            df = self._prepare(X)
            if self.lot_key is not None:
                lots = self._initial_lots(pd.unique(df[self.lot_key]))
                if lots is not None:
                    df = df[df[self.lot_key].isin(lots)]
            train_frame = df
            table = _fit_partition(df, cfg)
        if gk:
            table = table.set_index(list(gk))
        else:
            table.index = pd.Index(["all"], name="group")
        failed = table["error"].notna()
        if failed.all():
            raise ValueError(f"no normal model could be fitted: {table['error'].iloc[0]}")
        if failed.any():
            warnings.warn(
                f"{int(failed.sum())} group(s) have no normal model and will score as 'unknown_group' "
                f"(first: {table.index[failed][0]!r}: {table['error'][failed].iloc[0]})",
                UserWarning,
                stacklevel=3,
            )
        table = table[~failed].drop(columns="error")
        self.normal_model_ = table
        self.n_groups_ = len(table)
        train = self._analyse(train_frame)
        scores = train["score"]
        ok = scores.notna()
        if not ok.any():
            raise ValueError("no training trace could be scored; check min_points and the data.")
        self.train_scores_ = scores[ok]
        self.train_status_ = train["status"]
        self._fit_wafer_model(self._wafer_table(train, train_frame))
        return self.train_scores_.to_numpy()

    def _heldout_scores(self, X, train_scores):
        """Cross-fitted per-trace scores of the training traces (for a held-out ``offset_``).

        The training wafers are split into ``cv`` folds stratified by lot (the same fold rule
        and seed as the wafer model's cross-fitting); each fold is scored by normal models
        fitted on the other folds only. This refits the normal models ``cv`` times, so it
        costs about ``cv`` fits. A dask DataFrame is computed into pandas for these fits.
        """
        from greyanom._wafer_model import make_folds

        check_is_fitted(self, "normal_model_")
        if _is_dask(X):
            X = X.compute()  # the held-out fits run in-process: they need row indexing by wafer
        cfg = self._cfg()
        tk, gk = cfg.trace_keys, cfg.group_keys
        df = self._prepare(X)
        if self.lot_key is not None:
            lots = self._initial_lots(pd.unique(df[self.lot_key]))
            if lots is not None:
                df = df[df[self.lot_key].isin(lots)]
        wafer = pd.MultiIndex.from_frame(df[list(tk)])
        uniq = wafer.unique()
        lot_of = (
            df.groupby(list(tk), sort=False)[self.lot_key].first().reindex(uniq).astype(str).to_numpy()
            if self.lot_key is not None else np.zeros(len(uniq), dtype=str)
        )
        folds = make_folds(lot_of, self.cv, self.random_state)
        fold_of_row = pd.Series(folds, index=uniq).reindex(wafer).to_numpy()
        scores = []
        for k in np.unique(folds):
            sub = clone(self)
            table = _fit_partition(df[fold_of_row != k], cfg)
            if gk:
                table = table.set_index(list(gk))
            else:
                table.index = pd.Index(["all"], name="group")
            sub.normal_model_ = table[table["error"].isna()].drop(columns="error")
            res = sub._analyse(df[fold_of_row == k], warn=False)  # fit reports the statuses
            scores.append(res["score"])
        out = pd.concat(scores)
        return out[out.notna()].to_numpy(dtype=np.float64)

    def _fit_dask(self, X, cfg):
        pick = self._initial_lots if self.n_initial_lots is not None else None
        return fit_dask(X, cfg, pick)

    # -- analysis ---------------------------------------------------------------------------
    def _analyse(self, X, warn=True):
        """One row per trace: signature, terms, score, gradient, features, status (index = keys).

        Every trace of ``X`` has a row, also one whose samples are all non-finite (status
        ``"too_short"``, ``n_points`` 0).
        """
        check_is_fitted(self, "normal_model_")
        cfg = self._cfg()
        tk, gk = cfg.trace_keys, cfg.group_keys
        res = analyse_frame(X, self._models(), cfg)
        res = res.set_index([*gk, *tk])
        if warn:
            self._warn_statuses(res["status"])
        return res

    def _wafer_table(self, res, X):
        """Wafer features of an analysis frame (wafers in order of first appearance in X)."""
        tk, gk = self._keys()
        flat = res.reset_index()
        wafers = flat[list(tk)].drop_duplicates()
        if X is not None and not _is_dask(X) and isinstance(X, pd.DataFrame):
            wafers = X[list(tk)].drop_duplicates()
        order = pd.MultiIndex.from_frame(wafers) if len(tk) > 1 else pd.Index(wafers[tk[0]])
        if self.lot_key is not None and isinstance(X, pd.DataFrame):
            lots = X.groupby(list(tk), sort=False)[self.lot_key].first().reindex(order)
        else:
            lots = flat.groupby(list(tk), sort=False)["lot"].first().reindex(order)
        return wafer_features(res, tk, gk, lots.astype(str).to_numpy(), order)

    def analyse(self, X):
        """Fit and score every trace of ``X`` once.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        analysis : TraceAnalysis
            Pass it instead of ``X`` to :meth:`score`, :meth:`explain`, :meth:`signatures`,
            :meth:`signature_table`, :meth:`score_wafers`, :meth:`predict_wafers` and
            :meth:`explain_wafers`: they read it and do not fit again.

        Examples
        --------
        >>> from greyanom import ShapeSignatureDetector
        >>> from greyanom.datasets import make_pi_lots
        >>> df = make_pi_lots(n_lots=4, wafers_per_lot=6, random_state=0)
        >>> det = ShapeSignatureDetector(n_initial_lots=3, random_state=0).fit(df)
        >>> a = det.analyse(df)
        >>> bool((det.score(a) == det.score(df)).all())
        True
        """
        check_is_fitted(self, "normal_model_")
        if isinstance(X, TraceAnalysis):
            return X
        res = self._analyse(X)
        frame = X if isinstance(X, pd.DataFrame) else None
        return TraceAnalysis(res, self._wafer_table(res, frame))

    def _traces(self, X):
        return X.traces if isinstance(X, TraceAnalysis) else self._analyse(X)

    def _wafer_features(self, X):
        return self.analyse(X).wafers

    @staticmethod
    def _warn_statuses(status):
        counts = status[status != "ok"].value_counts()
        if len(counts):
            msg = ", ".join(f"{n} {s!r} ({STATUSES[s]})" for s, n in counts.items())
            warnings.warn(f"ShapeSignatureDetector: {msg}.", UserWarning, stacklevel=4)

    # -- the contract, with pandas results ---------------------------------------------------
    def score(self, X, y=None):
        """Centred anomaly score of each trace: higher means more anomalous.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces with the columns named by ``time``, ``value``, ``trace_keys``,
            ``group_keys`` and ``lot_key``.
        y : None
            Ignored.

        Returns
        -------
        scores : pandas.Series
            Indexed by ``group_keys + trace_keys``. About 0 for normal traces. NaN only for
            traces that could not be scored, with a warning that gives their status.
        """
        check_is_fitted(self, "normal_model_")
        return self._traces(X)["score"].rename("score")

    def _score(self, X):
        return self.score(X).to_numpy()

    def score_raw(self, X):
        """The paper's uncentred anomaly score (19), with the corrected D = 6 Gaussian prior.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        scores : pandas.Series
            ``n/2 ln sigma*^2 + SSR/(2 sigma*^2) + sum_d [ln sigma*_S,d + z_d^2/2]``; its
            baseline depends on the trace length and the sensor's units (notes T11).
        """
        return self._traces(X)["score_raw"].rename("score_raw")

    def predict(self, X):
        """Inliers (+1) and outliers (-1); traces without a score are outliers.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        labels : pandas.Series of int
        """
        d = self.decision_function(X)
        return pd.Series(np.where(d.to_numpy() >= 0, 1, -1), index=d.index, name="label")

    def explain(self, X):
        """Additive decomposition of the centred score, and its gradient.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        explanation : pandas.DataFrame
            One row per trace (index ``group_keys + trace_keys``) with columns

            * ``fit``, ``gamma``, ``R``, ``omega``, ``y``, ``phi``, ``c``: they sum exactly to
              ``score``. ``fit = SSR/(2 sigma*^2) - (n - p)/2``; the parameter terms are
              ``(z_d^2 - 1)/2`` with ``z_d = (s_d - mu*_d)/sigma*_S,d``. All unit-free.
            * ``score``: the centred score.
            * ``d_gamma`` ... ``d_c``: gradient of the anomaly score (19) with respect to the
              signature, in the units of 1/parameter (the paper's section 5 gradient).
            * ``dz_gamma`` ... ``dz_c``: the unit-free gradient, ``d_<p> * sigma*_S,<p>``.
            * ``status``.
        """
        res = self._traces(X)
        out = res[["fit"]].copy()
        for p in PARAMS:
            out[p] = res[f"P_{p}"]
        out["score"] = res["score"]
        sd = self._sd_table(res.index)
        for p in PARAMS:
            out[f"d_{p}"] = res[f"d_{p}"]
        for p in PARAMS:
            out[f"dz_{p}"] = res[f"d_{p}"].to_numpy() * sd[p].to_numpy()
        out["status"] = res["status"]
        return out

    def _sd_table(self, index):
        tk, gk = self._keys()
        nm = self.normal_model_[[f"sd_{p}" for p in PARAMS]]
        nm.columns = list(PARAMS)
        if gk:
            keys = index.droplevel(list(tk)) if len(index.names) > len(gk) else index
            return nm.reindex(keys)
        return pd.DataFrame(np.repeat(nm.to_numpy(), len(index), axis=0), columns=list(PARAMS))

    def signatures(self, X):
        """Fitted shape signatures, one row per trace.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        signatures : pandas.DataFrame
            Index ``group_keys + trace_keys``; columns ``gamma, R, omega, y, phi, c``, ``ssr``,
            ``n_points``, ``lot``, ``prior`` (``"lot"`` or ``"normal"``: the prior the signature
            was fitted with), ``score`` and ``status``.
        """
        res = self._traces(X)
        return res[[*PARAMS, "ssr", "n_points", "lot", "prior", "score", "status"]]

    def signature_table(self, X, *, columns=(*PARAMS, "ssr", "score")):
        """The paper's layout: one row per wafer in time order, one column per (group, parameter).

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.
        columns : sequence of str, default=(gamma, R, omega, y, phi, c, "ssr", "score")
            Per-trace quantities to spread into columns.

        Returns
        -------
        table : pandas.DataFrame
            Index ``trace_keys`` (order of first appearance in ``X``); columns a MultiIndex
            ``group_keys + ("parameter",)``.
        """
        tk, gk = self._keys()
        if isinstance(columns, str):
            columns = (columns,)
        sig = self.signatures(X)
        unknown = [c for c in columns if c not in sig.columns]
        if unknown or not len(columns):
            raise ValueError(
                f"columns must name per-trace quantities of signatures(); unknown {unknown}, "
                f"expected some of {list(sig.columns)}."
            )
        sig = sig[list(columns)]
        if not gk:
            return sig
        long = sig.stack().rename("v").reset_index()
        long = long.rename(columns={long.columns[len(gk) + len(tk)]: "parameter"})
        order = pd.unique(sig.index.droplevel(list(gk)))
        table = long.pivot_table(index=list(tk), columns=[*gk, "parameter"], values="v", sort=False)
        return table.reindex(order)

    def explain_change(self, X, before, after):
        """Attribute the score change between two traces (or wafers) to the parameters.

        The paper's change-point gradient (section 5) is the midpoint Taylor expansion
        ``g_mid = grad anom(s_bef) + Hess anom(s_bef) (s_aft - s_bef) / 2``; ``taylor`` is
        ``g_mid * delta``. It is exact for the quadratic prior part, so ``contribution`` gives
        the exact split: ``(s_mid - mu*)/sigma*_S^2 * delta`` per parameter (plus the change of
        the term's centring constant, which depends on each trace's posterior variance), and
        the change of the ``fit`` term; the contributions are the differences of the columns of
        :meth:`explain` and sum exactly to ``score(after) - score(before)``.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces that contain both.
        before, after : scalar or tuple
            ``trace_keys`` values (e.g. two wafer ids). Every group in which both appear is
            compared.

        Returns
        -------
        change : pandas.DataFrame
            Index ``group_keys + ("parameter",)`` with parameters ``gamma ... c`` and ``fit``;
            columns ``before``, ``after``, ``delta``, ``gradient`` (midpoint), ``taylor``,
            ``prior_midpoint`` (``(s_mid - mu*)/sigma*_S^2 * delta``, exactly the change of
            ``z^2/2``) and ``contribution``. For the ``fit`` row ``before``/``after`` are the fit terms and
            ``gradient``/``taylor`` are 0 (the data part is inside the parameter gradients).
        """
        tk, gk = self._keys()
        if _is_dask(X):
            X = X.compute()
        df = self._prepare(X)
        bkey, akey = _as_tuple(before, len(tk)), _as_tuple(after, len(tk))
        keyidx = pd.MultiIndex.from_frame(df[list(tk)])
        sel = df[keyidx.isin([bkey, akey])]
        for k, nm in ((bkey, "before"), (akey, "after")):
            if not keyidx.isin([k]).any():
                raise ValueError(f"{nm}={k!r} is not a {list(tk)} value of X.")
        res = self._analyse(X)
        models = self._models()
        shape = _engine()
        rows = []
        groups = res.index.droplevel(list(tk)).unique() if gk else [()]
        for g in groups:
            g = _as_tuple(g, len(gk))
            kb, ka = (*g, *bkey), (*g, *akey)
            if kb not in res.index or ka not in res.index:
                continue
            rb, ra = res.loc[kb], res.loc[ka]
            if rb["status"] not in ("ok", "not_converged") or ra["status"] not in ("ok", "not_converged"):
                continue
            sb = rb[list(PARAMS)].to_numpy(dtype=np.float64)
            sa = ra[list(PARAMS)].to_numpy(dtype=np.float64)
            m = np.ones(len(sel), dtype=bool)
            for c, v in zip([*gk, *tk], kb):
                m &= (sel[c] == v).to_numpy()
            tr = sel[m].sort_values(self.time)
            traces = shape.Traces.from_arrays(
                [tr[self.time].to_numpy(np.float64)], [tr[self.value].to_numpy(np.float64)]
            )
            P = [f"P_{p}" for p in PARAMS]
            split = change_split(
                traces, sb, sa, rb[P].to_numpy(np.float64), ra[P].to_numpy(np.float64), models[g], rb["origin"]
            )
            for j, p in enumerate(PARAMS):
                rows.append((*g, p, sb[j], sa[j], *split[j]))
            dfit = ra["fit"] - rb["fit"]
            rows.append((*g, "fit", rb["fit"], ra["fit"], dfit, 0.0, 0.0, 0.0, dfit))
        if not rows:
            raise ValueError(f"before={before!r} and after={after!r} share no scored group in X.")
        cols = [*gk, "parameter", "before", "after", "delta", "gradient", "taylor", "prior_midpoint", "contribution"]
        return pd.DataFrame(rows, columns=cols).set_index([*gk, "parameter"])
