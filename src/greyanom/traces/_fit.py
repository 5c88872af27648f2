"""``fit_traces`` and ``objective_terms``: validation and post-processing around the kernels."""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import warnings

import numba
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning

from greyanom._threads import serial_pools
from greyanom.traces import _kernels
from greyanom.traces._result import GENERAL_NAMES, PARAM_NAMES, SignatureFit
from greyanom.traces._status import REGIMES, fit_messages
from greyanom.traces._ragged import Traces

__all__ = ["fit_traces", "objective_terms", "numba_threads", "CRITICAL_TOL", "DEGENERATE_TOL"]

#: A trace is "critical" when |kappa| T^2 <= CRITICAL_TOL (T = time span of the trace), i.e.
#: when the oscillation (or the split of the two decay rates) turns less than
#: sqrt(CRITICAL_TOL) ~ 0.03 rad over the whole trace.
CRITICAL_TOL = 1e-3
#: A trace is "degenerate" (no transient) when its transient coefficients are below
#: DEGENERATE_TOL times the standard deviation of its values.
DEGENERATE_TOL = 1e-8

_MODELS = ("auto", "general", "paper")


#: Below this many traces ``n_jobs=None`` runs on one thread: starting the parallel region
#: costs more than fitting a lot of a few dozen traces.
SMALL_BATCH = 256


@contextlib.contextmanager
def numba_threads(n_jobs, n_items=None):
    """Run the block with ``n_jobs`` Numba threads; restore the old setting in ``finally``.

    ``None`` keeps the current setting, except for batches of fewer than ``SMALL_BATCH``
    items (``n_items``), which run on one thread; ``-1`` uses all threads; negative values
    count back from all threads as in scikit-learn (``-2``: all but one). Inside a detector's
    :func:`greyanom._threads.thread_pools` section the current setting is that section's.
    BLAS and torch run on one thread meanwhile (:func:`greyanom._threads.serial_pools`): no
    pool starts threads inside Numba's parallel loops.
    """
    with serial_pools(blas=True, torch=True):
        with _numba_threads(n_jobs, n_items) as n:
            yield n


@contextlib.contextmanager
def _numba_threads(n_jobs, n_items):
    old = numba.get_num_threads()
    if n_jobs is None:
        if n_items is None or n_items >= SMALL_BATCH:
            yield old
            return
        n_jobs = 1
    if not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None or a non-zero integer, got {n_jobs!r}.")
    total = numba.config.NUMBA_NUM_THREADS
    n = int(n_jobs) if n_jobs > 0 else max(1, total + 1 + int(n_jobs))
    n = min(n, total)
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(old)


def _check_traces(traces):
    if not isinstance(traces, Traces):
        raise TypeError(
            f"traces must be a greyanom.traces.Traces (see Traces.from_arrays / from_frame), "
            f"got {type(traces).__name__}."
        )
    return traces


