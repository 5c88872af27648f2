"""Frames of the shape detector: pandas (and dask) preparation and the work units.

Module-level functions, so that dask can ship them to workers: the normal model of one group
(``_fit_group``), the fit and scoring of one (group, lot) chunk (``_analyse_chunk``, arrays
filled once and framed at the end) and the partition drivers. The statuses of traces live in
:data:`STATUSES`, the one table the engine and the detector share.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from greyanom.shape._hierarchy import PARAMS, fit_lot

__all__ = ["STATUSES", "N_CURVE"]

_logger = logging.getLogger(__name__)

#: Per-trace statuses of ``signatures`` and ``explain``.
STATUSES = {
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
#: Fit statuses of values outside the floating-point range of the fit (ST_NONFINITE, ST_RANGE).
_RANGE = (-2, -3)

_NM_COLS = ["noise_sd", *[f"mu_{p}" for p in PARAMS], *[f"sd_{p}" for p in PARAMS], "t_start", "t_tol"]
#: A group whose training traces start within this many median sampling intervals of each
#: other (10th to 90th percentile of the first sample times) has a nominal step start.
ALIGNED_STEPS = 2.0
#: A trace whose first sample lies within the training range plus this many mean sampling
#: intervals of the nominal start takes the nominal start as its origin (up to about three
#: missing first samples of irregularly sampled traces).
MISSING_STEPS = 8.0
_RESULT_FLOAT = [
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
_CURVE_COLS = [f"curve_{j}" for j in range(N_CURVE)]
_RESULT_FLOAT += _CURVE_COLS


def _engine():
    import greyanom.shape as shape

    return shape


def _is_dask(X):
    return hasattr(X, "__dask_graph__") and hasattr(X, "map_partitions")


def _as_tuple(key, n):
    if n == 0:
        return ()
    if n == 1 and not isinstance(key, tuple):
        return (key,)
    return tuple(key)


# --------------------------------------------------------------------------------------------
# Work units (module-level functions so that dask can ship them to workers)
# --------------------------------------------------------------------------------------------
def _start_times(chunk, trace_keys, start_time):
    """The ``start_time`` of each trace of a sorted chunk (first row of the trace), or None."""
    if start_time is None:
        return None
    return chunk.groupby(list(trace_keys), sort=False)[start_time].first().to_numpy(dtype=np.float64)


def _nominal_start(times):
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


def _origins(times, model, starts):
    """Time origin of each trace: its step start, the group's nominal start, or NaN (first sample)."""
    if starts is not None:
        return np.asarray(starts, dtype=np.float64)
    out = np.full(len(times), np.nan)
    if model is None or not np.isfinite(model[4]):
        return out
    t_start, t_tol = model[3], model[4]
    first = np.array([t[0] if t.size else np.nan for t in times])
    near = np.abs(first - t_start) <= t_tol
    out[near] = t_start
    return out


def _make_traces(chunk, time, value, trace_keys):
    """Traces of one chunk, sorted by trace key then time; returns (keys, times, values, engine)."""
    shape = _engine()
    chunk = chunk.sort_values([*trace_keys, time], kind="mergesort")
    t = chunk[time].to_numpy(dtype=np.float64)
    v = chunk[value].to_numpy(dtype=np.float64)
    codes = chunk.groupby(list(trace_keys), sort=False).ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.size else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], codes.size].astype(np.int64)
    kv = chunk[list(trace_keys)].to_numpy(dtype=object)[starts]
    keys = [tuple(row) for row in kv]
    times = [t[a:b] for a, b in zip(starts, ends)]
    values = [v[a:b] for a, b in zip(starts, ends)]
    return keys, times, values, shape


def _fit_group(chunk, cfg):
    """Normal model of one group (Definition 2: all its initial wafers form one L)."""
    chunk = chunk.sort_values([*cfg["trace_keys"], cfg["time"]], kind="mergesort")
    keys, times, values, shape = _make_traces(chunk, cfg["time"], cfg["value"], cfg["trace_keys"])
    starts = _start_times(chunk, cfg["trace_keys"], cfg["start_time"])
    ok = [i for i, t in enumerate(times) if t.size >= cfg["min_points"]]
    if len(ok) < 2:
        raise ValueError(
            f"group {cfg['group']!r} has {len(ok)} trace(s) with at least min_points={cfg['min_points']} "
            "samples; the normal model needs at least 2."
        )
    t_start, t_tol = _nominal_start([times[i] for i in ok])
    origin = _origins([times[i] for i in ok], (None, None, None, t_start, t_tol),
                      None if starts is None else starts[ok])
    traces = shape.Traces.from_arrays([times[i] for i in ok], [values[i] for i in ok])
    res = fit_lot(
        traces, max_iter=cfg["max_em_iter"], tol=cfg["em_tol"], n_jobs=cfg["n_jobs"],
        fit_kwargs={"origin": origin},
    )
    row = {"noise_sd": res.noise_sd, "t_start": t_start, "t_tol": t_tol}
    row.update({f"mu_{p}": v for p, v in zip(PARAMS, res.prior_mean)})
    row.update({f"sd_{p}": v for p, v in zip(PARAMS, res.prior_sd)})
    row.update(n_traces=len(ok), em_iter=res.n_iter, converged=bool(res.converged))
    return row


