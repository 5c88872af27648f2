"""Evaluation metrics for anomaly detectors, built on :mod:`sklearn.metrics`.

Every function takes anomaly scores with greyanom's sign convention (higher = more
anomalous, i.e. ``detector.score(X)``) and labels ``y_true`` with 1 = anomalous
(defective) and 0 = normal.

Image level: :func:`image_auroc`, :func:`image_auprc`, :func:`fnr_at_fpr` (the miss rate
at a target false-alarm rate, with the threshold that achieves it) and
:func:`detection_rates` (per defect type). Pixel level: :func:`pixel_auroc` and
:func:`aupro`. :func:`evaluate` computes them all into an :class:`EvaluationReport`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
import math
import numbers

import numpy as np
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "EvaluationReport",
    "aupro",
    "detection_rates",
    "evaluate",
    "fnr_at_fpr",
    "format_reports",
    "image_auprc",
    "image_auroc",
    "pixel_auroc",
]


# -- input checks ---------------------------------------------------------------------
def _check_labels_scores(y_true, scores):
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}.")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one anomaly score per sample), got shape {s.shape}.")
    if len(y) != len(s):
        raise ValueError(
            f"y_true and scores must have the same length, got {len(y)} labels and {len(s)} scores."
        )
    if len(y) == 0:
        raise ValueError("y_true and scores are empty.")
    if y.dtype.kind not in "biuf" or s.dtype.kind not in "biuf":
        raise TypeError("y_true and scores must be numeric arrays.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"y_true must hold 0 (normal) and 1 (anomalous) only, got the values {np.unique(y)[:10]}."
        )
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        n_bad = int((~np.isfinite(s)).sum())
        raise ValueError(f"scores contains {n_bad} NaN or infinite value(s); expected finite scores.")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        only = "anomalous (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"y_true holds only {only} samples; the metric needs both normal and anomalous samples."
        )
    return y, s


def _check_target_fpr(target_fpr):
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, numbers.Real):
        raise TypeError(f"target_fpr must be a float in [0, 1), got {target_fpr!r}.")
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr!r}.")
    return float(target_fpr)


def _check_pixel_inputs(masks, heatmaps):
    m = np.asarray(masks)
    h = np.asarray(heatmaps)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if h.ndim == 4 and h.shape[1] == 1:
        h = h[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (n, H, W), got shape {m.shape}.")
    if h.shape != m.shape:
        raise ValueError(
            f"heatmaps and masks must have the same shape (n, H, W), got heatmaps {h.shape} and masks {m.shape}."
        )
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise ValueError("masks must be boolean (or hold 0 and 1 only).")
        m = m.astype(bool)
    if h.dtype.kind not in "biuf":
        raise TypeError(f"heatmaps must be numeric, got dtype {h.dtype}.")
    if not np.isfinite(h).all():
        n_bad = int((~np.isfinite(h)).sum())
        raise ValueError(f"heatmaps contains {n_bad} NaN or infinite value(s); expected finite values.")
    n_pos = int(m.sum())
    if n_pos == 0 or n_pos == m.size:
        raise ValueError(
            "masks must contain both anomalous (True) and normal (False) pixels for a pixel-level metric."
        )
    return m, h


# -- image-level metrics ---------------------------------------------------------------
def image_auroc(y_true, scores):
    """Area under the ROC curve of image (or sample) anomaly scores.

    The probability that a random anomalous sample scores higher than a random normal
    one, ties counting one half (:func:`sklearn.metrics.roc_auc_score`).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> from greyanom.metrics import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, s = _check_labels_scores(y_true, scores)
    return float(roc_auc_score(y, s))


