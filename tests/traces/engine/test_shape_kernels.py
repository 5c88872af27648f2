"""The Numba kernels agree with the NumPy references, and their derivatives are right."""

import importlib.util
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greyanom.traces import _kernels as K

_spec = importlib.util.spec_from_file_location("shape_naive", pathlib.Path(__file__).with_name("naive.py"))
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)

finite = dict(allow_nan=False, allow_infinity=False)
paper_points = st.tuples(
    st.floats(-0.5, 3.0, **finite),  # gamma
    st.floats(-3.0, 3.0, **finite),  # R
    st.floats(0.0, 12.0, **finite),  # omega
    st.floats(-2.0, 2.0, **finite),  # y
    st.floats(-1.5, 1.5, **finite),  # phi
    st.floats(-1.0, 1.0, **finite),  # c
).map(np.array)
general_points = st.tuples(
    st.floats(-0.5, 3.0, **finite),  # gamma
    st.floats(-3.0, 3.0, **finite),  # A
    st.floats(-40.0, 150.0, **finite),  # kappa
    st.floats(-2.0, 2.0, **finite),  # y
    st.floats(-3.0, 3.0, **finite),  # B
    st.floats(-1.0, 1.0, **finite),  # c
).map(np.array)


def _times(seed, n=40):
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.0, 1.0, n))


def _pass_paper(u, v, p):
    jtj, jtr, so = np.empty((6, 6)), np.empty(6), np.empty((6, 6))
    ssr = K._pass_paper(u, v, p, jtj, jtr, so)
    return ssr, jtj, jtr, so


def _pass_general(u, v, p):
    jtj, jtr = np.empty((6, 6)), np.empty(6)
    ssr = K._pass_general(u, v, p, jtj, jtr)
    return ssr, jtj, jtr


