"""A small model registry of image detectors for the rollout tests (not a conftest: see serve_support)."""

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from serve_support import SIZE, normal_images, png_bytes, to_uint8

NAME = "litho"


@functools.lru_cache(maxsize=1)
def _fitted():
    """Four versions' detectors and policies (PCA on 32x32 images: fast, deterministic)."""
    from greyanom import PCADetector
    from greyanom.decision import DecisionPolicy

    train, calib = normal_images(30, 0), normal_images(40, 1)
    calib = np.stack([to_uint8(x) for x in calib]).astype(np.float32) / 255.0
    out = []
    for k in (4, 8):  # 1.0.0 (production), 1.1.0 (a candidate that is as good)
        det = PCADetector(n_components=k, random_state=0).fit(train)
        out.append((det, DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(det.score(calib), model=det)))
    # 1.2.0: a blind candidate: its thresholds are far above any score, so it PASSes every defect
    det = PCADetector(n_components=6, random_state=0).fit(train)
    out.append((det, DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(det.score(calib) * 1e6, model=det)))
    # 1.3.0: a policy not bound to its model (cannot be promoted)
    det = PCADetector(n_components=5, random_state=0).fit(train)
    out.append((det, DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(det.score(calib))))
    return out


@pytest.fixture
def registry(tmp_path):
    """A registry with versions 1.0.0 (in production), 1.1.0, 1.2.0 (blind) and 1.3.0 (unbound policy)."""
    from greyanom.registry import ModelRegistry

    template = _template()
    root = tmp_path / "registry"
    shutil.copytree(template, root)
    return ModelRegistry(root)


@functools.lru_cache(maxsize=1)
def _template():
    import atexit

    from greyanom.registry import ModelRegistry

    root = Path(tempfile.mkdtemp(prefix="greyanom-registry-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    reg = ModelRegistry(root)
    for det, pol in _fitted():
        reg.add(det, pol, name=NAME, bump="minor")
    reg.promote(NAME, "1.0.0", actor="ana", reason="first")
    return root


def image_bytes(seed, defect=False):
    image = normal_images(1, seed)[0]
    if defect:
        image[8:24, 8:24] = 1.0
    return png_bytes(to_uint8(image))


__all__ = ["NAME", "SIZE", "registry", "image_bytes"]
