"""Module paths of the trace code before it moved into :mod:`greyanom.traces`, for old pickles.

A detector pickled before the move names its classes by their old modules
(``greyanom.shape._detector.ShapeSignatureDetector``, ``greyanom._wafer_model.WaferModel``,
``greyanom._multiway.MultiwayPCADetector``, ...). :func:`register` puts a small stand-in module
under each old name into :data:`sys.modules`; ``pickle`` finds the class through it in the
module that holds it now, imported on first use (so ``import greyanom`` stays light). The
detector's own ``__setstate__`` then checks that the pickle holds what this version needs.
A name that no longer exists fails with an ``AttributeError`` that says so and what to do.
New code imports from :mod:`greyanom.traces`; these names are not an API.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["MOVED", "register"]

_T = "greyanom.traces."
_DETECTOR = (_T + "_shape_detector", _T + "_analyser", _T + "_views", _T + "_features", _T + "_wafer_scorer")

#: Old module -> the modules that now hold its names (searched in order).
MOVED = {
    "greyanom._multiway": (_T + "_multiway",),
    "greyanom._wafer_model": (_T + "_wafer_model",),
    "greyanom._wafer_frames": (_T + "_wafer_scorer", _T + "_features", _T + "_keys"),
    "greyanom._trace_persist": (_T + "_persist",),
    "greyanom.shape._detector": _DETECTOR,
    "greyanom.shape._fitting": _DETECTOR,
    "greyanom.shape._wafer": _DETECTOR,
    "greyanom.shape._views": _DETECTOR,
    "greyanom.shape._frames": (_T + "_frames", _T + "_analyser"),
    "greyanom.shape._fit": (_T + "_fit",),
    "greyanom.shape._hierarchy": (_T + "_hierarchy",),
    "greyanom.shape._kernels": (_T + "_kernels", _T + "_status"),
    "greyanom.shape._result": (_T + "_result", _T + "_status"),
    "greyanom.shape._scoring": (_T + "_scoring",),
}


class _MovedModule(types.ModuleType):
    """Stand-in for a module that moved: attribute access looks the name up where it lives now."""

    def __init__(self, name, targets):
        super().__init__(name, f"Moved to {', '.join(targets)} (greyanom.traces).")
        self.__targets = targets

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"{self.__name__}.{attr} no longer exists: the trace code moved to greyanom.traces and this name "
            "did not survive the move. Refit the model with this greyanom, or save models with .save() "
            "(a checked file format that does not depend on module paths)."
        )


def register():
    """Put a stand-in under every old module name not already imported (idempotent)."""
    for old, targets in MOVED.items():
        sys.modules.setdefault(old, _MovedModule(old, targets))
