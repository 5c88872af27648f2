"""The one status table of the trace side: fit codes, regimes, trace and wafer statuses.

Like scipy's ``TERMINATION_MESSAGES``, every code and its message is defined here once; the
kernels write the integer codes, :func:`~greyanom.traces.fit_traces` turns them into
messages and regime names, the frames turn them into per-trace statuses and the wafer
scorer into per-wafer statuses. This module imports nothing from the package.
"""

import numpy as np

__all__ = ["STATUS_MESSAGES", "REGIMES", "TRACE_STATUSES", "WAFER_STATUSES", "OUT_OF_RANGE", "fit_messages"]

#: Termination codes of the signature fit (``SignatureFit.status``; ``success = status > 0``).
ST_MAXITER = 0
ST_GTOL = 1
ST_FTOL = 2
ST_XTOL = 3
ST_FEW = -1
ST_NONFINITE = -2
ST_RANGE = -3

STATUS_MESSAGES = {
    ST_MAXITER: "The maximum number of iterations was reached.",
    ST_GTOL: "The scaled gradient fell below the tolerance.",
    ST_FTOL: "The relative reduction of the objective fell below the tolerance.",
    ST_XTOL: "The step fell below the tolerance.",
    ST_FEW: "Too few points for the free parameters (6 without a prior, 1 with one).",
    ST_NONFINITE: "The objective is not finite at the starting point.",
    ST_RANGE: "The fit overflows in the units of the data (values near the floating-point limits).",
}
#: Fit codes of values outside the floating-point range of the fit: the trace status ``out_of_range``.
OUT_OF_RANGE = (ST_NONFINITE, ST_RANGE)

#: Regime codes written by the kernels, and their names (``SignatureFit.regime``) by code.
RG_FAILED = 0
RG_UNDER = 1
RG_CRITICAL = 2
RG_OVER = 3
RG_DEGENERATE = 4
REGIMES = np.array(["failed", "underdamped", "critical", "overdamped", "degenerate"])

#: Per-trace statuses of the shape detector (``signatures``, ``explain``, the analysis).
TRACE_STATUSES = {
    "ok": "fitted and scored",
    "not_converged": "scored, but the signature fit did not report convergence",
    "too_short": "fewer than min_points finite samples: not fitted, score NaN",
    "unknown_group": "the group has no normal model: not fitted, score NaN",
    "fit_failed": "the signature fit returned non-finite parameters: score NaN",
    "out_of_range": (
        "the values overflow the fit in the group's units (e.g. a trace scaled by 1e200): not fitted, "
        "score NaN, its wafer's 'unfitted' flag is set"
    ),
}

#: Per-wafer statuses of ``wafer_status``.
WAFER_STATUSES = {
    "ok": "every group present and usable",
    "missing_group": "a (step, sensor) group has no trace for this wafer: its features are set to the clip value",
    "unfitted": "a trace could not be fitted: its features are set to the clip value and its status flag is raised",
    "new_lot": "the wafer's lot was not seen in training: scaled with the pooled (or its own) lot centre",
}

_LOW = min(STATUS_MESSAGES)
_MESSAGES = np.array([STATUS_MESSAGES[c] for c in range(_LOW, max(STATUS_MESSAGES) + 1)])


def fit_messages(status):
    """The message of every fit code in ``status`` (an integer array)."""
    return _MESSAGES[np.asarray(status) - _LOW]