def _per_trace(value, n, name, *, width=None, positive=False):
    arr = np.asarray(value, dtype=np.float64)
    shape = (n,) if width is None else (n, width)
    if width is None:
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
    elif arr.ndim == 1 and arr.shape == (width,):
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        expected = "a scalar or shape (n_traces,)" if width is None else f"shape ({width},) or (n_traces, {width})"
        raise ValueError(f"{name} must have {expected} with n_traces={n}; got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    if positive and not (arr > 0).all():
        raise ValueError(f"{name} must be strictly positive.")
    return np.ascontiguousarray(arr)


def _parse_prior(prior, noise_sd, n):
    if prior is None:
        mu = np.zeros((n, 6))
        w = np.zeros((n, 6))
        sd = None
    else:
        if not isinstance(prior, (tuple, list)) or len(prior) != 2:
            raise TypeError("prior must be None or a pair (mean, sd).")
        mu = _per_trace(prior[0], n, "prior mean", width=6)
        sd = _per_trace(prior[1], n, "prior sd", width=6, positive=True)
        w = 1.0 / sd**2
        if noise_sd is None:
            raise ValueError("noise_sd is required when a prior is given (it weighs data against prior).")
    s = None if noise_sd is None else _per_trace(noise_sd, n, "noise_sd", positive=True)
    return mu, w, sd, s


def _general_from_paper(p):
    g = p.copy()
    g[:, 1] = p[:, 1] * np.cos(p[:, 4])
    g[:, 2] = p[:, 2] ** 2
    g[:, 4] = p[:, 2] * p[:, 1] * np.sin(p[:, 4])
    return g


def fit_traces(
    traces,
    *,
    prior=None,
    noise_sd=None,
    init=None,
    model="auto",
    n_jobs=None,
    max_iter=100,
    tol=1e-8,
    origin=None,
):
    """Fit the damped, linearly driven oscillator to every trace.

    Fits ``alpha(t) = R exp(-gamma (t-x)/2) cos(omega (t-x) - phi) + c (t-x) + y`` with
    ``x = min t`` per trace (the paper's eq. (11); ``origin`` sets it), or its continuation to critically and
    over-damped loops, by a bounded Levenberg-Marquardt / damped Newton method started
    from a variable-projection grid.

    Parameters
    ----------
    traces : Traces
        The traces to fit.
    prior : None or tuple (mean, sd), default=None
        Gaussian prior on the paper's signature ``(gamma, R, omega, y, phi, c)``; ``mean``
        and ``sd`` are array-like of shape (6,) or (n_traces, 6). The objective per trace
        becomes ``n/2 ln sigma^2 + SSR / (2 sigma^2) + sum_d [ln sd_d +
        (s_d - mean_d)^2 / (2 sd_d^2)]`` (the paper's (15)-(16), corrected; ``x`` stays
        data). Requires ``noise_sd`` and the paper parametrisation.
    noise_sd : float or array-like of shape (n_traces,), default=None
        Measurement noise standard deviation ``sigma``. Without a prior it only scales
        :attr:`~SignatureFit.cost`, :attr:`~SignatureFit.hessian` and the covariance.
    init : array-like of shape (n_traces, 6), default=None
        Starting signatures in paper space (warm start, e.g. the previous solution of a
        hierarchical fit). Rows with a NaN use the cold start.
    model : {"auto", "general", "paper"}, default="auto"
        ``"general"`` fits the all-regime form (under-, critically, over-damped);
        ``"paper"`` fits (11) itself with ``omega >= 0`` and ``phi`` in ``[-pi/2, pi/2]``
        (projected when a prior is given, canonicalised by the model's symmetries
        otherwise), so that every successful trace has finite paper parameters and a
        finite paper-space Hessian; overdamped loops then get the best (11) can do.
        ``"auto"`` is ``"paper"`` with a prior and ``"general"`` without.
    n_jobs : int or None, default=None
        Numba threads (``None``: the current setting, or one thread for fewer than 256
        traces; ``-1``: all).
    max_iter : int, default=100
        Maximum Newton / Levenberg-Marquardt iterations per trace.
    tol : float, default=1e-8
        Relative tolerance on the objective reduction and on the step.
    origin : float or array-like of shape (n_traces,), default=None
        Time origin ``x`` of each trace, e.g. the start of its step, so that a trace whose
        first samples are missing keeps its signature; ``None`` or NaN: the first sample.

    Returns
    -------
    fit : SignatureFit
        Parameters, regimes, statuses, costs, Hessians and covariances per trace.

    Warns
    -----
    ConvergenceWarning
        Once, with the count, when some traces were not fitted successfully (status
        ``<= 0``). Failure is data: see ``fit.status`` and ``fit.message``.

    See Also
    --------
    objective_terms : the paper-space objective, gradient and Hessian at given signatures.
    greyanom.datasets.simulate_pi_loop : closed-loop traces to try it on.

    Notes
    -----
    The model is linear in ``(A, B, c, y)`` for fixed ``(gamma, omega)``. The cold start
    solves that linear problem on a grid of decay rates and frequencies (and pairs of
    decay rates, for overdamped loops) on at most 48 points of each trace and keeps the
    best grid point; one fused Numba pass per iteration then gives residuals, ``J^T J``,
    ``J^T r`` and, in paper space, the exact second-order terms. Traces are normalised
    (time to ``[0, 1]``, values to unit variance) inside the kernels, and parameters are
    reported in the units of the data.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.traces import Traces, fit_traces
    >>> t = np.linspace(0.0, 20.0, 150)
    >>> z = 2.0 * np.exp(-0.3 * t / 2) * np.cos(1.2 * t - 0.4) + 0.05 * t + 1.0
    >>> fit = fit_traces(Traces.from_arrays([t], [z]))
    >>> str(fit.regime[0]), np.round(fit.params.iloc[0].to_numpy(), 3).tolist()
    ('underdamped', [0.3, 2.0, 1.2, 1.0, 0.4, 0.05])
    """
    result = _fit_traces(
        traces, prior=prior, noise_sd=noise_sd, init=init, model=model, n_jobs=n_jobs,
        max_iter=max_iter, tol=tol, origin=origin,
    )
    n, success = len(result), result.success
    n_bad = int((~success).sum())
    if n_bad:
        warnings.warn(
            f"{n_bad} of {n} trace(s) were not fitted successfully; see fit.status and fit.message.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result


def _origin(origin, n):
    """Per-trace time origins (NaN: the trace's first sample)."""
    if origin is None:
        return np.full(n, np.nan)
    o = np.asarray(origin, dtype=np.float64)
    o = np.full(n, float(o)) if o.ndim == 0 else o
    if o.shape != (n,):
        raise ValueError(f"origin must be a float or have shape (n_traces,) = ({n},); got {o.shape}.")
    return np.ascontiguousarray(o)


def _terms(traces, params, mu, w, s2, origin=None):
    n = len(traces)
    f = np.empty(n)
    g = np.empty((n, 6))
    h = np.empty((n, 6, 6))
    jtj = np.empty((n, 6, 6))
    ssr = np.empty(n)
    _kernels.terms_batch(
        traces.t, traces.z, traces.offsets, np.ascontiguousarray(params, dtype=np.float64),
        np.ascontiguousarray(mu), np.ascontiguousarray(w), np.ascontiguousarray(s2), f, g, h, jtj, ssr,
        _origin(origin, n),
    )
    return f, g, h, jtj, ssr


def prior_gradient(jtr, params, mean, sd, noise_sd):
    """Gradient of ``SSR / (2 sigma^2) + sum_d (s_d - mean_d)^2 / (2 sd_d^2)`` from ``J^T r``.

    ``jtr`` (n_traces, 6) is :attr:`SignatureFit.jtr` at ``params`` (n_traces, 6), so any
    Gaussian prior ``(mean, sd)`` and noise level ``noise_sd`` give the gradient
    :func:`objective_terms` would compute, without evaluating the traces again.
    """
    return -np.asarray(jtr) / noise_sd**2 + (np.asarray(params) - mean) / sd**2


def objective_terms(traces, params, prior=None, noise_sd=None, *, n_jobs=None, origin=None):
    """Objective, gradient and Hessian per trace in paper space at given signatures.

    ``f(s) = n/2 ln sigma^2 + SSR(s) / (2 sigma^2) + sum_d [ln sd_d + (s_d - mean_d)^2 /
    (2 sd_d^2)]`` with ``tau = t - min t`` (the prior terms only when ``prior`` is given;
    ``sigma = 1`` when ``noise_sd`` is ``None``, which makes ``f = SSR / 2``).

    Parameters
    ----------
    traces : Traces
    params : array-like of shape (n_traces, 6) or DataFrame
        Signatures ``(gamma, R, omega, y, phi, c)`` (a DataFrame is read by column name,
        e.g. ``fit.params``).
    prior : None or tuple (mean, sd), default=None
        As in :func:`fit_traces`.
    noise_sd : float or array-like of shape (n_traces,), default=None
    n_jobs : int or None, default=None
    origin : float or array-like of shape (n_traces,), default=None
        Time origin ``x`` of each trace (``tau = t - x``); ``None`` or NaN: its first sample.

    Returns
    -------
    f : ndarray of shape (n_traces,)
    grad : ndarray of shape (n_traces, 6)
    hess : ndarray of shape (n_traces, 6, 6)
        Exact (second-order terms included).
    """
    traces = _check_traces(traces)
    n = len(traces)
    if isinstance(params, pd.DataFrame):
        missing = [c for c in PARAM_NAMES if c not in params.columns]
        if missing:
            raise ValueError(f"params is missing the column(s) {missing}; expected {list(PARAM_NAMES)}.")
        p = params[list(PARAM_NAMES)].to_numpy(dtype=np.float64)
    else:
        p = params
    p = _per_trace(p, n, "params", width=6)
    if prior is None:
        mu, w, sd = np.zeros((n, 6)), np.zeros((n, 6)), None
        s = np.ones(n) if noise_sd is None else _per_trace(noise_sd, n, "noise_sd", positive=True)
    else:
        mu, w, sd, s = _parse_prior(prior, noise_sd, n)
    with numba_threads(n_jobs, n):
        f, g, h, _, _ = _terms(traces, p, mu, w, s**2, origin)
    if sd is not None:
        f = f + np.log(sd).sum(axis=1)
    return f, g, h


@dataclasses.dataclass(frozen=True)
class _ArrayFit:
    """What the fit kernel returns, as plain arrays (no pandas): the inner loops of the lot
    fits and of the detector read these; :func:`_signature_fit` frames them once.

    ``p`` is in the fitted space (general or paper), ``pp`` in paper space; ``regime`` holds
    the kernel's codes; the rest as in :class:`SignatureFit`.
    """

    p: np.ndarray
    pp: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    x: np.ndarray
    ssr: np.ndarray
    regime: np.ndarray
    s2: np.ndarray
    hessian: np.ndarray
    jtj: np.ndarray
    covariance: np.ndarray
    jtr: np.ndarray
    gradient: np.ndarray
    cost: np.ndarray
    n_points: np.ndarray
    model: str
    has_prior: bool

    @property
    def success(self):
        return self.status > 0

    def __len__(self):
        return self.status.shape[0]


_PARAM_INDEX = pd.Index(PARAM_NAMES)
_GENERAL_INDEX = pd.Index(GENERAL_NAMES)


def _signature_fit(raw, keys):
    """The public :class:`SignatureFit` of an :class:`_ArrayFit` (``keys``: the trace keys or None)."""
    paper = raw.model == "paper"
    general = raw.p if not paper else _general_from_paper(raw.p)
    return SignatureFit(
        params=pd.DataFrame(raw.pp, index=keys, columns=_PARAM_INDEX),
        general=pd.DataFrame(general, index=keys, columns=_GENERAL_INDEX),
        x=raw.x,
        regime=REGIMES[raw.regime],
        status=raw.status,
        success=raw.success,
        message=fit_messages(raw.status),
        n_iter=raw.n_iter,
        cost=raw.cost,
        ssr=raw.ssr,
        n_points=raw.n_points,
        noise_sd=np.sqrt(raw.s2),
        hessian=raw.hessian,
        jtj=raw.jtj,
        covariance=raw.covariance,
        model=raw.model,
        has_prior=raw.has_prior,
        jtr=raw.jtr,
        gradient=raw.gradient,
    )


def _fit_traces(traces, **kwargs):
    """:func:`fit_traces` without the ConvergenceWarning (failures are in ``status``).

    ``origin`` (float or (n_traces,), NaN or None: the first sample) is the time origin ``x``
    of each trace, e.g. the start of its step.
    """
    return _signature_fit(_fit_arrays(traces, **kwargs), traces.keys)


def _fit_arrays(
    traces, *, prior=None, noise_sd=None, init=None, model="auto", n_jobs=None, max_iter=100, tol=1e-8, origin=None
):
    """:func:`_fit_traces` returning plain arrays (an :class:`_ArrayFit`)."""
    traces = _check_traces(traces)
    n = len(traces)
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}.")
    if model == "auto":
        model = "general" if prior is None else "paper"
    if prior is not None and model != "paper":
        raise ValueError("a prior acts on the paper's parameters: use model='paper' (or 'auto').")
    if not isinstance(max_iter, numbers.Integral) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}.")
    if not isinstance(tol, numbers.Real) or not (0 < tol < 1):
        raise ValueError(f"tol must be a float in (0, 1), got {tol!r}.")
    mu, w, prior_sd, sigma = _parse_prior(prior, noise_sd, n)
    paper = model == "paper"
    if init is None:
        start = np.zeros((n, 6))
        has_init = np.zeros(n, dtype=bool)
    else:
        start = np.asarray(init, dtype=np.float64)
        if start.shape != (n, 6):
            raise ValueError(f"init must have shape (n_traces, 6) = ({n}, 6); got {start.shape}.")
        has_init = np.isfinite(start).all(axis=1)
        start = np.where(has_init[:, None], start, 0.0)
        if not paper:
            start = _general_from_paper(start)
        start = np.ascontiguousarray(start)
    noise_s2 = np.full(n, np.nan) if sigma is None else sigma**2
    min_points = 1 if prior is not None else 6

    opts = (min_points, int(max_iter), float(tol), CRITICAL_TOL, DEGENERATE_TOL)
    with numba_threads(n_jobs, n):
        out_p, out_pp, status, n_iter, x, ssr, regime, s2, hess, jtj, cov, jtr, grad = _kernels.fit_batch(
            traces.t, traces.z, traces.offsets, _origin(origin, n), paper, start, has_init, mu, w, noise_s2, opts,
        )
    n_pts = traces.n_points
    with np.errstate(divide="ignore", invalid="ignore"):
        if sigma is None:
            cost = 0.5 * ssr
        else:
            cost = 0.5 * n_pts * np.log(s2) + ssr / (2 * s2)
            if prior_sd is not None:
                cost = cost + np.sum(np.log(prior_sd) + 0.5 * w * (out_pp - mu) ** 2, axis=1)
    return _ArrayFit(
        p=out_p, pp=out_pp, status=status, n_iter=n_iter, x=x, ssr=ssr, regime=regime, s2=s2, hessian=hess,
        jtj=jtj, covariance=cov, jtr=jtr, gradient=grad, cost=cost, n_points=n_pts, model=model,
        has_prior=prior_sd is not None,
    )


