"""Slow, obviously correct NumPy references of the kernels in ``greyanom.traces._kernels``.

Each function mirrors one kernel but is written the plain way (complex square roots,
explicit Jacobians, ``numpy.linalg``), so that the kernels can be checked against it.
"""

import numpy as np

PAPER = ("gamma", "R", "omega", "y", "phi", "c")


def general_basis(gamma, kappa, tau):
    """(E C, E S, E dS/dkappa) through complex arithmetic (any sign of kappa)."""
    tau = np.asarray(tau, dtype=float)
    from math import factorial

    e = np.exp(-0.5 * gamma * tau)
    x = kappa * tau**2
    if abs(kappa) * tau.max(initial=0.0) ** 2 < 1.0:
        # Taylor series in x = kappa tau^2, 25 terms (cos/sin and d/dkappa term by term)
        c = sum((-x) ** n / factorial(2 * n) for n in range(25))
        s = tau * sum((-x) ** n / factorial(2 * n + 1) for n in range(25))
        ds = tau**3 * sum((-1) ** n * n * x ** (n - 1) / factorial(2 * n + 1) for n in range(1, 25))
        return e * c, e * s, e * ds
    w = np.sqrt(complex(kappa))
    c = np.cos(w * tau).real
    s = (np.sin(w * tau) / w).real
    ds = (tau * c - s) / (2 * kappa)
    return e * c, e * s, e * ds


def alpha_paper(p, tau):
    g, r, w, y, phi, c = p
    return r * np.exp(-g * tau / 2) * np.cos(w * tau - phi) + c * tau + y


def alpha_general(p, tau):
    g, a, kappa, y, b, c = p
    ec, es, _ = general_basis(g, kappa, tau)
    return a * ec + b * es + c * tau + y


def jacobian_paper(p, tau):
    """Rows (gamma, R, omega, y, phi, c) of d alpha / d s, from the notes' formula."""
    g, r, w, y, phi, c = p
    e = np.exp(-g * tau / 2)
    cc = np.cos(w * tau - phi)
    ss = np.sin(w * tau - phi)
    return np.stack(
        [-0.5 * tau * r * e * cc, e * cc, -tau * r * e * ss, np.ones_like(tau), r * e * ss, tau],
        axis=1,
    )


def jacobian_general(p, tau):
    g, a, kappa, y, b, c = p
    ec, es, eds = general_basis(g, kappa, tau)
    tr = a * ec + b * es
    return np.stack(
        [-0.5 * tau * tr, ec, -0.5 * tau * a * es + b * eds, np.ones_like(tau), es, tau], axis=1
    )


def alpha_hessians_paper(p, tau):
    """Second derivatives of alpha per point, shape (n, 6, 6), from the table of the notes."""
    g, r, w, y, phi, c = p
    e = np.exp(-g * tau / 2)
    cc = np.cos(w * tau - phi)
    ss = np.sin(w * tau - phi)
    h = np.zeros((tau.shape[0], 6, 6))
    entries = {
        (0, 0): 0.25 * tau**2 * r * e * cc,
        (0, 1): -0.5 * tau * e * cc,
        (0, 2): 0.5 * tau**2 * r * e * ss,
        (0, 4): -0.5 * tau * r * e * ss,
        (1, 2): -tau * e * ss,
        (1, 4): e * ss,
        (2, 2): -(tau**2) * r * e * cc,
        (2, 4): tau * r * e * cc,
        (4, 4): -r * e * cc,
    }
    for (i, j), val in entries.items():
        h[:, i, j] = val
        h[:, j, i] = val
    return h


def pass_paper(u, v, p):
    """(SSR, J^T J, J^T r, sum r H) in paper space."""
    r = v - alpha_paper(p, u)
    jac = jacobian_paper(p, u)
    so = np.einsum("i,ijk->jk", r, alpha_hessians_paper(p, u))
    return float(r @ r), jac.T @ jac, jac.T @ r, so


def pass_general(u, v, p):
    r = v - alpha_general(p, u)
    jac = jacobian_general(p, u)
    return float(r @ r), jac.T @ jac, jac.T @ r


