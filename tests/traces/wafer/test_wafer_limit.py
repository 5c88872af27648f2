"""The wafer control limit: a lognormal prediction limit from the cross-fitted training scores."""

import numpy as np
import pytest
from scipy import stats

from greyanom import MultiwayPCADetector
from greyanom.base import threshold_from_scores
from greyanom.datasets import make_pi_lots
from greyanom.traces._wafer_scorer import wafer_limit


def test_limit_is_the_lognormal_prediction_limit():
    s = np.exp(np.random.default_rng(0).normal(0.3, 0.4, size=80))
    logs = np.log(s)
    expected = np.exp(logs.mean() + stats.t.ppf(0.99, 79) * logs.std(ddof=1) * np.sqrt(1 + 1 / 80))
    assert wafer_limit(s, 0.01) == pytest.approx(expected, rel=1e-12)
    # on many lognormal scores it is the true quantile
    big = np.exp(np.random.default_rng(1).normal(0.3, 0.4, size=200_000))
    assert wafer_limit(big, 0.01) == pytest.approx(np.exp(0.3 + 0.4 * stats.norm.ppf(0.99)), rel=0.01)
    assert wafer_limit(big, 0.05) < wafer_limit(big, 0.01)


@pytest.mark.parametrize("n, contamination", [(20, 0.05), (80, 0.01)])
def test_a_new_score_exceeds_the_limit_with_the_nominal_probability(n, contamination):
    """Coverage: over many training samples of lognormal scores, the chance that a new score exceeds
    the limit (exact for each sample: the normal tail beyond its log) averages ``contamination``. The
    plug-in quantile of the fitted lognormal (the limit before) is exceeded more often."""
    rng = np.random.default_rng(5)
    mu, sd = 0.3, 0.4
    samples = np.exp(rng.normal(mu, sd, size=(4000, n)))
    exceed = np.array([stats.norm.sf((np.log(wafer_limit(s, contamination)) - mu) / sd) for s in samples])
    assert exceed.mean() == pytest.approx(contamination, rel=0.06)
    logs = np.log(samples)
    plug_in = logs.mean(axis=1) + stats.norm.ppf(1 - contamination) * logs.std(axis=1, ddof=1)
    assert stats.norm.sf((plug_in - mu) / sd).mean() > 1.15 * contamination


def test_limit_follows_the_scores_units():
    s = np.exp(np.random.default_rng(2).normal(size=50))
    assert wafer_limit(1e-150 * s, 0.01) == pytest.approx(1e-150 * wafer_limit(s, 0.01), rel=1e-12)
    assert wafer_limit(1e150 * s, 0.01) == pytest.approx(1e150 * wafer_limit(s, 0.01), rel=1e-12)


def test_one_extreme_training_score_moves_it_less_than_the_empirical_percentile():
    s = np.exp(np.random.default_rng(3).normal(0.2, 0.3, size=80))
    odd = s.copy()
    odd[np.argmax(odd)] *= 3.0  # one unusual training wafer
    moved_lognormal = wafer_limit(odd, 0.01) / wafer_limit(s, 0.01)
    moved_percentile = threshold_from_scores(odd, 0.01) / threshold_from_scores(s, 0.01)
    assert 1.0 < moved_lognormal < moved_percentile


def test_auto_non_positive_or_few_scores_fall_back_to_the_percentile():
    s = np.exp(np.random.default_rng(4).normal(size=40))
    assert wafer_limit(s, "auto") == threshold_from_scores(s, "auto")
    zero = np.r_[0.0, s]
    assert wafer_limit(zero, 0.01) == threshold_from_scores(zero, 0.01)
    assert wafer_limit(s[:2], 0.01) == threshold_from_scores(s[:2], 0.01)
    assert wafer_limit(np.full(5, 2.0), 0.01) == 2.0  # no spread: the common value


@pytest.mark.parametrize(
    "scores, contamination, match",
    [([1.0, np.nan, 2.0, 3.0], 0.01, "NaN or infinite"), ([], 0.01, "empty"),
     ([1.0, 2.0, 3.0], 0.9, "contamination"), ([1.0, 2.0, 3.0], "most", "contamination")],
)
def test_bad_input_is_a_clear_error(scores, contamination, match):
    with pytest.raises(ValueError, match=match):
        wafer_limit(scores, contamination)


def test_multiway_pca_sets_both_limits_from_it():
    lots = make_pi_lots(n_lots=4, wafers_per_lot=8, sensors=("v",), random_state=0)
    det = MultiwayPCADetector(group_keys=("sensor",), contamination=0.05, random_state=0).fit(lots)
    limit = wafer_limit(det.wafer_heldout_scores_.to_numpy(), 0.05)
    assert det.wafer_threshold_ == limit and det.threshold_ == limit and det.offset_ == -limit
    s = det.score_wafers(lots)
    np.testing.assert_array_equal(det.predict_wafers(lots).to_numpy(), np.where(s > limit, -1, 1))
    np.testing.assert_array_equal(det.predict(lots), np.where(s > limit, -1, 1))
