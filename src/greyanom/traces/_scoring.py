"""Array-level scoring of the shape detector: the frozen normal model, the configuration, the
score terms, the time origins and the wafer features of fitted traces.

No pandas here: the frames (:mod:`greyanom.traces._frames`) cut traces into arrays and call
these functions; the detector (:mod:`greyanom.traces._shape_detector`) holds the fitted tables.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from greyanom.traces import _kernels
from greyanom.traces._fit import numba_threads, objective_terms
from greyanom.traces._hierarchy import PARAMS

__all__ = [
    "NormalModel",
    "FitConfig",
    "change_split",
    "score_terms",
    "nominal_start",
    "trace_origins",
    "clock_offsets",
    "clock_origins",
    "write_features",
]


@dataclasses.dataclass(frozen=True)
class NormalModel:
    """Normal model of one (tool, sensor, step) group.

    Attributes
    ----------
    noise_sd : float
        :math:`\\sigma^*`, the noise sd of normal traces.
    mu, sd : ndarray of shape (6,)
        Mean and sd of the Gaussian prior on ``(gamma, R, omega, y, phi, c)``.
    t_start, t_tol : float
        Nominal step start and the tolerance on a trace's first sample time (see
        :func:`nominal_start`); ``t_tol`` NaN: each trace starts at its first sample.
    t_clock, t_offset, t_offset_tol : float
        The set of groups whose steps start together on each wafer, the offset of this
        group's start from the set's clock and the tolerance on a trace's first sample around
        it (see :func:`clock_offsets`); NaN: no wafer clock.
    """

    noise_sd: float
    mu: np.ndarray
    sd: np.ndarray
    t_start: float = np.nan
    t_tol: float = np.nan
    t_clock: float = np.nan
    t_offset: float = np.nan
    t_offset_tol: float = np.nan

    @property
    def prior(self):
        """``(noise_sd, mu, sd)``, the form ``fit_lot(init=...)`` takes."""
        return (self.noise_sd, self.mu, self.sd)

    @classmethod
    def from_row(cls, row):
        """From a row of ``normal_model_`` (a mapping with ``noise_sd``, ``mu_<p>``, ``sd_<p>``)."""
        return cls(
            noise_sd=float(row["noise_sd"]),
            mu=np.array([row[f"mu_{p}"] for p in PARAMS], dtype=np.float64),
            sd=np.array([row[f"sd_{p}"] for p in PARAMS], dtype=np.float64),
            t_start=float(row.get("t_start", np.nan)),
            t_tol=float(row.get("t_tol", np.nan)),
            t_clock=float(row.get("t_clock", np.nan)),
            t_offset=float(row.get("t_offset", np.nan)),
            t_offset_tol=float(row.get("t_offset_tol", np.nan)),
        )


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What the work units need of the detector's parameters (picklable, for dask)."""

    time: str
    value: str
    start_time: str | None
    trace_keys: tuple
    group_keys: tuple
    lot_key: str | None
    max_em_iter: int
    em_tol: float
    min_points: int
    min_lot_size: int
    n_jobs: int | None
    lot_prior: str
    group: tuple = ()
    #: internal column with each trace's wafer-clock origin (:func:`clock_origins`), or None
    clock_origin: str | None = None
    #: column of each wafer's run order within its lot (read for the wafer features only), or None
    order_key: str | None = None

    @property
    def lot_fits(self):
        """Whether lots are fitted with a lot prior (``lot_prior != "normal"``)."""
        return self.lot_prior != "normal"