def ls4(f1, f2, u, v):
    """SSR of least squares on the columns (f1, f2, u, 1), dependent columns dropped."""
    x = np.stack([f1, f2, u, np.ones_like(u)], axis=1)
    coef, *_ = np.linalg.lstsq(x, v, rcond=1e-8)
    r = v - x @ coef
    return float(r @ r), coef


def objective_paper(tau, z, p, mean=None, sd=None, sigma=1.0):
    """f(s) = n/2 ln sigma^2 + SSR/(2 sigma^2) + sum [ln sd + (s - mean)^2 / (2 sd^2)]."""
    r = z - alpha_paper(p, tau)
    f = 0.5 * tau.shape[0] * np.log(sigma**2) + (r @ r) / (2 * sigma**2)
    if mean is not None:
        f += np.sum(np.log(sd) + (np.asarray(p) - mean) ** 2 / (2 * sd**2))
    return float(f)


def gradient_hessian_paper(tau, z, p, mean=None, sd=None, sigma=1.0):
    """Exact gradient and Hessian of ``objective_paper`` (section 3.3 of the notes)."""
    ssr, jtj, jtr, so = pass_paper(tau, z, p)
    w = np.zeros(6) if mean is None else 1.0 / np.asarray(sd) ** 2
    d = np.zeros(6) if mean is None else np.asarray(p) - mean
    grad = -jtr / sigma**2 + w * d
    hess = (jtj - so) / sigma**2 + np.diag(w)
    return grad, hess


def canonicalise(p):
    """omega >= 0 and phi in [-pi/2, pi/2] by (w, phi) -> (-w, -phi), (R, phi) -> (-R, phi -+ pi)."""
    p = np.array(p, dtype=float)
    if p[2] < 0:
        p[2], p[4] = -p[2], -p[4]
    phi = (p[4] + np.pi) % (2 * np.pi) - np.pi
    if phi > np.pi / 2:
        phi, p[1] = phi - np.pi, -p[1]
    elif phi < -np.pi / 2:
        phi, p[1] = phi + np.pi, -p[1]
    p[4] = phi
    return p


def prepare(t, z):
    """(u, v, x, span, mean, sd) of one trace."""
    x = t.min()
    span = t.max() - x if t.max() > x else 1.0
    sd = z.std() if z.std() > 0 else 1.0
    return (t - x) / span, (z - z.mean()) / sd, x, span, z.mean(), sd


def to_normal_paper(p, span, mean, sd):
    g, r, w, y, phi, c = p
    return np.array([g * span, r / sd, w * span, (y - mean) / sd, phi, c * span / sd])


def to_normal_general(p, span, mean, sd):
    g, a, kappa, y, b, c = p
    return np.array([g * span, a / sd, kappa * span**2, (y - mean) / sd, b * span / sd, c * span / sd])


def spd_inverse(a):
    """Inverse, or None if not symmetric positive definite."""
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None
    return np.linalg.inv(a)


def fit_one(t, z, p0, *, paper=True):
    """Reference least-squares fit with scipy (for comparing minima)."""
    from scipy.optimize import least_squares

    tau = t - t.min()
    model = alpha_paper if paper else alpha_general
    jac = jacobian_paper if paper else jacobian_general
    res = least_squares(
        lambda p: model(p, tau) - z, p0, jac=lambda p: jac(p, tau), method="lm",
        xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=2000,
    )
    return res.x, float(2 * res.cost)


def posterior(jtj, s2, w, g):
    """``posterior_batch`` the plain way: ``H = jtj / s2 + diag(w)`` per row, ``numpy.linalg``."""
    H = jtj / s2[:, None, None] + np.stack([np.diag(r) for r in w])
    Hinv = np.linalg.inv(H)
    d = -np.linalg.solve(H, g[:, :, None])[:, :, 0]
    return d, np.diagonal(Hinv, axis1=1, axis2=2), np.einsum("mij,mji->m", Hinv, jtj)
