"""Shared machinery of the patch-feature detectors (PaDiM, PatchCore).

:class:`BasePatchDetector` turns images into EfficientNet-Lite0 patch features, asks the subclass
for one anomaly value per feature cell, upsamples that map to the input size and smooths it
(the heatmap), and reduces it to a score with the shared image reductions. The whole path runs
on the detector's device (:mod:`greyanom.image._torch._post`): ``score`` copies back only the
scores, ``explain`` the heatmaps. It also holds the device handling; saving, loading and
pickling are :class:`BaseImageDetector`'s.
"""

from __future__ import annotations

import numbers
from abc import abstractmethod

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from greyanom._optional import device_or_cpu, resolve_device, torch_threads
from greyanom.image import _backbone
from greyanom.image._base import TORCH_CONSTRAINTS, BaseImageDetector
from greyanom.image._reduce import check_sigma

__all__ = ["BasePatchDetector"]

_MIN_SIZE = 32


class BasePatchDetector(BaseImageDetector):
    """Base class of detectors that score pretrained patch features.

    Subclasses implement ``_fit_features(features, random_state)`` (learn from the
    ``(n, C, h, w)`` training features, a host array), ``_patch_map(features, arrays)``
    (``(n, h, w)`` anomaly values of a feature tensor on the device, given the learned
    arrays named in ``_device_arrays`` as tensors there), and ``_state_arrays()`` /
    ``_set_state_arrays(arrays)`` for persistence (saving, loading and pickling are
    :class:`BaseImageDetector`'s).
    """

    _fitted_attrs = ("feature_stages_", "device_", "feature_shape_")
    _parameter_constraints: dict = {
        **BaseImageDetector._parameter_constraints,
        **TORCH_CONSTRAINTS,
        "feature_stages": ["array-like"],
        "feature_stride": [Interval(numbers.Integral, 1, None, closed="left")],
        "patch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "normalization": [StrOptions(set(_backbone.NORMALIZATIONS))],
        "heatmap_sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "n_jobs": [Interval(numbers.Integral, None, -1, closed="right"), Interval(numbers.Integral, 1, None, closed="left"), None],
        "device": "no_validation",  # resolve_device checks it in fit
        "random_state": ["random_state"],
    }
    #: names of the learned arrays that ``_patch_map`` needs on the device
    _device_arrays: tuple = ()

    # -- to implement -----------------------------------------------------------------
    @abstractmethod
    def _fit_features(self, features, random_state):
        """Learn from training features of shape (n, C, h, w) (a host array)."""

    @abstractmethod
    def _patch_map(self, features, arrays):
        """Anomaly value per feature cell: tensor (n, C, h, w) -> (n, h, w), float32, on the device."""

    @abstractmethod
    def _state_arrays(self):
        """Learned arrays to save (name -> ndarray)."""

    @abstractmethod
    def _set_state_arrays(self, arrays):
        """Restore learned arrays from ``_state_arrays`` output."""

    # -- the device --------------------------------------------------------------------
    def _batch(self):
        from greyanom.image._torch._post import resolve_batch_size

        return resolve_batch_size(self.batch_size, self.device_)

    def _on_device(self):
        """The learned arrays of ``_device_arrays`` as tensors on ``device_``, copied once and cached.

        The cache holds the host arrays it copied and is rebuilt when one of them (or the
        device) changes; pickles and saved files never contain it.
        """
        import torch

        host = {name: getattr(self, name) for name in self._device_arrays}
        cached = self.__dict__.get("_device_cache")
        if (
            cached is None
            or cached[0] != str(self.device_)
            or any(cached[1][name] is not host[name] for name in host)
        ):
            # a loaded model's arrays may be read-only: copy those (torch warns on them)
            tensors = {name: torch.as_tensor(_writable(a)).to(self.device_) for name, a in host.items()}
            cached = self._device_cache = (str(self.device_), host, tensors)
        return cached[2]

    def _pickle_torch_state(self, state):
        state.pop("_device_cache", None)

    # -- features ----------------------------------------------------------------------
    def _features_on_device(self, images):
        """Patch features ``(n, C, h, w)`` of a host batch, left on the device (float32)."""
        import torch

        from greyanom.image._torch._post import to_device

        step = 1 if self.device_.type == "cpu" else len(images)  # one image per pass measured fastest on a CPU
        parts = [
            _backbone.patch_features(
                to_device(images[start : start + step], self.device_),
                stages=self.feature_stages_,
                feature_stride=self.feature_stride,
                patch_size=self.patch_size,
                normalization=self.normalization,
                inference_dtype=self.inference_dtype,
            )
            for start in range(0, len(images), step)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _features(self, images):
        """Patch features of host images as a host array ``(n, C, h, w)``, float32."""
        from greyanom.image._torch._post import to_host

        return self._map_batches(lambda b: {"f": to_host(self._features_on_device(b))}, images, self._batch(),
                                 what="features")["f"]

    # -- maps and scores on the device -------------------------------------------------
    def _heatmaps(self, features):
        """Heatmaps ``(n, H, W)`` of a feature tensor: patch map, upsampled, blurred; on the device."""
        return self._heat_from_patch_map(self._patch_map(features, self._on_device()))

    def _heat_from_patch_map(self, patch_map):
        """Heatmaps ``(n, H, W)`` of patch maps ``(n, h, w)``: upsampled and blurred, on the device."""
        from greyanom.image._torch import _post

        heat = _post.upsample_maps(patch_map, list(self.image_shape_))
        if self.heatmap_sigma > 0:
            heat = _post.gaussian_blur(heat, _post.gaussian_kernel(float(self.heatmap_sigma)))
        return heat

    def _scores(self, heat):
        """Scores ``(n,)`` of heatmaps on the device: the detector's blur and reduction."""
        from greyanom.image._torch import _post

        if self.smoothing_sigma > 0:
            heat = _post.gaussian_blur(heat, _post.gaussian_kernel(float(self.smoothing_sigma)))
        h, w = self.image_shape_
        return _post.reduce_maps(heat, self.score_reduction, _post.topk_count(float(self.topk_fraction), h * w))

    def _check_reduction(self):
        check_sigma(self.smoothing_sigma, self.image_shape_)
        check_sigma(self.heatmap_sigma, self.image_shape_, name="heatmap_sigma")

    def _run(self, fn, arrays):
        """``fn`` on batches of host ``arrays`` under the detector's threads and inference mode."""
        import torch

        with torch_threads(self.n_jobs), torch.inference_mode():
            return self._map_batches(fn, arrays, self._batch())

    def _scores_from_features(self, features):
        """Scores of host features ``(n, C, h, w)``: to the device batch by batch, only scores back."""
        from greyanom.image._torch._post import to_device, to_host

        self._check_reduction()
        out = self._run(lambda b: {"s": to_host(self._scores(self._heatmaps(to_device(b, self.device_))))}, features)
        return _finite_scores(out["s"])

    def _scores_from_patch_maps(self, maps):
        """Scores of host patch maps ``(n, h, w)``: to the device batch by batch, only scores back."""
        from greyanom.image._torch._post import to_device, to_host

        self._check_reduction()
        out = self._run(lambda b: {"s": to_host(self._scores(self._heat_from_patch_map(to_device(b, self.device_))))},
                        maps)
        return _finite_scores(out["s"])

    def _score_images(self, images):
        from greyanom.image._torch._post import to_host

        self._check_reduction()
        out = self._run(lambda b: {"s": to_host(self._scores(self._heatmaps(self._features_on_device(b))))}, images)
        return _finite_scores(out["s"])

    def _explain_images(self, images):
        from greyanom.image._torch._post import to_host

        self._check_reduction()

        def batch(b):
            heat = self._heatmaps(self._features_on_device(b))
            return {"heatmap": to_host(heat), "score": to_host(self._scores(heat))}

        out = self._run(batch, images)
        out["score"] = _finite_scores(out["score"])
        return out

    # -- fitting -----------------------------------------------------------------------
    def _heldout_scores(self, X, train_scores):
        """Held-out scores on the features extracted in ``_fit``: no second feature extraction.

        The training features are split into the folds of the default cross-fitting
        (:func:`greyanom._crossfit.make_folds`, ``_heldout_cv`` shuffled folds seeded from
        ``random_state``, or 0); ``_heldout_patch_maps`` gives each image's patch map from a
        model of the other folds (PaDiM: exact, from downdated statistics; PatchCore: the
        memory bank without the fold's patches, an approximation), and the maps go through
        the detector's upsampling, blur and reduction. Fewer than 3 images: in-sample scores
        with a warning.
        """
        from greyanom._crossfit import make_folds

        features = self.__dict__.pop("_heldout_state")
        n = len(features)
        if n < 3:
            return self._insample_fallback(train_scores, f"{n} image(s)")
        seed = 0 if self.random_state is None else self.random_state  # deterministic folds, as in the base
        folds = make_folds(n, min(self._heldout_cv, n), seed)
        with torch_threads(self.n_jobs):
            maps = self._heldout_patch_maps(features, folds)
        return self._scores_from_patch_maps(maps)

    @abstractmethod
    def _heldout_patch_maps(self, features, folds):
        """Patch maps ``(n, h, w)`` (host, float32) of the training features, each from the other folds."""

    def _fit_images(self, images):
        """Learn from validated images; return their scores (reusing the training features)."""
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
        self._heldout_state = features  # taken (and dropped) by _heldout_scores
        return self._scores_from_features(features)

    # -- other outputs -----------------------------------------------------------------
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
        from greyanom.image._torch._post import to_host

        check_is_fitted(self)
        images = self._validated(X)
        out = self._run(lambda b: {"p": to_host(self._patch_map(self._features_on_device(b), self._on_device()))}, images)
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
        from greyanom.image._torch._post import to_host

        check_is_fitted(self)
        images = self._validated(X)
        out = self._run(lambda b: {"f": to_host(self._features_on_device(b).mean(dim=(2, 3)))}, images)
        return out["f"]

    # -- persistence hooks -------------------------------------------------------------
    def _json_state(self):
        return {"feature_shape_": [int(v) for v in self.feature_shape_]}

    def _set_json_state(self, state):
        self.feature_shape_ = tuple(int(v) for v in state["feature_shape_"])
        self.feature_stages_ = _backbone.check_stages(self.feature_stages)
        if not hasattr(self, "device_"):
            self.device_ = device_or_cpu(self.device, type(self).__name__)


def _finite_scores(scores):
    """Scores as float64; a non-finite score (a degenerate model) is an error, never a silent NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(
            f"{int((~np.isfinite(scores)).sum())} of {scores.size} scores are not finite: the fitted patch "
            "model is degenerate (e.g. PaDiM with reg=0 and fewer images than channels)."
        )
    return scores


def _writable(a):
    """``a`` as an array torch can share without a warning (a read-only one is copied)."""
    a = np.asarray(a)
    return a if a.flags.writeable else a.copy()
