"""Reducing per-pixel anomaly maps to one score per image.

Shared by every image detector (PCA, VAE, PaDiM, PatchCore) so that the options
``score_reduction``, ``smoothing_sigma`` and ``topk_fraction`` mean the same thing
everywhere.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["reduce_error_maps", "smooth_maps", "REDUCTION_CONSTRAINTS"]

#: ``_parameter_constraints`` entries shared by the image detectors.
REDUCTION_CONSTRAINTS = {
    "score_reduction": [StrOptions({"mean", "max", "topk"})],
    "smoothing_sigma": [Interval(numbers.Real, 0, None, closed="left")],
    "topk_fraction": [Interval(numbers.Real, 0, 1, closed="right")],
}


def smooth_maps(maps, sigma):
    """Gaussian-blur each map of a batch ``(n, H, W)`` (no blur across images).

    ``sigma = 0`` returns the maps unchanged. Borders are reflected.
    """
    maps = np.asarray(maps)
    if sigma <= 0:
        return maps
    return gaussian_filter(maps, sigma=(0.0, float(sigma), float(sigma)), mode="reflect")


def reduce_error_maps(maps, reduction="mean", *, smoothing_sigma=0.0, topk_fraction=0.01):
    """Reduce per-pixel (or per-feature) anomaly maps to one score per sample.

    Parameters
    ----------
    maps : ndarray of shape (n, H, W) or (n, d)
        Non-negative anomaly maps, e.g. squared reconstruction errors. 2-D input
        is tabular (one value per feature) and is never smoothed.
    reduction : {"mean", "max", "topk"}, default="mean"
        ``"mean"``: the mean over pixels, i.e. the mean squared error a(x) of the case
        study for reconstruction maps. ``"max"``: the largest pixel. ``"topk"``: the mean
        of the largest ``topk_fraction`` of pixels (at least one).
    smoothing_sigma : float, default=0.0
        Standard deviation in pixels of a Gaussian blur applied to each image map
        before reducing; 0 means no blur. Blurring turns the "max" and "topk"
        reductions from single-pixel noise detectors into small-region detectors.
    topk_fraction : float in (0, 1], default=0.01
        Fraction of pixels averaged by ``"topk"``.

    Returns
    -------
    scores : ndarray of shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.image import reduce_error_maps
    >>> maps = np.zeros((2, 10, 10)); maps[1, 4, 4] = 100.0
    >>> reduce_error_maps(maps, "mean")
    array([0., 1.])
    >>> reduce_error_maps(maps, "max")
    array([  0., 100.])
    """
    maps = np.asarray(maps)
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must have shape (n, H, W) or (n, d), got shape {maps.shape}.")
    if reduction not in ("mean", "max", "topk"):
        raise ValueError(f"reduction must be one of 'mean', 'max', 'topk', got {reduction!r}.")
    if not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}.")
    if smoothing_sigma < 0:
        raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma!r}.")
    if maps.ndim == 3:
        maps = smooth_maps(maps, smoothing_sigma)
    flat = maps.reshape(maps.shape[0], -1)
    if reduction == "mean":
        return flat.mean(axis=1, dtype=np.float64)
    if reduction == "max":
        return flat.max(axis=1).astype(np.float64)
    k = max(1, int(round(topk_fraction * flat.shape[1])))
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.mean(axis=1, dtype=np.float64)
