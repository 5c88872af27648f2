"""Shape signatures: the grey-box oscillator model of PI-controlled sensor traces.

:class:`Traces` holds ragged traces, :func:`fit_traces` fits the paper's damped, linearly
driven oscillator to every trace (all damping regimes) and returns a :class:`SignatureFit`;
:mod:`greyanom.shape.control` maps shape signatures to and from PI-loop parameters.
"""

from greyanom.shape import control
from greyanom.shape._hierarchy import LotFit, fit_lot
from greyanom.shape._fit import CRITICAL_TOL, DEGENERATE_TOL, fit_traces, objective_terms
from greyanom.shape._result import GENERAL_NAMES, PARAM_NAMES, STATUS_MESSAGES, SignatureFit
from greyanom.shape.control import (
    characteristic_polynomial,
    is_oscillating,
    is_stable,
    ode_from_oscillator,
    ode_from_pi,
    oscillator_from_ode,
    oscillator_from_pi,
    pi_family,
    pi_from_oscillator,
)
from greyanom.shape.traces import Traces
from greyanom.shape._wafer import TraceAnalysis

__all__ = [
    "CRITICAL_TOL",
    "DEGENERATE_TOL",
    "GENERAL_NAMES",
    "LotFit",
    "PARAM_NAMES",
    "STATUS_MESSAGES",
    "SignatureFit",
    "characteristic_polynomial",
    "control",
    "is_oscillating",
    "is_stable",
    "ode_from_oscillator",
    "ode_from_pi",
    "oscillator_from_ode",
    "oscillator_from_pi",
    "pi_family",
    "pi_from_oscillator",
    "TraceAnalysis",
    "Traces",
    "fit_lot",
    "fit_traces",
    "objective_terms",
]
