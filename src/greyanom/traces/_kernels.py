"""Numba kernels of the shape-signature fit.

Every function here takes plain NumPy arrays and scalars and never validates: the public
wrappers in :mod:`greyanom.traces._fit` prepare the input. Only the batch drivers
(``fit_batch``, ``terms_batch``, ``predict_batch`` and ``posterior_batch``) are
``parallel=True`` and loop over traces (or rows) with ``prange``; the per-trace functions are
serial. The batch drivers and the status and regime codes are this module's
interface to :mod:`greyanom.traces._fit`; every other kernel is private (``_`` prefix).

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

# the codes the kernels write (one table: greyanom.traces._status)
from greyanom.traces._status import (
    RG_CRITICAL,
    RG_DEGENERATE,
    RG_FAILED,
    RG_OVER,
    RG_UNDER,
    ST_FEW,
    ST_FTOL,
    ST_GTOL,
    ST_MAXITER,
    ST_NONFINITE,
    ST_RANGE,
    ST_XTOL,
)

#: fastmath without ``nnan``/``ninf``, so that NaN and inf checks keep working, and without
#: ``reassoc`` and ``contract``: with ``reassoc`` the code compiled in a process and the code
#: loaded from the cache in the next one rounded differently, and ill-conditioned fits turned
#: that into different numbers for the same seed (wafer scores up to 0.5 apart on LAM 9600).
#: ``tests/shape/test_reproducible.py`` compares a fresh compile with a cached load.
FASTMATH = {"nsz", "arcp", "afn"}

#: |kappa tau^2| below which C, S and dS/dkappa use their power series.
SERIES_CUT = 0.1


# Cold-start grid in normalised time (u in [0, 1]): decay rates (gamma / 2) and frequencies.
GRID_RATES = np.array([-1.0, 0.0, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0])
GRID_COARSE = (1, 3)  # indices of the rates 0 and 2.5 in GRID_RATES
# an arithmetic progression, so that cos/sin of every frequency follow by recurrence
GRID_FREQS = 1.5 + 3.0 * np.arange(25)
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
def _pass_general(u, v, p, jtj, jtr):
    """One pass in general space: fill ``J^T J`` and ``J^T r``; return the SSR."""
    gamma, ca, kappa, y, cb, c = p[0], p[1], p[2], p[3], p[4], p[5]
    ssr = 0.0
    b0 = 0.0
    a00 = 0.0
    b1 = 0.0
    a10 = 0.0
    a11 = 0.0
    b2 = 0.0
    a20 = 0.0
    a21 = 0.0
    a22 = 0.0
    b3 = 0.0
    a30 = 0.0
    a31 = 0.0
    a32 = 0.0
    a33 = 0.0
    b4 = 0.0
    a40 = 0.0
    a41 = 0.0
    a42 = 0.0
    a43 = 0.0
    a44 = 0.0
    b5 = 0.0
    a50 = 0.0
    a51 = 0.0
    a52 = 0.0
    a53 = 0.0
    a54 = 0.0
    a55 = 0.0
    for i in range(u.shape[0]):
        tau = u[i]
        ec, es, eds = _general_basis(gamma, kappa, tau)
        g = ca * ec + cb * es
        r = v[i] - (g + c * tau + y)
        ssr += r * r
        j0 = -0.5 * tau * g
        j1 = ec
        j2 = -0.5 * tau * ca * es + cb * eds
        j3 = 1.0
        j4 = es
        j5 = tau
        b0 += j0 * r
        a00 += j0 * j0
        b1 += j1 * r
        a10 += j1 * j0
        a11 += j1 * j1
        b2 += j2 * r
        a20 += j2 * j0
        a21 += j2 * j1
        a22 += j2 * j2
        b3 += j3 * r
        a30 += j3 * j0
        a31 += j3 * j1
        a32 += j3 * j2
        a33 += j3 * j3
        b4 += j4 * r
        a40 += j4 * j0
        a41 += j4 * j1
        a42 += j4 * j2
        a43 += j4 * j3
        a44 += j4 * j4
        b5 += j5 * r
        a50 += j5 * j0
        a51 += j5 * j1
        a52 += j5 * j2
        a53 += j5 * j3
        a54 += j5 * j4
        a55 += j5 * j5
    jtr[0] = b0
    jtj[0, 0] = a00
    jtr[1] = b1
    jtj[1, 0] = a10
    jtj[0, 1] = a10
    jtj[1, 1] = a11
    jtr[2] = b2
    jtj[2, 0] = a20
    jtj[0, 2] = a20
    jtj[2, 1] = a21
    jtj[1, 2] = a21
    jtj[2, 2] = a22
    jtr[3] = b3
    jtj[3, 0] = a30
    jtj[0, 3] = a30
    jtj[3, 1] = a31
    jtj[1, 3] = a31
    jtj[3, 2] = a32
    jtj[2, 3] = a32
    jtj[3, 3] = a33
    jtr[4] = b4
    jtj[4, 0] = a40
    jtj[0, 4] = a40
    jtj[4, 1] = a41
    jtj[1, 4] = a41
    jtj[4, 2] = a42
    jtj[2, 4] = a42
    jtj[4, 3] = a43
    jtj[3, 4] = a43
    jtj[4, 4] = a44
    jtr[5] = b5
    jtj[5, 0] = a50
    jtj[0, 5] = a50
    jtj[5, 1] = a51
    jtj[1, 5] = a51
    jtj[5, 2] = a52
    jtj[2, 5] = a52
    jtj[5, 3] = a53
    jtj[3, 5] = a53
    jtj[5, 4] = a54
    jtj[4, 5] = a54
    jtj[5, 5] = a55
    return ssr


@njit(cache=True, fastmath=FASTMATH)
def _pass_paper(u, v, p, jtj, jtr, so):
    """One fused pass in paper space.

    Fills ``J^T J``, ``J^T r`` and the second-order term ``so = sum_i r_i H_i`` (the 9
    reductions of the notes, section 3.3); returns the SSR.
    """
    gamma, rr, omega, y, phi, c = p[0], p[1], p[2], p[3], p[4], p[5]
    ssr = 0.0
    s_gg = 0.0
    s_gr = 0.0
    s_gw = 0.0
    s_gf = 0.0
    s_rw = 0.0
    s_rf = 0.0
    s_wf = 0.0
    s_ff = 0.0
    b0 = 0.0
    a00 = 0.0
    b1 = 0.0
    a10 = 0.0
    a11 = 0.0
    b2 = 0.0
    a20 = 0.0
    a21 = 0.0
    a22 = 0.0
    b3 = 0.0
    a30 = 0.0
    a31 = 0.0
    a32 = 0.0
    a33 = 0.0
    b4 = 0.0
    a40 = 0.0
    a41 = 0.0
    a42 = 0.0
    a43 = 0.0
    a44 = 0.0
    b5 = 0.0
    a50 = 0.0
    a51 = 0.0
    a52 = 0.0
    a53 = 0.0
    a54 = 0.0
    a55 = 0.0
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
        j0 = -0.5 * tau * rec
        j1 = ec
        j2 = -tau * res
        j3 = 1.0
        j4 = res
        j5 = tau
        b0 += j0 * r
        a00 += j0 * j0
        b1 += j1 * r
        a10 += j1 * j0
        a11 += j1 * j1
        b2 += j2 * r
        a20 += j2 * j0
        a21 += j2 * j1
        a22 += j2 * j2
        b3 += j3 * r
        a30 += j3 * j0
        a31 += j3 * j1
        a32 += j3 * j2
        a33 += j3 * j3
        b4 += j4 * r
        a40 += j4 * j0
        a41 += j4 * j1
        a42 += j4 * j2
        a43 += j4 * j3
        a44 += j4 * j4
        b5 += j5 * r
        a50 += j5 * j0
        a51 += j5 * j1
        a52 += j5 * j2
        a53 += j5 * j3
        a54 += j5 * j4
        a55 += j5 * j5
        ra = r * rec
        rb = r * res
        t2 = tau * tau
        s_gg += t2 * ra
        s_gr += tau * r * ec
        s_gw += t2 * rb
        s_gf += tau * rb
        s_rw += tau * r * es
        s_rf += r * es
        s_wf += tau * ra
        s_ff += ra
    jtr[0] = b0
    jtj[0, 0] = a00
    jtr[1] = b1
    jtj[1, 0] = a10
    jtj[0, 1] = a10
    jtj[1, 1] = a11
    jtr[2] = b2
    jtj[2, 0] = a20
    jtj[0, 2] = a20
    jtj[2, 1] = a21
    jtj[1, 2] = a21
    jtj[2, 2] = a22
    jtr[3] = b3
    jtj[3, 0] = a30
    jtj[0, 3] = a30
    jtj[3, 1] = a31
    jtj[1, 3] = a31
    jtj[3, 2] = a32
    jtj[2, 3] = a32
    jtj[3, 3] = a33
    jtr[4] = b4
    jtj[4, 0] = a40
    jtj[0, 4] = a40
    jtj[4, 1] = a41
    jtj[1, 4] = a41
    jtj[4, 2] = a42
    jtj[2, 4] = a42
    jtj[4, 3] = a43
    jtj[3, 4] = a43
    jtj[4, 4] = a44
    jtr[5] = b5
    jtj[5, 0] = a50
    jtj[0, 5] = a50
    jtj[5, 1] = a51
    jtj[1, 5] = a51
    jtj[5, 2] = a52
    jtj[2, 5] = a52
    jtj[5, 3] = a53
    jtj[3, 5] = a53
    jtj[5, 4] = a54
    jtj[4, 5] = a54
    jtj[5, 5] = a55
    for k in range(6):
        for m in range(6):
            so[k, m] = 0.0
    s_ww = -s_gg
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
def _grid_point(f1, f2, us, vs, lin, coef):
    """Variable projection at one grid point: least squares on (f1, f2, u, 1); return SSR.

    ``lin`` holds the constant part: the inverse Gram matrix of the columns ``(u, 1)``
    (``lin[0:3]`` = entries 00, 01, 11), ``L^T v`` (``lin[3:5]``) and ``v^T P v``
    (``lin[5]``), ``P`` the projection off ``(u, 1)``. The two transient columns are
    projected off ``(u, 1)`` by block elimination; a column whose projection is below
    ``1e-10`` of its norm is dropped (coefficient zero). ``coef`` gets ``(a1, a2, c, y)``.
    """
    s11 = 0.0
    s12 = 0.0
    s22 = 0.0
    s1u = 0.0
    s2u = 0.0
    s1c = 0.0
    s2c = 0.0
    s1z = 0.0
    s2z = 0.0
    for j in range(us.shape[0]):
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
    i00, i01, i11, lu, lc, vpv = lin[0], lin[1], lin[2], lin[3], lin[4], lin[5]
    # K = G_LL^{-1} L^T F (2 x 2: rows u/1, columns f1/f2)
    k01 = i00 * s1u + i01 * s1c
    k11 = i01 * s1u + i11 * s1c
    k02 = i00 * s2u + i01 * s2c
    k12 = i01 * s2u + i11 * s2c
    # F^T P F and F^T P v
    p11 = s11 - (s1u * k01 + s1c * k11)
    p12 = s12 - (s1u * k02 + s1c * k12)
    p22 = s22 - (s2u * k02 + s2c * k12)
    q1 = s1z - (k01 * lu + k11 * lc)
    q2 = s2z - (k02 * lu + k12 * lc)
    use1 = p11 > 1e-10 * s11 and s11 > 0.0
    use2 = p22 > 1e-10 * s22 and s22 > 0.0
    a1 = 0.0
    a2 = 0.0
    fit = 0.0
    if use1 and use2:
        det = p11 * p22 - p12 * p12
        if det > 1e-10 * p11 * p22:
            a1 = (p22 * q1 - p12 * q2) / det
            a2 = (p11 * q2 - p12 * q1) / det
            fit = a1 * q1 + a2 * q2
        else:
            use2 = False
    if use1 and not use2:
        a1 = q1 / p11
        fit = a1 * q1
    elif use2 and not use1:
        a2 = q2 / p22
        fit = a2 * q2
    # line coefficients: G_LL^{-1} (L^T v - L^T F a)
    ru = lu - (s1u * a1 + s2u * a2)
    rc = lc - (s1c * a1 + s2c * a2)
    coef[0] = a1
    coef[1] = a2
    coef[2] = i00 * ru + i01 * rc
    coef[3] = i01 * ru + i11 * rc
    return vpv - fit


@njit(cache=True, fastmath=FASTMATH)
def _grid_start(u, v, general, p):
    """Cold start: best point of a (rate, frequency) grid by variable projection.

    For fixed decay rates and frequency the model is linear in the two transient
    coefficients, ``c`` and ``y``; each grid point is solved exactly on a strided
    subsample of at most ``GRID_POINTS`` points. Oscillating candidates are searched on
    every frequency of ``GRID_FREQS`` with the rates ``GRID_COARSE``, then on every rate at
    the best frequency; in general space one-exponential-plus-``t e^{-rate t}``
    (critical) and two-exponential (overdamped) candidates are tried as well; in paper
    space the single exponentials (``omega = 0``). Writes the start into ``p`` (general
    space when ``general`` else paper space); returns its SSR on the subsample.
    """
    n = u.shape[0]
    stride = max(1, (n + GRID_POINTS - 1) // GRID_POINTS)
    m = (n + stride - 1) // stride
    nr = GRID_RATES.shape[0]
    nf = GRID_FREQS.shape[0]
    ex = np.empty((nr, m))
    us = np.empty(m)
    vs = np.empty(m)
    for j in range(m):
        tau = u[j * stride]
        us[j] = tau
        vs[j] = v[j * stride]
        for a in range(nr):
            ex[a, j] = math.exp(-GRID_RATES[a] * tau)
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
    det = s_uu * s_1 - s_u * s_u
    lin = np.empty(6)
    if det > 1e-12 * s_uu * s_1:
        lin[0] = s_1 / det
        lin[1] = -s_u / det
        lin[2] = s_uu / det
    else:  # a single distinct time: only the constant column
        lin[0] = 0.0
        lin[1] = 0.0
        lin[2] = 1.0 / s_1
    lin[3] = s_uz
    lin[4] = s_z
    lin[5] = s_zz - (lin[0] * s_uz * s_uz + 2.0 * lin[1] * s_uz * s_z + lin[2] * s_z * s_z)
    coef = np.zeros(4)
    f1 = np.empty(m)
    f2 = np.empty(m)
    co = np.empty((nf, m))
    si = np.empty((nf, m))
    best = np.inf
    best_f = 0
    # oscillating candidates: all frequencies, coarse rates
    dw = GRID_FREQS[1] - GRID_FREQS[0]
    for j in range(m):
        c1 = math.cos(dw * us[j])
        s1 = math.sin(dw * us[j])
        co[0, j] = math.cos(GRID_FREQS[0] * us[j])
        si[0, j] = math.sin(GRID_FREQS[0] * us[j])
        for ib in range(1, nf):
            co[ib, j] = co[ib - 1, j] * c1 - si[ib - 1, j] * s1
            si[ib, j] = si[ib - 1, j] * c1 + co[ib - 1, j] * s1
    for ib in range(nf):
        for ia in GRID_COARSE:
            for j in range(m):
                f1[j] = ex[ia, j] * co[ib, j]
                f2[j] = ex[ia, j] * si[ib, j]
            ssr = _grid_point(f1, f2, us, vs, lin, coef)
            if ssr < best:
                best = ssr
                best_f = ib
                _grid_store_osc(general, GRID_RATES[ia], GRID_FREQS[ib], coef, p)
    # every rate at the best frequency
    ib = best_f
    for ia in range(nr):
        for j in range(m):
            f1[j] = ex[ia, j] * co[ib, j]
            f2[j] = ex[ia, j] * si[ib, j]
        ssr = _grid_point(f1, f2, us, vs, lin, coef)
        if ssr < best:
            best = ssr
            _grid_store_osc(general, GRID_RATES[ia], GRID_FREQS[ib], coef, p)
    # non-oscillating candidates
    for ia in range(nr):
        for ib in range(ia, nr):
            if ib == ia:
                for j in range(m):
                    f1[j] = ex[ia, j]
                    f2[j] = us[j] * ex[ia, j] if general else 0.0
            elif general:
                for j in range(m):
                    f1[j] = ex[ia, j]
                    f2[j] = ex[ib, j]
            else:
                continue
            ssr = _grid_point(f1, f2, us, vs, lin, coef)
            if ssr < best:
                best = ssr
                p[3] = coef[3]
                p[5] = coef[2]
                if ib == ia:
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
def _grid_store_osc(general, rate, w, coef, p):
    p[0] = 2.0 * rate
    p[3] = coef[3]
    p[5] = coef[2]
    if general:
        p[1] = coef[0]
        p[2] = w * w
        p[4] = w * coef[1]
    else:
        p[2] = w
        _to_polar(coef[0], coef[1], p)


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
def _canonicalise(p):
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
        ssr = _pass_paper(u, v, p, jtj, jtr, so)
    else:
        ssr = _pass_general(u, v, p, jtj, jtr)
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
def _minimise(paper, u, v, p, mu, w, inv_s2, bounded, max_iter, tol):
    """Levenberg-Marquardt / damped Newton from ``p`` (updated in place).

    ``paper`` selects paper space with the exact Hessian (trust-region Newton with
    Levenberg damping) or general space with Gauss-Newton. In paper space ``omega >= 0``
    and ``phi`` in [-pi/2, pi/2] are kept by projection when ``bounded`` (a prior is
    present) and by the symmetries of the model otherwise.

    Returns ``(status, n_iter, F, ssr)``.
    """
    jtj = np.empty((6, 6))
    jtr = np.empty(6)
    so = np.zeros((6, 6))
    return _minimise_terms(paper, u, v, p, mu, w, inv_s2, bounded, max_iter, tol, jtj, jtr, so)


@njit(cache=True, fastmath=FASTMATH)
def _minimise_terms(paper, u, v, p, mu, w, inv_s2, bounded, max_iter, tol, jtj, jtr, so):
    """:func:`_minimise` that also leaves the last accepted evaluation's terms.

    On return ``jtj``, ``jtr`` and ``so`` (``so`` in paper space only) hold ``J^T J``,
    ``J^T r`` and ``sum_i r_i H_i`` of the normalised trace at the returned ``p`` (trial
    points are evaluated into separate buffers, so a rejected last step leaves them alone).
    """
    hess = np.empty((6, 6))
    grad = np.empty(6)
    gnd = np.empty(6)
    jtj2 = np.empty((6, 6))
    jtr2 = np.empty(6)
    so2 = np.zeros((6, 6))
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
                _canonicalise(trial)
        pred = 0.0
        for k in range(6):
            s = 0.0
            for m in range(6):
                s += hess[k, m] * step[m]
            pred -= grad[k] * step[k] + 0.5 * step[k] * s
        f2, ssr2 = _evaluate(paper, u, v, trial, mu, w, inv_s2, h2, g2, gnd2, jtj2, jtr2, so2)
        accepted = math.isfinite(f2) and f2 < f
        if accepted:
            rho = (f - f2) / pred if pred > 0.0 else 0.0
            df = f - f2
            fold = f
            for k in range(6):
                p[k] = trial[k]
                grad[k] = g2[k]
                gnd[k] = gnd2[k]
                jtr[k] = jtr2[k]
                for m in range(6):
                    hess[k, m] = h2[k, m]
                    jtj[k, m] = jtj2[k, m]
                    so[k, m] = so2[k, m]
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
def _prepare(t, z, lo, hi, u, v, origin):
    """Normalise one trace into ``u``, ``v``; return ``(x, T, mean, sd)``.

    ``x`` is ``origin`` when it is finite (the step's start), else the first sample time.
    The mean and sd are computed in units of the largest absolute value, so values near the
    floating-point limits (e.g. 1e200) do not overflow.
    """
    n = hi - lo
    x = origin if math.isfinite(origin) else t[lo]
    span = t[hi - 1] - x
    if not (span > 0.0):
        span = 1.0
    big = 0.0
    for i in range(lo, hi):
        a = abs(z[i])
        if a > big:
            big = a
    if not (big > 0.0) or not math.isfinite(big):
        big = 1.0
    mean = 0.0
    for i in range(lo, hi):
        mean += z[i] / big
    mean /= n
    var = 0.0
    for i in range(lo, hi):
        d = z[i] / big - mean
        var += d * d
    mean *= big
    sd = math.sqrt(var / n) * big
    if not (sd > 0.0) or not math.isfinite(sd):
        sd = 1.0
    for i in range(lo, hi):
        u[i] = (t[i] - x) / span
        v[i] = (z[i] - mean) / sd
    return x, span, mean, sd


@njit(cache=True, fastmath=FASTMATH)
def _to_normal(paper, p, span, mean, sd, out):
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
def _from_normal(paper, p, span, mean, sd, out):
    """Map normalised parameters back to original units (inverse of ``_to_normal``)."""
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


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _lower_inverse(ll, li):
    """Write ``L^-1`` into the lower triangle of ``li`` for a lower-triangular ``ll`` with a
    positive diagonal (forward substitution; the upper triangle of ``li`` is left as it is)."""
    n = ll.shape[0]
    for i in range(n):
        li[i, i] = 1.0 / ll[i, i]
        for j in range(i):
            s = 0.0
            for k in range(j, i):
                s -= ll[i, k] * li[k, j]
            li[i, j] = s / ll[i, i]


@njit(cache=True, fastmath=FASTMATH)
def _spd_inverse(a, out):
    """Inverse of a symmetric positive definite 6x6 matrix by Cholesky; False if not SPD.

    A pivot below ``1e-13`` of its diagonal entry counts as singular.
    """
    n = a.shape[0]
    ll = np.zeros((n, n))
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= ll[j, k] * ll[j, k]
        if not (s > 1e-13 * abs(a[j, j])) or not math.isfinite(s):
            return False
        d = math.sqrt(s)
        ll[j, j] = d
        for i in range(j + 1, n):
            s2 = a[i, j]
            for k in range(j):
                s2 -= ll[i, k] * ll[j, k]
            ll[i, j] = s2 / d
    # invert L, then out = L^-T L^-1
    li = np.zeros((n, n))
    _lower_inverse(ll, li)
    for i in range(n):
        for j in range(i + 1):
            s = 0.0
            for k in range(i, n):
                s += li[k, i] * li[k, j]
            out[i, j] = s
            out[j, i] = s
    return True


# The per-trace fit and its steps divide with IEEE semantics (``error_model="numpy"``: x / 0
# is inf or NaN, which the status checks catch), as the body of a ``prange`` loop does; the
# default Python error model would raise ZeroDivisionError from inside the batch.



@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _prior_to_normal(prior_mu, prior_w, span, mean, sd, mu, w):
    """Map a paper-space prior (mean, weights ``1 / sd^2``) to normalised units; True if any weight."""
    bounded = False
    for k in range(6):
        if prior_w[k] > 0.0:
            bounded = True
    if bounded:
        _to_normal(True, prior_mu, span, mean, sd, mu)
        w[0] = prior_w[0] / (span * span)
        w[1] = prior_w[1] * sd * sd
        w[2] = prior_w[2] / (span * span)
        w[3] = prior_w[3] * sd * sd
        w[4] = prior_w[4]
        w[5] = prior_w[5] * sd * sd / (span * span)
    return bounded


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _start(u, v, paper, init, has_init, bounded, mu, w, is2, span, mean, sd, p):
    """Write the start of the minimiser into ``p`` (normalised units).

    The given ``init`` where there is one, else the cold-start grid; with a prior and no
    ``init``, the prior mean when its objective beats the grid's start.
    """
    if has_init:
        _to_normal(paper, init, span, mean, sd, p)
        if paper:
            _canonicalise(p)
            if bounded and p[2] < 0.0:
                p[2] = 0.0
    else:
        _grid_start(u, v, not paper, p)
    if bounded and not has_init:
        q = np.empty(6)
        for k in range(6):
            q[k] = mu[k]
        _canonicalise(q)
        if q[2] < 0.0:
            q[2] = 0.0
        jt = np.empty((6, 6))
        jr = np.empty(6)
        s6 = np.empty((6, 6))
        hq = np.empty((6, 6))
        gq = np.empty(6)
        dq = np.empty(6)
        fq, _ = _evaluate(True, u, v, q, mu, w, is2, hq, gq, dq, jt, jr, s6)
        fp, _ = _evaluate(True, u, v, p, mu, w, is2, hq, gq, dq, jt, jr, s6)
        if fq < fp or not math.isfinite(fp):
            for k in range(6):
                p[k] = q[k]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _regime(paper, p, critical_tol, degenerate_tol):
    """Damping regime code of normalised parameters ``p``."""
    if paper:
        kn = p[2] * p[2]
        amp = abs(p[1])
    else:
        kn = p[2]
        amp = abs(p[1]) + abs(p[4])
    if amp <= degenerate_tol:
        return RG_DEGENERATE
    if kn > critical_tol:
        return RG_UNDER
    if kn < -critical_tol:
        return RG_OVER
    return RG_CRITICAL


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _paper_signature(paper, q, regime, pp):
    """The paper signature ``pp`` of fitted parameters ``q`` in original units (NaN where (11) has none)."""
    for k in range(6):
        pp[k] = q[k]
    if not paper:
        pp[1] = np.nan
        pp[2] = np.nan
        pp[4] = np.nan
        if regime == RG_UNDER:
            omega = math.sqrt(q[2])
            pp[2] = omega
            _to_polar(q[1], q[4] / omega, pp)
        elif regime == RG_DEGENERATE:
            pp[0] = np.nan
            pp[1] = 0.0


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _to_original_terms(span, sd, jtj, jtr, so):
    """Map ``J^T J``, ``J^T r`` and ``sum r H`` of the last evaluation from normalised to original units.

    ``d(normalised p_k)/d(original p_k) = a_k`` and the residuals scale by ``sd``.
    """
    a = np.empty(6)
    a[0] = span
    a[1] = 1.0 / sd
    a[2] = span
    a[3] = 1.0 / sd
    a[4] = 1.0
    a[5] = span / sd
    sd2 = sd * sd
    for k in range(6):
        jtr[k] *= sd2 * a[k]
        for m in range(6):
            akm = sd2 * a[k] * a[m]
            jtj[k, m] *= akm
            so[k, m] *= akm


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _write_terms(pp, jtj, jtr, so, prior_mu, prior_w, noise_s2, s2, bounded, out_hess, out_jtj, out_cov, out_jtr, out_grad):
    """Objective Hessian ``K / s2 + W`` (``K = J^T J - sum r H``), gradient and Laplace covariance."""
    hess = np.empty((6, 6))
    gs2 = noise_s2 if noise_s2 > 0.0 else 1.0
    for k in range(6):
        out_jtr[k] = jtr[k]
        out_grad[k] = -jtr[k] / gs2 + prior_w[k] * (pp[k] - prior_mu[k])
        for m in range(6):
            hess[k, m] = jtj[k, m] - so[k, m]
            out_jtj[k, m] = jtj[k, m]
            out_hess[k, m] = hess[k, m] / s2
        out_hess[k, k] += prior_w[k]
    cov = np.empty((6, 6))
    if bounded or not math.isnan(noise_s2):
        if _spd_inverse(out_hess, cov):
            for k in range(6):
                for m in range(6):
                    out_cov[k, m] = cov[k, m]
    elif math.isfinite(s2):
        if _spd_inverse(hess, cov):
            for k in range(6):
                for m in range(6):
                    out_cov[k, m] = cov[k, m] * s2


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _fit_one(t, z, u, v, origin, paper, init, has_init, prior_mu, prior_w, noise_s2, opts, p_out, pp_out, out_hess, out_jtj,
             out_cov, out_jtr, out_grad):
    """Fit one trace and post-process it (serial); ``fit_batch`` calls it for every trace.

    ``t``, ``z`` are the trace's samples and ``u``, ``v`` scratch of the same length;
    ``origin``, ``init`` (6,), ``has_init``, ``prior_mu`` / ``prior_w`` (6,) and ``noise_s2``
    are the trace's entries of the batch inputs (see :func:`fit_batch`); ``opts`` is
    ``(min_points, max_iter, tol, critical_tol, degenerate_tol)``. The array outputs are the
    trace's rows of the batch outputs, which the caller has filled with NaN.

    Returns ``(status, n_iter, x, ssr, regime, s2)``.
    """
    min_points, max_iter, tol, critical_tol, degenerate_tol = opts
    n = t.shape[0]
    if n == 0:
        return ST_FEW, 0, np.nan, np.nan, RG_FAILED, np.nan
    x, span, mean, sd = _prepare(t, z, 0, n, u, v, origin)
    if n < min_points:
        return ST_FEW, 0, x, np.nan, RG_FAILED, np.nan
    p = np.empty(6)
    mu = np.zeros(6)
    w = np.zeros(6)
    bounded = _prior_to_normal(prior_mu, prior_w, span, mean, sd, mu, w)
    is2 = 1.0
    if bounded:
        is2 = sd * sd / noise_s2
    _start(u, v, paper, init, has_init, bounded, mu, w, is2, span, mean, sd, p)
    jtj = np.empty((6, 6))
    jtr = np.empty(6)
    so = np.zeros((6, 6))
    status, n_it, f, ssr = _minimise_terms(paper, u, v, p, mu, w, is2, bounded, max_iter, tol, jtj, jtr, so)
    if status < 0:
        return status, n_it, x, np.nan, RG_FAILED, np.nan
    ssr *= sd * sd
    if not math.isfinite(ssr):  # the fit is fine in scaled units, the data's units overflow
        return ST_RANGE, n_it, x, np.nan, RG_FAILED, np.nan
    regime = _regime(paper, p, critical_tol, degenerate_tol)
    q = np.empty(6)
    _from_normal(paper, p, span, mean, sd, q)
    for k in range(6):
        if not math.isfinite(q[k]):
            return ST_RANGE, n_it, x, np.nan, RG_FAILED, np.nan
    for k in range(6):
        p_out[k] = q[k]
    _paper_signature(paper, q, regime, pp_out)
    # noise variance for the Hessian and covariance
    s2 = noise_s2
    if not (s2 > 0.0):
        s2 = ssr / (n - 6) if n > 6 else np.nan
    for k in range(6):
        if not math.isfinite(pp_out[k]):
            return status, n_it, x, ssr, regime, s2
    # exact paper-space terms in original units
    if paper:
        _to_original_terms(span, sd, jtj, jtr, so)
    else:
        # general space: one evaluation in paper space (u is free again: reuse it for tau)
        for i in range(n):
            u[i] = t[i] - x
        _pass_paper(u, z, pp_out, jtj, jtr, so)
    _write_terms(pp_out, jtj, jtr, so, prior_mu, prior_w, noise_s2, s2, bounded, out_hess, out_jtj, out_cov, out_jtr,
                 out_grad)
    return status, n_it, x, ssr, regime, s2


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def fit_batch(t, z, offsets, origin, paper, init, has_init, prior_mu, prior_w, noise_s2, opts):
    """Fit every trace (CSR ``t``, ``z``, ``offsets``) with :func:`_fit_one`; parallel over traces.

    Inputs per trace: ``origin`` (n,) the time origin ``x`` (NaN: its first sample); ``init``
    (n, 6) starts in original units of the chosen space (used where ``has_init``);
    ``prior_mu``/``prior_w`` (n, 6) the paper-space prior mean and weights ``1 / sd^2`` in
    original units (weights zero: no prior); ``noise_s2`` (n,) the noise variance, or NaN to
    estimate it as ``SSR / (n - 6)``. ``opts = (min_points, max_iter, tol, critical_tol,
    degenerate_tol)``.

    Returns ``(p, pp, status, n_iter, x, ssr, regime, s2, hessian, jtj, covariance, jtr,
    gradient)``: fitted-space parameters and paper parameters (NaN where (11) has none),
    status, iterations, ``x``, SSR, regime code, the noise variance used, the exact
    paper-space Hessian of the objective, ``J^T J`` and the Laplace covariance (NaN where the
    Hessian is not SPD), ``J^T r`` (``r = z - alpha``) and the gradient of the objective
    ``SSR / (2 s2) + sum_d w_d (s_d - mu_d)^2 / 2`` (``s2`` the given ``noise_s2``, or 1
    without one: the gradient of ``SSR / 2``).

    The paper-space terms come from the minimiser's last accepted evaluation, mapped from
    normalised to original units (the map is diagonal and affine, so ``J^T J``, ``J^T r``
    and ``sum_i r_i H_i`` scale by ``sd^2 a_k a_m`` and ``sd^2 a_k``, ``a`` the derivative of
    the normalised parameters by the original ones): no second pass over the samples. A
    fit in general space is evaluated once in paper space at the returned signature.
    """
    n_traces = offsets.shape[0] - 1
    out_p = np.full((n_traces, 6), np.nan)
    out_pp = np.full((n_traces, 6), np.nan)
    status = np.empty(n_traces, dtype=np.int64)
    n_iter = np.empty(n_traces, dtype=np.int64)
    x = np.empty(n_traces)
    ssr = np.empty(n_traces)
    regime = np.empty(n_traces, dtype=np.int64)
    s2 = np.empty(n_traces)
    hess = np.full((n_traces, 6, 6), np.nan)
    jtj = np.full((n_traces, 6, 6), np.nan)
    cov = np.full((n_traces, 6, 6), np.nan)
    jtr = np.full((n_traces, 6), np.nan)
    grad = np.full((n_traces, 6), np.nan)
    u = np.empty(t.shape[0])
    v = np.empty(t.shape[0])
    for j in prange(n_traces):
        lo = offsets[j]
        hi = offsets[j + 1]
        st, it, xj, ssr_j, rg, s2_j = _fit_one(
            t[lo:hi], z[lo:hi], u[lo:hi], v[lo:hi], origin[j], paper, init[j], has_init[j], prior_mu[j], prior_w[j],
            noise_s2[j], opts, out_p[j], out_pp[j], hess[j], jtj[j], cov[j], jtr[j], grad[j],
        )
        status[j] = st
        n_iter[j] = it
        x[j] = xj
        ssr[j] = ssr_j
        regime[j] = rg
        s2[j] = s2_j
    return out_p, out_pp, status, n_iter, x, ssr, regime, s2, hess, jtj, cov, jtr, grad


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def terms_batch(t, z, offsets, params, prior_mu, prior_w, s2, out_f, out_g, out_h, out_jtj, out_ssr, origin):
    """Paper-space objective, gradient, Hessian, ``J^T J`` and SSR per trace (original units).

    ``f = n/2 ln s2 + SSR / (2 s2) + sum_d w_d (s_d - mu_d)^2 / 2`` (the ``ln sd`` terms of
    the prior are added by the caller). ``tau = t - origin`` (``origin`` NaN: ``t - min t``).
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
            x = origin[j] if math.isfinite(origin[j]) else t[lo]
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


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _posterior_one(jtj, s2, w, g, d, diag, ll, li):
    """Cholesky of ``H = jtj / s2 + diag(w)`` (6x6); writes ``d = -H^-1 g`` and ``diag(H^-1)``
    and returns ``(ok, tr(H^-1 jtj))``; ``ok`` False (and the outputs unset) where ``H`` is
    not positive definite or not finite."""
    n = 6
    for j in range(n):
        s = jtj[j, j] / s2 + w[j]
        for k in range(j):
            s -= ll[j, k] * ll[j, k]
        if not (s > 0.0) or not math.isfinite(s):
            return False, np.nan
        dj = math.sqrt(s)
        ll[j, j] = dj
        for i in range(j + 1, n):
            s_ij = jtj[i, j] / s2
            for k in range(j):
                s_ij -= ll[i, k] * ll[j, k]
            ll[i, j] = s_ij / dj
    _lower_inverse(ll, li)  # L^-1, lower triangular
    tr = 0.0
    for i in range(n):
        di = 0.0
        for j in range(n):
            # (H^-1)_ij = sum_k li[k, i] li[k, j], k >= max(i, j)
            hij = 0.0
            for k in range(max(i, j), n):
                hij += li[k, i] * li[k, j]
            di -= hij * g[j]
            tr += hij * jtj[j, i]
            if i == j:
                diag[i] = hij
        d[i] = di
    return True, tr


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def posterior_batch(jtj, s2, w, g):
    """Per row ``m``, with ``H = jtj[m] / s2[m] + diag(w[m])``: the step ``-H^-1 g[m]``, the
    diagonal of ``H^-1`` and ``tr(H^-1 jtj[m])``, by Cholesky; parallel over rows.

    Returns ``(d (m, 6), diag (m, 6), tr (m,), ok (m,))``; ``ok`` False where ``H`` is not
    positive definite (its outputs NaN).
    """
    m = jtj.shape[0]
    d = np.full((m, 6), np.nan)
    diag = np.full((m, 6), np.nan)
    tr = np.full(m, np.nan)
    ok = np.zeros(m, dtype=np.bool_)
    for r in prange(m):
        ll = np.zeros((6, 6))
        li = np.zeros((6, 6))
        good, t = _posterior_one(jtj[r], s2[r], w[r], g[r], d[r], diag[r], ll, li)
        if good:
            ok[r] = True
            tr[r] = t
        else:
            d[r, :] = np.nan
            diag[r, :] = np.nan
    return d, diag, tr, ok
