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


def test_feature_drift_matches_scipy_and_corrections(rng):
    from greyanom.drift import FeatureDriftMonitor

    ref = rng.normal(size=(400, 6))
    batch = rng.normal(size=(150, 6))
    batch[:, 2] += 0.8
    batch[:, 4] *= 1.8
    raw = np.array([stats.ks_2samp(ref[:, j], batch[:, j]).pvalue for j in range(6)])
    bon = FeatureDriftMonitor(ref, alpha=0.01).test(batch)
    np.testing.assert_allclose(bon.p_values, np.minimum(1, raw * 6))
    bh = FeatureDriftMonitor(ref, alpha=0.01, correction="fdr_bh").test(batch)
    np.testing.assert_allclose(bh.p_values, stats.false_discovery_control(raw))
    assert bon.drift and bon.drifted[2] and bon.drifted[4] and bon.n_drifted == 2
    assert bon.mean_shift[2] == pytest.approx((batch[:, 2].mean() - ref[:, 2].mean()) / ref[:, 2].std(ddof=1))
    assert bon.variance_ratio[4] == pytest.approx(batch[:, 4].var(ddof=1) / ref[:, 4].var(ddof=1))
    assert bon.variance_ratio[4] > 2.5 and abs(bon.mean_shift[0]) < 0.3
    assert bon.p_value == bon.p_values.min()


def test_feature_drift_false_alarm_rate_bonferroni():
    from greyanom.drift import FeatureDriftMonitor

    rng = np.random.default_rng(1)
    monitor = FeatureDriftMonitor(rng.normal(size=(500, 16)), alpha=0.05)
    alarms = np.mean([monitor.test(rng.normal(size=(100, 16))).drift for _ in range(200)])
    assert alarms <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


def test_feature_drift_bad_input(rng):
    from greyanom.drift import FeatureDriftMonitor

    with pytest.raises(ValueError, match="correction"):
        FeatureDriftMonitor(rng.normal(size=(10, 2)), correction="holm")
    with pytest.raises(ValueError, match="NaN or infinite"):
        FeatureDriftMonitor(np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="dimensions"):
        FeatureDriftMonitor(rng.normal(size=(10, 2))).test(rng.normal(size=(5, 3)))


def test_rolling_monitor_alerts_and_plot(rng):
    import matplotlib

    matplotlib.use("Agg")
    from greyanom.drift import RollingDriftMonitor
    from greyanom.plotting import plot_score_drift

    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(rng.normal(size=1000))
    monitor = RollingDriftMonitor(policy, alpha=0.01, reject_limit=0.05)
    for _ in range(3):
        monitor.update(rng.normal(size=400))
    monitor.update(np.r_[rng.normal(size=360), np.full(40, np.inf)], label="bad lot")
    monitor.update(rng.normal(loc=0.3, size=400) , label="stale")
    h = monitor.history_
    assert h["batch"].tolist() == [0, 1, 2, "bad lot", "stale"]
    assert not h["alert"][:3].any()
    assert h.loc[3, "reject_alert"] and h.loc[3, "reject_rate"] >= 0.1
    assert h.loc[4, "pass_mean_rising"] and h.loc[4, "score_drift"]
    assert (h["q05"] <= h["q50"]).all() and (h["q50"] <= h["q95"]).all()
    ax = monitor.plot()
    assert len(ax.get_xticklabels()) == 5
    with pytest.raises(ValueError, match="history lacks"):
        plot_score_drift(h.drop(columns="q50"))
    with pytest.raises(ValueError, match="fitted"):
        RollingDriftMonitor(DecisionPolicy())


def test_embed_feeds_the_feature_monitor(rng):
    from greyanom import PCADetector
    from greyanom.drift import FeatureDriftMonitor

    X = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 12))
    det = PCADetector(n_components=3).fit(X[:200])
    Z = det.embed(X[200:])
    np.testing.assert_allclose(Z, (X[200:] - det.mean_) @ det.components_.T)
    ref = det.embed(X[200:])
    monitor = FeatureDriftMonitor(ref)
    assert not monitor.test(det.embed(X[:100])).drift
    shift = ref[:, 0].std() * det.components_[0]  # one sd along the first component
    result = monitor.test(det.embed(X[:100] + shift))
    assert result.drift and result.drifted[0]
