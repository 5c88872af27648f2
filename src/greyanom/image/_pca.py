"""PCADetector: the PCA reconstruction-error baseline for images and tables."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy import linalg
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.extmath import randomized_svd, svd_flip
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom.image._base import BaseImageDetector
from greyanom._threads import threaded
from greyanom.image._reduce import check_sigma

__all__ = ["PCADetector"]

#: float64 values per block of the scoring pass's row arithmetic (4 MB)
_BLOCK_VALUES = 1 << 19


class PCADetector(BaseImageDetector):
    """Principal-component reconstruction-error detector for images and tables.

    The model is the textbook one of the case study (section 3.3): project onto the
    first ``k`` principal components of the normal training data, reconstruct, and
    score by the reconstruction error. (PyOD's ``PCA`` detector scores weighted
    distances to the eigenvectors instead; this is not that.) The principal
    components come from an exact SVD of the centred ``(n, d)`` data matrix, or a
    randomized SVD for large images; a ``d x d`` covariance matrix is never formed.
    A fitted detector saves to one safetensors file (:meth:`save`, no pickle) and loads
    back with :meth:`load`, as every image detector does.

    Parameters
    ----------
    n_components : int or float, default=50
        Number of principal components ``k``, or, as a float in (0, 1), the fraction of
        variance to keep. An int is capped at ``min(n_samples, n_features) - 1`` (with a
        warning) so that some residual subspace is left to score; ``n_components_``
        holds the number used.
    score_reduction : {"mean", "max", "topk"}, default="topk"
        How a per-pixel (or per-feature) squared-error map becomes one score:
        ``"mean"`` is the case study's mean squared error a(x); ``"max"`` the largest
        (smoothed) pixel; ``"topk"`` the mean of the largest ``topk_fraction`` of
        pixels. See :func:`greyanom.image.reduce_error_maps` and the PCADetector guide
        for the measured trade-off: the defaults (``"topk"`` of 1% of the pixels after a
        4-pixel blur, 50 components) were the most robust choice over the MVTec AD
        transistor category and ``make_wafer_images``; ``"mean"`` misses small defects.
    smoothing_sigma : float, default=4.0
        Gaussian blur (pixels) of each image's error map before reducing; 0 = none.
        Ignored for tabular input.
    topk_fraction : float, default=0.01
        Fraction of pixels averaged by ``score_reduction="topk"``.
    svd_solver : {"auto", "full", "randomized"}, default="auto"
        ``"full"``: exact SVD of the data matrix (of the small factor of an economy QR
        decomposition when ``d > 2n``, as for images). ``"randomized"``: randomized
        SVD (Halko et al.), for many wide images. ``"auto"``: exact unless the data has
        more than 4,096 features, more than 500 samples and an integer ``n_components``
        below 80% of ``min(n, d)``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, each image scored by the PCA of the other folds, computed exactly from
        the Gram matrix of the training data (no refit; see Notes); ``"in_sample"``, the
        fitted model's own training scores (optimistic: the threshold then flags more than
        ``contamination`` of new normal data).
    batch_size : int, default=256
        Images scored per batch (bounds memory).
    random_state : int, RandomState instance or None, default=None
        Seeds the randomized SVD (``svd_solver="randomized"``, or ``"auto"`` on large data) and
        the folds of the cross-fitting that sets ``offset_``. The same seed gives the same
        numbers. With ``None`` the SVD's draws draw from NumPy's global random state and vary from
        fit to fit, while the folds use a fixed seed (0).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        Mean of the training data (the mean image for images).
    components_ : ndarray of shape (k, n_features)
        Principal axes (k = ``n_components_`` orthonormal rows).
    singular_values_, explained_variance_, explained_variance_ratio_ : ndarray
        Of the kept components, as in :class:`sklearn.decomposition.PCA`.
    n_components_ : int
        Number of components used.
    image_shape_ : tuple of int or None
        ``(H, W)`` of the training images; ``None`` for tabular data.
    n_features_in_ : int
        Number of features (pixels for images).
    offset_, threshold_ : float
        See :class:`~greyanom.base.BaseDetector`.

    See Also
    --------
    greyanom.image.reduce_error_maps : The score reductions.

    Notes
    -----
    With :math:`\\hat x = \\mu + V_k V_k^\\top (x - \\mu)` the reconstruction, the heatmap is
    :math:`h(x) = (x - \\hat x)^2` per pixel and the ``"mean"`` score is the mean of
    :math:`h`, the case study's :math:`a(x)`.

    Held-out calibration (``calibration="heldout"``) scores each training item with the PCA
    of the other folds without refitting: the folds' principal subspaces come from the
    ``n x n`` Gram matrix of the training data, centred per fold (the kernel form of PCA),
    and equal those of clones refitted with the exact solver
    (:func:`greyanom.image._heldout.pca_fold_residuals`).

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import PCADetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 20))
    >>> det = PCADetector(n_components=5).fit(X)
    >>> X_new = X[:3].copy(); X_new[0, 0] += 10.0
    >>> det.predict(X_new)
    array([-1,  1,  1])
    >>> import tempfile, pathlib
    >>> path = det.save(pathlib.Path(tempfile.mkdtemp()) / "pca.safetensors")
    >>> bool((PCADetector.load(path).score(X_new) == det.score(X_new)).all())
    True
    """

    _parameter_constraints: dict = {
        **BaseImageDetector._parameter_constraints,
        "n_components": [
            Interval(numbers.Integral, 1, None, closed="left"),
            Interval(numbers.Real, 0, 1, closed="neither"),
        ],
        "svd_solver": [StrOptions({"auto", "full", "randomized"})],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_components=50,
        score_reduction="topk",
        smoothing_sigma=4.0,
        topk_fraction=0.01,
        svd_solver="auto",
        contamination="auto",
        calibration="heldout",
        batch_size=256,
        random_state=None,
    ):
        self.n_components = n_components
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.svd_solver = svd_solver
        self.contamination = contamination
        self.calibration = calibration
        self.batch_size = batch_size
        self.random_state = random_state

    _accepts_rows = True
    #: learned arrays saved by ``save`` (and restored by ``load``)
    _arrays = ("mean_", "components_", "singular_values_", "explained_variance_", "explained_variance_ratio_")
    _fitted_attrs = (*_arrays, "n_components_")

    # -- fitting --------------------------------------------------------------------
    def _fit_rows(self, X):
        self._fit_matrix(X)

    def _fit_images(self, images):
        check_sigma(self.smoothing_sigma, images.shape[1:])
        self._fit_matrix(images.reshape(len(images), -1).astype(np.float64))
        return None

    def _fit_matrix(self, M):
        n, d = M.shape
        if n < 2:
            raise ValueError(f"X must have at least 2 samples to fit a PCA, got {n}.")
        k = self.n_components
        if isinstance(k, numbers.Integral):
            k_max = min(n, d) - 1 if min(n, d) > 1 else 1
            if k > k_max:
                warnings.warn(
                    f"n_components={k} is more than min(n_samples, n_features) - 1 = {k_max}; "
                    f"using {k_max} components.",
                    UserWarning,
                    stacklevel=4,
                )
                k = k_max
            k = int(k)
        solver = self.svd_solver
        if solver == "auto":
            big = d > 4096 and n > 500 and isinstance(k, int) and k < 0.8 * min(n, d)
            solver = "randomized" if big else "full"
        if solver == "randomized" and not isinstance(k, int):
            raise ValueError(
                "svd_solver='randomized' needs an integer n_components; "
                f"got the variance fraction {self.n_components!r}."
            )
        mean = M.mean(axis=0)
        Mc = M - mean
        if solver == "randomized":
            _, S, Vt = randomized_svd(Mc, k, random_state=check_random_state(self.random_state))
        else:
            S, Vt = _exact_svd(Mc)
        variance = S**2 / (n - 1)
        total_variance = (Mc**2).sum() / (n - 1)
        ratio = variance / total_variance if total_variance > 0 else np.zeros_like(variance)
        if not isinstance(k, int):  # variance fraction: smallest k reaching it
            k = int(min(np.searchsorted(np.cumsum(ratio), k, side="right") + 1, len(S)))
        self._heldout_state = Mc  # the centred training rows, taken (and dropped) by _heldout_scores
        self.mean_ = mean
        self.components_ = Vt[:k]
        self.singular_values_ = S[:k]
        self.explained_variance_ = variance[:k]
        self.explained_variance_ratio_ = ratio[:k]
        self.n_components_ = int(k)

    def _heldout_scores(self, X, train_scores):
        """Cross-fitted scores, exactly, without refitting: the folds' PCA from the Gram matrix.

        The folds are those of the default cross-fitting (:func:`greyanom._crossfit.make_folds`,
        ``_heldout_cv`` shuffled folds seeded by ``random_state``, or 0); each fold's residuals
        come from :func:`greyanom.image._heldout.pca_fold_residuals` and are reduced as
        ``score`` reduces them. The scores equal those of refitted clones with the exact
        solver (to rounding; with ``svd_solver="randomized"`` a clone's SVD approximates the
        exact one used here).
        """
        from greyanom._crossfit import make_folds
        from greyanom.image._heldout import pca_fold_residuals

        Mc = self.__dict__.pop("_heldout_state")
        n = len(Mc)
        if n < 3:
            return self._insample_fallback(train_scores, f"{n} item(s)")
        seed = 0 if self.random_state is None else self.random_state
        folds = make_folds(n, min(self._heldout_cv, n), seed)
        out = np.empty(n)
        for rows, resid in pca_fold_residuals(Mc, folds, self.n_components, self.batch_size, centred=True):
            heat = np.square(resid, out=resid)
            if self.image_shape_ is not None:  # as _explain_images: float32 maps of the image shape
                heat = heat.reshape(len(rows), *self.image_shape_).astype(np.float32)
            out[rows] = self._reduce(heat)
        return out

    # -- scoring --------------------------------------------------------------------
    def _reconstruct(self, M):
        Z = (M - self.mean_) @ self.components_.T
        return Z @ self.components_ + self.mean_

    def _explain_rows(self, M):
        recon = self._reconstruct(M)
        return {"reconstruction": recon, "heatmap": (M - recon) ** 2}

    def _explain_images(self, images):
        def one_batch(batch):
            n = len(batch)
            recon = np.empty(batch.shape, dtype=np.float32)
            heat = np.empty(batch.shape, dtype=np.float32)
            flat_recon, flat_heat = recon.reshape(n, -1), heat.reshape(n, -1)
            # float64 work in blocks of about 4 MB: small temporaries that the allocator reuses,
            # where whole-batch ones (50 MB for 100 images of 256 x 256) were fresh pages to fault
            # in on each call (0.05 to 0.45 s for the same product); the rows are independent
            step = max(1, _BLOCK_VALUES // max(flat_recon.shape[1], 1))
            for a in range(0, n, step):
                out = self._explain_rows(batch[a : a + step].reshape(-1, flat_recon.shape[1]).astype(np.float64))
                flat_recon[a : a + step] = out["reconstruction"]
                flat_heat[a : a + step] = out["heatmap"]
            return {"reconstruction": recon, "heatmap": heat}

        return self._map_batches(one_batch, images, self.batch_size)

    @threaded
    def explain(self, X):
        """Reconstruction, squared-error heatmap and score of each sample.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, d)
            Images (as in ``fit``) or tabular rows.

        Returns
        -------
        explanation : ImageExplanation
            ``reconstruction`` and ``heatmap`` (squared error per pixel or per feature,
            same shape as the validated ``X``) and ``score`` (equal to ``score(X)``).
        """
        return super().explain(X)

    # -- persistence hooks ------------------------------------------------------------
    def _state_arrays(self):
        return {name: np.ascontiguousarray(getattr(self, name)) for name in self._arrays}

    def _set_state_arrays(self, arrays):
        missing = [name for name in self._arrays if name not in arrays]
        if missing:
            raise ValueError(f"the saved PCADetector lacks the arrays {missing}.")
        for name in self._arrays:
            setattr(self, name, np.asarray(arrays[name]))
        d = self.mean_.shape[0]
        if self.components_.shape != (self.n_components_, d):
            raise ValueError(
                f"the saved PCADetector's components_ have shape {self.components_.shape}, "
                f"expected {(self.n_components_, d)}."
            )

    def _json_state(self):
        return {"n_components_": int(self.n_components_)}

    def _set_json_state(self, state):
        self.n_components_ = int(state["n_components_"])

    def embed(self, X):
        """Principal-component coordinates, for drift monitoring.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, d)
            Images (as in ``fit``) or tabular rows.

        Returns
        -------
        Z : ndarray of shape (n, n_components)
            ``(x - mean_) @ components_.T`` with ``n_components = n_components_``; feed them to
            :class:`~greyanom.drift.FeatureDriftMonitor`.
        """
        check_is_fitted(self)
        M = self._validated(X)
        return (M.reshape(len(M), -1).astype(np.float64) - self.mean_) @ self.components_.T


def _exact_svd(Mc):
    """Exact thin SVD of the centred data matrix; returns singular values and Vt.

    For wide matrices (images: d >> n) an economy QR of ``Mc.T`` comes first and the SVD is
    taken of the small ``n x n`` factor; this is exact (no ``d x d`` or Gram matrix is
    formed) and faster than LAPACK's direct SVD of the wide matrix (0.6-1.0 s against
    1.9 s for 213 images of 256 x 256 on a 2-core CPU).
    """
    n, d = Mc.shape
    if d > 2 * n:
        Q, R = linalg.qr(Mc.T, mode="economic", check_finite=False)
        U, S, Wt = linalg.svd(R.T, full_matrices=False, check_finite=False)
        Vt = (Q @ Wt.T).T
    else:
        U, S, Vt = linalg.svd(Mc, full_matrices=False, check_finite=False)
    U, Vt = svd_flip(U, Vt)
    return S, Vt
