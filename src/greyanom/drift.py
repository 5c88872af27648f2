"""Drift monitoring: is the production data still the data the detector and its policy were made for?

* :class:`ScoreDriftMonitor`: two-sample Kolmogorov-Smirnov test of a batch of anomaly scores
  against reference scores (:func:`scipy.stats.ks_2samp`), and the REJECT-rate alert of a
  :class:`~greyanom.decision.DecisionPolicy`.
* :class:`FeatureDriftMonitor`: per-dimension KS tests of embeddings (the VAE's latent means,
  the patch detectors' pooled features, PCA coordinates: each detector's ``embed(X)``) with a
  Bonferroni or Benjamini-Hochberg correction, and the shift of their mean and variance.
* :class:`RollingDriftMonitor`: batches in time order, one row of alerts per batch (score
  drift, REJECT rate over a limit, rising mean score of the PASS items), and a plot of the
  score distribution over time (:func:`greyanom.plotting.plot_score_drift`).
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
from scipy import stats

__all__ = [
    "FeatureDriftMonitor",
    "FeatureDriftResult",
    "RollingDriftMonitor",
    "ScoreDriftMonitor",
    "ScoreDriftResult",
]


def _check_alpha(alpha, name="alpha"):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"{name} must be a float in (0, 1), got {alpha!r}.")
    return float(alpha)


def _scores(values, name, *, min_size=1):
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers: {exc}") from exc
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} score(s), got {arr.size}.")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s).")
    return arr


@dataclasses.dataclass(frozen=True)
class ScoreDriftResult:
    """Outcome of :meth:`ScoreDriftMonitor.test` on one batch.

    Attributes
    ----------
    statistic : float
        Two-sample KS statistic (largest gap between the two empirical CDFs).
    p_value : float
        Its p-value (``scipy.stats.ks_2samp``, two-sided).
    drift : bool
        ``p_value < alpha``.
    alpha : float
        Significance level of the test.
    n_reference, n_batch : int
        Scores compared (after the PASS restriction when ``pass_only``).
    reject_rate : float or None
        Fraction of the batch the policy REJECTs; ``None`` without a policy.
    reject_alert : bool or None
        ``reject_rate > reject_limit``; ``None`` without a policy.
    reject_limit : float
        The limit of that alert.
    """

    statistic: float
    p_value: float
    drift: bool
    alpha: float
    n_reference: int
    n_batch: int
    reject_rate: float | None
    reject_alert: bool | None
    reject_limit: float

    @property
    def alert(self):
        """True when the KS test or the REJECT-rate alert fires."""
        return bool(self.drift or self.reject_alert)


class ScoreDriftMonitor:
    """KS drift test of anomaly scores against a reference, with the REJECT-rate alert.

    Parameters
    ----------
    reference_scores : array-like of shape (n,)
        Anomaly scores of normal data the detector did not train on, typically the
        calibration scores of the policy (``policy.calibration_scores_``).
    alpha : float in (0, 1), default=0.01
        Significance level: on batches from the reference distribution the test fires with
        probability at most ``alpha`` (KS is exact or conservative for continuous scores).
    policy : DecisionPolicy, optional
        Fitted policy; enables ``reject_rate`` and ``reject_alert``.
    reject_limit : float in (0, 1), default=0.05
        REJECT rate above which ``reject_alert`` fires (the case study's 5 %).
    pass_only : bool, default=False
        Compare only scores below the policy's REVIEW threshold (the PASS items) in both the
        reference and the batch, as the case study's weekly test on PASS scores does. A shift
        that moves items into REVIEW or REJECT then shows in ``reject_rate`` rather than in the
        KS test. Needs ``policy``.

    Attributes
    ----------
    reference_ : ndarray
        The sorted reference scores used by the test.

    See Also
    --------
    greyanom.decision.DecisionPolicy : The bands whose REJECT rate is watched.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.drift import ScoreDriftMonitor
    >>> rng = np.random.default_rng(0)
    >>> monitor = ScoreDriftMonitor(rng.normal(size=500), alpha=0.01)
    >>> monitor.test(rng.normal(size=200)).drift
    False
    >>> monitor.test(rng.normal(loc=0.5, size=200)).drift
    True
    """

    def __init__(self, reference_scores, *, alpha=0.01, policy=None, reject_limit=0.05, pass_only=False):
        self.reference_scores = reference_scores
        self.alpha = alpha
        self.policy = policy
        self.reject_limit = reject_limit
        self.pass_only = pass_only
        self._alpha = _check_alpha(alpha)
        self._limit = _check_alpha(reject_limit, "reject_limit")
        ref = _scores(reference_scores, "reference_scores")
        if not np.isfinite(ref).all():
            raise ValueError("reference_scores contains infinite values.")
        if policy is not None and not hasattr(policy, "reject_threshold_"):
            raise ValueError("policy must be a fitted DecisionPolicy (call policy.fit first).")
        if pass_only:
            if policy is None:
                raise ValueError("pass_only=True needs a fitted policy to tell PASS scores apart.")
            ref = ref[ref < policy.review_threshold_]
            if ref.size == 0:
                raise ValueError("no reference score lies in the policy's PASS band.")
        self.reference_ = np.sort(ref)

    def test(self, scores):
        """Test one batch of anomaly scores.

        Parameters
        ----------
        scores : array-like of shape (m,)
            Anomaly scores of the batch; ``+inf`` is allowed, NaN is a ValueError.

        Returns
        -------
        result : ScoreDriftResult
        """
        batch = _scores(scores, "scores")
        reject_rate = reject_alert = None
        if self.policy is not None:
            reject_rate = float(np.mean(batch >= self.policy.reject_threshold_))
            reject_alert = bool(reject_rate > self._limit)
        tested = batch[batch < self.policy.review_threshold_] if self.pass_only else batch
        if tested.size == 0:
            statistic, p_value = np.nan, np.nan
        else:
            res = stats.ks_2samp(self.reference_, tested)
            statistic, p_value = float(res.statistic), float(res.pvalue)
        return ScoreDriftResult(
            statistic=statistic,
            p_value=p_value,
            drift=bool(p_value < self._alpha),
            alpha=self._alpha,
            n_reference=int(self.reference_.size),
            n_batch=int(tested.size),
            reject_rate=reject_rate,
            reject_alert=reject_alert,
            reject_limit=self._limit,
        )


def _matrix(values, name, *, min_rows=2):
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 2-D array of numbers: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_items, n_dims), got shape {arr.shape}.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


@dataclasses.dataclass(frozen=True)
class FeatureDriftResult:
    """Outcome of :meth:`FeatureDriftMonitor.test` on one batch of embeddings.

    Attributes
    ----------
    drift : bool
        Some dimension drifted after the multiple-testing correction.
    p_value : float
        Smallest corrected p-value over the dimensions (the batch-level p-value).
    p_values : ndarray of shape (d,)
        Corrected per-dimension p-values (Bonferroni: ``min(1, d p)``; ``"fdr_bh"``:
        Benjamini-Hochberg adjusted, :func:`scipy.stats.false_discovery_control`).
    statistics : ndarray of shape (d,)
        Per-dimension KS statistics.
    drifted : ndarray of bool, shape (d,)
        ``p_values < alpha``.
    mean_shift : ndarray of shape (d,)
        ``(batch mean - reference mean) / reference sd``, per dimension.
    variance_ratio : ndarray of shape (d,)
        ``batch variance / reference variance``, per dimension.
    alpha : float
    correction : str
    n_batch : int
    """

    drift: bool
    p_value: float
    p_values: np.ndarray
    statistics: np.ndarray
    drifted: np.ndarray
    mean_shift: np.ndarray
    variance_ratio: np.ndarray
    alpha: float
    correction: str
    n_batch: int

    @property
    def n_drifted(self):
        """Number of dimensions that drifted."""
        return int(np.sum(self.drifted))


class FeatureDriftMonitor:
    """Per-dimension KS drift test of embeddings, with mean and variance shifts.

    Parameters
    ----------
    reference : array-like of shape (n, d)
        Embeddings of normal reference data, e.g. ``detector.embed(X_calibration)``.
    alpha : float in (0, 1), default=0.01
        Level of the corrected test: family-wise error (Bonferroni) or false discovery rate
        (Benjamini-Hochberg) over the ``d`` dimensions.
    correction : {"bonferroni", "fdr_bh"}, default="bonferroni"
        Multiple-testing correction. Bonferroni controls the chance that *any* dimension
        alarms on undrifted data (so the batch-level false-alarm rate is at most ``alpha``);
        BH is more powerful when many dimensions shift and controls the expected fraction of
        false alarms among the dimensions flagged.

    Attributes
    ----------
    reference_ : ndarray of shape (n, d)
    mean_, std_ : ndarray of shape (d,)
        Reference mean and standard deviation per dimension.

    See Also
    --------
    ScoreDriftMonitor : The same test on the one-dimensional anomaly score.
    greyanom.ConvVAEDetector.embed : Latent means of images.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.drift import FeatureDriftMonitor
    >>> rng = np.random.default_rng(0)
    >>> monitor = FeatureDriftMonitor(rng.normal(size=(500, 8)))
    >>> monitor.test(rng.normal(size=(200, 8))).drift
    False
    >>> shifted = rng.normal(size=(200, 8))
    >>> shifted[:, 3] += 0.6
    >>> result = monitor.test(shifted)
    >>> result.drift, np.flatnonzero(result.drifted).tolist()
    (True, [3])
    """

    def __init__(self, reference, *, alpha=0.01, correction="bonferroni"):
        self.reference = reference
        self.alpha = alpha
        self.correction = correction
        self._alpha = _check_alpha(alpha)
        if correction not in ("bonferroni", "fdr_bh"):
            raise ValueError(f"correction must be 'bonferroni' or 'fdr_bh', got {correction!r}.")
        self.reference_ = _matrix(reference, "reference")
        self.mean_ = self.reference_.mean(axis=0)
        self.std_ = self.reference_.std(axis=0, ddof=1)

    def test(self, X):
        """Test one batch of embeddings.

        Parameters
        ----------
        X : array-like of shape (m, d)
            Embeddings of the batch, same ``d`` as the reference.

        Returns
        -------
        result : FeatureDriftResult
        """
        batch = _matrix(X, "X", min_rows=1)
        d = self.reference_.shape[1]
        if batch.shape[1] != d:
            raise ValueError(f"X has {batch.shape[1]} dimensions; the reference has {d}.")
        res = stats.ks_2samp(self.reference_, batch, axis=0)
        raw = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64))
        if self.correction == "bonferroni":
            adjusted = np.minimum(1.0, raw * d)
        else:
            adjusted = stats.false_discovery_control(raw, method="bh")
        drifted = adjusted < self._alpha
        tiny = np.finfo(np.float64).tiny
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_shift = (batch.mean(axis=0) - self.mean_) / np.maximum(self.std_, tiny)
            var = batch.var(axis=0, ddof=1) if len(batch) > 1 else np.full(d, np.nan)
            variance_ratio = var / np.maximum(self.std_**2, tiny)
        return FeatureDriftResult(
            drift=bool(drifted.any()),
            p_value=float(adjusted.min()),
            p_values=adjusted,
            statistics=np.atleast_1d(np.asarray(res.statistic, dtype=np.float64)),
            drifted=drifted,
            mean_shift=mean_shift,
            variance_ratio=variance_ratio,
            alpha=self._alpha,
            correction=self.correction,
            n_batch=int(len(batch)),
        )


class RollingDriftMonitor:
    """Watch batches of anomaly scores in time order and report alerts per batch.

    Each :meth:`update` tests one batch (a shift, a day, a lot) and appends a row to
    :attr:`history_`. Three alerts, from the case study's monitoring plan:

    * ``score_drift``: the KS test of the batch against the reference scores
      (:class:`ScoreDriftMonitor`) has ``p < alpha``;
    * ``reject_alert``: the batch's REJECT rate exceeds ``reject_limit``;
    * ``pass_mean_rising``: the mean score of the batch's PASS items lies above the
      reference PASS mean by more than ``z_limit`` standard errors (one-sided; a slow rise
      of the score of items that still pass is the first sign of a model going stale).

    Parameters
    ----------
    policy : DecisionPolicy
        Fitted policy; its calibration scores are the reference.
    alpha : float in (0, 1), default=0.01
        Level of the KS test per batch.
    reject_limit : float in (0, 1), default=0.05
        REJECT-rate limit per batch.
    z_limit : float > 0, default=3.0
        Standard errors above the reference PASS mean that raise ``pass_mean_rising``.

    Attributes
    ----------
    history_ : pandas.DataFrame
        One row per batch: ``batch``, ``n``, ``ks_statistic``, ``p_value``, ``score_drift``,
        ``reject_rate``, ``review_rate``, ``reject_alert``, ``pass_mean``, ``pass_mean_z``,
        ``pass_mean_rising``, ``alert``, and the score quantiles ``q05``, ``q25``, ``q50``,
        ``q75``, ``q95`` used by the plot.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.decision import DecisionPolicy
    >>> from greyanom.drift import RollingDriftMonitor
    >>> rng = np.random.default_rng(0)
    >>> policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(rng.normal(size=1000))
    >>> monitor = RollingDriftMonitor(policy)
    >>> for day in range(5):
    ...     _ = monitor.update(rng.normal(loc=0.5 if day >= 3 else 0.0, size=300), label=f"day {day}")
    >>> monitor.history_["alert"].tolist()
    [False, False, False, True, True]
    """

    _COLUMNS = (
        "batch", "n", "ks_statistic", "p_value", "score_drift", "reject_rate", "review_rate", "reject_alert",
        "pass_mean", "pass_mean_z", "pass_mean_rising", "alert", "q05", "q25", "q50", "q75", "q95",
    )

    def __init__(self, policy, *, alpha=0.01, reject_limit=0.05, z_limit=3.0):
        self.policy = policy
        self.alpha = alpha
        self.reject_limit = reject_limit
        self.z_limit = z_limit
        if not hasattr(policy, "calibration_scores_"):
            raise ValueError("policy must be a fitted DecisionPolicy (call policy.fit first).")
        if isinstance(z_limit, bool) or not isinstance(z_limit, numbers.Real) or not z_limit > 0:
            raise ValueError(f"z_limit must be a positive number, got {z_limit!r}.")
        self._ks = ScoreDriftMonitor(policy.calibration_scores_, alpha=alpha, policy=policy, reject_limit=reject_limit)
        ref = policy.calibration_scores_
        ref_pass = ref[ref < policy.review_threshold_]
        self._pass_mean = float(ref_pass.mean())
        self._pass_sd = float(ref_pass.std(ddof=1)) if ref_pass.size > 1 else 0.0
        self._rows = []

    def update(self, scores, *, label=None):
        """Test the next batch and append its row to :attr:`history_`.

        Parameters
        ----------
        scores : array-like of shape (m,)
            Anomaly scores of the batch (``+inf`` allowed, NaN is a ValueError).
        label : hashable, optional
            Name of the batch (a date, a lot id); defaults to its position.

        Returns
        -------
        row : dict
            The row appended.
        """
        batch = _scores(scores, "scores")
        ks = self._ks.test(batch)
        passed = batch[batch < self.policy.review_threshold_]
        if passed.size and self._pass_sd > 0:
            pass_mean = float(passed.mean())
            z = (pass_mean - self._pass_mean) / (self._pass_sd / np.sqrt(passed.size))
        else:
            pass_mean, z = (float(passed.mean()) if passed.size else np.nan), np.nan
        rising = bool(z > self.z_limit)
        finite = batch[np.isfinite(batch)]
        q = np.percentile(finite, [5, 25, 50, 75, 95]) if finite.size else np.full(5, np.nan)
        row = {
            "batch": len(self._rows) if label is None else label,
            "n": int(batch.size),
            "ks_statistic": ks.statistic,
            "p_value": ks.p_value,
            "score_drift": ks.drift,
            "reject_rate": ks.reject_rate,
            "review_rate": float(np.mean(batch >= self.policy.review_threshold_)),
            "reject_alert": ks.reject_alert,
            "pass_mean": pass_mean,
            "pass_mean_z": float(z),
            "pass_mean_rising": rising,
            "alert": bool(ks.drift or ks.reject_alert or rising),
            **dict(zip(("q05", "q25", "q50", "q75", "q95"), (float(v) for v in q))),
        }
        self._rows.append(row)
        return row

    @property
    def history_(self):
        import pandas as pd

        return pd.DataFrame(self._rows, columns=list(self._COLUMNS))

    def plot(self, ax=None):
        """Score distribution per batch over time, with the thresholds and the alerts.

        See :func:`greyanom.plotting.plot_score_drift`.
        """
        from greyanom.plotting import plot_score_drift

        return plot_score_drift(self.history_, policy=self.policy, ax=ax)
