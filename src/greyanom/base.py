"""The detector contract shared by every greyanom detector.

Sign conventions (the same for every detector):

* ``score(X)`` is the **anomaly score**: higher means more anomalous.
* ``score_samples(X) = -score(X)`` follows scikit-learn: higher means more normal.
* ``decision_function(X) = score_samples(X) - offset_``: negative for outliers.
* ``predict(X)`` returns ``+1`` for inliers and ``-1`` for outliers.

``offset_`` is set in ``fit`` from ``contamination``: a float gives the
``contamination`` percentile of the training ``score_samples`` (so that this fraction of
the training data is flagged), ``"auto"`` gives a robust three-sigma control limit,
``median + 3 * 1.4826 * MAD`` of the training anomaly scores.
"""

from __future__ import annotations

import dataclasses
import numbers
from abc import abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

__all__ = ["BaseDetector", "ImageExplanation", "threshold_from_scores"]


def threshold_from_scores(train_scores, contamination):
    """Anomaly-score threshold implied by ``contamination`` on training scores.

    Parameters
    ----------
    train_scores : array-like of shape (n_samples,)
        Anomaly scores (higher = more anomalous) of the training data.
    contamination : "auto" or float in (0, 0.5]
        ``"auto"``: ``median + 3 * 1.4826 * MAD`` (a robust three-sigma control limit).
        A float: the ``1 - contamination`` quantile of the training scores.

    Returns
    -------
    threshold : float
        Scores above the threshold are outliers.

    Examples
    --------
    >>> from greyanom.base import threshold_from_scores
    >>> threshold_from_scores([0.0, 1.0, 2.0, 3.0, 4.0], 0.2)
    np.float64(3.2)
    """
    s = np.asarray(train_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("train_scores is empty: cannot set a threshold.")
    if not np.isfinite(s).all():
        raise ValueError("train_scores contains NaN or infinite values.")
    if isinstance(contamination, str):
        if contamination != "auto":
            raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {contamination!r}.")
        med = np.median(s)
        mad = 1.4826 * np.median(np.abs(s - med))
        return med + 3.0 * mad
    return np.percentile(s, 100.0 * (1.0 - contamination))


class BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of every greyanom detector.

    Subclasses implement ``_fit(X)``, which validates ``X``, learns the model and
    returns the anomaly scores of the training data, and ``_score(X)``, which returns
    anomaly scores (higher = more anomalous) for new data. The base class derives
    ``offset_``, ``score_samples``, ``decision_function`` and ``predict`` from them.

    Attributes
    ----------
    offset_ : float
        ``decision_function(X) = score_samples(X) - offset_``; ``-offset_`` is the
        anomaly-score threshold above which ``predict`` returns ``-1``.
    threshold_ : float
        The anomaly-score threshold, ``-offset_``.
    """

    _parameter_constraints: dict = {
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
    }

    # -- to implement -------------------------------------------------------------
    @abstractmethod
    def _fit(self, X):
        """Learn the model; return the anomaly scores of the training data."""

    @abstractmethod
    def _score(self, X):
        """Return anomaly scores (higher = more anomalous) as a 1-D float array."""

    # -- the contract -------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the detector on normal data.

        Parameters
        ----------
        X : array-like
            Training data, all of it taken as normal.
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self : object
            The fitted detector.
        """
        self._validate_params()
        train_scores = self._fit(X)
        self._set_offset(train_scores)
        return self

    def _set_offset(self, train_scores):
        self.threshold_ = float(threshold_from_scores(train_scores, self.contamination))
        self.offset_ = -self.threshold_

    def score(self, X, y=None):
        """Anomaly score of each sample: higher means more anomalous.

        Parameters
        ----------
        X : array-like
            Samples to score.
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self._score(X)

    def score_samples(self, X):
        """Negative anomaly score (scikit-learn convention: higher = more normal).

        Parameters
        ----------
        X : array-like
            Samples to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            ``-score(X)``.
        """
        return -self.score(X)

    def decision_function(self, X):
        """Shifted ``score_samples``: negative values are outliers.

        Parameters
        ----------
        X : array-like
            Samples to score.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            ``score_samples(X) - offset_``.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Predict inliers (+1) and outliers (-1).

        Parameters
        ----------
        X : array-like
            Samples to classify.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            ``+1`` where ``decision_function(X) >= 0``, else ``-1``.
        """
        decision = np.asarray(self.decision_function(X))
        return np.where(decision >= 0, 1, -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


@dataclasses.dataclass(frozen=True)
class ImageExplanation:
    """Per-image explanation returned by the ``explain`` method of image detectors.

    Attributes
    ----------
    heatmap : ndarray of shape (n, H, W)
        Per-pixel anomaly map (squared reconstruction error, or a patch distance
        upsampled to the input size); ``score`` is reduced from it.
    score : ndarray of shape (n,)
        Anomaly scores, equal to ``detector.score(X)``.
    reconstruction : ndarray of shape (n, H, W) or None
        The model's reconstruction, for reconstruction-based detectors; ``None`` for
        patch-feature detectors, which do not reconstruct.
    """

    heatmap: np.ndarray
    score: np.ndarray
    reconstruction: np.ndarray | None = None

    def to_dict(self):
        """Return the fields as a ``dict`` of arrays."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __len__(self):
        return len(self.score)
