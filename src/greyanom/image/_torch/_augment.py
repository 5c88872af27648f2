"""Seeded, batched image augmentations for training (flips, small rotations, noise)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["AUGMENTATIONS", "augment_batch"]

#: Names accepted by ``ConvVAEDetector(augmentation=...)``.
AUGMENTATIONS = ("hflip", "vflip", "rot90", "rotate", "noise")


def _rand(n, generator, device):
    return torch.rand(n, generator=generator, device=device)


def augment_batch(x, augmentation, *, rotation_degrees, noise_std, generator):
    """Augment a batch ``(n, 1, H, W)`` in [0, 1]; every draw comes from ``generator``.

    ``hflip`` / ``vflip`` flip each image with probability 1/2, ``rot90`` rotates by a
    random multiple of 90° (square images only), ``rotate`` by a uniform angle in
    ``[-rotation_degrees, rotation_degrees]`` (bilinear, border pixels replicated), and
    ``noise`` adds N(0, noise_std²) noise; the result is clipped to [0, 1].
    """
    if not augmentation:
        return x
    n, device = x.shape[0], x.device
    x = x.clone()
    if "hflip" in augmentation:
        flip = _rand(n, generator, device) < 0.5
        x[flip] = x[flip].flip(-1)
    if "vflip" in augmentation:
        flip = _rand(n, generator, device) < 0.5
        x[flip] = x[flip].flip(-2)
    if "rot90" in augmentation:
        k = torch.floor(_rand(n, generator, device) * 4).long()
        for quarter in (1, 2, 3):
            sel = k == quarter
            if bool(sel.any()):
                x[sel] = torch.rot90(x[sel], quarter, dims=(-2, -1))
    if "rotate" in augmentation and rotation_degrees > 0:
        angle = (2 * _rand(n, generator, device) - 1) * math.radians(rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if "noise" in augmentation and noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return x.clamp_(0.0, 1.0)
