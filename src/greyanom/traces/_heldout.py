"""Held-out trace scores of the shape detector at about the cost of one more analysis.

Refitting the normal model of every group on the other folds (a Laplace-EM over their traces,
:func:`greyanom.traces._hierarchy.fit_lot`) cost ``cv`` fits. :func:`onestep_heldout_scores`
instead fits every training trace once under the full normal model (the E-step at the full
model's fixed point) and gives each fold the normal model of **one Laplace-EM M-step over the
other folds' traces** (:func:`~greyanom.traces._hierarchy.laplace_m_step`): the first iteration
of the fold's EM warm-started at the full model, whose E-step the full fit has already paid
for. The held-out traces thus leave the fold's prior mean, spreads and noise level; what is
not refitted is the signatures of the other folds' traces (fitted under the full prior, not
the fold's) and the step start and wafer clocks (the full model's). Each fold's traces are
then analysed under its model exactly as :meth:`~greyanom.ShapeSignatureDetector.score`
would (lot fits included), all folds in one pass of the fit kernel.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pandas as pd

from greyanom.traces import _fit
from greyanom.traces._frames import _analyse_chunk_steps, _offsets, _split_chunks, _with_clock
from greyanom.traces._hierarchy import _units, laplace_m_step
from greyanom.traces._scoring import COL, trace_origins

__all__ = ["onestep_heldout_scores"]


def _prior_fit_steps(chunk, model, cfg):
    """Fit the traces of one chunk under the normal-model prior (one request); returns
    ``(ok, fit)``: the indices of the traces with ``min_points`` samples and their fit."""
    ok = np.flatnonzero(chunk.n_points >= cfg.min_points)
    if model is None or not ok.size:
        return ok[:0], None
    origin = trace_origins(chunk.times(), model.t_start, model.t_tol, chunk.starts, chunk.clock)
    fit = yield _fit._FitRequest(
        chunk.traces(ok), {"prior": (model.mu, model.sd), "noise_sd": model.noise_sd, "origin": origin[ok]}
    )
    return ok, fit


def _fold_models(gkey, parts, model, folds):
    """``{fold: NormalModel}`` of one group from its chunks' prior fits (one M-step each)."""
    x, ssr, npts, jtj, fold, values = [], [], [], [], [], []
    for chunk, trace_fold, (ok, fit) in parts:
        values.append(chunk.v)
        if fit is None:
            continue
        good = np.asarray(fit.success, dtype=bool) & np.isfinite(fit.pp).all(axis=1)
        x.append(fit.pp[good])
        ssr.append(np.asarray(fit.ssr, dtype=np.float64)[good])
        npts.append(np.asarray(fit.n_points, dtype=np.float64)[good])
        jtj.append(np.asarray(fit.jtj, dtype=np.float64)[good])
        fold.append(trace_fold[ok[good]])
    if not x:
        return {}
    x, ssr, npts, jtj, fold = (np.concatenate(a) for a in (x, ssr, npts, jtj, fold))
    unit, unit_p = _units(types.SimpleNamespace(z=np.concatenate(values)))
    out = {}
    for f in folds:
        use = fold != f
        if use.sum() < 2:  # as a refit: a group needs 2 fitted traces (its test traces: unknown_group)
            continue
        mu, sd, sigma = laplace_m_step(x[use], ssr[use], npts[use], jtj[use], model.noise_sd, model.sd, unit, unit_p)
        out[f] = dataclasses.replace(model, noise_sd=sigma, mu=mu, sd=sd)
    return out


def onestep_heldout_scores(df, row_fold, models, cfg):
    """Held-out score of every training trace that can be scored (see the module docstring).

    Parameters
    ----------
    df : pandas.DataFrame
        The prepared training frame (:func:`~greyanom.traces._frames.prepare_frame`).
    row_fold : ndarray of int of shape (len(df),)
        The fold of each row's wafer (whole wafers per fold).
    models : dict
        ``{group key: NormalModel}``, the normal model fitted on all of ``df``.
    cfg : FitConfig

    Returns
    -------
    scores : pandas.Series
        The finite held-out scores, fold after fold, indexed by ``group_keys + trace_keys``.
    """
    gk = cfg.group_keys
    part, c = _with_clock(df, _offsets(models), cfg)
    by = [*gk] + ([cfg.lot_key] if cfg.lot_key is not None else [])
    keys, chunks, first_rows = _split_chunks(part, by, c)
    starts = np.r_[0, np.cumsum([len(ch) for ch in chunks])]
    trace_folds = [row_fold[first_rows[a:b]] for a, b in zip(starts[:-1], starts[1:])]
    gkeys = [k[: len(gk)] for k in keys]
    fits = _fit._run_fits(
        [_prior_fit_steps(ch, models.get(g), c) for ch, g in zip(chunks, gkeys)], c.n_jobs
    )
    folds = np.unique(row_fold)
    by_group = {}
    for g, ch, tf, fit in zip(gkeys, chunks, trace_folds, fits):
        by_group.setdefault(g, []).append((ch, tf, fit))
    fold_models = {g: _fold_models(g, parts, models[g], folds) for g, parts in by_group.items() if g in models}
    steps, rows = [], []
    for f in folds:
        for g, ch, tf, a in zip(gkeys, chunks, trace_folds, starts):
            test = np.flatnonzero(tf == f)
            if test.size:
                model = fold_models.get(g, {}).get(f)
                steps.append(_analyse_chunk_steps(ch.subset(test), model, dataclasses.replace(c, group=g)))
                rows.append(first_rows[a + test])
    done = _fit._run_fits(steps, c.n_jobs)
    scores = np.concatenate([d[0][:, COL["score"]] for d in done]) if done else np.zeros(0)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    index = pd.MultiIndex.from_frame(part[[*gk, *cfg.trace_keys]].iloc[rows])
    keep = np.isfinite(scores)
    return pd.Series(scores[keep], index=index[keep], name="score")
