"""Shared machinery of the patch-feature detectors (PaDiM, PatchCore).

:class:`BasePatchDetector` turns images into EfficientNet-Lite0 patch features, asks the subclass
for one anomaly value per feature cell, upsamples that map to the input size and smooths it
(the heatmap), and reduces it to a score with the shared image reductions. It also holds the
device handling; saving, loading and pickling are :class:`BaseImageDetector`'s.
"""

from __future__ import annotations

import numbers
from abc import abstractmethod

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from greyanom._optional import device_or_cpu, resolve_device, torch_threads
from greyanom.image import _backbone
from greyanom.image._base import BaseImageDetector
from greyanom.image._reduce import check_sigma, smooth_maps

__all__ = ["BasePatchDetector"]

_MIN_SIZE = 32


class BasePatchDetector(BaseImageDetector):
    """Base class of detectors that score pretrained patch features.

    Subclasses implement ``_fit_features(features, random_state)`` (learn from the
    ``(n, C, h, w)`` training features), ``_patch_scores(features)`` (return ``(n, h, w)``
    anomaly values), and ``_state_arrays()`` / ``_set_state_arrays(arrays)`` for persistence
    (saving, loading and pickling are :class:`BaseImageDetector`'s).
    """

    _fitted_attrs = ("feature_stages_", "device_", "feature_shape_")
    _parameter_constraints: dict = {
        **BaseImageDetector._parameter_constraints,
        "feature_stages": ["array-like"],
        "feature_stride": [Interval(numbers.Integral, 1, None, closed="left")],
        "patch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "normalization": [StrOptions(set(_backbone.NORMALIZATIONS))],
        "heatmap_sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_jobs": [Interval(numbers.Integral, None, -1, closed="right"), Interval(numbers.Integral, 1, None, closed="left"), None],
        "device": "no_validation",  # resolve_device checks it in fit
        "random_state": ["random_state"],
    }
    # -- to implement -----------------------------------------------------------------
    @abstractmethod
    def _fit_features(self, features, random_state):
        """Learn from training features of shape (n, C, h, w)."""

    @abstractmethod
    def _patch_scores(self, features):
        """Anomaly value per feature cell, shape (n, h, w), float32."""

    @abstractmethod
    def _state_arrays(self):
        """Learned arrays to save (name -> ndarray)."""

    @abstractmethod
    def _set_state_arrays(self, arrays):
        """Restore learned arrays from ``_state_arrays`` output."""

    # -- features ----------------------------------------------------------------------
    def _features(self, images):
        return _backbone.extract_patch_features(
            images,
            stages=self.feature_stages_,
            feature_stride=self.feature_stride,
            patch_size=self.patch_size,
            normalization=self.normalization,
            device=self.device_,
            batch_size=self.batch_size,
        )

    def _heldout_scores(self, X, train_scores):
        """Cross-fitted scores on the features extracted in ``_fit``: no second feature extraction.

        The training features are split into ``_heldout_cv`` shuffled folds (seeded from
        ``random_state``); for each fold the patch model (PaDiM's Gaussians, PatchCore's
        coreset bank) is refitted on the other folds' features and scores the fold. The
        backbone is frozen, so this equals cross-fitting the whole detector. Cost: PaDiM
        ``_heldout_cv`` extra covariance fits (small next to the feature extraction),
        PatchCore ``_heldout_cv`` extra greedy coresets on 80 % of the bank (about as long as
        the fit's own coreset each). Fewer than 3 images: in-sample scores with a warning.
        """
        from sklearn.base import clone
        from sklearn.model_selection import KFold
        from sklearn.utils import check_random_state

        features = self.__dict__.pop("_heldout_features")
        n = len(features)
        if n < 3:
            return self._insample_fallback(train_scores, f"{n} image(s)")
        cv = min(self._heldout_cv, n)
        out = np.empty(n)
        seed = 0 if self.random_state is None else self.random_state  # deterministic folds, as in the base
        folds = KFold(cv, shuffle=True, random_state=seed).split(np.zeros(n))
        for train, test in folds:
            model = clone(self)
            for name in ("image_shape_", "feature_stages_", "device_", "feature_shape_", "n_features_in_"):
                setattr(model, name, getattr(self, name))
            with torch_threads(self.n_jobs):
                model._fit_features(features[train], check_random_state(self.random_state))
                heat = model._map_batches(model._heatmap_batch, features[test], self.batch_size)["heatmap"]
            out[test] = model._reduce(heat)
        return out

    def _fit_images(self, images):
        """Learn from validated images; return their heatmaps (reusing the training features)."""
        from sklearn.utils import check_random_state

        h, w = images.shape[1:]
        if h < _MIN_SIZE or w < _MIN_SIZE:
            raise ValueError(
                f"X has images of size {(h, w)}; the patch detectors need images of at least "
                f"{_MIN_SIZE}x{_MIN_SIZE} pixels."
            )
        check_sigma(self.smoothing_sigma, (h, w))
        check_sigma(self.heatmap_sigma, (h, w), name="heatmap_sigma")
        if self.feature_stride > min(h, w) // 2:
            raise ValueError(
                f"feature_stride={self.feature_stride!r} leaves fewer than 2 feature cells across images of "
                f"size {(h, w)}: expected at most {min(h, w) // 2}."
            )
        stage = min(_backbone.check_stages(self.feature_stages))
        finest = -(-min(h, w) // _backbone.STAGE_STRIDES[stage - 1])
        if self.patch_size > finest:
            raise ValueError(
                f"patch_size={self.patch_size!r} is wider than the finest tapped feature map (stage {stage} of "
                f"feature_stages={self.feature_stages!r}: {finest} cells across images of size {(h, w)}): "
                "every patch would average the whole image."
            )
        self.feature_stages_ = _backbone.check_stages(self.feature_stages)
        self.device_ = resolve_device(self.device, type(self).__name__)
        with torch_threads(self.n_jobs):
            features = self._features(images)
            self.feature_shape_ = tuple(int(v) for v in features.shape[1:])
            self._fit_features(features, check_random_state(self.random_state))
            self._heldout_features = features  # taken (and dropped) by _heldout_scores
            return self._map_batches(self._heatmap_batch, features, self.batch_size)["heatmap"]

    # -- heatmaps ----------------------------------------------------------------------
    def _heatmaps_from_patch_scores(self, patch_scores):
        maps = _backbone.upsample_maps(patch_scores, self.image_shape_)
        return smooth_maps(maps, self.heatmap_sigma).astype(np.float32, copy=False)

    def _heatmap_batch(self, features):
        return {"heatmap": self._heatmaps_from_patch_scores(self._patch_scores(features))}

    def _explain_images(self, images):
        with torch_threads(self.n_jobs):
            return self._map_batches(lambda b: self._heatmap_batch(self._features(b)), images, self.batch_size)

    def patch_scores(self, X):
        """Anomaly value of each feature cell, before upsampling and smoothing.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8).

        Returns
        -------
        patch_scores : ndarray of shape (n, h, w)
            ``h = ceil(H / feature_stride)``, ``w = ceil(W / feature_stride)``.
        """
        check_is_fitted(self)
        images = self._validated(X)
        with torch_threads(self.n_jobs):
            out = self._map_batches(lambda b: {"p": self._patch_scores(self._features(b))}, images, self.batch_size)
        return out["p"]

    def embed(self, X):
        """Pooled patch features of images, for drift monitoring.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8).

        Returns
        -------
        features : ndarray of shape (n, C)
            The backbone's patch features (all ``feature_stages`` channels) averaged over the
            feature grid: one backbone pass per image, no patch model. Feed them to
            :class:`~greyanom.drift.FeatureDriftMonitor`.
        """
        check_is_fitted(self)
        images = self._validated(X)
        with torch_threads(self.n_jobs):
            out = self._map_batches(lambda b: {"f": self._features(b).mean(axis=(2, 3))}, images, self.batch_size)
        return out["f"]

    # -- persistence hooks -------------------------------------------------------------
    def _json_state(self):
        return {"feature_shape_": [int(v) for v in self.feature_shape_]}

    def _set_json_state(self, state):
        self.feature_shape_ = tuple(int(v) for v in state["feature_shape_"])
        self.feature_stages_ = _backbone.check_stages(self.feature_stages)
        if not hasattr(self, "device_"):
            self.device_ = device_or_cpu(self.device, type(self).__name__)
