"""PaDiMDetector and PatchCoreDetector beside PCADetector (and ConvVAEDetector if greyanom has it).

For each data set (the real MVTec AD transistor category from ../shared/data, and
``make_wafer_images``) and each detector with its default parameters: image AUROC, AUPRC,
FNR at FPR = 5%, pixel AUROC and AUPRO of the heatmap, detection rate per defect type at the
FPR = 5% threshold, fit time, score time per image at batch 1 (median of single images) and
batch 32, peak resident memory of the process (each detector runs in its own process, so
the figure includes Python, torch and the data) and the fitted model's memory where the
detector reports it (``model_nbytes_``).

Usage::

    python benchmarks/patch_report.py [--rst docs/guide/_patch_table.rst] [--csv patch.csv]
                                      [--mvtec PATH] [--quick] [--n-jobs N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MVTEC = ROOT.parent / "shared" / "data" / "mvtec_ad_transistor_256gray"
DETECTORS = ("PCADetector", "ConvVAEDetector", "PaDiMDetector", "PatchCoreDetector")
COLUMNS = ("data", "detector", "AUROC", "AUPRC", "FNR@5%", "pixAUROC", "AUPRO", "fit_s", "ms_b1", "ms_b32",
           "peak_MB", "model_MB")
#: anomalib's published MVTec AD transistor results (image AUROC, pixel AUROC), RGB, WRN-50
ANOMALIB = {"PaDiM (anomalib, WRN-50, RGB)": (0.976, 0.976), "PatchCore (anomalib, WRN-50, RGB)": (1.000, 0.981)}


def _load(name, quick):
    from greyanom.datasets import load_mvtec, make_wafer_images

    if name == "mvtec-transistor":
        return load_mvtec(MVTEC_PATH)
    n_train, n_test = (60, 40) if quick else (200, 100)
    return make_wafer_images(n_train=n_train, n_test=n_test, random_state=0)


def _make(name, n_jobs):
    import greyanom

    kw = {"random_state": 0}
    if name in ("PaDiMDetector", "PatchCoreDetector"):
        kw["n_jobs"] = n_jobs
    if name == "PCADetector":
        # the defaults of PCADetector on main (50 components, top 1% after a 4-pixel blur)
        kw.update(n_components=50, score_reduction="topk", smoothing_sigma=4.0, topk_fraction=0.01)
    return getattr(greyanom, name)(**kw)


def run_one(data_name, det_name, quick, n_jobs):
    """Fit and evaluate one detector on one data set; return a dict (run in a child process)."""
    from greyanom.metrics import evaluate

    if n_jobs is not None:
        import torch

        torch.set_num_threads(n_jobs)  # this child process only
    data = _load(data_name, quick)
    det = _make(det_name, n_jobs)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(data.X_train)
    fit_s = time.perf_counter() - t0
    e = det.explain(data.X_test)
    r = evaluate(data.y_test, e.score, heatmaps=e.heatmap, masks=data.masks_test,
                 defect_types=data.defect_types_test)
    X = data.X_test
    det.score(X[:1])
    single = []
    for i in range(min(20, len(X))):
        t0 = time.perf_counter()
        det.score(X[i : i + 1])
        single.append(time.perf_counter() - t0)
    batch = []
    for _ in range(2):
        t0 = time.perf_counter()
        det.score(X[:32])
        batch.append((time.perf_counter() - t0) / min(32, len(X)))
    return {
        "data": data_name,
        "detector": det_name,
        "AUROC": r.auroc,
        "AUPRC": r.auprc,
        "FNR@5%": r.fnr_at_fpr,
        "pixAUROC": r.pixel_auroc,
        "AUPRO": r.aupro,
        "fit_s": fit_s,
        "ms_b1": 1000 * float(np.median(single)),
        "ms_b32": 1000 * float(np.min(batch)),
        "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_MB": getattr(det, "model_nbytes_", float("nan")) / 2**20,
        "per_type": {k: float(v) for k, v in (r.per_type or {}).items()},
    }


def _available(name):
    import greyanom

    try:
        getattr(greyanom, name)
    except (AttributeError, ImportError):
        return False
    return True


def run(args):
    datasets = (["mvtec-transistor"] if Path(args.mvtec).exists() else []) + ["wafer"]
    if "mvtec-transistor" not in datasets:
        print(f"# MVTec transistor not found at {args.mvtec}; skipped", file=sys.stderr)
    names = [d for d in DETECTORS if _available(d)]
    skipped = [d for d in DETECTORS if d not in names]
    if skipped:
        print(f"# not in this greyanom, skipped: {', '.join(skipped)}", file=sys.stderr)
    rows = []
    for data_name in datasets:
        for det_name in names:
            cmd = [sys.executable, __file__, "--one", data_name, det_name, "--mvtec", args.mvtec]
            cmd += ["--quick"] * args.quick + (["--n-jobs", str(args.n_jobs)] if args.n_jobs else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"# {det_name} on {data_name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_fmt_row(row), flush=True)
    return rows


def _fmt_row(row):
    vals = " ".join(f"{row[c]:8.3f}" if row[c] is not None else "       -" for c in COLUMNS[2:])
    types = ", ".join(f"{k} {v:.2f}" for k, v in row["per_type"].items() if k != "good")
    return f"{row['data']:<17} {row['detector']:<18} {vals}\n    detection rate at FPR 5%: {types}"


def _write_rst(rows, path, command):
    header = ["data", "detector", "image AUROC", "AUPRC", "FNR @ FPR 5%", "pixel AUROC", "AUPRO", "fit (s)",
              "score ms/img (batch 1)", "score ms/img (batch 32)", "peak RSS (MB)", "model (MB)"]
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: auto", "",
             "   * - " + "\n     - ".join(header)]

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    for r in rows:
        cells = [r["data"], f"``{r['detector']}``", f(r["AUROC"], ".3f"), f(r["AUPRC"], ".3f"),
                 f(r["FNR@5%"], ".3f"), f(r["pixAUROC"], ".3f"), f(r["AUPRO"], ".3f"), f(r["fit_s"], ".1f"),
                 f(r["ms_b1"], ".0f"), f(r["ms_b32"], ".0f"), f(r["peak_MB"], ".0f"), f(r["model_MB"], ".1f")]
        lines.append("   * - " + "\n     - ".join(cells))
    for name, (img, pix) in ANOMALIB.items():
        cells = ["mvtec-transistor", name, f"{img:.3f}", "-", "-", f"{pix:.3f}"] + ["-"] * 6
        lines.append("   * - " + "\n     - ".join(cells))
    lines += ["", "Detection rate per defect type at the FPR = 5% threshold:", "",
              ".. list-table::", "   :header-rows: 1", "   :widths: auto", ""]
    types = list(dict.fromkeys(k for r in rows for k in r["per_type"] if k != "good"))
    by_data = {}
    for r in rows:
        by_data.setdefault(r["data"], []).append(r)
    lines.append("   * - " + "\n     - ".join(["data", "detector"] + types))
    for r in rows:
        cells = [r["data"], f"``{r['detector']}``"] + [f(r["per_type"].get(t), ".2f") for t in types]
        lines.append("   * - " + "\n     - ".join(cells))
    lines += ["", f"Produced by ``{command}`` on {platform.machine()} "
              f"({platform.processor() or 'cpu'}), Python {platform.python_version()}.", ""]
    Path(path).write_text("\n".join(lines))


def main(argv=None):
    global MVTEC_PATH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec", default=str(MVTEC), help="MVTec AD transistor folder")
    parser.add_argument("--rst", help="also write the table as an RST list-table")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--quick", action="store_true", help="smaller wafer data (smoke test)")
    parser.add_argument("--n-jobs", type=int, default=None, help="torch threads in each child process")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "DETECTOR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    MVTEC_PATH = args.mvtec
    if args.one:
        print(json.dumps(run_one(*args.one, args.quick, args.n_jobs)))
        return 0
    print("# " + " ".join(COLUMNS))
    rows = run(args)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*COLUMNS, "per_type"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "per_type": json.dumps(r["per_type"])})
    if args.rst:
        _write_rst(rows, args.rst, "python benchmarks/patch_report.py " + " ".join(argv or sys.argv[1:]))
    return 0


MVTEC_PATH = str(MVTEC)

if __name__ == "__main__":
    sys.exit(main())
