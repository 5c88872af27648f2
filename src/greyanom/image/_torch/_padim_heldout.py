"""PaDiM's held-out patch distances from downdated sufficient statistics (no refit per fold).

For every grid position the Gaussian of a fold's complement needs the complement's mean and
covariance, and Ledoit-Wolf's shrinkage needs in addition the squared norms of its centred
rows. All of them follow from the statistics of all training images minus the fold's own
contribution: the scatter matrix of all images (one batched product) minus the fold's
(``k`` rows instead of ``n - k``), the norms and cross-products of every row with the
complement's mean. The fold's images are then scored through the Cholesky factor of the
complement's covariance (triangular solves; no inverse). Exact: the same estimator, ridge and
shrinkage rule as :func:`greyanom.image._torch._patch_ops.gaussian_precisions`, in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["padim_fold_distances"]


def _fold_covariance(SS, YE, dots, nrm2, train, a, n_t, estimator):
    """Covariance of a fold's complement at ``m`` positions from the statistics of all rows.

    ``SS`` (m, C, C): scatter of all rows (centred by the overall mean); ``YE`` (m, k, C): the
    fold's rows; ``a`` (m, C): the complement's mean; ``dots`` / ``nrm2`` (m, n): every row's
    dot product with ``a`` and squared norm. Each ``(m, C, C)`` array is written once and then
    updated in place (they are the memory traffic of this function).
    """
    # the complement's scatter about its mean: SS - YE^T YE - n_t a a^T, in one product
    W = torch.cat([YE, (n_t**0.5) * a[:, None, :]], dim=1)
    if estimator != "ledoit_wolf":
        return torch.baddbmm(SS, W.transpose(1, 2), W, beta=1.0 / max(1, n_t - 1), alpha=-1.0 / max(1, n_t - 1))
    c = SS.shape[1]
    emp = torch.baddbmm(SS, W.transpose(1, 2), W, beta=1.0 / n_t, alpha=-1.0 / n_t)
    emp_trace = emp.diagonal(dim1=1, dim2=2).clone()  # (m, C)
    mu = emp_trace.sum(dim=1) / c
    # squared norms of the complement's rows centred by its mean: |y|^2 - 2 y.a + |a|^2
    sq = nrm2[:, train] - 2.0 * dots[:, train] + (a * a).sum(dim=1)[:, None]
    beta_ = (sq**2).sum(dim=1)
    delta_ = torch.linalg.vector_norm(emp, dim=(1, 2)) ** 2
    beta = (beta_ / n_t - delta_) / (c * n_t)
    delta = (delta_ - 2.0 * mu * emp_trace.sum(dim=1) + c * mu**2) / c
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(delta > 0, beta / torch.where(delta > 0, delta, 1.0), 0.0)
    cov = emp.mul_((1.0 - shrinkage)[:, None, None])
    cov.diagonal(dim1=1, dim2=2).add_((shrinkage * mu)[:, None])
    return cov


def padim_fold_distances(X, folds, estimator, reg, device="cpu"):
    """Mahalanobis distance of each image's patches to the Gaussians of the other folds.

    Parameters
    ----------
    X : ndarray of shape (n, C, P), float32
        Training features restricted to the model's channels, ``P = h * w`` positions.
    folds : ndarray of int of shape (n,)
        Fold of each image.
    estimator : {"ledoit_wolf", "empirical"}
    reg : float
        Ridge added to every covariance's diagonal.
    device : str or torch.device, default="cpu"

    Returns
    -------
    distances : ndarray of shape (n, P), float32
        Distance of every image's patch at each position to the Gaussian fitted (as
        ``PaDiMDetector`` fits it) on the images of the other folds.
    """
    n, c, P = X.shape
    out = np.empty((n, P), np.float32)
    fold_ids = np.unique(folds)
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in fold_ids]
    from greyanom._progress import progress_stage
    from greyanom.image._torch._patch_ops import position_chunk

    step = position_chunk(n, c)  # positions per batch, as the fit batches them (in the caches)
    with torch.inference_mode(), progress_stage("PaDiMDetector held-out positions", total=P, unit="position",
                                                verbose=False) as stage:
        for start in range(0, P, step):
            sl = slice(start, min(P, start + step))
            Y = torch.as_tensor(np.ascontiguousarray(X[:, :, sl].transpose(2, 0, 1)), dtype=torch.float64).to(device)
            Y = Y - Y.mean(dim=1, keepdim=True)  # (m, n, C), centred by the overall mean
            SS = torch.bmm(Y.transpose(1, 2), Y)
            nrm2 = (Y * Y).sum(dim=2)  # (m, n)
            for train, test in splits:
                n_t = len(train)
                te = torch.as_tensor(test, device=Y.device)
                YE = Y.index_select(1, te)  # (m, k, C)
                a = -YE.sum(dim=1) / n_t  # the complement's mean: all rows sum to zero
                dots = torch.bmm(Y, a[:, :, None])[:, :, 0]
                cov = _fold_covariance(SS, YE, dots, nrm2, train, a, n_t, estimator)
                cov.diagonal(dim1=1, dim2=2).add_(float(reg))
                diff = (YE - a[:, None, :]).transpose(1, 2)  # (m, C, k)
                chol, info = torch.linalg.cholesky_ex(cov)
                if bool((info != 0).any()):  # not positive definite: as the fit, through the LU inverse
                    z2 = (diff * torch.linalg.solve(cov, diff)).sum(dim=1)
                else:
                    z = torch.linalg.solve_triangular(chol, diff, upper=False)
                    z2 = (z * z).sum(dim=1)  # (m, k)
                out[test, sl] = torch.sqrt(torch.clamp(z2, min=0.0)).T.cpu().numpy()
            stage.update(sl.stop - sl.start)
    return out
