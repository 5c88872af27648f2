"""RegisteredPixelDetector: contract, registration, determinism, persistence, bad input."""

import pickle

import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from greyanom import RegisteredPixelDetector
from greyanom.datasets import make_die_images, make_wafer_images
from greyanom.image import RegisteredExplanation

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def data():
    return make_wafer_images(n_train=40, n_test=20, image_size=64, anomaly_fraction=0.5, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    return RegisteredPixelDetector(n_components=5, random_state=0).fit(data.X_train)


def _texture(size=64, seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    return (0.5 + 0.15 * img / img.std()).clip(0, 1)


def test_public_and_contract(fitted, data):
    import greyanom.image

    assert greyanom.image.RegisteredPixelDetector is RegisteredPixelDetector
    s = fitted.score(data.X_test)
    assert s.shape == (len(data.X_test),)
    np.testing.assert_allclose(fitted.score_samples(data.X_test), -s)
    np.testing.assert_allclose(fitted.decision_function(data.X_test), -s - fitted.offset_)
    assert set(np.unique(fitted.predict(data.X_test))) <= {-1, 1}
    assert fitted.threshold_ == -fitted.offset_
    assert fitted.image_shape_ == (64, 64) and fitted.n_features_in_ == 64 * 64
    assert fitted.n_components_ == 5 and fitted.components_.shape == (5, 64 * 64)
    assert fitted.model_nbytes_ > 0


def test_init_only_stores_and_clone(fitted):
    det = RegisteredPixelDetector(n_components=3, heatmap_sigma=-1.0)  # invalid, but not checked yet
    assert det.heatmap_sigma == -1.0
    c = clone(fitted)
    assert c.get_params() == fitted.get_params()
    assert not hasattr(c, "median_")


def test_fit_returns_self_and_unfitted_raises(data):
    det = RegisteredPixelDetector(n_components=0)
    with pytest.raises(NotFittedError):
        det.score(data.X_test)
    assert det.fit(data.X_train) is det


def test_detects_and_localises_an_obvious_defect(fitted, data):
    from sklearn.metrics import roc_auc_score

    good = data.X_test[data.y_test == 0]
    bad = good.copy()
    bad[:, 30:34, 20:24] = np.clip(bad[:, 30:34, 20:24] + 0.3, 0, 1)
    s = fitted.score(np.concatenate([good, bad]))
    assert roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(bad))], s) > 0.95
    heat = fitted.explain(bad).heatmap
    peaks = [np.unravel_index(np.argmax(h), h.shape) for h in heat]
    assert all(28 <= r <= 35 and 18 <= c <= 25 for r, c in peaks)


def test_registration_recovers_a_known_subpixel_shift():
    ref = _texture()
    rng = np.random.default_rng(1)
    X_train = np.stack([(ref + 0.01 * rng.standard_normal(ref.shape)).clip(0, 1) for _ in range(10)])
    det = RegisteredPixelDetector(n_components=0, upsample_factor=20).fit(X_train.astype(np.float32))
    true = np.array([0.35, -0.8])
    moved = ndimage.shift(ref, true, order=3, mode="nearest")[None].clip(0, 1)
    e = det.explain(moved)
    assert isinstance(e, RegisteredExplanation)
    # shifting the moved image by e.shift registers it: e.shift = -true
    np.testing.assert_allclose(e.shift[0], -true, atol=0.1)
    assert np.abs(det.train_shifts_).max() < 0.2


def test_heatmap_is_in_the_test_image_frame():
    ref = _texture(seed=2)
    rng = np.random.default_rng(3)
    X_train = np.stack([(ref + 0.01 * rng.standard_normal(ref.shape)).clip(0, 1) for _ in range(12)])
    det = RegisteredPixelDetector(n_components=0).fit(X_train.astype(np.float32))
    test = ndimage.shift(ref, (2.0, -3.0), order=3, mode="nearest").clip(0, 1)
    test[40:44, 20:24] = 1.0  # a defect at a known place of the test image
    heat = det.explain(test[None]).heatmap[0]
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert 39 <= r <= 44 and 19 <= c <= 24


def test_periodic_pattern_does_not_jump_a_period():
    data = make_wafer_images(n_train=10, n_test=4, image_size=128, jitter=1.0, random_state=3)
    det = RegisteredPixelDetector(n_components=0).fit(data.X_train)
    assert np.abs(det.train_shifts_).max() <= 1.5
    assert np.abs(det.explain(data.X_test).shift).max() <= 1.5


