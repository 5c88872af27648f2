"""Shared machinery of the image detectors: input checks, batching, score, explain, persistence.

Every image detector fits, scores, saves, loads and pickles through this class; a subclass
supplies the model through a handful of hooks (see :class:`BaseImageDetector`). Saving writes
one safetensors file (arrays) with a JSON document (parameters and scalar state); loading
builds the detector from its parameters and hands the state back to the hooks, so nothing
is unpickled. Pickles go through the same conversion of torch objects (devices, modules)
and carry the greyanom version.
"""

from __future__ import annotations

import numbers
from abc import abstractmethod

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from greyanom._threads import threaded
from greyanom._validation import check_image_shape, check_images
from greyanom.base import BaseDetector, ImageExplanation
from greyanom.image._reduce import REDUCTION_CONSTRAINTS, reduce_error_maps

__all__ = ["BaseImageDetector", "INFERENCE_DTYPE_NAMES", "TORCH_CONSTRAINTS"]

#: Values of ``inference_dtype``: the dtype the network of a torch detector runs in.
INFERENCE_DTYPE_NAMES = ("float32", "bfloat16")
#: ``_parameter_constraints`` entries shared by the torch image detectors: one meaning of
#: ``batch_size`` (``"auto"``: 64 on CUDA, 32 on the CPU; see
#: :func:`greyanom.image._torch._post.resolve_batch_size`) and of ``inference_dtype``.
TORCH_CONSTRAINTS = {
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
    "inference_dtype": [StrOptions(set(INFERENCE_DTYPE_NAMES))],
}

#: Key listing the attributes that were torch devices when pickled.
_DEVICES_KEY = "_greyanom_devices"


