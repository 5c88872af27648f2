"""RegisteredPixelDetector: golden-template inspection of aligned images, per pixel."""

from __future__ import annotations

import dataclasses
import functools
import numbers

import numpy as np
from scipy import ndimage
from sklearn.utils._param_validation import Interval
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom.base import ImageExplanation
from greyanom._threads import threaded
from greyanom.image import _align
from greyanom.image._base import BaseImageDetector
from greyanom.image._reduce import smooth_maps

__all__ = ["RegisteredPixelDetector", "RegisteredExplanation"]

_MAD_TO_STD = 1.4826


@dataclasses.dataclass(frozen=True)
class RegisteredExplanation(ImageExplanation):
    """Explanation of :class:`RegisteredPixelDetector`: the image fields plus the shifts.

    Attributes
    ----------
    heatmap : ndarray of shape (n, H, W)
        Normalised ``|z|`` per pixel, in each test image's own frame.
    score : ndarray of shape (n,)
        Anomaly scores, equal to ``detector.score(X)``.
    reconstruction : ndarray of shape (n, H, W)
        The per-pixel model (robust mean, plus the PCA modes when ``n_components > 0``)
        moved into each test image's frame, in the grey levels of the input.
    shift : ndarray of shape (n, 2)
        The estimated ``(row, column)`` translation, in pixels, that registers each image
        to the reference (as :func:`skimage.registration.phase_cross_correlation` returns
        it: shifting the image by ``shift`` aligns it).
    """

    shift: np.ndarray | None = None


