"""Section 2 of the paper, proved again: PI loop -> ODE -> oscillator, inversions, flags,
and a closed-loop simulation by solve_ivp that fit_traces reads back."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from greyanom.datasets import simulate_pi_loop
from greyanom.traces import Traces, control, fit_traces

finite = dict(allow_nan=False, allow_infinity=False)
pos = lambda lo, hi: st.floats(lo, hi, **finite)  # noqa: E731
loops = st.fixed_dictionaries(
    dict(tau_p=pos(0.5, 20.0), k_p=pos(0.2, 5.0), k_c=pos(0.2, 5.0), tau_I=pos(0.2, 20.0),
         q1=st.floats(-0.5, 0.5, **finite), q2=st.floats(-5.0, 5.0, **finite))
)


def _oscillator_values(t, gamma, omega, c, y, r, phi):
    return r * np.exp(-gamma * t / 2) * np.cos(omega * t - phi) + c * t + y


@settings(max_examples=50, deadline=None)
@given(gamma=pos(0.01, 3.0), ratio=pos(0.01, 0.99), a=st.floats(-2, 2, **finite), b=st.floats(-2, 2, **finite),
       r=st.floats(-3, 3, **finite), phi=st.floats(-1.5, 1.5, **finite))
def test_eq_11_solves_the_ode_when_underdamped(gamma, ratio, a, b, r, phi):
    k = gamma**2 / 4 / ratio  # 4k > gamma^2
    osc = control.oscillator_from_ode(gamma, k, a, b)
    assert np.isfinite(osc.omega)
    np.testing.assert_allclose(osc.omega, np.sqrt(4 * k - gamma**2) / 2)
    np.testing.assert_allclose(osc.c, a / k)
    np.testing.assert_allclose(osc.y, (b - osc.c * gamma) / k)
    t = np.linspace(0.5, 5.0, 7)
    h = 1e-3
    v = lambda s: _oscillator_values(s, gamma, osc.omega, osc.c, osc.y, r, phi)  # noqa: E731
    d1 = (v(t + h) - v(t - h)) / (2 * h)
    d2 = (v(t + h) - 2 * v(t) + v(t - h)) / h**2
    resid = d2 + gamma * d1 + k * v(t) - (a * t + b)
    # relative to the size of the terms that cancel
    scale = np.abs(d2) + gamma * np.abs(d1) + k * np.abs(v(t)) + np.abs(a * t + b) + 1e-12
    assert np.all(np.abs(resid) <= 1e-5 * scale + 1e-6 * np.abs(v(t)).max())


@settings(max_examples=100, deadline=None)
@given(loop=loops)
def test_map_12_and_its_inversions_round_trip(loop):
    ode = control.ode_from_pi(**loop)
    kb = loop["k_p"] * loop["k_c"]
    np.testing.assert_allclose(ode.gamma, (1 + kb) / loop["tau_p"])
    np.testing.assert_allclose(ode.k, kb / (loop["tau_I"] * loop["tau_p"]))
    osc = control.oscillator_from_ode(*ode)
    # the fitted slope is the set-point slope; y is the ramp-tracking lag
    np.testing.assert_allclose(osc.c, loop["q1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(osc.y, loop["q2"] - loop["q1"] * loop["tau_I"] / kb, rtol=1e-9, atol=1e-9)
    # back to the ODE, in every regime through kappa
    back = control.ode_from_oscillator(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa)
    np.testing.assert_allclose(np.array(back), np.array(ode), rtol=1e-8, atol=1e-10)
    # known controller: the process and the set point are unique
    pi = control.pi_from_oscillator(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa, k_c=loop["k_c"], tau_I=loop["tau_I"])
    np.testing.assert_allclose(
        [pi.tau_p, pi.k_p, pi.q1, pi.q2], [loop[k] for k in ("tau_p", "k_p", "q1", "q2")], rtol=1e-7, atol=1e-8
    )
    # unknown controller: the one-parameter family passes through the true loop at tau_p
    fam = control.pi_family(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa, tau_p=loop["tau_p"])
    np.testing.assert_allclose([fam.k_bar, fam.tau_I, fam.q2], [kb, loop["tau_I"], loop["q2"]], rtol=1e-7, atol=1e-8)
    # and every member of the family reproduces the same signature
    other = 2.5 * loop["tau_p"]
    fam2 = control.pi_family(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa, tau_p=other)
    osc2 = control.oscillator_from_pi(other, fam2.k_bar, 1.0, fam2.tau_I, fam2.q1, fam2.q2)
    np.testing.assert_allclose([osc2.gamma, osc2.kappa, osc2.c, osc2.y], [osc.gamma, osc.kappa, osc.c, osc.y], rtol=1e-7, atol=1e-9)


def test_family_limit_and_stability_threshold():
    osc = control.oscillator_from_pi(tau_p=4.0, k_p=2.0, k_c=1.5, tau_I=2.0, q1=0.1, q2=1.0)
    k = osc.kappa + osc.gamma**2 / 4
    far = control.pi_family(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa, tau_p=1e9)
    np.testing.assert_allclose(far.tau_I, osc.gamma / k, rtol=1e-6)
    np.testing.assert_allclose(far.q2, osc.y, rtol=1e-6)
    fam = control.pi_family(osc.gamma, c=osc.c, y=osc.y, kappa=osc.kappa, tau_p=np.array([0.5, 2.0]) / osc.gamma)
    assert list(fam.k_bar > 0) == [False, True]  # stable iff tau_p > 1 / gamma


@settings(max_examples=200, deadline=None)
@given(tau_p=st.floats(-20, 20, **finite), k_p=st.floats(-5, 5, **finite), k_c=st.floats(-5, 5, **finite),
       tau_I=st.floats(-20, 20, **finite))
def test_oscillation_and_stability_flags_agree_with_the_roots(tau_p, k_p, k_c, tau_I):
    a2, a1, a0 = control.characteristic_polynomial(tau_p, k_p, k_c, tau_I)
    assume(abs(a2) > 1e-3 and abs(a0) > 1e-3 and abs(a1) > 1e-3)
    disc = a1**2 - 4 * a2 * a0
    assume(abs(disc) > 1e-6 * (a1**2 + abs(4 * a2 * a0)))
    roots = np.roots([a2, a1, a0])
    assert control.is_oscillating(tau_p, k_p, k_c, tau_I) == bool(np.any(np.abs(roots.imag) > 0))
    assert control.is_stable(tau_p, k_p, k_c, tau_I) == bool(np.all(roots.real < 0))
    if tau_I > 0:
        # the paper's condition; (4k - gamma^2) tau_I tau_p^2 / (1 + kb)^2 = 4 kb tau_p / (1 + kb)^2 - tau_I,
        # so it is equivalent to gamma^2 < 4k exactly when tau_I > 0
        kb = k_p * k_c
        paper = tau_I < 4 * kb * tau_p / (1 + kb) ** 2
        assert control.is_oscillating(tau_p, k_p, k_c, tau_I) == paper


def _loop_signature_at_zero(loop, v0=0.0):
    """Paper signature at t = 0 of the simulated loop (T6 of the notes)."""
    osc = control.oscillator_from_pi(**loop)
    u_plus = loop["k_c"] * (loop["q2"] - v0)
    dv0 = (-v0 + loop["k_p"] * u_plus) / loop["tau_p"]
    a = v0 - osc.y
    b = (dv0 - osc.c + osc.gamma / 2 * a) / osc.omega
    return osc, np.hypot(a, b), np.arctan2(b, a)


LOOPS = [
    dict(tau_p=5.0, k_p=2.0, k_c=1.5, tau_I=2.0, q1=0.05, q2=1.0),
    dict(tau_p=8.0, k_p=1.5, k_c=2.0, tau_I=3.0, q1=-0.02, q2=2.0),
    dict(tau_p=2.0, k_p=0.8, k_c=3.0, tau_I=1.2, q1=0.0, q2=-1.0),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_solve_ivp_loop_matches_the_model_and_fit_recovers_it(loop):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.3, 40.0, 150))
    v = simulate_pi_loop(t, **loop)
    osc, r, phi = _loop_signature_at_zero(loop)
    assert control.is_oscillating(loop["tau_p"], loop["k_p"], loop["k_c"], loop["tau_I"])
    np.testing.assert_allclose(v, _oscillator_values(t, osc.gamma, osc.omega, osc.c, osc.y, r, phi), atol=1e-8)
    noisy = simulate_pi_loop(t, **loop, noise_sd=0.002, random_state=1)
    fit = fit_traces(Traces.from_arrays([t], [noisy]))
    assert fit.success[0] and fit.regime[0] == "underdamped"
    got = fit.params.iloc[0]
    se = np.sqrt(np.diag(fit.covariance[0]))
    # within 4 Laplace standard errors of the truth, and close in relative terms
    assert abs(got.gamma - osc.gamma) < 4 * se[0] and abs(got.omega - osc.omega) < 4 * se[2]
    assert abs(got.c - loop["q1"]) < 4 * se[5]
    np.testing.assert_allclose([got.gamma, got.omega], [osc.gamma, osc.omega], rtol=0.1)
    # and back to the process with the controller known
    pi = control.pi_from_oscillator(got.gamma, got.omega, got.c, got.y - got.c * fit.x[0],
                                    k_c=loop["k_c"], tau_I=loop["tau_I"])
    np.testing.assert_allclose([pi.tau_p, pi.k_p], [loop["tau_p"], loop["k_p"]], rtol=0.15)


def test_overdamped_loop_from_solve_ivp_is_fitted_in_its_own_regime():
    loop = dict(tau_p=2.0, k_p=1.0, k_c=1.0, tau_I=8.0, q1=0.0, q2=1.0)
    assert not control.is_oscillating(loop["tau_p"], loop["k_p"], loop["k_c"], loop["tau_I"])
    t = np.linspace(0.2, 40, 150)
    fit = fit_traces(Traces.from_arrays([t], [simulate_pi_loop(t, **loop)]))
    ode = control.ode_from_pi(**loop)
    assert fit.regime[0] == "overdamped"
    np.testing.assert_allclose(fit.general.gamma[0], ode.gamma, rtol=1e-5)
    np.testing.assert_allclose(fit.general.kappa[0], ode.k - ode.gamma**2 / 4, rtol=1e-4)


def test_u_sensor_has_the_same_dynamics_and_slope_q1_over_kp():
    loop = LOOPS[0]
    t = np.linspace(0.2, 40, 150)
    u = simulate_pi_loop(t, **loop, sensor="u")
    fit = fit_traces(Traces.from_arrays([t], [u]))
    osc = control.oscillator_from_pi(**loop, sensor="u")
    np.testing.assert_allclose(osc.c, loop["q1"] / loop["k_p"])
    np.testing.assert_allclose(fit.params[["gamma", "omega", "c"]].iloc[0], [osc.gamma, osc.omega, osc.c], rtol=1e-5)


def test_set_point_and_sensor_offsets_are_confounded_in_y():
    loop = LOOPS[0]
    delta = 0.3
    t = np.linspace(0.2, 30, 120)
    base = simulate_pi_loop(t, **loop, v0=0.2)
    sensor_offset = base + delta
    # the same loop tracking a set point delta higher from a correspondingly shifted state
    shifted = dict(loop, q2=loop["q2"] + delta)
    set_point = simulate_pi_loop(
        t, **shifted, v0=0.2 + delta, I0=delta * loop["tau_I"] / (loop["k_p"] * loop["k_c"])
    )
    np.testing.assert_allclose(set_point, sensor_offset, atol=1e-8)
    fits = fit_traces(Traces.from_arrays([t, t, t], [base, sensor_offset, set_point])).params
    np.testing.assert_allclose(fits.y.iloc[1] - fits.y.iloc[0], delta, rtol=1e-6)
    np.testing.assert_allclose(fits.iloc[1], fits.iloc[2], rtol=1e-6, atol=1e-9)
    others = ["gamma", "R", "omega", "phi", "c"]
    np.testing.assert_allclose(fits[others].iloc[1], fits[others].iloc[0], rtol=1e-6, atol=1e-9)


def test_simulator_validates_and_is_reproducible():
    t = np.linspace(0, 10, 20)
    a = simulate_pi_loop(t, **LOOPS[0], noise_sd=0.1, random_state=3)
    b = simulate_pi_loop(t, **LOOPS[0], noise_sd=0.1, random_state=3)
    np.testing.assert_array_equal(a, b)
    # order of t does not matter
    perm = np.random.default_rng(0).permutation(20)
    np.testing.assert_allclose(simulate_pi_loop(t[perm], **LOOPS[0]), simulate_pi_loop(t, **LOOPS[0])[perm], atol=1e-9)
    with pytest.raises(ValueError, match="tau_p"):
        simulate_pi_loop(t, **dict(LOOPS[0], tau_p=-1.0))
    with pytest.raises(ValueError, match=">= 0"):
        simulate_pi_loop(t - 1, **LOOPS[0])
    with pytest.raises(ValueError, match="sensor"):
        simulate_pi_loop(t, **LOOPS[0], sensor="w")
    with pytest.raises(ValueError, match="k_p"):
        simulate_pi_loop(t, **dict(LOOPS[0], k_p=0.0))
