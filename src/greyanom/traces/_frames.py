"""Frames of the shape detector: pandas (and dask) preparation and the work units.

Module-level functions, so that dask can ship them to workers: the sort and cut of a partition
into chunks of flat arrays (``_split_chunks``, once per partition), the normal model of one group
(``_fit_group``), the fit and scoring of the (group, lot) chunks (``_analyse_chunks_steps``, arrays
framed once per partition) and the partition drivers. The statuses of traces live in
:mod:`greyanom.traces._status`, the one table of the trace side.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import warnings

import numpy as np
import pandas as pd

from greyanom._validation import plain_key_columns
from greyanom.traces import _fit
from greyanom.traces._keys import key_tuple
from greyanom.traces._ragged import Traces
from greyanom.traces._status import OUT_OF_RANGE
from greyanom.traces._hierarchy import PARAMS, _fit_lot, _fit_lots_steps
from greyanom.traces._scoring import (
    COL,
    N_CURVE,
    RESULT_FLOAT,
    clock_offsets,
    clock_origins,
    cols,
    nominal_start,
    score_terms,
    trace_origins,
    write_features,
)

__all__ = ["N_CURVE"]

_logger = logging.getLogger(__name__)


_NM_COLS = ["noise_sd", *[f"mu_{p}" for p in PARAMS], *[f"sd_{p}" for p in PARAMS], "t_start", "t_tol"]
#: Columns of the wafer-clock offsets in ``normal_model_`` (after ``t_tol``).
_CLOCK_COLS = ["t_clock", "t_offset", "t_offset_tol"]
#: Internal column that carries each trace's wafer-clock origin into the work units.
_CLOCK = "__greyanom_clock_origin__"


def _is_dask(X):
    return hasattr(X, "__dask_graph__") and hasattr(X, "map_partitions")


# --------------------------------------------------------------------------------------------
# Input: long pandas frames
# --------------------------------------------------------------------------------------------
def required_columns(cfg):
    """The columns of a long frame that the detector reads."""
    tk, gk = cfg.trace_keys, cfg.group_keys
    cols = [cfg.time, cfg.value, *gk, *tk]
    if cfg.start_time is not None:
        cols.append(cfg.start_time)
    if cfg.lot_key is not None:
        cols.append(cfg.lot_key)
    if cfg.order_key is not None:
        cols.append(cfg.order_key)
    return cols

def check_columns(columns, cfg, name="X"):
    roles = [("time", cfg.time), ("value", cfg.value), ("start_time", cfg.start_time),
             *(("trace_keys", c) for c in cfg.trace_keys), *(("group_keys", c) for c in cfg.group_keys),
             ("lot_key", cfg.lot_key), ("order_key", cfg.order_key)]
    seen = {}
    for role, col in roles:
        if col is None:
            continue
        if col in seen and seen[col] != role:
            raise ValueError(
                f"{role}={col!r} names the same column as {seen[col]}: time, value, start_time, trace_keys, "
                "group_keys, lot_key and order_key must be different columns."
            )
        seen.setdefault(col, role)
    missing = [c for c in required_columns(cfg) if c not in columns]
    if missing:
        raise ValueError(
            f"{name} has no column(s) {missing}; expected a long-format frame with columns "
            f"{required_columns(cfg)} (set time=, value=, trace_keys=, group_keys=, lot_key=, order_key=). "
            f"Got columns {list(columns)}."
        )

def prepare_frame(X, cfg, name="X", return_keys=False):
    """Validate a long frame (or Traces); return a pandas frame with only the needed columns.

    With ``return_keys``, also the key columns of every row before non-finite samples are
    dropped (so traces without a finite sample are not lost).
    """
    if isinstance(X, Traces):
        X = X.to_frame(time=cfg.time, value=cfg.value)
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            f"{name} must be a long-format pandas DataFrame, a dask DataFrame or a Traces object, "
            f"got {type(X).__name__}."
        )
    check_columns(X.columns, cfg, name)
    key_cols = [c for c in required_columns(cfg) if c not in (cfg.time, cfg.value, cfg.start_time, cfg.order_key)]
    df = plain_key_columns(X[required_columns(cfg)], key_cols)  # categorical keys as plain labels
    for col in (cfg.time, cfg.value) + ((cfg.start_time,) if cfg.start_time is not None else ()):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise TypeError(f"{name}[{col!r}] must be numeric, got dtype {df[col].dtype}.")
    if key_cols and df[key_cols].isna().any().any():
        bad = [c for c in key_cols if df[c].isna().any()]
        raise ValueError(f"{name} has missing values in key column(s) {bad}; every row needs its keys.")
    keys = df[key_cols]
    vals = df[[cfg.time, cfg.value]].to_numpy(dtype=np.float64)
    finite = np.isfinite(vals).all(axis=1)
    if not finite.all():
        warnings.warn(
            f"{name}: dropped {int((~finite).sum())} row(s) with NaN or infinite "
            f"{cfg.time!r}/{cfg.value!r}; traces left with fewer than min_points samples get "
            "status 'too_short'.",
            UserWarning,
            stacklevel=4,
        )
        df = df[finite]
    if len(df) == 0:
        raise ValueError(f"{name} has no rows with finite {cfg.time!r} and {cfg.value!r}.")
    tk, gk = cfg.trace_keys, cfg.group_keys
    dup = df.duplicated([*gk, *tk, cfg.time])
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(
            f"{name} has {int(dup.sum())} duplicated sample time(s) within traces (first: "
            f"{dict(first[[*gk, *tk, cfg.time]])}); expected one sample per time and trace. "
            "Average or drop repeated samples first."
        )
    _check_unique_lots(df, cfg, name)
    return (df, keys) if return_keys else df

def _check_unique_lots(df, cfg, name):
    if cfg.lot_key is None:
        return
    tk, gk = cfg.trace_keys, cfg.group_keys
    n_lots = df.groupby([*gk, *tk], sort=False)[cfg.lot_key].nunique()
    if (n_lots > 1).any():
        raise ValueError(
            f"{name}: {int((n_lots > 1).sum())} trace(s) appear in more than one {cfg.lot_key!r}; "
            "a trace (group_keys + trace_keys) must belong to one lot."
        )


# --------------------------------------------------------------------------------------------
# Work units (module-level functions so that dask can ship them to workers)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Chunk:
    """The traces of one chunk as flat arrays, sorted by trace then time (CSR ``offsets``).

    ``starts`` and ``clock``: the ``start_time`` and wafer-clock origin of each trace (None
    without them).
    """

    t: np.ndarray
    v: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray | None = None
    clock: np.ndarray | None = None

    def __len__(self):
        return self.offsets.shape[0] - 1

    @property
    def n_points(self):
        return np.diff(self.offsets)

    def times(self):
        return [self.t[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def subset(self, which):
        """The :class:`_Chunk` of the trace indices ``which`` (in their order here)."""
        counts = self.n_points
        keep = np.repeat(np.isin(np.arange(len(self)), which), counts)
        return _Chunk(
            self.t[keep], self.v[keep], np.r_[0, np.cumsum(counts[which])].astype(np.int64),
            None if self.starts is None else self.starts[which],
            None if self.clock is None else self.clock[which],
        )

    def traces(self, which=None):
        """:class:`Traces` of all traces, or of the trace indices ``which``."""
        if which is None or len(which) == len(self):
            return Traces(self.t, self.v, self.offsets)
        counts = self.n_points
        picked = np.zeros(len(self), dtype=bool)
        picked[which] = True
        keep = np.repeat(picked, counts)
        offsets = np.r_[0, np.cumsum(counts[which])].astype(np.int64)
        return Traces(self.t[keep], self.v[keep], offsets)


def _split_chunks(part, by, cfg):
    """Sort a frame once by ``by``, the trace keys and time, and cut it into chunks.

    Returns ``(chunk_keys, chunks, first_rows)``: the ``by`` values of each chunk (in sorted
    order, as ``groupby(by, sort=True)`` gives them), a :class:`_Chunk` per chunk, and the row
    positions in ``part`` of the first sample of every trace, chunk after chunk (to take the
    traces' keys).
    """
    keycols = [*by, *cfg.trace_keys]
    fact = [pd.factorize(part[c], sort=True) for c in keycols]
    t_all = part[cfg.time].to_numpy(dtype=np.float64)
    order = np.lexsort((t_all, *[codes for codes, _ in fact][::-1]))
    if fact:  # rows with a missing key belong to no chunk (as with groupby's dropna)
        order = order[np.all([codes[order] >= 0 for codes, _ in fact], axis=0)]
    C = np.stack([codes[order] for codes, _ in fact], axis=1) if fact else np.zeros((len(order), 0), np.int64)
    new_trace = np.r_[True, (C[1:] != C[:-1]).any(axis=1)] if len(order) else np.zeros(0, dtype=bool)
    first = np.flatnonzero(new_trace)
    offsets = np.r_[first, len(order)].astype(np.int64)
    nb = len(by)
    Ct = C[first]
    new_chunk = np.r_[True, (Ct[1:, :nb] != Ct[:-1, :nb]).any(axis=1)] if len(first) else new_trace
    cstart = np.r_[np.flatnonzero(new_chunk), len(first)]
    t = t_all[order]
    v = part[cfg.value].to_numpy(dtype=np.float64)[order]
    per_trace = {
        col: part[col].to_numpy(dtype=np.float64)[order][first]
        for col in (cfg.start_time, cfg.clock_origin) if col is not None
    }
    uniques = [np.asarray(u, dtype=object) for _, u in fact[:nb]]
    keys, chunks = [], []
    for a, b in zip(cstart[:-1], cstart[1:]):
        keys.append(tuple(u[Ct[a, j]] for j, u in enumerate(uniques)))
        lo, hi = offsets[a], offsets[b]
        chunks.append(_Chunk(
            t[lo:hi], v[lo:hi], offsets[a:b + 1] - lo,
            None if cfg.start_time is None else per_trace[cfg.start_time][a:b],
            None if cfg.clock_origin is None else per_trace[cfg.clock_origin][a:b],
        ))
    return keys, chunks, order[first]


def _fit_group(chunk, cfg):
    """Normal model of one group (Definition 2: all its initial wafers form one L)."""
    times = chunk.times()
    ok = np.flatnonzero(chunk.n_points >= cfg.min_points)
    if len(ok) < 2:
        raise ValueError(
            f"group {cfg.group!r} has {len(ok)} trace(s) with at least min_points={cfg.min_points} "
            "samples; the normal model needs at least 2."
        )
    t_start, t_tol = nominal_start([times[i] for i in ok])
    origin = trace_origins(
        [times[i] for i in ok], t_start, t_tol, None if chunk.starts is None else chunk.starts[ok],
        None if chunk.clock is None else chunk.clock[ok],
    )
    res = _fit_lot(
        chunk.traces(ok), max_iter=cfg.max_em_iter, tol=cfg.em_tol, n_jobs=cfg.n_jobs,
        fit_kwargs={"origin": origin},
    )
    row = {"noise_sd": res.noise_sd, "t_start": t_start, "t_tol": t_tol}
    row.update({f"mu_{p}": v for p, v in zip(PARAMS, res.prior_mean)})
    row.update({f"sd_{p}": v for p, v in zip(PARAMS, res.prior_sd)})
    row.update(n_traces=len(ok), em_iter=res.n_iter, converged=bool(res.converged))
    return row


def _analyse_chunks_steps(chunks, models, cfg, groups, features=True):
    """Fit and score the traces of (group, lot) :class:`_Chunk` objects; returns, per chunk, the
    arrays ``(A, n_points, status, prior)``, one row per trace.

    ``models``: the :class:`NormalModel` of each chunk's group (None: unknown group);
    ``groups``: each chunk's group key (for messages). Each chunk's result also carries
    ``(ok, fit)``: the traces fitted and their fit under the normal-model prior (with
    ``features``; None without, or for a chunk without a model). A generator of its fits
    (``_FitRequest``, or lists of them), driven by ``_fit._run_fits``: the lot EMs of all chunks
    run as one (:func:`~greyanom.traces._hierarchy._fit_lots_steps`, one kernel call per
    E-step over every lot still running), then the normal-model-prior fits of the chunks that
    need one, all in one kernel call; every trace's fit is independent of the others in its
    batch, so each chunk's result is that of its own analysis. ``features=False`` leaves the
    wafer-feature columns NaN (and skips the normal-model-prior fit they need after a lot fit).
    """
    parts = [_chunk_start(ch, m, cfg) for ch, m in zip(chunks, models)]
    fits = [None] * len(parts)
    lots = [i for i, p in enumerate(parts) if p.ok.size and cfg.lot_fits and p.ok.size >= cfg.min_lot_size]
    if lots:
        init = tuple(np.array([models[i].prior[j] for i in lots], dtype=np.float64) for j in range(3))
        done = yield from _fit_lots_steps(
            _fit._concat_traces([parts[i].traces for i in lots]), [parts[i].ok.size for i in lots], init,
            update="laplace" if cfg.lot_prior == "em" else "mean", max_iter=cfg.max_em_iter, tol=cfg.em_tol,
            fit_kwargs={"origin": np.concatenate([parts[i].origin[parts[i].ok] for i in lots])},
        )
        for i, lot in zip(lots, done):
            if isinstance(lot, ValueError):  # too few traces fitted: fall back on the normal-model prior
                _logger.info("lot fit of %r failed (%s); using the normal-model prior", groups[i], lot)
                continue
            fits[i] = lot.fit
            parts[i].prior[parts[i].ok] = "lot"
    normal = [i for i, p in enumerate(parts) if p.ok.size and fits[i] is None]
    # the private fit does not warn: non-converged fits get the status "not_converged"
    got = yield [_normal_prior_request(parts[i], models[i]) for i in normal]
    for i, fit in zip(normal, got):
        fits[i] = fit
        parts[i].prior[parts[i].ok] = "normal"
    for p, fit, model in zip(parts, fits, models):
        if p.ok.size:
            _score_chunk(p, fit, model)
    if features:
        # wafer features come from the normal-model-prior fit, so that a wafer's features do
        # not depend on which other wafers share its lot in the batch
        need = [i for i, p in enumerate(parts) if p.ok.size and p.prior[p.ok[0]] != "normal"]
        got = yield [_normal_prior_request(parts[i], models[i]) for i in need]
        for i, fit in zip(need, got):
            fits[i] = fit
        for p, fit in zip(parts, fits):
            if p.ok.size:
                write_features(p.A, p.ok, _fit._signature_fit(fit, None), p.traces)
    return [(p.A, p.n_points, p.status, p.prior, (p.ok, fit if features and p.ok.size else None))
            for p, fit in zip(parts, fits)]


def _chunk_start(chunk, model, cfg):
    """The result arrays of one chunk before any fit (origins, durations, statuses) and the
    traces to fit (``ok``: those with ``min_points`` samples; none without a model)."""
    n = len(chunk)
    A = np.full((n, len(RESULT_FLOAT)), np.nan)  # filled as arrays, framed once per partition
    n_points = chunk.n_points
    starts, clock = chunk.starts, chunk.clock
    first = chunk.t[chunk.offsets[:-1]]
    origin = (
        np.full(n, np.nan) if model is None and starts is None
        else trace_origins(chunk.times(), np.nan if model is None else model.t_start,
                           np.nan if model is None else model.t_tol, starts, clock)
    )
    A[:, COL["origin"]] = origin
    A[:, COL["duration"]] = chunk.t[chunk.offsets[1:] - 1] - np.where(np.isfinite(origin), origin, first)
    status = np.full(n, "ok", dtype=object)
    prior = np.full(n, "none", dtype=object)
    if model is None:
        status[:] = "unknown_group"
        ok = np.zeros(0, dtype=np.int64)
    else:
        short = n_points < cfg.min_points
        status[short] = "too_short"
        ok = np.flatnonzero(~short)
    traces = chunk.traces(ok) if ok.size else None
    return types.SimpleNamespace(A=A, n_points=n_points, status=status, prior=prior, ok=ok, origin=origin,
                                 traces=traces)


def _normal_prior_request(part, model):
    """The fit of a chunk's traces under the normal-model prior, as a ``_FitRequest``."""
    return _fit._FitRequest(
        part.traces, {"prior": (model.mu, model.sd), "noise_sd": model.noise_sd, "origin": part.origin[part.ok]}
    )


def _score_chunk(part, fit, model):
    """Write the statuses, signatures and score terms of one chunk's fitted traces into ``part``."""
    A, status, ok = part.A, part.status, part.ok
    x, success, ssr, jtj = fit.pp, fit.success, fit.ssr, fit.jtj
    finite = np.isfinite(x).all(axis=1)
    npts = fit.n_points.astype(np.float64)
    good = finite & np.isfinite(ssr) & np.isfinite(jtj).all(axis=(1, 2))
    status[ok[~good]] = "fit_failed"
    status[ok[~good & np.isin(np.asarray(fit.status), OUT_OF_RANGE)]] = "out_of_range"
    status[ok[good & ~success]] = "not_converged"
    g = ok[good]
    if g.size:
        xs = x[good]
        p_eff, fterm, P, raw = score_terms(xs, ssr[good], npts[good], jtj[good], model)
        # the gradient under the normal model, from the fit kernel's last evaluation
        grad = _fit.prior_gradient(fit.jtr[good], xs, model.mu, model.sd, model.noise_sd)
        A[np.ix_(g, cols(*PARAMS))] = xs
        A[g, COL["ssr"]] = ssr[good]
        A[g, COL["p_eff"]] = p_eff
        A[g, COL["fit"]] = fterm
        A[np.ix_(g, cols(*[f"P_{p}" for p in PARAMS]))] = P
        A[g, COL["score"]] = fterm + P.sum(axis=1)
        A[g, COL["score_raw"]] = raw
        A[np.ix_(g, cols(*[f"d_{p}" for p in PARAMS]))] = np.asarray(grad, dtype=np.float64)


def _chunk_frame(A, n_points, status, prior):
    out = pd.DataFrame(A, columns=RESULT_FLOAT)
    out["n_points"] = n_points
    out["status"] = status
    out["prior"] = prior
    return out


def _analyse_partition(part, models, cfg, prior_fits=None):
    """All (group, lot) chunks of a frame; returns a flat result frame with the keys as columns.

    The frame is sorted and cut into chunks once (:func:`_split_chunks`); the chunks' fits
    run together, one kernel call per step over all chunks (the same results as chunk by
    chunk: every trace's fit is independent of the others in its batch), and the result is
    framed once. ``prior_fits``: a dict to fill with ``{chunk key: (ok, fit)}``, each chunk's
    fits under the normal-model prior (what the held-out pass would otherwise fit again).
    """
    group_keys, trace_keys, lot_key = cfg.group_keys, cfg.trace_keys, cfg.lot_key
    by = [*group_keys] + ([lot_key] if lot_key is not None else [])
    if not len(part):
        return _empty_result(cfg)
    keys, chunks, first_rows = _split_chunks(part, by, cfg)
    groups = [key[: len(group_keys)] for key in keys]
    (done,) = _fit._run_fits([_analyse_chunks_steps(chunks, [models.get(g) for g in groups], cfg, groups)], cfg.n_jobs)
    if prior_fits is not None:
        prior_fits.update({key: d[4] for key, d in zip(keys, done)})
    res = _chunk_frame(*(np.concatenate([d[i] for d in done]) for i in range(4)))
    # keys as Python objects, their dtypes inferred (the same from pandas and dask partitions)
    kdf = pd.DataFrame({c: part[c].to_numpy(dtype=object)[first_rows].tolist() for c in [*group_keys, *trace_keys]})
    lot = part[lot_key].to_numpy(dtype=object)[first_rows].tolist() if lot_key is not None else None
    res.insert(0, "lot", lot)
    return pd.concat([kdf, res], axis=1)


def _empty_result(cfg):
    columns = {k: pd.Series(dtype=object) for k in [*cfg.group_keys, *cfg.trace_keys, "lot"]}
    columns.update({c: pd.Series(dtype=np.float64) for c in RESULT_FLOAT})
    columns["n_points"] = pd.Series(dtype=np.int64)
    columns["status"] = pd.Series(dtype=object)
    columns["prior"] = pd.Series(dtype=object)
    return pd.DataFrame(columns)


def _fit_partition(part, cfg):
    group_keys = cfg.group_keys
    rows = []
    keys, chunks, _ = _split_chunks(part, list(group_keys), cfg) if len(part) else ([], [], None)
    for gkey, chunk in zip(keys, chunks):
        row = dict(zip(group_keys, gkey))
        try:
            row.update(_fit_group(chunk, dataclasses.replace(cfg, group=gkey)))
        except ValueError as exc:  # one unusable group must not stop the others
            row.update({c: np.nan for c in _NM_COLS}, n_traces=0, em_iter=0, converged=False, error=str(exc))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*group_keys, *_NM_COLS, "n_traces", "em_iter", "converged", "error"])


