"""Figures for drift monitoring: the anomaly-score distribution over time.

matplotlib is imported on first use (the ``plot`` extra), never at ``import greyanom``.
"""

from __future__ import annotations

import numpy as np

from greyanom._optional import import_optional

__all__ = ["plot_score_drift"]

_QUANTILES = ("q05", "q25", "q50", "q75", "q95")


def plot_score_drift(history, *, policy=None, ax=None):
    """Anomaly-score quantiles per batch over time, with the bands and the alerts marked.

    Parameters
    ----------
    history : pandas.DataFrame
        :attr:`greyanom.drift.RollingDriftMonitor.history_`: one row per batch, in time order,
        with the columns ``batch``, ``q05``, ``q25``, ``q50``, ``q75``, ``q95`` and ``alert``.
    policy : DecisionPolicy, optional
        Draws its REVIEW and REJECT thresholds as horizontal lines.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure otherwise.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.decision import DecisionPolicy
    >>> from greyanom.drift import RollingDriftMonitor
    >>> from greyanom.plotting import plot_score_drift
    >>> rng = np.random.default_rng(0)
    >>> monitor = RollingDriftMonitor(DecisionPolicy().fit(rng.normal(size=500)))
    >>> for day in range(4):
    ...     _ = monitor.update(rng.normal(loc=0.2 * day, size=200))
    >>> ax = plot_score_drift(monitor.history_, policy=monitor.policy)
    """
    missing = [c for c in ("batch", *_QUANTILES, "alert") if c not in getattr(history, "columns", ())]
    if missing:
        raise ValueError(f"history lacks the column(s) {missing}; pass RollingDriftMonitor.history_.")
    if len(history) == 0:
        raise ValueError("history is empty: update the monitor with at least one batch first.")
    if ax is None:
        plt = import_optional("matplotlib.pyplot", "plot", "plotting score drift")
        _, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    x = np.arange(len(history))
    q = {c: history[c].to_numpy(dtype=float) for c in _QUANTILES}
    ax.fill_between(x, q["q05"], q["q95"], color="C0", alpha=0.18, label="5-95 %")
    ax.fill_between(x, q["q25"], q["q75"], color="C0", alpha=0.35, label="25-75 %")
    ax.plot(x, q["q50"], color="C0", marker="o", markersize=3, label="median")
    if policy is not None:
        ax.axhline(policy.review_threshold_, color="C1", linestyle="--", linewidth=1, label="REVIEW threshold")
        ax.axhline(policy.reject_threshold_, color="C3", linestyle="--", linewidth=1, label="REJECT threshold")
    alert = history["alert"].to_numpy(dtype=bool)
    if alert.any():
        ax.scatter(x[alert], q["q95"][alert], marker="v", color="C3", zorder=3, label="alert")
    ax.set_xticks(x)
    ax.set_xticklabels([str(b) for b in history["batch"]], rotation=45, ha="right", fontsize="small")
    ax.set_xlabel("batch (time order)")
    ax.set_ylabel("anomaly score")
    ax.legend(fontsize="small", loc="upper left")
    return ax
