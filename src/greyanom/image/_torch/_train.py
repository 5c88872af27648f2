"""Training loop of the convolutional β-VAE: AdamW, cosine schedule, KL annealing, early stopping."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from greyanom.image._torch._augment import augment_batch
from greyanom.image._torch._vae_module import vae_loss

__all__ = ["TrainConfig", "fit_network", "train_vae", "kl_weight"]

logger = logging.getLogger("greyanom.vae")

HISTORY_KEYS = (
    "epoch",
    "beta",
    "lr",
    "train_recon",
    "train_kl",
    "train_loss",
    "val_recon",
    "val_kl",
    "val_loss",
)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (section 3.5 of the case study); see ConvVAEDetector for meanings."""

    max_epochs: int
    batch_size: int
    learning_rate: float
    min_learning_rate: float
    weight_decay: float
    beta: float
    kl_warmup_epochs: int
    grad_clip_norm: float | None
    early_stopping_patience: int | None
    augmentation: tuple
    rotation_degrees: float
    noise_std: float


def kl_weight(epoch, beta, warmup_epochs):
    """β of (0-based) ``epoch``: linear from 0 to ``beta`` over ``warmup_epochs`` epochs."""
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, epoch / warmup_epochs)


def _likelihood(module):
    return getattr(module, "likelihood", "bernoulli")


def _evaluate(module, x, batch_size, beta, device):
    """Validation losses with z = mu (eval mode), per image, summed over batches."""
    module.eval()
    totals = [0.0, 0.0]
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            logits, mu, logvar = module(xb)
            recon, kl, _ = vae_loss(logits, xb, mu, logvar, beta, _likelihood(module))
            totals[0] += float(recon) * xb.shape[0]
            totals[1] += float(kl) * xb.shape[0]
    n = x.shape[0]
    return totals[0] / n, totals[1] / n


def train_vae(module, x_train, x_val, config, *, generator, device, progress=None):
    """Train ``module`` in place and return ``(history, best_epoch, stopped_early)``.

    Parameters
    ----------
    module : ConvVAE
        Already on ``device``.
    x_train, x_val : torch.Tensor of shape (n, 1, H, W)
        Normal images in [0, 1] on the CPU; batches are moved to ``device``.
    config : TrainConfig
    generator : torch.Generator
        On ``device``; every random draw (shuffling, augmentation, reparameterisation
        noise) comes from it, so CPU training is reproducible without global seeding.
    device : torch.device
    progress : tqdm-like or None
        Updated once per epoch with the losses.

    Notes
    -----
    The loss is the per-image β-VAE ELBO (BCE summed over pixels plus β times the KL),
    averaged over the batch. β rises linearly from 0 over ``kl_warmup_epochs``. The
    learning rate follows a cosine from ``learning_rate`` to ``min_learning_rate`` over
    ``max_epochs`` epochs. Early stopping watches the validation reconstruction loss
    (z = mu) from the first epoch at full β on (earlier epochs are not comparable) and
    restores the weights of the best epoch. On CUDA the forward pass runs in
    mixed precision (bfloat16 where supported, else float16 with loss scaling).
    """
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.max_epochs), eta_min=config.min_learning_rate
    )
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history = {key: [] for key in HISTORY_KEYS}
    best, best_epoch, best_state, bad_epochs, stopped_early = math.inf, 0, None, 0, False
    n = x_train.shape[0]
    for epoch in range(config.max_epochs):
        beta = kl_weight(epoch, config.beta, config.kl_warmup_epochs)
        lr = optimizer.param_groups[0]["lr"]
        module.train()
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
        sums = [0.0, 0.0, 0.0]
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            xb = x_train[idx].to(device, non_blocking=True)
            xb = augment_batch(
                xb,
                config.augmentation,
                rotation_degrees=config.rotation_degrees,
                noise_std=config.noise_std,
                generator=generator,
            )
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                mu, logvar = module.encode(xb)
                noise = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype)
                z = mu + torch.exp(0.5 * logvar) * noise
                logits = module.decode_logits(z)
            recon, kl, loss = vae_loss(logits, xb, mu, logvar, beta, _likelihood(module))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the VAE loss became {float(loss)} at epoch {epoch}; lower learning_rate or beta."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            m = xb.shape[0]
            sums[0] += recon.item() * m
            sums[1] += kl.item() * m
            sums[2] += loss.item() * m
        scheduler.step()
        val_recon, val_kl = _evaluate(module, x_val, config.batch_size, beta, device)
        row = {
            "epoch": epoch + 1,
            "beta": beta,
            "lr": lr,
            "train_recon": sums[0] / n,
            "train_kl": sums[1] / n,
            "train_loss": sums[2] / n,
            "val_recon": val_recon,
            "val_kl": val_kl,
            "val_loss": val_recon + beta * val_kl,
        }
        for key in HISTORY_KEYS:
            history[key].append(row[key])
        logger.debug("epoch %d: %s", epoch + 1, row)
        if progress is not None:
            progress.set_postfix(train=f"{row['train_loss']:.4g}", val_recon=f"{val_recon:.4g}", refresh=False)
            progress.update(1)
        # Compare checkpoints only once beta has reached its final value: during KL
        # annealing the reconstruction loss is not comparable (it rises with beta).
        eligible = beta >= config.beta or epoch + 1 == config.max_epochs
        if not eligible:
            continue
        if val_recon < best:
            best, best_epoch, bad_epochs = val_recon, epoch + 1, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad_epochs += 1
            if config.early_stopping_patience is not None and bad_epochs >= config.early_stopping_patience:
                stopped_early = True
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history, best_epoch, stopped_early


def fit_network(new_module, inputs, train_idx, val_idx, config, *, seed, device, progress=None):
    """Build a network with a seeded initialisation, train it on ``inputs``, return it in eval mode.

    The one trainer of every VAE route (skorch's ``module=``): ``new_module()`` builds the
    route's network (``ConvVAE`` or ``FeatureVAE``) inside a forked RNG seeded with ``seed``
    (the global RNGs are left as they were); a ``torch.Generator`` on ``device`` with the same
    seed draws the shuffling, augmentation and reparameterisation noise.

    Parameters
    ----------
    new_module : callable
        Returns a fresh ``nn.Module`` on the CPU.
    inputs : ndarray of shape (n, H, W) or (n, C, h, w), float32
        Every network input (training and validation rows), on the host.
    train_idx, val_idx : ndarray of int
    config : TrainConfig
    seed : int
    device : torch.device
    progress : tqdm-like or None

    Returns
    -------
    module : nn.Module
        Trained, in eval mode on ``device``.
    history : dict of list
    best_epoch : int
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight initialisation only, inside a forked RNG
        module = new_module()
    module.to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    if x_all.ndim == 3:
        x_all = x_all[:, None]
    history, best_epoch, _ = train_vae(
        module,
        x_all[torch.from_numpy(np.asarray(train_idx))],
        x_all[torch.from_numpy(np.asarray(val_idx))],
        config,
        generator=generator,
        device=device,
        progress=progress,
    )
    return module.eval(), history, int(best_epoch)
