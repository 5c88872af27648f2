import itertools

import numpy as np
import pytest

from greyanom.metrics import (
    EvaluationReport,
    aupro,
    detection_rates,
    evaluate,
    fnr_at_fpr,
    format_reports,
    image_auprc,
    image_auroc,
    pixel_auroc,
)


def _data(rng, n0=60, n1=40, ties=False):
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    s = np.r_[rng.normal(size=n0), rng.normal(1.0, size=n1)]
    if ties:
        s = np.round(s, 1)
    perm = rng.permutation(len(y))
    return y[perm], s[perm]


# -- independent references -----------------------------------------------------------
def _auroc_pairs(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _average_precision_loop(y, s):
    # AP = sum over thresholds (distinct scores, descending) of (R_k - R_{k-1}) * P_k
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        flagged = s >= t
        tp = np.sum(flagged & (y == 1))
        recall = tp / np.sum(y == 1)
        precision = tp / np.sum(flagged)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def _fnr_sweep(y, s, target):
    best = (1.0, np.inf)
    for t in sorted(np.unique(s), reverse=True):
        fpr = np.mean(s[y == 0] >= t)
        if fpr <= target:
            best = (np.mean(s[y == 1] < t), t)
    return best


@pytest.mark.parametrize("ties", [False, True])
def test_image_auroc_matches_pair_counting(rng, ties):
    y, s = _data(rng, ties=ties)
    assert image_auroc(y, s) == pytest.approx(_auroc_pairs(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_image_auprc_matches_threshold_loop(rng, ties):
    y, s = _data(rng, ties=ties)
    assert image_auprc(y, s) == pytest.approx(_average_precision_loop(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.5])
def test_fnr_at_fpr_matches_explicit_sweep(rng, ties, target):
    y, s = _data(rng, ties=ties)
    fnr, thr = fnr_at_fpr(y, s, target)
    ref_fnr, ref_thr = _fnr_sweep(y, s, target)
    assert thr == ref_thr
    assert fnr == pytest.approx(ref_fnr)
    assert np.mean(s[y == 0] >= thr) <= target


def test_fnr_at_fpr_tie_at_boundary_moves_threshold_up():
    # 20 normals, the top three tie at 10.0: flagging them = 15% > 5%, so the threshold
    # must exceed 10.0 (and the anomaly at 10.0 is missed)
    y = np.r_[np.zeros(20, int), [1, 1]]
    s = np.r_[np.linspace(0.0, 5.0, 17), 10.0, 10.0, 10.0, 10.0, 11.0]
    fnr, thr = fnr_at_fpr(y, s, 0.05)
    assert thr == 11.0 and fnr == 0.5
    fnr, thr = fnr_at_fpr(y, s, 0.15)
    assert thr == 10.0 and fnr == 0.0


def test_fnr_at_fpr_nothing_admissible_returns_inf():
    fnr, thr = fnr_at_fpr([0, 1], [1.0, 0.0], 0.0)
    assert thr == np.inf and fnr == 1.0


def test_detection_rates_by_hand():
    types = np.array(["good", "scratch", "particle", "scratch", "good", "particle"])
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.6, 0.4])
    rates = detection_rates(types, scores, 0.5)
    assert list(rates) == ["good", "particle", "scratch"]
    assert rates == {"good": (2, 1, 0.5), "particle": (2, 1, 0.5), "scratch": (2, 1, 0.5)}
    assert detection_rates(types, scores, 0.95)["scratch"] == (2, 0, 0.0)


def test_pixel_auroc_matches_pair_counting(rng):
    masks = np.zeros((3, 6, 6), bool)
    masks[1, 2:4, 1:4] = True
    masks[2, 0, 0] = True
    heat = rng.random((3, 6, 6)).round(1) + masks * 0.3
    ref = _auroc_pairs(masks.ravel().astype(int), heat.ravel())
    assert pixel_auroc(masks, heat) == pytest.approx(ref, abs=1e-12)


def _aupro_bruteforce(masks, heat, max_fpr=0.3):
    from scipy.ndimage import label

    regions = []
    for mask, h in zip(masks, heat):
        lab, n = label(mask, structure=np.ones((3, 3)))
        regions += [h[lab == r] for r in range(1, n + 1)]
    normal = heat[~masks]
    pts = [(0.0, 0.0)]
    for t in np.unique(heat)[::-1]:
        pts.append((np.mean(normal >= t), np.mean([np.mean(r >= t) for r in regions])))
    pts = np.array(pts)
    x, y = pts[:, 0], pts[:, 1]
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += 0.5 * (x1 - x0) * (y0 + y1)
    return area / max_fpr


def test_aupro_hand_built_case():
    # one big region (8 pixels) found perfectly, one single-pixel region found only at
    # FPR = 1/2 of the normal pixels: regions weigh equally, whatever their size
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :] = True  # big region, 8 pixels
    masks[0, 3, 3] = True  # second region, 1 pixel (not 8-connected to the first)
    heat = np.zeros((1, 4, 4))
    heat[0, :2, :] = 1.0
    heat[0, 2, :] = 0.5  # 4 normal pixels above the small region's score
    heat[0, 3, 3] = 0.4
    # normals: 7 pixels (rows 2-3 except (3,3)); thresholds: 1.0 -> FPR 0, PRO 0.5;
    # 0.5 -> FPR 4/7 > 0.3; the curve from (0, 0.5) to (4/7, 0.5): area to 0.3 = 0.15
    assert aupro(masks, heat) == pytest.approx(0.5)
    assert aupro(masks, heat) == pytest.approx(_aupro_bruteforce(masks, heat))


