"""Held-out trace scores of the shape detector at about the cost of one more analysis.

Refitting the normal model of every group on the other folds (a Laplace-EM over their traces,
:func:`greyanom.traces._hierarchy.fit_lot`) cost ``cv`` fits. :func:`linearised_heldout_scores`
takes every training trace's fit under the full normal model instead (the E-step at the full
model's fixed point; the in-sample analysis has made these fits for the wafer features and
hands them over) and runs each fold's Laplace-EM over the other folds' traces from there
with **linearised E-steps**: every later E-step moves each trace's signature by one
Gauss-Newton step of its objective under the fold's current prior (its ``J'J`` kept, its
residual sum of squares updated to second order) instead of refitting it. The first M-step
(:func:`~greyanom.traces._hierarchy.laplace_m_step`) is exact: it is the first iteration of
the fold's EM warm-started at the full model. The same EM runs over all the traces, and the
fold's model is the full model moved by the difference (means) or ratio (spreads, noise
level) of the two: where the full model is not at the EM's fixed point of these fits (an EM
stopped at ``max_em_iter``, fits started elsewhere than the fit's last E-step) only the
effect of leaving the fold out is applied. What is approximated: the later E-steps (to second
order in the change of the prior), that relative correction, and the step start and wafer
clocks (the full model's, not refitted per fold). Each fold's traces are then analysed under its model exactly
as :meth:`~greyanom.ShapeSignatureDetector.score` would (lot fits included).
``benchmarks/shape_heldout_approx.py`` measures the difference to the per-fold refits.

The work is batched, because it is many small problems (on LAM 9600: 228 fold EMs of 38 groups,
570 (group, lot, fold) lot EMs of about five traces each): the fold EMs of every group and fold
step together (:func:`_fold_ems`: one Cholesky per trace and iteration, by
:func:`greyanom.traces._kernels.posterior_batch`, gives both the linearised E-step and the
M-step's posterior variances, which use the same Hessian), and the lot EMs of all chunks run as
one (:func:`greyanom.traces._frames._analyse_chunks_steps`: one kernel call per E-step over
every lot still running). The sums of each EM are taken EM by EM, as one EM alone takes them:
the lot EMs give bit for bit what they gave one chunk at a time; the fold EMs differ from the
LAPACK solve and inverse they replaced by rounding (1e-13 in the scores of simulated lots), except
where the EMs run away and amplify it (below).

**Where the linearisation fails, the fold is refitted.** A linearised EM is a local
approximation: for a group whose parameters the traces barely identify (``J'J`` with condition
numbers up to 1e21), the Gauss-Newton steps leave the region where they hold and the EM runs
away (on LAM 9600, ``("RF Pwr", 4)``: prior spreads from 0.07 to 1e9 and beyond, means moved by
1e6 spreads and more, in every fold of most splits), where a refit moves the model by a few
per cent. Leaving a fifth of the traces out cannot move a normal model that far, so a fold model
that moved a spread or the noise level by more than a factor :data:`RUNAWAY_FACTOR` or a mean by
more than :data:`RUNAWAY_FACTOR` spreads of the full model (:func:`ran_away`) is replaced by the
group's normal model fitted on its traces outside the fold (a cold-started Laplace-EM, every
trace refitted at every E-step, as ``refit=True`` fits it, under the full model's wafer clock),
all such folds fitted together (:func:`_refit_fold_models`). A warm start at the
full model does not do: on LAM 9600 that EM stops near the full model (held-out threshold 20.46
against 22.09 with the refits, in-sample 20.73). On LAM 9600 the largest move of any other fold model was a factor 5 (a spread near its
floor) and 0.8 spreads (development splits 100 and 101); the runaway ones moved by factors
above 1e6.
"""

from __future__ import annotations

import dataclasses
import logging
import types

import numpy as np
import pandas as pd

from greyanom.traces import _fit, _kernels
from greyanom.traces._frames import _analyse_chunks_steps, _offsets, _split_chunks, _with_clock
from greyanom.traces._hierarchy import _fit_lot_steps, _m_steps, _units
from greyanom.traces._scoring import COL, nominal_start, trace_origins

__all__ = ["linearised_heldout_scores", "ran_away", "RUNAWAY_FACTOR"]

