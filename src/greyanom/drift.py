"""Drift monitoring: is the production data still the data the detector and its policy were made for?

* :class:`ScoreDriftMonitor`: two-sample Kolmogorov-Smirnov test of a batch of anomaly scores
  against reference scores (:func:`scipy.stats.ks_2samp`), and the REJECT-rate alert of a
  :class:`~greyanom.decision.DecisionPolicy`.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
from scipy import stats

__all__ = ["ScoreDriftMonitor", "ScoreDriftResult"]


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
