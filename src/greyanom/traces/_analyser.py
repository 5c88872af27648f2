"""The trace analyser of the shape detector: normal models, per-trace analysis, held-out scores.

:class:`TraceAnalyser` is what :class:`~greyanom.ShapeSignatureDetector` owns for the trace
side: it fits the normal model of every group (:meth:`TraceAnalyser.fit_normal_model`), fits
and scores every trace of a frame once (:meth:`TraceAnalyser.analyse`, from
:func:`greyanom.traces._frames.analyse_frame`), pivots an analysis into wafer features and
cross-fits the training traces (:meth:`TraceAnalyser.heldout_scores`). The pandas and dask
work lives in :mod:`greyanom.traces._frames`, the array maths in :mod:`greyanom.traces._scoring`.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from greyanom._crossfit import cross_fit, make_folds
from greyanom._validation import plain_key_columns
from greyanom.traces._features import TraceAnalysis, wafer_features
from greyanom.traces._frames import (
    _is_dask,
    analyse_frame,
    fit_dask,
    fit_frame,
    prepare_frame,
)
from greyanom.traces._heldout import linearised_heldout_scores
from greyanom.traces._keys import normalise_keys
from greyanom.traces._scoring import FitConfig, NormalModel
from greyanom.traces._status import TRACE_STATUSES
from greyanom.traces._wafer_scorer import wafer_lots, wafer_order

__all__ = ["TraceAnalyser"]


def _normal_model_table(table, group_keys):
    """Index a fitted normal-model table by its group keys (``"all"`` without group keys)."""
    if group_keys:
        return table.set_index(list(group_keys))
    table.index = pd.Index(["all"], name="group")
    return table


@dataclasses.dataclass(frozen=True)
class TraceAnalyser:
    """Fits and scores traces for a shape detector (its parameters, and its normal model once fitted).

    Parameters
    ----------
    cfg : FitConfig
        The detector's parameters that the work units need.
    n_initial_lots : int or None
        Fit the normal model on the first lots only.
    normal_model : pandas.DataFrame or None
        The detector's ``normal_model_`` (None before fitting).
    """

    cfg: FitConfig
    n_initial_lots: int | None = None
    normal_model: pd.DataFrame | None = None

    @classmethod
    def of(cls, det):
        """The analyser of a detector (with its normal model when it is fitted)."""
        tk, gk = normalise_keys(det.trace_keys, det.group_keys)
        cfg = FitConfig(
            time=det.time, value=det.value, start_time=det.start_time, trace_keys=tk, group_keys=gk,
            lot_key=det.lot_key, max_em_iter=det.max_em_iter, em_tol=det.em_tol, min_points=det.min_points,
            min_lot_size=det.min_lot_size, n_jobs=det.n_jobs, lot_prior=det.lot_prior, order_key=det.order_key,
        )
        return cls(cfg, det.n_initial_lots, getattr(det, "normal_model_", None))

    # -- input handling ---------------------------------------------------------------------
    @property
    def keys(self):
        """``(trace_keys, group_keys)`` as tuples."""
        return self.cfg.trace_keys, self.cfg.group_keys

    def prepare(self, X, name="X", return_keys=False):
        """Validate a long frame (or Traces); see :func:`greyanom.traces._frames.prepare_frame`."""
        return prepare_frame(X, self.cfg, name, return_keys)

    def _initial_lots(self, lots_in_order):
        if self.n_initial_lots is None:
            return None
        if len(lots_in_order) < self.n_initial_lots:
            raise ValueError(
                f"n_initial_lots={self.n_initial_lots} but X has only {len(lots_in_order)} lot(s)."
            )
        return list(lots_in_order[: self.n_initial_lots])

    def _training_frame(self, X):
        df = self.prepare(X)
        lot_key = self.cfg.lot_key
        if lot_key is not None:
            lots = self._initial_lots(pd.unique(df[lot_key]))
            if lots is not None:
                df = df[df[lot_key].isin(lots)]
        return df

    def models(self):
        """``{group key tuple: NormalModel}`` from the normal model."""
        gk = self.cfg.group_keys
        return {
            tuple(row[k] for k in gk): NormalModel.from_row(row)
            for _, row in self.normal_model.reset_index().iterrows()
        }

    # -- fitting ----------------------------------------------------------------------------
    def fit_normal_model(self, X):
        """The normal-model table of every group that could be fitted, and the training frame."""
        if self.n_initial_lots is not None and self.cfg.lot_key is None:
            raise ValueError("n_initial_lots needs lot_key: with lot_key=None there are no lots to count.")
        cfg = self.cfg
        if _is_dask(X):
            pick = self._initial_lots if self.n_initial_lots is not None else None
            table, train_frame = fit_dask(X, cfg, pick)
        else:
            train_frame = self._training_frame(X)
            table = fit_frame(train_frame, cfg)
        table = _normal_model_table(table, cfg.group_keys)
        failed = table["error"].notna()
        if failed.all():
            raise ValueError(f"no normal model could be fitted: {table['error'].iloc[0]}")
        if failed.any():
            warnings.warn(
                f"{int(failed.sum())} group(s) have no normal model and will score as 'unknown_group' "
                f"(first: {table.index[failed][0]!r}: {table['error'][failed].iloc[0]})",
                UserWarning,
                stacklevel=4,
            )
        return table[~failed].drop(columns="error"), train_frame

    def fit(self, X):
        """Fit the normal model and analyse the training traces with it.

        Returns the fitted analyser, the analysis rows of the training traces, their wafer
        features (the wafer scorer's training data), the prepared training frame (pandas,
        or the dask frame) and the training traces' fits under the normal model (for
        :meth:`heldout_scores`; empty for a dask frame).
        """
        table, train_frame = self.fit_normal_model(X)
        fitted = self.with_model(table)
        prior_fits = {}
        train = fitted.analyse(train_frame, prior_fits=prior_fits)
        if not train["score"].notna().any():
            raise ValueError("no training trace could be scored; check min_points and the data.")
        return fitted, train, fitted.wafer_table(train, train_frame), train_frame, prior_fits

    def with_model(self, normal_model):
        return dataclasses.replace(self, normal_model=normal_model)

    def heldout_scores(self, X, cv, random_state, refit=False, train_frame=None, prior_fits=None):
        """Held-out per-trace scores of the training traces (for a held-out ``offset_``).

        A :class:`pandas.Series` of the traces that could be scored, fold after fold, indexed
        by ``group_keys + trace_keys``.

        The training wafers are split into ``cv`` folds stratified by lot (the same fold rule
        and seed as the wafer model's cross-fitting, :func:`greyanom._crossfit.cross_fit`);
        each fold is scored under a normal model that its traces did not enter, approximately:
        the fitted normal model moved by what leaving the fold out changes in a Laplace-EM with
        linearised E-steps (:func:`greyanom.traces._heldout.linearised_heldout_scores`; about
        one more analysis of the training traces). ``refit=True`` refits the normal models on the other folds
        instead (about ``cv`` fits; the reference the approximation is measured against).
        A dask DataFrame is computed into pandas for these fits. ``train_frame``: the prepared
        pandas training frame of ``X`` when the caller has it (from :meth:`fit`), and
        ``prior_fits`` the fits of its traces under the normal model (also from :meth:`fit`),
        so that they are not fitted again.
        """
        if train_frame is None and _is_dask(X):
            X = X.compute()  # the held-out fits run in-process: they need row indexing by wafer
        cfg = self.cfg
        tk, gk = self.keys
        df = self._training_frame(X) if train_frame is None else train_frame
        wafer = pd.MultiIndex.from_frame(df[list(tk)])
        uniq = wafer.unique()
        lot_of = (
            df.groupby(list(tk), sort=False)[cfg.lot_key].first().reindex(uniq).astype(str).to_numpy()
            if cfg.lot_key is not None else np.zeros(len(uniq), dtype=str)
        )
        codes = pd.Index(uniq).get_indexer(wafer)
        folds = make_folds(len(uniq), cv, random_state, groups=lot_of, what="wafers")
        if not refit:
            return linearised_heldout_scores(df, folds[codes], self.models(), cfg, prior_fits)

        def fit_score(train, test):
            table = _normal_model_table(fit_frame(df[np.isin(codes, train)], cfg), gk)
            sub = self.with_model(table[table["error"].isna()].drop(columns="error"))
            return sub.analyse(df[np.isin(codes, test)], warn=False)["score"]  # fit reports the statuses

        out = pd.concat([s for _, s in cross_fit(fit_score, len(uniq), folds=folds)])
        return out[out.notna()]

    # -- analysis ---------------------------------------------------------------------------
    def analyse(self, X, warn=True, lot_fits=True, prior_fits=None):
        """One row per trace: signature, terms, score, gradient, features, status (index = keys).

        Every trace of ``X`` has a row, also one whose samples are all non-finite (status
        ``"too_short"``, ``n_points`` 0). With ``lot_fits=False`` only the normal-model-prior
        fits run (as with ``lot_prior="normal"``): enough for the wafer features, which come
        from those fits in either case. ``prior_fits``: a dict to fill with the (group, lot)
        chunks' fits under the normal model (pandas ``X``), for :meth:`heldout_scores`.
        """
        cfg = self.cfg
        if not lot_fits:
            cfg = dataclasses.replace(cfg, lot_prior="normal")
        tk, gk = cfg.trace_keys, cfg.group_keys
        res = analyse_frame(X, self.models(), cfg, prior_fits)
        res = res.set_index([*gk, *tk])
        if warn:
            _warn_statuses(res["status"])
        return res

    def analysis(self, X):
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
        if isinstance(X, TraceAnalysis):
            return X
        res = self.analyse(X)
        return TraceAnalysis(res, self.wafer_table(res, X))

    def traces(self, X):
        """The per-trace rows of an analysis, or of ``X`` analysed now."""
        return X.traces if isinstance(X, TraceAnalysis) else self.analyse(X)

    def wafer_features(self, X):
        """Wafer features of ``X`` (from the normal-model-prior fits alone: no lot fits)."""
        if isinstance(X, TraceAnalysis):
            return X.wafers
        res = self.analyse(X, lot_fits=False)
        return self.wafer_table(res, X)

    def wafer_table(self, res, X):
        """Wafer features of an analysis frame (wafers in order of first appearance in X).

        ``X`` (the traces as given: a pandas frame gives each wafer's lot, a pandas or dask
        frame its run order with ``order_key``) or None.
        """
        tk, gk = self.keys
        lot_key = self.cfg.lot_key
        flat = res.reset_index()
        wafers = flat[list(tk)].drop_duplicates()
        if X is not None and not _is_dask(X) and isinstance(X, pd.DataFrame):
            X = plain_key_columns(X, [*tk, lot_key])  # as prepare_frame keys the traces
            wafers = X[list(tk)].drop_duplicates()
        order = pd.MultiIndex.from_frame(wafers) if len(tk) > 1 else pd.Index(wafers[tk[0]])
        if lot_key is not None and isinstance(X, pd.DataFrame):
            lots = wafer_lots(X, tk, lot_key, order)
        else:
            lots = flat.groupby(list(tk), sort=False)["lot"].first().reindex(order).astype(str).to_numpy()
        wf = wafer_features(res, tk, gk, lots, order)
        if self.cfg.order_key is None:
            return wf
        return dataclasses.replace(wf, order=wafer_order(X, tk, self.cfg.order_key, order))


def _warn_statuses(status):
    counts = status[status != "ok"].value_counts()
    if len(counts):
        msg = ", ".join(f"{n} {s!r} ({TRACE_STATUSES[s]})" for s, n in counts.items())
        warnings.warn(f"ShapeSignatureDetector: {msg}.", UserWarning, stacklevel=5)
