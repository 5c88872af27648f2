"""Figures (matplotlib is imported on first use; install ``greyanom[plot]``)."""

from greyanom.plotting._traces import plot_score_series, plot_signature_heatmap, plot_trace_fits, signature_curve

__all__ = ["plot_score_series", "plot_signature_heatmap", "plot_trace_fits", "signature_curve"]