def test_max_shift_limits_the_estimate():
    ref = _texture(seed=4)
    X_train = np.stack([ref] * 5).astype(np.float32)
    det = RegisteredPixelDetector(n_components=0, max_shift=1.0).fit(X_train)
    moved = ndimage.shift(ref, (3.0, 0.0), order=3, mode="nearest")[None].clip(0, 1)
    np.testing.assert_array_equal(det.explain(moved).shift, 0.0)


def test_deterministic_and_batch_invariant(data, fitted):
    again = RegisteredPixelDetector(n_components=5, random_state=0).fit(data.X_train)
    np.testing.assert_array_equal(again.score(data.X_test), fitted.score(data.X_test))
    small = clone(fitted).set_params(batch_size=3).fit(data.X_train)
    np.testing.assert_allclose(small.score(data.X_test), fitted.score(data.X_test), rtol=1e-5)
    one_by_one = np.concatenate([fitted.score(data.X_test[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(one_by_one, fitted.score(data.X_test[:4]), rtol=1e-5)


def test_explain_fields(fitted, data):
    e = fitted.explain(data.X_test)
    assert e.heatmap.shape == data.X_test.shape and e.heatmap.dtype == np.float32
    assert e.reconstruction.shape == data.X_test.shape
    assert e.shift.shape == (len(data.X_test), 2)
    np.testing.assert_allclose(e.score, fitted.score(data.X_test))
    assert set(e.to_dict()) == {"heatmap", "score", "reconstruction", "shift"}
    # the model in the image's grey levels is close to a normal image
    assert np.abs(e.reconstruction - data.X_test)[data.y_test == 0].mean() < 0.1


def test_normalisation_cancels_gain_and_gradient(fitted, data):
    x = data.X_test[data.y_test == 0][:1]
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    changed = (0.8 * x + 0.05 + 0.05 * xx).clip(0, 1).astype(np.float32)
    np.testing.assert_allclose(fitted.score(changed), fitted.score(x), rtol=0.15)


def test_pca_modes_help_on_die_to_die_variation():
    from sklearn.metrics import roc_auc_score

    d = make_wafer_images(n_train=60, n_test=30, image_size=64, defect_types=["stain"], random_state=1)
    a0 = roc_auc_score(d.y_test, RegisteredPixelDetector(n_components=0).fit(d.X_train).score(d.X_test))
    a8 = roc_auc_score(d.y_test, RegisteredPixelDetector(n_components=8, random_state=0).fit(d.X_train).score(d.X_test))
    assert a8 >= a0 - 0.05


def test_pickle_round_trip(fitted, data):
    det = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(det.score(data.X_test), fitted.score(data.X_test))


def test_save_load_round_trip(fitted, data, tmp_path):
    pytest.importorskip("safetensors")
    path = fitted.save(tmp_path / "reg.safetensors")
    det = RegisteredPixelDetector.load(path)
    assert det.get_params() == fitted.get_params()
    np.testing.assert_allclose(det.score(data.X_test), fitted.score(data.X_test), rtol=1e-10)
    assert det.threshold_ == fitted.threshold_ and det.image_shape_ == fitted.image_shape_
    np.testing.assert_array_equal(det.predict(data.X_test), fitted.predict(data.X_test))


def test_persistence_hooks(fitted):
    arrays = fitted._state_arrays()
    det = RegisteredPixelDetector(**fitted.get_params())
    det._set_json_state(fitted._json_state())
    det._set_state_arrays(arrays)
    assert det.n_components_ == fitted.n_components_
    with pytest.raises(ValueError, match="lacks the array 'std_'"):
        det._set_state_arrays({k: v for k, v in arrays.items() if k != "std_"})


def test_load_rejects_other_files(tmp_path):
    pytest.importorskip("safetensors")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a greyanom detector file"):
        RegisteredPixelDetector.load(bad)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": -1}, "n_components"),
        ({"upsample_factor": 0}, "upsample_factor"),
        ({"std_floor": 0.0}, "std_floor"),
        ({"score_reduction": "median"}, "score_reduction"),
        ({"max_shift": -2.0}, "max_shift"),
    ],
)
def test_bad_params(params, match, data):
    with pytest.raises(ValueError, match=match):
        RegisteredPixelDetector(**params).fit(data.X_train)


def test_bad_input(fitted, data):
    with pytest.raises(ValueError, match="at least 3 images"):
        RegisteredPixelDetector().fit(data.X_train[:2])
    with pytest.raises(ValueError, match="values in"):
        RegisteredPixelDetector().fit(data.X_train * 3)
    with pytest.raises(ValueError, match="NaN"):
        bad = data.X_train.copy()
        bad[0, 0, 0] = np.nan
        RegisteredPixelDetector().fit(bad)
    with pytest.raises(ValueError, match="fitted on images of size"):
        fitted.score(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        fitted.score(np.array([["a"]], dtype=object))


def test_constant_images_do_not_divide_by_zero():
    X = np.full((5, 32, 32), 0.5, np.float32)
    det = RegisteredPixelDetector(n_components=0).fit(X)
    assert np.isfinite(det.score(X)).all()


def test_die_generator_seeded_and_masked():
    a = make_die_images(n_train=3, n_test=10, image_size=128, random_state=0)
    b = make_die_images(n_train=3, n_test=10, image_size=128, random_state=0)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert a.X_train.dtype == np.float32 and 0 <= a.X_train.min() and a.X_train.max() <= 1
    defect = a.y_test == 1
    assert int(defect.sum()) == 5
    assert a.masks_test[defect].reshape(5, -1).any(axis=1).all()
    assert not a.masks_test[~defect].any()
    assert set(a.defect_types_test[defect]) <= {"bridge", "open", "void", "residue", "cluster"}
    with pytest.raises(ValueError, match="defect_types"):
        make_die_images(defect_types=["scratch"])
    with pytest.raises(ValueError, match="image_size"):
        make_die_images(image_size=16)


def test_line_filter_finds_a_faint_thin_scratch():
    from greyanom.image._registered import _line_response

    rng = np.random.default_rng(5)
    z = rng.standard_normal((2, 64, 64))
    z[1, 32, 8:56] += 2.0  # one-pixel line of 2 sigma: within the noise's peak pixel by pixel
    resp = _line_response(z, 6.0, 8)
    assert resp.shape == z.shape and resp.dtype == np.float32
    # averaged along the line it stands far above the noise image's peak
    assert resp[1].max() > 1.5 * resp[0].max()
    r, _ = np.unravel_index(resp[1].argmax(), (64, 64))
    assert 31 <= r <= 33
    # the response along a line of each orientation is the same (no orientation is favoured)
    flip = _line_response(np.swapaxes(z, 1, 2), 6.0, 8)
    np.testing.assert_allclose(flip[1].max(), resp[1].max(), rtol=1e-4)


def test_scales_are_calibrated_and_can_be_switched_off(data):
    det = RegisteredPixelDetector(n_components=5, random_state=0).fit(data.X_train)
    assert det.norm_.shape == (3, 64, 64) and det.scale_calibration_.shape == (3,)
    one = RegisteredPixelDetector(n_components=5, blob_sigma=0, line_length=0, random_state=0).fit(data.X_train)
    assert one.norm_.shape == (1, 64, 64)
    # the calibrated training heatmaps peak near 1 in the median image
    assert 0.8 < float(np.median(det.decision_scores_)) < 2.5


def test_embed_is_the_pca_coordinates_of_the_registered_images(fitted, data):
    X = data.X_test[:6]
    Z = fitted.embed(X)
    assert Z.shape == (6, fitted.n_components_) and np.isfinite(Z).all()
    aligned, _ = fitted._register(fitted._validated(X), fitted.reference_.astype(np.float64))
    expected = (aligned.reshape(6, -1) - fitted.mean_.ravel()) @ fitted.components_.astype(np.float64).T
    np.testing.assert_allclose(Z, expected, rtol=1e-6, atol=1e-6)
    # registration first: a shifted copy embeds near the image, far nearer than without registration
    shifted = np.roll(X, (2, -3), axis=(1, 2))
    drift = np.linalg.norm(fitted.embed(shifted) - Z, axis=1)

    def unregistered(A):
        flat = fitted._normalise(fitted._validated(A)).reshape(len(A), -1) - fitted.mean_.ravel()
        return flat @ fitted.components_.astype(np.float64).T

    naive = np.linalg.norm(unregistered(shifted) - unregistered(X), axis=1)
    assert np.median(drift) < 0.5 * np.median(naive)


def test_embed_feeds_the_feature_drift_monitor(fitted, data):
    from greyanom.drift import FeatureDriftMonitor

    monitor = FeatureDriftMonitor(fitted.embed(data.X_train))
    result = monitor.test(fitted.embed(data.X_test))
    assert result.drifted.shape == (fitted.n_components_,)


def test_embed_without_modes_is_a_clear_error(data):
    det = RegisteredPixelDetector(n_components=0).fit(data.X_train[:10])
    with pytest.raises(ValueError, match="n_components"):
        det.embed(data.X_test[:2])