# --------------------------------------------------------------------------------------------
# Wafer clocks: the step origin of groups that do not start together in absolute time
# --------------------------------------------------------------------------------------------
def _trace_stats(df, cfg):
    """First and last sample time and sample count of every trace (keys as columns)."""
    by = [*cfg.group_keys, *cfg.trace_keys]
    return df.groupby(by, sort=False)[cfg.time].agg(["min", "max", "count"]).reset_index()


def _uses_clock(cfg):
    return cfg.start_time is None and len(cfg.group_keys) > 0


def learn_clock(stats, cfg):
    """``{group key: (t_clock, t_offset, t_offset_tol)}`` from the training ``_trace_stats``.

    Empty when a ``start_time`` column is given or without group keys; only groups that start
    at a stable offset from another group of their wafers have an entry (:func:`clock_offsets`).
    """
    if not _uses_clock(cfg):
        return {}
    gk, tk = list(cfg.group_keys), list(cfg.trace_keys)
    use = stats[stats["count"] >= max(cfg.min_points, 2)]
    if not len(use):
        return {}
    grouped = use.groupby(gk, sort=True)
    gcode = grouped.ngroup().to_numpy()
    keys = [key_tuple(k, len(gk)) for k in grouped.size().index]
    wafer = use.groupby(tk, sort=False).ngroup().to_numpy()
    first = use["min"].to_numpy(dtype=np.float64)
    interval = (use["max"].to_numpy(dtype=np.float64) - first) / (use["count"].to_numpy() - 1)
    clock, offset, tol = clock_offsets(first, interval, wafer, gcode, len(keys))
    return {k: (c, o, t) for k, c, o, t in zip(keys, clock, offset, tol) if np.isfinite(c)}


