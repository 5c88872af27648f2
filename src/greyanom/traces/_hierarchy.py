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

import numpy as np
import pandas as pd

from greyanom.traces._fit import _FitRequest, _run_fits, _signature_fit

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


def _posterior_cov(jtj, noise_sd, prior_sd):
    """Inverse Gauss-Newton Hessian ``(J'J / sigma^2 + diag(sigma_S)^-2)^-1`` per trace."""
    H = jtj / noise_sd**2 + np.diag(1.0 / prior_sd**2)[None, :, :]
    return np.linalg.inv(H)


def _laplace_moments(dev2, ssr, npts, jtj, noise_sd, prior_sd):
    """The Laplace-EM M-step's ``(sigma_S**2, sigma**2)`` from E-step fits under ``(noise_sd, prior_sd)``.

    ``dev2``: squared deviations of the signatures from their new mean; ``ssr``, ``npts``,
    ``jtj``: each trace's residual sum of squares, sample count and ``J'J`` at its optimum.
    """
    cov = _posterior_cov(jtj, noise_sd, prior_sd)
    var = (dev2 + np.diagonal(cov, axis1=1, axis2=2)).mean(axis=0)
    noise_var = (ssr.sum() + np.einsum("mij,mji->", cov, jtj)) / npts.sum()
    return var, noise_var


def _floored(var, noise_var, mu, xs, unit, unit_p, min_sd=None):
    """``(sigma_S, sigma)`` from the M-step's variances, above their floors (see :func:`fit_lot`)."""
    floor = 1e-9 * (unit_p + np.abs(mu)) if min_sd is None else np.asarray(min_sd, dtype=np.float64)
    sd = np.maximum(np.sqrt(var), floor)
    sigma = max(float(np.sqrt(noise_var)), 1e-12 * (unit + float(np.abs(xs[:, 3]).mean())))
    return sd, sigma


def laplace_m_step(xs, ssr, npts, jtj, noise_sd, prior_sd, unit, unit_p):
    """One Laplace-EM M-step: ``(mu_S, sigma_S, sigma)`` from per-trace fits (rows: traces used).

    The update :func:`fit_lot` applies at every iteration (``update="laplace"``), on E-step fits
    made under ``(noise_sd, prior_sd)``; ``unit`` and ``unit_p`` as from ``_units``.
    """
    mu = xs.mean(axis=0)
    var, noise_var = _laplace_moments((xs - mu) ** 2, ssr, npts, jtj, noise_sd, prior_sd)
    sd, sigma = _floored(var, noise_var, mu, xs, unit, unit_p)
    return mu, sd, sigma


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
    rows = []
    converged = False
    it = 0
    fit = None
    used = np.zeros(n, dtype=bool)
    for it in range(1, max_iter + 1):
        # failures are in fit.success, reported by the caller
        fit = yield fit_of(prior=(mu, sd), noise_sd=sigma, init=xinit)
        x = fit.pp
        used = np.asarray(fit.success, dtype=bool) & np.isfinite(x).all(axis=1)
        if used.sum() < 2:
            raise ValueError(f"only {int(used.sum())} of {n} traces could be fitted; need at least 2.")
        xs = x[used]
        ssr = np.asarray(fit.ssr, dtype=np.float64)[used]
        npts = np.asarray(fit.n_points, dtype=np.float64)[used]
        mu_new = xs.mean(axis=0)
        dev2 = (xs - mu_new) ** 2
        if update == "laplace":
            var, noise_var = _laplace_moments(dev2, ssr, npts, np.asarray(fit.jtj, dtype=np.float64)[used], sigma, sd)
        elif update == "bcd":
            var = dev2.mean(axis=0)
            noise_var = ssr.sum() / npts.sum()
        else:
            var, noise_var = sd**2, sigma**2
        sd_new, sigma_new = _floored(var, noise_var, mu_new, xs, unit, unit_p, min_sd)
        if not (np.isfinite(mu_new).all() and np.isfinite(sd_new).all() and np.isfinite(sigma_new)):
            raise ValueError(f"the {update} update of the prior gave non-finite values at iteration {it}.")
        # Relative change of sigma_S, measured against the posterior spread so that a parameter
        # whose true spread is zero (EM approaches 0 only sublinearly) does not block convergence.
        post_var = var - dev2.mean(axis=0) if update == "laplace" else 0.0
        change = max(
            float(np.max(np.abs(sd_new - sd) / np.sqrt(sd**2 + post_var))),
            abs(float(np.log(sigma_new / sigma))),
            float(np.max(np.abs(mu_new - mu) / np.sqrt(sd**2 + post_var))),
        )
        mu, sd, sigma = mu_new, sd_new, sigma_new
        xinit = x.copy()
        xinit[~used] = mu
        rows.append({"noise_sd": sigma, **{f"sd_{p}": v for p, v in zip(PARAMS, sd)}})
        _logger.debug("fit_lot iteration %d: change %.3g", it, change)
        if change < tol:
            converged = True
            break
    if converged:
        final = fit
    else:
        final = yield fit_of(prior=(mu, sd), noise_sd=sigma, init=xinit)
    if not converged:
        _logger.info("%s", _not_converged_message(update, max_iter, change, tol))
    return LotFit(
        fit=final,
        noise_sd=float(sigma),
        prior_mean=mu,
        prior_sd=sd,
        n_iter=it,
        converged=converged,
        history=pd.DataFrame(rows),
        used=used,
    )
