"""Translation registration of aligned inspection images (windowed FFT phase correlation).

The one registration helper of greyanom: :class:`~greyanom.image.RegisteredPixelDetector`
and ``ConvVAEDetector(register=True)`` both estimate shifts with :func:`phase_shifts`.
Wafer and die images are aligned by construction up to a small shift, and a per-pixel
model only pays off once the pixels correspond. The shift estimate is scikit-image's
:func:`skimage.registration.phase_cross_correlation` (sub-pixel by upsampled DFT) of
mean-removed, Hann-windowed images: without the window, a periodic die pattern wraps
around the image edges and correlates as well one die pitch away as in place, so the
estimate can jump by whole dies. The resampling is :func:`scipy.ndimage.shift`.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from greyanom._optional import import_optional

__all__ = ["phase_shifts", "estimate_shifts", "apply_shifts", "fit_reference"]

#: Sub-pixel resolution of the shift estimate (1/10 pixel).
_UPSAMPLE = 10


def _registration(purpose):
    return import_optional("skimage.registration", "image", purpose)


@functools.lru_cache(maxsize=8)
def hann_window(shape):
    """Hann window of ``shape`` (periodic form), cached per shape."""
    from scipy.signal.windows import hann

    return np.outer(hann(shape[0], sym=False), hann(shape[1], sym=False))


def windowed_fft(image):
    """FFT of the mean-removed, Hann-windowed ``image`` (what :func:`phase_shifts` correlates)."""
    img = np.asarray(image, dtype=np.float64)
    return np.fft.fft2((img - img.mean()) * hann_window(img.shape))


def phase_shifts(images, reference, *, upsample_factor=_UPSAMPLE, max_shift=None,
                 purpose="registering images"):
    """Shift ``(dy, dx)`` that moves each image onto ``reference``; shape ``(n, 2)``.

    Parameters
    ----------
    images : array-like of shape (n, H, W)
    reference : array-like of shape (H, W), or its :func:`windowed_fft` (complex)
        Passing the transform saves recomputing it for every batch.
    upsample_factor : int, default=10
        Sub-pixel precision (``1 / upsample_factor`` pixels).
    max_shift : float or None, default=None
        An estimate longer than this (pixels) is replaced by no shift.
    purpose : str
        What needs scikit-image, for the error message when it is missing.

    Returns
    -------
    shifts : ndarray of shape (n, 2)
        Shifting image ``i`` by ``shifts[i]`` (:func:`apply_shifts`) aligns it with the
        reference. Constant images, or a constant reference, get no shift.
    """
    reg = _registration(purpose)
    ref = np.asarray(reference)
    if np.iscomplexobj(ref):
        ref_fft, flat_reference = ref, not np.any(ref)
    else:
        ref_fft, flat_reference = windowed_fft(ref), np.ptp(ref) == 0
    shifts = np.zeros((len(images), 2))
    if not flat_reference:
        for i, img in enumerate(images):
            img = np.asarray(img, dtype=np.float64)
            if np.ptp(img) == 0:  # nothing to register
                continue
            shifts[i] = reg.phase_cross_correlation(
                ref_fft, windowed_fft(img), space="fourier",
                upsample_factor=int(upsample_factor), normalization=None,
            )[0]
    if max_shift is not None:
        shifts[np.hypot(shifts[:, 0], shifts[:, 1]) > max_shift] = 0.0
    return shifts


def estimate_shifts(images, reference):
    """:func:`phase_shifts` at the default precision (the VAE's ``register=True`` path)."""
    return phase_shifts(images, reference, purpose="registering images (register=True)")


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