class RegisteredPixelDetector(BaseImageDetector):
    """Per-pixel robust statistics of registered images (golden-template inspection).

    Wafer and die images are aligned by construction up to a small stage shift. This
    detector does what die-to-die and golden-template inspection tools do: it brings every
    image onto a common reference by a sub-pixel translation and compares each pixel with
    the same pixel on normal parts. Per image (in ``fit`` and when scoring):

    1. remove a least-squares plane (illumination offset and gradient) and divide by the
       residual's standard deviation (illumination gain);
    2. register to the reference by FFT phase correlation with sub-pixel refinement
       (:func:`skimage.registration.phase_cross_correlation`) and shift the image onto it
       (cubic spline, :func:`scipy.ndimage.shift`);
    3. optionally remove the image's projection on ``n_components`` global principal modes
       of the aligned normal images (die-to-die reflectance, film thickness);
    4. ``z = (x - median) / std`` per pixel, with the robust per-pixel median and standard
       deviation (1.4826 MAD) of the aligned training images, the deviation floored;
    5. a heatmap at several scales, each a matched filter for one defect shape: ``|z|``
       blurred by ``heatmap_sigma`` (point defects), ``|z|`` of the signed map blurred by
       ``blob_sigma`` (small blobs of one sign) and by ``coarse_sigma`` (large faint stains,
       off by default), and the largest ``|response|`` of ``n_orientations`` oriented line
       filters (Gaussian, ``line_length`` pixels along, 1 across: thin scratches). Each
       scale is divided by the per-pixel RMS of the training images' maps at that scale (so
       fixed artefacts, at the border after shifting or on structure edges, cancel) and by
       the median of the training images' peaks (so the scales are comparable); the
       heatmap is the maximum over the scales, shifted back into the test image's frame.

    The reference starts as the median of the preprocessed training images and is
    re-estimated as the median of the aligned ones ``n_iter`` times. The heatmap is
    reduced to a score by the shared reductions (the maximum by default).

    Parameters
    ----------
    n_components : int, default=20
        Number of global principal modes of the aligned training images removed before the
        per-pixel statistics; 0 = none. Capped at ``n_samples - 2``. The modes absorb
        die-to-die reflectance changes: 20 modes lifted image AUROC on ``make_wafer_images``
        (seed 0, single-scale heatmap) from 0.808 to 0.891.
    upsample_factor : int, default=10
        Sub-pixel precision of the registration (``1 / upsample_factor`` pixels).
    max_shift : float or None, default=None
        Largest plausible shift in pixels; an estimated shift beyond it is replaced by no
        shift (periodic patterns can make phase correlation jump a period). ``None``: no
        limit.
    n_iter : int, default=2
        Re-estimations of the reference from the aligned training images.
    std_floor : float, default=0.05
        Floor of the per-pixel standard deviation, as a fraction of its median over the
        image, so that pixels that never varied in training cannot give infinite ``z``.
    heatmap_sigma : float, default=1.0
        Gaussian blur (pixels) of the ``|z|`` map before normalisation (the fine scale);
        0 = none.
    blob_sigma : float, default=1.0
        Gaussian blur (pixels) of the signed ``z`` map for the blob scale (a matched filter
        for small particles); 0 = off.
    coarse_sigma : float, default=0.0
        The same at a coarse scale, for large faint stains and films; 0 = off. On
        ``make_wafer_images`` the line filters already find the stains, and a coarse scale
        of 4 pixels raised the maxima of normal images more than those of defective ones.
    line_length : float, default=6.0
        Standard deviation (pixels) along the line of the oriented line filters; 0 = off.
        They lifted image AUROC on ``make_wafer_images`` seed 0 from 0.890 to 0.916 (seed 2:
        0.943 to 0.976), scratches and stains most.
    n_orientations : int, default=8
        Orientations of the line filters in [0, 180) degrees.
    score_reduction : {"mean", "max", "topk"}, default="max"
        How the heatmap becomes a score (see :func:`greyanom.image.reduce_error_maps`).
    smoothing_sigma : float, default=0.0
        Extra blur before reducing (on top of ``heatmap_sigma``).
    topk_fraction : float, default=0.001
        Fraction of pixels averaged by ``score_reduction="topk"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, each image scored by per-pixel statistics and PCA modes of the other
        folds, on the registration and scale normalisation of the whole fit (an
        approximation of refitted clones, see Notes); ``"in_sample"``, the fitted model's own
        training scores (optimistic: the threshold then flags more than ``contamination``
        of new normal data).
    batch_size : int, default=64
        Images processed per batch (bounds memory).
    random_state : int, RandomState instance or None, default=None
        Seeds the randomized SVD of the PCA modes (``n_components > 0``) and
        the folds of the cross-fitting that sets ``offset_``. The same seed gives the same
        numbers. With ``None`` the SVD's draws draw from NumPy's global random state and vary from
        fit to fit, while the folds use a fixed seed (0).

    Attributes
    ----------
    reference_ : ndarray of shape (H, W)
        The registration reference (median of the aligned, preprocessed training images).
    median_ : ndarray of shape (H, W)
        Per-pixel median of the aligned training images (of their PCA residuals when
        ``n_components > 0``).
    std_ : ndarray of shape (H, W)
        Per-pixel robust standard deviation, floored.
    norm_ : ndarray of shape (n_scales, H, W)
        Per-pixel RMS of the training maps at each scale (floored at its median / 4).
    scale_calibration_ : ndarray of shape (n_scales,)
        Median over the training images of each normalised scale's peak.
    mean_ : ndarray of shape (H, W)
        Mean aligned training image (the PCA centre).
    components_ : ndarray of shape (k, H * W)
        Principal modes removed before the statistics (``k = n_components_``).
    n_components_ : int
        Number of modes used.
    train_shifts_ : ndarray of shape (n_samples, 2)
        Estimated shifts of the training images.
    model_nbytes_ : int
        Memory of the fitted model's arrays in bytes.
    image_shape_ : tuple of int
    n_features_in_ : int
        Pixels per image.
    offset_, threshold_ : float
        See :class:`~greyanom.base.BaseDetector`.

    See Also
    --------
    PaDiMDetector : Patch features for images that are not aligned (objects that move).
    PCADetector : The reconstruction baseline.

    Notes
    -----
    Registration is a translation only: rotations of a few tenths of a degree leave a
    sub-pixel residual at the image corners that the per-pixel standard deviation absorbs.
    The detector needs no torch; it needs scikit-image (``pip install "greyanom[image]"``).

    Held-out calibration (``calibration="heldout"``) refits per fold only the PCA modes and the
    per-pixel median and deviation, on the other folds' images as the fit aligned them, and
    keeps the fit's registration reference and per-scale normalisation (``norm_``,
    ``scale_calibration_``): refitting those would register and filter every image again per
    fold. It is an approximation of refitted clones; its effect on the threshold and the
    false-alarm rate is in the decisions guide.

    References
    ----------
    .. [1] M. Guizar-Sicairos, S. T. Thurman, J. R. Fienup, "Efficient subpixel image
       registration algorithms", Optics Letters 33, 156-158, 2008.

    Examples
    --------
    >>> from greyanom import RegisteredPixelDetector
    >>> from greyanom.datasets import make_wafer_images
    >>> data = make_wafer_images(n_train=30, n_test=10, image_size=64, random_state=0)
    >>> det = RegisteredPixelDetector(random_state=0).fit(data.X_train)
    >>> e = det.explain(data.X_test[:2])
    >>> e.heatmap.shape, e.shift.shape
    ((2, 64, 64), (2, 2))
    """

    _parameter_constraints: dict = {
        **BaseImageDetector._parameter_constraints,
        "n_components": [Interval(numbers.Integral, 0, None, closed="left")],
        "upsample_factor": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_shift": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "n_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "std_floor": [Interval(numbers.Real, 0, None, closed="neither")],
        "heatmap_sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "blob_sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "coarse_sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "line_length": [Interval(numbers.Real, 0, None, closed="left")],
        "n_orientations": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }
    _explanation_class = RegisteredExplanation
    _array_names = ("reference_", "median_", "std_", "norm_", "scale_calibration_", "mean_", "components_",
                    "train_shifts_")
    _fitted_attrs = (*_array_names, "n_components_")

    def __init__(
        self,
        *,
        n_components=20,
        upsample_factor=10,
        max_shift=None,
        n_iter=2,
        std_floor=0.05,
        heatmap_sigma=1.0,
        blob_sigma=1.0,
        coarse_sigma=0.0,
        line_length=6.0,
        n_orientations=8,
        score_reduction="max",
        smoothing_sigma=0.0,
        topk_fraction=0.001,
        contamination="auto",
        calibration="heldout",
        batch_size=64,
        random_state=None,
    ):
        self.n_components = n_components
        self.upsample_factor = upsample_factor
        self.max_shift = max_shift
        self.n_iter = n_iter
        self.std_floor = std_floor
        self.heatmap_sigma = heatmap_sigma
        self.blob_sigma = blob_sigma
        self.coarse_sigma = coarse_sigma
        self.line_length = line_length
        self.n_orientations = n_orientations
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.contamination = contamination
        self.calibration = calibration
        self.batch_size = batch_size
        self.random_state = random_state

    # -- preprocessing and registration ---------------------------------------------
    @staticmethod
    def _normalise(images):
        """Remove a least-squares plane and divide by the residual's standard deviation."""
        n, h, w = images.shape
        A, pinv = _plane_basis((h, w))
        flat = images.reshape(n, -1).astype(np.float64)
        resid = flat - (flat @ pinv.T) @ A.T  # least-squares plane per image
        scale = resid.std(axis=1, keepdims=True)
        scale[scale < 1e-12] = 1.0  # a constant image stays zero
        return (resid / scale).reshape(n, h, w)

    def _estimate_shifts(self, images, reference_fft):
        return _align.phase_shifts(images, reference_fft, upsample_factor=self.upsample_factor,
                            max_shift=self.max_shift, purpose="RegisteredPixelDetector")

    @staticmethod
    def _shift(images, shifts, order):
        out = np.empty_like(images)
        for i, (img, s) in enumerate(zip(images, shifts)):
            out[i] = ndimage.shift(img, s, order=order, mode="nearest") if np.any(s) else img
        return out

    def _reference_fft(self, reference):
        return _align.windowed_fft(reference)

    def _register(self, images, reference):
        norm = self._normalise(images)
        shifts = self._estimate_shifts(norm, self._reference_fft(reference))
        return self._shift(norm, shifts, order=3), shifts

    # -- fitting -------------------------------------------------------------------
    def _fit_images(self, images):
        n, h, w = images.shape
        if n < 3:
            raise ValueError(f"X must have at least 3 images to fit RegisteredPixelDetector, got {n}.")
        self.n_features_in_ = int(h * w)
        norm = self._normalise(images)
        reference = np.median(norm, axis=0)
        shifts = np.zeros((n, 2))
        aligned = norm
        for _ in range(self.n_iter + 1):
            shifts = self._estimate_shifts(norm, self._reference_fft(reference))
            aligned = self._shift(norm, shifts, order=3)
            reference = np.median(aligned, axis=0)
        self.reference_ = reference.astype(np.float32)
        self.train_shifts_ = shifts
        self._heldout_state = aligned  # taken (and dropped) by _heldout_scores
        self.mean_, self.components_, median, std, resid = self._pixel_model(aligned)
        self.n_components_ = int(self.components_.shape[0])
        self.median_ = median.astype(np.float32)
        self.std_ = std.astype(np.float32)
        maps = self._scale_maps((resid - median) / std)
        # each scale: per-pixel RMS of the training maps (floored), then calibrated so that
        # the median training image peaks at 1, which makes the scales comparable
        norm = np.sqrt(np.mean(maps**2, axis=1))
        floor = np.maximum(0.25 * np.median(norm, axis=(1, 2), keepdims=True), 1e-3)
        self.norm_ = np.maximum(norm, floor).astype(np.float32)
        peaks = (maps / self.norm_[:, None]).reshape(len(maps), n, -1).max(axis=2)
        self.scale_calibration_ = np.maximum(np.median(peaks, axis=1), 1e-6).astype(np.float32)
        self.model_nbytes_ = int(sum(getattr(self, a).nbytes for a in self._array_names))

    def _pixel_model(self, aligned):
        """PCA modes and robust per-pixel statistics of aligned images.

        Returns ``(mean, components, median, std, residuals)``: float32 mean and modes,
        float64 median, standard deviation and residuals of ``aligned`` on the modes.
        """
        n, h, w = aligned.shape
        flat = aligned.reshape(n, -1)
        mean = flat.mean(axis=0).reshape(h, w).astype(np.float32)
        k = min(int(self.n_components), n - 2)
        if k > 0:
            _, _, Vt = randomized_svd(flat - mean.ravel(), k, random_state=check_random_state(self.random_state))
            components = Vt.astype(np.float32)
        else:
            components = np.zeros((0, h * w), np.float32)
        resid = _residuals(aligned, mean, components)
        return (mean, components, *self._pixel_stats(resid), resid)

    def _pixel_stats(self, resid):
        """Robust per-pixel median and standard deviation (1.4826 MAD, floored) of residuals."""
        median = np.median(resid, axis=0)
        std = _MAD_TO_STD * np.median(np.abs(resid - median), axis=0)
        # images are normalised to unit standard deviation, so 1e-3 is an absolute floor
        std = np.maximum(std, max(self.std_floor * float(np.median(std)), 1e-3))
        return median, std

    def _heldout_scores(self, X, train_scores):
        """Held-out scores that refit only the per-pixel model per fold (an approximation).

        Per fold of the default cross-fitting (:func:`greyanom._crossfit.make_folds`), the PCA
        modes and the robust per-pixel median and standard deviation are refitted on the other
        folds' aligned images, and the fold's images are scored with them. The modes are the
        exact leading principal axes of the other folds, from the Gram matrix of the aligned
        images (:func:`greyanom.image._heldout.gram_fold_projections`), where the fit (and a
        refitted clone) approximates them with a randomized SVD. Kept from the whole fit: the registration (reference and shifts)
        and the per-scale normalisation (``norm_``, ``scale_calibration_``), whose refit would
        filter every training image at every scale again per fold. Its effect on the threshold
        and the false-alarm rate, against refitted clones, is measured in
        ``benchmarks/calibration_cost.py``.
        """
        from greyanom._crossfit import make_folds
        from greyanom._progress import progress_stage
        from greyanom.image._heldout import gram_fold_projections

        aligned = self.__dict__.pop("_heldout_state")
        n = len(aligned)
        if n < 4:  # a fold's complement needs the 3 images a fit needs
            return self._insample_fallback(train_scores, f"{n} image(s)")
        seed = 0 if self.random_state is None else self.random_state
        folds = make_folds(n, min(self._heldout_cv, n), seed)
        scale = self.norm_[:, None] * self.scale_calibration_[:, None, None, None]
        heat = np.empty(aligned.shape, np.float32)
        flat = aligned.reshape(n, -1)
        Y = flat - flat.mean(axis=0)
        K = Y @ Y.T
        fold_ids = np.unique(folds)
        with progress_stage("RegisteredPixelDetector held-out folds", total=len(fold_ids), unit="fold",
                            verbose=False) as stage:
            for k in fold_ids:
                test, train = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
                n_modes = min(int(self.n_components), len(train) - 2)  # as the fit caps them
                if n_modes > 0:
                    _, proj_train, proj_test = gram_fold_projections(Y, K, train, test, n_modes)
                    resid, resid_test = flat[train] - proj_train, flat[test] - proj_test
                else:
                    resid, resid_test = flat[train], flat[test]
                median, std = self._pixel_stats(resid.reshape(len(train), *aligned.shape[1:]))
                z = (resid_test.reshape(len(test), *aligned.shape[1:]) - median.astype(np.float32)) / std.astype(
                    np.float32)  # the statistics in float32, as the model stores them
                for start in range(0, len(test), self.batch_size):
                    sl = slice(start, start + self.batch_size)
                    maps = self._scale_maps(z[sl]) / scale
                    heat[test[sl]] = self._shift(maps.max(axis=0), -self.train_shifts_[test[sl]], order=1)
                stage.update(1)
        return self._reduce(heat)

    def _scales(self):
        """The detection scales as ``(kind, size)``: ``"abs"`` blurred ``|z|``, ``"signed"``
        ``|blurred z|``, ``"line"`` oriented line filters of ``z``."""
        scales = [("abs", float(self.heatmap_sigma))]
        for sigma in (self.blob_sigma, self.coarse_sigma):
            if sigma > 0:
                scales.append(("signed", float(sigma)))
        if self.line_length > 0:
            scales.append(("line", float(self.line_length)))
        return scales

    def _scale_maps(self, z):
        """One map per scale, shape ``(n_scales, n, H, W)`` (float32)."""
        out = np.empty((len(self._scales()),) + z.shape, np.float32)
        for i, (kind, size) in enumerate(self._scales()):
            if kind == "abs":
                out[i] = smooth_maps(np.abs(z), size)
            elif kind == "signed":
                out[i] = np.abs(smooth_maps(z, size))
            else:
                out[i] = _line_response(z, size, int(self.n_orientations))
        return out

    def _residuals(self, aligned):
        """Aligned images minus their projection on the PCA modes (all of them if k = 0)."""
        return _residuals(aligned, self.mean_, self.components_)

    # -- scoring -------------------------------------------------------------------
    def _heatmap_batch(self, images):
        aligned, shifts = self._register(images, self.reference_.astype(np.float64))
        resid = self._residuals(aligned)
        maps = self._scale_maps((resid - self.median_) / self.std_)
        maps /= self.norm_[:, None] * self.scale_calibration_[:, None, None, None]
        heat = self._shift(maps.max(axis=0), -shifts, order=1)
        return heat, aligned, resid, shifts

    def _explain_batch(self, images):
        heat, aligned, resid, shifts = self._heatmap_batch(images)
        # the model in the test image's frame and grey levels: undo shift, gain and plane
        model = self._shift(aligned - resid + self.median_, -shifts, order=3)
        recon = _to_grey_levels(model, images)
        return {
            "heatmap": heat.astype(np.float32),
            "reconstruction": recon.astype(np.float32),
            "shift": shifts,
        }

    def _explain_images(self, images):
        return self._map_batches(self._explain_batch, images, self.batch_size)

    def _score(self, X):
        images = self._validated(X)
        maps = self._map_batches(lambda b: {"heatmap": self._heatmap_batch(b)[0]}, images, self.batch_size)
        return self._reduce(maps["heatmap"])

    @threaded
    def explain(self, X):
        """Heatmap, score, model in the image's frame and estimated shift of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8), of the training size.

        Returns
        -------
        explanation : RegisteredExplanation
            ``heatmap`` (n, H, W), ``score`` (n,) equal to ``score(X)``,
            ``reconstruction`` (n, H, W) and ``shift`` (n, 2).
        """
        return super().explain(X)

    def embed(self, X):
        """Coordinates of the registered images on the PCA modes, for drift monitoring.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8), of the training size.

        Returns
        -------
        Z : ndarray of shape (n, ``n_components_``)
            ``(aligned - mean_) @ components_.T``, with ``aligned`` each image normalised and
            registered to ``reference_`` as in scoring: a shifted copy of an image embeds
            where the image does. Feed them to :class:`~greyanom.drift.FeatureDriftMonitor`.

        Raises
        ------
        ValueError
            If the detector has no PCA modes (``n_components_ == 0``).
        """
        check_is_fitted(self)
        if self.n_components_ == 0:
            raise ValueError(
                "embed needs PCA modes, but this RegisteredPixelDetector has n_components_=0; "
                "fit it with n_components >= 1 (and at least 3 images)."
            )
        images = self._validated(X)
        reference = self.reference_.astype(np.float64)
        V = self.components_.astype(np.float64)

        def one_batch(batch):
            aligned, _ = self._register(batch, reference)
            return {"z": (aligned.reshape(len(batch), -1) - self.mean_.ravel()) @ V.T}

        return self._map_batches(one_batch, images, self.batch_size)["z"]

    # -- persistence hooks (interface of BaseImageDetector.save / load) ----------------
    def _state_arrays(self):
        return {name: np.asarray(getattr(self, name)) for name in self._array_names}

    def _set_state_arrays(self, arrays):
        for name in self._array_names:
            if name not in arrays:
                raise ValueError(f"the saved RegisteredPixelDetector lacks the array {name!r}.")
            setattr(self, name, np.asarray(arrays[name]))
        self.n_components_ = int(self.components_.shape[0])
        self.n_features_in_ = int(self.reference_.size)
        if self.norm_.ndim != 3 or len(self.norm_) != len(self._scales()):
            raise ValueError("the saved RegisteredPixelDetector's norm_ does not match its scales.")
        self.model_nbytes_ = int(sum(getattr(self, a).nbytes for a in self._array_names))

    def _json_state(self):
        return {"n_components_": int(self.n_components_)}

    def _set_json_state(self, state):
        self.n_components_ = int(state["n_components_"])