def _clock_of(stats, offsets, cfg):
    """Wafer-clock origin of every trace of ``stats`` (NaN: first sample), see :func:`clock_origins`."""
    gk, tk = list(cfg.group_keys), list(cfg.trace_keys)
    gkeys = list(zip(*(stats[k] for k in gk)))
    off = np.array([offsets.get(k, (np.nan,) * 3) for k in gkeys], dtype=np.float64).reshape(-1, 3)
    wafer = stats.groupby(tk, sort=False).ngroup().to_numpy()
    vote = stats["count"].to_numpy() >= cfg.min_points
    first, last = stats["min"].to_numpy(dtype=np.float64), stats["max"].to_numpy(dtype=np.float64)
    return clock_origins(first, last, wafer, off[:, 0], off[:, 1], off[:, 2], vote)


def _with_clock(df, offsets, cfg):
    """``df`` with the wafer-clock origin of each row's trace in column ``_CLOCK``, and its cfg."""
    if not offsets or not _uses_clock(cfg):
        return df, cfg
    stats = _trace_stats(df, cfg)
    codes = df.groupby([*cfg.group_keys, *cfg.trace_keys], sort=False).ngroup().to_numpy()
    df = df.assign(**{_CLOCK: _clock_of(stats, offsets, cfg)[codes]})
    return df, dataclasses.replace(cfg, clock_origin=_CLOCK)


