"""Cheap held-out scores of the image detectors: leave-fold-out updates instead of refits.

``BaseDetector._heldout_scores`` cross-fits clones by default: every fold refits the whole
detector on the other folds and scores its own training images on the way (scores that are
thrown away). The functions here compute, from what ``fit`` already holds, what a clone
fitted on the other folds would compute for the fold's images:

* :func:`gram_fold_projections`: the projections of a fold's complement and of the fold on the
  complement's leading principal axes, from the same Gram matrix (exact PCA of the complement);
  :class:`~greyanom.RegisteredPixelDetector` refits its per-pixel model per fold with it.
* :func:`pca_fold_residuals`: exact. The PCA of a fold's complement comes from the Gram
  matrix of the training rows (``n x n``, formed once): centred by the complement's mean and
  eigendecomposed per fold, it gives the complement's principal subspace, and the residual of
  a held-out row is its part outside that subspace, from the cross-Gram block. No SVD of the
  ``n x d`` data per fold and no scoring of the complement.

Pure array maths; the detectors reduce the residual maps to scores as their ``score`` does.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["gram_fold_projections", "pca_fold_residuals"]


def _n_components(n_components, eigvals, n_rows, d):
    """The number of components a PCA on ``n_rows`` rows keeps (the rule of ``PCADetector``)."""
    m = min(n_rows, d)
    if isinstance(n_components, numbers.Integral):
        return int(min(n_components, m - 1 if m > 1 else 1))
    lam = eigvals[:m]
    total = lam.sum()
    ratio = lam / total if total > 0 else np.zeros_like(lam)
    return int(min(np.searchsorted(np.cumsum(ratio), n_components, side="right") + 1, m))


def pca_fold_residuals(M, folds, n_components, batch_size=256, centred=False):
    """Residuals of each row outside the PCA subspace fitted on the other folds; exact.

    Parameters
    ----------
    M : ndarray of shape (n, d), float64
        Training rows (flattened images).
    folds : ndarray of int of shape (n,)
        Fold of each row (:func:`greyanom._crossfit.make_folds`).
    n_components : int or float in (0, 1)
        As ``PCADetector(n_components=...)``: an integer is capped at ``min(n_fold, d) - 1``,
        a fraction keeps the fewest components whose explained variance reaches it.
    batch_size : int, default=256
        Held-out rows whose ``d`` residuals are formed at a time (bounds memory).
    centred : bool, default=False
        ``M`` is already centred by its column means (the fitted PCA's ``M - mean_``): it is
        used as it is, without a centred copy (the residuals equal those of the uncentred rows
        to rounding).

    Yields
    ------
    index : ndarray of int
        Rows of ``M`` (a batch of one fold).
    residual : ndarray of shape (len(index), d)
        ``(x - mu) - V V^T (x - mu)`` with ``mu`` and ``V`` (``k`` principal axes) the mean and
        the PCA of the rows of the other folds, as an exact-SVD PCA refitted on them gives.

    Notes
    -----
    With ``Y = M - mean(M)`` and ``K = Y Y^T``, the complement ``T`` of a fold has centred Gram
    matrix ``G = K_TT - r 1^T - 1 r^T + c`` (``r`` the row means of ``K_TT``, ``c`` their mean);
    ``G = U L U^T`` gives the principal axes ``V = (Y_T - a)^T U L^{-1/2}`` (``a`` the mean of
    ``Y_T``), so a held-out row's projection is ``(Y_T - a)^T U_k L_k^{-1} U_k^T g`` with ``g``
    its centred cross-Gram column. Eigenvalues below ``1e-12`` of the largest carry no
    variance and are left out (a refit would span them with arbitrary axes). When ``d`` is
    smaller than the complement, the ``d x d`` scatter matrix is downdated instead (the
    fold's rows subtracted) and eigendecomposed.
    """
    M = np.asarray(M, dtype=np.float64)
    n, d = M.shape
    Y = M if centred else M - M.mean(axis=0)  # globally centred first: the fold centring then cancels little
    gram = d > n // 2
    K = Y @ Y.T if gram else None
    C = None if gram else Y.T @ Y
    for k in np.unique(folds):
        test = np.flatnonzero(folds == k)
        train = np.flatnonzero(folds != k)
        n_t = len(train)
        a = -Y[test].sum(axis=0) / n_t  # the complement's mean: the rows of Y sum to zero
        if gram:
            K_tt = K[np.ix_(train, train)]
            r = K_tt.mean(axis=1)
            c = r.mean()
            G = K_tt - r[:, None] - r[None, :] + c
            lam, U = np.linalg.eigh(G)
        else:
            Yt = Y[test]
            S = C - Yt.T @ Yt - n_t * np.outer(a, a)
            lam, U = np.linalg.eigh(S)
        lam, U = lam[::-1], U[:, ::-1]
        lam = np.maximum(lam, 0.0)
        q = _n_components(n_components, lam, n_t, d)
        keep = lam[:q] > 1e-12 * max(lam[0], np.finfo(float).tiny)
        lam_k, U_k = lam[:q][keep], U[:, :q][:, keep]
        for start in range(0, len(test), batch_size):
            rows = test[start : start + batch_size]
            Z = Y[rows] - a
            if gram:
                # centred cross-Gram (y_t - a) . (y_e - a) for t in train, e in rows
                K_te = K[np.ix_(train, rows)]
                g = K_te - r[:, None] - K_te.mean(axis=0)[None, :] + c
                B = np.zeros((n, len(rows)))  # coefficients on all rows, zero off the complement:
                B[train] = U_k @ ((U_k.T @ g) / lam_k[:, None])  # no copy of the complement's rows
                recon = (B.T @ Y) - B.sum(axis=0)[:, None] * a
            else:
                recon = (Z @ U_k) @ U_k.T
            yield rows, Z - recon


def gram_fold_projections(Y, K, train, test, n_components):
    """Projections on the leading principal axes of the rows ``train``, from the Gram matrix; exact.

    Parameters
    ----------
    Y : ndarray of shape (n, d)
        Rows centred by their overall mean (they sum to zero).
    K : ndarray of shape (n, n)
        ``Y @ Y.T``.
    train, test : ndarray of int
        The complement (whose PCA it is) and the fold (the other rows).
    n_components : int >= 1
        Number of principal axes, at most ``len(train)``; axes without variance are left out.

    Returns
    -------
    mean : ndarray of shape (d,)
        The mean of the ``train`` rows, in the coordinates of ``Y``.
    proj_train : ndarray of shape (len(train), d)
        ``V V^T (y - mean)`` for the ``train`` rows, ``V`` their leading principal axes.
    proj_test : ndarray of shape (len(test), d)
        The same for the ``test`` rows.
    """
    n_t = len(train)
    a = -Y[test].sum(axis=0) / n_t
    K_tt = K[np.ix_(train, train)]
    r = K_tt.mean(axis=1)
    c = r.mean()
    lam, U = np.linalg.eigh(K_tt - r[:, None] - r[None, :] + c)
    lam, U = np.maximum(lam[::-1], 0.0), U[:, ::-1]
    q = min(int(n_components), n_t)
    keep = lam[:q] > 1e-12 * max(lam[0], np.finfo(float).tiny)
    lam_k, U_k = lam[:q][keep], U[:, :q][:, keep]
    Yc = Y[train] - a
    # (Y_T - a) V V^T = U_k U_k^T (Y_T - a): the complement projects in sample space
    proj_train = U_k @ (U_k.T @ Yc)
    K_te = K[np.ix_(train, test)]
    g = K_te - r[:, None] - K_te.mean(axis=0)[None, :] + c
    proj_test = ((U_k @ ((U_k.T @ g) / lam_k[:, None])).T) @ Yc
    return a, proj_train, proj_test
