"""Hierarchical fit of a set of traces (a lot): signatures and their prior, by Laplace-EM.

The paper (Vargas et al. 2018, eq. 14) fits the signatures :math:`s_m` of the wafers of a lot
together with the hyperparameters :math:`(\\sigma, \\mu_S, \\sigma_S)` by block coordinate descent
(BCD): minimise over each :math:`s_m` with the hyperparameters fixed, then set the
hyperparameters to their closed-form minimisers with the :math:`s_m` fixed. With the corrected
Gaussian prior (D = 6, :math:`x` kept as data) that joint MAP is unbounded below and BCD drives
:math:`\\sigma_S` to zero whenever the true spread is below about 1.7 estimation standard errors
(paper notes, T10). :func:`fit_lot` uses the Laplace-EM update instead, which adds the posterior
variance of each signature:

.. math::

    \\sigma_{S,d}^2 = \\frac1M\\sum_m\\big[(s_{md}-\\mu_d)^2 + (H_m^{-1})_{dd}\\big],\\qquad
    \\sigma^2 = \\frac{\\sum_m[\\mathrm{SSR}_m + \\mathrm{tr}(H_m^{-1}J_m^\\top J_m)]}{\\sum_m n_m},

with :math:`H_m = J_m^\\top J_m/\\sigma^2 + \\mathrm{diag}(\\sigma_S)^{-2}` the Gauss-Newton Hessian
of the per-trace objective at its optimum. Its fixed point is the true spread.
"""

from __future__ import annotations

import dataclasses
import logging
import types

import numpy as np
import pandas as pd

from greyanom.traces._fit import _FitRequest, _run_fits, _signature_fit, _slice_fit
from greyanom.traces._ragged import Traces

__all__ = ["LotFit", "fit_lot", "PARAMS"]

#: Signature parameters in the paper's order.
PARAMS = ("gamma", "R", "omega", "y", "phi", "c")

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LotFit:
    """Result of :func:`fit_lot`.

    Attributes
    ----------
    fit : SignatureFit
        The per-trace fit of the last E-step (signatures fitted with the final lot prior).
    noise_sd : float
        Measurement noise standard deviation :math:`\\sigma`, shared by the traces of the lot.
    prior_mean : ndarray of shape (6,)
        :math:`\\mu_S`, in the order ``PARAMS``.
    prior_sd : ndarray of shape (6,)
        :math:`\\sigma_S`.
    n_iter : int
        Number of EM (or BCD) iterations run.
    converged : bool
        Whether the relative change of :math:`(\\sigma, \\sigma_S)` fell below ``tol``.
    history : pandas.DataFrame
        One row per iteration: ``noise_sd`` and ``sd_<param>`` for each parameter.
    used : ndarray of bool, shape (n_traces,)
        Traces whose fit succeeded and entered the hyperparameter update.
    """

    fit: object
    noise_sd: float
    prior_mean: np.ndarray
    prior_sd: np.ndarray
    n_iter: int
    converged: bool
    history: pd.DataFrame
    used: np.ndarray


def _seg_mean(a, bounds):
    """Mean over axis 0 of each (non-empty) segment ``a[bounds[k]:bounds[k + 1]]``, bit for bit
    ``a[lo:hi].mean(axis=0)``: NumPy sums over a leading axis row after row, so the segments,
    padded with zero rows to one length, are summed over that axis in one call."""
    bounds = np.asarray(bounds)
    cnt = np.diff(bounds)
    if not cnt.size:
        return np.zeros((0, *a.shape[1:]))
    j = np.arange(cnt.max())
    idx = bounds[:-1, None] + j[None, :]
    idx[j[None, :] >= cnt[:, None]] = len(a)  # the zero row
    padded = np.concatenate([a, np.zeros((1, *a.shape[1:]))])[idx]
    return padded.sum(axis=1) / cnt.reshape(-1, *([1] * (a.ndim - 1)))


