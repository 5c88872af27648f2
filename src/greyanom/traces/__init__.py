"""Everything about process traces: the shape-signature engine, frames, wafer model, detectors.

:class:`Traces` holds ragged traces, :func:`fit_traces` fits the paper's damped, linearly
driven oscillator to every trace (all damping regimes) and returns a :class:`SignatureFit`;
:mod:`greyanom.traces.control` maps shape signatures to and from PI-loop parameters.
:class:`ShapeSignatureDetector` and :class:`MultiwayPCADetector` score wafers of long trace
frames through one wafer model. ``greyanom.shape`` is an alias of this package.
"""

import importlib

from greyanom.traces import control
from greyanom.traces._ragged import Traces
from greyanom.traces.control import (
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

# The engine pulls in Numba and compiles its kernels, so its names are imported on first use
# and ``greyanom.MultiwayPCADetector`` (pure NumPy) keeps ``import greyanom`` light.
_LAZY = {
    "LotFit": "_hierarchy",
    "fit_lot": "_hierarchy",
    "CRITICAL_TOL": "_fit",
    "DEGENERATE_TOL": "_fit",
    "fit_traces": "_fit",
    "objective_terms": "_fit",
    "GENERAL_NAMES": "_result",
    "PARAM_NAMES": "_result",
    "STATUS_MESSAGES": "_status",
    "SignatureFit": "_result",
    "TraceAnalysis": "_features",
    "MultiwayPCADetector": "_multiway",
    "ShapeSignatureDetector": "_shape_detector",
}

__all__ = [
    "CRITICAL_TOL",
    "DEGENERATE_TOL",
    "GENERAL_NAMES",
    "LotFit",
    "MultiwayPCADetector",
    "PARAM_NAMES",
    "STATUS_MESSAGES",
    "ShapeSignatureDetector",
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


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
