"""A small convolutional β-VAE over frozen backbone feature maps (the feature-space route)."""

from __future__ import annotations

from torch import nn

from greyanom.image._torch._vae_module import _LatentCodec, _up

__all__ = ["FeatureVAE"]


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
