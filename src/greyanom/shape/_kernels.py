"""Numba kernels of the shape-signature fit.

Every function here takes plain NumPy arrays and scalars and never validates: the public
wrappers in :mod:`greyanom.shape._fit` prepare the input. Only the batch drivers
(``fit_batch`` and ``terms_batch``) are ``parallel=True`` and loop over traces with
``prange``; the per-trace functions are serial.

Two parametrisations of the same model are used (indices in brackets):

* paper space ``(gamma[0], R[1], omega[2], y[3], phi[4], c[5])``::

      alpha(tau) = R exp(-gamma tau / 2) cos(omega tau - phi) + c tau + y

* general space ``(gamma[0], A[1], kappa[2], y[3], B[4], c[5])``::

      alpha(tau) = exp(-gamma tau / 2) [A C(kappa, tau) + B S(kappa, tau)] + c tau + y

  with ``C = cos(sqrt(kappa) tau)``, ``S = sin(sqrt(kappa) tau) / sqrt(kappa)`` for
  ``kappa > 0``, ``cosh``/``sinh`` for ``kappa < 0`` and the power series near
  ``kappa = 0``; ``C`` and ``S`` are entire functions of ``kappa``, so this one family is
  real-analytic across the under-, critically and over-damped regimes.

The fits run on normalised traces: ``u = (t - x) / T`` in ``[0, 1]`` and
``v = (z - mean) / sd``, so that tolerances and the cold-start grid are scale free.
"""

import math

import numpy as np
from numba import njit, prange

#: fastmath without ``nnan``/``ninf``, so that NaN and inf checks keep working.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: |kappa tau^2| below which C, S and dS/dkappa use their power series.
SERIES_CUT = 0.1

#: Status codes (see ``greyanom.shape._result.STATUS_MESSAGES``).
ST_MAXITER = 0
ST_GTOL = 1
ST_FTOL = 2
ST_XTOL = 3
ST_FEW = -1
ST_NONFINITE = -2

# Cold-start grid in normalised time (u in [0, 1]): decay rates (gamma / 2) and frequencies.
GRID_RATES = np.array([-1.0, 0.0, 1.0, 2.5, 5.0, 10.0, 20.0])
GRID_FREQS = np.array([1.5, 3.5, 7.0, 14.0, 28.0, 56.0])
GRID_POINTS = 48


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _general_basis(gamma, kappa, tau):
    """Return ``(E C, E S, E dS/dkappa)`` with ``E = exp(-gamma tau / 2)``."""
    x = kappa * tau * tau
    if abs(x) < SERIES_CUT:
        e = math.exp(-0.5 * gamma * tau)
        # C = sum (-x)^n / (2n)!, S / tau = sum (-x)^n / (2n+1)!,
        # dS/dkappa / tau^3 = sum_{n>=1} (-1)^n n x^(n-1) / (2n+1)!
        c = 1.0 + (-x) * (
            1.0 / 2.0
            + (-x)
            * (
                1.0 / 24.0
                + (-x) * (1.0 / 720.0 + (-x) * (1.0 / 40320.0 + (-x) * (1.0 / 3628800.0)))
            )
        )
        s = 1.0 + (-x) * (
            1.0 / 6.0
            + (-x)
            * (
                1.0 / 120.0
                + (-x) * (1.0 / 5040.0 + (-x) * (1.0 / 362880.0 + (-x) * (1.0 / 39916800.0)))
            )
        )
        ds = -1.0 / 6.0 + x * (
            2.0 / 120.0
            + x * (-3.0 / 5040.0 + x * (4.0 / 362880.0 + x * (-5.0 / 39916800.0)))
        )
        return e * c, e * tau * s, e * tau * tau * tau * ds
    if kappa > 0.0:
        w = math.sqrt(kappa)
        e = math.exp(-0.5 * gamma * tau)
        ec = e * math.cos(w * tau)
        es = e * math.sin(w * tau) / w
    else:
        mu = math.sqrt(-kappa)
        up = math.exp((mu - 0.5 * gamma) * tau)
        dn = math.exp(-(mu + 0.5 * gamma) * tau)
        ec = 0.5 * (up + dn)
        es = 0.5 * (up - dn) / mu
    return ec, es, (tau * ec - es) / (2.0 * kappa)


