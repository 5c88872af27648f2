"""Tiny saved models and a fitted policy for the inspection-service tests.

Not a ``conftest.py``: a second conftest module would shadow ``tests/conftest.py`` for the
test modules that import ``shared_data`` from it. The models are trained once per session
(``_trained``) however many test modules import the fixture.
"""

import atexit
import functools
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("prometheus_client")
pytest.importorskip("safetensors")

SIZE = 32


def normal_images(n, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    base = 0.5 + 0.1 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    return np.clip(base + 0.03 * rng.normal(size=(n, SIZE, SIZE)), 0, 1).astype(np.float32)


def to_uint8(image):
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def png_bytes(array, fmt="PNG", **kwargs):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _trained():
    from greyanom import ConvVAEDetector, PaDiMDetector
    from greyanom.decision import DecisionPolicy

    folder = Path(tempfile.mkdtemp(prefix="greyanom-serve-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    train, calib = normal_images(24, 0), normal_images(40, 1)
    detectors = {
        "vae": ConvVAEDetector(channels=(8, 16), latent_dim=6, bottleneck_channels=4, max_epochs=3, n_threads=1,
                               random_state=0),
        "padim": PaDiMDetector(n_jobs=1, random_state=0),
    }
    out = {}
    for name, det in detectors.items():
        det.fit(train)
        model_path = det.save(folder / f"{name}.safetensors")
        scores = det.score(np.stack([to_uint8(x) for x in calib]).astype(np.float32) / 255.0)
        policy = DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(scores, model=det)
        policy_path = policy.save(folder / f"{name}-policy.json")
        out[name] = (model_path, policy_path)
    return out


@pytest.fixture(scope="session")
def models():
    """Saved tiny VAE and PaDiM models and a policy per model: name -> (model path, policy path)."""
    return _trained()


@pytest.fixture
def normal_png():
    return png_bytes(to_uint8(normal_images(1, 99)[0]))


@pytest.fixture
def defect_png():
    image = normal_images(1, 98)[0]
    image[8:24, 8:24] = 1.0
    return png_bytes(to_uint8(image))
