"""greyanom: anomaly detection for manufacturing.

One scikit-learn style API (``fit``, ``score``, ``explain``, plus ``score_samples``,
``decision_function`` and ``predict``) over grey-box detectors for process traces and
detectors for inspection images.

Sign convention: ``score(X)`` is the anomaly score (higher = more anomalous);
``score_samples(X) = -score(X)`` follows scikit-learn (higher = more normal).
"""

__version__ = "0.1.0.dev0"

from greyanom._persist import load
from greyanom.base import BaseDetector, ImageExplanation
from greyanom.image import ConvVAEDetector, PaDiMDetector, PatchCoreDetector, PCADetector, RegisteredPixelDetector

__all__ = [
    "BaseDetector",
    "ConvVAEDetector",
    "ImageExplanation",
    "PCADetector",
    "PaDiMDetector",
    "PatchCoreDetector",
    "RegisteredPixelDetector",
    "__version__",
    "load",
]

# The trace detector pulls in Numba and its kernels, so it is imported on first use and
# ``import greyanom`` stays light. None of the image detectors imports torch at module level:
# a detector that needs an extra raises an ImportError naming it when it is fitted or loaded.
_LAZY = {"MultiwayPCADetector": "greyanom.traces._multiway", "ShapeSignatureDetector": "greyanom.traces._shape_detector"}

__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'greyanom' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
