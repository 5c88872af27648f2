"""``posterior_batch``: the linearised E-step and the posterior variances of the held-out fold EMs."""

import importlib.util
import pathlib

import numpy as np

from greyanom.traces._kernels import posterior_batch

_spec = importlib.util.spec_from_file_location("shape_naive", pathlib.Path(__file__).with_name("naive.py"))
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)
posterior = naive.posterior


def _problem(rng, m):
    J = rng.standard_normal((m, 30, 6)) * rng.lognormal(0, 2, size=(m, 1, 6))
    jtj = np.einsum("mki,mkj->mij", J, J)
    s2 = rng.lognormal(0, 1, size=m)
    w = rng.lognormal(0, 3, size=(m, 6))
    g = rng.standard_normal((m, 6))
    return jtj, s2, w, g


def test_posterior_batch_matches_the_numpy_reference():
    jtj, s2, w, g = _problem(np.random.default_rng(0), 200)
    d, diag, tr, ok = posterior_batch(jtj, s2, w, g)
    d0, diag0, tr0 = posterior(jtj, s2, w, g)
    assert ok.all()
    np.testing.assert_allclose(d, d0, rtol=1e-9, atol=1e-12 * np.abs(d0).max())
    np.testing.assert_allclose(diag, diag0, rtol=1e-9)
    np.testing.assert_allclose(tr, tr0, rtol=1e-9)


def test_posterior_batch_flags_a_hessian_that_is_not_positive_definite():
    jtj, s2, w, g = _problem(np.random.default_rng(1), 3)
    jtj[1, 0, :] = jtj[1, :, 0] = 0.0  # a parameter without curvature ...
    w[1, 0] = 0.0  # ... and without a prior: H is singular
    w[2, 3] = np.nan
    d, diag, tr, ok = posterior_batch(jtj, s2, w, g)
    np.testing.assert_array_equal(ok, [True, False, False])
    assert np.isnan(d[1:]).all() and np.isnan(diag[1:]).all() and np.isnan(tr[1:]).all()
    np.testing.assert_allclose(d[0], posterior(jtj[:1], s2[:1], w[:1], g[:1])[0][0], rtol=1e-9)
