"""Ragged sensor traces stored as flat arrays plus offsets (CSR layout)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd

__all__ = ["Traces"]

_NAN_POLICIES = ("raise", "omit")


class Traces:
    """A collection of ragged traces, each with its own, possibly irregular, sampling times.

    The samples of all traces are stored back to back in two flat ``float64`` arrays,
    :attr:`t` and :attr:`z`; trace ``j`` occupies ``offsets[j]:offsets[j + 1]``. Within a
    trace the times are strictly increasing. Numba kernels see only these arrays.

    Build instances with :meth:`from_arrays` or :meth:`from_frame`; the constructor takes
    the flat arrays directly and validates them.

    Parameters
    ----------
    t, z : array-like of shape (n_samples,)
        Flat sampling times and values.
    offsets : array-like of int of shape (n_traces + 1,)
        Start of every trace in ``t`` and ``z``, then ``n_samples``.
    keys : pandas.Index or None, default=None
        One label per trace (``RangeIndex`` named ``"trace"`` when ``None``).
    nan_policy : {"raise", "omit"}, default="raise"
        What to do with samples whose time or value is NaN or infinite: raise a
        ``ValueError``, or drop those samples (a trace may then end up with too few points;
        :func:`~greyanom.traces.fit_traces` reports that per trace).

    Attributes
    ----------
    t : ndarray of shape (n_samples,)
        Sampling times, float64, increasing within every trace.
    z : ndarray of shape (n_samples,)
        Sensor values, float64.
    offsets : ndarray of int64 of shape (n_traces + 1,)
        Trace boundaries in :attr:`t` and :attr:`z`.
    keys : pandas.Index or pandas.MultiIndex
        Trace labels.
    n_points : ndarray of int64 of shape (n_traces,)
        Number of samples per trace.

    Notes
    -----
    Validation rules (each failure is a ``ValueError`` that names the trace):

    * no traces at all, or arrays of mismatched lengths: error;
    * NaN or infinite times or values: error, or dropped with ``nan_policy="omit"``;
    * unsorted times: :meth:`from_arrays` sorts each trace (stable) and warns once with
      the number of traces sorted; :meth:`from_frame` sorts silently, because the row
      order of a long table carries no meaning; the constructor requires sorted input;
    * duplicated times within a trace: error (average or drop them before building
      traces; a repeated time is almost always a join or logging bug);
    * traces with fewer points than the model has parameters are kept: the fit reports
      them with status ``-1`` instead of failing the whole batch.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.traces import Traces
    >>> tr = Traces.from_arrays([np.arange(5.0), np.arange(3.0)], [np.ones(5), np.zeros(3)])
    >>> len(tr), tr.n_points.tolist()
    (2, [5, 3])
    >>> tr[1]
    (array([0., 1., 2.]), array([0., 0., 0.]))
    """

    def __init__(self, t, z, offsets, keys=None, *, nan_policy="raise"):
        if nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}.")
        t = _as_flat(t, "t")
        z = _as_flat(z, "z")
        if t.shape != z.shape:
            raise ValueError(
                f"t and z must have the same length; got {t.shape[0]} times and {z.shape[0]} values."
            )
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
            raise TypeError("offsets must be a 1-D integer array.")
        offsets = offsets.astype(np.int64)
        if offsets.shape[0] < 2:
            raise ValueError("Traces is empty: expected at least one trace.")
        if offsets[0] != 0 or offsets[-1] != t.shape[0] or np.any(np.diff(offsets) < 0):
            raise ValueError(
                "offsets must start at 0, be non-decreasing and end at the number of samples "
                f"({t.shape[0]})."
            )
        n_traces = offsets.shape[0] - 1
        keys = _make_keys(keys, n_traces)
        bad = ~(np.isfinite(t) & np.isfinite(z))
        if bad.any():
            trace_of = np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1
            if nan_policy == "raise":
                raise ValueError(
                    f"{int(bad.sum())} sample(s) in {np.unique(trace_of).size} trace(s) have NaN or "
                    f"infinite times or values (first: trace {keys[trace_of[0]]!r}); expected finite "
                    "values, or pass nan_policy='omit' to drop them."
                )
            keep = ~bad
            owner = np.repeat(np.arange(n_traces), np.diff(offsets))
            counts = np.bincount(owner[keep], minlength=n_traces)
            t, z = t[keep], z[keep]
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        dt = np.diff(t)
        inner = np.ones(dt.shape[0], dtype=bool)
        starts = offsets[1:-1] - 1
        inner[starts[(starts >= 0) & (starts < dt.shape[0])]] = False
        if np.any(dt[inner] < 0):
            first = np.flatnonzero(inner & (dt < 0))[0]
            trace = np.searchsorted(offsets, first, side="right") - 1
            raise ValueError(
                f"times of trace {keys[trace]!r} are not sorted; Traces.from_arrays and "
                "Traces.from_frame sort them for you."
            )
        dup = inner & (dt == 0)
        if dup.any():
            first = np.flatnonzero(dup)[0]
            trace = np.searchsorted(offsets, first, side="right") - 1
            raise ValueError(
                f"{int(dup.sum())} duplicated time(s) within traces (first in trace {keys[trace]!r} "
                f"at t={t[first]!r}); expected strictly increasing times per trace. Average or "
                "drop repeated samples first."
            )
        self.t = t
        self.z = z
        self.offsets = offsets
        self.keys = keys
        self.nan_policy = nan_policy

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_arrays(cls, times, values, keys=None, *, nan_policy="raise"):
        """Build traces from sequences of 1-D arrays, one pair per trace.

        Parameters
        ----------
        times, values : sequence of array-like of shape (n_j,)
            Sampling times and values of each trace; lengths may differ between traces.
        keys : array-like, pandas.Index or None, default=None
            One label per trace.
        nan_policy : {"raise", "omit"}, default="raise"
            See :class:`Traces`.

        Returns
        -------
        traces : Traces
        """
        if isinstance(times, np.ndarray) and times.ndim == 2:
            times = list(times)
        if isinstance(values, np.ndarray) and values.ndim == 2:
            values = list(values)
        if not hasattr(times, "__len__") or not hasattr(values, "__len__"):
            raise TypeError("times and values must be sequences of 1-D arrays.")
        if len(times) != len(values):
            raise ValueError(
                f"times and values must hold the same number of traces; got {len(times)} and "
                f"{len(values)}."
            )
        if len(times) == 0:
            raise ValueError("Traces is empty: expected at least one trace.")
        ts, zs = [], []
        n_sorted = 0
        for j, (tj, zj) in enumerate(zip(times, values)):
            tj = _as_flat(tj, f"times[{j}]")
            zj = _as_flat(zj, f"values[{j}]")
            if tj.shape != zj.shape:
                raise ValueError(
                    f"trace {j}: times has {tj.shape[0]} entries but values has {zj.shape[0]}."
                )
            if tj.size > 1 and np.any(np.diff(tj) < 0):
                order = np.argsort(tj, kind="stable")
                tj, zj = tj[order], zj[order]
                n_sorted += 1
            ts.append(tj)
            zs.append(zj)
        if n_sorted:
            warnings.warn(
                f"times of {n_sorted} trace(s) were not sorted; they have been sorted.",
                UserWarning,
                stacklevel=2,
            )
        lengths = np.array([a.shape[0] for a in ts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(np.concatenate(ts), np.concatenate(zs), offsets, keys, nan_policy=nan_policy)

    @classmethod
    def from_frame(cls, df, *, time="t", value="value", by=("wafer",), nan_policy="raise"):
        """Build traces from a long table with one row per sample.

        Parameters
        ----------
        df : pandas.DataFrame
            Long-format table.
        time, value : str, default="t", "value"
            Columns holding the sampling time and the sensor value.
        by : str or sequence of str, default=("wafer",)
            Columns identifying a trace (e.g. tool, sensor, step, wafer). Traces are
            ordered by these keys.
        nan_policy : {"raise", "omit"}, default="raise"
            See :class:`Traces`.

        Returns
        -------
        traces : Traces
            With :attr:`keys` an ``Index`` (one ``by`` column) or ``MultiIndex``.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}.")
        by = [by] if isinstance(by, str) else list(by)
        if not by:
            raise ValueError("by must name at least one column identifying a trace.")
        missing = [c for c in [time, value, *by] if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} not found in df; it has {list(df.columns)}.")
        if len(df) == 0:
            raise ValueError("Traces is empty: df has no rows.")
        if df[by].isna().any().any():
            raise ValueError(f"the key columns {by} contain missing values.")
        grouped = df.groupby(by, sort=True, observed=True)
        codes = grouped.ngroup().to_numpy(dtype=np.int64)
        keys = grouped.size().index
        t = _as_flat(df[time].to_numpy(), time)
        z = _as_flat(df[value].to_numpy(), value)
        order = np.lexsort((t, codes))
        counts = np.bincount(codes, minlength=len(keys)).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(t[order], z[order], offsets, keys, nan_policy=nan_policy)

    # ------------------------------------------------------------------ container
    @property
    def n_points(self):
        return np.diff(self.offsets)

    def __len__(self):
        return self.offsets.shape[0] - 1

    def __repr__(self):
        n = self.n_points
        return (
            f"Traces(n_traces={len(self)}, n_samples={self.t.shape[0]}, "
            f"points per trace {int(n.min())}..{int(n.max())})"
        )

    def __getitem__(self, item):
        """``traces[j]`` gives ``(t_j, z_j)``; a slice, integer array or mask gives ``Traces``."""
        if isinstance(item, numbers.Integral):
            j = int(item)
            if j < 0:
                j += len(self)
            if not 0 <= j < len(self):
                raise IndexError(f"trace index {item} out of range for {len(self)} traces.")
            lo, hi = self.offsets[j], self.offsets[j + 1]
            return self.t[lo:hi], self.z[lo:hi]
        idx = np.arange(len(self))[item]
        idx = np.atleast_1d(idx)
        if idx.size == 0:
            raise ValueError("indexing would give an empty Traces.")
        lengths = self.n_points[idx]
        starts = self.offsets[idx]
        flat = _ranges(starts, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out = object.__new__(Traces)
        out.t = self.t[flat]
        out.z = self.z[flat]
        out.offsets = offsets
        out.keys = self.keys[idx]
        out.nan_policy = self.nan_policy
        return out

    def trace_index(self):
        """Trace number of every sample, shape (n_samples,)."""
        return np.repeat(np.arange(len(self)), self.n_points)

    def to_frame(self, *, time="t", value="value"):
        """Long table with the key columns, then ``time`` and ``value``.

        ``Traces.from_frame(traces.to_frame(), by=key_names)`` gives the traces back.
        """
        rows = self.trace_index()
        keys = self.keys[rows]
        if isinstance(keys, pd.MultiIndex):
            frame = keys.to_frame(index=False)
        else:
            frame = pd.DataFrame({keys.name if keys.name is not None else "trace": keys})
        frame[time] = self.t
        frame[value] = self.z
        return frame


def _ranges(starts, lengths):
    """Concatenated ``arange(s, s + n)`` for every pair, vectorised."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)


def _as_flat(a, name):
    if hasattr(a, "__dask_graph__"):
        raise TypeError(f"{name} must be an in-memory array, got {type(a).__name__}.")
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {a.dtype}.")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}.")
    return np.ascontiguousarray(a, dtype=np.float64)


def _make_keys(keys, n):
    if keys is None:
        return pd.RangeIndex(n, name="trace")
    if not isinstance(keys, pd.Index):
        keys = pd.Index(keys)
    if len(keys) != n:
        raise ValueError(f"keys must have one label per trace ({n}); got {len(keys)}.")
    return keys