def test_aupro_matches_bruteforce_random(rng):
    masks = np.zeros((4, 12, 12), bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 8:10, 7:11] = True
    masks[1, 6, 6] = True
    masks[3, 0:12, 3] = True
    heat = rng.random((4, 12, 12)).round(2) + 0.4 * masks
    for max_fpr in (0.05, 0.3, 1.0):
        assert aupro(masks, heat, max_fpr) == pytest.approx(_aupro_bruteforce(masks, heat, max_fpr), abs=1e-10)


def test_evaluate_report(rng):
    y, s = _data(rng)
    types = np.where(y == 1, np.where(np.arange(len(y)) % 2, "scratch", "stain"), "good")
    masks = np.zeros((len(y), 8, 8), bool)
    masks[y == 1, 2:4, 2:4] = True
    heat = rng.random((len(y), 8, 8)) + masks
    r = evaluate(y, s, heatmaps=heat, masks=masks, defect_types=types)
    assert isinstance(r, EvaluationReport)
    assert r.auroc == pytest.approx(_auroc_pairs(y, s))
    assert (r.fnr_at_fpr, r.threshold) == fnr_at_fpr(y, s, 0.05)
    assert r.fpr <= 0.05 and r.target_fpr == 0.05
    assert r.pixel_auroc == pixel_auroc(masks, heat) and r.aupro == aupro(masks, heat)
    assert r.per_type["good"] == r.fpr
    detected = np.mean(s[types == "scratch"] >= r.threshold)
    assert r.per_type["scratch"] == pytest.approx(detected)
    assert (r.n_normal, r.n_anomalous) == (60, 40)
    d = r.to_dict()
    assert d["auroc"] == r.auroc and d["per_type"]["stain"] == r.per_type["stain"]
    text = str(r)
    assert "image AUROC" in text and "scratch" in text and "FNR @ FPR<=5%" in text
    table = format_reports({"pca": r, "other": evaluate(y, -s)})
    assert table.splitlines()[2].startswith("pca") and "scratch" in table.splitlines()[0]
    plain = evaluate(y, s)
    assert plain.pixel_auroc is None and plain.per_type is None and "-" in str(plain)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: image_auroc([0, 1, 1], [0.1, 0.2]), ValueError, "same length"),
        (lambda: image_auroc([1, 1], [0.1, 0.2]), ValueError, "only anomalous"),
        (lambda: image_auroc([0, 0], [0.1, 0.2]), ValueError, "only normal"),
        (lambda: image_auroc([0, 1], [np.nan, 0.2]), ValueError, "NaN"),
        (lambda: image_auroc([0, 2], [0.1, 0.2]), ValueError, "0 \\(normal\\) and 1"),
        (lambda: fnr_at_fpr([0, 1], [0.1, 0.2], 1.5), ValueError, "target_fpr"),
        (lambda: pixel_auroc(np.ones((2, 4, 4), bool), np.zeros((2, 4, 5))), ValueError, "same shape"),
        (lambda: pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4))), ValueError, "both"),
        (lambda: aupro(np.eye(4, dtype=bool)[None], np.full((1, 4, 4), np.nan)), ValueError, "NaN"),
        (lambda: evaluate([0, 1], [0.1, 0.2], heatmaps=np.zeros((2, 2, 2))), ValueError, "both"),
        (lambda: detection_rates(["good"], [0.1, 0.2], 0.5), ValueError, "same length"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
