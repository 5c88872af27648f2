"""ConvVAEDetector: contract, determinism, training recipe, export and persistence (tiny models)."""

import dataclasses
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from greyanom import ConvVAEDetector
from greyanom._threads import usable_cpus
from greyanom.image import VAEExplanation, reduce_error_maps

torch = pytest.importorskip("torch")

from greyanom.image._torch._augment import augment_batch  # noqa: E402
from greyanom.image._torch._infer import n_parameters  # noqa: E402
from greyanom.image._torch._train import kl_weight  # noqa: E402
from greyanom.image._torch._vae_module import ConvVAE, vae_loss  # noqa: E402

# the pixel VAE of the case study, scored by its a(x) (the class defaults are the feature VAE's);
# on the CPU, where training with one seed gives one model (tests about the device take torch_device)
TINY = dict(
    input_space="pixels", score_reduction="mean", smoothing_sigma=0.0, topk_fraction=0.01,
    channels=(4, 8), latent_dim=4, bottleneck_channels=2, max_epochs=2, batch_size=8, random_state=0, device="cpu",
)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _images(rng, n=24, size=32):
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.3 + 0.4 * (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy))
    return np.clip(base + 0.02 * rng.normal(size=(n, size, size)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return _images(np.random.default_rng(0))


@pytest.fixture(scope="module")
def fitted(images):
    return ConvVAEDetector(**TINY).fit(images)


# -- import and optional dependency ------------------------------------------------------
def test_import_does_not_import_torch():
    code = (
        "import sys, greyanom, greyanom.image\n"
        "from greyanom import ConvVAEDetector\n"
        "ConvVAEDetector(max_epochs=3).get_params()\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fit_without_torch_names_the_extra(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'greyanom\[torch\]'):
        ConvVAEDetector(**TINY).fit(images)


# -- architecture and parameter budget ------------------------------------------------------
def test_default_model_meets_parameter_budget():
    default = ConvVAE((256, 256), (32, 64, 128, 256), 128, 32)
    assert n_parameters(default) < 15_000_000
    # the case study's exact table (no 1x1 reduction) is over its own 15M budget
    case_study = ConvVAE((256, 256), (32, 64, 128, 256), 128, None)
    assert n_parameters(case_study) > 25_000_000
    assert case_study.fc_mu.in_features == 256 * 16 * 16
    p = ConvVAEDetector().get_params()
    assert (p["channels"], p["latent_dim"], p["bottleneck_channels"]) == ((32, 64, 128, 256), 128, 32)


def test_module_shapes_and_sigmoid_range():
    m = ConvVAE((64, 32), (4, 8, 8), 5, 3).eval()
    with torch.no_grad():
        logits, mu, logvar = m(torch.rand(2, 1, 64, 32))
    assert logits.shape == (2, 1, 64, 32) and mu.shape == logvar.shape == (2, 5)
    r = torch.sigmoid(logits)
    assert float(r.min()) >= 0 and float(r.max()) <= 1


def test_vae_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    mu, logvar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    recon, kl, total = vae_loss(logits, x, mu, logvar, 0.5)
    p = torch.sigmoid(logits)
    bce = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum() / 3
    kl_ref = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / 3
    assert float(recon) == pytest.approx(float(bce), rel=1e-5)
    assert float(kl) == pytest.approx(float(kl_ref), rel=1e-5)
    assert float(total) == pytest.approx(float(bce + 0.5 * kl_ref), rel=1e-5)


def test_kl_annealing_schedule():
    assert [kl_weight(e, 1.0, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_weight(0, 0.5, 0) == 0.5


# -- fit ------------------------------------------------------------------------------------------
def test_fit_returns_self_and_sets_attributes(images, torch_device):
    det = ConvVAEDetector(**{**TINY, "max_epochs": 3, "kl_warmup_epochs": 2, "device": torch_device})
    assert det.fit(images) is det
    assert det.device_.type == torch_device
    assert next(det.module_.parameters()).device.type == torch_device
    assert det.n_params_ == sum(p.numel() for p in det.module_.parameters())
    assert not det.module_.training
    h = det.history_
    assert set(h) == {"epoch", "beta", "lr", "train_recon", "train_kl", "train_loss", "val_recon", "val_kl", "val_loss"}
    assert h["epoch"] == [1, 2, 3] and h["beta"] == [0.0, 0.5, 1.0]
    assert h["lr"][0] == pytest.approx(1e-3) and h["lr"][1] < h["lr"][0]
    np.testing.assert_allclose(h["train_loss"], np.array(h["train_recon"]) + np.array(h["beta"]) * h["train_kl"], rtol=1e-5)
    assert det.n_epochs_ == 3 and det.best_epoch_ == 3  # only epoch 3 is at full beta
    assert det.heatmap_scale_ > 0 and np.isfinite(det.threshold_)


def test_early_stopping_keeps_best_full_beta_epoch(images):
    det = ConvVAEDetector(**{**TINY, "max_epochs": 8, "kl_warmup_epochs": 1, "early_stopping_patience": 2}).fit(images)
    val = np.array(det.history_["val_recon"])
    eligible = np.array(det.history_["beta"]) >= det.beta
    assert det.best_epoch_ == int(np.argmin(np.where(eligible, val, np.inf))) + 1
    if det.n_epochs_ < 8:
        assert det.n_epochs_ - det.best_epoch_ == 2


def test_same_seed_same_model_different_seed_different(images):
    a = ConvVAEDetector(**TINY).fit(images)
    b = ConvVAEDetector(**TINY).fit(images)
    c = ConvVAEDetector(**{**TINY, "random_state": 1}).fit(images)
    np.testing.assert_array_equal(a.score(images), b.score(images))
    assert a.history_ == b.history_
    assert not np.array_equal(a.score(images), c.score(images))


def test_does_not_touch_global_rng(images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ConvVAEDetector(**TINY).fit(images)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_augmentation_is_seeded_and_changes_training(images):
    aug = {**TINY, "augmentation": ("hflip", "vflip", "rotate", "noise")}
    a = ConvVAEDetector(**aug).fit(images)
    b = ConvVAEDetector(**aug).fit(images)
    plain = ConvVAEDetector(**TINY).fit(images)
    np.testing.assert_array_equal(a.score(images), b.score(images))
    assert a.history_["train_recon"] != plain.history_["train_recon"]


def test_augment_batch_operations():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    flipped = augment_batch(x, ("hflip",), rotation_degrees=0, noise_std=0, generator=g())
    for i in range(16):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert not torch.equal(flipped, x)
    rot = augment_batch(x, ("rot90",), rotation_degrees=0, noise_std=0, generator=g())
    assert torch.equal(torch.sort(rot.flatten(1))[0], torch.sort(x.flatten(1))[0])
    same = augment_batch(x, ("rotate",), rotation_degrees=0, noise_std=0, generator=g())
    assert torch.equal(same, x)
    noisy = augment_batch(x, ("noise",), rotation_degrees=0, noise_std=0.5, generator=g())
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and not torch.equal(noisy, x)
    assert augment_batch(x, (), rotation_degrees=5, noise_std=0.1, generator=g()) is x


def test_n_threads_is_applied_and_restored(images, monkeypatch):
    import greyanom.image._torch._train as train_mod

    before = torch.get_num_threads()
    seen = []
    real = train_mod.train_vae

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_vae", spy)
    det = ConvVAEDetector(**{**TINY, "max_epochs": 1, "n_jobs": 1}).fit(images)
    assert seen == [1] and torch.get_num_threads() == before
    det.score(images[:2])
    assert torch.get_num_threads() == before
    # the old name still works, once, with a FutureWarning
    with pytest.warns(FutureWarning, match="n_threads is deprecated"):
        ConvVAEDetector(**{**TINY, "max_epochs": 1, "n_threads": 1}).fit(images)
    assert seen[-1] == 1
    # -1 means every CPU this process may use (greyanom._threads.usable_cpus), as for every detector
    ConvVAEDetector(**{**TINY, "max_epochs": 1, "n_jobs": -1}).fit(images)
    assert seen[-1] == usable_cpus() and torch.get_num_threads() == before


def test_verbose_shows_progress(images, capsys):
    ConvVAEDetector(**{**TINY, "max_epochs": 1, "verbose": True}).fit(images)
    assert "epoch" in capsys.readouterr().err


# -- scoring and explanation ----------------------------------------------------------------------------
def test_scoring_is_deterministic_and_batch_invariant(fitted, images):
    first = fitted.score(images)
    np.testing.assert_array_equal(fitted.score(images), first)
    parts = np.concatenate([fitted.score(images[i : i + 5]) for i in range(0, len(images), 5)])
    np.testing.assert_allclose(parts, first, rtol=1e-5, atol=1e-9)
    small = clone(fitted).set_params(batch_size=3)
    small.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    np.testing.assert_allclose(small.score(images), first, rtol=1e-5, atol=1e-9)


def test_explain_fields(fitted, images):
    e = fitted.explain(images[:5])
    assert isinstance(e, VAEExplanation)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.score = None
    assert e.reconstruction.shape == e.heatmap.shape == (5, 32, 32)
    assert e.latent_mean.shape == e.latent_logvar.shape == (5, 4)
    assert fitted.residual_normalization == "std" and e.shift is None
    # the default heatmap is the squared residual z-score against the held-out residual std
    assert fitted.residual_std_.shape == (1, 32, 32) and (fitted.residual_std_ > 0).all()
    z2 = (images[:5] - e.reconstruction - fitted.residual_mean_) ** 2 / fitted.residual_std_**2
    np.testing.assert_allclose(e.heatmap, z2, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(e.score, fitted.score(images[:5]))
    raw = pickle.loads(pickle.dumps(fitted)).set_params(residual_normalization="none").explain(images[:5])
    np.testing.assert_allclose(raw.heatmap, (images[:5] - raw.reconstruction) ** 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(raw.score, raw.heatmap.reshape(5, -1).mean(axis=1), rtol=1e-5)  # "mean" = a(x)
    with torch.no_grad():
        mu, logvar = fitted.module_.encode(torch.from_numpy(images[:5])[:, None].to(fitted.device_))
    np.testing.assert_allclose(e.latent_mean, mu.cpu().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.latent_logvar, logvar.cpu().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["max", "topk"])
def test_score_uses_shared_reduction(fitted, images, reduction):
    det = pickle.loads(pickle.dumps(fitted)).set_params(score_reduction=reduction, smoothing_sigma=1.5, topk_fraction=0.05)
    heat = det.explain(images).heatmap
    expected = reduce_error_maps(heat, reduction, smoothing_sigma=1.5, topk_fraction=0.05)
    np.testing.assert_allclose(det.score(images), expected, rtol=1e-6)


def test_flags_and_localises_a_defect(fitted, images):
    test = images[:4].copy()
    test[0, 10:14, 20:24] = 1.0
    scores = fitted.score(test)
    assert scores.argmax() == 0
    assert fitted.predict(test)[0] == -1
    r, c = np.unravel_index(fitted.explain(test).heatmap[0].argmax(), (32, 32))
    assert 10 <= r < 14 and 20 <= c < 24


def test_normalize_heatmap_uses_training_scale(fitted, images):
    heat = fitted.explain(images[:3]).heatmap
    np.testing.assert_allclose(fitted.normalize_heatmap(heat), heat / fitted.heatmap_scale_, rtol=1e-6)
    # on normal images most pixels stay below the scale (not stretched per image)
    assert np.mean(fitted.normalize_heatmap(heat) <= 1.0) > 0.9


def test_uint8_and_channel_axis(fitted, images):
    u8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_allclose(fitted.score(u8[:, None]), fitted.score(u8 / 255.0), rtol=1e-5)


def test_plot_history(fitted):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = fitted.plot_history()
    labels = [line.get_label() for line in ax.get_lines()]
    for name in ("train recon", "val recon", "train kl", "val kl", "train loss", "val loss"):
        assert name in labels


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, X_shape, match",
    [
        ({}, (8, 30, 32), "divisible by 4"),
        ({"channels": ()}, (8, 32, 32), "channels"),
        ({"channels": (4, 0)}, (8, 32, 32), "channels"),
        ({"augmentation": ("shear",)}, (8, 32, 32), "augmentation"),
        ({"augmentation": ("rot90",)}, (8, 32, 64), "square"),
        ({"device": "tpu"}, (8, 32, 32), "device"),
        ({"latent_dim": 0}, (8, 32, 32), "latent_dim"),
        ({"validation_fraction": 1.0}, (8, 32, 32), "validation_fraction"),
        ({}, (1, 32, 32), "at least 2"),
    ],
)
def test_bad_parameters_and_input(params, X_shape, match):
    X = np.full(X_shape, 0.5, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        ConvVAEDetector(**{**TINY, **params}).fit(X)


def test_bad_images(fitted, images):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ConvVAEDetector(**TINY).fit(images * 2)
    with pytest.raises(ValueError, match=r"size \(16, 16\).*\(32, 32\)"):
        fitted.score(images[:, :16, :16])
    with pytest.raises(ValueError, match="NaN"):
        bad = images.copy()
        bad[0, 0, 0] = np.nan
        fitted.score(bad)
    with pytest.raises(TypeError, match="integer dtype"):
        fitted.score(np.zeros((2, 32, 32), dtype=np.int64))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_explicit_cuda_without_cuda_is_an_error(images):
    with pytest.raises(ValueError, match="CUDA is not available"):
        ConvVAEDetector(**{**TINY, "device": "cuda"}).fit(images)


def test_unfitted_raises(images):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ConvVAEDetector().score(images)


# -- sklearn contract, pickling, export, persistence -------------------------------------------------------
def test_clone_and_get_params(fitted):
    c = clone(fitted)
    assert c.get_params() == fitted.get_params()
    assert not hasattr(c, "module_")
    assert ConvVAEDetector(max_epochs=7).set_params(beta=0.5).get_params()["beta"] == 0.5


def test_pickle_roundtrip(fitted, images, torch_device):
    det = fitted if torch_device == "cpu" else ConvVAEDetector(**{**TINY, "device": torch_device}).fit(images)
    again = pickle.loads(pickle.dumps(det))
    assert again.device_.type == torch_device and again.history_ == det.history_
    assert next(again.module_.parameters()).device.type == torch_device
    # the same weights on the same device: equal on the CPU; on CUDA up to the kernels' order
    np.testing.assert_allclose(again.score(images), det.score(images), rtol=0 if torch_device == "cpu" else 1e-5)


def test_pickle_from_before_inference_dtype_scores_in_float32(fitted, images):
    state = fitted.__getstate__()
    del state["inference_dtype"], state["calibration_dtype_"]
    det = ConvVAEDetector.__new__(ConvVAEDetector)
    det.__setstate__(state)
    assert det.get_params()["inference_dtype"] == "float32"
    np.testing.assert_array_equal(det.score(images[:3]), fitted.score(images[:3]))


@pytest.mark.parametrize("reduction, sigma", [("mean", 0.0), ("topk", 1.5), ("max", 2.0)])
def test_torchscript_roundtrip(fitted, images, tmp_path, reduction, sigma):
    det = pickle.loads(pickle.dumps(fitted)).set_params(score_reduction=reduction, smoothing_sigma=sigma, topk_fraction=0.05)
    path = det.export_torchscript(tmp_path / "vae.pt", check_images=images[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        recon, score, heat = loaded(torch.from_numpy(images[4:10])[:, None])
    e = det.explain(images[4:10])
    np.testing.assert_allclose(recon[:, 0].numpy(), e.reconstruction, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heat[:, 0].numpy(), e.heatmap, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(score.numpy(), e.score, rtol=1e-4, atol=1e-8)


def test_torchscript_export_is_checked_on_the_detector_device(fitted, images, tmp_path, torch_device):
    det = fitted if torch_device == "cpu" else ConvVAEDetector(**{**TINY, "device": torch_device}).fit(images)
    det = pickle.loads(pickle.dumps(det)).set_params(score_reduction="topk", smoothing_sigma=1.0, topk_fraction=0.05)
    precision = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    path = det.export_torchscript(tmp_path / "vae.pt", check_images=images[:4])
    # TF32 is off only during the check
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == precision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location=torch_device)
    with torch.inference_mode():
        recon, score, heat = loaded(torch.from_numpy(images[4:8])[:, None].to(torch_device))
    assert score.device.type == torch_device
    e = det.explain(images[4:8])
    # the stated tolerances of the check (the CPU's, or the looser CUDA one; TF32 may be on here)
    rtol, atol = (1e-4, 1e-6) if torch_device == "cpu" else (1e-2, 1e-4)
    np.testing.assert_allclose(score.cpu().numpy(), e.score, rtol=rtol, atol=atol)
    np.testing.assert_allclose(heat[:, 0].cpu().numpy(), e.heatmap, rtol=rtol, atol=atol)


def test_torchscript_export_detects_mismatch(fitted, images, tmp_path, monkeypatch):
    det = pickle.loads(pickle.dumps(fitted))
    real = det._explain_images
    monkeypatch.setattr(det, "_explain_images", lambda x, f: {**real(x, f), "heatmap": real(x, f)["heatmap"] + 1.0})
    with pytest.raises(RuntimeError, match="heatmap differs"):
        det.export_torchscript(tmp_path / "vae.pt", check_images=images[:2])


def test_save_load_roundtrip(fitted, images, tmp_path):
    path = fitted.save(tmp_path / "vae.safetensors")
    loaded = ConvVAEDetector.load(path)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.score(images), fitted.score(images))
    np.testing.assert_array_equal(loaded.predict(images), fitted.predict(images))
    assert loaded.history_ == fitted.history_ and loaded.n_params_ == fitted.n_params_
    assert loaded.heatmap_scale_ == fitted.heatmap_scale_


def test_load_foreign_files_fails_safely(tmp_path, fitted):
    import safetensors.numpy

    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps(fitted))
    pt = tmp_path / "weights.pt"
    torch.save(fitted.module_.state_dict(), pt)
    st = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(st))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    for path in (pkl, pt, st, txt):
        with pytest.raises(ValueError, match="not a"):
            ConvVAEDetector.load(path)
    with pytest.raises(FileNotFoundError):
        ConvVAEDetector.load(tmp_path / "missing.safetensors")


def test_cuda_trained_model_loads_on_cpu_with_warning(fitted, images, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    det = pickle.loads(pickle.dumps(fitted))
    det.device_ = torch.device("cuda")  # as if trained on a GPU (weights are device-free arrays on disk)
    blob = pickle.dumps(det)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        again = pickle.loads(blob)
    assert again.device_ == torch.device("cpu")
    np.testing.assert_array_equal(again.score(images), fitted.score(images))
    path = det.save(tmp_path / "gpu.safetensors")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = ConvVAEDetector.load(path)
    assert loaded.device_ == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ConvVAEDetector.load(path, device="cpu").device_ == torch.device("cpu")


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------------------
@CUDA
def test_cuda_fit_score_and_move_to_cpu(images, tmp_path):
    det = ConvVAEDetector(**{**TINY, "device": "auto"}).fit(images)
    assert det.device_.type == "cuda"
    scores = det.score(images)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    np.testing.assert_array_equal(det.score(images), scores)
    cpu = ConvVAEDetector.load(det.save(tmp_path / "vae.safetensors"), device="cpu")
    from greyanom.image._vae_export import ieee_float32

    with ieee_float32(torch):  # TF32 off: CUDA and the CPU compute in float32 alike
        np.testing.assert_allclose(cpu.score(images), det.score(images), rtol=1e-3)
    assert det.export_torchscript(tmp_path / "vae.pt").is_file()


@CUDA
def test_cuda_explicit_device(images):
    det = ConvVAEDetector(**{**TINY, "device": "cuda"}).fit(images)
    assert det.device_ == torch.device("cuda", torch.cuda.current_device()) or det.device_.type == "cuda"
    assert next(det.module_.parameters()).is_cuda


def test_threshold_comes_from_the_validation_images(fitted, images):
    from greyanom.base import threshold_from_scores

    val = fitted.validation_indices_
    assert 0 < len(val) < len(images) and len(np.unique(val)) == len(val)
    np.testing.assert_allclose(fitted.decision_scores_, fitted.score(images), rtol=1e-5)
    # one held-out score per validation image (each z-scored by the other validation images'
    # residual statistics: tests/image/test_vae_routes.py), and they set the threshold
    assert fitted.heldout_scores_.shape == (len(val),)
    assert fitted.threshold_ == pytest.approx(threshold_from_scores(fitted.heldout_scores_, fitted.contamination))
    # without the residual normalisation they are the validation images' own scores
    raw = ConvVAEDetector(**{**TINY, "residual_normalization": "none"}).fit(images)
    assert raw.heldout_scores_ == pytest.approx(raw.decision_scores_[raw.validation_indices_])


def test_embed_is_the_latent_mean(fitted, images):
    np.testing.assert_allclose(fitted.embed(images[:4]), fitted.explain(images[:4]).latent_mean)
    assert fitted.embed(images[:4]).shape == (4, fitted.latent_dim)