def _m_steps(xs, ssr, npts, jtj, bounds, noise_sd, prior_sd, unit, unit_p, update="laplace", min_sd=None,
             posterior=None):
    """The M-steps of many EMs at once (EM ``k``: the rows ``bounds[k]:bounds[k + 1]``).

    ``xs``, ``ssr``, ``npts``, ``jtj``: each used trace's signature, residual sum of squares,
    sample count and ``J'J`` from the E-step made under EM ``k``'s ``(noise_sd[k],
    prior_sd[k])``; ``unit`` (n_ems,) and ``unit_p`` (n_ems, 6) as from ``_units``.
    ``update="laplace"`` (Laplace-EM: the posterior variance
    ``(J'J / sigma^2 + diag(sigma_S)^-2)^-1`` added), ``"bcd"`` or ``"mean"`` (see
    :func:`fit_lot`). Returns ``(mu_S, sigma_S, sigma, var, dev2)``: the new prior and noise
    sd above their floors, the M-step's variances and the mean squared deviations.
    ``posterior``: each row's ``(diag(H^-1), tr(H^-1 J'J))`` when the caller has them
    (``H = J'J / sigma^2 + diag(sigma_S)^-2``), instead of inverting ``H`` here.

    The sums run segment by segment and ``sigma**2`` as a Python float's square, as one EM
    alone computes them, so every EM's step is bit for bit its own.
    """
    bounds = np.asarray(bounds)
    cnt = np.diff(bounds)
    pos = np.repeat(np.arange(cnt.size), cnt)
    mu = _seg_mean(xs, bounds)
    dev2 = (xs - mu[pos]) ** 2
    dev2_mean = _seg_mean(dev2, bounds)
    s2 = np.array([float(v) ** 2 for v in noise_sd])  # Python's square (C pow) can differ from x * x
    segs = list(zip(bounds[:-1], bounds[1:]))
    if update == "laplace" and posterior is not None:
        var = _seg_mean(dev2 + posterior[0], bounds)
        noise_var = np.array([(ssr[lo:hi].sum() + posterior[1][lo:hi].sum()) / npts[lo:hi].sum() for lo, hi in segs])
    elif update == "laplace":
        H = jtj / s2[pos][:, None, None] + _diag_rows(1.0 / prior_sd[pos] ** 2)
        cov = np.linalg.inv(H)
        var = _seg_mean(dev2 + np.diagonal(cov, axis1=1, axis2=2), bounds)
        noise_var = np.array([(ssr[lo:hi].sum() + np.einsum("mij,mji->", cov[lo:hi], jtj[lo:hi])) / npts[lo:hi].sum()
                              for lo, hi in segs])
    elif update == "bcd":
        var = dev2_mean
        noise_var = np.array([ssr[lo:hi].sum() / npts[lo:hi].sum() for lo, hi in segs])
    else:
        var, noise_var = prior_sd**2, s2
    if min_sd is None:
        floor = 1e-9 * (unit_p + np.abs(mu))
    else:
        floor = np.broadcast_to(np.asarray(min_sd, dtype=np.float64), mu.shape)
    sd = np.maximum(np.sqrt(var), floor)
    size_y = np.array([float(np.abs(xs[lo:hi, 3]).mean()) for lo, hi in segs])
    sigma = np.maximum(np.sqrt(noise_var), 1e-12 * (unit + size_y))
    return mu, sd, sigma, var, dev2_mean


def _diag_rows(d):
    """``(m, k, k)`` matrices with the rows of ``d`` (m, k) on their diagonals, zeros elsewhere."""
    m, k = d.shape
    out = np.zeros((m, k, k))
    out[:, np.arange(k), np.arange(k)] = d
    return out


def laplace_m_step(xs, ssr, npts, jtj, noise_sd, prior_sd, unit, unit_p):
    """One Laplace-EM M-step: ``(mu_S, sigma_S, sigma)`` from per-trace fits (rows: traces used).

    The update :func:`fit_lot` applies at every iteration (``update="laplace"``), on E-step fits
    made under ``(noise_sd, prior_sd)``; ``unit`` and ``unit_p`` as from ``_units``.
    """
    mu, sd, sigma, _, _ = _m_steps(xs, ssr, npts, jtj, [0, len(xs)], [noise_sd], np.asarray(prior_sd)[None],
                                   np.array([unit]), np.asarray(unit_p)[None])
    return mu[0], sd[0], float(sigma[0])


#: Signature parameters in the data's units (the others are rates, frequencies and phases).
_IN_DATA_UNITS = np.array([p in ("R", "y", "c") for p in PARAMS])


def _units(traces):
    """The data's unit ``min(1, max |value|)`` and the same per parameter.

    1 for empty or all-zero traces; at least 1e-100, because the fit weighs by ``1 / sd**2``,
    which overflows for a spread below about 1e-154 (traces that small keep a floor above
    their spread).
    """
    z = np.asarray(traces.z, dtype=np.float64)
    z = np.abs(z[np.isfinite(z)])
    size = float(z.max()) if z.size else 0.0
    unit = min(1.0, max(size, 1e-100)) if size > 0 else 1.0
    return unit, np.where(_IN_DATA_UNITS, unit, 1.0)


