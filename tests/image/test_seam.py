"""The image seam: one save/load/pickle path on BaseImageDetector, one n_jobs meaning, torch code in _torch."""

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import greyanom
from greyanom import ConvVAEDetector, PaDiMDetector, PatchCoreDetector, PCADetector
from greyanom._optional import n_threads_from_n_jobs
from greyanom.image._base import BaseImageDetector

pytest.importorskip("safetensors")

TINY_VAE = dict(input_space="pixels", channels=(4, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2, batch_size=8, n_jobs=1, random_state=0)


def _images(n=20, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.3 + 0.4 * (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy))
    return np.clip(base + 0.02 * rng.normal(size=(n, size, size)), 0, 1).astype(np.float32)


# -- structure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PCADetector, ConvVAEDetector, PaDiMDetector, PatchCoreDetector])
def test_no_image_detector_overrides_fit_or_persistence(cls):
    for klass in cls.__mro__[: cls.__mro__.index(BaseImageDetector)]:
        for name in ("fit", "_fit", "save", "load", "__getstate__", "__setstate__"):
            assert name not in vars(klass), f"{klass.__name__} overrides {name}"


def test_torch_code_lives_in_image_torch():
    code = (
        "import sys, greyanom, greyanom.image, greyanom.image._backbone\n"
        "assert 'torch' not in sys.modules\n"
        "import importlib.util as u\n"
        "assert u.find_spec('greyanom.image._efficientnet') is None\n"
        "assert u.find_spec('greyanom.image._torch._efficientnet') is not None\n"
        "assert u.find_spec('greyanom.image._torch._patch_ops') is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- n_jobs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_jobs", "expected"), [(None, 8), (1, 1), (3, 3), (16, 8), (-1, 8), (-2, 7), (-20, 1)]
)
def test_n_jobs_has_one_meaning(n_jobs, expected):
    assert n_threads_from_n_jobs(n_jobs, n_cpus=8) == expected


@pytest.mark.parametrize("bad", [0, 1.5, True, "2"])
def test_bad_n_jobs_is_a_value_error(bad):
    with pytest.raises(ValueError, match="n_jobs"):
        n_threads_from_n_jobs(bad)


@pytest.mark.parametrize("cls", [ConvVAEDetector, PaDiMDetector, PatchCoreDetector])
def test_every_torch_detector_accepts_the_same_n_jobs(cls):
    for ok in (None, -1, -2, 1, 4):
        cls(n_jobs=ok)._validate_params()
    with pytest.raises(ValueError, match="n_jobs"):
        cls(n_jobs=0)._validate_params()


# -- PCADetector save/load ------------------------------------------------------------------------------
def test_pca_save_load_images_and_tables(tmp_path):
    X = _images()
    det = PCADetector(n_components=5).fit(X)
    loaded = PCADetector.load(det.save(tmp_path / "pca.safetensors"))
    assert loaded.get_params() == det.get_params()
    np.testing.assert_array_equal(loaded.score(X), det.score(X))
    assert loaded.threshold_ == det.threshold_ and loaded.image_shape_ == (32, 32)
    rows = np.random.default_rng(1).normal(size=(50, 6))
    tab = PCADetector(n_components=2, score_reduction="mean").fit(rows)
    again = PCADetector.load(tab.save(tmp_path / "tab.safetensors"))
    assert again.image_shape_ is None and again.n_features_in_ == 6
    np.testing.assert_array_equal(again.score(rows), tab.score(rows))
    np.testing.assert_array_equal(again.predict(rows), tab.predict(rows))


def test_load_refuses_another_class_and_unknown_parameters(tmp_path):
    from greyanom._persist import load_arrays, save_arrays

    path = PCADetector(n_components=3).fit(_images()).save(tmp_path / "pca.safetensors")
    with pytest.raises(ValueError, match="PCADetector"):
        ConvVAEDetector.load(path)
    arrays, config = load_arrays(path, "PCADetector")
    config["params"]["colour_mode"] = "rgb"
    save_arrays(tmp_path / "future.safetensors", arrays, config)
    with pytest.raises(ValueError, match="colour_mode"):
        PCADetector.load(tmp_path / "future.safetensors")


# -- pickling -------------------------------------------------------------------------------------------
def test_pickles_carry_the_version_and_warn_on_another(monkeypatch):
    det = PCADetector(n_components=3).fit(_images())
    blob = pickle.dumps(det)
    assert det.__getstate__()["_greyanom_version"] == greyanom.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(pickle.loads(blob).score(_images(3)), det.score(_images(3)))
    state = det.__getstate__()
    state["_greyanom_version"] = "0.0.1"
    other = PCADetector.__new__(PCADetector)
    with pytest.warns(UserWarning, match="pickled by greyanom 0.0.1"):
        other.__setstate__(state)


def test_unrestorable_pickle_is_refused_with_a_clear_message():
    pytest.importorskip("torch")
    det = ConvVAEDetector(**TINY_VAE).fit(_images())
    state = det.__getstate__()
    key = next(iter(state["_module_arrays"]))
    state["_module_arrays"][key] = np.zeros(3, np.float32)  # weights of another architecture
    state["_greyanom_version"] = "9.9"
    with pytest.raises(ValueError, match=r"pickled by greyanom 9\.9 and cannot be restored"):
        ConvVAEDetector.__new__(ConvVAEDetector).__setstate__(state)


# -- ConvVAEDetector: today's files still load ----------------------------------------------------------
def test_vae_file_of_the_previous_format_still_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from greyanom._persist import save_arrays

    X = _images()
    old_defaults = dict(score_reduction="mean", smoothing_sigma=0.0, topk_fraction=0.01)
    det = ConvVAEDetector(**TINY_VAE, **old_defaults, residual_normalization="none").fit(X)
    params = det._json_params()
    del params["residual_normalization"], params["n_jobs"], params["input_space"], params["register"]
    del params["feature_stages"], params["feature_stride"], params["feature_channels"]
    params["n_threads"] = 1
    old_state = {
        "image_shape_": [32, 32],
        "threshold_": det.threshold_,
        "offset_": det.offset_,
        "heatmap_scale_": det.heatmap_scale_,
        "n_params_": det.n_params_,
        "best_epoch_": det.best_epoch_,
        "n_epochs_": det.n_epochs_,
        "device_": "cpu",
        "history_": det.history_,
    }
    weights = {k: v.detach().numpy() for k, v in det.module_.state_dict().items()}
    path = save_arrays(tmp_path / "old.safetensors", weights, {"class": "ConvVAEDetector", "params": params, "state": old_state})
    loaded = ConvVAEDetector.load(path)
    assert loaded.residual_normalization == "none" and loaded.n_jobs == 1 and loaded.n_threads == "deprecated"
    np.testing.assert_array_equal(loaded.score(X), det.score(X))
    assert loaded.device_ == torch.device("cpu")


def test_vae_save_load_keeps_the_residual_scale_and_the_split(tmp_path):
    pytest.importorskip("torch")
    X = _images()
    det = ConvVAEDetector(**TINY_VAE).fit(X)
    loaded = ConvVAEDetector.load(det.save(tmp_path / "vae.safetensors"))
    np.testing.assert_array_equal(loaded.residual_std_, det.residual_std_)
    np.testing.assert_array_equal(loaded.validation_indices_, det.validation_indices_)
    np.testing.assert_array_equal(loaded.score(X), det.score(X))
    config = json.loads(__import__("safetensors").safe_open(str(tmp_path / "vae.safetensors"), "numpy").metadata()["config"])
    assert set(config) == {"class", "params", "state"} and config["state"]["image_shape_"] == [32, 32]