@njit(cache=True, fastmath=FASTMATH)
def pass_general(u, v, p, jtj, jtr):
    """One pass in general space: fill ``J^T J`` and ``J^T r``; return the SSR."""
    gamma, a, kappa, y, b, c = p[0], p[1], p[2], p[3], p[4], p[5]
    for i in range(6):
        jtr[i] = 0.0
        for k in range(6):
            jtj[i, k] = 0.0
    ssr = 0.0
    jr = np.empty(6)
    for i in range(u.shape[0]):
        tau = u[i]
        ec, es, eds = _general_basis(gamma, kappa, tau)
        g = a * ec + b * es
        r = v[i] - (g + c * tau + y)
        ssr += r * r
        jr[0] = -0.5 * tau * g
        jr[1] = ec
        jr[2] = -0.5 * tau * a * es + b * eds
        jr[3] = 1.0
        jr[4] = es
        jr[5] = tau
        for k in range(6):
            jtr[k] += jr[k] * r
            for m in range(k + 1):
                jtj[k, m] += jr[k] * jr[m]
    for k in range(6):
        for m in range(k):
            jtj[m, k] = jtj[k, m]
    return ssr


@njit(cache=True, fastmath=FASTMATH)
def pass_paper(u, v, p, jtj, jtr, so):
    """One fused pass in paper space.

    Fills ``J^T J``, ``J^T r`` and the second-order term ``so = sum_i r_i H_i`` (the 9
    reductions of the notes, section 3.3); returns the SSR.
    """
    gamma, rr, omega, y, phi, c = p[0], p[1], p[2], p[3], p[4], p[5]
    for i in range(6):
        jtr[i] = 0.0
        for k in range(6):
            jtj[i, k] = 0.0
            so[i, k] = 0.0
    ssr = 0.0
    s_gg = 0.0
    s_gr = 0.0
    s_gw = 0.0
    s_gf = 0.0
    s_rw = 0.0
    s_rf = 0.0
    s_ww = 0.0
    s_wf = 0.0
    s_ff = 0.0
    jr = np.empty(6)
    for i in range(u.shape[0]):
        tau = u[i]
        e = math.exp(-0.5 * gamma * tau)
        th = omega * tau - phi
        ec = e * math.cos(th)
        es = e * math.sin(th)
        rec = rr * ec
        res = rr * es
        r = v[i] - (rec + c * tau + y)
        ssr += r * r
        jr[0] = -0.5 * tau * rec
        jr[1] = ec
        jr[2] = -tau * res
        jr[3] = 1.0
        jr[4] = res
        jr[5] = tau
        for k in range(6):
            jtr[k] += jr[k] * r
            for m in range(k + 1):
                jtj[k, m] += jr[k] * jr[m]
        ra = r * rec
        rb = r * res
        re = r * ec
        rq = r * es
        t2 = tau * tau
        s_gg += t2 * ra
        s_gr += tau * re
        s_gw += t2 * rb
        s_gf += tau * rb
        s_rw += tau * rq
        s_rf += rq
        s_wf += tau * ra
        s_ff += ra
    s_ww = -s_gg
    for k in range(6):
        for m in range(k):
            jtj[m, k] = jtj[k, m]
    so[0, 0] = 0.25 * s_gg
    so[0, 1] = -0.5 * s_gr
    so[0, 2] = 0.5 * s_gw
    so[0, 4] = -0.5 * s_gf
    so[1, 2] = -s_rw
    so[1, 4] = s_rf
    so[2, 2] = s_ww
    so[2, 4] = s_wf
    so[4, 4] = -s_ff
    so[1, 0] = so[0, 1]
    so[2, 0] = so[0, 2]
    so[4, 0] = so[0, 4]
    so[2, 1] = so[1, 2]
    so[4, 1] = so[1, 4]
    so[4, 2] = so[2, 4]
    return ssr


