"""The device post-processing (greyanom.image._torch._post) against the SciPy/NumPy host path."""

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

torch = pytest.importorskip("torch")

from greyanom.image import _backbone  # noqa: E402
from greyanom.image._reduce import reduce_error_maps  # noqa: E402
from greyanom.image._torch import _post  # noqa: E402

RTOL = 1e-5


def _maps(shape, seed=0):
    return np.random.default_rng(seed).gamma(2.0, 1.0, size=shape).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 2.5, 4.0])
def test_gaussian_kernel_is_scipys(sigma):
    if sigma == 0:
        assert _post.gaussian_kernel(0.0).tolist() == [1.0]
        return
    # SciPy's kernel: the response to a unit impulse in the middle of a long signal
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(4 * radius + 1)
    impulse[2 * radius] = 1.0
    expected = gaussian_filter(impulse, sigma)[radius : 3 * radius + 1]
    np.testing.assert_allclose(_post.gaussian_kernel(sigma).numpy(), expected, rtol=RTOL, atol=1e-8)


@pytest.mark.parametrize(
    "shape,sigma",
    [((3, 20, 17), 1.0), ((2, 32, 32), 4.0), ((2, 5, 7), 2.0), ((1, 3, 4), 3.0), ((2, 1, 9), 1.5)],
)
def test_gaussian_blur_equals_scipy_reflect(torch_device, shape, sigma):
    # includes radii equal to and beyond the map's side (SciPy keeps reflecting)
    maps = _maps(shape)
    expected = gaussian_filter(maps, sigma=(0.0, sigma, sigma), mode="reflect")
    got = _post.gaussian_blur(torch.from_numpy(maps).to(torch_device), _post.gaussian_kernel(sigma))
    assert got.device.type == torch_device
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=RTOL, atol=1e-6)


def test_gaussian_blur_identity_kernel_and_bad_shapes():
    maps = torch.from_numpy(_maps((2, 8, 8)))
    assert torch.equal(_post.gaussian_blur(maps, _post.gaussian_kernel(0.0)), maps)
    with pytest.raises(ValueError, match=r"\(n, h, w\)"):
        _post.gaussian_blur(maps[0], _post.gaussian_kernel(1.0))
    with pytest.raises(ValueError, match="odd"):
        _post.gaussian_blur(maps, torch.ones(4))


def test_upsample_maps_equals_backbone(torch_device):
    maps = _maps((3, 7, 9))
    expected = _backbone.upsample_maps(maps, (50, 61))
    got = _post.upsample_maps(torch.from_numpy(maps).to(torch_device), [50, 61])
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.5, 1.0, 0.125])
def test_topk_count_matches_reduce_error_maps(fraction):
    for n in (1, 7, 8, 100, 400, 65536):
        assert _post.topk_count(fraction, n) == max(1, int(round(fraction * n)))


@pytest.mark.parametrize("reduction", ["mean", "max", "topk"])
@pytest.mark.parametrize("shape", [(4, 16, 24), (5, 30)])
def test_reduce_maps_equals_reduce_error_maps(torch_device, reduction, shape):
    maps = _maps(shape, seed=1)
    k = _post.topk_count(0.05, int(np.prod(shape[1:])))
    got = _post.reduce_maps(torch.from_numpy(maps).to(torch_device), reduction, k)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    expected = reduce_error_maps(maps, reduction, topk_fraction=0.05)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=RTOL)


def test_blur_then_reduce_equals_reduce_with_smoothing(torch_device):
    maps = _maps((3, 40, 40), seed=2)
    expected = reduce_error_maps(maps, "topk", smoothing_sigma=2.0, topk_fraction=0.02)
    t = _post.gaussian_blur(torch.from_numpy(maps).to(torch_device), _post.gaussian_kernel(2.0))
    got = _post.reduce_maps(t, "topk", _post.topk_count(0.02, 1600))
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=RTOL)


def test_reduce_maps_rejects_bad_arguments():
    maps = torch.ones(2, 4, 4)
    with pytest.raises(ValueError, match="reduction"):
        _post.reduce_maps(maps, "median", 1)
    with pytest.raises(ValueError, match="k must be"):
        _post.reduce_maps(maps, "topk", 17)


def test_reduce_maps_bfloat16_maps_reduce_in_float32():
    maps = torch.from_numpy(_maps((2, 8, 8))).to(torch.bfloat16)
    got = _post.reduce_maps(maps, "mean", 1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), maps.float().mean(dim=(1, 2)).numpy(), rtol=1e-6)


