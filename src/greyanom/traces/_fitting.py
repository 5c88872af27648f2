"""Fitting machinery of the shape detector: the normal-model table, held-out scores, analysis.

:class:`NormalModelFitMixin` gives :class:`~greyanom.ShapeSignatureDetector` its ``_fit`` (the
normal model of every group), ``_heldout_scores`` (cross-fitted trace scores for ``offset_``)
and ``_analyse`` (one row per trace, from :func:`greyanom.traces._frames.analyse_frame`). The
pandas and dask work lives in :mod:`greyanom.traces._frames`, the array maths in
:mod:`greyanom.traces._scoring`.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom._crossfit import cross_fit
from greyanom.traces._keys import normalise_keys
from greyanom.traces._status import TRACE_STATUSES

from greyanom.traces._frames import (
    _is_dask,
    analyse_frame,
    check_columns,
    fit_dask,
    fit_frame,
    prepare_frame,
    required_columns,
)
from greyanom.traces._scoring import FitConfig, NormalModel
from greyanom.traces._features import LEVEL_FEATURES, wafer_features

__all__ = ["NormalModelFitMixin"]


class NormalModelFitMixin:
    """Fit, held-out scores and per-trace analysis of :class:`~greyanom.ShapeSignatureDetector`."""

    # -- input handling ---------------------------------------------------------------------
    def _keys(self):
        return normalise_keys(self.trace_keys, self.group_keys)

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
        """Validate a long frame (or Traces); see :func:`greyanom.traces._frames.prepare_frame`."""
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
        gk = cfg.group_keys
        if _is_dask(X):
            table, train_frame = self._fit_dask(X, cfg)
        else:
            df = self._prepare(X)
            if self.lot_key is not None:
                lots = self._initial_lots(pd.unique(df[self.lot_key]))
                if lots is not None:
                    df = df[df[self.lot_key].isin(lots)]
            train_frame = df
            table = fit_frame(df, cfg)
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
        self._fit_wafer_model(self._wafer_table(train, train_frame), LEVEL_FEATURES, self.level_weight)
        return self.train_scores_.to_numpy()

    def _heldout_scores(self, X, train_scores):
        """Cross-fitted per-trace scores of the training traces (for a held-out ``offset_``).

        The training wafers are split into ``cv`` folds stratified by lot (the same fold rule
        and seed as the wafer model's cross-fitting); each fold is scored by normal models
        fitted on the other folds only. This refits the normal models ``cv`` times, so it
        costs about ``cv`` fits. A dask DataFrame is computed into pandas for these fits.
        """
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
        codes = pd.Index(uniq).get_indexer(wafer)

        def fit_score(train, test):
            sub = clone(self)
            table = fit_frame(df[np.isin(codes, train)], cfg)
            if gk:
                table = table.set_index(list(gk))
            else:
                table.index = pd.Index(["all"], name="group")
            sub.normal_model_ = table[table["error"].isna()].drop(columns="error")
            res = sub._analyse(df[np.isin(codes, test)], warn=False)  # fit reports the statuses
            return res["score"]

        out = pd.concat([s for _, s in cross_fit(fit_score, len(uniq), self.cv, self.random_state, groups=lot_of)])
        return out[out.notna()].to_numpy(dtype=np.float64)

    def _fit_dask(self, X, cfg):
        pick = self._initial_lots if self.n_initial_lots is not None else None
        return fit_dask(X, cfg, pick)

    # -- analysis ---------------------------------------------------------------------------
    def _analyse(self, X, warn=True, lot_fits=True):
        """One row per trace: signature, terms, score, gradient, features, status (index = keys).

        Every trace of ``X`` has a row, also one whose samples are all non-finite (status
        ``"too_short"``, ``n_points`` 0). With ``lot_fits=False`` only the normal-model-prior
        fits run (as with ``lot_prior="normal"``): enough for the wafer features, which come
        from those fits in either case.
        """
        check_is_fitted(self, "normal_model_")
        cfg = self._cfg()
        if not lot_fits:
            cfg = dataclasses.replace(cfg, lot_prior="normal")
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

    @staticmethod
    def _warn_statuses(status):
        counts = status[status != "ok"].value_counts()
        if len(counts):
            msg = ", ".join(f"{n} {s!r} ({TRACE_STATUSES[s]})" for s, n in counts.items())
            warnings.warn(f"ShapeSignatureDetector: {msg}.", UserWarning, stacklevel=4)
