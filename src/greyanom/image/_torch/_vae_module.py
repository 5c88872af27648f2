"""The convolutional β-VAE of the case study (section 3.4) as a plain ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvVAE", "vae_loss"]


def _down(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


def _up(c_in, c_out):
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


class _LatentCodec(nn.Module):
    """Encode / sample / decode shared by the pixel and the feature VAE.

    Subclasses build ``encoder``, ``reduce``, ``fc_mu``, ``fc_logvar``, ``fc_decode``,
    ``expand``, ``decoder``, ``flat_channels`` and ``grid``.
    """

    def encode(self, x):
        """Return ``(mu, logvar)`` of q(z | x) for a batch ``(n, C, H, W)``."""
        h = self.reduce(self.encoder(x)).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        """Return the reconstruction of latent codes ``z`` before any output non-linearity."""
        h = self.fc_decode(z).view(-1, self.flat_channels, self.grid[0], self.grid[1])
        return self.decoder(self.expand(h))

    def forward(self, x, noise: torch.Tensor | None = None):
        """Encode, sample ``z = mu + sigma * noise`` (``z = mu`` if ``noise`` is None), decode.

        Returns ``(logits, mu, logvar)``.
        """
        mu, logvar = self.encode(x)
        z = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise
        return self.decode_logits(z), mu, logvar


class ConvVAE(_LatentCodec):
    """Convolutional VAE: stride-2 Conv→BN→LeakyReLU encoder, μ / log σ² heads, mirrored decoder.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)``; both divisible by ``2 ** len(channels)``.
    channels : sequence of int
        Output channels of the encoder blocks; the decoder mirrors them.
    latent_dim : int
        Size of the latent code.
    bottleneck_channels : int or None
        Channels of a 1×1 convolution (→BN→LeakyReLU) between the last encoder block and
        the μ / log σ² heads, mirrored by a 1×1 expansion in the decoder. ``None`` feeds the
        last block straight to the heads, as in the case study's table (26M parameters at
        256×256, over its 15M budget).

    Notes
    -----
    ``forward(x)`` returns ``(logits, mu, logvar)`` where the reconstruction is
    ``sigmoid(logits)``; training uses the logits with a numerically stable BCE
    (``likelihood = "bernoulli"``).
    """

    likelihood = "bernoulli"

    def __init__(self, image_shape, channels, latent_dim, bottleneck_channels):
        super().__init__()
        h, w = (int(v) for v in image_shape)
        stride = 2 ** len(channels)
        self.image_shape = (h, w)
        self.grid = (h // stride, w // stride)
        self.encoder = nn.Sequential(*[_down(c_in, c_out) for c_in, c_out in zip((1, *channels[:-1]), channels)])
        last = channels[-1]
        if bottleneck_channels is None:
            self.reduce = nn.Identity()
            self.expand = nn.Identity()
            flat_channels = last
        else:
            self.reduce = nn.Sequential(
                nn.Conv2d(last, bottleneck_channels, kernel_size=1),
                nn.BatchNorm2d(bottleneck_channels),
                nn.LeakyReLU(0.2),
            )
            self.expand = nn.Sequential(
                nn.Conv2d(bottleneck_channels, last, kernel_size=1),
                nn.BatchNorm2d(last),
                nn.LeakyReLU(0.2),
            )
            flat_channels = bottleneck_channels
        self.flat_channels = int(flat_channels)
        n_flat = self.flat_channels * self.grid[0] * self.grid[1]
        self.fc_mu = nn.Linear(n_flat, latent_dim)
        self.fc_logvar = nn.Linear(n_flat, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, n_flat)
        rev = tuple(reversed(channels))
        blocks = [_up(c_in, c_out) for c_in, c_out in zip(rev[:-1], rev[1:])]
        blocks.append(nn.ConvTranspose2d(rev[-1], 1, kernel_size=3, stride=2, padding=1, output_padding=1))
        self.decoder = nn.Sequential(*blocks)


def vae_loss(logits, x, mu, logvar, beta, likelihood="bernoulli"):
    """Per-image β-VAE loss terms, averaged over the batch.

    Returns ``(recon, kl, total)``: the negative log-likelihood summed over pixels (BCE on
    the logits for ``likelihood="bernoulli"``; half the squared error, a unit-variance
    Gaussian up to a constant, for ``"gaussian"``), the closed-form KL to N(0, I) summed
    over latent units, and ``recon + beta * kl``.
    """
    n = x.shape[0]
    if likelihood == "gaussian":
        recon = 0.5 * torch.sum((logits.float() - x) ** 2) / n
    else:
        recon = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum") / n
    kl = -0.5 * torch.sum(1.0 + logvar.float() - mu.float().pow(2) - logvar.float().exp()) / n
    return recon, kl, recon + beta * kl
