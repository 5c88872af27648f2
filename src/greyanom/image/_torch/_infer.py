"""Deterministic batched inference and the TorchScript scoring module."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from greyanom._optional import torch_threads

__all__ = ["infer_batches", "ScoringModule", "gaussian_kernel_1d", "n_parameters"]


def infer_batches(module, images, batch_size, device):
    """Run ``module`` (eval mode, z = mu) on ``(n, H, W)`` float32 images, batch by batch.

    Returns a dict of float32 NumPy arrays on the CPU: ``reconstruction`` and ``heatmap``
    ``(n, H, W)`` (heatmap = squared error), ``latent_mean`` and ``latent_logvar``
    ``(n, latent_dim)``.
    """
    module.eval()
    out = {"reconstruction": [], "heatmap": [], "latent_mean": [], "latent_logvar": []}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))[:, None].to(device)
            logits, mu, logvar = module(x)
            recon = torch.sigmoid(logits.float())
            heat = (x - recon) ** 2
            out["reconstruction"].append(recon[:, 0].cpu().numpy())
            out["heatmap"].append(heat[:, 0].cpu().numpy())
            out["latent_mean"].append(mu.float().cpu().numpy())
            out["latent_logvar"].append(logvar.float().cpu().numpy())
    return {key: np.concatenate(parts).astype(np.float32, copy=False) for key, parts in out.items()}


def gaussian_kernel_1d(sigma, truncate=4.0):
    """The 1-D kernel of ``scipy.ndimage.gaussian_filter`` (same radius and normalisation)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


class ScoringModule(nn.Module):
    """Image batch ``(n, 1, H, W)`` → ``(reconstruction, score, heatmap)``, TorchScript-able.

    Reproduces ``ConvVAEDetector.explain``: eval mode, z = mu, heatmap = squared error,
    score = the detector's reduction of the (optionally Gaussian-blurred, border
    ``reflect`` as in SciPy) heatmap.
    """

    def __init__(self, vae, reduction: str, smoothing_sigma: float, topk_fraction: float):
        super().__init__()
        self.vae = vae
        self.reduction = reduction
        h, w = vae.image_shape
        self.k = max(1, int(round(topk_fraction * h * w)))
        self.smooth = smoothing_sigma > 0
        kernel = gaussian_kernel_1d(smoothing_sigma) if self.smooth else np.ones(1, np.float32)
        self.radius = (len(kernel) - 1) // 2
        if self.radius >= min(h, w):
            raise ValueError(
                f"smoothing_sigma={smoothing_sigma} gives a blur radius of {self.radius} pixels, too large "
                f"for {h}x{w} images to export."
            )
        self.register_buffer("kernel", torch.from_numpy(kernel))

    def _blur(self, maps: torch.Tensor) -> torch.Tensor:
        r = self.radius
        k = self.kernel
        # SciPy's "reflect" mode repeats the edge pixel: (d c b a | a b c d | d c b a).
        x = torch.cat([maps[:, :, :, :r].flip(-1), maps, maps[:, :, :, -r:].flip(-1)], dim=3)
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = torch.cat([x[:, :, :r, :].flip(-2), x, x[:, :, -r:, :].flip(-2)], dim=2)
        return F.conv2d(x, k.view(1, 1, -1, 1))

    def forward(self, x: torch.Tensor):
        logits, _, _ = self.vae(x)
        recon = torch.sigmoid(logits)
        heat = (x - recon) ** 2
        maps = self._blur(heat) if self.smooth else heat
        flat = maps.flatten(1)
        if self.reduction == "mean":
            score = flat.mean(dim=1)
        elif self.reduction == "max":
            score = flat.amax(dim=1)
        else:
            score = torch.topk(flat, self.k, dim=1).values.mean(dim=1)
        return recon, score, heat


def n_parameters(module):
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


