"""Input checks shared by every detector.

Each check raises a :class:`ValueError` or :class:`TypeError` that names the argument and
says what was expected, so that bad input never reaches a kernel or a network.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["check_images", "check_finite", "check_image_shape", "plain_key_columns"]


def check_finite(array, name):
    """Raise ``ValueError`` if ``array`` holds NaN or infinite values."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite value(s); expected finite values.")


def check_images(X, *, name="X", dtype=np.float32):
    """Validate a batch of grayscale images and return it as ``(n, H, W)`` in [0, 1].

    Parameters
    ----------
    X : array-like of shape (n, H, W) or (n, 1, H, W)
        Float images with values in [0, 1], or ``uint8`` images (scaled by 1/255).
    name : str, default="X"
        Argument name used in error messages.
    dtype : numpy dtype, default=np.float32
        Floating dtype of the result.

    Returns
    -------
    images : ndarray of shape (n, H, W)
    """
    if hasattr(X, "__dask_graph__") or (hasattr(X, "columns") and hasattr(X, "iloc")):
        raise TypeError(f"{name} must be an array of images, got {type(X).__name__}.")
    X = np.asarray(X)
    if X.dtype == object or X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array of images, got dtype {X.dtype}.")
    if X.ndim == 4:
        if X.shape[1] != 1 and X.shape[3] == 1:
            raise ValueError(
                f"{name} has shape {X.shape}, which looks channels-last (n, H, W, 1); greyanom takes "
                f"(n, H, W) or channels-first (n, 1, H, W) grayscale images: pass {name}[..., 0]."
            )
        if X.shape[1] != 1:
            raise ValueError(
                f"{name} must have shape (n, H, W) or (n, 1, H, W) (grayscale); "
                f"got shape {X.shape} with {X.shape[1]} channels."
            )
        X = X[:, 0]
    elif X.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n, H, W) or (n, 1, H, W); got an array with "
            f"{X.ndim} dimension(s) and shape {X.shape}."
        )
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one image, got shape {X.shape}.")
    if X.shape[1] == 0 or X.shape[2] == 0:
        raise ValueError(f"{name} has images of size {X.shape[1:]}: expected H, W >= 1.")
    if X.dtype == np.uint8:
        return X.astype(dtype) / dtype(255)
    if X.dtype.kind == "b":
        return X.astype(dtype)
    if X.dtype.kind in "iu":
        raise TypeError(
            f"{name} has integer dtype {X.dtype}; expected float images in [0, 1] or uint8 images."
        )
    X = X.astype(dtype, copy=False)
    check_finite(X, name)
    lo, hi = float(X.min()), float(X.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected float images with values in [0, 1] "
            "(or uint8 images, which are scaled by 1/255)."
        )
    return X


def check_image_shape(images, expected, name="X"):
    """Raise ``ValueError`` if the images do not have the (H, W) seen in ``fit``."""
    if tuple(images.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{name} has images of size {tuple(images.shape[1:])}, but the detector was fitted on "
            f"images of size {tuple(expected)}."
        )


def check_real(value, name, *, low=None, high=None, low_closed=True, high_closed=True):
    """Validate a finite real argument of a function (not an estimator parameter).

    Raises ``TypeError`` for a non-number (``bool`` included) and ``ValueError`` for a
    non-finite value or one outside the interval; returns the value as ``float``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    value = float(value)
    too_low = low is not None and (value < low if low_closed else value <= low)
    too_high = high is not None and (value > high if high_closed else value >= high)
    if not np.isfinite(value) or too_low or too_high:
        lo = "(-inf" if low is None else ("[" if low_closed else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_closed else ")")
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}.")
    return value


def check_positive_int(value, name, *, minimum=1):
    """Validate an integer argument of a function (not an estimator parameter)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def plain_key_columns(df, columns):
    """``df`` with its categorical key columns turned into plain values (the categories' dtype).

    Keys (wafers, lots, groups) are labels: a pandas ``category`` column keys the same traces
    as its values do, and as plain values it indexes, groups, reindexes and saves like any
    other key column. Other columns, and a frame without categorical keys, are left as given.

    Parameters
    ----------
    df : pandas.DataFrame
    columns : iterable of str
        The key columns (absent names are ignored).

    Returns
    -------
    df : pandas.DataFrame
        ``df`` itself when no key column is categorical, else a converted copy.
    """
    import pandas as pd

    cat = [c for c in dict.fromkeys(columns) if c in df.columns and isinstance(df[c].dtype, pd.CategoricalDtype)]
    if not cat:
        return df
    return df.astype({c: df[c].cat.categories.dtype for c in cat})
