"""greyanom: anomaly detection for manufacturing.

One scikit-learn style API (``fit``, ``score``, ``explain``, plus ``score_samples``,
``decision_function`` and ``predict``) over grey-box detectors for process traces and
detectors for inspection images.

Sign convention: ``score(X)`` is the anomaly score (higher = more anomalous);
``score_samples(X) = -score(X)`` follows scikit-learn (higher = more normal).
"""

__version__ = "0.1.0.dev0"

from greyanom.base import BaseDetector, ImageExplanation
from greyanom.image._pca import PCADetector

__all__ = [
    "BaseDetector",
    "ImageExplanation",
    "PCADetector",
    "__version__",
]

# Detectors whose modules pull in Numba kernels or torch-facing code are imported on first
# use, so that ``import greyanom`` stays light. None of them imports torch at module level:
# a detector that needs an extra raises an ImportError naming it when it is fitted or loaded.
_LAZY = {
    "ConvVAEDetector": "greyanom.image._vae",
    "PaDiMDetector": "greyanom.image._padim",
    "PatchCoreDetector": "greyanom.image._patchcore",
    "ShapeSignatureDetector": "greyanom.shape._detector",
}

__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'greyanom' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
