"""The VAE's scoring path on its device: one TorchScript-able module for every route, and its driver.

:class:`VAEScorer` maps an image batch ``(n, 1, H, W)`` to ``(reconstruction, score,
heatmap)``: the route's front end (the identity for pixels, the frozen backbone for features),
the VAE with ``z = mu``, the residual (z-scored against held-out normals), the upsampling and
blur of feature maps, the score blur and the reduction, all on the device the module lives on.
``ConvVAEDetector`` scores and explains through :func:`score_images`, which copies back only
what the caller asked for; ``export_torchscript`` scripts the same module. The post-processing
is :mod:`greyanom.image._torch._post`, shared with the patch detectors.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from greyanom.image._torch import _post

__all__ = ["VAEScorer", "score_images", "shift_images", "front_inputs", "residual_sums", "residual_moments",
           "moments_of", "leave_one_out_scores", "n_parameters"]


class VAEScorer(nn.Module):
    """Image batch ``(n, 1, H, W)`` in [0, 1] → ``(reconstruction, score, heatmap)``, TorchScript-able.

    Parameters
    ----------
    front : nn.Module
        Images → network inputs: ``nn.Identity()`` for the pixel VAE,
        :class:`~greyanom.image._torch._feature_vae.BackboneFeatures` for the feature VAE.
    vae : ConvVAE or FeatureVAE
        Scored in eval mode with ``z = mu``.
    image_shape : tuple of int
        ``(H, W)``.
    residual_mean, inv_var : ndarray of one input's shape, or None
        The residual z-score (``residual_normalization="std"``); ``None`` for the raw residual.
    map_sigma : float
        Fixed blur (pixels) of the upsampled feature map (``feature_stride / 2``); 0 for pixels.
    reduction : {"mean", "max", "topk"}
    smoothing_sigma, topk_fraction : float
        The score reduction of :func:`greyanom.image.reduce_error_maps`.

    Notes
    -----
    ``forward`` returns ``reconstruction`` ``(n, 1, H, W)`` (``(n, 0, H, W)``, empty, for the
    feature VAE, which reconstructs features, not pixels), ``score`` ``(n,)`` and ``heatmap``
    ``(n, 1, H, W)`` (before the score blur), all float32.
    """

    def __init__(self, front, vae, image_shape, *, residual_mean=None, inv_var=None, map_sigma=0.0,
                 reduction="mean", smoothing_sigma=0.0, topk_fraction=0.01):
        super().__init__()
        self.front = front
        self.vae = vae
        self.bernoulli = getattr(vae, "likelihood", "bernoulli") == "bernoulli"
        self.image_size: List[int] = [int(image_shape[0]), int(image_shape[1])]
        self.normalize = inv_var is not None
        device = next(vae.parameters()).device
        self.register_buffer("residual_mean", _tensor(residual_mean, 0.0, device)[None])
        self.register_buffer("inv_var", _tensor(inv_var, 1.0, device)[None])
        self.upsample = not self.bernoulli  # the feature VAE's map lives on the feature grid
        self.register_buffer("map_kernel", _post.gaussian_kernel(float(map_sigma)).to(device))
        self.register_buffer("score_kernel", _post.gaussian_kernel(float(smoothing_sigma)).to(device))
        self.reduction = str(reduction)
        self.k = _post.topk_count(float(topk_fraction), self.image_size[0] * self.image_size[1])

    def network(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The VAE with ``z = mu``: ``(output, mu, logvar)`` in float32 (the output before the sigmoid)."""
        logits, mu, logvar = self.vae(inputs)
        return logits.float(), mu.float(), logvar.float()

    def post(self, inputs: torch.Tensor, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Network inputs and output → ``(reconstruction, heatmap (n, H, W))``, in float32."""
        out = torch.sigmoid(logits) if self.bernoulli else logits
        resid = inputs.float() - out
        if self.normalize:
            heat = self.maps(resid, self.residual_mean, self.inv_var)
        else:
            heat = self.maps(resid, None, None)
        if self.upsample:
            out = out[:, :0, :1, :1].expand(-1, -1, self.image_size[0], self.image_size[1])
        return out, heat

    def maps(
        self, resid: torch.Tensor, mean: Optional[torch.Tensor], inv_var: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Residuals → heatmaps ``(n, H, W)``, z-scored by ``mean`` and ``inv_var`` (one input's or one per row)."""
        heat = _post.squared_zscore_map(resid, mean, inv_var)
        if self.upsample:
            heat = _post.gaussian_blur(_post.upsample_maps(heat, self.image_size), self.map_kernel)
        return heat

    def reduce(self, heat: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(n, H, W)`` → scores ``(n,)``: the score blur, then the reduction."""
        return _post.reduce_maps(_post.gaussian_blur(heat, self.score_kernel), self.reduction, self.k)

    def forward(
        self, x: torch.Tensor, shifts: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(n, 1, H, W)`` → ``(reconstruction, score, heatmap)``.

        With ``shifts`` ``(n, 2)`` (``register=True``: the shifts that move each image onto the
        reference), the images are moved before the network and the reconstruction and
        heatmap moved back, so the score is reduced in each image's own frame.
        """
        if shifts is not None:
            x = shift_images(x[:, 0], shifts)[:, None]
        inputs = self.front(x)
        logits, _, _ = self.network(inputs)
        recon, heat = self.post(inputs, logits)
        if shifts is not None:
            heat = shift_images(heat, -shifts)
            if recon.shape[1] > 0:
                recon = shift_images(recon[:, 0], -shifts)[:, None]
        return recon, self.reduce(heat), heat.unsqueeze(1)


def _tensor(values, fill, device):
    values = np.full((1, 1, 1), fill, np.float32) if values is None else values
    return _post.to_device(values, device)  # copies a read-only array (a loaded model's), torch would warn


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each map of ``(n, H, W)`` by its row ``(dy, dx)`` of ``shifts``.

    Linear interpolation with the border value repeated outside: the device form of
    ``scipy.ndimage.shift(..., order=1, mode="nearest")`` (:func:`greyanom.image._align.apply_shifts`).
    """
    n = x.shape[0]
    h = x.shape[1]
    w = x.shape[2]
    dev = x.device
    s = shifts.to(device=dev, dtype=torch.float64)
    ys = torch.arange(h, device=dev, dtype=torch.float64)[None, :, None] - s[:, 0, None, None]
    xs = torch.arange(w, device=dev, dtype=torch.float64)[None, None, :] - s[:, 1, None, None]
    # normalised coordinates of align_corners=True: -1 and 1 are the centres of the edge pixels
    gy = (2.0 * ys / max(h - 1, 1) - 1.0).expand(n, h, w)
    gx = (2.0 * xs / max(w - 1, 1) - 1.0).expand(n, h, w)
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    out = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, 0]


def score_images(
    scorer, images, batch_size, device, *, inputs=None, shifts=None, fields=("score",), front_batch=None,
    inference_dtype="float32",
):
    """Run ``scorer`` over ``images`` batch by batch on ``device``; copy back only ``fields``.

    Parameters
    ----------
    scorer : VAEScorer
        On ``device``.
    images : ndarray of shape (n, H, W), float32, or None
        The images; ``None`` with ``inputs``.
    batch_size : int
    device : torch.device
    inputs : ndarray of shape (n, C, h, w), optional
        Network inputs already computed (``fit`` has them): the front end is skipped.
    shifts : ndarray of shape (n, 2), optional
        Registration shifts (``register=True``): each image is moved onto the reference before
        the network, its reconstruction and heatmap moved back before the score is reduced,
        all on the device.
    fields : tuple of str
        Any of ``"score"``, ``"heatmap"``, ``"reconstruction"``, ``"latent_mean"``,
        ``"latent_logvar"``.
    front_batch : int, optional
        Images per pass of the front end (the backbone runs one image at a time on the CPU,
        which measured fastest there); by default ``batch_size``.
    inference_dtype : {"float32", "bfloat16"}
        The dtype the backbone and the VAE run in (autocast); the residual, the maps and the
        reduction stay in float32.

    Returns
    -------
    out : dict of ndarray
        ``score`` float64 ``(n,)``; the maps float32 ``(n, H, W)``; the latents ``(n, d)``.
    """
    scorer.eval()
    parts = {key: [] for key in fields if key != "shift"}
    front_batch = batch_size if front_batch is None else front_batch
    rows = images if inputs is None else inputs
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            x = _post.to_device(rows[start : start + batch_size], device)
            s = None if shifts is None else _post.to_device(shifts[start : start + batch_size], device, torch.float64)
            if inputs is None:
                if s is not None:
                    x = shift_images(x, s)
                x = x[:, None]
                with _post.autocast_network(device, inference_dtype):
                    x = torch.cat([scorer.front(x[i : i + front_batch]) for i in range(0, x.shape[0], front_batch)])
                x = x.float()
            elif x.ndim == 3:
                x = x[:, None]
            with _post.autocast_network(device, inference_dtype):
                logits, mu, logvar = scorer.network(x)
            recon, heat = scorer.post(x, logits)
            if s is not None:
                heat = shift_images(heat, -s)
                if recon.shape[1] > 0:
                    recon = shift_images(recon[:, 0], -s)[:, None]
            got = {"heatmap": heat, "latent_mean": mu, "latent_logvar": logvar}
            if "score" in parts:
                got["score"] = scorer.reduce(heat)
            if "reconstruction" in parts:
                got["reconstruction"] = recon[:, 0] if recon.shape[1] > 0 else None
            for key in parts:
                parts[key].append(None if got[key] is None else _post.to_host(got[key]))
    out = {key: None if not vals or vals[0] is None else np.concatenate(vals) for key, vals in parts.items()}
    if "score" in out:
        out["score"] = out["score"].astype(np.float64)
    return out


def front_inputs(front, images, device, front_batch, inference_dtype="float32"):
    """Network inputs ``front(images)`` on the host (float32), ``front_batch`` images per pass on ``device``."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), front_batch):
            x = _post.to_device(images[start : start + front_batch], device)[:, None]
            with _post.autocast_network(device, inference_dtype):
                parts.append(_post.to_host(front(x)))
    return np.concatenate(parts)


def _residual_batches(module, inputs, batch_size, device, inference_dtype):
    """The residual ``x - x_hat`` (z = mu, float64, on ``device``) of ``inputs``, batch by batch.

    The caller holds ``torch.inference_mode``.
    """
    module.eval()
    bernoulli = getattr(module, "likelihood", "bernoulli") == "bernoulli"
    for start in range(0, len(inputs), batch_size):
        x = _post.to_device(inputs[start : start + batch_size], device)
        x = x[:, None] if x.ndim == 3 else x
        with _post.autocast_network(device, inference_dtype):
            logits, _, _ = module(x)
        out = torch.sigmoid(logits.float()) if bernoulli else logits.float()
        yield (x - out).double()


def residual_sums(module, inputs, batch_size, device, inference_dtype="float32"):
    """``(sum r, sum r^2, n)`` of the residuals ``r = x - x_hat`` of ``inputs`` per input element (z = mu).

    The sums are float64 tensors of one input's shape on ``device``: what
    :func:`residual_moments` and :func:`leave_one_out_scores` are computed from.
    """
    s1, s2, n = None, None, 0
    with torch.inference_mode():
        for r in _residual_batches(module, inputs, batch_size, device, inference_dtype):
            s1 = r.sum(dim=0) if s1 is None else s1 + r.sum(dim=0)
            s2 = (r * r).sum(dim=0) if s2 is None else s2 + (r * r).sum(dim=0)
            n += r.shape[0]
    return s1, s2, n


def residual_moments(module, inputs, batch_size, device, inference_dtype="float32"):
    """Mean and variance of the residual ``x - x_hat`` per input element over ``inputs`` (z = mu).

    The network runs in ``inference_dtype`` (as when scoring), the sums in float64.

    Returns two float64 arrays of one input's shape: ``(1, H, W)`` for images, ``(C, h, w)``
    for features.
    """
    return moments_of(residual_sums(module, inputs, batch_size, device, inference_dtype))


def moments_of(sums):
    """``(mean, variance)`` float64 host arrays from the sums of :func:`residual_sums`."""
    s1, s2, n = sums
    mean = s1 / n
    var = torch.clamp(s2 / n - mean * mean, min=0.0)
    return mean.cpu().numpy(), var.cpu().numpy()


def leave_one_out_scores(scorer, inputs, sums, batch_size, device, *, std_of, shifts=None, inference_dtype="float32"):
    """Scores of the images that set the residual normalisation, each normalised by the others only.

    The residual z-score of ``residual_normalization="std"`` divides by statistics of the
    validation images; scored with those statistics, the validation images score lower than
    images the statistics never saw (their own residuals widened the standard deviation), and a
    threshold set on them flags more than ``contamination`` of new normals. Here image ``i``'s
    residual is z-scored by the mean and standard deviation of the other ``n - 1`` images (the
    sums over all minus its own: exact leave-one-out, one network pass over ``inputs``),
    and reduced as ``scorer`` reduces: the score a detector whose normalisation never saw image
    ``i`` gives it.

    Parameters
    ----------
    scorer : VAEScorer
        The fitted scorer (its network, map post-processing and reduction) on ``device``.
    inputs : ndarray of shape (n, H, W) or (n, C, h, w), float32
        Network inputs of the images (registered, for ``register=True``); ``n >= 2``.
    sums : tuple
        :func:`residual_sums` of ``inputs`` (computed once for the fitted statistics).
    batch_size : int
    device : torch.device
    std_of : callable
        Variance array of one input's shape (float64) → the standard deviation the scorer divides
        by (the detector's smoothing and floor).
    shifts : ndarray of shape (n, 2), optional
        Registration shifts of the images: each heatmap is moved back into its image's frame
        before the reduction, as :func:`score_images` does.
    inference_dtype : {"float32", "bfloat16"}

    Returns
    -------
    scores : ndarray of shape (n,), float64
    """
    module = scorer.vae
    s1, s2, n = sums
    if n < 2:
        raise ValueError(f"leave-one-out residual statistics need at least 2 images, got {n}.")
    scorer.eval()
    scores, start = [], 0
    with torch.inference_mode():
        for r in _residual_batches(module, inputs, batch_size, device, inference_dtype):
            mean = (s1[None] - r) / (n - 1)
            var = torch.clamp((s2[None] - r * r) / (n - 1) - mean * mean, min=0.0)
            std = np.stack([np.asarray(std_of(v), dtype=np.float32) for v in var.cpu().numpy()])
            inv_var = _post.to_device(1.0 / np.square(std, dtype=np.float32), device)
            heat = scorer.maps(r.float(), mean.float(), inv_var)
            if shifts is not None:
                s = _post.to_device(np.asarray(shifts[start : start + r.shape[0]]), device, torch.float64)
                heat = shift_images(heat, -s)
            scores.append(_post.to_host(scorer.reduce(heat)))
            start += r.shape[0]
    return np.concatenate(scores).astype(np.float64)


def n_parameters(module):
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
