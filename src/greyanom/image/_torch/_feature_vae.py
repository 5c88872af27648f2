"""The feature-space route: its frozen backbone front end and a small convolutional β-VAE over its maps."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from greyanom.image._torch._efficientnet import STAGE_CHANNELS
from greyanom.image._torch._vae_module import _LatentCodec, _up

__all__ = ["FeatureVAE", "BackboneFeatures"]


def _block(c_in, c_out, *, kernel, stride):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


class FeatureVAE(_LatentCodec):
    """β-VAE that reconstructs standardised feature maps ``(n, C, h, w)`` (Gaussian likelihood).

    A 1x1 convolution maps the ``C`` backbone channels to ``channels[0]``; each further
    entry of ``channels`` is a ``Conv 3x3 stride 2 → BatchNorm → LeakyReLU`` block. Linear
    heads give the latent mean and log-variance (one global code, as in the pixel VAE);
    the decoder mirrors the encoder and ends in a 1x1 convolution back to ``C`` channels
    with no output non-linearity.

    Parameters
    ----------
    feature_shape : tuple of int
        ``(C, h, w)`` of the input features; ``h`` and ``w`` divisible by
        ``2 ** (len(channels) - 1)``.
    channels : sequence of int
        Channels of the 1x1 input projection, then of each stride-2 block.
    latent_dim : int
    bottleneck_channels : int or None
        1x1 reduction before the heads (mirrored in the decoder); ``None`` = none.

    Notes
    -----
    ``forward(x)`` returns ``(output, mu, logvar)``; the reconstruction is ``output``
    itself (``likelihood = "gaussian"``).
    """

    likelihood = "gaussian"

    def __init__(self, feature_shape, channels, latent_dim, bottleneck_channels):
        super().__init__()
        c, h, w = (int(v) for v in feature_shape)
        stride = 2 ** (len(channels) - 1)
        self.feature_shape = (c, h, w)
        self.grid = (h // stride, w // stride)
        blocks = [_block(c, channels[0], kernel=1, stride=1)]
        blocks += [_block(a, b, kernel=3, stride=2) for a, b in zip(channels[:-1], channels[1:])]
        self.encoder = nn.Sequential(*blocks)
        last = channels[-1]
        if bottleneck_channels is None:
            self.reduce, self.expand, flat = nn.Identity(), nn.Identity(), last
        else:
            self.reduce = _block(last, bottleneck_channels, kernel=1, stride=1)
            self.expand = _block(bottleneck_channels, last, kernel=1, stride=1)
            flat = bottleneck_channels
        self.flat_channels = int(flat)
        n_flat = self.flat_channels * self.grid[0] * self.grid[1]
        self.fc_mu = nn.Linear(n_flat, latent_dim)
        self.fc_logvar = nn.Linear(n_flat, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, n_flat)
        rev = tuple(reversed(channels))
        ups = [_up(a, b) for a, b in zip(rev[:-1], rev[1:])]
        ups.append(nn.Conv2d(rev[-1], c, kernel_size=1))
        self.decoder = nn.Sequential(*ups)


class BackboneFeatures(nn.Module):
    """Images ``(n, 1, H, W)`` in [0, 1] → standardised frozen EfficientNet-Lite0 patch features.

    The module form of :func:`greyanom.image._torch._backbone.patch_features` (so that the
    TorchScript export can hold the network) followed by the feature VAE's per-channel
    standardisation (the tests check it against ``extract_patch_features``): the grey image replicated to RGB and normalised,
    the tapped stages averaged over ``patch_size`` cells (stride 1), resized to the ``grid``
    (area averaging for a finer stage, bilinear upsampling for a coarser one) and concatenated,
    then ``(f - feature_mean) / feature_std`` per channel.

    Parameters
    ----------
    net : EfficientNetLite0
        The frozen backbone (shared and cached: never modified here).
    stages : tuple of int
    grid : tuple of int
        ``(h, w)`` of the feature grid.
    patch_size : int
    rgb_mean, rgb_std : tuple of float
        The input normalisation.
    feature_mean, feature_std : ndarray of shape (C,), optional
        The standardisation; ``None`` returns the raw features.
    """

    def __init__(self, net, stages, grid, patch_size, rgb_mean, rgb_std, feature_mean=None, feature_std=None):
        super().__init__()
        self.net = net
        self.stages = tuple(int(s) for s in stages)
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_size = int(patch_size)
        device = next(net.parameters()).device
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(rgb_std, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        n = sum(STAGE_CHANNELS[s - 1] for s in self.stages)
        mean = np.zeros(n, np.float32) if feature_mean is None else np.asarray(feature_mean, np.float32)
        std = np.ones(n, np.float32) if feature_std is None else np.asarray(feature_std, np.float32)
        self.register_buffer("feature_mean", torch.from_numpy(mean.copy()).to(device).view(1, -1, 1, 1))
        self.register_buffer("feature_std", torch.from_numpy(std.copy()).to(device).view(1, -1, 1, 1))

    def forward(self, x):
        x = (x.expand(-1, 3, -1, -1) - self.rgb_mean) / self.rgb_std
        maps = []
        for fmap in self.net.stage_outputs(x, self.stages):
            fmap = fmap.float()  # pooling and resizing in float32 whatever dtype the network ran in
            if self.patch_size > 1:
                p = self.patch_size
                fmap = F.avg_pool2d(fmap, p, stride=1, padding=p // 2, count_include_pad=False)[
                    ..., : fmap.shape[-2], : fmap.shape[-1]
                ]
            if tuple(fmap.shape[-2:]) != self.grid:
                if fmap.shape[-2] >= self.grid[0] and fmap.shape[-1] >= self.grid[1]:
                    fmap = F.adaptive_avg_pool2d(fmap, self.grid)
                else:
                    fmap = F.interpolate(fmap, size=self.grid, mode="bilinear", align_corners=False)
            maps.append(fmap)
        return (torch.cat(maps, dim=1) - self.feature_mean) / self.feature_std