def test_zscore_helpers(torch_device):
    rng = np.random.default_rng(3)
    r = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    mean = rng.standard_normal((3, 5, 6)).astype(np.float32)
    inv_var = rng.uniform(0.5, 2.0, (3, 5, 6)).astype(np.float32)
    t = lambda a: torch.from_numpy(a).to(torch_device)  # noqa: E731
    got = _post.squared_zscore_map(t(r), t(mean), t(inv_var)).cpu().numpy()
    np.testing.assert_allclose(got, (((r - mean) ** 2) * inv_var).mean(axis=1), rtol=RTOL)
    plain = _post.squared_zscore_map(t(r)).cpu().numpy()
    np.testing.assert_allclose(plain, (r**2).mean(axis=1), rtol=RTOL)
    z = _post.standardize(t(r), t(mean), t(inv_var)).cpu().numpy()
    np.testing.assert_allclose(z, (r - mean) * inv_var, rtol=RTOL)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_tensor_functions_are_torchscript_compilable():
    for name in ("gaussian_kernel", "blur_matrix", "gaussian_blur", "upsample_maps", "topk_count", "reduce_maps",
                 "standardize", "squared_zscore_map"):
        torch.jit.script(getattr(_post, name))
    blur = torch.jit.script(_post.gaussian_blur)
    maps = torch.from_numpy(_maps((2, 9, 9)))
    k = _post.gaussian_kernel(1.0)
    assert torch.allclose(blur(maps, k), _post.gaussian_blur(maps, k))
    topk = torch.jit.script(_post.topk_count)
    assert [topk(0.5, n) for n in (1, 3, 5, 7)] == [_post.topk_count(0.5, n) for n in (1, 3, 5, 7)]
    assert torch.jit.script(_post.reduce_maps)(maps, "topk", 5).shape == (2,)


def test_to_device_and_back(torch_device):
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    t = _post.to_device(a, torch_device)
    assert t.device.type == torch_device and t.dtype == torch.float32
    np.testing.assert_array_equal(_post.to_host(t * 2), 2 * a.astype(np.float32))
    if torch_device == "cpu":  # no copy on the CPU for a contiguous float32 array
        b = np.ones((2, 2), np.float32)
        assert np.shares_memory(_post.to_device(b, "cpu").numpy(), b)
    frozen = np.ones((2, 2), np.float32)
    frozen.flags.writeable = False  # e.g. a decoded request buffer: copied, no torch warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = _post.to_device(frozen, torch_device)
    assert _post.to_host(t).sum() == 4.0
    if torch_device == "cpu":
        assert not np.shares_memory(t.numpy(), frozen)


def test_resolve_batch_size():
    assert _post.resolve_batch_size("auto", "cpu") == _post.CPU_BATCH_SIZE == 32
    assert _post.resolve_batch_size("auto", torch.device("cpu")) == 32
    assert _post.resolve_batch_size(5, "cpu") == 5
    for bad in ("big", 0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            _post.resolve_batch_size(bad, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_batch_size_cuda():
    assert _post.resolve_batch_size("auto", "cuda") == _post.CUDA_BATCH_SIZE == 64


def test_network_dtype_and_autocast(torch_device):
    assert _post.network_dtype("float32") is torch.float32
    assert _post.network_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="inference_dtype"):
        _post.network_dtype("float16x")
    conv = torch.nn.Conv2d(1, 2, 3).to(torch_device)
    x = torch.ones(1, 1, 5, 5, device=torch_device)
    with _post.autocast_network(torch_device, "bfloat16"):
        assert conv(x).dtype == torch.bfloat16
    with _post.autocast_network(torch_device, "float32"):
        assert conv(x).dtype == torch.float32


def _frozen(a):
    a = np.array(a, dtype=np.float32)
    a.flags.writeable = False  # a loaded model's or a decoded request's buffer
    return a


def test_read_only_host_arrays_reach_torch_without_a_warning():
    """Host → torch conversions copy read-only arrays instead of making torch warn."""
    from greyanom.image._torch import _infer

    maps = _frozen(_maps((2, 5, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        up = _backbone.upsample_maps(maps, (10, 12))
        t = _infer._tensor(_frozen(np.ones((1, 4, 4))), 0.0, "cpu")
    assert up.shape == (2, 10, 12) and float(t.sum()) == 16.0


def test_loaded_patch_detector_arrays_reach_torch_without_a_warning():
    from greyanom.image._padim import PaDiMDetector

    det = PaDiMDetector.__new__(PaDiMDetector)
    det.device_ = torch.device("cpu")
    det.mean_, det.precision_ = _frozen(np.zeros((3, 2))), _frozen(np.ones((3, 2, 2)))
    det.channel_index_ = np.arange(2)
    det.channel_index_.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = det._on_device()
    assert float(tensors["precision_"].sum()) == 12.0
