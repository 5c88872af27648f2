"""Image detectors and the code they share (score reductions, input checks)."""

from greyanom.image._padim import PaDiMDetector
from greyanom.image._patchcore import PatchCoreDetector
from greyanom.image._pca import PCADetector
from greyanom.image._reduce import reduce_error_maps, smooth_maps

__all__ = ["PCADetector", "PaDiMDetector", "PatchCoreDetector", "reduce_error_maps", "smooth_maps"]