def image_auprc(y_true, scores):
    """Area under the precision-recall curve (average precision), anomalies positive.

    Computed by :func:`sklearn.metrics.average_precision_score`:
    :math:`\\sum_n (R_n - R_{n-1}) P_n` over the score thresholds. A random detector scores
    the anomaly fraction; a perfect one 1.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    auprc : float

    Examples
    --------
    >>> from greyanom.metrics import image_auprc
    >>> round(image_auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    y, s = _check_labels_scores(y_true, scores)
    return float(average_precision_score(y, s))


def fnr_at_fpr(y_true, scores, target_fpr=0.05):
    """False-negative rate at a target false-positive rate, and its threshold.

    A sample is flagged anomalous when ``score >= threshold``. The threshold is the
    **lowest** candidate threshold whose false-positive rate on the normal samples is at
    most ``target_fpr``; candidates are the observed scores and ``+inf`` (flag nothing).
    Any threshold between two consecutive observed scores gives the same predictions
    on these data, so restricting to observed scores loses nothing.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.
    target_fpr : float in [0, 1), default=0.05
        The largest acceptable fraction of normal samples flagged.

    Returns
    -------
    fnr : float
        Fraction of anomalous samples with ``score < threshold`` (missed).
    threshold : float
        The threshold; ``inf`` when only flagging nothing meets the target.

    Notes
    -----
    Ties: every sample whose score equals the threshold is flagged. If normal samples
    tie at a score and flagging all of them would exceed ``target_fpr``, that score is
    not admissible and the next higher observed score is used, so the achieved FPR can
    be below the target (it is never above). With :math:`n_0` normal samples the
    achievable FPRs are multiples of :math:`1/n_0`; at 60 normals and a 5% target, at
    most 3 normals are flagged.

    The candidates come from :func:`sklearn.metrics.roc_curve` with
    ``drop_intermediate=False``.

    Examples
    --------
    >>> from greyanom.metrics import fnr_at_fpr
    >>> y = [0] * 20 + [1] * 4
    >>> s = list(range(20)) + [18.5, 25, 30, 2]
    >>> fnr_at_fpr(y, s, target_fpr=0.05)  # flags the normal 19 and 18.5, 25, 30
    (0.25, 18.5)
    """
    y, s = _check_labels_scores(y_true, scores)
    target_fpr = _check_target_fpr(target_fpr)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds decrease, fpr increases: the last admissible index is the lowest threshold
    idx = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])
    return float(1.0 - tpr[idx]), float(thresholds[idx])


def detection_rates(defect_types, scores, threshold):
    """Fraction of samples of each defect type flagged at a threshold.

    Parameters
    ----------
    defect_types : array-like of str, shape (n,)
        Defect type of each sample; ``"good"`` marks normal samples, whose rate is the
        false-positive rate.
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous.
    threshold : float
        Samples with ``score >= threshold`` are flagged.

    Returns
    -------
    rates : dict
        ``{defect_type: (n_samples, n_flagged, rate)}``, sorted by type with
        ``"good"`` first.

    Examples
    --------
    >>> from greyanom.metrics import detection_rates
    >>> detection_rates(["good", "scratch", "scratch"], [0.1, 0.9, 0.2], 0.5)
    {'good': (1, 0, 0.0), 'scratch': (2, 1, 0.5)}
    """
    t = np.asarray(defect_types)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim != 1 or s.ndim != 1 or len(t) != len(s):
        raise ValueError(
            f"defect_types and scores must be 1-D of the same length, got shapes {t.shape} and {s.shape}."
        )
    if not np.isfinite(s).all():
        raise ValueError("scores contains NaN or infinite values; expected finite scores.")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number, got {threshold!r}.") from None
    if math.isnan(threshold):
        raise ValueError("threshold is NaN.")
    t = t.astype(str)
    flagged = s >= threshold
    types = sorted(set(t.tolist()), key=lambda name: (name != "good", name))
    out = {}
    for name in types:
        sel = t == name
        n, k = int(sel.sum()), int(flagged[sel].sum())
        out[name] = (n, k, k / n)
    return out


# -- pixel-level metrics ---------------------------------------------------------------
def pixel_auroc(masks, heatmaps):
    """Pixel-level AUROC: every pixel of every image is one sample.

    Parameters
    ----------
    masks : array-like of bool, shape (n, H, W)
        Ground-truth defect pixels (all False for normal images).
    heatmaps : array-like of shape (n, H, W)
        Per-pixel anomaly maps (e.g. ``detector.explain(X).heatmap``), same shape.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.metrics import pixel_auroc
    >>> masks = np.zeros((1, 2, 2), bool); masks[0, 0, 0] = True
    >>> pixel_auroc(masks, np.array([[[0.9, 0.1], [0.2, 0.3]]]))
    1.0
    """
    m, h = _check_pixel_inputs(masks, heatmaps)
    return float(roc_auc_score(m.ravel(), h.ravel()))


def _component_labels(masks):
    """Label the 8-connected defect regions of each mask with globally unique ids."""
    from scipy.ndimage import label

    structure = np.ones((3, 3), dtype=int)
    labels = np.zeros(masks.shape, dtype=np.int64)
    n_total = 0
    for i, mask in enumerate(masks):
        lab, n = label(mask, structure=structure)
        labels[i] = np.where(lab > 0, lab + n_total, 0)
        n_total += n
    return labels, n_total


def aupro(masks, heatmaps, max_fpr=0.3):
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr``.

    The MVTec AD / anomalib metric: each connected (8-neighbourhood) defect region
    counts equally, whatever its size, so a detector cannot score well by finding only
    the large defects.

    Parameters
    ----------
    masks : array-like of bool, shape (n, H, W)
        Ground-truth defect pixels.
    heatmaps : array-like of shape (n, H, W)
        Per-pixel anomaly maps, same shape.
    max_fpr : float in (0, 1], default=0.3
        Integration limit on the pixel false-positive rate.

    Returns
    -------
    aupro : float in [0, 1]
        The area divided by ``max_fpr``, so that a perfect detector scores 1.

    Notes
    -----
    For a threshold :math:`t`, the pixel false-positive rate is the fraction of all
    defect-free pixels (of every image) with heatmap :math:`\\ge t`, and

    .. math:: \\mathrm{PRO}(t) = \\frac{1}{R} \\sum_{r=1}^{R}
              \\frac{|\\{p \\in C_r : h(p) \\ge t\\}|}{|C_r|}

    over the :math:`R` connected regions :math:`C_r` of the masks. The PRO-versus-FPR
    curve over all thresholds (from :math:`(0, 0)`) is integrated with the trapezoidal
    rule up to ``max_fpr``, interpolating linearly at ``max_fpr``, and divided by
    ``max_fpr``. This is :func:`sklearn.metrics.roc_curve` with each defect pixel
    weighted by :math:`1/|C_r|`, which makes the weighted true-positive rate equal to
    the mean overlap.

    References
    ----------
    .. [1] P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger, C. Steger, "The MVTec
       Anomaly Detection Dataset", IJCV 129, 2021 (section 5.2).

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.metrics import aupro
    >>> masks = np.zeros((1, 4, 4), bool); masks[0, :2, :2] = True
    >>> aupro(masks, masks.astype(float))
    1.0
    """
    m, h = _check_pixel_inputs(masks, heatmaps)
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}.")
    labels, n_regions = _component_labels(m)
    flat_labels = labels.ravel()
    sizes = np.bincount(flat_labels)
    weights = np.ones(flat_labels.shape, dtype=np.float64)
    pos = flat_labels > 0
    weights[pos] = 1.0 / sizes[flat_labels[pos]]
    fpr, pro, _ = roc_curve(pos, h.ravel(), sample_weight=weights, drop_intermediate=False)
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])
    cut = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, yv = fpr[:cut], pro[:cut]
    if cut < len(fpr) and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x, yv = np.append(x, max_fpr), np.append(yv, y_end)
    return float(min(1.0, auc(x, yv) / max_fpr))


