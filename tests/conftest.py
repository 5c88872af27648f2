"""Shared fixtures and the location of the real data sets."""

from pathlib import Path

import numpy as np
import pytest

#: ../shared/data beside the clone (CI puts it there); tests that need it skip otherwise.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name):
    """Path of a data set in ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {name!r} not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# Property tests are deterministic: hypothesis derives its examples from each test's source
# rather than from a random seed, so a run on CI explores the same cases as a run here.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("greyanom", derandomize=True, print_blob=True)
    _hyp_settings.load_profile("greyanom")
except ImportError:  # hypothesis is only needed by the property tests
    pass


def _torch_devices():
    """Every device the torch tests run on: the CPU always, CUDA where a GPU is present."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_torch_devices())
def torch_device(request):
    """A device name (``"cpu"``, ``"cuda"``) for tests that touch torch: one run per available device.

    Tests take it instead of assuming that ``device="auto"`` means the CPU; on a machine
    without CUDA only the CPU case runs (no skip is reported for the absent GPU).
    """
    pytest.importorskip("torch")
    return request.param
