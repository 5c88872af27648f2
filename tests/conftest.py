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