# -- the report ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """The metrics of one detector on one test set (returned by :func:`evaluate`).

    Attributes
    ----------
    auroc : float
        Image AUROC.
    auprc : float
        Image AUPRC (average precision), anomalies positive.
    fnr_at_fpr : float
        Fraction of anomalous images missed at ``threshold``.
    threshold : float
        The lowest score threshold with FPR <= ``target_fpr`` (see :func:`fnr_at_fpr`).
    fpr : float
        The false-positive rate achieved at ``threshold`` (<= ``target_fpr``).
    target_fpr : float
        The target false-positive rate.
    pixel_auroc : float or None
        Pixel AUROC, or None without heatmaps and masks.
    aupro : float or None
        AUPRO up to a pixel FPR of 0.3, or None without heatmaps and masks.
    per_type : dict or None
        ``{defect_type: detection rate at threshold}`` (for ``"good"``, the
        false-positive rate), or None without ``defect_types``.
    per_type_counts : dict or None
        ``{defect_type: (n_samples, n_flagged)}``.
    n_normal, n_anomalous : int
        Numbers of normal and anomalous samples.
    """

    auroc: float
    auprc: float
    fnr_at_fpr: float
    threshold: float
    fpr: float
    target_fpr: float
    pixel_auroc: float | None
    aupro: float | None
    per_type: dict | None
    per_type_counts: dict | None
    n_normal: int
    n_anomalous: int

    def to_dict(self):
        """The report as a plain dict (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        if self.per_type_counts is not None:
            out["per_type_counts"] = {k: list(v) for k, v in self.per_type_counts.items()}
        return out

    def __str__(self):
        pct = f"{100 * self.target_fpr:g}%"
        rows = [
            ("image AUROC", _fmt(self.auroc)),
            ("image AUPRC", _fmt(self.auprc)),
            (f"FNR @ FPR<={pct}", _fmt(self.fnr_at_fpr)),
            ("threshold", f"{self.threshold:.6g}"),
            ("achieved FPR", _fmt(self.fpr)),
            ("pixel AUROC", _fmt(self.pixel_auroc)),
            ("AUPRO (FPR<=0.3)", _fmt(self.aupro)),
            ("normal / anomalous", f"{self.n_normal} / {self.n_anomalous}"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = ["EvaluationReport"] + [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.per_type is not None:
            lines.append("  detection rate at threshold (n flagged / n):")
            tw = max(len(t) for t in self.per_type)
            for name, rate in self.per_type.items():
                n, k = self.per_type_counts[name]
                lines.append(f"    {name:<{tw}}  {rate:6.3f}  ({k}/{n})")
        return "\n".join(lines)


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def evaluate(y_true, scores, *, heatmaps=None, masks=None, defect_types=None, target_fpr=0.05):
    """Compute every metric of a detector on a labelled test set.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        1 = anomalous, 0 = normal.
    scores : array-like of shape (n,)
        Anomaly scores (``detector.score(X_test)``), higher = more anomalous.
    heatmaps : array-like of shape (n, H, W), optional
        Per-pixel anomaly maps (``detector.explain(X_test).heatmap``). With ``masks``
        gives ``pixel_auroc`` and ``aupro``.
    masks : array-like of bool, shape (n, H, W), optional
        Ground-truth defect pixels.
    defect_types : array-like of str, shape (n,), optional
        Defect type per sample (``"good"`` for normal ones); gives ``per_type``.
    target_fpr : float in [0, 1), default=0.05
        Target false-positive rate of the operating point.

    Returns
    -------
    report : EvaluationReport
        Prints as a table; ``report.to_dict()`` gives a dict.

    See Also
    --------
    format_reports : One table for several detectors.

    Examples
    --------
    >>> from greyanom.metrics import evaluate
    >>> report = evaluate([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.25, 0.9], target_fpr=0.4)
    >>> report.auroc, report.fnr_at_fpr, report.threshold
    (0.8333333333333334, 0.0, 0.25)
    """
    y, s = _check_labels_scores(y_true, scores)
    target_fpr = _check_target_fpr(target_fpr)
    fnr, threshold = fnr_at_fpr(y, s, target_fpr)
    fpr = float(np.mean(s[y == 0] >= threshold))
    if (heatmaps is None) != (masks is None):
        raise ValueError("pass both heatmaps and masks for the pixel-level metrics, or neither.")
    pix = pro = None
    if heatmaps is not None:
        m, h = _check_pixel_inputs(masks, heatmaps)
        if len(m) != len(y):
            raise ValueError(f"masks has {len(m)} images but y_true has {len(y)} labels.")
        pix = pixel_auroc(m, h)
        pro = aupro(m, h)
    per_type = counts = None
    if defect_types is not None:
        t = np.asarray(defect_types)
        if t.shape != y.shape:
            raise ValueError(f"defect_types must have shape {y.shape}, got {t.shape}.")
        if t.dtype.kind not in "US" and not (t.dtype == object and all(isinstance(v, str) for v in t)):
            raise TypeError(f"defect_types must hold strings ('good' for normal samples), got dtype {t.dtype}.")
        contradict = (t == "good") != (y == 0)
        if contradict.any():
            i = int(np.flatnonzero(contradict)[0])
            raise ValueError(
                f"defect_types contradicts y_true at {int(contradict.sum())} sample(s) (first: index {i}, "
                f"y_true={int(y[i])}, defect_types={str(t[i])!r}): normal samples (y_true=0) must have "
                "defect type 'good' and anomalous ones another type."
            )
        rates = detection_rates(t, s, threshold)
        per_type = {k: v[2] for k, v in rates.items()}
        counts = {k: (v[0], v[1]) for k, v in rates.items()}
    return EvaluationReport(
        auroc=float(roc_auc_score(y, s)),
        auprc=float(average_precision_score(y, s)),
        fnr_at_fpr=fnr,
        threshold=threshold,
        fpr=fpr,
        target_fpr=target_fpr,
        pixel_auroc=pix,
        aupro=pro,
        per_type=per_type,
        per_type_counts=counts,
        n_normal=int((y == 0).sum()),
        n_anomalous=int(y.sum()),
    )


def format_reports(reports, *, per_type=True):
    """Format several reports as one text table, one row per detector.

    Parameters
    ----------
    reports : dict
        ``{name: EvaluationReport}``.
    per_type : bool, default=True
        Add a column per defect type with its detection rate at each detector's threshold.

    Returns
    -------
    table : str
    """
    if isinstance(reports, EvaluationReport):
        raise TypeError("reports must be a dict {name: EvaluationReport}; for one report pass {'name': report} "
                        "or print(report).")
    if not isinstance(reports, Mapping):
        raise TypeError(f"reports must be a dict {{name: EvaluationReport}}, got {type(reports).__name__}.")
    if not reports:
        raise ValueError("reports is empty.")
    bad = [name for name, r in reports.items() if not isinstance(r, EvaluationReport)]
    if bad:
        raise TypeError(
            f"reports must map names to EvaluationReport (from evaluate), but {bad[0]!r} maps to "
            f"{type(reports[bad[0]]).__name__}."
        )
    if not isinstance(per_type, (bool, np.bool_)):
        raise TypeError(f"per_type must be True or False, got {per_type!r}.")
    first = next(iter(reports.values()))
    pct = f"{100 * first.target_fpr:g}%"
    cols = ["detector", "AUROC", "AUPRC", f"FNR@FPR{pct}", "thresh", "pixAUROC", "AUPRO"]
    types = []
    if per_type:
        for r in reports.values():
            for t in r.per_type or {}:
                if t not in types:
                    types.append(t)
    cols += types
    rows = []
    for name, r in reports.items():
        row = [
            str(name),
            _fmt(r.auroc),
            _fmt(r.auprc),
            _fmt(r.fnr_at_fpr),
            f"{r.threshold:.4g}",
            _fmt(r.pixel_auroc),
            _fmt(r.aupro),
        ]
        row += [_fmt((r.per_type or {}).get(t)) for t in types]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    fmt_row = lambda row: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))
    )
    lines = [fmt_row(cols), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in rows]
    if types:
        lines.append(f"(defect-type columns: fraction flagged at the FPR<={pct} threshold; 'good' = FPR)")
    return "\n".join(lines)
