"""Trace keys: the one place that turns ``trace_keys`` / ``group_keys`` into tuples and indexes.

A detector's ``trace_keys`` name the columns that identify a wafer (one trace per wafer and
group), its ``group_keys`` the columns of a group (e.g. step and sensor). Either may be one
column name or a sequence of them.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["key_tuple", "normalise_keys", "wafer_index"]


def _names(value, name):
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a column name or a sequence of column names, got {value!r}.") from None


def normalise_keys(trace_keys, group_keys=()):
    """``(trace_keys, group_keys)`` as tuples of column names, checked.

    Raises
    ------
    ValueError
        If ``trace_keys`` is empty or shares a column with ``group_keys``.
    """
    tk, gk = _names(trace_keys, "trace_keys"), _names(group_keys, "group_keys")
    if not tk:
        raise ValueError("trace_keys must name at least one column, got ().")
    overlap = set(tk) & set(gk)
    if overlap:
        raise ValueError(f"trace_keys and group_keys share column(s) {sorted(overlap)}.")
    return tk, gk


def key_tuple(key, n):
    """One key value of ``n`` key columns as a tuple (pandas gives a scalar for one column)."""
    if n == 0:
        return ()
    if n == 1 and not isinstance(key, tuple):
        return (key,)
    return tuple(key)


def wafer_index(index, trace_keys):
    """A wafer index with the names of ``trace_keys`` (MultiIndex only for several keys)."""
    if len(trace_keys) == 1 and isinstance(index, pd.MultiIndex):
        index = index.get_level_values(0)
    if len(trace_keys) == 1:
        return pd.Index(index, name=trace_keys[0])
    return pd.MultiIndex.from_tuples(list(index), names=list(trace_keys))
