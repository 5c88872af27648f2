"""Figures (matplotlib, from the ``plot`` extra, is imported on first use)."""

from greyanom.plotting._images import plot_heatmap_overlays, plot_roc, plot_score_distributions

__all__ = [
    "plot_heatmap_overlays",
    "plot_roc",
    "plot_score_distributions",
]
