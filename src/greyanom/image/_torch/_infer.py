"""Deterministic batched inference and the TorchScript scoring module."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


__all__ = ["infer_batches", "residual_moments", "ScoringModule", "gaussian_kernel_1d", "n_parameters"]


def _as_batch(array, device):
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return (x[:, None] if x.ndim == 3 else x).to(device)


def _output(module, logits):
    if getattr(module, "likelihood", "bernoulli") == "gaussian":
        return logits.float()
    return torch.sigmoid(logits.float())


def infer_batches(module, inputs, batch_size, device, *, residual_mean=None, inv_var=None):
    """Run ``module`` (eval mode, z = mu) batch by batch on images or feature maps.

    Parameters
    ----------
    module : ConvVAE or FeatureVAE
    inputs : ndarray of shape (n, H, W) (images) or (n, C, h, w) (features), float32
    batch_size : int
    device : torch.device
    residual_mean, inv_var : ndarray of one input's shape ``(C, h, w)``, optional
        Mean and inverse variance of the residual on held-out normal inputs: the heatmap
        becomes the mean over channels of ``(x - x_hat - residual_mean)^2 * inv_var`` (the
        squared residual z-score) instead of the mean squared residual.

    Returns
    -------
    out : dict of float32 ndarray
        ``heatmap`` ``(n, h, w)``, ``latent_mean`` and ``latent_logvar``
        ``(n, latent_dim)``, and for images ``reconstruction`` ``(n, H, W)``.
    """
    module.eval()
    pixels = getattr(module, "likelihood", "bernoulli") == "bernoulli"
    keys = ("reconstruction", "heatmap", "latent_mean", "latent_logvar") if pixels else ("heatmap", "latent_mean", "latent_logvar")
    out = {key: [] for key in keys}
    with torch.inference_mode():
        weight = None if inv_var is None else torch.as_tensor(np.asarray(inv_var, dtype=np.float32), device=device)
        offset = None if residual_mean is None else torch.as_tensor(np.asarray(residual_mean, dtype=np.float32), device=device)
        for start in range(0, len(inputs), batch_size):
            x = _as_batch(inputs[start : start + batch_size], device)
            logits, mu, logvar = module(x)
            recon = _output(module, logits)
            resid = x - recon
            if offset is not None:
                resid = resid - offset
            sq = resid**2
            if weight is not None:
                sq = sq * weight
            if pixels:
                out["reconstruction"].append(recon[:, 0].cpu().numpy())
            out["heatmap"].append(sq.mean(dim=1).cpu().numpy())
            out["latent_mean"].append(mu.float().cpu().numpy())
            out["latent_logvar"].append(logvar.float().cpu().numpy())
    return {key: np.concatenate(parts).astype(np.float32, copy=False) for key, parts in out.items()}


def residual_moments(module, inputs, batch_size, device):
    """Mean and variance of the residual ``x - x_hat`` per input element over ``inputs`` (z = mu).

    Returns two float64 arrays of one input's shape: ``(1, H, W)`` for images, ``(C, h, w)``
    for features.
    """
    module.eval()
    s1, s2, n = None, None, 0
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = _as_batch(inputs[start : start + batch_size], device)
            logits, _, _ = module(x)
            r = (x - _output(module, logits)).double()
            s1 = r.sum(dim=0) if s1 is None else s1 + r.sum(dim=0)
            s2 = (r * r).sum(dim=0) if s2 is None else s2 + (r * r).sum(dim=0)
            n += x.shape[0]
    mean = s1 / n
    var = torch.clamp(s2 / n - mean * mean, min=0.0)
    return mean.cpu().numpy(), var.cpu().numpy()


def gaussian_kernel_1d(sigma, truncate=4.0):
    """The 1-D kernel of ``scipy.ndimage.gaussian_filter`` (same radius and normalisation)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


class ScoringModule(nn.Module):
    """Image batch ``(n, 1, H, W)`` → ``(reconstruction, score, heatmap)``, TorchScript-able.

    Reproduces ``ConvVAEDetector.explain``: eval mode, z = mu, heatmap = squared error
    (of the residual less ``residual_mean``, times the inverse per-pixel residual
    variance ``inv_var``, when given),
    score = the detector's reduction of the (optionally Gaussian-blurred, border
    ``reflect`` as in SciPy) heatmap.
    """

    def __init__(
        self, vae, reduction: str, smoothing_sigma: float, topk_fraction: float, residual_mean=None, inv_var=None
    ):
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
        weight = np.ones((1, h, w), np.float32) if inv_var is None else np.asarray(inv_var, np.float32).reshape(1, h, w)
        self.register_buffer("inv_var", torch.from_numpy(np.ascontiguousarray(weight))[None])
        offset = np.zeros((1, h, w), np.float32) if residual_mean is None else np.asarray(residual_mean, np.float32)
        self.register_buffer("residual_mean", torch.from_numpy(np.ascontiguousarray(offset.reshape(1, h, w)))[None])

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
        heat = (x - recon - self.residual_mean) ** 2 * self.inv_var
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


