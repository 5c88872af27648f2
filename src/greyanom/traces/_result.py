"""The result object of :func:`greyanom.traces.fit_traces`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from greyanom.traces import _kernels
from greyanom.traces._status import STATUS_MESSAGES
from greyanom.traces._ragged import Traces

__all__ = ["SignatureFit", "STATUS_MESSAGES", "PARAM_NAMES", "GENERAL_NAMES"]

#: Paper-space parameter order (the paper's shape signature, without x).
PARAM_NAMES = ("gamma", "R", "omega", "y", "phi", "c")
#: General (all-regime) parameter order, aligned position by position with PARAM_NAMES.
GENERAL_NAMES = ("gamma", "A", "kappa", "y", "B", "c")



@dataclass(frozen=True, repr=False)
class SignatureFit:
    """Shape signatures fitted to a batch of traces (one row per trace).

    Per-trace arrays are aligned with :attr:`params` (the trace keys); matrices are
    stacked along the first axis.

    Attributes
    ----------
    params : pandas.DataFrame of shape (n_traces, 6)
        The paper's signature ``(gamma, R, omega, y, phi, c)`` in the units of the data,
        with ``omega >= 0`` and ``phi`` in ``[-pi/2, pi/2]``. With ``model="general"``
        only ``gamma``, ``y`` and ``c`` are finite for critically damped, overdamped and
        degenerate traces (``R``, ``omega``, ``phi`` are NaN there: (11) has no finite
        parameters for them); with ``model="paper"`` every successful trace has six
        finite values. Rows of traces that could not be fitted (status ``-1``, ``-2``)
        are NaN.
    general : pandas.DataFrame of shape (n_traces, 6)
        The all-regime parameters ``(gamma, A, kappa, y, B, c)`` of
        ``alpha = exp(-gamma tau/2) [A C(kappa, tau) + B S(kappa, tau)] + c tau + y``;
        ``kappa = omega^2`` is negative for overdamped traces.
    x : ndarray of shape (n_traces,)
        Time shift ``min t`` of every trace (data, not a parameter).
    regime : ndarray of str of shape (n_traces,)
        ``"underdamped"``, ``"critical"``, ``"overdamped"``, ``"degenerate"`` (no
        transient: ``gamma`` and ``omega`` are not identifiable) or ``"failed"``.
    status : ndarray of int of shape (n_traces,)
        Termination code, see :data:`STATUS_MESSAGES`; ``success = status > 0``.
    success : ndarray of bool of shape (n_traces,)
    message : ndarray of str of shape (n_traces,)
    n_iter : ndarray of int of shape (n_traces,)
        Newton / Levenberg-Marquardt iterations (the cold-start grid is not counted).
    cost : ndarray of shape (n_traces,)
        The objective at the solution: ``SSR / 2`` without ``noise_sd`` and prior;
        ``n/2 ln sigma^2 + SSR / (2 sigma^2)`` with ``noise_sd``; plus
        ``sum_d [ln sd_d + (s_d - mean_d)^2 / (2 sd_d^2)]`` with a prior.
    ssr : ndarray of shape (n_traces,)
        Sum of squared residuals.
    n_points : ndarray of int of shape (n_traces,)
    noise_sd : ndarray of shape (n_traces,)
        The noise standard deviation used for :attr:`hessian` and :attr:`covariance`:
        ``noise_sd`` when given, else ``sqrt(SSR / (n - 6))`` (NaN when ``n <= 6``).
    hessian : ndarray of shape (n_traces, 6, 6)
        Hessian of the paper-space objective
        ``n/2 ln sigma^2 + SSR / (2 sigma^2) [+ prior]`` at the solution, exact (second-order
        terms included), with ``sigma = noise_sd``. NaN where ``params`` has NaN.
    jtj : ndarray of shape (n_traces, 6, 6)
        Gauss-Newton matrix ``J^T J`` of the model in paper space (not divided by sigma^2).
    covariance : ndarray of shape (n_traces, 6, 6)
        Laplace covariance ``hessian^{-1}``; NaN where the Hessian is not positive
        definite or not finite. :meth:`covariance_of` returns ``None`` there.
    model : {"general", "paper"}
        Parametrisation that was optimised.
    has_prior : bool
    jtr : ndarray of shape (n_traces, 6) or None
        ``J^T r`` in paper space (``r = z - alpha``, not divided by sigma^2), from the fit's
        last evaluation: with :attr:`jtj` and :attr:`ssr` it gives the gradient of the
        objective under any Gaussian prior and noise level,
        ``-jtr / sigma^2 + (s - mean) / sd^2``, without a second pass over the samples.
        NaN where ``params`` has NaN.
    gradient : ndarray of shape (n_traces, 6) or None
        Gradient of :attr:`cost` with respect to ``params`` at the solution (what
        :func:`~greyanom.traces.objective_terms` returns there with the same ``prior`` and
        ``noise_sd``): about zero at an interior optimum, non-zero at an active bound
        (``omega = 0``, ``|phi| = pi/2``) or where the fit stopped early.
    """

    params: pd.DataFrame
    general: pd.DataFrame
    x: np.ndarray
    regime: np.ndarray
    status: np.ndarray
    success: np.ndarray
    message: np.ndarray
    n_iter: np.ndarray
    cost: np.ndarray
    ssr: np.ndarray
    n_points: np.ndarray
    noise_sd: np.ndarray
    hessian: np.ndarray
    jtj: np.ndarray
    covariance: np.ndarray
    model: str
    has_prior: bool
    jtr: np.ndarray | None = None
    gradient: np.ndarray | None = None

    def __len__(self):
        return len(self.params)

    def __repr__(self):
        regimes = pd.Series(self.regime).value_counts().to_dict()
        return (
            f"SignatureFit(n_traces={len(self)}, model={self.model!r}, "
            f"success={int(self.success.sum())}/{len(self)}, regimes={regimes})"
        )

    @property
    def keys(self):
        """Trace keys (the index of :attr:`params`)."""
        return self.params.index

    def covariance_of(self, j):
        """Laplace covariance of trace ``j`` as a (6, 6) array, or ``None`` if singular."""
        cov = self.covariance[j]
        return None if np.isnan(cov).any() else cov.copy()

    def to_frame(self):
        """One row per trace: parameters, regime, status, iterations, cost, SSR, points."""
        frame = self.params.copy()
        frame["x"] = self.x
        frame["regime"] = self.regime
        frame["status"] = self.status
        frame["success"] = self.success
        frame["n_iter"] = self.n_iter
        frame["cost"] = self.cost
        frame["ssr"] = self.ssr
        frame["n_points"] = self.n_points
        return frame

    def predict(self, times):
        """Fitted curves at the given times.

        Parameters
        ----------
        times : Traces, sequence of 1-D arrays, or 1-D array
            Times per trace (a :class:`Traces` or one array per trace, in the order of
            :attr:`params`), or one array of times shared by every trace.

        Returns
        -------
        curves : list of ndarray, or ndarray of shape (n_traces, n_times)
            A list for per-trace times, a 2-D array for shared times. The time shift
            ``x`` of each fitted trace is applied, so pass absolute times.
        """
        n = len(self)
        if isinstance(times, Traces):
            if len(times) != n:
                raise ValueError(f"times has {len(times)} traces; the fit has {n}.")
            t, offsets, shared = times.t, times.offsets, None
        else:
            arr = None
            if isinstance(times, np.ndarray) and times.ndim == 1 and times.dtype != object:
                arr = times
            if arr is not None:
                shared = np.ascontiguousarray(arr, dtype=np.float64)
                t = np.tile(shared, n)
                offsets = np.arange(n + 1, dtype=np.int64) * shared.shape[0]
            else:
                if len(times) != n:
                    raise ValueError(f"times has {len(times)} arrays; the fit has {n} traces.")
                parts = [np.asarray(a, dtype=np.float64).ravel() for a in times]
                t = np.concatenate(parts) if parts else np.zeros(0)
                offsets = np.concatenate([[0], np.cumsum([p.shape[0] for p in parts])])
                offsets = offsets.astype(np.int64)
                shared = None
        paper = self.model == "paper"
        table = self.params if paper else self.general
        out = np.empty(t.shape[0])
        _kernels.predict_batch(
            t, offsets, self.x, np.ascontiguousarray(table.to_numpy(dtype=np.float64)), paper, out
        )
        if shared is not None:
            return out.reshape(n, shared.shape[0])
        return [out[offsets[j] : offsets[j + 1]] for j in range(n)]