_logger = logging.getLogger(__name__)

#: A linearised fold model that moved a spread or the noise level by more than this factor, or
#: a mean by more than this many spreads of the full model, has run away (:func:`ran_away`).
RUNAWAY_FACTOR = 10.0


def ran_away(fold_model, model, factor=RUNAWAY_FACTOR):
    """Whether a linearised fold model left the region where its approximation holds.

    True when a spread or the noise level of ``fold_model`` is more than ``factor`` times, or
    less than ``1 / factor`` times, that of the full model ``model``, when a mean moved by more
    than ``factor`` of the full model's spreads, or when any of them is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.traces._heldout import ran_away
    >>> from greyanom.traces._scoring import NormalModel
    >>> full = NormalModel(noise_sd=1.0, mu=np.zeros(6), sd=np.ones(6))
    >>> ran_away(NormalModel(noise_sd=1.1, mu=np.full(6, 0.2), sd=np.full(6, 0.9)), full)
    False
    >>> ran_away(NormalModel(noise_sd=1.0, mu=np.zeros(6), sd=np.r_[1e9, np.ones(5)]), full)
    True
    """
    with np.errstate(all="ignore"):
        ratio = np.r_[fold_model.sd / model.sd, fold_model.noise_sd / model.noise_sd]
        shift = np.abs(fold_model.mu - model.mu) / model.sd
    if not (np.isfinite(ratio).all() and np.isfinite(shift).all()):
        return True
    return bool((ratio > factor).any() or (ratio < 1.0 / factor).any() or (shift > factor).any())


def _refit_steps(traces, origin, cfg):
    """The normal-model fit of one group's traces (a cold-started Laplace-EM, every trace refitted
    at every E-step), as a generator of fits; its :class:`LotFit`, or None where the traces
    cannot be fitted."""
    try:
        return (yield from _fit_lot_steps(
            traces, update="laplace", max_iter=cfg.max_em_iter, tol=cfg.em_tol, fit_kwargs={"origin": origin}
        ))
    except ValueError:
        return None


def _refit_fold_models(part, refit, models, row_fold, cfg):
    """Exact fold models of the (group, fold) pairs ``refit``, all fitted together.

    Each is the group's normal model fitted on its traces outside the fold, as ``refit=True``
    fits it (the step start learnt from those traces; the full model's wafer clock); the fold
    model keeps the full model's step start for scoring, as every fold model does. Returns ``{(group, fold):
    NormalModel or None}`` (None: the group cannot be fitted without the fold; its traces of
    that fold are not scored, as with ``refit=True``).
    """
    gk = list(cfg.group_keys)
    items, steps = [], []
    for g, f in refit:
        mask = np.logical_and.reduce([part[k].to_numpy() == v for k, v in zip(gk, g)] + [row_fold != f])
        _, chunks, _ = _split_chunks(part[mask], gk, cfg)
        ch = chunks[0] if len(chunks) == 1 else None
        ok = np.flatnonzero(ch.n_points >= cfg.min_points) if ch is not None else np.zeros(0, dtype=np.int64)
        items.append((g, f))
        if ok.size < 2:
            steps.append(iter(()))
            continue
        # the step start as a refit learns it from these traces (as _frames._fit_group does)
        times = [ch.times()[i] for i in ok]
        origin = trace_origins(times, *nominal_start(times), None if ch.starts is None else ch.starts[ok],
                               None if ch.clock is None else ch.clock[ok])
        steps.append(_refit_steps(ch.traces(ok), origin, cfg))
    out = {}
    for (g, f), res in zip(items, _fit._run_fits(steps, cfg.n_jobs)):
        out[g, f] = None if res is None else dataclasses.replace(
            models[g], noise_sd=float(res.noise_sd), mu=np.asarray(res.prior_mean, dtype=np.float64),
            sd=np.asarray(res.prior_sd, dtype=np.float64),
        )
    return out


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


