"""Batched linear algebra of the patch detectors in torch: Ledoit-Wolf covariances and their
inverses, Mahalanobis distance maps (PaDiM), the greedy k-center coreset and exact
nearest-neighbour distance maps (PatchCore). The ``*_map`` functions take and return tensors
on the detector's device; the others take NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_random_state

__all__ = [
    "batched_covariances",
    "greedy_coreset",
    "gaussian_precisions",
    "ledoit_wolf_batched",
    "position_chunk",
    "mahalanobis_map",
    "nearest_distance_map",
    "nearest_distances",
]


def _ledoit_wolf(Xt):
    # Xt: (m, n, p) float64 tensor on any device -> (covariances, shrinkage) tensors there
    m, n, p = Xt.shape
    Xc = Xt - Xt.mean(dim=1, keepdim=True)
    emp = torch.bmm(Xc.transpose(1, 2), Xc) / n  # (m, p, p)
    X2 = Xc**2
    emp_trace = X2.sum(dim=1) / n  # (m, p): diagonal of emp
    mu = emp_trace.sum(dim=1) / p  # (m,)
    beta_ = (X2.sum(dim=2) ** 2).sum(dim=1)  # sum_ij (X2.T @ X2)_ij
    delta_ = (emp**2).sum(dim=(1, 2))  # = sum((X.T @ X)**2) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * emp_trace.sum(dim=1) + p * mu**2) / p
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(delta > 0, beta / torch.where(delta > 0, delta, 1.0), 0.0)
    cov = (1.0 - shrinkage)[:, None, None] * emp
    cov.diagonal(dim1=1, dim2=2).add_((shrinkage * mu)[:, None])
    return cov, shrinkage


def _covariances(Xt, estimator):
    if estimator == "ledoit_wolf":
        return _ledoit_wolf(Xt)
    Xc = Xt - Xt.mean(dim=1, keepdim=True)
    cov = torch.bmm(Xc.transpose(1, 2), Xc) / max(1, Xt.shape[1] - 1)
    return cov, torch.zeros(Xt.shape[0], dtype=Xt.dtype, device=Xt.device)


def ledoit_wolf_batched(X):
    """Ledoit-Wolf shrunk covariances of many small data sets at once.

    Parameters
    ----------
    X : ndarray of shape (m, n, p)
        ``m`` data sets of ``n`` samples and ``p`` features.

    Returns
    -------
    covariances : ndarray of shape (m, p, p), float64
    shrinkage : ndarray of shape (m,)
        The Ledoit-Wolf shrinkage of each set, as in
        :func:`sklearn.covariance.ledoit_wolf` (the data are centred first).

    Notes
    -----
    Computed in float64 with torch's batched matrix products, which measured 10 times
    faster than NumPy's stacked ``matmul`` on a 2-core CPU.
    """
    with torch.inference_mode():
        cov, shrinkage = _ledoit_wolf(torch.as_tensor(np.asarray(X), dtype=torch.float64))
        return cov.numpy(), shrinkage.numpy()


def batched_covariances(X, estimator):
    """Per-set covariances (float64, numpy) and shrinkage for ``estimator``."""
    with torch.inference_mode():
        cov, shrinkage = _covariances(torch.as_tensor(np.asarray(X), dtype=torch.float64), estimator)
        return cov.numpy(), shrinkage.numpy()


def position_chunk(n, c):
    """Grid positions per batch of PaDiM's per-position Gaussians (``n`` images, ``c`` channels).

    About ``2**20`` float64 values of data and covariance per batch (8 MB): the batched
    products and Cholesky factorisations then stay in the CPU's caches. For 1,024 positions of
    100 images and 152 channels, ``gaussian_precisions`` took 0.41 s in batches of 27 positions
    against 1.8-2.2 s in batches of 876 (2**25 values), one thread, a shared 2-core machine.
    """
    return max(1, int(2**20 // max(1, n * c + c * c)))


def gaussian_precisions(X, estimator, reg, device="cpu"):
    """Precision matrices (inverse covariances plus ``reg * I``) of many small data sets, on ``device``.

    Parameters
    ----------
    X : ndarray of shape (m, n, p)
        ``m`` data sets (PaDiM: grid positions) of ``n`` samples and ``p`` features.
    estimator : {"ledoit_wolf", "empirical"}
    reg : float
        Ridge added to every covariance's diagonal before inverting.
    device : str or torch.device, default="cpu"

    Returns
    -------
    precision : ndarray of shape (m, p, p), float32
    shrinkage : ndarray of shape (m,), float64

    Notes
    -----
    Covariances and inverses run in float64 on ``device``; the inverse goes through the
    Cholesky factor (the covariances are symmetric positive definite once ``reg > 0`` or
    ``n > p``), which measured 2.2 times faster than ``numpy.linalg.inv`` for 484 matrices
    of 152 x 152 on one CPU thread, with the same result to 3e-15 relative. Cholesky does
    not pivot, so it avoids the MKL ``DLASWP`` failures that ``torch.linalg.inv`` (LU)
    showed with 2 threads. A matrix that is not positive definite (``reg=0`` with fewer
    samples than features) falls back to the LU inverse.
    """
    with torch.inference_mode():
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64).to(device)
        cov, shrinkage = _covariances(Xt, estimator)
        cov.diagonal(dim1=1, dim2=2).add_(float(reg))
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            precision = torch.from_numpy(np.linalg.inv(cov.cpu().numpy()))
        else:
            precision = torch.cholesky_inverse(chol)
        return precision.to(torch.float32).cpu().numpy(), shrinkage.cpu().numpy()


def mahalanobis_map(features, mean, precision):
    """PaDiM's map: Mahalanobis distance of each cell's feature to its position's Gaussian.

    Parameters
    ----------
    features : Tensor of shape (n, C, h, w), float32
        Already restricted to the model's channels.
    mean : Tensor of shape (h * w, C)
    precision : Tensor of shape (h * w, C, C)

    Returns
    -------
    distances : Tensor of shape (n, h, w), float32, on the features' device
    """
    n, c, h, w = features.shape
    # (h * w, n, C), made contiguous once: bmm on the permuted view measured 1.3x slower on a CPU
    diff = (features.reshape(n, c, h * w).permute(2, 0, 1) - mean[:, None, :]).contiguous()
    d2 = (torch.bmm(diff, precision) * diff).sum(dim=2)
    return torch.sqrt(torch.clamp(d2, min=0.0)).T.reshape(n, h, w)


def greedy_coreset(X, n_select, *, projection_dim=64, random_state=None, device="cpu"):
    """Greedy k-center coreset: indices of ``n_select`` rows of ``X`` that cover it.

    Starting from a random row, repeatedly add the row farthest from the rows chosen so far
    (Sener & Savarese, 2018; PatchCore's "greedy coreset"). Distances are computed on a
    random Gaussian projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss) to
    save time, as in PatchCore.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    n_select : int
        Number of rows to keep (``1 <= n_select <= n``).
    projection_dim : int or None, default=64
        Dimension of the random projection; ``None`` or ``>= d`` uses ``X`` itself.
    random_state : int, RandomState instance or None
        Seeds the projection and the first row.
    device : str or torch.device, default="cpu"

    Returns
    -------
    indices : ndarray of shape (n_select,), int64
        In the order they were chosen.
    """
    rng = check_random_state(random_state)
    n, d = X.shape
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select must be in [1, {n}], got {n_select}.")
    Z = np.asarray(X, dtype=np.float32)
    if projection_dim is not None and projection_dim < d:
        proj = rng.standard_normal((d, projection_dim)).astype(np.float32) / np.sqrt(projection_dim)
        Z = Z @ proj
    first = int(rng.randint(n))
    with torch.inference_mode():
        Zt = torch.as_tensor(np.ascontiguousarray(Z), device=device)
        sq = (Zt * Zt).sum(dim=1)
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2: one matrix-vector product per step
        min_d = sq - 2.0 * (Zt @ Zt[first]) + sq[first]
        chosen = torch.empty(n_select, dtype=torch.int64)
        chosen[0] = first
        for i in range(1, n_select):
            idx = int(torch.argmax(min_d))
            chosen[i] = idx
            torch.minimum(min_d, sq - 2.0 * (Zt @ Zt[idx]) + sq[idx], out=min_d)
    return chosen.numpy()


def nearest_distance_map(features, bank, chunk_size=4096):
    """PatchCore's map: Euclidean distance of each cell's feature to its nearest row of ``bank``.

    Parameters
    ----------
    features : Tensor of shape (n, C, h, w), float32
    bank : Tensor of shape (k, C), float32, on the features' device
    chunk_size : int, default=4096
        Cells per block; memory is about ``chunk_size * k`` floats.

    Returns
    -------
    distances : Tensor of shape (n, h, w), float32, on the features' device
    """
    n, c, h, w = features.shape
    return _nearest_rows(features.permute(0, 2, 3, 1).reshape(-1, c), bank, chunk_size).reshape(n, h, w)


def _nearest_rows(queries, bank, chunk_size):
    b2 = (bank * bank).sum(dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        Q = queries[start : start + chunk_size]
        d2 = (Q * Q).sum(dim=1, keepdim=True) - 2.0 * (Q @ bank.T) + b2
        out.append(torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0)))
    return torch.cat(out)


def nearest_distances(queries, bank, *, chunk_size=4096, device="cpu"):
    """Exact Euclidean distance of each query row to its nearest row of ``bank``.

    Parameters
    ----------
    queries : ndarray of shape (m, d)
    bank : ndarray or torch.Tensor of shape (k, d)
    chunk_size : int, default=4096
        Queries per block; memory is about ``chunk_size * k`` floats.
    device : str or torch.device, default="cpu"

    Returns
    -------
    distances : ndarray of shape (m,), float32
    """
    with torch.inference_mode():
        B = torch.as_tensor(bank, device=device, dtype=torch.float32)
        Q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32), device=device)
        return _nearest_rows(Q, B, chunk_size).cpu().numpy()
