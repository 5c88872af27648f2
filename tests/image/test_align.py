"""The one registration helper (greyanom.image._align): windowed phase correlation, used by both
RegisteredPixelDetector and ConvVAEDetector(register=True)."""

import sys

import numpy as np
import pytest
from scipy import ndimage

from greyanom.image import _align

pytest.importorskip("skimage")

TRUE = np.array([0.4, -0.7])


def _periodic_pair(seed, period=8, size=64):
    """A crop of a periodic scene and the same crop of the scene shifted by TRUE (sub-pixel)."""
    rng = np.random.default_rng(seed)
    tile = ndimage.gaussian_filter(rng.standard_normal((period, period)), 1.0, mode="wrap")
    scene = np.tile(tile, (size // period + 2, size // period + 2))
    moved = ndimage.shift(scene, TRUE, order=3, mode="wrap")
    return scene[4 : 4 + size, 4 : 4 + size], moved[4 : 4 + size, 4 : 4 + size]


@pytest.mark.parametrize("seed", [1, 2])
def test_periodic_pattern_subpixel_shift_is_recovered(seed):
    ref, moved = _periodic_pair(seed)
    est = _align.phase_shifts(moved[None], ref)[0]
    np.testing.assert_allclose(est, -TRUE, atol=0.11)  # shifting by est undoes TRUE


@pytest.mark.parametrize("seed", [1, 2])
def test_without_the_window_the_periodic_pattern_jumps_a_period(seed, monkeypatch):
    ref, moved = _periodic_pair(seed)
    monkeypatch.setattr(_align, "hann_window", lambda shape: np.ones(shape))
    est = _align.phase_shifts(moved[None], ref)[0]
    assert np.abs(est + TRUE).max() > 4  # a whole period (8 px) off: why the window is there


def test_constant_images_max_shift_and_fft_reference():
    ref, moved = _periodic_pair(1)
    est = _align.phase_shifts(np.stack([moved, np.full_like(moved, 0.3)]), _align.windowed_fft(ref))
    np.testing.assert_allclose(est[0], -TRUE, atol=0.11)
    np.testing.assert_array_equal(est[1], 0.0)
    np.testing.assert_array_equal(_align.phase_shifts(moved[None], np.zeros_like(ref)), 0.0)
    np.testing.assert_array_equal(_align.phase_shifts(moved[None], ref, max_shift=0.5), 0.0)


def test_missing_scikit_image_names_the_image_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.registration", None)
    ref, moved = _periodic_pair(1)
    with pytest.raises(ImportError, match=r"greyanom\[image\]"):
        _align.estimate_shifts(moved[None], ref)


def _spy(monkeypatch):
    calls = []
    original = _align.phase_shifts

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(_align, "phase_shifts", spy)
    return calls


def _shifted_textures(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    tex = 0.5 + 0.15 * tex / tex.std()
    X = _align.apply_shifts(np.repeat(tex[None], n, axis=0), rng.uniform(-1.5, 1.5, (n, 2)))
    return np.clip(X + 0.01 * rng.standard_normal(X.shape), 0, 1).astype(np.float32)


def test_registered_pixel_detector_calls_the_helper(monkeypatch):
    from greyanom import RegisteredPixelDetector

    calls = _spy(monkeypatch)
    X = _shifted_textures(12)
    det = RegisteredPixelDetector(n_components=0, n_iter=1).fit(X)
    assert calls and calls[0] == 12  # the training images, registered by the helper
    n_fit = len(calls)
    det.score(X[:3])
    assert len(calls) == n_fit + 1 and calls[-1] == 3


def test_vae_register_calls_the_helper(monkeypatch):
    pytest.importorskip("torch")
    from greyanom import ConvVAEDetector

    calls = _spy(monkeypatch)
    X = _shifted_textures(24)
    det = ConvVAEDetector(input_space="pixels", channels=(4, 8), latent_dim=4, bottleneck_channels=2,
                          max_epochs=1, batch_size=8, n_jobs=1, random_state=0, register=True).fit(X)
    n_fit = len(calls)
    assert n_fit >= 2
    det.score(X[:3])
    assert len(calls) > n_fit and calls[-1] == 3