def _dask_with_clock(X, offsets, cfg):
    """The dask version of :func:`_with_clock` (the per-trace table is computed, then merged)."""
    if not offsets or not _uses_clock(cfg):
        return X, cfg
    by = [*cfg.group_keys, *cfg.trace_keys]
    stats = X.groupby(by)[cfg.time].agg(["min", "max", "count"]).compute().reset_index()
    stats[_CLOCK] = _clock_of(stats, offsets, cfg)
    X = X.merge(stats[[*by, _CLOCK]], on=by, how="left")
    return X, dataclasses.replace(cfg, clock_origin=_CLOCK)


def _add_clock_columns(table, offsets, cfg):
    """Insert ``t_clock``, ``t_offset`` and ``t_offset_tol`` after ``t_tol`` in a normal-model table."""
    gk = list(cfg.group_keys)
    keys = list(zip(*(table[k] for k in gk))) if gk else [()] * len(table)
    vals = np.array([offsets.get(k, (np.nan,) * 3) for k in keys], dtype=np.float64).reshape(-1, 3)
    at = table.columns.get_loc("t_tol") + 1
    for j, c in enumerate(_CLOCK_COLS):
        table.insert(at + j, c, vals[:, j])
    return table


def fit_frame(df, cfg):
    """Normal-model table of a prepared pandas frame: wafer-clock offsets, then every group."""
    offsets = learn_clock(_trace_stats(df, cfg), cfg)
    part, c = _with_clock(df, offsets, cfg)
    return _add_clock_columns(_fit_partition(part, c), offsets, cfg)