def _group_fits(parts, model):
    """The arrays of one group's fits under its fitted model ``model`` (the traces fitted well),
    with each trace's fold and the group's units; None without any fit."""
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
        return None
    x, ssr, npts, jtj, fold = (np.concatenate(a) for a in (x, ssr, npts, jtj, fold))
    unit, unit_p = _units(types.SimpleNamespace(z=np.concatenate(values)))
    # J'r of each fit, from its optimality under the full prior: J'r / sigma^2 = (x - mu) / sd^2
    jtr = model.noise_sd**2 * (x - model.mu) / model.sd**2
    return types.SimpleNamespace(x=x, ssr=ssr, npts=npts, jtj=jtj, jtr=jtr, fold=fold, unit=unit, unit_p=unit_p)


def _known_fit(known, chunk, model, cfg):
    """``known``, a chunk's ``(ok, fit)`` from the analysis, if it is what
    :func:`_prior_fit_steps` would fit for ``chunk`` (the same traces); else None."""
    if known is None or model is None:
        return None
    ok, fit = known
    want = np.flatnonzero(chunk.n_points >= cfg.min_points)
    if fit is None or not np.array_equal(ok, want) or len(fit) != ok.size:
        return None
    return ok, fit


def _fold_models(parts, model, folds, cfg):
    """``{fold: NormalModel}`` of one group (``cfg.group``); see :func:`_all_fold_models`."""
    return _all_fold_models({cfg.group: parts}, {cfg.group: model}, folds, cfg).get(cfg.group, {})


def _all_fold_models(by_group, models, folds, cfg):
    """``{group: {fold: NormalModel}}`` from each group's chunks' fits under its fitted model.

    ``by_group``: ``{group: [(chunk, trace_fold, (ok, fit)), ...]}``. Each fold's model is the
    group's model moved by what leaving the fold out changes: the fold's linearised EM
    (:func:`_fold_ems`) against the same EM over all the traces (mean shifted by the
    difference, spreads and noise level scaled by the ratio). The EMs of every group and fold
    run together.
    """
    data, ems = {}, []  # ems: (group, fold or None for all the traces, rows of the group's fits)
    for g, parts in by_group.items():
        d = _group_fits(parts, models[g]) if g in models else None
        if d is None:
            continue
        data[g] = d
        # the same EM over all the traces: what the fold's EM changes is measured against it, so
        # that where these fits are not at the fitted model's fixed point (an EM stopped at
        # max_em_iter, fits that started elsewhere than the fit's) only the leave-fold-out change
        # is applied
        ems.append((g, None, np.arange(len(d.x))))
        for f in folds:
            use = np.flatnonzero(d.fold != f)
            if use.size >= 2:  # as a refit: a group needs 2 fitted traces (its test traces: unknown_group)
                ems.append((g, f, use))
    if not ems:
        return {}
    stack = {k: np.concatenate([getattr(data[g], k)[rows] for g, _, rows in ems])
             for k in ("x", "ssr", "npts", "jtj", "jtr")}
    bounds = np.r_[0, np.cumsum([rows.size for _, _, rows in ems])]
    res = _fold_ems(
        stack["x"], stack["ssr"], stack["npts"], stack["jtj"], stack["jtr"], bounds, [models[g] for g, _, _ in ems],
        np.array([data[g].unit for g, _, _ in ems]), np.array([data[g].unit_p for g, _, _ in ems]), cfg,
    )
    base = {g: r for (g, f, _), r in zip(ems, res) if f is None}
    out = {g: {} for g in data}
    for (g, f, _), (mu, sd, sigma, ok) in zip(ems, res):
        if f is None:
            continue
        model, b = models[g], base[g]
        if not ok:
            _logger.info("group %r, fold %d: the fold's EM stopped at its last finite prior", g, f)
        if b[3] and ok:
            mu = model.mu + (mu - b[0])
            sd = model.sd * (sd / b[1])
            sigma = model.noise_sd * (sigma / b[2])
        out[g][f] = dataclasses.replace(model, noise_sd=sigma, mu=mu, sd=sd)
    return out


