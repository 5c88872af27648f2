"""The detector contract shared by every greyanom detector.

Sign conventions (the same for every detector):

* ``score(X)`` is the **anomaly score**: higher means more anomalous.
* ``score_samples(X) = -score(X)`` follows scikit-learn: higher means more normal.
* ``decision_function(X) = score_samples(X) - offset_``: negative for outliers.
* ``predict(X)`` returns ``+1`` for inliers and ``-1`` for outliers.

``offset_`` is set in ``fit`` from ``contamination`` applied to **held-out** anomaly
scores of the training data, scores from models that did not fit on the items they score
(:meth:`BaseDetector._heldout_scores`): a float gives the ``1 - contamination`` quantile, so
that about this fraction of *fresh* normal data is flagged, ``"auto"`` gives a robust
three-sigma control limit, ``median + 3 * 1.4826 * MAD``. In-sample training scores are
optimistic (a model fits its own training data better than new data), so a threshold set on
them flags far more than ``contamination`` of new normal data; they stay available as
``decision_scores_``.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import warnings
from abc import abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from greyanom._threads import threaded

__all__ = ["BaseDetector", "ImageExplanation", "cross_fit_scores", "threshold_from_scores"]

logger = logging.getLogger(__name__)

#: Values of every detector's ``calibration`` parameter: which training scores set ``offset_``.
CALIBRATIONS = ("heldout", "in_sample")


#: Key of the greyanom version in a pickled detector's state.
_VERSION_KEY = "_greyanom_version"


def _greyanom_version():
    from greyanom import __version__

    return __version__


def _made_by(version):
    return "an unknown greyanom version" if version is None else f"greyanom {version}"


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


def _fit_clone(detector, X):
    """An unfitted clone of ``detector`` fitted on ``X``.

    A greyanom detector is fitted through ``_fit`` only: the clone needs its model, not its
    own held-out threshold, and calling ``fit`` would nest cross-fitting inside cross-fitting.
    """
    model = clone(detector)
    if isinstance(model, BaseDetector):
        model._validate_params()
        model._fit(X)
    else:
        model.fit(X)
    return model


def _score_clone(model, X):
    if isinstance(model, BaseDetector):
        return np.asarray(model._score(X), dtype=np.float64)
    return np.asarray(model.score(X), dtype=np.float64)


def cross_fit_scores(detector, X, *, cv=5, random_state=None):
    """Anomaly scores of every item of ``X`` from clones that did not fit on it.

    ``X`` is split into ``cv`` shuffled folds over its first axis (rows, or images); a clone of
    ``detector`` is fitted on all folds but one and scores the one left out
    (:func:`greyanom._crossfit.cross_fit`, the loop every held-out score in greyanom uses).

    Parameters
    ----------
    detector : BaseDetector
        Its parameters are used; it is not fitted.
    X : array-like of shape (n, ...)
        Normal data, indexable along the first axis (ndarray, list, pandas DataFrame).
    cv : int >= 2 or a scikit-learn splitter, default=5
        Number of folds, or a splitter with ``split``.
    random_state : int, RandomState instance or None, default=None
        Seeds the fold assignment.

    Returns
    -------
    scores : ndarray of shape (n,)
        Held-out anomaly scores (higher = more anomalous), in the order of ``X``.

    See Also
    --------
    greyanom.decision.calibrate : The public entry point, also for wafer scores.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import PCADetector
    >>> from greyanom.base import cross_fit_scores
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> cross_fit_scores(PCADetector(n_components=2), X, cv=5, random_state=0).shape
    (50,)
    """
    from sklearn.utils import _safe_indexing
    from sklearn.utils.validation import _num_samples

    from greyanom._crossfit import cross_fit

    def fit_score(train, test):
        return _score_clone(_fit_clone(detector, _safe_indexing(X, train)), _safe_indexing(X, test))

    n = _num_samples(X)
    out = np.full(n, np.nan)
    for test, scores in cross_fit(fit_score, n, cv, random_state):
        out[test] = scores
    return out


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
    decision_scores_ : ndarray of shape (n_samples,)
        In-sample anomaly scores of the training data (from the model fitted on them). They
        are optimistic; ``offset_`` is set on held-out scores instead (``_heldout_scores``).
    heldout_scores_ : ndarray
        The held-out anomaly scores of normal training items that set ``offset_``; they are
        calibration scores for :class:`greyanom.decision.DecisionPolicy` at no extra cost
        (cross-fitted folds, or the VAE's validation images). With
        ``calibration="in_sample"`` they are the in-sample scores ``decision_scores_`` that
        set ``offset_`` instead (optimistic: a policy fitted on them flags more than its
        target rate of new normal data).

    Notes
    -----
    Every detector takes ``calibration="heldout"`` (the default) or ``"in_sample"``. The
    default ``_heldout_scores`` refits a clone per fold; greyanom's detectors override it with
    updates of the fitted model that cost far less (exact for PCA and PaDiM; see each
    detector's ``calibration`` entry and the decisions guide for the costs measured).
    """

    _parameter_constraints: dict = {
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
        "calibration": [StrOptions(set(CALIBRATIONS))],
    }

    # -- to implement -------------------------------------------------------------
    @abstractmethod
    def _fit(self, X):
        """Learn the model; return the anomaly scores of the training data."""

    @abstractmethod
    def _score(self, X):
        """Return anomaly scores (higher = more anomalous) as a 1-D float array."""

    # -- the contract -------------------------------------------------------------
    @threaded  # every thread pool sized from n_jobs for the whole fit (greyanom._threads)
    def fit(self, X, y=None):
        """Fit the detector on normal data and set its threshold on held-out scores.

        ``offset_`` comes from ``contamination`` applied to scores of training items by
        models that did not fit on them (see ``_heldout_scores``), so that ``predict`` flags
        about ``contamination`` of fresh normal data; ``decision_scores_`` keeps the
        in-sample scores. With ``calibration="in_sample"`` the in-sample scores set
        ``offset_`` and no held-out scores are computed.

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
        from greyanom._progress import progress_stage

        self._validate_params()
        # one line timing the whole fit, model and calibration; inner stages nest under it
        with progress_stage(f"{type(self).__name__} fit", unit=None, verbose=False) as stage:
            stage.phase("model")
            train_scores = self._fit(X)
            self.decision_scores_ = np.asarray(train_scores, dtype=np.float64)
            # a subclass without the parameter (one written outside greyanom) calibrates held out
            if getattr(self, "calibration", "heldout") == "in_sample":
                self._discard_heldout_state()
                self.heldout_scores_ = self.decision_scores_.copy()
            else:
                stage.phase("held-out calibration")
                self.heldout_scores_ = np.asarray(self._heldout_scores(X, train_scores), dtype=np.float64)
            self._set_offset(self.heldout_scores_)
        return self

    #: folds of the default cross-fitting in :meth:`_heldout_scores`
    _heldout_cv = 5

    def _heldout_scores(self, X, train_scores):
        """Anomaly scores of normal training items from models that did not fit on them.

        The default cross-fits: ``X`` is split into ``_heldout_cv`` shuffled folds (seeded
        from ``random_state``; with ``random_state=None`` from a fixed seed, so that the
        threshold does not change from fit to fit), a clone is fitted on all folds but one and scores the one left
        out. That costs ``_heldout_cv`` extra fits on 80 % of the data; subclasses where that is
        costly override this (the VAE reuses its validation split, the patch detectors
        cross-fit on the features already extracted, the trace detectors fold whole wafers).
        With fewer than ``_heldout_cv`` items the folds are leave-one-out; with fewer than 3
        items the in-sample ``train_scores`` are used with a warning ("too few").
        """
        from sklearn.utils.validation import _num_samples

        cv = self._heldout_cv
        # fold assignment is deterministic by default, so that fitting twice gives one threshold
        random_state = getattr(self, "random_state", None)
        random_state = 0 if random_state is None else random_state
        if not hasattr(X, "iloc"):
            X = np.asarray(X)  # lists and array-likes without row indexing
        n = _num_samples(X)
        if n < 3:
            return self._insample_fallback(train_scores, f"{n} item(s)")
        # the clones repeat the warnings the fit just gave (e.g. n_components capped): silence them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = cross_fit_scores(self, X, cv=min(cv, n), random_state=random_state)
        scores = np.asarray(scores, dtype=np.float64)
        return scores[~np.isnan(scores)]

    def _discard_heldout_state(self):
        """Drop what ``_fit`` kept for ``_heldout_scores`` when it is not called (``"in_sample"``)."""
        self.__dict__.pop("_heldout_state", None)

    def _insample_fallback(self, train_scores, why):
        warnings.warn(
            f"{type(self).__name__}: {why}: too few for held-out scores; the threshold is set on the "
            "in-sample training scores, which flag more than `contamination` of new normal data.",
            UserWarning,
            stacklevel=4,
        )
        return train_scores

    def _set_offset(self, train_scores):
        self.threshold_ = float(threshold_from_scores(train_scores, self.contamination))
        self.offset_ = -self.threshold_

    @threaded
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

    # -- files and pickles ------------------------------------------------------------
    #: Learned attributes every fitted instance holds, besides those its base classes list
    #: (and a trace detector's ``_saved_attrs``); see :meth:`_required_attrs`.
    _fitted_attrs: tuple = ("offset_", "threshold_")

    def _required_attrs(self):
        """The learned attributes this fitted detector needs, in MRO order from the base.

        The union of ``_fitted_attrs`` and ``_saved_attrs`` over the class and its bases. An
        unpickled detector that is fitted (holds a learned attribute) but lacks one of these
        is refused in ``__setstate__``, instead of failing later with an ``AttributeError``.
        """
        names = []
        for klass in reversed(type(self).__mro__):
            for key in ("_fitted_attrs", "_saved_attrs"):
                names.extend(vars(klass).get(key, ()))
        return tuple(dict.fromkeys(names))

    def save(self, path):
        """Save the fitted detector: arrays in safetensors, parameters and state in JSON (no pickle).

        The file also records the class, the greyanom version and a SHA-256 of its payload;
        it is written to a temporary file and renamed into place.

        Parameters
        ----------
        path : str or path-like
            File to write (conventionally ``*.safetensors``); its folder must exist.

        Returns
        -------
        path : pathlib.Path

        See Also
        --------
        load : Read the file back; nothing in it is executed.
        greyanom.load : Load any saved detector or decision policy.
        """
        from greyanom._persist import save_arrays

        return save_arrays(path, *self._save_payload())

    def _save_payload(self):
        """``(arrays, config)`` as :meth:`save` writes them (also hashed by ``_persist.model_hash``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved to a file.")

    @classmethod
    def load(cls, path, *, device=None):
        """Load a detector written by its ``save``; nothing in the file is executed.

        Parameters
        ----------
        path : str or path-like
            A file written by ``save``.
        device : str or torch.device, optional
            For the detectors with a ``device`` parameter (the torch image detectors): the
            device to load onto (e.g. ``"cpu"`` for a model fitted on a GPU); by default the
            device it was fitted on, or the CPU with a warning when that was CUDA and CUDA is
            not available here. The other detectors run on the CPU and take only ``None``.

        Returns
        -------
        detector : instance of this class
            Fitted; it scores, predicts and explains as the saved one did.

        Raises
        ------
        ValueError
            If the file is not a saved detector of this class (a pickle, a foreign
            safetensors file, another detector), is damaged or comes from a newer format, or
            if ``device`` is given to a detector without a ``device`` parameter.

        See Also
        --------
        greyanom.load : Load any saved detector or decision policy; the class comes from the file.
        """
        from greyanom._persist import load_detector

        return load_detector(cls, path, device=device)

    @classmethod
    def _params_from_json(cls, params):
        """Constructor keyword arguments from saved ``params`` (:func:`greyanom._persist.params_from_json`)."""
        from greyanom._persist import params_from_json

        return params_from_json(cls, params)

    def _set_saved_state(self, state, arrays, device=None):
        """Restore the learned state read from a model file (the counterpart of ``save``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded from a file.")

    def _restore_unpickled(self):
        """Rebuild what ``__getstate__`` converted (torch devices, modules); ``self`` holds the state."""

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns the live __dict__
        state[_VERSION_KEY] = _greyanom_version()
        return state

    def __setstate__(self, state):
        """Restore a pickled detector; refuse one without the learned state this version needs.

        A fitted detector (one that holds a learned attribute) must hold every attribute of
        :meth:`_required_attrs`; a pickle from another greyanom version that lacks one, or that
        cannot be rebuilt, raises a ``ValueError`` naming the version that pickled it and the
        version running, here rather than as an ``AttributeError`` in a later call. A
        complete pickle from another version loads with a warning.
        """
        state = dict(state)
        version = state.pop(_VERSION_KEY, None)
        here = _greyanom_version()
        name = type(self).__name__
        super().__setstate__(state)
        if "calibration" not in vars(self) and "calibration" in self._get_param_names():
            self.calibration = "heldout"  # pickled before the parameter existed: it was held out then
        advice = "Refit it with this greyanom, or save models with .save(), whose file format is checked on load."
        failure = None
        try:
            self._restore_unpickled()
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
            failure = exc
        learned = [key for key in vars(self) if key.endswith("_") and not key.startswith("_")]
        missing = [key for key in self._required_attrs() if key not in vars(self)]
        # a missing attribute explains an AttributeError of the rebuild; other failures speak for themselves
        if learned and missing and (failure is None or isinstance(failure, AttributeError)):
            raise ValueError(
                f"this {name} was pickled by {_made_by(version)} without the learned attribute(s) {missing} "
                f"that greyanom {here} needs to use it. {advice}"
            ) from failure
        if failure is not None:
            raise ValueError(
                f"this {name} was pickled by {_made_by(version)} and cannot be restored by greyanom {here}: "
                f"{failure}. {advice}"
            ) from failure
        if version != here:
            warnings.warn(
                f"this {name} was pickled by {_made_by(version)} and is loaded by greyanom {here}; "
                "its results may differ. Prefer .save() / .load().",
                UserWarning,
                stacklevel=2,
            )

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
