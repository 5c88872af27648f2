"""Figures for image anomaly detection: ROC, score distributions, heatmap overlays.

matplotlib is imported on first use (the ``plot`` extra), never at ``import greyanom``.
"""

from __future__ import annotations

import numpy as np

from greyanom._optional import import_optional
from greyanom._validation import check_finite, check_images, check_positive_int, check_real
from greyanom.metrics import _check_labels_scores, _check_target_fpr, fnr_at_fpr

__all__ = ["plot_heatmap_overlays", "plot_roc", "plot_score_distributions"]


def _pyplot(purpose):
    return import_optional("matplotlib.pyplot", "plot", purpose)


def _axes(ax, purpose, figsize=(5, 4)):
    if ax is not None:
        return ax
    plt = _pyplot(purpose)
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def plot_roc(y_true, scores, *, target_fpr=0.05, label=None, ax=None):
    """ROC curve of anomaly scores with the operating point at ``target_fpr`` marked.

    Call it once per detector with the same ``ax`` to compare detectors.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.
    target_fpr : float, default=0.05
        The operating point (see :func:`greyanom.metrics.fnr_at_fpr`); marked with a dot
        and a vertical dotted line.
    label : str, optional
        Legend label; the AUROC is appended.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure by default.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> from greyanom.plotting import plot_roc
    >>> ax = plot_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], label="demo")
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _check_labels_scores(y_true, scores)
    target_fpr = _check_target_fpr(target_fpr)
    ax = _axes(ax, "plot_roc")
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    name = f"{label} (AUROC {auc:.3f})" if label else f"AUROC {auc:.3f}"
    (line,) = ax.plot(fpr, tpr, label=name, drawstyle="steps-post")
    fnr, threshold = fnr_at_fpr(y, s, target_fpr)
    op_fpr = float(np.mean(s[y == 0] >= threshold))
    ax.plot([op_fpr], [1 - fnr], "o", color=line.get_color(), zorder=3)
    ax.axvline(target_fpr, color="0.5", linestyle=":", linewidth=1)
    ax.plot([0, 1], [0, 1], color="0.8", linewidth=0.8, zorder=0)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (normal images flagged)")
    ax.set_ylabel("true-positive rate (defects detected)")
    ax.set_title(f"ROC; dots: operating point at FPR <= {100 * target_fpr:g}%")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_score_distributions(y_true, scores, *, threshold=None, bins=30, log=False, title=None, ax=None):
    """Histograms of the anomaly scores of normal and anomalous samples.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.
    threshold : float, optional
        Drawn as a vertical line (e.g. the FPR = 5% threshold of
        :func:`greyanom.metrics.fnr_at_fpr`); ``inf`` (flag nothing) draws none.
    bins : int, default=30
        Number of histogram bins (shared by both classes).
    log : bool, default=False
        Log-scaled score axis (for positive scores spanning decades).
    title : str, optional
        Axes title.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure by default.

    Returns
    -------
    ax : matplotlib.axes.Axes
    """
    y, s = _check_labels_scores(y_true, scores)
    bins = check_positive_int(bins, "bins")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or np.isnan(threshold):
            raise ValueError(f"threshold must be a number (inf: flag nothing), got {threshold!r}.")
        threshold = float(threshold)
    ax = _axes(ax, "plot_score_distributions")
    if log:
        if (s <= 0).any():
            raise ValueError("log=True needs positive scores.")
        edges = np.geomspace(s.min(), s.max(), bins + 1)
        ax.set_xscale("log")
    else:
        edges = np.linspace(s.min(), s.max(), bins + 1)
    ax.hist(s[y == 0], bins=edges, alpha=0.6, label=f"normal (n={int((y == 0).sum())})", color="tab:blue")
    ax.hist(s[y == 1], bins=edges, alpha=0.6, label=f"anomalous (n={int(y.sum())})", color="tab:red")
    if threshold is not None and np.isfinite(threshold):  # inf (flag nothing) has no line
        ax.axvline(float(threshold), color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_heatmap_overlays(images, heatmaps, masks=None, *, titles=None, n_cols=4, alpha=0.7, cmap="inferno"):
    """Images, their anomaly heatmaps as an overlay, and the defect mask outlines.

    Each image gets two panels: the grayscale image (with the mask contour in cyan)
    and the image with the heatmap overlaid (colour scale shared by all images, up to
    the 99.9th percentile of all heatmaps, so heatmaps are comparable; values below 5%
    of that scale are left transparent).

    Parameters
    ----------
    images : array-like of shape (n, H, W)
        Grayscale images in [0, 1].
    heatmaps : array-like of shape (n, H, W)
        Per-pixel anomaly maps (``detector.explain(images).heatmap``).
    masks : array-like of bool, shape (n, H, W), optional
        Ground-truth defect pixels, drawn as contours.
    titles : sequence of str, optional
        One title per image (e.g. the defect type and the score).
    n_cols : int, default=4
        Images per row (each takes two panels).
    alpha : float, default=0.7
        Opacity of the heatmap overlay.
    cmap : str, default="inferno"
        Colour map of the heatmap.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    images = np.asarray(images)
    heatmaps = np.asarray(heatmaps)
    if images.ndim == 2:
        images, heatmaps = images[None], heatmaps[None]
        masks = None if masks is None else np.asarray(masks)[None]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W), got {images.shape}.")
    images = check_images(images, name="images")
    if heatmaps.shape != images.shape:
        raise ValueError(f"heatmaps must have the shape of images {images.shape}, got {heatmaps.shape}.")
    if heatmaps.dtype.kind not in "biuf":
        raise TypeError(f"heatmaps must be numeric, got dtype {heatmaps.dtype}.")
    heatmaps = heatmaps.astype(np.float64, copy=False)
    check_finite(heatmaps, "heatmaps")
    n_cols = check_positive_int(n_cols, "n_cols")
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0)
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != images.shape:
            raise ValueError(f"masks must have the shape of images {images.shape}, got {masks.shape}.")
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must hold {n} strings, got {len(titles)}.")
    plt = _pyplot("plot_heatmap_overlays")
    n_cols = min(n_cols, n)
    n_rows = int(np.ceil(n / n_cols))
    fig, axes = plt.subplots(
        n_rows, 2 * n_cols, figsize=(3.2 * n_cols, 1.8 * n_rows + 0.4), squeeze=False, layout="constrained"
    )
    vmax = float(np.percentile(heatmaps, 99.9)) or 1.0
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, n_cols)
        ax_img, ax_heat = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_img.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        ax_heat.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        # pixels below 5% of the colour scale stay transparent, so the image shows through
        shown = np.ma.masked_less(heatmaps[i], 0.05 * vmax)
        im = ax_heat.imshow(shown, cmap=cmap, alpha=alpha, vmin=0, vmax=vmax)
        if masks is not None and masks[i].any():
            for ax in (ax_img, ax_heat):
                ax.contour(masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
        if titles is not None:
            ax_img.set_title(str(titles[i]), fontsize="small", loc="left")
    fig.colorbar(im, ax=axes, shrink=0.6, label="heatmap")
    return fig