def _residuals(aligned, mean, components):
    """Aligned images minus their projection on the PCA ``components`` about ``mean``."""
    if components.shape[0] == 0:
        return aligned
    n = len(aligned)
    flat = aligned.reshape(n, -1) - mean.ravel()
    V = components.astype(np.float64)
    return (flat - (flat @ V.T) @ V).reshape(aligned.shape) + mean


@functools.lru_cache(maxsize=8)
def _plane_basis(shape):
    """Design matrix ``(H * W, 3)`` of a plane and its pseudo-inverse (cached per shape)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    A = np.stack([np.ones(h * w), (xx.ravel() - w / 2) / w, (yy.ravel() - h / 2) / h], axis=1)
    return A, np.linalg.pinv(A)


@functools.lru_cache(maxsize=8)
def _line_kernels(shape, length, n_orientations):
    """Transfer functions (rfft2 layout) of elongated Gaussians: ``length`` pixels (standard
    deviation) along the line, 1 pixel across, at ``n_orientations`` angles in [0, pi)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernels = []
    for t in np.arange(n_orientations) * np.pi / n_orientations:
        along = fx * np.cos(t) + fy * np.sin(t)
        across = -fx * np.sin(t) + fy * np.cos(t)
        kernels.append(np.exp(-2 * np.pi**2 * (length**2 * along**2 + across**2)))
    return np.array(kernels)


def _line_response(z, length, n_orientations):
    """Largest ``|response|`` over orientations of the line filters (a matched filter for thin
    scratches: it averages ``z`` along a line, so faint long lines stand out of the noise)."""
    kernels = _line_kernels(z.shape[1:], length, n_orientations)
    out = np.empty(z.shape, np.float32)
    for i, img in enumerate(z):
        F = np.fft.rfft2(img)
        best = np.zeros(img.shape)
        for k in kernels:
            np.maximum(best, np.abs(np.fft.irfft2(F * k, s=img.shape)), out=best)
        out[i] = best
    return out


def _to_grey_levels(model, images):
    """Map normalised model images back to each image's grey levels (plane and gain)."""
    n, h, w = images.shape
    A, pinv = _plane_basis((h, w))
    flat = images.reshape(n, -1).astype(np.float64)
    plane = (flat @ pinv.T) @ A.T
    scale = (flat - plane).std(axis=1, keepdims=True)
    return np.clip(model.reshape(n, -1) * scale + plane, 0.0, 1.0).reshape(n, h, w)
