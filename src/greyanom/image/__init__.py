"""Image detectors and the code they share (score reductions, input checks)."""

from greyanom.image._pca import PCADetector
from greyanom.image._reduce import reduce_error_maps, smooth_maps
from greyanom.image._vae import ConvVAEDetector, VAEExplanation

__all__ = ["ConvVAEDetector", "PCADetector", "VAEExplanation", "reduce_error_maps", "smooth_maps"]