# --------------------------------------------------------------------------------------------
# Drivers: a whole frame (pandas or dask)
# --------------------------------------------------------------------------------------------
def fit_dask(X, cfg, initial_lots=None):
    """Normal-model table of a dask frame (shuffled by group); returns ``(table, frame)``.

    ``initial_lots`` (callable on the lots in order of appearance) picks the training lots.
    """
    check_columns(X.columns, cfg)
    gk = cfg.group_keys
    X = X[required_columns(cfg)]
    if cfg.lot_key is not None and initial_lots is not None:
        firsts = X[[cfg.lot_key]].map_partitions(lambda d: d.drop_duplicates()).compute()
        lots = initial_lots(pd.unique(firsts[cfg.lot_key]))
        X = X[X[cfg.lot_key].isin(lots)]
    X = X.dropna(subset=[cfg.time, cfg.value])
    offsets = {}
    if _uses_clock(cfg):
        stats = X.groupby([*gk, *cfg.trace_keys])[cfg.time].agg(["min", "max", "count"]).compute()
        offsets = learn_clock(stats.reset_index(), cfg)
    train = X
    X, cfg = _dask_with_clock(X, offsets, cfg)
    parts = X.shuffle(on=list(gk), shuffle_method="tasks") if gk else X.repartition(npartitions=1)
    meta = pd.DataFrame(
        {
            **{k: pd.Series(dtype=X[k].dtype) for k in gk},
            **{c: pd.Series(dtype=np.float64) for c in _NM_COLS},
            "n_traces": pd.Series(dtype=np.int64),
            "em_iter": pd.Series(dtype=np.int64),
            "converged": pd.Series(dtype=bool),
            "error": pd.Series(dtype=object),
        }
    )
    table = parts.map_partitions(_fit_partition, cfg, meta=meta).compute()
    table = table.sort_values(list(gk)).reset_index(drop=True) if gk else table.reset_index(drop=True)
    return _add_clock_columns(table, offsets, cfg), train