class BaseImageDetector(BaseDetector):
    """Base class of detectors that turn each image into a per-pixel anomaly map.

    Subclasses implement:

    * ``_fit_images(images)``: learn from a validated ``(n, H, W)`` float32 batch; return
      the training heatmaps ``(n, H, W)`` or directly the training scores ``(n,)`` when
      fitting already computed them (the patch detectors reuse the training features and
      reduce on the device), or ``None`` to have them computed by ``_score_images``. No
      subclass overrides ``fit`` or ``_fit``.
    * ``_explain_images(images)``: a dict with at least ``"heatmap"`` (the per-pixel map
      that is reduced to the score) and optionally ``"reconstruction"``, ``"score"`` (when
      the detector reduced the heatmaps itself, e.g. on its device) and other fields.
    * optionally ``_score_images(images)``: the scores alone; by default the reduction of
      ``_explain_images``' heatmaps. The torch detectors override it to keep the maps on
      their device and copy back only the scores.
    * Persistence hooks, used by :meth:`save`, :meth:`load` and pickling:
      ``_state_arrays()`` (name -> ndarray of the learned arrays),
      ``_set_state_arrays(arrays)``, ``_json_state()`` (learned scalars as JSON values) and
      ``_set_json_state(state)``. ``image_shape_``, ``n_features_in_``, ``offset_``,
      ``threshold_`` and ``device_`` are handled here.

    Detectors that also take tables (``PCADetector``) set ``_accepts_rows = True`` and
    implement ``_fit_rows(X)`` and ``_explain_rows(X)`` for 2-D input.

    Scores are reduced from the heatmap by :func:`~greyanom.image.reduce_error_maps` with
    the detector's ``score_reduction``, ``smoothing_sigma`` and ``topk_fraction`` (or its
    device twin, :mod:`greyanom.image._torch._post`).

    Detectors with an ``inference_dtype`` parameter (the torch detectors) record in ``fit``
    the dtype their ``offset_`` was calibrated with as ``calibration_dtype_``; scoring with
    another ``inference_dtype`` (after ``set_params``) is a ``ValueError``, because the
    scores, and with them the false-alarm rate at ``offset_``, would move. Saved files
    record it; files saved before it existed load as ``"float32"``.
    """

    _parameter_constraints: dict = {**BaseDetector._parameter_constraints, **REDUCTION_CONSTRAINTS}
    _explanation_class = ImageExplanation
    _fitted_attrs = ("image_shape_",)
    #: whether 2-D input is a table of rows (``_fit_rows`` / ``_explain_rows``)
    _accepts_rows = False

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def _fit_images(self, images):
        """Learn from validated images of shape (n, H, W) in [0, 1]; return heatmaps or None."""

    @abstractmethod
    def _explain_images(self, images):
        """Return a dict of per-image arrays with at least ``"heatmap"``."""

    def _state_arrays(self):
        """Learned arrays to save (name -> ndarray)."""
        return {}

    def _set_state_arrays(self, arrays):
        """Restore the learned arrays written by ``_state_arrays``."""

    def _json_state(self):
        """Learned scalars, lists and dicts to save (JSON values)."""
        return {}

    def _set_json_state(self, state):
        """Restore the learned scalars written by ``_json_state``."""

    # -- fitting ------------------------------------------------------------------------
    def _fit(self, X):
        if self._accepts_rows and _ndim(X) == 2:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=True)
            self.image_shape_ = None
            self._fit_rows(X)
            return self._reduce(self._explain_rows(X)["heatmap"])
        images = check_images(X, name="X")
        if hasattr(self, "inference_dtype"):
            self.calibration_dtype_ = str(self.inference_dtype)
        self.image_shape_ = tuple(int(v) for v in images.shape[1:])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        out = self._fit_images(images)
        if out is None:
            return self._score_images(images)
        return out if np.ndim(out) == 1 else self._reduce(out)

    def _fit_rows(self, X):
        raise NotImplementedError

    def _explain_rows(self, X):
        raise NotImplementedError

    def _check_inference_dtype(self):
        """Refuse to score in another dtype than the one ``offset_`` was calibrated with."""
        if not hasattr(self, "inference_dtype"):
            return
        calibrated = getattr(self, "calibration_dtype_", "float32")  # pickles from before it existed
        if self.inference_dtype != calibrated:
            raise ValueError(
                f"this {type(self).__name__} was calibrated (offset_, threshold_) with "
                f"inference_dtype={calibrated!r} but now has inference_dtype={self.inference_dtype!r}: its "
                "scores, and with them the false-alarm rate at offset_, would move. Refit it with the new "
                f"inference_dtype, or set_params(inference_dtype={calibrated!r})."
            )

    def _validated(self, X):
        self._check_inference_dtype()
        if self.image_shape_ is None:
            return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
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

    def _explain_validated(self, X):
        if self.image_shape_ is None:
            return self._explain_rows(X)
        return self._explain_images(X)

    def _score_images(self, images):
        return self._reduce(self._explain_images(images)["heatmap"])

    def _score(self, X):
        images = self._validated(X)
        if self.image_shape_ is None:
            return self._reduce(self._explain_rows(images)["heatmap"])
        return self._score_images(images)

    @threaded
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
        fields = self._explain_validated(self._validated(X))
        if fields.get("score") is None:
            fields["score"] = self._reduce(fields["heatmap"])
        return self._explanation_class(**fields)

    def _map_batches(self, fn, images, batch_size, what="batches"):
        """Apply ``fn`` (returning a dict of arrays) to batches and concatenate.

        Work of more than one batch (feature extraction, long scoring) reports through
        :func:`greyanom._progress.progress_stage` as the stage ``"<Detector> <what>"``: a tqdm
        bar with ``verbose=True`` (or on a terminal when the detector has no ``verbose``), and
        one timed log line (at ``DEBUG`` inside a fit, whose own line times the whole fit).
        """
        starts = range(0, len(images), batch_size)
        if len(starts) > 1:
            from greyanom._progress import progress_stage

            with progress_stage(f"{type(self).__name__} {what}", total=len(images), unit="img",
                                verbose=getattr(self, "verbose", None)) as bar:
                parts = []
                for start in starts:
                    parts.append(fn(images[start : start + batch_size]))
                    bar.update(min(batch_size, len(images) - start))
        else:
            parts = [fn(images[start : start + batch_size]) for start in starts]
        return {
            key: None if parts[0][key] is None else np.concatenate([p[key] for p in parts]) for key in parts[0]
        }

    # -- persistence --------------------------------------------------------------------
    def _json_params(self):
        """``get_params()`` as JSON values (:func:`greyanom._persist.params_to_json`)."""
        from greyanom._persist import params_to_json

        return params_to_json(self)

    def _base_json_state(self):
        state = {
            "image_shape_": None if self.image_shape_ is None else [int(v) for v in self.image_shape_],
            "offset_": float(self.offset_),
            "threshold_": float(self.threshold_),
        }
        if hasattr(self, "n_features_in_"):
            state["n_features_in_"] = int(self.n_features_in_)
        if getattr(self, "device_", None) is not None:
            state["device_"] = str(self.device_)
        if hasattr(self, "calibration_dtype_"):
            state["calibration_dtype_"] = str(self.calibration_dtype_)
        return state

    def _set_base_json_state(self, state, device=None):
        shape = state.get("image_shape_")
        self.image_shape_ = None if shape is None else tuple(int(v) for v in shape)
        self.offset_ = float(state["offset_"])
        self.threshold_ = float(state["threshold_"])
        if "n_features_in_" in state:
            self.n_features_in_ = int(state["n_features_in_"])
        elif self.image_shape_ is not None:
            self.n_features_in_ = int(np.prod(self.image_shape_))
        if hasattr(self, "inference_dtype"):
            # files written before the dtype was recorded were calibrated in float32
            dtype = state.get("calibration_dtype_", "float32")
            if dtype not in INFERENCE_DTYPE_NAMES:
                raise ValueError(
                    f"the saved {type(self).__name__} has calibration_dtype_={dtype!r}; expected one of "
                    f"{list(INFERENCE_DTYPE_NAMES)}."
                )
            self.calibration_dtype_ = dtype
        if device is not None:
            from greyanom._optional import resolve_device

            self.device_ = resolve_device(device, type(self).__name__)
        elif "device_" in state:
            from greyanom._optional import device_or_cpu

            self.device_ = device_or_cpu(state["device_"], type(self).__name__)

    def _save_payload(self):
        """``(arrays, config)`` as :meth:`save` writes them (also hashed by ``_persist.model_hash``)."""
        check_is_fitted(self)
        config = {
            "class": type(self).__name__,
            "params": self._json_params(),
            "state": {**self._base_json_state(), **self._json_state()},
        }
        return self._state_arrays(), config

    def _set_saved_state(self, state, arrays, device=None):
        """Restore a model file's state (the hook of :meth:`BaseDetector.load <greyanom.base.BaseDetector.load>`)."""
        state = dict(state)
        self._set_base_json_state(state, device=device)
        self._set_json_state(state)
        self._set_state_arrays(arrays)

    # -- pickling -----------------------------------------------------------------------
    def _pickle_torch_state(self, state):
        """Replace torch objects other than devices (e.g. a module) in ``state``; in place."""

    def _restore_torch_state(self, state):
        """Rebuild what ``_pickle_torch_state`` replaced; ``self`` already holds ``state``."""

    def __getstate__(self):
        state = super().__getstate__()  # a copy, with the greyanom version (BaseDetector)
        devices = [name for name, value in state.items() if type(value).__module__ == "torch" and type(value).__name__ == "device"]
        for name in devices:
            state[name] = str(state[name])
        self._pickle_torch_state(state)
        state[_DEVICES_KEY] = devices
        return state

    def _restore_unpickled(self):
        # called by BaseDetector.__setstate__, which turns a failure into a ValueError naming both versions
        devices = self.__dict__.pop(_DEVICES_KEY, [])
        if devices:
            from greyanom._optional import device_or_cpu

            for attr in devices:
                setattr(self, attr, device_or_cpu(getattr(self, attr), type(self).__name__))
        self._restore_torch_state(self.__dict__)


def _ndim(X):
    return X.ndim if hasattr(X, "ndim") else np.asarray(X).ndim