@pytest.mark.parametrize("kappa", [-30.0, -0.5, -1e-3, 0.0, 1e-6, 0.05, 0.2, 4.0, 90.0])
def test_general_basis_matches_reference_in_every_regime(kappa):
    tau = np.linspace(0.0, 1.0, 11)
    got = np.array([K._general_basis(0.7, kappa, t) for t in tau]).T
    ref = np.array(naive.general_basis(0.7, kappa, tau))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_general_basis_is_smooth_across_the_series_cut():
    # the series branch (|kappa tau^2| < 0.1) and the closed form meet without a jump
    for kappa in (0.1 - 1e-9, 0.1 + 1e-9, -0.1 + 1e-9, -0.1 - 1e-9):
        got = np.array(K._general_basis(0.3, kappa, 1.0))
        ref = np.array(naive.general_basis(0.3, kappa, np.array([1.0]))).ravel()
        np.testing.assert_allclose(got, ref, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(p=paper_points, seed=st.integers(0, 100))
def test_pass_paper_matches_reference(p, seed):
    u = _times(seed)
    v = np.sin(3 * u) + 0.1 * u
    ssr, jtj, jtr, so = _pass_paper(u, v, p)
    rssr, rjtj, rjtr, rso = naive.pass_paper(u, v, p)
    np.testing.assert_allclose(ssr, rssr, rtol=1e-10)
    np.testing.assert_allclose(jtj, rjtj, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(jtr, rjtr, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(so, rso, rtol=1e-9, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(p=general_points, seed=st.integers(0, 100))
def test_pass_general_matches_reference(p, seed):
    u = _times(seed)
    v = np.cos(2 * u) - 0.3 * u
    ssr, jtj, jtr = _pass_general(u, v, p)
    rssr, rjtj, rjtr = naive.pass_general(u, v, p)
    np.testing.assert_allclose(ssr, rssr, rtol=1e-9)
    np.testing.assert_allclose(jtj, rjtj, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(jtr, rjtr, rtol=1e-8, atol=1e-9)


def _central_jacobian(fun, p, h=1e-6):
    cols = []
    for k in range(6):
        e = np.zeros(6)
        e[k] = h * max(1.0, abs(p[k]))
        cols.append((fun(p + e) - fun(p - e)) / (2 * e[k]))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("p", [[0.8, 1.3, 7.0, 0.2, 0.4, -0.3], [-0.2, -2.0, 2.5, 1.0, -1.2, 0.5]])
def test_paper_jacobian_and_hessian_match_central_differences(p):
    p = np.array(p)
    u = _times(3)
    v = np.cos(5 * u)
    jac = naive.jacobian_paper(p, u)
    np.testing.assert_allclose(jac, _central_jacobian(lambda q: naive.alpha_paper(q, u), p), rtol=1e-6, atol=1e-7)
    # gradient and exact Hessian of f = SSR / 2 from the kernel
    ssr, jtj, jtr, so = _pass_paper(u, v, p)
    grad, hess = -jtr, jtj - so

    def f(q):
        return 0.5 * _pass_paper(u, v, q)[0]

    def g(q):
        return -_pass_paper(u, v, q)[2]

    fd_grad = np.array([
        (f(p + e) - f(p - e)) / (2 * 1e-6) for e in np.eye(6) * 1e-6
    ])
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, _central_jacobian(g, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kappa", [-25.0, -0.01, 0.0, 0.03, 40.0])
def test_general_jacobian_matches_central_differences(kappa):
    p = np.array([0.6, 1.1, kappa, 0.3, -0.7, 0.2])
    u = _times(5)
    jac = naive.jacobian_general(p, u)
    num = _central_jacobian(lambda q: naive.alpha_general(q, u), p)
    np.testing.assert_allclose(jac, num, rtol=1e-5, atol=1e-6)
    ssr, jtj, jtr = _pass_general(u, np.zeros_like(u), p)
    np.testing.assert_allclose(jtj, jac.T @ jac, rtol=1e-9, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(p=paper_points, seed=st.integers(0, 100))
def test_hessian_is_symmetric_and_gradient_zero_at_truth(p, seed):
    u = _times(seed)
    v = naive.alpha_paper(p, u)  # noiseless data at the truth
    ssr, jtj, jtr, so = _pass_paper(u, v, p)
    assert ssr < 1e-20
    np.testing.assert_allclose(jtr, 0.0, atol=1e-9)
    hess = jtj - so
    np.testing.assert_allclose(hess, hess.T, rtol=0, atol=1e-12 * max(1.0, np.abs(hess).max()))


@settings(max_examples=60, deadline=None)
@given(p=st.tuples(*(st.floats(-20, 20, **finite) for _ in range(6))).map(np.array))
def test_canonicalise_keeps_alpha_and_bounds(p):
    q = p.copy()
    K._canonicalise(q)
    assert q[2] >= 0.0
    assert -np.pi / 2 - 1e-12 <= q[4] <= np.pi / 2 + 1e-12
    np.testing.assert_allclose(q, naive.canonicalise(p), rtol=1e-12, atol=1e-12)
    tau = np.linspace(0.0, 2.0, 15)
    np.testing.assert_allclose(
        naive.alpha_paper(q, tau), naive.alpha_paper(p, tau), rtol=1e-9, atol=1e-9 * max(1.0, abs(p[1]))
    )


def _lin(u, v):
    """The constant part of the variable projection, as grid_start builds it."""
    g = np.array([[u @ u, u.sum()], [u.sum(), u.size]])
    inv = np.linalg.inv(g)
    lv = np.array([u @ v, v.sum()])
    return np.array([inv[0, 0], inv[0, 1], inv[1, 1], lv[0], lv[1], v @ v - lv @ inv @ lv])


def test_grid_point_matches_lstsq_and_drops_dependent_columns():
    u = _times(1, 30)
    v = np.exp(-2 * u) + 0.5 * u - 1.0 + 0.01 * np.sin(40 * u)
    cases = [
        (np.exp(-2 * u), u * np.exp(-2 * u)),
        (np.ones_like(u), u),  # both collinear with the line: dropped
        (np.exp(-3 * u), np.zeros_like(u)),  # an empty column (paper-space single exponential)
        (np.exp(-3 * u), 2 * np.exp(-3 * u)),  # two identical directions
    ]
    for f1, f2 in cases:
        coef = np.empty(4)
        ssr = K._grid_point(f1, f2, u, v, _lin(u, v), coef)
        rssr, _ = naive.ls4(f1, f2, u, v)
        np.testing.assert_allclose(ssr, rssr, rtol=1e-6, atol=1e-10)
        resid = v - (coef[0] * f1 + coef[1] * f2 + coef[2] * u + coef[3])
        np.testing.assert_allclose(resid @ resid, rssr, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("general", [True, False])
def test_grid_start_is_the_best_reference_grid_point(general):
    u = _times(2, 100)
    v = 1.5 * np.exp(-2.0 * u) * np.cos(20.0 * u - 0.3) + 0.2 * u
    p = np.empty(6)
    best = K._grid_start(u, v, general, p)
    # brute force over the same candidates with numpy least squares, on the same subsample
    stride = -(-u.size // K.GRID_POINTS)
    us, vs = u[::stride], v[::stride]
    cands = []
    for ra in K.GRID_RATES:
        ex = np.exp(-ra * us)
        for w in K.GRID_FREQS:
            cands.append(naive.ls4(ex * np.cos(w * us), ex * np.sin(w * us), us, vs)[0])
    ref = min(cands)
    assert best <= ref * (1 + 1e-6) + 1e-9 or best <= sorted(cands)[3]
    # the start reproduces its SSR on the subsample
    model = naive.alpha_general if general else naive.alpha_paper
    r = vs - model(p, us)
    np.testing.assert_allclose(r @ r, best, rtol=1e-6, atol=1e-9)


def test_spd_inverse_matches_numpy_and_rejects_indefinite():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    spd = a @ a.T + 0.1 * np.eye(6)
    out = np.empty((6, 6))
    assert K._spd_inverse(spd, out)
    np.testing.assert_allclose(out, naive.spd_inverse(spd), rtol=1e-9)
    indef = spd - 10 * np.eye(6)
    assert naive.spd_inverse(indef) is None
    assert not K._spd_inverse(indef, out)


def test_prepare_and_unit_maps_match_reference():
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(10, 70, 50))
    z = rng.normal(3.0, 2.0, 50)
    u, v = np.empty(50), np.empty(50)
    x, span, mean, sd = K._prepare(t, z, 0, 50, u, v, np.nan)
    ru, rv, rx, rspan, rmean, rsd = naive.prepare(t, z)
    np.testing.assert_allclose([x, span, mean, sd], [rx, rspan, rmean, rsd], rtol=1e-12)
    np.testing.assert_allclose(u, ru, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v, rv, rtol=1e-12, atol=1e-14)
    p = np.array([0.3, 1.2, 0.5, 2.0, 0.1, -0.02])
    for paper, ref in ((True, naive.to_normal_paper), (False, naive.to_normal_general)):
        out, back = np.empty(6), np.empty(6)
        K._to_normal(paper, p, span, mean, sd, out)
        np.testing.assert_allclose(out, ref(p, span, mean, sd), rtol=1e-12)
        K._from_normal(paper, out, span, mean, sd, back)
        np.testing.assert_allclose(back, p, rtol=1e-12)
        # the model value is unchanged by the change of units
        model = naive.alpha_paper if paper else naive.alpha_general
        np.testing.assert_allclose(model(out, u) * sd + mean, model(p, t - x), rtol=1e-10)


@pytest.mark.parametrize("paper", [True, False])
def test_minimise_reaches_the_scipy_minimum(paper):
    rng = np.random.default_rng(7)
    u = np.sort(rng.uniform(0, 1, 80))
    truth = np.array([3.0, 1.0, 12.0, 0.2, 0.5, -0.4])
    if not paper:
        truth = np.array([3.0, 1.0 * np.cos(0.5), 144.0, 0.2, 12.0 * np.sin(0.5), -0.4])
    model = naive.alpha_paper if paper else naive.alpha_general
    v = model(truth, u) + rng.normal(0, 0.02, u.size)
    start = truth * (1 + 0.05 * np.array([1, -1, 1, 1, -1, 1]))
    p = start.copy()
    status, n_iter, f, ssr = K._minimise(paper, u, v, p, np.zeros(6), np.zeros(6), 1.0, False, 100, 1e-10)
    assert status > 0
    _, ref_ssr = naive.fit_one(u, v, start, paper=paper)
    np.testing.assert_allclose(ssr, ref_ssr, rtol=1e-7)


def test_batch_drivers_match_reference():
    rng = np.random.default_rng(8)
    lengths = [30, 45, 60]
    t = np.concatenate([np.sort(rng.uniform(5, 25, n)) for n in lengths])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    params = np.array([[0.3, 1.0, 1.1, 2.0, 0.2, 0.01], [0.1, -0.5, 0.4, 0.0, -1.0, 0.0], [1.0, 2.0, 2.0, 1.0, 1.4, -0.1]])
    x = t[offsets[:-1]]
    z = np.empty_like(t)
    K.predict_batch(t, offsets, x, params, True, z)
    for j in range(3):
        sl = slice(offsets[j], offsets[j + 1])
        np.testing.assert_allclose(z[sl], naive.alpha_paper(params[j], t[sl] - x[j]), rtol=1e-12)
    z = z + rng.normal(0, 0.05, z.size)
    mean = params + 0.1
    sd = np.full((3, 6), 0.5)
    sigma = 0.05
    f, g, h = np.empty(3), np.empty((3, 6)), np.empty((3, 6, 6))
    jtj, ssr = np.empty((3, 6, 6)), np.empty(3)
    K.terms_batch(t, z, offsets, params, mean, 1 / sd**2, np.full(3, sigma**2), f, g, h, jtj, ssr, np.full(3, np.nan))
    for j in range(3):
        sl = slice(offsets[j], offsets[j + 1])
        tau = t[sl] - x[j]
        ref_f = naive.objective_paper(tau, z[sl], params[j], mean[j], sd[j], sigma) - np.log(sd[j]).sum()
        rg, rh = naive.gradient_hessian_paper(tau, z[sl], params[j], mean[j], sd[j], sigma)
        np.testing.assert_allclose(f[j], ref_f, rtol=1e-10)
        np.testing.assert_allclose(g[j], rg, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(h[j], rh, rtol=1e-8, atol=1e-8)


def test_fit_batch_is_the_serial_per_trace_fit_in_a_loop():
    """The parallel driver only allocates and loops: each row equals ``_fit_one`` on that trace alone."""
    rng = np.random.default_rng(4)
    lengths = [0, 3, 40, 25, 60]
    t = np.concatenate([np.sort(rng.uniform(0, 5, m)) for m in lengths])
    z = np.concatenate([np.exp(-0.4 * np.arange(m)) * np.cos(np.arange(m)) + 0.01 * rng.normal(size=m) for m in lengths])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = len(lengths)
    origin = np.full(n, np.nan)
    init = np.zeros((n, 6))
    has_init = np.zeros(n, dtype=bool)
    mu = np.zeros((n, 6))
    w = np.zeros((n, 6))
    w[3] = 1.0 / np.array([1.0, 2.0, 1.0, 0.5, 1.0, 1.0]) ** 2  # one trace with a prior
    noise = np.full(n, np.nan)
    noise[3] = 0.01
    opts = (6, 100, 1e-10, 1e-3, 1e-8)
    for paper in (True, False):
        batch = K.fit_batch(t, z, offsets, origin, paper, init, has_init, mu, w, noise, opts)
        for j in range(n):
            lo, hi = offsets[j], offsets[j + 1]
            rows = [np.full(6, np.nan), np.full(6, np.nan), *[np.full((6, 6), np.nan) for _ in range(3)],
                    np.full(6, np.nan), np.full(6, np.nan)]
            scalars = K._fit_one(t[lo:hi], z[lo:hi], np.empty(hi - lo), np.empty(hi - lo), origin[j], paper, init[j],
                                 has_init[j], mu[j], w[j], noise[j], opts, *rows)
            p, pp, status, n_iter, x, ssr, regime, s2, hess, jtj, cov, jtr, grad = (b[j] for b in batch)
            np.testing.assert_array_equal(np.array([status, n_iter, x, ssr, regime, s2]), np.array(scalars, dtype=float))
            for got, want in zip((p, pp, hess, jtj, cov, jtr, grad), rows):
                np.testing.assert_array_equal(got, want)
        assert batch[2][0] == K.ST_FEW and batch[2][1] == K.ST_FEW and (batch[2][2:] >= 0).all()