@dataclasses.dataclass(frozen=True)
class _FitRequest:
    """One pending :func:`_fit_arrays` call (``traces`` and its keyword arguments), so that the
    fits of many small batches (the (group, lot) chunks of an analysis) run as one kernel call."""

    traces: Traces
    kwargs: dict


def _slice_fit(fit, lo, hi):
    """Rows ``lo:hi`` of an :class:`_ArrayFit`."""
    fields = {f.name: getattr(fit, f.name) for f in dataclasses.fields(fit)}
    return _ArrayFit(**{k: (v[lo:hi] if isinstance(v, np.ndarray) else v) for k, v in fields.items()})


def _concat_traces(batch):
    """One :class:`Traces` holding the traces of every element of ``batch``, in order."""
    counts = np.concatenate([b.n_points for b in batch])
    out = object.__new__(Traces)  # the parts are valid Traces already: skip the checks of __init__
    out.t = np.concatenate([b.t for b in batch])
    out.z = np.concatenate([b.z for b in batch])
    out.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out.keys = pd.RangeIndex(counts.size, name="trace")
    out.nan_policy = batch[0].nan_policy
    return out


def _fit_many(requests, n_jobs=None):
    """:func:`_fit_arrays` of every :class:`_FitRequest`, in one kernel call per kind of fit.

    Requests that differ only in their per-trace arguments (prior, noise sd, start, origin) are
    concatenated; each trace's fit is independent of the others in its batch, so the results are
    those of separate calls, row for row.
    """
    out = [None] * len(requests)
    kinds = {}
    for i, r in enumerate(requests):
        kw = r.kwargs
        key = (kw.get("model", "auto"), kw.get("prior") is None, kw.get("noise_sd") is None,
               kw.get("max_iter", 100), kw.get("tol", 1e-8))
        kinds.setdefault(key, []).append(i)
    for (model, no_prior, no_sigma, max_iter, tol), idx in kinds.items():
        if len(idx) == 1:
            r = requests[idx[0]]
            out[idx[0]] = _fit_arrays(r.traces, n_jobs=n_jobs, **r.kwargs)
            continue
        sizes = [len(requests[i].traces) for i in idx]

        def stack(name, j=None):
            """Per-trace rows of argument ``name`` (``j``: element of a pair); NaN where absent."""
            parts = []
            for i, n in zip(idx, sizes):
                v = requests[i].kwargs.get(name)
                if j is not None and v is not None:
                    v = v[j]
                shape = (n, 6) if name in ("prior", "init") else (n,)
                parts.append(np.full(shape, np.nan) if v is None
                             else np.broadcast_to(np.asarray(v, dtype=np.float64), shape))
            return np.concatenate(parts)

        prior = None if no_prior else (stack("prior", 0), stack("prior", 1))
        fit = _fit_arrays(
            _concat_traces([requests[i].traces for i in idx]), prior=prior,
            noise_sd=None if no_sigma else stack("noise_sd"), init=stack("init"), model=model,
            n_jobs=n_jobs, max_iter=max_iter, tol=tol, origin=stack("origin"),
        )
        lo = 0
        for i, n in zip(idx, sizes):
            out[i] = _slice_fit(fit, lo, lo + n)
            lo += n
    return out


def _run_fits(steps, n_jobs=None):
    """Drive generators that yield :class:`_FitRequest` and receive their fits, in lock step.

    A generator may also yield a list of requests and receives the list of their fits. Returns
    each generator's return value in order.
    """
    results = [None] * len(steps)
    pending = {}

    def advance(i, value):
        try:
            pending[i] = steps[i].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)

    for i in range(len(steps)):
        advance(i, None)
    while pending:
        idx = list(pending)
        requests, spans = [], []
        for i in idx:
            many = isinstance(pending[i], list)
            spans.append((len(requests), many))
            requests.extend(pending[i] if many else [pending[i]])
        fits = _fit_many(requests, n_jobs) if requests else []
        ends = [a for a, _ in spans[1:]] + [len(requests)]
        for i, (a, many), b in zip(idx, spans, ends):
            advance(i, fits[a:b] if many else fits[a])
    return results
