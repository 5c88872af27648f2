"""greyanom: anomaly detection for manufacturing.

One scikit-learn style API (``fit``, ``score``, ``explain``, plus ``score_samples``,
``decision_function`` and ``predict``) over grey-box detectors for process traces and
detectors for inspection images.

Sign convention: ``score(X)`` is the anomaly score (higher = more anomalous);
``score_samples(X) = -score(X)`` follows scikit-learn (higher = more normal).

Detectors (``from greyanom import PCADetector``; ``help(greyanom.PCADetector)`` for one):

Images
    RegisteredPixelDetector  aligned wafers and dies: per-pixel robust statistics after registration
    PCADetector              principal-component reconstruction error (images and tables)
    PaDiMDetector            unaligned parts: Gaussian per patch of pretrained features
    PatchCoreDetector        unaligned parts: nearest normal patch in a memory bank
    ConvVAEDetector          variational autoencoder (pixels or pretrained features)
Traces
    ShapeSignatureDetector   grey-box PI-loop signature per trace, wafer-level shape model
    MultiwayPCADetector      multiway PCA of traces, the classic batch-monitoring baseline

Also: ``load`` (a saved detector; never unpickles), ``BaseDetector``, ``ImageExplanation``.
Subpackages: ``datasets``, ``decision``, ``drift``, ``metrics``, ``plotting``, ``serve``,
``traces``. Guides and the API reference: the Sphinx documentation under ``docs/``.
"""

__version__ = "0.1.0.dev0"

# first, before NumPy, scikit-learn or torch load their thread runtimes: idle OpenMP and OpenBLAS
# threads sleep instead of spinning (environment defaults; a value the user set is kept).
# See greyanom._threads; GREYANOM_THREADS=legacy turns this off.
from greyanom._threads import set_polite_waiting as _set_polite_waiting

_set_polite_waiting()

from greyanom._persist import load
from greyanom.traces._moved import register as _register_moved_modules
from greyanom.base import BaseDetector, ImageExplanation
from greyanom.image import ConvVAEDetector, PaDiMDetector, PatchCoreDetector, PCADetector, RegisteredPixelDetector

# what ``from greyanom import *`` and ``help(greyanom)`` show: like scikit-learn, the top
# level lists the classes in its docstring and exports functions, so that help stays a page
# (with the detectors in ``__all__`` it rendered every class in full, 3,800 lines)
__all__ = ["__version__", "load"]

# The trace detector pulls in Numba and its kernels, so it is imported on first use and
# ``import greyanom`` stays light. None of the image detectors imports torch at module level:
# a detector that needs an extra raises an ImportError naming it when it is fitted or loaded.
_LAZY = {"MultiwayPCADetector": "greyanom.traces._multiway", "ShapeSignatureDetector": "greyanom.traces._shape_detector"}
# the public classes at the top level (named in the docstring, not in ``__all__``)
_PUBLIC = (
    "BaseDetector", "ConvVAEDetector", "ImageExplanation", "PCADetector", "PaDiMDetector",
    "PatchCoreDetector", "RegisteredPixelDetector", *_LAZY,
)


_register_moved_modules()  # old module paths of the trace code, for pickles made before the move


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'greyanom' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