def _robust_init(x, ssr, n_points, scale_floor):
    mu = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - mu), axis=0)
    sd = np.maximum(mad, scale_floor)
    noise_var = max(float(np.sum(ssr) / np.sum(n_points)), 1e-300)
    return mu, sd, np.sqrt(noise_var)


def fit_lot(
    traces,
    *,
    init=None,
    update="laplace",
    max_iter=20,
    tol=1e-3,
    min_sd=None,
    n_jobs=None,
    fit_kwargs=None,
):
    """Fit the signatures of a lot and their hyperparameters (paper eq. 14).

    Parameters
    ----------
    traces : Traces
        The traces of one lot (one (tool, sensor, step) group), at least 2.
    init : tuple (noise_sd, prior_mean, prior_sd) or None, default=None
        Starting hyperparameters. ``None`` fits every trace without a prior first and starts
        from the median and the scaled MAD of those signatures, and the pooled residual variance.
    update : {"laplace", "bcd", "mean"}, default="laplace"
        ``"laplace"``: the Laplace-EM update (posterior variance added; converges to the true
        spread). ``"bcd"``: the paper's plain block coordinate descent, which collapses
        :math:`\\sigma_S` (kept to show it; see paper notes T10). ``"mean"``: only
        :math:`\\mu_S` is re-estimated; :math:`\\sigma` and :math:`\\sigma_S` stay at ``init``
        (a lot that may drift in level but shares the normal model's spread).
    max_iter : int, default=20
        Maximum number of hyperparameter updates.
    tol : float, default=1e-3
        Stop when the largest relative change of :math:`\\sigma` and :math:`\\sigma_S` is below it.
    min_sd : array-like of shape (6,) or None, default=None
        Floor on :math:`\\sigma_S` (and, via its mean level, a guard against division by zero).
        ``None`` uses ``1e-9 * (u + |mu_S|)``, with ``u = 1`` for ``gamma``, ``omega`` and ``phi``
        and ``u = min(1, max |value|)`` (at least 1e-100) for ``R``, ``y`` and ``c`` (in the
        data's units), so traces in tiny units fit as they do in units of order 1.
    n_jobs : int or None, default=None
        Passed to ``fit_traces``.
    fit_kwargs : dict or None, default=None
        Further keyword arguments of ``fit_traces`` (``max_iter``, ``tol``).

    Returns
    -------
    LotFit

    Raises
    ------
    ValueError
        If fewer than 2 traces could be fitted: a prior spread cannot be estimated from one;
        or if an update gives non-finite hyperparameters.
    """
    lot = _fit_lot(
        traces, init=init, update=update, max_iter=max_iter, tol=tol, min_sd=min_sd, n_jobs=n_jobs,
        fit_kwargs=fit_kwargs,
    )
    return dataclasses.replace(lot, fit=_signature_fit(lot.fit, traces.keys))


def _not_converged_message(update, max_iter, change, tol):
    """What an EM run that hit ``max_iter`` means, and what to do about it."""
    return (
        f"fit_lot: the {update} update of the lot's prior did not converge in {max_iter} iterations "
        f"(last relative change {change:.3g}, tol {tol:g}); the signatures and prior of the last "
        "iteration are used (LotFit.converged is False). Harmless when the change is within a few "
        "times tol: typically a parameter whose true spread over the lot is near zero, which EM "
        "approaches slowly. Otherwise raise max_iter (max_em_iter on the trace detectors) or tol "
        "(em_tol); LotFit.history shows how the spreads moved."
    )


def _fit_lot(traces, *, init=None, update="laplace", max_iter=20, tol=1e-3, min_sd=None, n_jobs=None, fit_kwargs=None):
    """:func:`fit_lot` with the per-trace fits as plain arrays (``fit`` an ``_ArrayFit``).

    Every E-step reads the kernel's arrays directly (no frames per iteration).
    """
    (res,) = _run_fits([_fit_lot_steps(traces, init=init, update=update, max_iter=max_iter, tol=tol,
                                       min_sd=min_sd, fit_kwargs=fit_kwargs)], n_jobs)
    return res