def _terms(x, ssr, n_points, jtj, model):
    """Centred additive decomposition of the anomaly score under the normal model.

    With ``A = J'J / sigma*^2`` and ``H = A + W`` (``W = diag(sigma*_S)^-2``), a signature
    estimated from a normal trace has ``E[SSR / sigma*^2] = n - p`` with ``p = tr(H^-1 A)``
    and ``E[z_d^2] = 1 - (H^-1)_dd / sigma*_S,d^2``; these expectations are subtracted term by
    term. They add up to ``n``, so the centred score is ``anom - E[anom]`` exactly.
    """
    sigma, mu, sd = model[:3]
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


_COL = {c: i for i, c in enumerate(_RESULT_FLOAT)}


def _cols(*names):
    return [_COL[c] for c in names]


def _analyse_chunk(chunk, model, cfg):
    """Fit and score the traces of one (group, lot) chunk; one row per trace."""
    time, value, trace_keys = cfg["time"], cfg["value"], cfg["trace_keys"]
    chunk = chunk.sort_values([*trace_keys, time], kind="mergesort")
    keys, times, values, shape = _make_traces(chunk, time, value, trace_keys)
    n = len(keys)
    A = np.full((n, len(_RESULT_FLOAT)), np.nan)  # filled as arrays, framed once at the end
    n_points = np.array([t.size for t in times], dtype=np.int64)
    origin = _origins(times, model, _start_times(chunk, trace_keys, cfg["start_time"]))
    A[:, _COL["origin"]] = origin
    A[:, _COL["duration"]] = [
        float(t[-1] - (o if np.isfinite(o) else t[0])) if t.size else 0.0 for t, o in zip(times, origin)
    ]
    status = np.full(n, "ok", dtype=object)
    prior = np.full(n, "none", dtype=object)
    if model is None:
        status[:] = "unknown_group"
        return keys, _chunk_frame(A, n_points, status, prior)
    short = n_points < cfg["min_points"]
    status[short] = "too_short"
    ok = np.flatnonzero(~short)
    if ok.size:
        sigma, mu, sd = model[:3]
        fkw = {"origin": origin[ok]}
        traces = shape.Traces.from_arrays([times[i] for i in ok], [values[i] for i in ok])
        fit = None
        if cfg["lot_fits"] and ok.size >= cfg["min_lot_size"]:
            try:
                lot = fit_lot(
                    traces,
                    init=model[:3],
                    update="laplace" if cfg["lot_prior"] == "em" else "mean",
                    max_iter=cfg["max_em_iter"],
                    tol=cfg["em_tol"],
                    n_jobs=cfg["n_jobs"],
                    fit_kwargs=fkw,
                )
                fit = lot.fit
                prior[ok] = "lot"
            except ValueError as exc:  # too few traces fitted: fall back on the normal-model prior
                _logger.info("lot fit of %r failed (%s); using the normal-model prior", cfg["group"], exc)
        if fit is None:
            # the private fit does not warn: non-converged fits get the status "not_converged"
            fit = shape._fit._fit_traces(traces, prior=(mu, sd), noise_sd=sigma, n_jobs=cfg["n_jobs"], **fkw)
            prior[ok] = "normal"
        x = fit.params.to_numpy(dtype=np.float64)
        finite = np.isfinite(x).all(axis=1)
        success = np.asarray(fit.success, dtype=bool)
        ssr = np.asarray(fit.ssr, dtype=np.float64)
        npts = np.asarray(fit.n_points, dtype=np.float64)
        jtj = np.asarray(fit.jtj, dtype=np.float64)
        good = finite & np.isfinite(ssr) & np.isfinite(jtj).all(axis=(1, 2))
        status[ok[~good]] = "fit_failed"
        status[ok[~good & np.isin(np.asarray(fit.status), _RANGE)]] = "out_of_range"
        status[ok[good & ~success]] = "not_converged"
        g = ok[good]
        if g.size:
            xs = x[good]
            p_eff, fterm, P, raw = _terms(xs, ssr[good], npts[good], jtj[good], model)
            sub = shape.Traces.from_arrays([times[i] for i in g], [values[i] for i in g])
            _, grad, _ = shape.objective_terms(
                sub, xs, prior=(mu, sd), noise_sd=sigma, n_jobs=cfg["n_jobs"], origin=origin[g]
            )
            A[np.ix_(g, _cols(*PARAMS))] = xs
            A[g, _COL["ssr"]] = ssr[good]
            A[g, _COL["p_eff"]] = p_eff
            A[g, _COL["fit"]] = fterm
            A[np.ix_(g, _cols(*[f"P_{p}" for p in PARAMS]))] = P
            A[g, _COL["score"]] = fterm + P.sum(axis=1)
            A[g, _COL["score_raw"]] = raw
            A[np.ix_(g, _cols(*[f"d_{p}" for p in PARAMS]))] = np.asarray(grad, dtype=np.float64)
        # wafer features come from the normal-model-prior fit, so that a wafer's features do
        # not depend on which other wafers share its lot in the batch
        if prior[ok[0]] != "normal":
            fit = shape._fit._fit_traces(traces, prior=(mu, sd), noise_sd=sigma, n_jobs=cfg["n_jobs"], **fkw)
        _features(A, ok, fit)
    return keys, _chunk_frame(A, n_points, status, prior)