def linearised_estep(x, ssr, jtj, jtr, noise_sd, mu, sd):
    """Signatures and residual sums of squares under the prior ``(mu, sd)`` and ``noise_sd``,
    by one Gauss-Newton step from fits ``x`` (with their ``ssr``, ``J'J`` and ``J'r``).

    The step solves ``(J'J / sigma^2 + diag(sd)^-2) d = J'r / sigma^2 - (x - mu) / sd^2``;
    the residual sum of squares at ``x + d`` is ``ssr - 2 d'J'r + d'J'J d`` (floored at 0).
    Raises ``numpy.linalg.LinAlgError`` where a Hessian is not positive definite.
    """
    m = len(x)
    xs, ss, _, _, ok = _estep_rows(x, ssr, jtj, jtr, np.full(m, noise_sd**2), np.broadcast_to(mu, (m, 6)),
                                   np.broadcast_to(sd, (m, 6)))
    if not ok.all():
        raise np.linalg.LinAlgError(f"{int((~ok).sum())} Hessian(s) not positive definite")
    return xs, ss


def _estep_rows(x, ssr, jtj, jtr, s2, mu, sd, move=True, n_jobs=None):
    """:func:`linearised_estep` with a noise variance ``s2`` (m,) and a prior ``mu``, ``sd``
    (m, 6) per row, and what the M-step needs of the same Hessian ``H`` (one Cholesky per row,
    :func:`greyanom.traces._kernels.posterior_batch`). ``move=False``: no step (``x``, ``ssr``
    back). Returns ``(xs, ss, diag(H^-1), tr(H^-1 J'J), ok)``, ``ok`` False where ``H`` is not
    positive definite."""
    g = -jtr / s2[:, None] + (x - mu) / sd**2
    with _fit.numba_threads(n_jobs, len(x)):
        d, diag, tr, ok = _kernels.posterior_batch(
            *(np.ascontiguousarray(a) for a in (jtj, s2, 1.0 / sd**2, g))
        )
    if not move:
        return x, ssr, diag, tr, ok
    ss = ssr - 2 * np.einsum("mi,mi->m", d, jtr) + np.einsum("mi,mij,mj->m", d, jtj, d)
    return x + d, np.maximum(ss, 0.0), diag, tr, ok


def _fold_em(x, ssr, npts, jtj, jtr, model, unit, unit_p, cfg):
    """The linearised Laplace-EM of one fold's traces (:func:`_fold_ems` of one EM)."""
    return _fold_ems(x, ssr, npts, jtj, jtr, [0, len(x)], [model], np.array([unit]), np.asarray(unit_p)[None], cfg)[0]


def _fold_ems(x, ssr, npts, jtj, jtr, bounds, models, unit, unit_p, cfg):
    """Laplace-EMs of many folds' traces (EM ``k``: rows ``bounds[k]:bounds[k + 1]``, started at
    ``models[k]``), their E-steps linearised at the full-model fits; returns ``(mu, sd, sigma,
    ok)`` per EM.

    The first E-step is the fits themselves (made under the full model); each later one moves
    every signature by one Gauss-Newton step of its objective under the current prior
    (:func:`linearised_estep`), so no trace is refitted. A step that cannot be taken (a
    Hessian that is not positive definite, non-finite values: a group with parameters the data
    do not identify) ends the EM at the last finite prior (the full model's if the first
    M-step fails), with ``ok`` False. The EMs still running take their steps together: one
    Cholesky per row gives the E-step and the M-step's posterior variances (the same Hessian),
    the sums run EM by EM.
    """
    bounds = np.asarray(bounds)
    n_ems = len(models)
    sigma = [float(m.noise_sd) for m in models]
    mu = [np.asarray(m.mu, dtype=np.float64) for m in models]
    sd = [np.asarray(m.sd, dtype=np.float64) for m in models]
    ok = [True] * n_ems
    seg = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    n_jobs = getattr(cfg, "n_jobs", None)

    def step(ks, it):
        """One iteration of the EMs ``ks``: ``{k: (mu, sd, sigma)}``, None where a step failed."""
        rows = np.concatenate([seg[k] for k in ks])
        cnt = np.array([seg[k].size for k in ks])
        pos = np.repeat(np.arange(len(ks)), cnt)
        s2 = np.array([sigma[k] ** 2 for k in ks])
        mu_k, sd_k = np.array([mu[k] for k in ks]), np.array([sd[k] for k in ks])
        with np.errstate(all="ignore"):
            xs, ss, diag, tr, good = _estep_rows(x[rows], ssr[rows], jtj[rows], jtr[rows], s2[pos], mu_k[pos],
                                                 sd_k[pos], move=it > 0, n_jobs=n_jobs)
            bad = np.bincount(pos[~good], minlength=len(ks)) > 0
            keep = ~bad[pos]
            out = {k: None for k, b in zip(ks, bad) if b}
            if keep.any():
                use = np.flatnonzero(~bad)
                m, s, sg, _, _ = _m_steps(
                    xs[keep], ss[keep], npts[rows][keep], jtj[rows][keep], np.r_[0, np.cumsum(cnt[use])],
                    np.array([sigma[ks[j]] for j in use]), sd_k[use], unit[[ks[j] for j in use]],
                    unit_p[[ks[j] for j in use]], posterior=(diag[keep], tr[keep]),
                )
                out.update({ks[j]: (m[i], s[i], float(sg[i])) for i, j in enumerate(use)})
        return out

    active = list(range(n_ems))
    for it in range(cfg.max_em_iter):
        if not active:
            break
        still = []
        for k, new in step(active, it).items():
            if new is None or not (np.isfinite(new[0]).all() and np.isfinite(new[1]).all() and np.isfinite(new[2])):
                ok[k] = False
                continue
            mu_new, sd_new, sigma_new = new
            with np.errstate(all="ignore"):
                change = max(
                    float(np.max(np.abs(sd_new - sd[k]) / sd[k])), abs(float(np.log(sigma_new / sigma[k]))),
                    float(np.max(np.abs(mu_new - mu[k]) / sd[k])),
                )
            mu[k], sd[k], sigma[k] = mu_new, sd_new, sigma_new
            if not change < cfg.em_tol:
                still.append(k)
        active = still
    return [(mu[k], sd[k], sigma[k], ok[k]) for k in range(n_ems)]


