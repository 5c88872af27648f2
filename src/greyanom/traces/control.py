r"""From PI loops to shape signatures and back (section 2 of the paper, corrected).

A first-order process :math:`v' = -v/\tau_p + (k_p/\tau_p)u` under the PI controller
:math:`u = u_0 + k_c e + (k_c/\tau_I)\int_0^t e`, :math:`e = r - v`, with a ramp set point
:math:`r(t) = q_1 t + q_2`, obeys for :math:`t > 0` (any initial state and bias)

.. math:: v'' + \gamma v' + k v = a t + b,

with the map (12) of the paper (:math:`\bar k = k_p k_c`)

.. math::
   \gamma = \frac{1 + \bar k}{\tau_p},\quad k = \frac{\bar k}{\tau_I\tau_p},\quad
   a = \frac{\bar k q_1}{\tau_I\tau_p},\quad
   b = \frac{\bar k q_1}{\tau_p} + \frac{\bar k q_2}{\tau_I\tau_p}.

Its particular solution is :math:`c t + y` with :math:`c = a/k` and
:math:`y = (b - c\gamma)/k`, and the homogeneous part oscillates with
:math:`\omega^2 = k - \gamma^2/4` when that is positive (the paper's (11)); ``kappa``
:math:`= \omega^2` is negative for overdamped loops.

Two facts follow that the paper does not state:

* **c = q1**: the fitted slope of a ``v`` trace *is* the set-point slope, whatever the
  process and controller; and :math:`y = q_2 - q_1\tau_I/\bar k` (a constant ramp-tracking
  lag). So :math:`q_1 = c` needs no controller knowledge, and
  :math:`q_2 = y + c(\gamma/k - \tau_I)` needs only :math:`\tau_I`.
* **Set point and sensor offsets are confounded in y**: adding :math:`\delta` to
  :math:`q_2` or adding :math:`\delta` to the sensor reading both shift ``y`` by
  :math:`\delta` and change nothing else in the signature, so no shape-signature method can
  tell them apart (see the tests).

All functions are vectorised over NumPy broadcasting and return floats or arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ODEParams",
    "OscillatorParams",
    "PIParams",
    "PIFamily",
    "ode_from_pi",
    "oscillator_from_ode",
    "ode_from_oscillator",
    "oscillator_from_pi",
    "pi_from_oscillator",
    "pi_family",
    "characteristic_polynomial",
    "is_oscillating",
    "is_stable",
]


class ODEParams(NamedTuple):
    """Coefficients of :math:`v'' + \\gamma v' + k v = a t + b`."""

    gamma: np.ndarray
    k: np.ndarray
    a: np.ndarray
    b: np.ndarray


class OscillatorParams(NamedTuple):
    """The parameters of (11) fixed by the loop: damping, frequency, slope, offset.

    ``kappa = omega**2 = k - gamma**2 / 4`` is defined in every regime; ``omega`` is NaN
    where ``kappa < 0`` (overdamped: (11) has no real frequency there).
    """

    gamma: np.ndarray
    omega: np.ndarray
    c: np.ndarray
    y: np.ndarray
    kappa: np.ndarray


class PIParams(NamedTuple):
    """Process and set-point parameters recovered with a known controller."""

    tau_p: np.ndarray
    k_p: np.ndarray
    q1: np.ndarray
    q2: np.ndarray


class PIFamily(NamedTuple):
    """The one-parameter family of loops (in ``tau_p``) with a given signature."""

    tau_p: np.ndarray
    k_bar: np.ndarray
    tau_I: np.ndarray
    q1: np.ndarray
    q2: np.ndarray


def _f(*args):
    out = tuple(np.asarray(a, dtype=np.float64) for a in args)
    return out if len(out) > 1 else out[0]


def ode_from_pi(tau_p, k_p, k_c, tau_I, q1, q2, *, sensor="v"):
    """Map (12): PI-loop parameters to the ODE coefficients ``(gamma, k, a, b)``.

    Parameters
    ----------
    tau_p, k_p : array-like
        Process time constant and gain (non-zero).
    k_c, tau_I : array-like
        Controller gain and integral time (non-zero).
    q1, q2 : array-like
        Set-point slope and intercept, ``r(t) = q1 t + q2``.
    sensor : {"v", "u"}, default="v"
        ``"v"``: the controlled variable (eq. (8)); ``"u"``: the manipulated variable
        (eq. (10)), which has the same ``gamma`` and ``k`` and another right-hand side.

    Returns
    -------
    ODEParams
        ``(gamma, k, a, b)``.
    """
    tau_p, k_p, k_c, tau_I, q1, q2 = _f(tau_p, k_p, k_c, tau_I, q1, q2)
    kb = k_p * k_c
    gamma = (1.0 + kb) / tau_p
    k = kb / (tau_I * tau_p)
    if sensor == "v":
        a = kb * q1 / (tau_I * tau_p)
        b = kb * q1 / tau_p + kb * q2 / (tau_I * tau_p)
    elif sensor == "u":
        a = k_c * q1 / (tau_I * tau_p)
        b = k_c / (tau_I * tau_p) * (q1 * (tau_p + tau_I) + q2)
    else:
        raise ValueError(f"sensor must be 'v' or 'u', got {sensor!r}.")
    return ODEParams(gamma, k, a, b)


def oscillator_from_ode(gamma, k, a, b):
    """ODE coefficients to the oscillator: ``c = a/k``, ``y = (b - c gamma)/k``, ``omega``.

    ``kappa = k - gamma^2/4``; ``omega = sqrt(kappa)`` where ``kappa >= 0``, else NaN.
    """
    gamma, k, a, b = _f(gamma, k, a, b)
    c = a / k
    y = (b - c * gamma) / k
    kappa = k - 0.25 * gamma**2
    with np.errstate(invalid="ignore"):
        omega = np.where(kappa >= 0, np.sqrt(np.abs(kappa)), np.nan)
    return OscillatorParams(gamma, omega[()], c, y, kappa)


def ode_from_oscillator(gamma, omega=None, c=0.0, y=0.0, *, kappa=None):
    """Back from the oscillator: ``k = omega^2 + gamma^2/4``, ``a = c k``, ``b = k y + c gamma``.

    Give ``omega`` (underdamped) or ``kappa = omega^2`` (any regime).
    """
    if (omega is None) == (kappa is None):
        raise ValueError("give exactly one of omega and kappa.")
    kappa = np.square(_f(omega)) if kappa is None else _f(kappa)
    gamma, c, y = _f(gamma, c, y)
    k = kappa + 0.25 * gamma**2
    return ODEParams(gamma, k, c * k, k * y + c * gamma)


def oscillator_from_pi(tau_p, k_p, k_c, tau_I, q1, q2, *, sensor="v"):
    """Composition ``oscillator_from_ode(*ode_from_pi(...))``.

    For ``sensor="v"`` this gives ``c = q1`` and ``y = q2 - q1 tau_I / (k_p k_c)``.
    """
    return oscillator_from_ode(*ode_from_pi(tau_p, k_p, k_c, tau_I, q1, q2, sensor=sensor))


def _k_of(gamma, omega, kappa):
    if (omega is None) == (kappa is None):
        raise ValueError("give exactly one of omega and kappa.")
    kappa = np.square(_f(omega)) if kappa is None else _f(kappa)
    return kappa + 0.25 * np.square(_f(gamma))


def pi_from_oscillator(gamma, omega=None, c=0.0, y=0.0, *, k_c, tau_I, kappa=None):
    """Recover the process and the set point when the controller (``k_c``, ``tau_I``) is known.

    ``tau_p = 1 / (gamma - tau_I k)``, ``k_p = k tau_I / (k_c (gamma - tau_I k))`` (unique),
    ``q1 = c`` and ``q2 = y + c (gamma/k - tau_I)`` (only ``tau_I`` is needed for the set
    point), with ``k = omega^2 + gamma^2/4``. Valid for ``v`` signatures.

    Returns
    -------
    PIParams
        ``(tau_p, k_p, q1, q2)``.
    """
    gamma, c, y, k_c, tau_I = _f(gamma, c, y, k_c, tau_I)
    k = _k_of(gamma, omega, kappa)
    d = gamma - tau_I * k
    return PIParams(1.0 / d, k * tau_I / (k_c * d), c, y + c * (gamma / k - tau_I))


def pi_family(gamma, omega=None, c=0.0, y=0.0, *, tau_p, kappa=None):
    """The loops that give one ``v`` signature, parametrised by ``tau_p``.

    With the controller unknown, ``k_bar = k_p k_c = gamma tau_p - 1`` and
    ``tau_I = (gamma tau_p - 1) / (k tau_p)``; ``q1 = c``, ``q2 = y + c (gamma/k - tau_I)``.
    The loop is stable (with ``tau_p, tau_I > 0``) iff ``tau_p > 1/gamma``; as
    ``tau_p -> inf``, ``tau_I -> gamma / k`` and ``q2 -> y``.

    Returns
    -------
    PIFamily
        ``(tau_p, k_bar, tau_I, q1, q2)``.
    """
    gamma, c, y, tau_p = _f(gamma, c, y, tau_p)
    k = _k_of(gamma, omega, kappa)
    k_bar = gamma * tau_p - 1.0
    tau_I = k_bar / (k * tau_p)
    return PIFamily(tau_p, k_bar, tau_I, c + 0.0 * tau_p, y + c * (gamma / k - tau_I))


def characteristic_polynomial(tau_p, k_p, k_c, tau_I):
    """Coefficients ``(tau_I tau_p, tau_I (1 + k_bar), k_bar)`` of the closed loop's polynomial in s."""
    tau_p, k_p, k_c, tau_I = _f(tau_p, k_p, k_c, tau_I)
    kb = k_p * k_c
    return tau_I * tau_p, tau_I * (1.0 + kb), kb


def is_oscillating(tau_p, k_p, k_c, tau_I):
    """True where the closed loop is underdamped (complex roots): ``gamma^2 < 4 k``.

    For ``tau_I tau_p > 0`` this is the paper's ``tau_I < 4 k_bar tau_p / (1 + k_bar)^2``.
    """
    a2, a1, a0 = characteristic_polynomial(tau_p, k_p, k_c, tau_I)
    return a1**2 < 4.0 * a2 * a0


def is_stable(tau_p, k_p, k_c, tau_I):
    """True where both closed-loop roots have negative real part.

    Routh-Hurwitz for a quadratic: all three coefficients non-zero and of one sign. With
    ``tau_p, tau_I > 0`` this is ``k_bar > 0``, i.e. ``tau_p > 1 / gamma``.
    """
    a2, a1, a0 = characteristic_polynomial(tau_p, k_p, k_c, tau_I)
    return ((a2 > 0) & (a1 > 0) & (a0 > 0)) | ((a2 < 0) & (a1 < 0) & (a0 < 0))
