"""Issue 10 measurements: held-out thresholds, conformal decision bands and drift tests.

1. ``predict`` on fresh normal data (never used in fitting) for every detector, with
   ``contamination=0.05``: the flagged fraction with the threshold set on the in-sample training
   scores (``decision_scores_``, the old rule, "before") and with the held-out threshold that
   ``fit`` now sets ("after"). Data: ``make_wafer_images``, MVTec AD transistor and magnetic
   tile from ../shared/data, and simulated PI-loop wafers for the trace detector (per trace).
2. Conformal bands (``DecisionPolicy(review_fpr=0.05, reject_fpr=0.005)``, 0.01 for the trace
   detector, which has fewer calibration wafers) on fresh normals: REJECT and REVIEW-or-REJECT
   rates against their targets with the one-sided 99 % binomial upper limit for the number of
   fresh items, for PCA on a table, PaDiM on MVTec transistor (its 60 normal test images) and the
   trace detector's wafer scores; the same policy fitted on in-sample training scores beside it.
3. Drift at alpha = 0.01: false-alarm rate of ``ScoreDriftMonitor`` and ``FeatureDriftMonitor``
   on windows of fresh normal data, and power for a stated input shift, against a plain
   ``scipy.stats.ks_2samp`` loop on the same windows (alibi-detect is not installed: its
   install would downgrade numpy, numba, pandas and scikit-image in the shared environment).

Usage::

    python benchmarks/decision_report.py [--parts predict,conformal,drift] [--quick]
                                         [--rst docs/guide/decisions_measured.rst.inc]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data"


# -- data -----------------------------------------------------------------------------------
def wafers(quick):
    from greyanom.datasets import make_wafer_images

    n = 60 if quick else 200
    d = make_wafer_images(n_train=2 * n, n_test=10, random_state=0)
    return d.X_train[:n], d.X_train[n:]


def mvtec():
    from greyanom.datasets import load_mvtec

    d = load_mvtec(DATA / "mvtec_ad_transistor_256gray")
    return d.X_train, d.X_test[d.y_test == 0]


def magnetic_tile(quick, size=256):
    from PIL import Image

    files = sorted((DATA / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))
    if quick:
        files = files[:120]
    imgs = np.stack([np.asarray(Image.open(f).convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255
                     for f in files])
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(imgs))
    n_fit = int(round(0.63 * len(imgs)))  # 300 of the 476 normal images
    return imgs[idx[:n_fit]], imgs[idx[n_fit:]]


def pi_wafers(n_lots, wafers_per_lot, seed):
    from greyanom.datasets import make_pi_lots

    return make_pi_lots(n_lots=n_lots, wafers_per_lot=wafers_per_lot, n_points=60, random_state=seed)


def image_detectors(quick):
    import greyanom

    dets = {
        "PCADetector": greyanom.PCADetector(contamination=0.05, random_state=0),
        "PaDiMDetector": greyanom.PaDiMDetector(contamination=0.05, random_state=0),
        "PatchCoreDetector": greyanom.PatchCoreDetector(contamination=0.05, random_state=0),
    }
    # short recipe: 128x128 would change the data, so the epochs are cut instead
    dets["ConvVAEDetector (8 epochs)"] = greyanom.ConvVAEDetector(
        contamination=0.05, max_epochs=3 if quick else 8, random_state=0)
    return dets


# -- 1. predict ---------------------------------------------------------------------------------
def part_predict(quick, log):
    from greyanom.base import threshold_from_scores

    rows = []
    sets = {"wafers": lambda: wafers(quick)}
    if (DATA / "mvtec_ad_transistor_256gray").exists():
        sets["MVTec transistor"] = mvtec
    if (DATA / "magnetic_tile").exists():
        sets["magnetic tile"] = lambda: magnetic_tile(quick)
    for data_name, load in sets.items():
        X_fit, X_new = load()
        for name, det in image_detectors(quick).items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                det.fit(X_fit)
            fit_s = time.perf_counter() - t0
            s_new = det.score(X_new)
            before = float(np.mean(s_new > threshold_from_scores(det.decision_scores_, 0.05)))
            after = float(np.mean(det.predict(X_new) == -1))
            rows.append({"data": data_name, "detector": name, "n_fit": len(X_fit), "n_new": len(X_new),
                         "before": before, "after": after, "n_heldout": len(det.heldout_scores_), "fit_s": fit_s})
            log(rows[-1])
    # the trace detector: per-trace predict on wafers of later lots
    from greyanom import ShapeSignatureDetector

    df = pi_wafers(6, 10 if quick else 15, seed=1)
    lots = sorted(df["lot"].unique())
    fit_df, new_df = df[df["lot"].isin(lots[:3])], df[df["lot"].isin(lots[3:])]
    det = ShapeSignatureDetector(lot_key="lot", contamination=0.05, n_jobs=1, random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(fit_df)
        fit_s = time.perf_counter() - t0
        s_new = det.score(new_df).to_numpy()
    before = float(np.mean(~(s_new <= threshold_from_scores(det.decision_scores_, 0.05))))
    after = float(np.mean(~(s_new <= det.threshold_)))
    rows.append({"data": "PI-loop wafers (simulated)", "detector": "ShapeSignatureDetector", "n_fit": fit_df["wafer"].nunique(),
                 "n_new": new_df["wafer"].nunique(), "before": before, "after": after,
                 "n_heldout": len(det.heldout_scores_), "fit_s": fit_s})
    log(rows[-1])
    return rows


# -- 2. conformal bands ---------------------------------------------------------------------------
def _upper(n_fresh, n_cal, rate, level=0.99):
    """99 % upper limit of the observed band rate on ``n_fresh`` fresh normals.

    For one calibration draw of ``n_cal`` exchangeable scores the band's true rate is
    ``Beta(l, n_cal + 1 - l)`` with ``l = floor((n_cal + 1) rate)`` (mean at most ``rate``); the
    fresh count is binomial given it, so the observed count is beta-binomial.
    """
    l = int(np.floor((n_cal + 1) * rate))
    return float(stats.betabinom.ppf(level, n_fresh, l, n_cal + 1 - l) / n_fresh)


def _band_rows(case, cal, insample, fresh, review, reject):
    from greyanom.decision import DecisionPolicy

    rows = []
    for source, scores in (("held-out (calibrate / heldout_scores_)", cal), ("in-sample training scores", insample)):
        policy = DecisionPolicy(review_fpr=review, reject_fpr=reject).fit(scores)
        d = policy.decide(fresh)
        rows.append({"case": case, "calibration": source, "n_cal": len(scores), "n_fresh": len(fresh),
                     "reject": float(np.mean(d == "REJECT")), "reject_target": reject,
                     "reject_upper": _upper(len(fresh), len(scores), reject),
                     "review_or_reject": float(np.mean(d != "PASS")), "review_target": review,
                     "review_upper": _upper(len(fresh), len(scores), review)})
    return rows


def part_conformal(quick, log):
    import greyanom
    from greyanom import ShapeSignatureDetector
    from greyanom.decision import calibrate

    rows = []
    # PCA on a table: low-rank rows plus noise, 1000 to fit, 20000 fresh
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 40))
    table = lambda n: rng.normal(size=(n, 5)) @ W + 0.3 * rng.standard_t(5, size=(n, 40))  # noqa: E731
    X_fit, X_new = table(1000), table(20000)
    det = greyanom.PCADetector(n_components=5, random_state=0).fit(X_fit)
    rows += _band_rows("PCA, table (40 columns)", det.heldout_scores_, det.decision_scores_, det.score(X_new), 0.05, 0.005)
    log(rows[-2:])
    if (DATA / "mvtec_ad_transistor_256gray").exists():
        X_fit, X_new = mvtec()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            det = greyanom.PaDiMDetector(random_state=0).fit(X_fit)
        rows += _band_rows("PaDiM, MVTec transistor", det.heldout_scores_, det.decision_scores_, det.score(X_new),
                           0.05, 0.005)
        log(rows[-2:])
    # trace detector, wafer scores: 100 wafers to fit and calibrate, 100 fresh wafers
    df = pi_wafers(8, 15 if quick else 25, seed=2)
    lots = sorted(df["lot"].unique())
    fit_df, new_df = df[df["lot"].isin(lots[:4])], df[df["lot"].isin(lots[4:])]
    det = ShapeSignatureDetector(lot_key="lot", n_jobs=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cal = calibrate(det, fit_df, cv=5, random_state=0, method="score_wafers").dropna()
        det.fit(fit_df)
        insample = det.score_wafers(fit_df).dropna()
        fresh = det.score_wafers(new_df).dropna()
    rows += _band_rows("ShapeSignatureDetector, wafer scores", cal, insample, fresh, 0.05, 0.01)
    log(rows[-2:])
    return rows


# -- 3. drift -------------------------------------------------------------------------------------
def part_drift(quick, log):
    import greyanom
    from greyanom.drift import FeatureDriftMonitor, ScoreDriftMonitor

    rng = np.random.default_rng(3)
    W = rng.normal(size=(5, 40))
    table = lambda n: rng.normal(size=(n, 5)) @ W + 0.3 * rng.standard_t(5, size=(n, 40))  # noqa: E731
    det = greyanom.PCADetector(n_components=5, random_state=0).fit(table(1000))
    n_windows, size = (200, 100) if quick else (1000, 100)
    sd = table(5000).std(axis=0)
    shift = np.zeros(40)
    shift[:4] = 0.5 * sd[:4]  # stated shift: +0.5 sd on 4 of the 40 input columns
    ref_scores, ref_Z = det.score(table(1000)), det.embed(table(1000))  # the deployed model on normal data
    score_mon = ScoreDriftMonitor(ref_scores, alpha=0.01)
    cv_mon = ScoreDriftMonitor(det.heldout_scores_, alpha=0.01)  # the cross-fitted scores as reference
    feat_mon = {c: FeatureDriftMonitor(ref_Z, alpha=0.01, correction=c) for c in ("bonferroni", "fdr_bh")}
    rows = []
    cases = (("normal windows (false alarms)", 0.0 * shift), ("+0.5 sd on 4 of 40 columns (power)", shift),
             ("+0.5 sd of latent factor 1 (power)", 0.5 * W[0]))
    for label, delta in cases:
        windows = [table(size) + delta for _ in range(n_windows)]
        scores = [det.score(w) for w in windows]
        Zs = [det.embed(w) for w in windows]
        t0 = time.perf_counter()
        ours = np.mean([score_mon.test(s).drift for s in scores])
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = np.mean([stats.ks_2samp(ref_scores, s).pvalue < 0.01 for s in scores])
        t_plain = time.perf_counter() - t0
        rows.append({"test": "ScoreDriftMonitor (anomaly score)", "windows": label, "rate": float(ours),
                     "plain_ks_2samp": float(plain), "time_ratio": t_ours / t_plain})
        cv_rate = np.mean([cv_mon.test(s).drift for s in scores])
        cv_plain = np.mean([stats.ks_2samp(det.heldout_scores_, s).pvalue < 0.01 for s in scores])
        rows.append({"test": "ScoreDriftMonitor, reference = heldout_scores_", "windows": label, "rate": float(cv_rate),
                     "plain_ks_2samp": float(cv_plain), "time_ratio": np.nan})
        for c, mon in feat_mon.items():
            t0 = time.perf_counter()
            ours = np.mean([mon.test(z).drift for z in Zs])
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            if c == "bonferroni":
                plain = np.mean([min(stats.ks_2samp(ref_Z[:, j], z[:, j]).pvalue for j in range(z.shape[1])) * z.shape[1] < 0.01
                                 for z in Zs])
            else:
                plain = np.mean([(stats.false_discovery_control(
                    [stats.ks_2samp(ref_Z[:, j], z[:, j]).pvalue for j in range(z.shape[1])]) < 0.01).any() for z in Zs])
            t_plain = time.perf_counter() - t0
            rows.append({"test": f"FeatureDriftMonitor ({c}, 5 PCA coordinates)", "windows": label, "rate": float(ours),
                         "plain_ks_2samp": float(plain), "time_ratio": t_ours / t_plain})
        log(rows[-4:])
    return rows, n_windows, size


# -- output -----------------------------------------------------------------------------------------
def _table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("=" * w for w in widths)
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line, fmt(header), line, *(fmt(r) for r in rows), line])


def write_rst(path, results, command):
    parts = [f".. Generated by benchmarks/decision_report.py: ``{command}``; {platform.machine()}, "
             f"{platform.python_version()}, 2 CPU cores shared with other jobs (times are not figures).", ""]
    if "predict" in results:
        parts += ["**predict on fresh normals** (``contamination=0.05``; fraction flagged):", "",
                  _table(["data", "detector", "fit / fresh", "in-sample threshold", "held-out threshold", "held-out n"],
                         [[r["data"], r["detector"], f"{r['n_fit']} / {r['n_new']}", f"{r['before']:.1%}",
                           f"{r['after']:.1%}", r["n_heldout"]] for r in results["predict"]]), ""]
    if "conformal" in results:
        parts += ["**Conformal bands on fresh normals** (rate observed; target; 99 % upper limit of the observed "
                  "rate for one calibration draw, beta-binomial):", "",
                  _table(["case", "calibration scores", "n cal / fresh", "REJECT", "REVIEW or REJECT"],
                         [[r["case"], r["calibration"], f"{r['n_cal']} / {r['n_fresh']}",
                           f"{r['reject']:.2%} (<= {r['reject_target']:.1%}; {r['reject_upper']:.2%})",
                           f"{r['review_or_reject']:.2%} (<= {r['review_target']:.0%}; {r['review_upper']:.2%})"]
                          for r in results["conformal"]]), ""]
    if "drift" in results:
        rows, n_windows, size = results["drift"]
        parts += [f"**Drift tests at alpha = 0.01** ({n_windows} windows of {size} fresh rows; rate of windows "
                  "flagged; a plain ``scipy.stats.ks_2samp`` loop on the same windows):", "",
                  _table(["test", "windows", "greyanom", "plain ks_2samp loop"],
                         [[r["test"], r["windows"], f"{r['rate']:.1%}", f"{r['plain_ks_2samp']:.1%}"] for r in rows]), ""]
    Path(path).write_text("\n".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="predict,conformal,drift")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rst", default=None)
    args = parser.parse_args(argv)
    command = "python benchmarks/decision_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    for part in args.parts.split(","):
        rows = []

        def log(r, part=part, rows=rows):
            print(r, flush=True)
            if part == "predict" and args.rst:  # a long part: the table grows row by row
                rows.append(r)
                write_rst(args.rst, {**results, "predict": rows}, command + "  (partial: still running)")

        t0 = time.perf_counter()
        results[part] = {"predict": part_predict, "conformal": part_conformal, "drift": part_drift}[part](args.quick, log)
        print(f"-- {part}: {time.perf_counter() - t0:.0f} s", flush=True)
        if args.rst:
            write_rst(args.rst, results, command)


if __name__ == "__main__":
    main()
