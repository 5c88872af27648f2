"""Figures (matplotlib, from the ``plot`` extra, is imported on first use)."""

from greyanom.plotting._drift import plot_score_drift
from greyanom.plotting._images import plot_heatmap_overlays, plot_roc, plot_score_distributions
from greyanom.plotting._traces import (
    plot_score_series,
    plot_signature_heatmap,
    plot_trace_fits,
    signature_curve,
)

__all__ = [
    "plot_heatmap_overlays",
    "plot_roc",
    "plot_score_distributions",
    "plot_score_drift",
    "plot_score_series",
    "plot_signature_heatmap",
    "plot_trace_fits",
    "signature_curve",
]
