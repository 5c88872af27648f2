import numpy as np
import pytest

from greyanom.base import BaseDetector, ImageExplanation, threshold_from_scores
from greyanom._validation import check_images


class _MeanDetector(BaseDetector):
    """Minimal detector: score = squared distance to the training mean."""

    def __init__(self, *, contamination="auto"):
        self.contamination = contamination

    def _fit(self, X):
        X = np.asarray(X, float)
        self.mean_ = X.mean(axis=0)
        return self._score(X)

    def _score(self, X):
        return ((np.asarray(X, float) - self.mean_) ** 2).sum(axis=1)


def test_sign_conventions(rng):
    X = rng.normal(size=(200, 3))
    det = _MeanDetector(contamination=0.1).fit(X)
    X_new = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    s = det.score(X_new)
    assert s[1] > s[0]
    np.testing.assert_array_equal(det.score_samples(X_new), -s)
    np.testing.assert_allclose(det.decision_function(X_new), -s - det.offset_)
    np.testing.assert_array_equal(det.predict(X_new), [1, -1])
    assert det.threshold_ == -det.offset_


def test_contamination_fraction_is_flagged_on_fresh_data(rng):
    X = rng.normal(size=(1000, 2))
    X_fresh = rng.normal(size=(20000, 2))
    for c in (0.01, 0.05, 0.2, 0.5):
        det = _MeanDetector(contamination=c).fit(X)
        frac = np.mean(det.predict(X_fresh) == -1)
        # binomial noise of the 1000 held-out scores that set the threshold, and of the fresh draw
        assert abs(frac - c) <= 4 * np.sqrt(c * (1 - c) / 1000) + 0.002
        np.testing.assert_allclose(det.decision_scores_, det.score(X))


def test_threshold_uses_held_out_scores(rng, monkeypatch):
    from greyanom.base import cross_fit_scores

    X = rng.normal(size=(200, 3))
    det = _MeanDetector(contamination=0.1).fit(X)
    held = cross_fit_scores(_MeanDetector(contamination=0.1), X, cv=5, random_state=0)
    assert np.median(held) > np.median(det.decision_scores_)
    seen = {}

    def spy(self, X, train_scores):
        seen["called"] = True
        return np.arange(10.0)

    monkeypatch.setattr(_MeanDetector, "_heldout_scores", spy)
    det = _MeanDetector(contamination=0.1).fit(X)
    assert seen["called"] and det.threshold_ == pytest.approx(np.percentile(np.arange(10.0), 90))


def test_too_few_items_fall_back_to_in_sample_scores_with_a_warning(rng):
    X = rng.normal(size=(2, 3))
    with pytest.warns(UserWarning, match="too few for held-out scores"):
        det = _MeanDetector(contamination=0.1).fit(X)
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 90))
    # 3 items: leave-one-out folds, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _MeanDetector(contamination=0.1).fit(rng.normal(size=(3, 3)))


def test_auto_threshold_is_robust_three_sigma():
    s = np.r_[np.arange(100.0), 1e6]  # one huge outlier must not move the limit
    med = np.median(s)
    mad = np.median(np.abs(s - med))
    assert threshold_from_scores(s, "auto") == pytest.approx(med + 3 * 1.4826 * mad)


@pytest.mark.parametrize("bad", [0.0, 0.6, -0.1, "sometimes"])
def test_bad_contamination_is_a_clear_error(bad, rng):
    with pytest.raises(ValueError, match="contamination"):
        _MeanDetector(contamination=bad).fit(rng.normal(size=(20, 2)))


def test_threshold_from_scores_rejects_bad_scores():
    with pytest.raises(ValueError, match="empty"):
        threshold_from_scores([], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        threshold_from_scores([1.0, np.nan], 0.1)


def test_image_explanation_has_named_fields():
    e = ImageExplanation(heatmap=np.zeros((2, 4, 4)), score=np.zeros(2))
    assert e.reconstruction is None
    assert set(e.to_dict()) == {"heatmap", "score", "reconstruction"}
    assert len(e) == 2
    with pytest.raises(TypeError):
        heatmap, score, recon = e  # not a tuple


class TestCheckImages:
    def test_accepts_channel_axis_and_uint8(self):
        x = np.full((2, 1, 5, 6), 255, np.uint8)
        out = check_images(x)
        assert out.shape == (2, 5, 6) and out.dtype == np.float32
        np.testing.assert_array_equal(out, 1.0)

    @pytest.mark.parametrize(
        "X, match",
        [
            (np.zeros((4, 4)), "dimension"),
            (np.zeros((0, 4, 4)), "empty"),
            (np.zeros((2, 3, 4, 4)), "channels"),
            (np.full((2, 4, 4), np.nan), "NaN"),
            (np.full((2, 4, 4), np.inf), "infinite"),
            (np.full((2, 4, 4), 1.5), r"\[0, 1\]"),
            (np.full((2, 4, 4), -0.1), r"\[0, 1\]"),
        ],
    )
    def test_bad_images_raise_value_error_naming_x(self, X, match):
        with pytest.raises(ValueError, match=match) as info:
            check_images(X, name="X_test")
        assert "X_test" in str(info.value)

    def test_wrong_types(self):
        with pytest.raises(TypeError, match="integer dtype"):
            check_images(np.zeros((2, 4, 4), np.int64))
        with pytest.raises(TypeError, match="numeric"):
            check_images(np.array([["a"]] * 2, dtype=object).reshape(2, 1, 1))


def test_top_level_help_is_short_and_shows_no_private_classes():
    """help(greyanom) is a page (as help(sklearn)): the detectors are named, not rendered in full."""
    import pydoc

    import greyanom

    text = pydoc.render_doc(greyanom, renderer=pydoc.plaintext)
    assert len(text.splitlines()) < 150, len(text.splitlines())
    assert "Mixin" not in text and "\nCLASSES\n" not in text
    for name in greyanom._PUBLIC:  # every public class is named in the docstring and importable
        assert name in greyanom.__doc__ and name in dir(greyanom)
        assert isinstance(getattr(greyanom, name), type)
