"""One served model: a detector, its decision policy, their versions and what belongs to them.

:class:`ServedModel` holds everything the inspection service keeps per model (the detector,
the policy, their versions and hashes, the heatmap's display range, the drift monitor and its
window). The service holds a reference to the production :class:`ServedModel` and swaps it
atomically when the registry promotes or rolls back; a request takes the reference once at
its start and finishes on that model.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import NamedTuple

import numpy as np

__all__ = ["ServedModel", "Explained", "file_version"]


def file_version(path, prefix=""):
    """A file's version string: a content hash of the file plus the greyanom version."""
    from greyanom import __version__
    from greyanom._persist import file_sha256

    return f"{prefix}sha256:{file_sha256(path)[:16]}+greyanom-{__version__}"


class Explained(NamedTuple):
    """One image's part of an ``explain`` call: what :meth:`InspectionService.answer` needs."""

    score: float
    heatmap: np.ndarray
    latent: np.ndarray | None
    forward_s: float  # wall time of the whole (batched) explain call


class ServedModel:
    """A fitted image detector and its decision policy, as the service serves them.

    Parameters
    ----------
    model : str, path-like or fitted image detector
        A model file written by a detector's ``save`` (loaded with :func:`greyanom.load`),
        or a fitted detector.
    policy : str, path-like or fitted DecisionPolicy
        A policy file or a fitted policy.
    model_version : str, optional
        Overrides the version (by default a content hash of the model file plus the
        greyanom version).
    registry_version : str, optional
        The registry's version of this model (``"1.2.0"``), None for a model file.
    allow_unbound_policy : bool, default=False
        Accept a policy fitted without ``model=``. A policy bound to another model is
        always refused.
    drift_window, drift_every, drift_alpha
        See :class:`~greyanom.serve.InspectionService`.

    Attributes
    ----------
    detector, policy
    model_version, policy_version, model_hash : str
    registry_version : str or None
    image_shape : tuple of int
    last_drift : DriftResult or None
    """

    def __init__(self, model, policy, *, model_version=None, registry_version=None, allow_unbound_policy=False,
                 drift_window=500, drift_every=50, drift_alpha=0.01):
        import greyanom
        from greyanom.decision import DecisionPolicy
        from greyanom.drift import ScoreDriftMonitor

        if drift_window < 2 or drift_every < 1 or drift_every > drift_window:
            raise ValueError(
                f"need drift_window >= 2 and 1 <= drift_every <= drift_window, got {drift_window}, {drift_every}."
            )
        if isinstance(model, (str, os.PathLike)):
            self.detector = greyanom.load(model)
            self.model_version = model_version or file_version(model)
        else:
            self.detector = model
            self.model_version = model_version or f"unsaved+greyanom-{greyanom.__version__}"
        if getattr(self.detector, "image_shape_", None) is None:
            raise TypeError(f"model must be a fitted image detector, got {type(self.detector).__name__}.")
        if isinstance(policy, (str, os.PathLike)):
            self.policy = DecisionPolicy.load(policy)
            self.policy_version = file_version(policy)
        else:
            self.policy = policy
            self.policy_version = f"unsaved+greyanom-{greyanom.__version__}"
        if not hasattr(self.policy, "review_threshold_"):
            raise TypeError("policy must be a fitted DecisionPolicy.")
        self.model_hash = self.policy.check_model(model, allow_unbound=allow_unbound_policy)
        self.policy_bound = getattr(self.policy, "model_hash_", None) is not None
        self.registry_version = registry_version
        self.image_shape = tuple(int(v) for v in self.detector.image_shape_)
        self.heat_range = self._display_range()
        self._drift = ScoreDriftMonitor(self.policy.calibration_scores_, alpha=drift_alpha, policy=self.policy)
        self._window = collections.deque(maxlen=int(drift_window))
        self._drift_every = int(drift_every)
        self._since_drift = 0
        self._lock = threading.Lock()
        self.last_drift = None

    @classmethod
    def from_registry(cls, version, **kwargs):
        """Load a :class:`~greyanom.registry.ModelVersion` (its policy must be bound to its model)."""
        return cls(version.model_path, version.policy_path, registry_version=version.version,
                   allow_unbound_policy=False, **kwargs)

    @property
    def label(self):
        """The registry version where there is one, else the model version."""
        return self.registry_version or self.model_version

    def own_threads(self, threads):
        """Run the detector's scoring on ``threads`` threads (its ``n_jobs``; see :mod:`greyanom._threads`)."""
        params = self.detector.get_params()
        self.detector.set_params(**{k: v for k, v in (("n_jobs", int(threads)), ("n_threads", None)) if k in params})

    # -- scoring ----------------------------------------------------------------------------
    def explain_images(self, images):
        """One ``explain`` of the decoded images; one :class:`Explained` per image."""
        t0 = time.perf_counter()
        explanation = self.detector.explain(images if isinstance(images, np.ndarray) else np.stack(images))
        forward_s = time.perf_counter() - t0
        latent = getattr(explanation, "latent_mean", None)
        return [
            Explained(float(explanation.score[i]), explanation.heatmap[i],
                      None if latent is None else latent[i], forward_s)
            for i in range(len(images))
        ]

    def decide(self, score):
        """``(decision, confidence)`` of one anomaly score under this model's policy."""
        if np.isnan(score):
            raise RuntimeError(f"the model {self.label} returned a NaN anomaly score.")
        scores = np.array([score])
        return str(self.policy.decide(scores)[0]), float(self.policy.confidence(scores)[0])

    # -- heatmaps ---------------------------------------------------------------------------
    def _display_range(self):
        """``(low, top)`` of the normal range in heatmap units, from training statistics."""
        if hasattr(self.detector, "normalize_heatmap"):
            # the detector's own scale (the VAE: the 99.5th percentile of held-out normal
            # pixel errors); errors start at 0
            top = float(np.asarray(self.detector.normalize_heatmap(np.ones((1, 1), np.float32))).ravel()[0])
            return 0.0, 1.0 / top if top > 0 else 1.0
        # patch and PCA maps have a baseline above 0 (a Mahalanobis or nearest-patch distance):
        # the range of the held-out normal scores the heatmaps are reduced to, from the lowest
        # calibration score to the REVIEW threshold
        low = float(np.min(self.policy.calibration_scores_))
        top = float(self.policy.review_threshold_)
        if not top > low:
            top = low + max(abs(low), 1.0)
        return low, top

    def normalize(self, heatmap):
        """The heatmap on the model's normal range (see :meth:`InspectionService.normalize`)."""
        low, top = self.heat_range
        return (np.asarray(heatmap, dtype=np.float32) - np.float32(low)) / np.float32(top - low)

    # -- drift ------------------------------------------------------------------------------
    def observe_drift(self, score):
        """Add a score to the drift window; the drift test's result when it ran, else None."""
        with self._lock:
            self._window.append(score)
            self._since_drift += 1
            if self._since_drift < self._drift_every or len(self._window) < self._drift_every:
                return None
            self._since_drift = 0
            scores = np.fromiter(self._window, dtype=np.float64)
        result = self._drift.test(scores)
        self.last_drift = result
        return result

    def describe(self):
        """This model's part of ``GET /api/v1/model``."""
        det, pol = self.detector, self.policy
        out = {
            "class": type(det).__name__,
            "model_version": self.model_version,
            "registry_version": self.registry_version,
            "model_hash": self.model_hash,
            "policy_bound": self.policy_bound,
            "policy_version": self.policy_version,
            "image_shape": list(self.image_shape),
            "thresholds": {
                "review": float(pol.review_threshold_),
                "reject": float(pol.reject_threshold_),
                "detector": float(det.threshold_),
            },
            "review_fpr": float(pol.review_fpr),
            "reject_fpr": float(pol.reject_fpr),
            "n_calibration": int(getattr(pol, "n_calibration_", len(pol.calibration_scores_))),
        }
        if getattr(det, "latent_dim", None) is not None:
            out["latent_dim"] = int(det.latent_dim)
        return out