@njit(cache=True, fastmath=FASTMATH)
def _cholesky_solve(a, b, out, free):
    """Solve ``a out = b`` over the ``free`` indices by Cholesky; False if not PD.

    Entries of ``out`` outside ``free`` are set to zero. ``a`` is not modified.
    """
    n = a.shape[0]
    idx = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        out[i] = 0.0
        if free[i]:
            idx[m] = i
            m += 1
    ll = np.zeros((n, n))
    for j in range(m):
        s = a[idx[j], idx[j]]
        for k in range(j):
            s -= ll[j, k] * ll[j, k]
        if not (s > 0.0):
            return False
        d = math.sqrt(s)
        ll[j, j] = d
        for i in range(j + 1, m):
            s2 = a[idx[i], idx[j]]
            for k in range(j):
                s2 -= ll[i, k] * ll[j, k]
            ll[i, j] = s2 / d
    w = np.empty(n)
    for i in range(m):
        s = b[idx[i]]
        for k in range(i):
            s -= ll[i, k] * w[k]
        w[i] = s / ll[i, i]
    for i in range(m - 1, -1, -1):
        s = w[i]
        for k in range(i + 1, m):
            s -= ll[k, i] * w[k]
        w[i] = s / ll[i, i]
    for i in range(m):
        out[idx[i]] = w[i]
    return True


@njit(cache=True, fastmath=FASTMATH)
def _ls4(g, h, zz, coef):
    """Least squares on a 4-column Gram system with dropped dependent columns.

    ``g`` (4, 4) is the Gram matrix, ``h`` (4,) the right-hand side, ``zz`` = sum z^2.
    A column whose pivot is below ``1e-10`` of its norm is dropped (coefficient zero).
    Returns the residual sum of squares.
    """
    ll = np.zeros((4, 4))
    keep = np.ones(4, np.bool_)
    for j in range(4):
        s = g[j, j]
        for k in range(j):
            s -= ll[j, k] * ll[j, k]
        if not (s > 1e-10 * g[j, j]) or not (g[j, j] > 0.0):
            keep[j] = False
            continue
        d = math.sqrt(s)
        ll[j, j] = d
        for i in range(j + 1, 4):
            s2 = g[i, j]
            for k in range(j):
                s2 -= ll[i, k] * ll[j, k]
            ll[i, j] = s2 / d
    w = np.zeros(4)
    for i in range(4):
        if keep[i]:
            s = h[i]
            for k in range(i):
                s -= ll[i, k] * w[k]
            w[i] = s / ll[i, i]
    fit = 0.0
    for i in range(4):
        fit += w[i] * w[i]
    for i in range(3, -1, -1):
        if keep[i]:
            s = w[i]
            for k in range(i + 1, 4):
                s -= ll[k, i] * coef[k]
            coef[i] = s / ll[i, i]
        else:
            coef[i] = 0.0
    return zz - fit