def _chunk_frame(A, n_points, status, prior):
    out = pd.DataFrame(A, columns=_RESULT_FLOAT)
    out["n_points"] = n_points
    out["status"] = status
    out["prior"] = prior
    return out


def _features(A, ok, fit):
    """Wafer features of the fitted rows ``ok`` of ``A``: curve at N_CURVE points, log sd, y, c."""
    x = fit.params.to_numpy(dtype=np.float64)
    ssr = np.asarray(fit.ssr, dtype=np.float64)
    good = np.isfinite(x).all(axis=1) & np.isfinite(ssr)
    g = ok[good]
    if not g.size:
        return
    grid = np.linspace(0.0, 1.0, N_CURVE)
    dur = A[g, _COL["duration"]]
    x0 = np.asarray(fit.x, dtype=np.float64)[good]
    A[np.ix_(g, _cols(*_CURVE_COLS))] = _curve(fit, good, [x0[j] + grid * dur[j] for j in range(g.size)])
    npts = np.asarray(fit.n_points, dtype=np.float64)[good]
    A[g, _COL["log_sd"]] = 0.5 * np.log(np.maximum(ssr[good] / npts, 1e-300))
    A[g, _COL["feat_y"]] = x[good, PARAMS.index("y")]
    A[g, _COL["feat_c"]] = x[good, PARAMS.index("c")]


def _curve(fit, rows, times):
    """Fitted curves of the ``rows`` (boolean mask) of ``fit`` at per-trace ``times``."""
    from greyanom.shape import _kernels
    from greyanom.shape._fit import numba_threads

    paper = fit.model == "paper"
    table = (fit.params if paper else fit.general).to_numpy(dtype=np.float64)[rows]
    x = np.asarray(fit.x, dtype=np.float64)[rows]
    t = np.concatenate(times) if times else np.zeros(0)
    offsets = np.arange(len(times) + 1, dtype=np.int64) * N_CURVE
    out = np.empty(t.shape[0])
    with numba_threads(None, len(times)):  # small batches: one thread
        _kernels.predict_batch(t, offsets, x, np.ascontiguousarray(table), paper, out)
    return out.reshape(len(times), N_CURVE)


def _analyse_partition(part, models, cfg):
    """All (group, lot) chunks of a frame; returns a flat result frame with the keys as columns."""
    group_keys, trace_keys, lot_key = cfg["group_keys"], cfg["trace_keys"], cfg["lot_key"]
    by = [*group_keys] + ([lot_key] if lot_key is not None else [])
    frames = []
    chunks = part.groupby(by, sort=True) if by else [((), part)]
    for key, chunk in chunks:
        key = _as_tuple(key, len(by))
        gkey = key[: len(group_keys)]
        c = dict(cfg, group=gkey)
        keys, res = _analyse_chunk(chunk, models.get(gkey), c)
        kdf = pd.DataFrame(keys, columns=list(trace_keys))
        for name, v in zip(group_keys, gkey):
            kdf.insert(len(kdf.columns) - len(trace_keys), name, v)
        res.insert(0, "lot", key[-1] if lot_key is not None else None)
        frames.append(pd.concat([kdf, res], axis=1))
    if not frames:
        return _empty_result(cfg)
    return pd.concat(frames, ignore_index=True)


def _empty_result(cfg):
    cols = {k: pd.Series(dtype=object) for k in [*cfg["group_keys"], *cfg["trace_keys"], "lot"]}
    cols.update({c: pd.Series(dtype=np.float64) for c in _RESULT_FLOAT})
    cols["n_points"] = pd.Series(dtype=np.int64)
    cols["status"] = pd.Series(dtype=object)
    cols["prior"] = pd.Series(dtype=object)
    return pd.DataFrame(cols)


def _fit_partition(part, cfg):
    group_keys = cfg["group_keys"]
    rows = []
    chunks = part.groupby(list(group_keys), sort=True) if group_keys else [((), part)]
    for key, chunk in chunks:
        gkey = _as_tuple(key, len(group_keys))
        if len(chunk) == 0:
            continue
        row = dict(zip(group_keys, gkey))
        try:
            row.update(_fit_group(chunk, dict(cfg, group=gkey)))
        except ValueError as exc:  # one unusable group must not stop the others
            row.update({c: np.nan for c in _NM_COLS}, n_traces=0, em_iter=0, converged=False, error=str(exc))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*group_keys, *_NM_COLS, "n_traces", "em_iter", "converged", "error"])
