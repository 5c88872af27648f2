"""From anomaly scores to PASS / REVIEW / REJECT decisions with a guaranteed false-reject rate.

:class:`DecisionPolicy` turns the anomaly scores of any greyanom detector into split conformal
p-values (Bates et al. 2023) against the scores of normal *calibration* items that the detector
did not train on, and bands them:

* ``REJECT`` where ``p <= reject_fpr``,
* ``REVIEW`` where ``reject_fpr < p <= review_fpr``,
* ``PASS`` otherwise.

If the calibration scores and the score of a fresh normal item are exchangeable (the same
detector, data from the same process, the detector fitted on other data), then
``P(REJECT | fresh normal) <= reject_fpr`` and ``P(REVIEW or REJECT | fresh normal) <=
review_fpr``, marginally over the draw of the calibration set. With ``n`` calibration scores the
smallest p-value is ``1 / (n + 1)``, so a band at rate ``r`` needs ``n >= 1 / r - 1`` scores
(a 0.5 % band needs 199, a 0.1 % band 999).

:func:`calibrate` produces such scores without a separate calibration set, by cross-fitting
clones of the detector.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np

__all__ = ["DecisionPolicy", "calibrate", "decision_table", "format_decision_tables", "min_calibration_size"]

_FORMAT = "greyanom-decision-policy"
#: The last version of the JSON policy file, read for files written before policies moved into
#: the model-file container (where the model binding, ``model``, is part of the config); such
#: files load unbound.
_FORMAT_VERSION = 1

PASS, REVIEW, REJECT = "PASS", "REVIEW", "REJECT"
LABELS = (PASS, REVIEW, REJECT)


def min_calibration_size(rate):
    """Smallest number of calibration scores that supports a band at ``rate``.

    The smallest conformal p-value with ``n`` calibration scores is ``1 / (n + 1)``; a band
    ``p <= rate`` can only ever fire when ``1 / (n + 1) <= rate``.

    Parameters
    ----------
    rate : float in (0, 1)
        Target false-alarm rate of the band.

    Returns
    -------
    n : int
        ``ceil(1 / rate - 1)``.

    Examples
    --------
    >>> from greyanom.decision import min_calibration_size
    >>> min_calibration_size(0.001), min_calibration_size(0.05)
    (999, 19)
    """
    rate = _check_rate(rate, "rate")
    # the small tolerance keeps 1 / 0.001 - 1 = 998.9999999999999 from rounding up to 1000
    return int(math.ceil(1.0 / rate - 1.0 - 1e-9))


def _check_rate(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in (0, 1), got {value!r}.")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}.")
    return value


def _as_scores(scores, name, *, allow_inf):
    """1-D float array from ``scores``; the index when ``scores`` is a pandas Series."""
    index = getattr(scores, "index", None) if hasattr(scores, "iloc") else None
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers: {exc}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s): a score is required for every item.")
    if not allow_inf and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains infinite values; calibration scores must be finite.")
    return arr, index


class DecisionPolicy:
    """Conformal PASS / REVIEW / REJECT bands over anomaly scores.

    Parameters
    ----------
    review_fpr : float in (0, 1), default=0.05
        Target rate of fresh normal items sent to REVIEW or REJECT.
    reject_fpr : float in (0, 1), default=0.005
        Target rate of fresh normal items rejected; must be below ``review_fpr``.

    Attributes
    ----------
    calibration_scores_ : ndarray of shape (n,)
        Sorted anomaly scores of the normal calibration items.
    n_calibration_ : int
        ``n``.
    review_threshold_ : float
        Scores ``>= review_threshold_`` go to REVIEW (or REJECT). Without tuning it is the
        smallest score with ``p <= review_fpr`` (the next float above a calibration score);
        with labelled tuning (``max_fnr``) it can lie lower.
    reject_threshold_ : float
        Scores ``>= reject_threshold_`` are rejected; ``score >= reject_threshold_`` exactly
        when ``p_value(score) <= reject_fpr``.
    conformal_review_threshold_ : float
        The review threshold the conformal guarantee alone gives.
    false_review_rate_ : float
        Upper bound on the rate of fresh normals sent to REVIEW or REJECT at
        ``review_threshold_``: the conformal p-value of that threshold (``review_fpr``-bounded
        without tuning, larger after labelled tuning).
    fnr_ : float or None
        With labels: the fraction of labelled anomalies below ``review_threshold_`` (PASSed).
    model_class_ : str or None
        Class of the detector the calibration scores came from (``fit(..., model=)``);
        None for an unbound policy.
    model_hash_ : str or None
        Its content hash (:func:`greyanom._persist.model_hash`: the same for the fitted
        detector and its saved file); None for an unbound policy.

    See Also
    --------
    calibrate : Cross-fitted calibration scores from a detector and normal training data.
    greyanom.drift.ScoreDriftMonitor : Watch the scores for drift away from the calibration set.

    Notes
    -----
    The conformal p-value of a score ``s`` against calibration scores ``s_1..s_n`` is

    .. math:: p(s) = \\frac{1 + \\#\\{i : s_i \\ge s\\}}{n + 1}.

    If ``s`` and the ``s_i`` are exchangeable, ``P(p(s) <= t) <= t`` for every ``t`` (the
    p-value is super-uniform), marginally over the calibration draw; the thresholds are the
    smallest score whose p-value is at most the band's rate. A band at rate ``r`` needs
    ``n >= 1/r - 1`` calibration scores, see :func:`min_calibration_size`.

    References
    ----------
    .. [1] S. Bates, E. Candès, L. Lei, Y. Romano, M. Sesia, "Testing for outliers with
       conformal p-values", Annals of Statistics 51(1), 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.decision import DecisionPolicy
    >>> rng = np.random.default_rng(0)
    >>> policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(rng.normal(size=500))
    >>> policy.decide([0.0, 2.0, 10.0]).tolist()
    ['PASS', 'REVIEW', 'REJECT']
    """

    def __init__(self, *, review_fpr=0.05, reject_fpr=0.005):
        self.review_fpr = review_fpr
        self.reject_fpr = reject_fpr

    # -- fitting ------------------------------------------------------------------
    def _check_bands(self):
        review = _check_rate(self.review_fpr, "review_fpr")
        reject = _check_rate(self.reject_fpr, "reject_fpr")
        if not reject < review:
            raise ValueError(
                f"reject_fpr ({reject}) must be smaller than review_fpr ({review}): the REJECT band "
                "lies inside the REVIEW band."
            )
        return review, reject

    def fit(self, calibration_scores, y=None, *, max_fnr=None, model=None):
        """Set the thresholds from anomaly scores of normal items the detector did not train on.

        Parameters
        ----------
        calibration_scores : array-like of shape (n,)
            Anomaly scores (higher = more anomalous), finite. Without ``y`` all of them are
            taken as normal; with ``y`` only those labelled 0.
        y : array-like of shape (n,) of {0, 1}, optional
            Labels: 0 normal, 1 anomalous. Needed for ``max_fnr``.
        max_fnr : float in [0, 1), optional
            Labelled tuning: move the REVIEW threshold down (never up) until at most this
            fraction of the labelled anomalies PASS. The REJECT band is untouched; the price
            is ``false_review_rate_``.
        model : fitted detector, str or path-like, optional
            The detector the scores come from (or its saved file): the policy records its
            class and content hash, and ``greyanom serve`` refuses to apply it to any other
            model. Thresholds are only meaningful on the scale of the model that made
            the scores.

        Returns
        -------
        self : DecisionPolicy

        Raises
        ------
        ValueError
            Empty or non-finite scores, bands in the wrong order, or fewer normal scores than
            :func:`min_calibration_size` of ``reject_fpr`` (the message gives the ``n`` needed).
        """
        review, reject = self._check_bands()
        scores, _ = _as_scores(calibration_scores, "calibration_scores", allow_inf=False)
        binding = (None, None) if model is None else _model_identity(model, "model")
        anomalies = None
        if y is not None:
            labels = np.asarray(y).ravel()
            if labels.shape != scores.shape:
                raise ValueError(f"y has {labels.size} labels for {scores.size} calibration_scores.")
            if not np.isin(labels, (0, 1)).all():
                raise ValueError("y must hold 0 (normal) and 1 (anomalous) only.")
            anomalies = scores[labels == 1]
            scores = scores[labels == 0]
        elif max_fnr is not None:
            raise ValueError("max_fnr needs labels: pass y with 1 for the anomalous calibration items.")
        if scores.size == 0:
            raise ValueError("calibration_scores is empty: at least one normal score is needed.")
        n = scores.size
        for name, rate in (("reject_fpr", reject), ("review_fpr", review)):
            need = min_calibration_size(rate)
            if n < need:
                raise ValueError(
                    f"{n} normal calibration scores cannot support {name}={rate}: the smallest "
                    f"conformal p-value is 1/(n+1) = {1.0 / (n + 1):.4g}; at least {need} scores "
                    f"are needed (n >= 1/{name} - 1)."
                )
        self.calibration_scores_ = np.sort(scores)
        self.n_calibration_ = int(n)
        self.conformal_review_threshold_ = self._threshold_for(review)
        self.reject_threshold_ = self._threshold_for(reject)
        self.review_threshold_ = self.conformal_review_threshold_
        self.fnr_ = None
        if anomalies is not None and anomalies.size:
            self.fnr_ = float(np.mean(anomalies < self.review_threshold_))
        if max_fnr is not None:
            if isinstance(max_fnr, bool) or not isinstance(max_fnr, numbers.Real) or not 0 <= max_fnr < 1:
                raise ValueError(f"max_fnr must be a float in [0, 1), got {max_fnr!r}.")
            if anomalies.size == 0:
                raise ValueError("max_fnr needs at least one calibration item labelled 1 (anomalous).")
            # the largest threshold t with mean(anomalies < t) <= max_fnr: the k-th smallest
            # anomaly score, k = floor(max_fnr * m), PASSes exactly k anomalies below it
            a = np.sort(anomalies)
            k = int(math.floor(max_fnr * a.size + 1e-12))
            tuned = float(a[k])
            if tuned < self.review_threshold_:
                self.review_threshold_ = tuned
            self.fnr_ = float(np.mean(anomalies < self.review_threshold_))
        self.false_review_rate_ = float(self._p_of(np.array([self.review_threshold_]))[0])
        self.model_class_, self.model_hash_ = binding
        return self

    def check_model(self, model, *, allow_unbound=False):
        """Check that this policy was calibrated on ``model``; return the model's hash.

        Parameters
        ----------
        model : fitted detector, str or path-like
            The detector (or its saved file) the policy is about to be applied to.
        allow_unbound : bool, default=False
            Accept a policy that records no model (fitted without ``model=``, or read from
            a version-1 file).

        Returns
        -------
        model_hash : str
            The content hash of ``model``.

        Raises
        ------
        ValueError
            If the policy is bound to another model (class or content hash), or is unbound
            and ``allow_unbound`` is False.
        """
        self._check_fitted()
        model_class, digest = _model_identity(model, "model")
        bound_hash = getattr(self, "model_hash_", None)
        if bound_hash is None:
            if not allow_unbound:
                raise ValueError(
                    "the decision policy records no model (fitted without model=, or an old file); its thresholds "
                    f"may be on another score scale than this {model_class}'s. Refit it with "
                    "DecisionPolicy.fit(scores, model=detector), or allow an unbound policy explicitly "
                    "(greyanom serve --allow-unbound-policy)."
                )
            return digest
        if (self.model_class_, bound_hash) != (model_class, digest):
            raise ValueError(
                f"the decision policy was calibrated on a {self.model_class_} ({bound_hash[:19]}), not on this "
                f"{model_class} ({digest[:19]}): its thresholds do not apply to this model's scores. Calibrate a "
                "policy for this model with DecisionPolicy.fit(scores, model=detector)."
            )
        return digest

    def _threshold_for(self, rate):
        """Smallest float ``t`` with ``p(t) <= rate``, so that ``score >= t`` iff ``p(score) <= rate``.

        ``p`` is a step function that is constant on ``(u_(j-1), u_(j)]`` between consecutive
        distinct calibration scores; if ``u_(j)`` is the first with ``p <= rate``, every score
        above ``u_(j-1)`` qualifies, and ``t`` is the next float after ``u_(j-1)``. With heavy
        ties at the top, no calibration score qualifies and ``t`` lies just above the largest.
        """
        u = np.unique(self.calibration_scores_)
        ok = np.flatnonzero(self._p_of(u) <= rate)
        j = ok[0] if ok.size else u.size  # j >= 1: p of the smallest score is 1
        return float(np.nextafter(u[j - 1], np.inf))

    # -- using --------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "calibration_scores_"):
            raise RuntimeError("This DecisionPolicy is not fitted yet: call fit(calibration_scores) first.")

    def _p_of(self, arr):
        s = self.calibration_scores_
        n = s.size
        # number of calibration scores >= x, from the sorted calibration scores
        n_ge = n - np.searchsorted(s, arr, side="left")
        return (1.0 + n_ge) / (n + 1.0)

    def _wrap(self, values, index):
        if index is None:
            return values
        import pandas as pd

        return pd.Series(values, index=index)

    def p_values(self, scores):
        """Conformal p-values of anomaly scores (small = unlike the calibration normals).

        Parameters
        ----------
        scores : array-like or pandas.Series of shape (m,)
            Anomaly scores; ``+inf`` is allowed (p = 1/(n+1)), NaN is a ValueError.

        Returns
        -------
        p : ndarray or pandas.Series of shape (m,)
            ``(1 + #{calibration >= s}) / (n + 1)``; a Series (same index) for a Series.
        """
        self._check_fitted()
        arr, index = _as_scores(scores, "scores", allow_inf=True)
        return self._wrap(self._p_of(arr), index)

    def decide(self, scores):
        """PASS / REVIEW / REJECT for each anomaly score.

        Parameters
        ----------
        scores : array-like or pandas.Series of shape (m,)
            Anomaly scores; ``+inf`` is REJECT, NaN is a ValueError.

        Returns
        -------
        decisions : ndarray of str or pandas.Series of shape (m,)
            ``"REJECT"`` where ``score >= reject_threshold_``, ``"REVIEW"`` where
            ``score >= review_threshold_``, else ``"PASS"``; a Series (same index) for a Series.
        """
        self._check_fitted()
        arr, index = _as_scores(scores, "scores", allow_inf=True)
        out = np.full(arr.shape, PASS, dtype=object)
        out[arr >= self.review_threshold_] = REVIEW
        out[arr >= self.reject_threshold_] = REJECT
        return self._wrap(out, index)

    def confidence(self, scores):
        """Confidence that an item is anomalous: ``1 - p_value``.

        Parameters
        ----------
        scores : array-like or pandas.Series of shape (m,)
            Anomaly scores.

        Returns
        -------
        confidence : ndarray or pandas.Series of shape (m,)
            In ``[0, 1 - 1/(n+1)]``; a REJECT has confidence ``>= 1 - reject_fpr``.
        """
        p = self.p_values(scores)
        return 1.0 - p

    # -- persistence --------------------------------------------------------------
    def save(self, path):
        """Write the fitted policy to ``path``: the model-file container, atomically, no pickling.

        The policy's parameters and its whole state (JSON) go into the same safetensors
        container as the detectors' files (:mod:`greyanom._persist`: format version, integrity
        hash, a temporary file renamed into place), so :func:`greyanom.load` reads it too.

        Parameters
        ----------
        path : str or path-like
            File to write (conventionally ``*.safetensors``); its folder must exist.

        Returns
        -------
        path : pathlib.Path
        """
        from greyanom._persist import save_arrays

        self._check_fitted()
        doc = {
            "params": {"review_fpr": float(self.review_fpr), "reject_fpr": float(self.reject_fpr)},
            "state": {
                "calibration_scores": self.calibration_scores_.tolist(),
                "review_threshold": self.review_threshold_,
                "reject_threshold": self.reject_threshold_,
                "conformal_review_threshold": self.conformal_review_threshold_,
                "false_review_rate": self.false_review_rate_,
                "fnr": self.fnr_,
            },
            "model": {"class": getattr(self, "model_class_", None), "hash": getattr(self, "model_hash_", None)},
        }
        return save_arrays(path, {}, {"class": type(self).__name__, **doc})

    @classmethod
    def load(cls, path):
        """Read a policy written by :meth:`save`, or a JSON policy of earlier greyanom versions.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        policy : DecisionPolicy

        Raises
        ------
        ValueError
            The file is not a greyanom decision policy, or was written by a newer format version.
        """
        from greyanom._persist import is_json_file, load_arrays

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path {str(path)!r} does not exist.")
        if not is_json_file(path):
            try:
                _, config = load_arrays(path, cls.__name__)
            except ValueError as exc:
                raise ValueError(f"{str(path)!r} is not a greyanom decision policy: {exc}") from exc
            return cls._from_doc(
                {"params": dict(config["params"]), "state": dict(config["state"]), "model": config.get("model")}, path
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{str(path)!r} is not a greyanom decision policy (not JSON): {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a greyanom decision policy file.")
        version = doc.get("format_version")
        if not isinstance(version, int) or version < 1 or version > _FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} has format version {version!r}; this greyanom reads up to "
                f"{_FORMAT_VERSION}: upgrade greyanom."
            )
        return cls._from_doc(doc, path)

    @classmethod
    def _from_doc(cls, doc, path):
        try:
            policy = cls(**doc["params"])
            policy._check_bands()
            state = doc["state"]
            scores = np.asarray(state["calibration_scores"], dtype=np.float64)
            if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
                raise ValueError("calibration scores must be a non-empty list of finite numbers")
            policy.calibration_scores_ = np.sort(scores)
            policy.n_calibration_ = int(scores.size)
            policy.review_threshold_ = float(state["review_threshold"])
            policy.reject_threshold_ = float(state["reject_threshold"])
            policy.conformal_review_threshold_ = float(state["conformal_review_threshold"])
            policy.false_review_rate_ = float(state["false_review_rate"])
            policy.fnr_ = None if state["fnr"] is None else float(state["fnr"])
            # files written before the binding existed (JSON format 1, early containers) load unbound
            binding = doc.get("model") or {"class": None, "hash": None}
            policy.model_class_, policy.model_hash_ = binding["class"], binding["hash"]
            if (policy.model_class_ is None) != (policy.model_hash_ is None) or not all(
                v is None or isinstance(v, str) for v in (policy.model_class_, policy.model_hash_)
            ):
                raise ValueError("the model binding must hold a class name and a hash, or neither")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{str(path)!r} is a damaged greyanom decision policy: {exc}") from exc
        return policy

    def __repr__(self):
        return f"DecisionPolicy(review_fpr={self.review_fpr!r}, reject_fpr={self.reject_fpr!r})"


def _checked_pair(model, policy, *, allow_unbound=False, name="model"):
    """A fitted detector and the decision policy calibrated on it, each given as itself or its file.

    Returns ``(detector, policy, model_hash)``: the files read (:func:`greyanom.load`,
    :meth:`DecisionPolicy.load`; nothing unpickled), and the content hash of ``model`` as given
    (of its file when it is one, as ``greyanom serve`` hashes the file it serves) from
    :meth:`DecisionPolicy.check_model`, which refuses a policy bound to another model (and an
    unbound one unless ``allow_unbound``). A file is checked as a file: one written before a
    parameter was added or renamed loads with that parameter migrated, so the loaded detector
    hashes differently from the file the policy was bound to; :func:`_write_model` then copies
    the file rather than saving the loaded detector. ``name``: the caller's name of ``model`` in
    error messages. The registry and its MLflow bridge load their pairs through it.
    """
    import os

    import greyanom

    is_file = isinstance(model, (str, os.PathLike))
    detector = greyanom.load(model) if is_file else model
    if not callable(getattr(detector, "save", None)) or not hasattr(detector, "offset_"):
        raise TypeError(f"{name} must be a fitted greyanom detector or its file, got {type(detector).__name__}.")
    policy = DecisionPolicy.load(policy) if isinstance(policy, (str, os.PathLike)) else policy
    if not isinstance(policy, DecisionPolicy) or not hasattr(policy, "review_threshold_"):
        raise TypeError(f"policy must be a fitted DecisionPolicy or its file, got {type(policy).__name__}.")
    return detector, policy, policy.check_model(model if is_file else detector, allow_unbound=allow_unbound)


def _write_model(model, detector, path, model_hash):
    """Write the detector of a :func:`_checked_pair` to ``path``; return ``path``.

    A detector given as a file is copied byte for byte (its hash is the one the policy was
    checked against, ``model_hash``; a file changed since is refused); a detector object is
    saved.
    """
    import os
    import shutil

    from greyanom._persist import model_hash as hash_of

    if not isinstance(model, (str, os.PathLike)):
        return detector.save(path)
    shutil.copyfile(model, path)
    if hash_of(path) != model_hash:
        raise ValueError(f"the model file {str(model)!r} changed while it was being registered; register it again.")
    return path


def _model_identity(model, name):
    """``(class name, content hash)`` of a fitted detector or a model file."""
    import os

    from greyanom._persist import model_hash, read_config

    if isinstance(model, (str, os.PathLike)):
        return str(read_config(model)["class"]), model_hash(model)
    if not callable(getattr(model, "_save_payload", None)):
        raise TypeError(f"{name} must be a fitted greyanom detector or its model file, got {type(model).__name__}.")
    return type(model).__name__, model_hash(model)


def decision_table(decisions, y_true, *, labels=None):
    """Counts of PASS / REVIEW / REJECT per true class.

    Parameters
    ----------
    decisions : array-like of str
        Output of :meth:`DecisionPolicy.decide`.
    y_true : array-like
        True class of each item (0/1, or names such as defect types).
    labels : dict, optional
        Display names for the classes, e.g. ``{0: "normal", 1: "anomalous"}``.

    Returns
    -------
    table : pandas.DataFrame
        One row per class, columns ``PASS``, ``REVIEW``, ``REJECT``, ``total``.

    Examples
    --------
    >>> from greyanom.decision import decision_table
    >>> decision_table(["PASS", "REJECT", "REVIEW"], [0, 1, 1], labels={0: "normal", 1: "anomalous"})
               PASS  REVIEW  REJECT  total
    normal        1       0       0      1
    anomalous     0       1       1      2
    """
    import pandas as pd

    d = np.asarray(decisions, dtype=object).ravel()
    t = np.asarray(y_true).ravel()
    if d.shape != t.shape:
        raise ValueError(f"decisions has {d.size} items and y_true {t.size}.")
    unknown = set(d.tolist()) - set(LABELS)
    if unknown:
        raise ValueError(f"decisions must be PASS/REVIEW/REJECT, got {sorted(map(str, unknown))}.")
    table = pd.crosstab(pd.Series(t, name="class"), pd.Series(d, name="decision"))
    table = table.reindex(columns=list(LABELS), fill_value=0)
    table["total"] = table.sum(axis=1)
    if labels is not None:
        table.index = [labels.get(k, k) for k in table.index]
    table.index.name = None
    table.columns.name = None
    return table


def format_decision_tables(runs, y_true, *, review_fpr=0.05, reject_fpr=0.005):
    """Text of PASS / REVIEW / REJECT counts per true class, one table per detector.

    Each detector gets a :class:`DecisionPolicy` fitted on its calibration scores. When there
    are too few of them for ``reject_fpr``, the REJECT band is widened to the smallest rate
    they support, ``1 / (n + 1)`` (said in the table's header); a detector with too few for
    ``review_fpr`` gets a line saying so instead of a table.

    Parameters
    ----------
    runs : dict
        Detector name -> ``(calibration_scores, test_scores)``; e.g. the fitted detector's
        ``heldout_scores_`` and ``score(X_test)``.
    y_true : array-like
        True class of each test item (0/1 or names such as defect types).
    review_fpr, reject_fpr : float
        Bands of the policies.

    Returns
    -------
    text : str

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.decision import format_decision_tables
    >>> rng = np.random.default_rng(0)
    >>> cal, test = rng.normal(size=300), np.r_[rng.normal(size=50), rng.normal(4, size=10)]
    >>> print(format_decision_tables({"toy": (cal, test)}, np.r_[np.zeros(50), np.ones(10)].astype(int)))
    toy (review_fpr=0.05, reject_fpr=0.005, n_calibration=300):
       PASS  REVIEW  REJECT  total
    0    49       1       0     50
    1     0       1       9     10
    """
    blocks = []
    for name, (cal, test) in runs.items():
        n = int(np.size(cal))
        if 1.0 / (n + 1) >= review_fpr:
            blocks.append(f"{name}: {n} calibration scores are too few for review_fpr={review_fpr:g} "
                          f"(needs more than {min_calibration_size(review_fpr)}); no decision table.")
            continue
        reject = reject_fpr if n >= min_calibration_size(reject_fpr) else 1.0 / (n + 1)
        note = "" if reject == reject_fpr else " (widened: too few calibration scores)"
        policy = DecisionPolicy(review_fpr=review_fpr, reject_fpr=reject).fit(cal)
        table = decision_table(policy.decide(test), y_true)
        blocks.append(f"{name} (review_fpr={review_fpr:g}, reject_fpr={reject:.3g}{note}, n_calibration={n}):\n"
                      + table.to_string())
    return "\n".join(blocks)


def calibrate(detector, X, *, cv=5, random_state=None, method="score"):
    """Cross-fitted anomaly scores of normal data, for :meth:`DecisionPolicy.fit`.

    The data are split into ``cv`` folds; for each fold a clone of ``detector`` (same
    parameters, unfitted) is fitted on the other folds and scores the fold. Every score
    thus comes from a model that did not see the item, which is what the conformal guarantee
    needs, and a user without a separate calibration set still gets honest thresholds. The
    cost is ``cv`` fits on ``(cv - 1) / cv`` of the data. ``detector`` itself is not fitted.

    Parameters
    ----------
    detector : greyanom detector
        Fitted or not; only its parameters are used.
    X : array-like or pandas.DataFrame
        Normal data: images ``(n, H, W)`` or rows ``(n, d)`` for ``method="score"``; long-format
        traces for ``method="score_wafers"``.
    cv : int >= 2 or a scikit-learn splitter, default=5
        Number of folds (shuffled :class:`~sklearn.model_selection.KFold`), or a splitter with
        ``split``. For ``"score_wafers"`` the folds are over whole wafers.
    random_state : int, RandomState instance or None, default=None
        Seeds the fold assignment.
    method : {"score", "score_wafers"}, default="score"
        ``"score"``: one score per item (row or image). ``"score_wafers"``: one score per wafer
        of a trace detector; the DataFrame is split by the values of the detector's
        ``trace_keys`` columns, so all traces of a wafer fall into one fold.

    Returns
    -------
    scores : ndarray of shape (n,) or pandas.Series
        Anomaly scores (higher = more anomalous) in the order of ``X``; for ``"score_wafers"``
        a Series indexed by the wafer keys in order of first appearance. Wafers the trace
        detector could not score are NaN: drop them before :meth:`DecisionPolicy.fit`.

    Raises
    ------
    ValueError
        Unknown ``method``, fewer items (or wafers) than folds, or ``cv < 2``.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import PCADetector
    >>> from greyanom.decision import DecisionPolicy, calibrate
    >>> X = np.random.default_rng(0).normal(size=(300, 8))
    >>> scores = calibrate(PCADetector(n_components=3), X, cv=5, random_state=0)
    >>> scores.shape
    (300,)
    >>> policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(scores)
    """
    from greyanom.base import cross_fit_scores

    if method not in ("score", "score_wafers"):
        raise ValueError(f"method must be 'score' or 'score_wafers', got {method!r}.")
    if not hasattr(detector, method):
        raise TypeError(f"{type(detector).__name__} has no {method!r} method.")
    if method == "score":
        if hasattr(detector, "trace_keys"):
            raise ValueError(
                f"{type(detector).__name__} scores long-format traces: folds of rows would split wafers; "
                "use method='score_wafers'."
            )
        return cross_fit_scores(detector, X, cv=cv, random_state=random_state)
    return _calibrate_wafers(detector, X, cv=cv, random_state=random_state)


def _calibrate_wafers(detector, X, *, cv, random_state):
    """Wafer-fold cross-fitting: held-out ``score_wafers`` of every wafer, in order of appearance."""
    import pandas as pd

    from greyanom._crossfit import cross_fit
    from greyanom.base import _fit_clone

    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"method='score_wafers' needs a pandas DataFrame of traces, got {type(X).__name__}.")
    from greyanom.traces._keys import normalise_keys

    keys = list(normalise_keys(detector.trace_keys)[0])
    missing = [k for k in keys if k not in X.columns]
    if missing:
        raise ValueError(f"X lacks the trace_keys column(s) {missing} of the detector.")
    row_keys = pd.MultiIndex.from_frame(X[keys])
    wafers = row_keys.unique()  # order of first appearance

    def fit_score(train, test):
        model = _fit_clone(detector, X[row_keys.isin(wafers[train])])
        return model.score_wafers(X[row_keys.isin(wafers[test])])

    scores = pd.concat([part for _, part in cross_fit(fit_score, len(wafers), cv, random_state, what="wafers")])
    if len(keys) == 1:
        order = wafers.get_level_values(0)
    else:
        order = wafers
    return scores.reindex(order).rename("score")