@njit(cache=True, fastmath=FASTMATH)
def grid_start(u, v, general, p):
    """Cold start: best point of a (rate, frequency) grid by variable projection.

    For fixed decay rates and frequency the model is linear in the two transient
    coefficients, ``c`` and ``y``; each grid point is solved exactly on a strided
    subsample of at most ``GRID_POINTS`` points. Writes the start into ``p`` (general
    space when ``general`` else paper space).
    """
    n = u.shape[0]
    stride = max(1, (n + GRID_POINTS - 1) // GRID_POINTS)
    m = (n + stride - 1) // stride
    nr = GRID_RATES.shape[0]
    nf = GRID_FREQS.shape[0]
    ex = np.empty((nr, m))
    co = np.empty((nf, m))
    si = np.empty((nf, m))
    us = np.empty(m)
    vs = np.empty(m)
    for j in range(m):
        tau = u[j * stride]
        us[j] = tau
        vs[j] = v[j * stride]
        for a in range(nr):
            ex[a, j] = math.exp(-GRID_RATES[a] * tau)
        for f in range(nf):
            co[f, j] = math.cos(GRID_FREQS[f] * tau)
            si[f, j] = math.sin(GRID_FREQS[f] * tau)
    # sums shared by every grid point: columns (f1, f2, u, 1)
    s_1 = float(m)
    s_u = 0.0
    s_uu = 0.0
    s_z = 0.0
    s_uz = 0.0
    s_zz = 0.0
    for j in range(m):
        s_u += us[j]
        s_uu += us[j] * us[j]
        s_z += vs[j]
        s_uz += us[j] * vs[j]
        s_zz += vs[j] * vs[j]
    g = np.zeros((4, 4))
    h = np.zeros(4)
    coef = np.zeros(4)
    g[2, 2] = s_uu
    g[2, 3] = s_u
    g[3, 2] = s_u
    g[3, 3] = s_1
    h[2] = s_uz
    h[3] = s_z
    f1 = np.empty(m)
    f2 = np.empty(m)
    best = np.inf
    n_kind = 3 if general else 2
    for kind in range(n_kind):
        # kind 0: underdamped (rate a, frequency f); 1: one exponential (paper) or
        # critical (general); 2: overdamped pair (rates a < b)
        na = nr
        nb = nf if kind == 0 else (1 if kind == 1 else nr)
        for ia in range(na):
            for ib in range(nb):
                if kind == 2 and ib <= ia:
                    continue
                for j in range(m):
                    if kind == 0:
                        f1[j] = ex[ia, j] * co[ib, j]
                        f2[j] = ex[ia, j] * si[ib, j]
                    elif kind == 1:
                        f1[j] = ex[ia, j]
                        f2[j] = us[j] * ex[ia, j] if general else 0.0
                    else:
                        f1[j] = ex[ia, j]
                        f2[j] = ex[ib, j]
                s11 = 0.0
                s12 = 0.0
                s22 = 0.0
                s1u = 0.0
                s2u = 0.0
                s1c = 0.0
                s2c = 0.0
                s1z = 0.0
                s2z = 0.0
                for j in range(m):
                    a1 = f1[j]
                    a2 = f2[j]
                    s11 += a1 * a1
                    s12 += a1 * a2
                    s22 += a2 * a2
                    s1u += a1 * us[j]
                    s2u += a2 * us[j]
                    s1c += a1
                    s2c += a2
                    s1z += a1 * vs[j]
                    s2z += a2 * vs[j]
                g[0, 0] = s11
                g[0, 1] = s12
                g[1, 0] = s12
                g[1, 1] = s22
                g[0, 2] = s1u
                g[2, 0] = s1u
                g[1, 2] = s2u
                g[2, 1] = s2u
                g[0, 3] = s1c
                g[3, 0] = s1c
                g[1, 3] = s2c
                g[3, 1] = s2c
                h[0] = s1z
                h[1] = s2z
                ssr = _ls4(g, h, s_zz, coef)
                if ssr < best:
                    best = ssr
                    p[3] = coef[3]
                    p[5] = coef[2]
                    if kind == 0:
                        rate = GRID_RATES[ia]
                        w = GRID_FREQS[ib]
                        p[0] = 2.0 * rate
                        if general:
                            p[1] = coef[0]
                            p[2] = w * w
                            p[4] = w * coef[1]
                        else:
                            p[2] = w
                            _to_polar(coef[0], coef[1], p)
                    elif kind == 1:
                        p[0] = 2.0 * GRID_RATES[ia]
                        p[1] = coef[0]
                        p[2] = 0.0
                        p[4] = coef[1] if general else 0.0
                    else:
                        ra = GRID_RATES[ia]
                        rb = GRID_RATES[ib]
                        mu = 0.5 * (rb - ra)
                        p[0] = ra + rb
                        p[1] = coef[0] + coef[1]
                        p[2] = -mu * mu
                        p[4] = mu * (coef[0] - coef[1])
    return best


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _to_polar(a, b, p):
    """Write ``R`` and ``phi`` with ``R cos(phi) = a``, ``R sin(phi) = b``, phi in [-pi/2, pi/2]."""
    if a == 0.0:
        if b == 0.0:
            p[1] = 0.0
            p[4] = 0.0
        else:
            p[1] = b
            p[4] = 0.5 * math.pi
    else:
        phi = math.atan(b / a)
        p[4] = phi
        p[1] = a / math.cos(phi)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def canonicalise(p):
    """Map a paper-space point onto omega >= 0, phi in [-pi/2, pi/2] (alpha unchanged)."""
    if p[2] < 0.0:
        p[2] = -p[2]
        p[4] = -p[4]
    phi = p[4]
    if phi > math.pi or phi < -math.pi:
        phi -= 2.0 * math.pi * math.floor((phi + math.pi) / (2.0 * math.pi))
    if phi > 0.5 * math.pi:
        phi -= math.pi
        p[1] = -p[1]
    elif phi < -0.5 * math.pi:
        phi += math.pi
        p[1] = -p[1]
    p[4] = phi


@njit(cache=True, fastmath=FASTMATH)
def _evaluate(paper, u, v, p, mu, w, inv_s2, hess, grad, gn_diag, jtj, jtr, so):
    """Objective ``F = inv_s2 SSR / 2 + sum w (p - mu)^2 / 2`` with gradient and Hessian."""
    if paper:
        ssr = pass_paper(u, v, p, jtj, jtr, so)
    else:
        ssr = pass_general(u, v, p, jtj, jtr)
    f = 0.5 * inv_s2 * ssr
    for k in range(6):
        d = p[k] - mu[k]
        f += 0.5 * w[k] * d * d
        grad[k] = -inv_s2 * jtr[k] + w[k] * d
        gn_diag[k] = inv_s2 * jtj[k, k] + w[k]
        for m in range(6):
            hess[k, m] = inv_s2 * jtj[k, m]
            if paper:
                hess[k, m] -= inv_s2 * so[k, m]
        hess[k, k] += w[k]
    return f, ssr


@njit(cache=True, fastmath=FASTMATH)
def minimise(paper, u, v, p, mu, w, inv_s2, bounded, max_iter, tol):
    """Levenberg-Marquardt / damped Newton from ``p`` (updated in place).

    ``paper`` selects paper space with the exact Hessian (trust-region Newton with
    Levenberg damping) or general space with Gauss-Newton. In paper space ``omega >= 0``
    and ``phi`` in [-pi/2, pi/2] are kept by projection when ``bounded`` (a prior is
    present) and by the symmetries of the model otherwise.

    Returns ``(status, n_iter, F, ssr)``.
    """
    hess = np.empty((6, 6))
    grad = np.empty(6)
    gnd = np.empty(6)
    jtj = np.empty((6, 6))
    jtr = np.empty(6)
    so = np.empty((6, 6))
    h2 = np.empty((6, 6))
    g2 = np.empty(6)
    gnd2 = np.empty(6)
    a = np.empty((6, 6))
    step = np.empty(6)
    trial = np.empty(6)
    rhs = np.empty(6)
    free = np.ones(6, np.bool_)
    scale = np.zeros(6)
    f, ssr = _evaluate(paper, u, v, p, mu, w, inv_s2, hess, grad, gnd, jtj, jtr, so)
    if not (math.isfinite(f)):
        return ST_NONFINITE, 0, f, ssr
    dmax = 0.0
    for k in range(6):
        scale[k] = gnd[k]
        dmax = max(dmax, gnd[k])
    lam = 1e-3
    nu = 2.0
    tiny = 1e-300
    n_iter = 0
    status = ST_MAXITER
    half_pi = 0.5 * math.pi
    while n_iter < max_iter:
        n_iter += 1
        gmax = 0.0
        for k in range(6):
            free[k] = True
            if bounded:
                if k == 2 and p[2] <= 0.0 and grad[2] > 0.0:
                    free[k] = False
                if k == 4 and ((p[4] <= -half_pi and grad[4] > 0.0) or (p[4] >= half_pi and grad[4] < 0.0)):
                    free[k] = False
            if free[k]:
                gmax = max(gmax, abs(grad[k]) / math.sqrt(max(scale[k], tiny)))
        if gmax <= tol * max(1.0, math.sqrt(2.0 * abs(f))) * 1e-2:
            status = ST_GTOL
            break
        for k in range(6):
            scale[k] = max(scale[k], gnd[k], 1e-12 * dmax, tiny)
            rhs[k] = -grad[k]
            for m in range(6):
                a[k, m] = hess[k, m]
            a[k, k] += lam * scale[k]
        if not _cholesky_solve(a, rhs, step, free):
            lam *= nu
            nu *= 2.0
            if lam > 1e16:
                status = ST_XTOL
                break
            continue
        pnorm = 0.0
        snorm = 0.0
        for k in range(6):
            trial[k] = p[k] + step[k]
            pnorm += scale[k] * p[k] * p[k]
            snorm += scale[k] * step[k] * step[k]
        if paper:
            if bounded:
                if trial[2] < 0.0:
                    trial[2] = 0.0
                if trial[4] > half_pi:
                    trial[4] = half_pi
                elif trial[4] < -half_pi:
                    trial[4] = -half_pi
                for k in range(6):
                    step[k] = trial[k] - p[k]
            else:
                canonicalise(trial)
        pred = 0.0
        for k in range(6):
            s = 0.0
            for m in range(6):
                s += hess[k, m] * step[m]
            pred -= grad[k] * step[k] + 0.5 * step[k] * s
        f2, ssr2 = _evaluate(paper, u, v, trial, mu, w, inv_s2, h2, g2, gnd2, jtj, jtr, so)
        accepted = math.isfinite(f2) and f2 < f
        if accepted:
            rho = (f - f2) / pred if pred > 0.0 else 0.0
            df = f - f2
            fold = f
            for k in range(6):
                p[k] = trial[k]
                grad[k] = g2[k]
                gnd[k] = gnd2[k]
                for m in range(6):
                    hess[k, m] = h2[k, m]
            f = f2
            ssr = ssr2
            t = 2.0 * rho - 1.0
            lam *= max(1.0 / 3.0, 1.0 - t * t * t)
            nu = 2.0
            if df <= tol * fold and rho > 0.25:
                status = ST_FTOL
                break
            if f <= 1e-30 * u.shape[0]:
                status = ST_FTOL
                break
        else:
            lam *= nu
            nu *= 2.0
        if snorm <= (tol * tol) * (pnorm + tol * tol):
            status = ST_XTOL
            break
        if lam > 1e16:
            status = ST_XTOL
            break
    return status, n_iter, f, ssr


@njit(cache=True, fastmath=FASTMATH)
def _prepare(t, z, lo, hi, u, v):
    """Normalise one trace into ``u``, ``v``; return ``(x, T, mean, sd)``."""
    n = hi - lo
    x = t[lo]
    span = t[hi - 1] - x
    if not (span > 0.0):
        span = 1.0
    mean = 0.0
    for i in range(lo, hi):
        mean += z[i]
    mean /= n
    var = 0.0
    for i in range(lo, hi):
        d = z[i] - mean
        var += d * d
    sd = math.sqrt(var / n)
    if not (sd > 0.0):
        sd = 1.0
    for i in range(lo, hi):
        u[i] = (t[i] - x) / span
        v[i] = (z[i] - mean) / sd
    return x, span, mean, sd


@njit(cache=True, fastmath=FASTMATH)
def to_normal(paper, p, span, mean, sd, out):
    """Map original-unit parameters to normalised units (paper or general space)."""
    out[0] = p[0] * span
    out[3] = (p[3] - mean) / sd
    out[5] = p[5] * span / sd
    if paper:
        out[1] = p[1] / sd
        out[2] = p[2] * span
        out[4] = p[4]
    else:
        out[1] = p[1] / sd
        out[2] = p[2] * span * span
        out[4] = p[4] * span / sd


@njit(cache=True, fastmath=FASTMATH)
def from_normal(paper, p, span, mean, sd, out):
    """Map normalised parameters back to original units (inverse of ``to_normal``)."""
    out[0] = p[0] / span
    out[3] = p[3] * sd + mean
    out[5] = p[5] * sd / span
    if paper:
        out[1] = p[1] * sd
        out[2] = p[2] / span
        out[4] = p[4]
    else:
        out[1] = p[1] * sd
        out[2] = p[2] / (span * span)
        out[4] = p[4] * sd / span


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def fit_batch(
    t, z, offsets, paper, init, has_init, prior_mu, prior_w, inv_s2, min_points, max_iter, tol,
    out_p, out_status, out_iter, out_x, out_span,
):
    """Fit every trace; parallel over traces.

    ``init`` (n, 6) holds starts in original units of the chosen space (used where
    ``has_init``); ``prior_mu``/``prior_w`` (n, 6) hold the prior mean and weights
    ``1 / sd^2`` in original units (weights zero without a prior); ``inv_s2`` (n,) is
    ``1 / noise_sd^2`` (ones without a prior). Results go into the ``out_*`` arrays, the
    parameters in original units of the chosen space.
    """
    n_traces = offsets.shape[0] - 1
    u_all = np.empty(t.shape[0])
    v_all = np.empty(t.shape[0])
    for j in prange(n_traces):
        lo = offsets[j]
        hi = offsets[j + 1]
        n = hi - lo
        if n == 0:
            out_status[j] = ST_FEW
            out_iter[j] = 0
            out_x[j] = np.nan
            out_span[j] = np.nan
            for k in range(6):
                out_p[j, k] = np.nan
            continue
        x, span, mean, sd = _prepare(t, z, lo, hi, u_all, v_all)
        out_x[j] = x
        out_span[j] = span
        if n < min_points:
            out_status[j] = ST_FEW
            out_iter[j] = 0
            for k in range(6):
                out_p[j, k] = np.nan
            continue
        u = u_all[lo:hi]
        v = v_all[lo:hi]
        p = np.empty(6)
        mu = np.zeros(6)
        w = np.zeros(6)
        bounded = False
        for k in range(6):
            if prior_w[j, k] > 0.0:
                bounded = True
        if bounded:
            to_normal(paper, prior_mu[j], span, mean, sd, mu)
            w[0] = prior_w[j, 0] / (span * span)
            w[3] = prior_w[j, 3] * sd * sd
            w[5] = prior_w[j, 5] * sd * sd / (span * span)
            w[1] = prior_w[j, 1] * sd * sd
            w[2] = prior_w[j, 2] / (span * span)
            w[4] = prior_w[j, 4]
        if has_init[j]:
            to_normal(paper, init[j], span, mean, sd, p)
            if paper:
                canonicalise(p)
                if bounded:
                    if p[2] < 0.0:
                        p[2] = 0.0
        else:
            grid_start(u, v, not paper, p)
        is2 = inv_s2[j] * sd * sd
        status, n_it, f, ssr = minimise(paper, u, v, p, mu, w, is2, bounded, max_iter, tol)
        out_status[j] = status
        out_iter[j] = n_it
        q = np.empty(6)
        from_normal(paper, p, span, mean, sd, q)
        for k in range(6):
            out_p[j, k] = q[k]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def terms_batch(t, z, offsets, params, prior_mu, prior_w, s2, out_f, out_g, out_h, out_jtj, out_ssr):
    """Paper-space objective, gradient, Hessian, ``J^T J`` and SSR per trace (original units).

    ``f = n/2 ln s2 + SSR / (2 s2) + sum_d w_d (s_d - mu_d)^2 / 2`` (the ``ln sd`` terms of
    the prior are added by the caller). ``tau = t - min t``.
    """
    n_traces = offsets.shape[0] - 1
    tau_all = np.empty(t.shape[0])
    for j in prange(n_traces):
        lo = offsets[j]
        hi = offsets[j + 1]
        n = hi - lo
        jtj = np.empty((6, 6))
        jtr = np.empty(6)
        so = np.empty((6, 6))
        hess = np.empty((6, 6))
        grad = np.empty(6)
        gnd = np.empty(6)
        if n > 0:
            x = t[lo]
            for i in range(lo, hi):
                tau_all[i] = t[i] - x
        f, ssr = _evaluate(
            True, tau_all[lo:hi], z[lo:hi], params[j], prior_mu[j], prior_w[j], 1.0 / s2[j],
            hess, grad, gnd, jtj, jtr, so,
        )
        out_f[j] = f + 0.5 * n * math.log(s2[j])
        out_ssr[j] = ssr
        for k in range(6):
            out_g[j, k] = grad[k]
            for m in range(6):
                out_h[j, k, m] = hess[k, m]
                out_jtj[j, k, m] = jtj[k, m]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def predict_batch(t, offsets, x, params, paper, out):
    """Evaluate the model at flat times ``t`` (CSR ``offsets``) for each trace."""
    n_traces = offsets.shape[0] - 1
    for j in prange(n_traces):
        p = params[j]
        for i in range(offsets[j], offsets[j + 1]):
            tau = t[i] - x[j]
            if paper:
                out[i] = (
                    p[1] * math.exp(-0.5 * p[0] * tau) * math.cos(p[2] * tau - p[4])
                    + p[5] * tau
                    + p[3]
                )
            else:
                ec, es, eds = _general_basis(p[0], p[2], tau)
                out[i] = p[1] * ec + p[4] * es + p[5] * tau + p[3]