def _fit_lot_steps(traces, *, init=None, update="laplace", max_iter=20, tol=1e-3, min_sd=None, fit_kwargs=None):
    """:func:`_fit_lot` as a generator: it yields each fit it needs as a ``_FitRequest`` and
    receives the fit, so that the lots of one analysis fit together (``_fit._run_fits``).
    Returns the :class:`LotFit`; raises ``ValueError`` as :func:`fit_lot` does.
    """
    def fit_of(**kw):
        return _FitRequest(traces, {**kw, **fit_kwargs})

    if update not in ("laplace", "bcd", "mean"):
        raise ValueError(f"update must be 'laplace', 'bcd' or 'mean', got {update!r}.")
    if update == "mean" and init is None:
        raise ValueError("update='mean' keeps sigma and sigma_S fixed: pass init=(noise_sd, prior_mean, prior_sd).")
    fit_kwargs = dict(fit_kwargs or {})
    n = len(traces)
    if n < 2:
        raise ValueError(f"a lot needs at least 2 traces to estimate its prior spread, got {n}.")
    # the floors below are relative: to the parameter's size, and to the data's units for the
    # parameters in those units (R, y, c) when the traces are smaller than 1, so that traces
    # in tiny units (scaled by 1e-20) fit as they do in ordinary ones; unchanged from 1 up
    unit, unit_p = _units(traces)
    if init is None:
        # failed cold starts only leave the robust start (the private fit does not warn)
        fit0 = yield fit_of(model="paper")
        x0 = fit0.pp
        ok = np.asarray(fit0.success, dtype=bool) & np.isfinite(x0).all(axis=1)
        if ok.sum() < 2:
            raise ValueError(
                f"only {int(ok.sum())} of {n} traces could be fitted without a prior; "
                "a lot needs at least 2 to start the hierarchical fit."
            )
        floor0 = 1e-6 * (unit_p + np.abs(np.median(x0[ok], axis=0)))
        mu, sd, sigma = _robust_init(x0[ok], np.asarray(fit0.ssr)[ok], np.asarray(fit0.n_points)[ok], floor0)
        xinit = np.where(ok[:, None], x0, mu[None, :])
    else:
        sigma, mu, sd = float(init[0]), np.array(init[1], dtype=np.float64), np.array(init[2], dtype=np.float64)
        xinit = None
    res = (yield from _fit_lots_steps(
        traces, [n], ([sigma], [mu], [sd]), xinit=xinit, update=update, max_iter=max_iter, tol=tol, min_sd=min_sd,
        fit_kwargs=fit_kwargs,
    ))[0]
    if isinstance(res, Exception):
        raise res
    return dataclasses.replace(res, history=pd.DataFrame(res.history))


def _take(traces, rows):
    """The :class:`Traces` of the trace indices ``rows`` (in order) of ``traces``."""
    if len(rows) == len(traces):
        return traces
    counts = traces.n_points
    keep = np.repeat(np.isin(np.arange(len(traces)), rows), counts)
    return Traces(traces.t[keep], traces.z[keep], np.r_[0, np.cumsum(counts[rows])].astype(np.int64))


