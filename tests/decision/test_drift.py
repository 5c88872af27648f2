import dataclasses

import numpy as np
import pytest
from scipy import stats

from greyanom.decision import DecisionPolicy
from greyanom.drift import ScoreDriftMonitor


def test_score_drift_matches_scipy_and_is_frozen(rng):
    ref, batch = rng.normal(size=400), rng.normal(0.3, size=150)
    res = ScoreDriftMonitor(ref, alpha=0.01).test(batch)
    expected = stats.ks_2samp(ref, batch)
    assert res.statistic == pytest.approx(expected.statistic)
    assert res.p_value == pytest.approx(expected.pvalue)
    assert res.drift == (expected.pvalue < 0.01)
    assert res.reject_rate is None and res.reject_alert is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.p_value = 1.0


def test_false_alarm_rate_and_power():
    rng = np.random.default_rng(0)
    monitor = ScoreDriftMonitor(rng.gamma(2.0, size=1000), alpha=0.05)
    null = np.mean([monitor.test(rng.gamma(2.0, size=100)).drift for _ in range(300)])
    shifted = np.mean([monitor.test(rng.gamma(2.0, size=100) * 1.5).drift for _ in range(100)])
    assert null <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)
    assert shifted > 0.8


def test_reject_rate_alert_and_pass_only(rng):
    cal = rng.normal(size=400)
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(cal)
    monitor = ScoreDriftMonitor(cal, policy=policy, reject_limit=0.05)
    calm = monitor.test(rng.normal(size=300))
    assert calm.reject_rate < 0.05 and not calm.reject_alert
    bad = monitor.test(np.r_[rng.normal(size=270), np.full(30, np.inf)])
    assert bad.reject_rate == pytest.approx(0.1, abs=0.03) and bad.reject_alert and bad.alert
    pass_only = ScoreDriftMonitor(cal, policy=policy, pass_only=True)
    assert pass_only.reference_.max() < policy.review_threshold_
    batch = np.r_[rng.normal(size=270), np.full(30, 50.0)]
    res = pass_only.test(batch)
    # the 30 outliers leave the KS test (they are not PASS) and show in the REJECT rate instead
    assert res.n_batch == np.sum(batch < policy.review_threshold_) < 270
    assert not res.drift and res.reject_rate == pytest.approx(0.1, abs=0.03) and res.reject_alert
    assert monitor.test(batch).drift


def test_bad_input(rng):
    with pytest.raises(ValueError, match="alpha"):
        ScoreDriftMonitor(rng.normal(size=10), alpha=0)
    with pytest.raises(ValueError, match="NaN"):
        ScoreDriftMonitor([0.0, np.nan])
    with pytest.raises(ValueError, match="at least 1"):
        ScoreDriftMonitor([])
    with pytest.raises(ValueError, match="pass_only"):
        ScoreDriftMonitor(rng.normal(size=10), pass_only=True)
    with pytest.raises(ValueError, match="fitted"):
        ScoreDriftMonitor(rng.normal(size=10), policy=DecisionPolicy())
    with pytest.raises(ValueError, match="NaN"):
        ScoreDriftMonitor(rng.normal(size=10)).test([np.nan])
