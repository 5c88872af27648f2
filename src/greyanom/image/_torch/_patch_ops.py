"""Batched linear algebra of the patch detectors in torch: Ledoit-Wolf covariances, Mahalanobis
distances (PaDiM), the greedy k-center coreset and exact nearest-neighbour distances (PatchCore).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_random_state

__all__ = [
    "batched_covariances",
    "greedy_coreset",
    "ledoit_wolf_batched",
    "mahalanobis_distances",
    "nearest_distances",
]


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
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64)
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
        return cov.numpy(), shrinkage.numpy()


def batched_covariances(X, estimator):
    """Per-set covariances (float64, numpy) and shrinkage for ``estimator``."""
    if estimator == "ledoit_wolf":
        return ledoit_wolf_batched(X)
    with torch.inference_mode():
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        Xc = Xt - Xt.mean(dim=1, keepdim=True)
        cov = torch.bmm(Xc.transpose(1, 2), Xc) / max(1, Xt.shape[1] - 1)
        return cov.numpy(), np.zeros(Xt.shape[0])


def mahalanobis_distances(diff, precision):
    """Mahalanobis distances per position: ``diff`` (m, n, C), ``precision`` (m, C, C) -> (m, n)."""
    with torch.inference_mode():
        diff_t = torch.from_numpy(np.ascontiguousarray(diff, dtype=np.float32))
        d2 = (torch.bmm(diff_t, torch.from_numpy(np.ascontiguousarray(precision))) * diff_t).sum(dim=2)
        return torch.sqrt(torch.clamp(d2, min=0.0)).numpy()


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
        b2 = (B * B).sum(dim=1)
        out = []
        for start in range(0, len(queries), chunk_size):
            Q = torch.as_tensor(np.ascontiguousarray(queries[start : start + chunk_size]), device=device)
            d2 = (Q * Q).sum(dim=1, keepdim=True) - 2.0 * (Q @ B.T) + b2
            out.append(torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0)).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)
