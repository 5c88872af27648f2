"""Translation registration of aligned inspection images (FFT phase correlation).

Used by ``ConvVAEDetector(register=True)``: wafer and die images are aligned by
construction up to a small shift, and a per-pixel residual model only pays off once the
pixels correspond. The shift estimate is scikit-image's
:func:`skimage.registration.phase_cross_correlation` (sub-pixel by upsampled DFT); the
resampling is :func:`scipy.ndimage.shift` (bilinear, edge pixels repeated).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from greyanom._optional import import_optional

__all__ = ["estimate_shifts", "apply_shifts", "fit_reference"]

#: Sub-pixel resolution of the shift estimate (1/10 pixel).
_UPSAMPLE = 10


def estimate_shifts(images, reference):
    """Shift ``(dy, dx)`` that moves each image onto ``reference``; shape ``(n, 2)``."""
    registration = import_optional("skimage.registration", "torch", "registering images (register=True)")
    ref = np.asarray(reference, dtype=np.float64)
    return np.array(
        [registration.phase_cross_correlation(ref, img, upsample_factor=_UPSAMPLE)[0] for img in images],
        dtype=np.float64,
    ).reshape(len(images), 2)


def apply_shifts(images, shifts):
    """Translate each image of ``(n, H, W)`` by its row of ``shifts`` (float32 result)."""
    out = np.empty(np.shape(images), dtype=np.float32)
    for i, (img, s) in enumerate(zip(images, shifts)):
        out[i] = ndimage.shift(np.asarray(img, dtype=np.float32), s, order=1, mode="nearest")
    return out


def fit_reference(images, n_iter=2):
    """Register ``images`` to their own mean, re-estimating the reference ``n_iter`` times.

    Returns
    -------
    reference : ndarray of shape (H, W), float32
        Mean of the aligned images.
    aligned : ndarray of shape (n, H, W), float32
    """
    reference = np.mean(images, axis=0, dtype=np.float64)
    aligned = np.asarray(images, dtype=np.float32)
    for _ in range(max(1, int(n_iter))):
        aligned = apply_shifts(images, estimate_shifts(images, reference))
        reference = aligned.mean(axis=0, dtype=np.float64)
    return reference.astype(np.float32), aligned
