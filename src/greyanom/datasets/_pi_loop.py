"""Closed-loop simulation of a first-order process under PI control."""

from __future__ import annotations

import numbers

import numpy as np
from scipy.integrate import solve_ivp
from sklearn.utils import check_random_state

__all__ = ["simulate_pi_loop"]


#: Largest |fastest eigenvalue| x time span that ``simulate_pi_loop`` integrates.
_MAX_STIFFNESS = 5e4


def simulate_pi_loop(
    t,
    *,
    tau_p,
    k_p,
    k_c,
    tau_I,
    q1=0.0,
    q2=1.0,
    v0=0.0,
    I0=0.0,
    u0=0.0,
    sensor="v",
    noise_sd=0.0,
    random_state=None,
    rtol=1e-10,
    atol=1e-12,
):
    r"""Simulate the paper's PI loop by numerical integration and sample it at ``t``.

    Integrates the process (1) and the PI controller (2) of Vargas et al. as a state-space
    system with :func:`scipy.integrate.solve_ivp` (never through the closed-form solution):

    .. math::
        v' = -\frac{v}{\tau_p} + \frac{k_p}{\tau_p} u, \qquad I' = e,\qquad
        u = u_0 + k_c e + \frac{k_c}{\tau_I} I,\qquad e = r - v,\qquad r(t) = q_1 t + q_2,

    from ``v(0) = v0`` and ``I(0) = I0`` at ``t = 0`` (the start of the recipe step).

    Parameters
    ----------
    t : array-like of shape (n,)
        Sampling times, ``>= 0``; any order, irregular spacing allowed.
    tau_p, k_p : float
        Process time constant (> 0) and gain (non-zero).
    k_c, tau_I : float
        Controller gain (non-zero) and integral time (> 0).
    q1, q2 : float, default=0.0, 1.0
        Set-point ramp ``r(t) = q1 t + q2``.
    v0, I0, u0 : float, default=0.0
        Initial process output, initial integral of the error, controller bias.
    sensor : {"v", "u"}, default="v"
        Return the controlled variable ``v`` or the manipulated variable ``u``.
    noise_sd : float, default=0.0
        Standard deviation of Gaussian measurement noise added to the samples.
    random_state : int, RandomState instance or None, default=None
        Seed of the measurement noise.
    rtol, atol : float, default=1e-10, 1e-12
        Tolerances of the integrator (DOP853).

    Returns
    -------
    values : ndarray of shape (n,)
        The sensor at the times ``t``, in the order given.

    Raises
    ------
    ValueError
        For a parameter out of range, and for a loop too stiff for the explicit integrator:
        when the fastest eigenvalue of the loop times ``max(t)`` exceeds 50,000 (about a
        second of integration), e.g. ``k_c=1e9``, which would otherwise never return.

    See Also
    --------
    greyanom.traces.control.oscillator_from_pi : the signature this loop should produce.
    greyanom.traces.fit_traces : fit shape signatures to simulated traces.

    Notes
    -----
    For ``t > 0`` the sampled ``v`` solves ``v'' + gamma v' + k v = a t + b`` with the
    coefficients of the paper's (12), whatever ``v0``, ``I0`` and ``u0``; those only set
    the transient's amplitude and phase.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.datasets import simulate_pi_loop
    >>> t = np.linspace(0.0, 30.0, 5)
    >>> v = simulate_pi_loop(t, tau_p=5.0, k_p=2.0, k_c=1.5, tau_I=2.0, q1=0.0, q2=1.0)
    >>> bool(abs(v[-1] - 1.0) < 1e-3)  # the integral action removes the offset
    True
    """
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"t must be a non-empty 1-D array of times, got shape {t.shape}.")
    if not np.isfinite(t).all() or (t < 0).any():
        raise ValueError("t must hold finite times >= 0 (the loop starts at t = 0).")
    params = dict(tau_p=tau_p, k_p=k_p, k_c=k_c, tau_I=tau_I, q1=q1, q2=q2, v0=v0, I0=I0, u0=u0)
    for name, value in params.items():
        if not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite real number, got {value!r}.")
    if not tau_p > 0 or not tau_I > 0:
        raise ValueError(f"tau_p and tau_I must be > 0, got tau_p={tau_p!r}, tau_I={tau_I!r}.")
    if k_p == 0 or k_c == 0:
        raise ValueError(f"k_p and k_c must be non-zero, got k_p={k_p!r}, k_c={k_c!r}.")
    if sensor not in ("v", "u"):
        raise ValueError(f"sensor must be 'v' or 'u', got {sensor!r}.")
    if not isinstance(noise_sd, numbers.Real) or not noise_sd >= 0:
        raise ValueError(f"noise_sd must be a float >= 0, got {noise_sd!r}.")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(f"{name} must be a float in (0, 1), got {value!r}.")
    # The explicit integrator takes about one step per unit of |fastest eigenvalue| x time span;
    # bounding that product bounds the run time (5e4 took about 1.5 s) instead of hanging.
    gain = k_p * k_c
    rate = float(np.abs(np.linalg.eigvals([[-(1.0 + gain) / tau_p, gain / (tau_p * tau_I)], [-1.0, 0.0]])).max())
    if not rate * float(t.max()) <= _MAX_STIFFNESS:
        raise ValueError(
            f"the loop is too stiff to integrate: with k_p*k_c={gain:.3g}, tau_p={tau_p!r}, tau_I={tau_I!r} "
            f"its fastest mode decays at {rate:.3g} per time unit, {rate * float(t.max()):.3g} over t "
            f"(at most {_MAX_STIFFNESS:g}); reduce k_c or k_p, increase tau_p, or shorten t."
        )
    rng = check_random_state(random_state)

    def control(time, v, integral):
        e = q1 * time + q2 - v
        return u0 + k_c * e + (k_c / tau_I) * integral, e

    def rhs(time, state):
        v, integral = state
        u, e = control(time, v, integral)
        return [(-v + k_p * u) / tau_p, e]

    order = np.argsort(t, kind="stable")
    ts = t[order]
    sol = solve_ivp(
        rhs, (0.0, float(ts[-1])), [float(v0), float(I0)], method="DOP853",
        t_eval=ts, rtol=rtol, atol=atol,
    )
    if not sol.success:  # pragma: no cover - DOP853 does not fail on this linear system
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    v, integral = sol.y
    out_sorted = v if sensor == "v" else control(ts, v, integral)[0]
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    if noise_sd > 0:
        out = out + rng.normal(0.0, noise_sd, size=out.shape)
    return out