def analyse_frame(X, models, cfg, prior_fits=None):
    """One row per trace of a pandas or dask frame (keys as columns), in the frame's order.

    Every trace of a pandas ``X`` has a row, also one whose samples are all non-finite
    (status ``"too_short"``, ``n_points`` 0). ``models``: ``{group key: NormalModel}``.
    ``prior_fits``: see :func:`_analyse_partition` (pandas ``X`` only; left empty for dask).
    """
    tk, gk = cfg.trace_keys, cfg.group_keys
    if _is_dask(X):
        check_columns(X.columns, cfg)
        X = X[required_columns(cfg)].dropna(subset=[cfg.time, cfg.value])
        X, cfg = _dask_with_clock(X, _offsets(models), cfg)
        by = [*gk] + ([cfg.lot_key] if cfg.lot_key is not None else [])
        parts = X.shuffle(on=by, shuffle_method="tasks") if by else X.repartition(npartitions=1)
        meta = _empty_result(cfg)
        for k in [*gk, *tk]:
            meta[k] = meta[k].astype(X[k].dtype)
        res = parts.map_partitions(_analyse_partition, models, cfg, meta=meta).compute()
        return res.sort_values([*gk, *tk], kind="mergesort")
    df, keys = prepare_frame(X, cfg, return_keys=True)
    df, cfg = _with_clock(df, _offsets(models), cfg)
    res = _analyse_partition(df, models, cfg, prior_fits) if len(df) else _empty_result(cfg)
    order = keys[[*gk, *tk]].drop_duplicates()
    res = order.merge(res, on=[*gk, *tk], how="left")
    lost = res["status"].isna().to_numpy()
    if lost.any():  # traces with no finite sample at all
        res.loc[lost, "status"] = "too_short"
        res.loc[lost, "n_points"] = 0
        res.loc[lost, "duration"] = 0.0
        res.loc[lost, "prior"] = "none"
        if cfg.lot_key is not None:
            res.loc[lost, "lot"] = keys.drop_duplicates([*gk, *tk])[cfg.lot_key].to_numpy()[lost]
    res["n_points"] = res["n_points"].astype(np.int64)
    return res


def _offsets(models):
    """``{group key: (t_clock, t_offset, t_offset_tol)}`` of the models that have a wafer clock."""
    return {k: (m.t_clock, m.t_offset, m.t_offset_tol) for k, m in models.items() if np.isfinite(m.t_clock)}