#: A group whose training traces start within this many median sampling intervals of each
#: other (10th to 90th percentile of the first sample times) has a nominal step start.
ALIGNED_STEPS = 2.0
#: A trace whose first sample lies within the training range plus this many mean sampling
#: intervals of the nominal start takes the nominal start as its origin (up to about three
#: missing first samples of irregularly sampled traces).
MISSING_STEPS = 8.0
#: A trace may start up to this fraction of its extent (from its wafer-clock origin to its
#: last sample) after that origin and keep it (:func:`clock_origins`).
LATE_FRACTION = 0.25
#: Float columns of the per-trace analysis, in the order of the array it is filled in.
RESULT_FLOAT = [
    *PARAMS,
    "ssr",
    "p_eff",
    "fit",
    *[f"P_{p}" for p in PARAMS],
    "score",
    "score_raw",
    *[f"d_{p}" for p in PARAMS],
    "log_sd",
    "feat_y",
    "feat_c",
    "duration",
    "origin",
]
#: Points of normalised step time at which the fitted curve is sampled (wafer features).
N_CURVE = 8
CURVE_COLS = [f"curve_{j}" for j in range(N_CURVE)]
RESULT_FLOAT += CURVE_COLS
#: Equal segments of normalised step time over which the mean residual of the fitted curve is
#: a wafer feature (what the curve smooths over: a late shift, a bump).
N_SEGMENTS = 4
SEGMENT_COLS = [f"res_{j}" for j in range(N_SEGMENTS)]
RESULT_FLOAT += ["raw_mean", "log_raw_sd", *SEGMENT_COLS]

#: Column positions in the analysis array.
COL = {c: i for i, c in enumerate(RESULT_FLOAT)}


def cols(*names):
    """Positions of the named columns of :data:`RESULT_FLOAT`."""
    return [COL[c] for c in names]


def nominal_start(times):
    """``(t_start, t_tol)`` of a group from its training traces' sample times.

    ``t_start`` is the median first sample time. When the first sample times agree (their
    10-90 % range is at most ``ALIGNED_STEPS`` median sampling intervals), a trace whose first
    sample lies within ``t_tol = range + MISSING_STEPS * mean interval`` of ``t_start`` takes
    ``t_start`` as its time origin, so that a few missing first samples do not shift its
    signature. Otherwise (e.g. absolute clock times, or a clock offset per wafer) ``t_tol``
    is NaN and every trace starts at its own first sample (pass ``start_time`` then).
    """
    first = np.array([t[0] for t in times if t.size])
    steps = [np.median(np.diff(t)) for t in times if t.size > 1]
    means = [(t[-1] - t[0]) / (t.size - 1) for t in times if t.size > 1]
    if first.size < 2 or not steps:
        return np.nan, np.nan
    dt, mean_dt = float(np.median(steps)), float(np.median(means))
    lo, hi = np.percentile(first, [10, 90])
    if not (dt > 0) or hi - lo > ALIGNED_STEPS * dt:
        return float(np.median(first)), np.nan
    return float(np.median(first)), float(hi - lo + MISSING_STEPS * mean_dt)


def trace_origins(times, t_start, t_tol, starts=None, clock=None):
    """Time origin of each trace: its step start, the group's nominal start, or NaN (first sample).

    ``clock`` (per trace, from :func:`clock_origins`) is used only for a group without a nominal
    start (``t_tol`` NaN); NaN entries fall back on the first sample.
    """
    if starts is not None:
        return np.asarray(starts, dtype=np.float64)
    out = np.full(len(times), np.nan)
    if not np.isfinite(t_tol):
        return out if clock is None else np.asarray(clock, dtype=np.float64)
    first = np.array([t[0] if t.size else np.nan for t in times])
    near = np.abs(first - t_start) <= t_tol
    out[near] = t_start
    return out


