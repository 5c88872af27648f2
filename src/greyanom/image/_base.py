"""Shared machinery of the image detectors: input checks, batching, score and explain."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from sklearn.utils.validation import check_is_fitted

from greyanom._validation import check_image_shape, check_images
from greyanom.base import BaseDetector, ImageExplanation
from greyanom.image._reduce import REDUCTION_CONSTRAINTS, reduce_error_maps

__all__ = ["BaseImageDetector"]


class BaseImageDetector(BaseDetector):
    """Base class of detectors that turn each image into a per-pixel anomaly map.

    Subclasses implement ``_fit_images(images)`` (learn from a validated
    ``(n, H, W)`` float32 batch) and ``_explain_images(images)``, which returns a dict
    with at least ``"heatmap"`` (the per-pixel map that is reduced to the score) and
    optionally ``"reconstruction"`` and other named fields. Scores are reduced from the
    heatmap by :func:`~greyanom.image.reduce_error_maps` with the detector's
    ``score_reduction``, ``smoothing_sigma`` and ``topk_fraction``.
    """

    _parameter_constraints: dict = {**BaseDetector._parameter_constraints, **REDUCTION_CONSTRAINTS}
    _explanation_class = ImageExplanation

    @abstractmethod
    def _fit_images(self, images):
        """Learn from validated images of shape (n, H, W) in [0, 1]."""

    @abstractmethod
    def _explain_images(self, images):
        """Return a dict of per-image arrays with at least ``"heatmap"``."""

    def _fit(self, X):
        images = check_images(X, name="X")
        self.image_shape_ = tuple(int(v) for v in images.shape[1:])
        self._fit_images(images)
        return self._reduce(self._explain_images(images)["heatmap"])

    def _validated(self, X):
        images = check_images(X, name="X")
        check_image_shape(images, self.image_shape_)
        return images

    def _reduce(self, heatmaps):
        return reduce_error_maps(
            heatmaps,
            self.score_reduction,
            smoothing_sigma=self.smoothing_sigma,
            topk_fraction=self.topk_fraction,
        )

    def _score(self, X):
        return self._reduce(self._explain_images(self._validated(X))["heatmap"])

    def explain(self, X):
        """Explain the anomaly scores of images.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8).

        Returns
        -------
        explanation : ImageExplanation
            Named fields ``heatmap`` (n, H, W), ``score`` (n,) equal to ``score(X)``, and
            ``reconstruction`` (n, H, W) for reconstruction-based detectors (``None``
            otherwise); some detectors add fields (the VAE adds ``latent_mean`` and
            ``latent_logvar``).
        """
        check_is_fitted(self)
        fields = self._explain_images(self._validated(X))
        fields["score"] = self._reduce(fields["heatmap"])
        return self._explanation_class(**fields)

    @staticmethod
    def _map_batches(fn, images, batch_size):
        """Apply ``fn`` (returning a dict of arrays) to batches and concatenate."""
        parts = [fn(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