def _fit_lots_steps(traces, sizes, init, *, xinit=None, update="laplace", max_iter=20, tol=1e-3, min_sd=None,
                    fit_kwargs=None):
    """The Laplace-EM of :func:`fit_lot` for many lots at once, as a generator of fits.

    ``traces`` holds the traces of every lot, lot after lot (``sizes`` traces each); ``init``
    is ``(noise_sd (n_lots,), prior_mean (n_lots, 6), prior_sd (n_lots, 6))``; ``xinit``
    (n_traces, 6) the first E-step's starts (NaN rows: none); ``fit_kwargs`` may hold a per-trace
    ``origin``. Every E-step of all lots still running is one :class:`_FitRequest` (per-trace
    priors), and the M-steps are vectorised over the lots except for their sums, which are taken
    lot by lot exactly as :func:`fit_lot` takes them, so that each lot's result is bit for bit
    that of its own EM. Returns one entry per lot: a :class:`LotFit` (its ``history`` a list of
    rows, its ``fit`` an ``_ArrayFit``) or the ``ValueError`` that :func:`fit_lot` raises.
    """
    fit_kwargs = dict(fit_kwargs or {})
    sizes = np.asarray(sizes, dtype=np.int64)
    n_lots, n = len(sizes), int(sizes.sum())
    origin = fit_kwargs.pop("origin", None)
    origin = np.full(n, np.nan) if origin is None else np.broadcast_to(np.asarray(origin, dtype=np.float64), (n,))
    lot_of = np.repeat(np.arange(n_lots), sizes)
    bounds = np.r_[0, np.cumsum(sizes)]
    sigma = np.array(init[0], dtype=np.float64).reshape(n_lots)
    mu = np.array(init[1], dtype=np.float64).reshape(n_lots, 6)
    sd = np.array(init[2], dtype=np.float64).reshape(n_lots, 6)
    xinit = np.full((n, 6), np.nan) if xinit is None else np.array(xinit, dtype=np.float64)
    units = [_units(types.SimpleNamespace(z=traces.z[traces.offsets[a]:traces.offsets[b]]))
             for a, b in zip(bounds[:-1], bounds[1:])]
    unit = np.array([u for u, _ in units]).reshape(n_lots)
    unit_p = np.array([p for _, p in units]).reshape(n_lots, 6)
    out = [None] * n_lots
    history = [[] for _ in range(n_lots)]
    used_of = [None] * n_lots
    change = np.full(n_lots, np.inf)
    active = np.flatnonzero(sizes >= 2)
    for i in np.flatnonzero(sizes < 2):
        out[i] = ValueError(f"a lot needs at least 2 traces to estimate its prior spread, got {sizes[i]}.")

    def request(lots):
        rows = np.flatnonzero(np.isin(lot_of, lots))
        lot = lot_of[rows]
        kw = {"prior": (mu[lot], sd[lot]), "noise_sd": sigma[lot], "init": xinit[rows], "origin": origin[rows],
              **fit_kwargs}
        return rows, _FitRequest(_take(traces, rows), kw)

    it = 0
    for it in range(1, max_iter + 1):
        if not active.size:
            break
        rows, req = request(active)
        fit = yield req
        x = fit.pp
        used = np.asarray(fit.success, dtype=bool) & np.isfinite(x).all(axis=1)
        ssr_all = np.asarray(fit.ssr, dtype=np.float64)
        npts_all = np.asarray(fit.n_points, dtype=np.float64)
        jtj_all = np.asarray(fit.jtj, dtype=np.float64)
        lo = np.r_[0, np.cumsum(sizes[active])]
        n_used = np.add.reduceat(used.astype(np.int64), lo[:-1])
        for k, i in enumerate(active):
            used_of[i] = used[lo[k]:lo[k + 1]]
            if n_used[k] < 2:
                out[i] = ValueError(f"only {n_used[k]} of {sizes[i]} traces could be fitted; need at least 2.")
        go = np.flatnonzero(n_used >= 2)
        lots = active[go]
        if not lots.size:  # every lot still running had fewer than 2 traces fitted
            active = lots
            break
        sel = np.flatnonzero(used & np.repeat(n_used >= 2, sizes[active]))
        ub = np.r_[0, np.cumsum(n_used[go])]
        mu_new, sd_new, sigma_new, var, dev2_mean = _m_steps(
            x[sel], ssr_all[sel], npts_all[sel], jtj_all[sel], ub, sigma[lots], sd[lots], unit[lots], unit_p[lots],
            update, min_sd,
        )
        finite = np.isfinite(mu_new).all(axis=1) & np.isfinite(sd_new).all(axis=1) & np.isfinite(sigma_new)
        post_var = var - dev2_mean if update == "laplace" else 0.0
        scale = np.sqrt(sd[lots] ** 2 + post_var)
        with np.errstate(all="ignore"):
            change[lots] = np.maximum.reduce([
                np.max(np.abs(sd_new - sd[lots]) / scale, axis=1),
                np.abs(np.log(sigma_new / sigma[lots])),
                np.max(np.abs(mu_new - mu[lots]) / scale, axis=1),
            ])
        mu[lots], sd[lots], sigma[lots] = mu_new, sd_new, sigma_new
        xr = x.copy()
        xr[~used] = mu[lot_of[rows[~used]]]
        xinit[rows] = xr
        still = []
        for k, i in enumerate(lots):
            if not finite[k]:
                out[i] = ValueError(f"the {update} update of the prior gave non-finite values at iteration {it}.")
                continue
            history[i].append({"noise_sd": sigma[i], **{f"sd_{p}": v for p, v in zip(PARAMS, sd[i])}})
            if change[i] < tol:
                a = lo[go[k]]
                out[i] = LotFit(_slice_fit(fit, a, a + sizes[i]), float(sigma[i]), mu[i].copy(), sd[i].copy(), it,
                                True, history[i], used_of[i])
            else:
                still.append(i)
        _logger.debug("fit_lots iteration %d: %d lot(s) still running", it, len(still))
        active = np.asarray(still, dtype=np.int64)
    if active.size:
        rows, req = request(active)
        fit = yield req
        lo = np.r_[0, np.cumsum(sizes[active])]
        for k, i in enumerate(active):
            _logger.info("%s", _not_converged_message(update, max_iter, change[i], tol))
            out[i] = LotFit(_slice_fit(fit, lo[k], lo[k + 1]), float(sigma[i]), mu[i].copy(), sd[i].copy(),
                            max_iter, False, history[i], used_of[i])
    return out