def linearised_heldout_scores(df, row_fold, models, cfg, prior_fits=None):
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
    prior_fits : dict or None
        ``{chunk key: (ok, fit)}``, the (group, lot) chunks' fits under ``models`` from the
        analysis of ``df`` (:func:`~greyanom.traces._frames.analyse_frame`), reused instead of
        fitting every trace again; a chunk missing or not matching is fitted here.

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
    fits = [_known_fit((prior_fits or {}).get(k), ch, models.get(g), c) for k, ch, g in zip(keys, chunks, gkeys)]
    todo = [i for i, f in enumerate(fits) if f is None]
    done = _fit._run_fits([_prior_fit_steps(chunks[i], models.get(gkeys[i]), c) for i in todo], c.n_jobs)
    for i, f in zip(todo, done):
        fits[i] = f
    folds = np.unique(row_fold)
    by_group = {}
    for g, ch, tf, fit in zip(gkeys, chunks, trace_folds, fits):
        by_group.setdefault(g, []).append((ch, tf, fit))
    fold_models = _all_fold_models(by_group, models, folds, c)
    refit = [(g, f) for g, fm in fold_models.items() for f, m in fm.items() if ran_away(m, models[g])]
    if refit:
        for (g, f), m in _refit_fold_models(part, refit, models, row_fold, c).items():
            fold_models[g][f] = m
        _logger.info(
            "held-out fold models refitted where the linearised EM ran away: %d (group, fold) of %d (first: %r)",
            len(refit), sum(len(fm) for fm in fold_models.values()), refit[0],
        )
    parts, part_models, groups, rows = [], [], [], []
    for f in folds:
        for g, ch, tf, a in zip(gkeys, chunks, trace_folds, starts):
            test = np.flatnonzero(tf == f)
            if test.size:
                parts.append(ch.subset(test))
                part_models.append(fold_models.get(g, {}).get(f))
                groups.append(g)
                rows.append(first_rows[a + test])
    (done,) = _fit._run_fits([_analyse_chunks_steps(parts, part_models, c, groups, features=False)], c.n_jobs)
    scores = np.concatenate([d[0][:, COL["score"]] for d in done]) if done else np.zeros(0)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    index = pd.MultiIndex.from_frame(part[[*gk, *cfg.trace_keys]].iloc[rows])
    keep = np.isfinite(scores)
    return pd.Series(scores[keep], index=index[keep], name="score")
