"""The fit kernel's last evaluation: J^T J, J^T r, SSR, Hessian and gradient without a second pass.

``fit_batch`` maps the minimiser's last accepted evaluation from normalised to original units
(general-space fits are evaluated once in paper space); these tests hold those quantities to a
fresh ``objective_terms`` / ``terms_batch`` evaluation at the returned signatures, and the
gradient to central differences of the documented objective.
"""

import numpy as np
import pytest

from greyanom.traces import Traces, fit_traces, objective_terms
from greyanom.traces._fit import _terms, prior_gradient

TRUE = np.array([0.25, 1.5, 0.6, 3.0, 0.4, 0.02])


def alpha(p, tau):
    g, r, w, y, phi, c = p
    return r * np.exp(-g * tau / 2) * np.cos(w * tau - phi) + c * tau + y


def _traces(seed, *, scale=1.0, t0=2.0, n_traces=6, short=False):
    """Noisy traces in the units ``scale`` and starting at ``t0`` (the unit map is exercised)."""
    rng = np.random.default_rng(seed)
    times, values = [], []
    for j in range(n_traces):
        n = 4 if short and j == 0 else int(rng.integers(40, 120))
        t = np.sort(rng.uniform(t0, t0 + 40.0, n))
        p = TRUE * (1 + 0.05 * rng.normal(size=6))
        values.append(scale * (alpha(p, t - t[0]) + rng.normal(0, 0.02, n)))
        times.append(t)
    return Traces.from_arrays(times, values)


def _scaled_close(a, b, rtol=1e-9):
    """``a == b`` to ``rtol`` of the largest entry of each trace's block."""
    a, b = np.asarray(a), np.asarray(b)
    axes = tuple(range(1, a.ndim))
    scale = np.max(np.abs(b), axis=axes, keepdims=True) if axes else np.abs(b)
    err = np.abs(a - b) / scale
    assert np.all(err <= rtol), f"largest scaled difference {err.max():.3g} > {rtol:g}"