def clock_offsets(first, interval, wafer, group, n_groups):
    """Sets of groups whose steps start together on each wafer, and each group's offset.

    For data in which every wafer has its own clock (the traces' times share an offset that
    changes from wafer to wafer), a group's step start is fixed relative to the other groups
    of its wafer, not in absolute time. Per training trace: ``first`` (first sample time),
    ``interval`` (mean sampling interval), integer codes ``wafer`` and ``group``. Greedily,
    the group with the most traces among those left is a reference; every group left whose
    first sample time minus the reference's agrees over the wafers that have both (10-90 %
    range at most ``ALIGNED_STEPS`` sampling intervals, the larger of the two groups' median
    mean interval, at least two wafers) joins its set, with ``offset`` the median difference
    and ``tol`` the range plus ``MISSING_STEPS`` intervals. A set needs at least two groups
    (one group cannot tell its own missing samples from a late clock); a group in no set
    has NaN.

    Returns
    -------
    clock, offset, tol : ndarray of shape (n_groups,)
        The set (0, 1, ...; NaN: none), the offset of the group's start from the set's
        clock and the tolerance on a trace's first sample around it.
    """
    first = np.asarray(first, dtype=np.float64)
    interval = np.asarray(interval, dtype=np.float64)
    wafer = np.asarray(wafer, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    n_wafers = int(wafer.max()) + 1 if wafer.size else 0
    F = np.full((n_wafers, n_groups), np.nan)
    F[wafer, group] = first
    dt = np.full(n_groups, np.nan)
    for g in np.unique(group):
        m = (group == g) & np.isfinite(interval)
        if m.any():
            dt[g] = np.median(interval[m])
    clock, offset, tol = (np.full(n_groups, np.nan) for _ in range(3))
    count = np.isfinite(F).sum(axis=0)
    left = np.flatnonzero((count >= 2) & (dt > 0))
    k = 0
    while left.size:
        r = left[np.argmax(count[left])]
        D = F[:, left] - F[:, [r]]
        both = np.isfinite(D).sum(axis=0) >= 2
        rng, mid = np.full(left.size, np.inf), np.full(left.size, np.nan)
        if both.any():
            lo, hi = np.nanpercentile(D[:, both], [10, 90], axis=0)
            rng[both], mid[both] = hi - lo, np.nanmedian(D[:, both], axis=0)
        step = np.maximum(dt[left], dt[r])
        join = rng <= ALIGNED_STEPS * step
        join[left == r] = True
        if join.sum() >= 2:
            members = left[join]
            clock[members], offset[members] = k, mid[join]
            offset[r] = 0.0
            tol[members] = rng[join] + MISSING_STEPS * step[join]
            k += 1
            left = left[~join]
        else:
            left = left[left != r]
    return clock, offset, tol


def wafer_clock(first, wafer, offset, n_wafers):
    """Each wafer's clock: the lower median over its traces of ``first - offset`` (per trace).

    ``wafer`` codes a wafer, or a (wafer, set of groups) pair (:func:`clock_origins`).

    Traces with a NaN ``first`` or ``offset`` do not vote; a wafer with fewer than two votes
    gets NaN. The *lower* median because a missing first sample only ever makes a trace start
    late: with two groups the earlier one wins, with three or more a minority of late traces
    cannot move the clock.
    """
    c = np.asarray(first, dtype=np.float64) - np.asarray(offset, dtype=np.float64)
    ok = np.isfinite(c)
    w, c = np.asarray(wafer, dtype=np.int64)[ok], c[ok]
    idx = np.lexsort((c, w))
    w, c = w[idx], c[idx]
    counts = np.bincount(w, minlength=n_wafers)
    starts = np.cumsum(counts) - counts
    out = np.full(n_wafers, np.nan)
    has = counts >= 2
    out[has] = c[starts[has] + (counts[has] - 1) // 2]
    return out


def clock_origins(first, last, wafer, clock, offset, tol, vote):
    """Time origin of each trace from its wafer's clock (NaN: use its first sample).

    ``first``, ``last``: first and last sample time of each trace; ``clock``, ``offset``,
    ``tol``: its group's :func:`clock_offsets` (per trace); ``vote`` (bool, per trace):
    whether the trace takes part in :func:`wafer_clock` (traces long enough to fit). Per
    wafer and set of groups, the clock is the lower median of ``first - offset`` over the
    set's traces; a trace's candidate origin is ``clock + offset``. It takes it when its
    first sample lies at most ``tol`` before it, or at most
    ``max(tol, LATE_FRACTION * (last - candidate))`` after it (missing first samples only
    make a trace start late), so a trace missing its first samples keeps its wafer's origin.
    """
    first = np.asarray(first, dtype=np.float64)
    last = np.asarray(last, dtype=np.float64)
    clock = np.asarray(clock, dtype=np.float64)
    offset = np.where(np.isfinite(clock), np.asarray(offset, dtype=np.float64), np.nan)
    n_sets = int(np.nanmax(clock)) + 1 if np.isfinite(clock).any() else 1
    code = np.asarray(wafer, dtype=np.int64) * n_sets + np.where(np.isfinite(clock), clock, 0).astype(np.int64)
    n_codes = int(code.max()) + 1 if code.size else 0
    base = wafer_clock(np.where(vote, first, np.nan), code, offset, n_codes)
    origin = base[code] + offset
    tol = np.asarray(tol, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        late = first - origin
        near = (late >= -tol) & (late <= np.maximum(tol, LATE_FRACTION * (last - origin)))
    return np.where(near, origin, np.nan)


def score_terms(x, ssr, n_points, jtj, model):
    """Centred additive decomposition of the anomaly score under the normal model.

    With ``A = J'J / sigma*^2`` and ``H = A + W`` (``W = diag(sigma*_S)^-2``), a signature
    estimated from a normal trace has ``E[SSR / sigma*^2] = n - p`` with ``p = tr(H^-1 A)``
    and ``E[z_d^2] = 1 - (H^-1)_dd / sigma*_S,d^2``; these expectations are subtracted term by
    term. They add up to ``n``, so the centred score is ``anom - E[anom]`` exactly.
    """
    sigma, mu, sd = model.noise_sd, model.mu, model.sd
    z = (x - mu) / sd
    W = np.diag(1.0 / sd**2)
    A = jtj / sigma**2
    Hinv = np.linalg.inv(A + W[None])
    p_eff = np.einsum("mij,mji->m", Hinv, A)
    shrink = np.diagonal(Hinv, axis1=1, axis2=2) / sd**2
    P = 0.5 * (z**2 - (1.0 - shrink))
    fit = ssr / (2.0 * sigma**2) - 0.5 * (n_points - p_eff)
    raw = 0.5 * n_points * np.log(sigma**2) + ssr / (2.0 * sigma**2) + (np.log(sd) + 0.5 * z**2).sum(axis=1)
    return p_eff, fit, P, raw


_SD_FLOOR = 1e-12


def _unit(v):
    """``min(1, max |v|)``, or 1 when ``v`` is all zero: the size below which a floor scales with the data."""
    size = float(np.max(np.abs(v))) if v.size else 0.0
    return min(1.0, size) if size > 0 else 1.0


def write_features(A, ok, fit, traces=None):
    """Wafer features of the fitted rows ``ok`` of ``A``: curve at N_CURVE points, log sd, y, c.

    With ``traces`` (the fitted traces, rows of ``fit``) also ``raw_mean``, the mean of the
    trace's samples, ``log_raw_sd``, the log of their standard deviation (``ddof=1``, floored
    at 1e-12 times ``min(1, max |value|)``, so a constant trace stays finite and traces in tiny
    units keep their spread), and ``res_0`` ... ``res_{N_SEGMENTS-1}``, the mean residual
    ``value - fitted curve`` of the samples in each of ``N_SEGMENTS`` equal segments of
    normalised step time ``u = (t - origin) / duration`` (0 for a segment without a sample).
    """
    x = fit.params.to_numpy(dtype=np.float64)
    ssr = np.asarray(fit.ssr, dtype=np.float64)
    good = np.isfinite(x).all(axis=1) & np.isfinite(ssr)
    g = ok[good]
    if not g.size:
        return
    grid = np.linspace(0.0, 1.0, N_CURVE)
    dur = A[g, COL["duration"]]
    x0 = np.asarray(fit.x, dtype=np.float64)[good]
    A[np.ix_(g, cols(*CURVE_COLS))] = curve_at(fit, good, [x0[j] + grid * dur[j] for j in range(g.size)])
    npts = np.asarray(fit.n_points, dtype=np.float64)[good]
    A[g, COL["log_sd"]] = 0.5 * np.log(np.maximum(ssr[good] / npts, 1e-300))
    A[g, COL["feat_y"]] = x[good, PARAMS.index("y")]
    A[g, COL["feat_c"]] = x[good, PARAMS.index("c")]
    if traces is not None:
        _write_residual_features(A, g, good, fit, traces, x0, dur)


def _write_residual_features(A, g, good, fit, traces, x0, dur):
    """``raw_mean``, ``log_raw_sd`` and the segment residual means of rows ``g`` (``good`` rows of ``fit``)."""
    off = traces.offsets
    idx = np.flatnonzero(good)
    t = [traces.t[off[j]:off[j + 1]] for j in idx]
    v = [traces.z[off[j]:off[j + 1]] for j in idx]
    lens = np.array([a.size for a in t], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(lens)].astype(np.int64)
    pred = _predict(fit, good, np.concatenate(t), offsets)
    for r, (tj, vj) in enumerate(zip(t, v)):
        A[g[r], COL["raw_mean"]] = vj.mean()
        floor = _SD_FLOOR * _unit(vj)
        A[g[r], COL["log_raw_sd"]] = np.log(max(vj.std(ddof=1), floor)) if vj.size > 1 else np.log(floor)
        res = vj - pred[offsets[r]:offsets[r + 1]]
        u = (tj - x0[r]) / dur[r] if dur[r] > 0 else np.zeros_like(tj)
        seg = np.clip((u * N_SEGMENTS).astype(np.int64), 0, N_SEGMENTS - 1)
        s = np.bincount(seg, weights=res, minlength=N_SEGMENTS)
        n = np.bincount(seg, minlength=N_SEGMENTS)
        A[g[r], cols(*SEGMENT_COLS)] = np.where(n > 0, s / np.maximum(n, 1), 0.0)


def curve_at(fit, rows, times):
    """Fitted curves of the ``rows`` (boolean mask) of ``fit`` at per-trace ``times``."""
    t = np.concatenate(times) if times else np.zeros(0)
    offsets = np.arange(len(times) + 1, dtype=np.int64) * N_CURVE
    return _predict(fit, rows, t, offsets).reshape(len(times), N_CURVE)


def _predict(fit, rows, t, offsets):
    """Fitted curves of the ``rows`` of ``fit`` at flat times ``t`` (CSR ``offsets``)."""
    paper = fit.model == "paper"
    table = (fit.params if paper else fit.general).to_numpy(dtype=np.float64)[rows]
    x = np.asarray(fit.x, dtype=np.float64)[rows]
    out = np.empty(t.shape[0])
    with numba_threads(None, offsets.shape[0] - 1):  # small batches: one thread
        _kernels.predict_batch(np.ascontiguousarray(t, dtype=np.float64), offsets, x, np.ascontiguousarray(table), paper, out)
    return out


def change_split(traces, before, after, terms_before, terms_after, model, origin):
    """Split of the parameter terms' change between two signatures of one group.

    Returns an array (6, 5): per parameter ``delta``, the midpoint gradient
    ``g_mid = grad + Hess delta / 2`` at ``before`` (the paper's section 5), ``g_mid * delta``,
    ``(s_mid - mu) / sd^2 * delta`` (exactly the change of ``z^2 / 2``, midpoint rule) and the
    exact contribution ``terms_after - terms_before`` (which also holds the change of each
    term's centring constant, the posterior variance).
    """

    _, grad, hess = objective_terms(
        traces, before[None], prior=(model.mu, model.sd), noise_sd=model.noise_sd, n_jobs=1, origin=[origin]
    )
    delta = after - before
    g_mid = grad[0] + hess[0] @ delta / 2.0
    mid = ((after + before) / 2.0 - model.mu) / model.sd**2 * delta
    return np.column_stack([delta, g_mid, g_mid * delta, mid, terms_after - terms_before])
