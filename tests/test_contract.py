"""One detector contract across the families: load(path, *, device=None), pickles, explain.

Every detector class is fitted once (small data); the tests loop over the classes and over
their learned attributes.
"""

import inspect
import pickle
import re
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("safetensors")

import greyanom  # noqa: E402
from greyanom import base  # noqa: E402
from greyanom.datasets import make_pi_lots  # noqa: E402

IMAGE = ["PCADetector", "ConvVAEDetector", "PaDiMDetector", "PatchCoreDetector", "RegisteredPixelDetector"]
TRACE = ["MultiwayPCADetector", "ShapeSignatureDetector"]
ALL = IMAGE + TRACE
TORCH = {"ConvVAEDetector", "PaDiMDetector", "PatchCoreDetector"}


def _params(name):
    return {
        "PCADetector": dict(n_components=3, svd_solver="randomized", random_state=0),
        "ConvVAEDetector": dict(channels=(8, 16), latent_dim=4, bottleneck_channels=4, max_epochs=1, n_jobs=1,
                                random_state=0),
        "PaDiMDetector": dict(n_jobs=1, n_features=20, random_state=0),
        "PatchCoreDetector": dict(n_jobs=1, coreset_fraction=0.1, random_state=0),
        "RegisteredPixelDetector": dict(n_components=2, random_state=0),
        "MultiwayPCADetector": dict(group_keys=("sensor",), random_state=0),
        "ShapeSignatureDetector": dict(group_keys=("sensor",), n_initial_lots=3, random_state=0),
    }[name]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return np.clip(0.5 + 0.05 * rng.normal(size=(16, 32, 32)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def lots():
    return make_pi_lots(n_lots=4, wafers_per_lot=6, sensors=("v", "u"), random_state=0)


@pytest.fixture(scope="module")
def fitted(images, lots):
    cache = {}

    def get(name):
        if name not in cache:
            if name in TORCH:
                pytest.importorskip("torch")
            X = lots if name in TRACE else images
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = (getattr(greyanom, name)(**_params(name)).fit(X), X)
        return cache[name]

    return get


def _use(det, X):
    """Score, predict and explain: what a fitted detector is for."""
    det.score(X)
    det.predict(X)
    det.explain(X)


def _learned(det):
    return [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]


# -- load(path, *, device=None) on every detector ---------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_every_detector_has_one_load_with_device(name):
    cls = getattr(greyanom, name)
    params = inspect.signature(cls.load).parameters
    assert list(params) == ["path", "device"]
    assert params["device"].kind is inspect.Parameter.KEYWORD_ONLY and params["device"].default is None
    assert cls.load.__func__ is base.BaseDetector.load.__func__  # one implementation, inherited


@pytest.mark.parametrize("name", ALL)
def test_load_round_trip_and_device(name, fitted, tmp_path):
    det, X = fitted(name)
    path = det.save(tmp_path / f"{name}.safetensors")
    for back in (type(det).load(path), greyanom.load(path), type(det).load(path, device=None)):
        assert type(back) is type(det)
        np.testing.assert_array_equal(np.asarray(back.score(X)), np.asarray(det.score(X)))
    if "device" in type(det)._get_param_names():
        assert str(type(det).load(path, device="cpu").device_) == "cpu"
    else:
        for loader in (type(det).load, greyanom.load):
            with pytest.raises(ValueError, match=rf"device: {name} runs on the CPU.*got 'cpu'"):
                loader(path, device="cpu")


# -- pickles ---------------------------------------------------------------------------------------
def _pickled_by(det, version, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(base, "_greyanom_version", lambda: version)
        return pickle.dumps(det)


@pytest.mark.parametrize("name", ALL)
def test_unpickling_without_a_needed_attribute_fails_naming_both_versions(name, fitted, monkeypatch):
    det, X = fitted(name)
    required = det._required_attrs()
    assert set(required) <= set(vars(det)), "a fitted detector holds every attribute it requires"
    for attr in required:
        old = pickle.loads(pickle.dumps(det))
        delattr(old, attr)
        blob = _pickled_by(old, "0.0.1", monkeypatch)
        pattern = rf"pickled by greyanom 0\.0\.1 without .*'{attr}'.* greyanom {re.escape(greyanom.__version__)} needs"
        with pytest.raises(ValueError, match=pattern):
            pickle.loads(blob)


@pytest.mark.parametrize("name", ALL)
def test_attributes_not_required_are_not_needed(name, fitted, tmp_path):
    det, X = fitted(name)
    optional = [a for a in _learned(det) if a not in det._required_attrs()]
    for attr in optional:
        old = pickle.loads(pickle.dumps(det))
        delattr(old, attr)
        back = pickle.loads(pickle.dumps(old))
        _use(back, X)
        back.save(tmp_path / f"{attr}.safetensors")


@pytest.mark.parametrize("name", ALL)
def test_complete_pickles_and_loaded_detectors_round_trip(name, fitted, tmp_path, monkeypatch):
    det, X = fitted(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same version: no warning
        back = pickle.loads(pickle.dumps(det))
        loaded = pickle.loads(pickle.dumps(type(det).load(det.save(tmp_path / "m.safetensors"))))
    for other in (back, loaded):
        np.testing.assert_array_equal(np.asarray(other.score(X)), np.asarray(det.score(X)))
    with pytest.warns(UserWarning, match=r"pickled by greyanom 0\.0\.1 and is loaded by greyanom"):
        pickle.loads(_pickled_by(det, "0.0.1", monkeypatch))
    unfitted = pickle.loads(pickle.dumps(type(det)(**_params(name))))  # nothing learned: nothing required
    assert _learned(unfitted) == []


# -- explain on every detector -----------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_every_detector_explains(name, fitted):
    det, X = fitted(name)
    explanation = det.explain(X)
    assert not isinstance(explanation, tuple)


def test_multiway_pca_explain_sums_to_the_score(fitted):
    det, X = fitted("MultiwayPCADetector")
    out = det.explain(X)
    assert sorted(out.columns) == ["u", "v"]  # the contributions alone: sum(axis=1) is the score
    np.testing.assert_allclose(out.sum(axis=1).to_numpy(), det.score(X), rtol=1e-10, atol=1e-12)
    pd.testing.assert_frame_equal(out, det.explain_wafers(X))


# -- random_state does what its docstring says --------------------------------------------------
#: Whether two fits with random_state=None differ (documented per class): the model's own random
#: draws come from NumPy's global state; the trace detectors draw only folds, from a fixed seed.
NONE_VARIES = {
    "PCADetector": True, "ConvVAEDetector": True, "PaDiMDetector": True, "PatchCoreDetector": True,
    "RegisteredPixelDetector": True, "MultiwayPCADetector": False, "ShapeSignatureDetector": False,
}


@pytest.mark.parametrize("name", ALL)
def test_random_state_does_what_its_docstring_says(name, fitted):
    det, X = fitted(name)

    def run(seed):
        params = {**_params(name), "random_state": seed}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = getattr(greyanom, name)(**params).fit(X)
            return det.threshold_, np.nan_to_num(np.asarray(det.score(X), dtype=np.float64))

    def same(a, b):
        return a[0] == b[0] and np.array_equal(a[1], b[1])

    first = det.threshold_, np.nan_to_num(np.asarray(det.score(X), dtype=np.float64))
    assert same(first, run(0)), "the same seed gives the same numbers"
    assert not same(first, run(1)), "the seed is used"
    assert same(run(None), run(None)) is not NONE_VARIES[name]
    doc = inspect.getdoc(getattr(greyanom, name))
    described = doc.split("random_state :")[1].split("\n\n")[0]
    assert ("vary from" in described) is NONE_VARIES[name]
    assert ("fixed seed (0)" in described) is (name != "ConvVAEDetector")  # the VAE has no folds
