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

from greyanom._validation import check_finite

__all__ = ["reduce_error_maps", "smooth_maps", "check_sigma", "REDUCTION_CONSTRAINTS"]

#: ``_parameter_constraints`` entries shared by the image detectors.
REDUCTION_CONSTRAINTS = {
    "score_reduction": [StrOptions({"mean", "max", "topk"})],
    "smoothing_sigma": [Interval(numbers.Real, 0, None, closed="left")],
    "topk_fraction": [Interval(numbers.Real, 0, 1, closed="right")],
}


def check_sigma(sigma, image_shape, name="smoothing_sigma"):
    """Raise ``ValueError`` unless ``0 <= sigma <= max(image_shape)``.

    A Gaussian blur wider than the image makes every map (nearly) constant, and its
    kernel of ``8 sigma + 1`` taps per axis made ``smoothing_sigma=1e6`` run for minutes
    on 32x32 images, so the blur is bounded by the image side where it enters.

    Parameters
    ----------
    sigma : float
        Standard deviation of the blur in pixels.
    image_shape : tuple of int
        ``(H, W)`` of the maps.
    name : str, default="smoothing_sigma"
        Argument name used in the message.

    Returns
    -------
    sigma : float
    """
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {sigma!r}.")
    side = max(int(s) for s in image_shape)
    if sigma > side:
        raise ValueError(
            f"{name}={sigma!r} is wider than the images of size {tuple(int(s) for s in image_shape)}: "
            f"expected at most {side} pixels (a wider blur makes every map constant)."
        )
    return float(sigma)


def smooth_maps(maps, sigma):
    """Gaussian-blur each map of a batch ``(n, H, W)`` (no blur across images).

    Parameters
    ----------
    maps : ndarray of shape (n, H, W)
        Anomaly maps.
    sigma : float
        Standard deviation of the blur in pixels, from 0 (the maps unchanged) to the larger
        image side ``max(H, W)``; a wider blur is a ``ValueError``. Borders are reflected.

    Returns
    -------
    blurred : ndarray of shape (n, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.image import smooth_maps
    >>> maps = np.zeros((1, 9, 9)); maps[0, 4, 4] = 1.0
    >>> blurred = smooth_maps(maps, 1.0)
    >>> bool(blurred[0, 4, 4] < 1.0), round(float(blurred.sum()), 6)
    (True, 1.0)
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (n, H, W), got shape {maps.shape}.")
    sigma = check_sigma(sigma, maps.shape[1:], name="sigma")
    if sigma == 0:
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
        before reducing; 0 means no blur, at most the larger image side. Blurring turns the "max" and "topk"
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
    if isinstance(topk_fraction, bool) or not isinstance(topk_fraction, numbers.Real) or not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}.")
    if maps.dtype.kind not in "biuf":
        raise TypeError(f"maps must be a numeric array, got dtype {maps.dtype}.")
    check_finite(maps, "maps")
    if maps.ndim == 3:
        smoothing_sigma = check_sigma(smoothing_sigma, maps.shape[1:])
        maps = smooth_maps(maps, smoothing_sigma)
    elif isinstance(smoothing_sigma, bool) or not isinstance(smoothing_sigma, numbers.Real) or not smoothing_sigma >= 0:
        raise ValueError(f"smoothing_sigma must be a finite number >= 0, got {smoothing_sigma!r}.")
    if maps.size == 0:
        raise ValueError(f"maps is empty (shape {maps.shape}): expected at least one sample and one value.")
    flat = maps.reshape(maps.shape[0], -1)
    if reduction == "mean":
        return flat.mean(axis=1, dtype=np.float64)
    if reduction == "max":
        return flat.max(axis=1).astype(np.float64)
    k = max(1, int(round(topk_fraction * flat.shape[1])))
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.mean(axis=1, dtype=np.float64)
