"""Figures for process traces and shape signatures (matplotlib imported on use)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from greyanom._optional import import_optional

__all__ = ["plot_signature_heatmap", "plot_trace_fits", "plot_score_series", "signature_curve"]

_PARAMS = ("gamma", "R", "omega", "y", "phi", "c")


def _plt(purpose):
    return import_optional("matplotlib.pyplot", "plot", purpose)


def _axes(ax, purpose, figsize):
    plt = _plt(purpose)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def signature_curve(t, signature):
    """Evaluate the oscillator (11) of a signature at times ``t`` (shifted to start at 0).

    Parameters
    ----------
    t : array-like of shape (n,)
        Sample times; ``x = min(t)`` is the start.
    signature : array-like of shape (6,)
        ``(gamma, R, omega, y, phi, c)``.

    Returns
    -------
    alpha : ndarray of shape (n,)
        ``R exp(-gamma tau / 2) cos(omega tau - phi) + c tau + y`` with ``tau = t - min(t)``.
    """
    t = np.asarray(t, dtype=np.float64)
    g, R, w, y, p, c = np.asarray(signature, dtype=np.float64)
    tau = t - t.min()
    return R * np.exp(-g * tau / 2.0) * np.cos(w * tau - p) + c * tau + y


def _select_group(frame, group, detector):
    _, gk = detector._keys()
    if not gk:
        return frame
    if group is None:
        groups = frame.index.droplevel(list(detector._keys()[0])).unique()
        if len(groups) != 1:
            raise ValueError(f"X has {len(groups)} groups; pass group= (one of {list(groups)[:5]}...).")
        group = groups[0]
    key = group if isinstance(group, tuple) else (group,)
    return frame.xs(key, level=list(gk)) if len(gk) > 1 else frame.xs(key[0], level=gk[0])


def _normal_row(detector, group):
    nm = detector.normal_model_
    if len(nm) == 1 and group is None:
        return nm.iloc[0]
    return nm.loc[group]


def plot_signature_heatmap(detector, X=None, *, signatures=None, group=None, vmax=4.0, ax=None):
    """The paper's monitoring heatmap: standardised parameters, SSR and score per wafer.

    Parameters
    ----------
    detector : ShapeSignatureDetector
        A fitted detector; parameters are standardised by its normal model,
        ``z = (s - mu*) / sigma*_S``.
    X : DataFrame or None
        Traces to show (rows in time order). Needed unless ``signatures`` is given.
    signatures : DataFrame or None
        The output of ``detector.signatures(X)``, to avoid refitting.
    group : scalar or tuple or None
        The (tool, sensor, step) group to show; needed when ``X`` has several.
    vmax : float, default=4.0
        Colour limit (in standard deviations).
    ax : matplotlib Axes or None
        Axes to draw on; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib Axes
    """
    ax = _axes(ax, "plot_signature_heatmap", (10, 3.5))
    sig = detector.signatures(X) if signatures is None else signatures
    sig = _select_group(sig, group, detector)
    nm = _normal_row(detector, group)
    rows = []
    for p in _PARAMS:
        rows.append((sig[p].to_numpy(np.float64) - nm[f"mu_{p}"]) / nm[f"sd_{p}"])
    ssr = sig["ssr"].to_numpy(np.float64)
    rows.append((ssr - np.nanmean(ssr)) / (np.nanstd(ssr) or 1.0))
    sc = sig["score"].to_numpy(np.float64)
    rows.append((sc - np.nanmean(detector.train_scores_)) / (np.nanstd(detector.train_scores_) or 1.0))
    img = np.vstack(rows)
    im = ax.imshow(img, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_yticks(range(img.shape[0]), [*_PARAMS, "ssr", "score"])
    ax.set_xlabel("wafer (time order)")
    labels = [str(k) for k in sig.index]
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
    ax.figure.colorbar(im, ax=ax, label="standardised value")
    return ax


def plot_trace_fits(detector, X, traces, *, group=None, signatures=None, ax=None):
    """Data, fitted signature curves and the normal-model curve for a few traces.

    Parameters
    ----------
    detector : ShapeSignatureDetector
        A fitted detector.
    X : DataFrame
        Long-format traces (the detector's column names).
    traces : sequence
        ``trace_keys`` values (e.g. wafer ids) to draw.
    group : scalar or tuple or None
        Group to draw; needed when ``X`` has several.
    signatures : DataFrame or None
        ``detector.signatures(X)``, to avoid refitting.
    ax : matplotlib Axes or None

    Returns
    -------
    ax : matplotlib Axes
    """
    ax = _axes(ax, "plot_trace_fits", (7, 4))
    tk, gk = detector._keys()
    sig = detector.signatures(X) if signatures is None else signatures
    sig = _select_group(sig, group, detector)
    frame = X
    if gk:
        key = group if isinstance(group, tuple) else (group,)
        if group is None:
            key = tuple(frame[list(gk)].iloc[0])
        m = np.ones(len(frame), dtype=bool)
        for c, v in zip(gk, key):
            m &= (frame[c] == v).to_numpy()
        frame = frame[m]
    nm = _normal_row(detector, group)
    t_all = None
    for k, key in enumerate(traces):
        kt = key if isinstance(key, tuple) else (key,)
        m = np.ones(len(frame), dtype=bool)
        for c, v in zip(tk, kt):
            m &= (frame[c] == v).to_numpy()
        tr = frame[m].sort_values(detector.time)
        t = tr[detector.time].to_numpy(np.float64)
        color = f"C{k % 10}"
        ax.plot(t, tr[detector.value], ".", color=color, ms=3, alpha=0.6)
        s = sig.loc[key, list(_PARAMS)].to_numpy(np.float64)
        if np.isfinite(s).all():
            tt = np.linspace(t.min(), t.max(), 300)
            ax.plot(tt, signature_curve(tt, s), "-", color=color, label=f"{key} (score {sig.loc[key, 'score']:.1f})")
        t_all = t if t_all is None or t.size > t_all.size else t_all
    if t_all is not None:
        tt = np.linspace(t_all.min(), t_all.max(), 300)
        mu = np.array([nm[f"mu_{p}"] for p in _PARAMS])
        ax.plot(tt, signature_curve(tt, mu), "k-", lw=2, label="normal model")
    ax.set_xlabel(detector.time)
    ax.set_ylabel(detector.value)
    ax.legend(fontsize="small")
    return ax


#: (colour, line style) of successive control limits: each limit reads apart from the others
_LIMIT_STYLES = (("C1", "--"), ("C3", "-"), ("C4", "-."), ("C2", ":"))


def plot_score_series(scores, *, reference=None, limits=(0.95, 0.99), labels=None, yscale="linear", ax=None):
    """Anomaly scores in time order with control limits.

    Parameters
    ----------
    scores : pandas.Series
        Scores in time order (``detector.score(X)`` or ``detector.score_wafers(X)``).
    reference : array-like or None
        Scores of normal traces that set the control limits (e.g. ``detector.train_scores_``
        or held-out normal scores); ``None`` uses ``scores`` itself.
    limits : sequence of float, default=(0.95, 0.99)
        Quantiles of ``reference`` drawn as horizontal lines, each in its own colour and
        line style, with its value in the legend.
    labels : array-like of bool or None
        Marks known anomalies (drawn in red).
    yscale : {"linear", "symlog"}, default="linear"
        ``"symlog"`` for scores that span decades and may be negative (centred scores): a
        symmetric log axis whose linear part reaches the decade below the lowest limit, so
        that the ticks around zero keep a decade apart (``ax.set_yscale("symlog")`` with its
        default ``linthresh=2`` crowds them).
    ax : matplotlib Axes or None

    Returns
    -------
    ax : matplotlib Axes
        The legend sits right of the axes, off the data; call ``figure.tight_layout()`` or
        use a constrained layout to make room for it.
    """
    if yscale not in ("linear", "symlog"):
        raise ValueError(f"yscale must be 'linear' or 'symlog', got {yscale!r}.")
    if len(limits) > len(_LIMIT_STYLES):
        raise ValueError(f"limits takes at most {len(_LIMIT_STYLES)} quantiles, got {len(limits)}.")
    ax = _axes(ax, "plot_score_series", (9, 3))
    s = pd.Series(scores)
    x = np.arange(len(s))
    ref = np.asarray(s if reference is None else reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    ax.plot(x, s.to_numpy(np.float64), "-", color="0.6", lw=0.8)
    ax.plot(x, s.to_numpy(np.float64), "o", color="C0", ms=3, label="score")
    if labels is not None:
        lab = np.asarray(labels, dtype=bool)
        ax.plot(x[lab], s.to_numpy(np.float64)[lab], "o", color="C3", ms=5, label="known anomaly")
    values = [float(np.quantile(ref, q)) for q in limits]
    for q, v, (color, ls) in zip(limits, values, _LIMIT_STYLES):
        ax.axhline(v, color=color, ls=ls, lw=1.5, label=f"{100 * q:g} % limit ({v:.3g})")
    if yscale == "symlog":
        positive = [v for v in values if v > 0]
        base = min(positive) if positive else float(np.nanmax(np.abs(ref), initial=1.0)) or 1.0
        ax.set_yscale("symlog", linthresh=10.0 ** np.floor(np.log10(base)), linscale=1.0)
    ax.set_xlabel("trace (time order)")
    ax.set_ylabel("anomaly score")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return ax
