"""PCADetector: number of components x score reduction, on real and synthetic images.

For each data set (the MVTec AD transistor category from ../shared/data, and
``make_wafer_images``) and each k in {10, 50, 100, 200}, fit PCADetector once, then score
the test set with every score reduction (``set_params`` changes only the scoring):
image AUROC, AUPRC, FNR at FPR = 5%, and the pixel AUROC / AUPRO of the error map that the
score is reduced from (the squared error blurred by ``smoothing_sigma``), with fit and
score times.

Usage::

    python benchmarks/pca_report.py [--rst docs/guide/_pca_table.rst] [--csv pca.csv]
                                    [--mvtec PATH] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from greyanom import PCADetector  # noqa: E402
from greyanom.datasets import load_mvtec, make_wafer_images  # noqa: E402
from greyanom.image._reduce import smooth_maps  # noqa: E402
from greyanom.metrics import aupro, evaluate, pixel_auroc  # noqa: E402

MVTEC = ROOT.parent / "shared" / "data" / "mvtec_ad_transistor_256gray"
KS = (10, 50, 100, 200)
#: (score_reduction, smoothing_sigma); topk uses topk_fraction=0.01 (655 of 65,536 pixels)
REDUCTIONS = (("mean", 0.0), ("max", 0.0), ("max", 4.0), ("topk", 0.0), ("topk", 2.0), ("topk", 4.0))
COLUMNS = ("data", "k", "reduction", "sigma", "AUROC", "AUPRC", "FNR@5%", "pixAUROC", "AUPRO", "fit_s", "score_s")


def _datasets(args):
    out = {}
    path = Path(args.mvtec)
    if path.exists():
        out["mvtec-transistor"] = load_mvtec(path)
    else:
        print(f"# MVTec transistor not found at {path}; skipped", file=sys.stderr)
    n_train, n_test = (60, 40) if args.quick else (250, 100)
    out["wafer"] = make_wafer_images(n_train=n_train, n_test=n_test, random_state=0)
    return out


def run(args):
    rows = []
    ks = (10, 50) if args.quick else KS
    for name, data in _datasets(args).items():
        y, masks = data.y_test, data.masks_test
        for k in ks:
            det = PCADetector(n_components=k, score_reduction="mean", smoothing_sigma=0.0)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # k capped at n_train - 1
                det.fit(data.X_train)
            fit_s = time.perf_counter() - t0
            heat = det.explain(data.X_test).heatmap
            pixel = {}
            for sigma in sorted({s for _, s in REDUCTIONS}):
                smoothed = smooth_maps(heat, sigma)
                pixel[sigma] = (pixel_auroc(masks, smoothed), aupro(masks, smoothed))
            for reduction, sigma in REDUCTIONS:
                det.set_params(score_reduction=reduction, smoothing_sigma=sigma, topk_fraction=0.01)
                t0 = time.perf_counter()
                scores = det.score(data.X_test)
                score_s = time.perf_counter() - t0
                r = evaluate(y, scores)
                rows.append(
                    (name, det.n_components_, reduction, sigma, r.auroc, r.auprc, r.fnr_at_fpr,
                     *pixel[sigma], fit_s, score_s)
                )
                print(_fmt_row(rows[-1]), flush=True)
    return rows


def _fmt_row(row):
    name, k, red, sigma, *vals = row
    return f"{name:<17} {k:>4} {red:<5} {sigma:>4g} " + " ".join(f"{v:8.3f}" for v in vals)


def _best(rows):
    lines = []
    for name in dict.fromkeys(r[0] for r in rows):
        sub = [r for r in rows if r[0] == name]
        best = max(sub, key=lambda r: (r[4], -r[6]))
        lines.append(
            f"best on {name} by image AUROC: k={best[1]}, reduction={best[2]}, sigma={best[3]:g} "
            f"(AUROC {best[4]:.3f}, FNR@5% {best[6]:.3f})"
        )
    return lines


def _write_rst(rows, path, command):
    header = ["data", "k", "reduction", "sigma", "AUROC", "AUPRC", "FNR @ FPR 5%", "pixel AUROC", "AUPRO",
              "fit (s)", "score (s)"]
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: auto",
        "",
        "   * - " + "\n     - ".join(header),
    ]
    for name, k, red, sigma, auroc, auprc, fnr, pix, pro, fit_s, score_s in rows:
        cells = [name, str(k), red, f"{sigma:g}", f"{auroc:.3f}", f"{auprc:.3f}", f"{fnr:.3f}", f"{pix:.3f}",
                 f"{pro:.3f}", f"{fit_s:.1f}", f"{score_s:.2f}"]
        lines.append("   * - " + "\n     - ".join(cells))
    lines += ["", f"Produced by ``{command}`` on {platform.machine()} "
              f"({platform.processor() or 'cpu'}), Python {platform.python_version()}.", ""]
    Path(path).write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec", default=str(MVTEC), help="MVTec AD transistor folder")
    parser.add_argument("--rst", help="also write the table as an RST list-table")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--quick", action="store_true", help="small data, k in {10, 50} (smoke test)")
    args = parser.parse_args(argv)
    print("# " + " ".join(COLUMNS))
    rows = run(args)
    for line in _best(rows):
        print("# " + line)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(rows)
    if args.rst:
        _write_rst(rows, args.rst, "python benchmarks/pca_report.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