CASES = {
    "general, no prior": dict(),
    "paper, no prior": dict(model="paper"),
    "paper, noise_sd": dict(model="paper", noise_sd=0.02),
    "prior": dict(prior=(TRUE, np.array([0.05, 0.3, 0.05, 0.2, 0.2, 0.01])), noise_sd=0.02),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("scale, t0", [(1.0, 0.0), (1e4, 1e3), (1e-5, 7.0)])
def test_fit_returns_the_terms_of_a_fresh_evaluation(case, scale, t0):
    kw = dict(CASES[case])
    if "prior" in kw:  # the prior in the data's units
        mean, sd = kw["prior"]
        u = np.array([1.0, scale, 1.0, scale, 1.0, scale])
        kw["prior"] = (mean * u, sd * u)
    if "noise_sd" in kw:
        kw["noise_sd"] = kw["noise_sd"] * scale
    tr = _traces(1, scale=scale, t0=t0, short="prior" in kw)
    fit = fit_traces(tr, **kw)
    ok = np.isfinite(fit.params.to_numpy()).all(axis=1)
    assert ok.sum() >= 5
    sub = tr[np.flatnonzero(ok)]
    p = fit.params.to_numpy()[ok]
    prior = kw.get("prior")
    mean = np.zeros(6) if prior is None else prior[0]
    sd = None if prior is None else prior[1]
    w = np.zeros((ok.sum(), 6)) if prior is None else np.broadcast_to(1 / sd**2, (ok.sum(), 6))
    s2 = np.full(ok.sum(), kw.get("noise_sd", 1.0) ** 2)
    f, g, h, jtj, ssr = _terms(sub, p, np.broadcast_to(mean, (ok.sum(), 6)), w, s2, fit.x[ok])
    _scaled_close(fit.jtj[ok], jtj)
    np.testing.assert_allclose(fit.ssr[ok], ssr, rtol=1e-9)
    # gradient of the documented cost: what objective_terms gives with the same prior and noise_sd
    _, g_ref, h_ref = objective_terms(sub, p, prior=prior, noise_sd=kw.get("noise_sd"), origin=fit.x[ok])
    grad_scale = np.sqrt(np.abs(np.diagonal(h_ref, axis1=1, axis2=2)) * np.abs(f)[:, None]) + np.abs(g_ref)
    assert np.all(np.abs(fit.gradient[ok] - g_ref) <= 1e-7 * grad_scale)
    # J^T r: the gradient of SSR / 2 is -J^T r
    _, g_ssr, _ = objective_terms(sub, p, origin=fit.x[ok])
    jtr_scale = np.sqrt(np.diagonal(jtj, axis1=1, axis2=2) * ssr[:, None])
    assert np.all(np.abs(fit.jtr[ok] + g_ssr) <= 1e-7 * jtr_scale)
    # the Hessian with the noise level the fit used (the given one, or SSR / (n - 6))
    noise = kw.get("noise_sd")
    if noise is not None:
        _scaled_close(fit.hessian[ok], h_ref, rtol=1e-8)
    else:
        s2_fit = fit.noise_sd[ok] ** 2
        _, _, h_fit = objective_terms(sub, p, noise_sd=np.sqrt(s2_fit), origin=fit.x[ok])
        _scaled_close(fit.hessian[ok], h_fit, rtol=1e-8)
    # rows that were not fitted stay NaN
    assert np.isnan(fit.jtr[~ok]).all() and np.isnan(fit.gradient[~ok]).all()


def test_gradient_matches_central_differences_of_the_cost_at_an_active_bound():
    """A prior that pulls omega below 0 leaves omega on its bound with a non-zero gradient."""
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(2.0, 42.0, 60))
    p = np.array([0.25, 1.5, 0.0, 3.0, 0.0, 0.02])  # no oscillation
    z = alpha(p, t - t[0]) + rng.normal(0, 0.02, t.size)
    tr = Traces.from_arrays([t], [z])
    mean, sd = np.array([0.25, 1.5, -0.5, 3.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.1, 1.0, 0.1, 1.0])
    fit = fit_traces(tr, prior=(mean, sd), noise_sd=0.02)
    s = fit.params.to_numpy()[0]
    assert fit.success[0] and s[2] == 0.0 and fit.gradient[0, 2] > 1.0  # pushed against omega >= 0

    def cost(v):
        return objective_terms(tr, v[None], prior=(mean, sd), noise_sd=0.02)[0][0]

    fd = np.empty(6)
    for k in range(6):
        h = 1e-6 * max(1.0, abs(s[k]))
        e = np.zeros(6)
        e[k] = h
        fd[k] = (cost(s + e) - cost(s - e)) / (2 * h)
    np.testing.assert_allclose(fit.gradient[0], fd, rtol=1e-5, atol=1e-4)


def test_prior_gradient_is_objective_terms_under_another_prior():
    """The detector's use: signatures fitted with a lot prior, gradient under the normal model."""
    tr = _traces(2)
    lot = (TRUE * 1.02, np.array([0.05, 0.3, 0.05, 0.2, 0.2, 0.01]))
    fit = fit_traces(tr, prior=lot, noise_sd=0.03)
    mean, sd, sigma = TRUE, np.array([0.1, 0.5, 0.1, 0.4, 0.3, 0.02]), 0.02
    p = fit.params.to_numpy()
    g = prior_gradient(fit.jtr, p, mean, sd, sigma)
    _, g_ref, h_ref = objective_terms(tr, p, prior=(mean, sd), noise_sd=sigma, origin=fit.x)
    scale = np.sqrt(np.abs(np.diagonal(h_ref, axis1=1, axis2=2))) + np.abs(g_ref)
    assert np.all(np.abs(g - g_ref) <= 1e-8 * scale)
