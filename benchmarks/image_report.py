"""Every greyanom image detector on one image data set, in one run.

Data sets (``--data``, one per run): ``wafer`` (``make_wafer_images``, seed 0, 200 train /
100 test), ``die`` (``make_die_images``, seed 0, 200 / 120: the second generator, not tuned
on), ``mvtec-transistor`` (../shared/data) and ``magnetic-tile`` (../shared/data, read with
``load_image_folder``: 300 of the 476 defect-free images train, the other 176 and all 392
defective ones test, split with seed 0).

Detectors, each with its defaults and in its own child process (so that peak memory is its
own): ``PCADetector``, ``PaDiMDetector``, ``PaDiMDetector[max]`` (PaDiM with
``score_reduction="max"``, issue 12 part 3), ``PatchCoreDetector``,
``RegisteredPixelDetector``, ``RegisteredPixelDetector[k=0]`` (no PCA modes) and
``ConvVAEDetector`` with the recipe of ``--vae-recipe`` (``full``: its defaults, up to 50
epochs; ``short``: 8 epochs). ``ConvVAEDetector[pixels,std,register]`` (the pixel route of
issue 12 part 2: ``input_space="pixels"``, ``residual_normalization="std"``,
``register=True``, same recipe; ``[pixels,std,register,lr=3e-4]`` also sets
``learning_rate``) is accepted by ``--detectors`` but not in the default list,
since one full-recipe fit takes most of an hour on a shared CPU. Columns: image AUROC, AUPRC, FNR at FPR = 5%, pixel AUROC and
AUPRO (``greyanom.metrics.evaluate``), fit time, score time per image at batch 1 (median
over 20 single images) and batch 32, and the fitted model's size. Every child runs with
one thread (torch, BLAS), to be kind to a shared machine; times are from a loaded machine
and are comparable within one run only.

Usage::

    python benchmarks/image_report.py --data wafer [--json out.json] [--vae-recipe short]
                                      [--detectors PCADetector,RegisteredPixelDetector]
    python benchmarks/image_report.py --rst table.rst wafer.json die.json ...   # tables of runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"

DATASETS = ("wafer", "die", "mvtec-transistor", "magnetic-tile")
DETECTORS = (
    "PCADetector",
    "PaDiMDetector",
    "PaDiMDetector[max]",
    "PatchCoreDetector",
    "RegisteredPixelDetector",
    "RegisteredPixelDetector[k=0]",
    "ConvVAEDetector",
)
EXTRA_DETECTORS = ("ConvVAEDetector[pixels,std,register]",)  # accepted by --detectors, not run by default
COLUMNS = ("AUROC", "AUPRC", "FNR@5%", "pixAUROC", "AUPRO", "fit_s", "ms_b1", "ms_b32", "model_MB")


def load(name):
    """The data set ``name`` as a Bunch (X_train, X_test, y_test, masks_test, defect_types_test)."""
    from greyanom.datasets import load_image_folder, load_mvtec, make_die_images, make_wafer_images

    if name == "wafer":
        return make_wafer_images(n_train=200, n_test=100, random_state=0)
    if name == "die":
        return make_die_images(n_train=200, n_test=120, random_state=0)
    if name == "mvtec-transistor":
        return load_mvtec(SHARED / "mvtec_ad_transistor_256gray")
    if name == "magnetic-tile":
        return load_image_folder(SHARED / "magnetic_tile", normal="MT_Free", mask_suffix="", train_size=300,
                                 random_state=0)
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}.")


def make(name, vae_recipe):
    import greyanom

    base, _, variant = name.partition("[")
    det = getattr(greyanom, base)(random_state=0)
    params = det.get_params()
    for key in ("n_jobs", "n_threads"):
        if key in params:
            det.set_params(**{key: 1})
            break
    if "device" in params:
        det.set_params(device="cpu")
    if variant == "max]":
        det.set_params(score_reduction="max")
    if variant == "k=0]":
        det.set_params(n_components=0)
    tokens = variant.rstrip("]").split(",")
    if base == "ConvVAEDetector" and tokens[:3] == ["pixels", "std", "register"]:
        det.set_params(input_space="pixels", residual_normalization="std", register=True)
        for token in tokens[3:]:  # e.g. [pixels,std,register,lr=3e-4]
            key, _, value = token.partition("=")
            if key != "lr":
                raise ValueError(f"unknown ConvVAEDetector variant option {token!r}")
            det.set_params(learning_rate=float(value))
    if base == "ConvVAEDetector" and vae_recipe == "short":
        det.set_params(max_epochs=8)
    return det


def model_bytes(det):
    if hasattr(det, "model_nbytes_"):
        return det.model_nbytes_
    if hasattr(det, "components_") and hasattr(det, "mean_"):
        return det.components_.nbytes + det.mean_.nbytes
    module = getattr(det, "module_", None)
    if module is not None:
        return sum(p.numel() * p.element_size() for p in module.parameters())
    return float("nan")


def run_one(data_name, det_name, vae_recipe):
    """Fit and evaluate one detector on one data set (in a child process); return a dict."""
    from greyanom.metrics import evaluate

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    data = load(data_name)
    det = make(det_name, vae_recipe)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(data.X_train)
    fit_s = time.perf_counter() - t0
    e = det.explain(data.X_test)
    r = evaluate(data.y_test, e.score, heatmaps=e.heatmap if data.masks_test is not None else None,
                 masks=data.masks_test, defect_types=data.defect_types_test)
    X = data.X_test
    det.score(X[:1])
    single = []
    for i in range(min(20, len(X))):
        t0 = time.perf_counter()
        det.score(X[i : i + 1])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    det.score(X[:32])
    b32 = (time.perf_counter() - t0) / min(32, len(X))
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
        "ms_b32": 1000 * b32,
        "model_MB": model_bytes(det) / 2**20,
        "per_type": {k: float(v) for k, v in (r.per_type or {}).items()},
        "n_train": int(len(data.X_train)),
        "n_test": int(len(X)),
        **({"n_epochs": int(det.n_epochs_), "best_epoch": int(det.best_epoch_)} if hasattr(det, "n_epochs_") else {}),
    }


def fmt_row(row):
    vals = " ".join(f"{row[c]:8.3f}" if row[c] is not None else "       -" for c in COLUMNS)
    types = ", ".join(f"{k} {v:.2f}" for k, v in row["per_type"].items() if k != "good")
    return f"{row['data']:<17} {row['detector']:<29} {vals}\n    detection rate at FPR 5%: {types}"


def write_rst(json_files, path):
    """One RST list-table (and a per-type table) from the JSON files of several runs."""
    rows = [r for f in json_files for r in json.loads(Path(f).read_text())]
    header = ["data", "detector", "image AUROC", "AUPRC", "FNR @ FPR 5%", "pixel AUROC", "AUPRO", "fit (s)",
              "ms/img batch 1", "ms/img batch 32", "model (MB)"]

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    def table(head, body):
        out = [".. list-table::", "   :header-rows: 1", "   :widths: auto", "", "   * - " + "\n     - ".join(head)]
        out += ["   * - " + "\n     - ".join(cells) for cells in body]
        return out + [""]

    body = [[r["data"], f"``{r['detector']}``", f(r["AUROC"], ".3f"), f(r["AUPRC"], ".3f"), f(r["FNR@5%"], ".3f"),
             f(r["pixAUROC"], ".3f"), f(r["AUPRO"], ".3f"), f(r["fit_s"], ".0f"), f(r["ms_b1"], ".0f"),
             f(r["ms_b32"], ".0f"), f(r["model_MB"], ".1f")] for r in rows]
    lines = table(header, body)
    lines += ["Detection rate per defect type at the FPR = 5% threshold:", ""]
    for data_name in dict.fromkeys(r["data"] for r in rows):
        sub = [r for r in rows if r["data"] == data_name]
        types = list(dict.fromkeys(k for r in sub for k in r["per_type"] if k != "good"))
        lines += table(["data", "detector"] + types,
                       [[data_name, f"``{r['detector']}``"] + [f(r["per_type"].get(t), ".2f") for t in types]
                        for r in sub])
    Path(path).write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, choices=DATASETS)
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated subset")
    parser.add_argument("--vae-recipe", choices=("full", "short"), default="full")
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument("--one", metavar="DETECTOR", help=argparse.SUPPRESS)
    if argv is None and sys.argv[1:2] == ["--rst"]:
        write_rst(sys.argv[3:], sys.argv[2])
        return 0
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.data, args.one, args.vae_recipe)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}
    print(f"# {args.data}: " + " ".join(COLUMNS) + f"  (VAE recipe: {args.vae_recipe}; "
          f"{platform.machine()}, Python {platform.python_version()})", flush=True)
    rows = []
    for det_name in re.split(r",(?![^\[]*\])", args.detectors):  # commas inside [...] belong to a variant
        cmd = [sys.executable, __file__, "--data", args.data, "--one", det_name, "--vae-recipe", args.vae_recipe]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"# {det_name} on {args.data} failed:\n{out.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["vae_recipe"] = args.vae_recipe
        rows.append(row)
        print(fmt_row(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
