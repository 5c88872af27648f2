"""Image detectors and the code they share (score reductions, input checks)."""

from greyanom.image._padim import PaDiMDetector
from greyanom.image._patchcore import PatchCoreDetector
from greyanom.image._pca import PCADetector
from greyanom.image._registered import RegisteredExplanation, RegisteredPixelDetector
from greyanom.image._reduce import reduce_error_maps, smooth_maps
from greyanom.image._vae import ConvVAEDetector, VAEExplanation

__all__ = [
    "ConvVAEDetector",
    "PCADetector",
    "PaDiMDetector",
    "PatchCoreDetector",
    "RegisteredExplanation",
    "RegisteredPixelDetector",
    "VAEExplanation",
    "reduce_error_maps",
    "smooth_maps",
]
