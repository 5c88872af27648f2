"""ConvVAEDetector benchmark report: latency, size, memory, training time and detection.

Prints the figures as tables and, with ``--rst DIR`` / ``--csv DIR``, writes them as
tables for the docs. Detection is measured beside PCADetector in the same run:

* ``mvtec``: the real MVTec AD transistor category (213 normal training images, 60 normal
  and 40 defective test images at 256x256, grayscale), read from
  ``../shared/data/mvtec_ad_transistor_256gray`` (``--mvtec-path``).
* ``wafer``: synthetic wafer images from :func:`greyanom.datasets.make_wafer_images`.

Every VAE route is trained with the case study's recipe (50 epochs, batch 32, early
stopping; ``--max-epochs`` trains fewer on a slow CPU, the table says how many ran):
the pixel VAE, the pixel VAE on registered images (``--register`` data sets, aligned
images only), the feature-space VAE, and the feature VAE on registered images
(``--routes`` picks and orders them). Each trained network is scored several ways
(raw residual or residual z-score, several reductions): those act after the network, so
one training serves all rows of a group. PCA and PaDiM with their defaults run in the
same process, on the same data.

Usage::

    PYTHONPATH=src python benchmarks/vae_report.py --latency
    PYTHONPATH=src python benchmarks/vae_report.py --threads 1 --detection mvtec wafer --json vae.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from greyanom import ConvVAEDetector, PCADetector

HERE = Path(__file__).resolve().parent
DEFAULT_MVTEC = HERE.parent.parent / "shared" / "data" / "mvtec_ad_transistor_256gray"


# -- data ---------------------------------------------------------------------------------
def load_mvtec_transistor(path):
    """Train images, test images, labels, masks (256x256 nearest) and defect types."""
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"MVTec transistor data not found at {path}; pass --mvtec-path.")

    def read(p):
        return np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0

    X_train = np.stack([read(p) for p in sorted((path / "train" / "good").glob("*.png"))])
    X_test, y, masks, types = [], [], [], []
    for d in sorted((path / "test").iterdir()):
        for p in sorted(d.glob("*.png")):
            img = read(p)
            X_test.append(img)
            types.append(d.name)
            y.append(int(d.name != "good"))
            if d.name == "good":
                masks.append(np.zeros(img.shape, bool))
            else:
                m = Image.open(path / "ground_truth" / d.name / f"{p.stem}_mask.png").convert("L")
                masks.append(np.asarray(m.resize(img.shape[::-1], Image.NEAREST)) > 127)
    return X_train, np.stack(X_test), np.array(y), np.stack(masks), np.array(types)


def load_wafer(n_train, n_test, image_size, seed):
    from greyanom.datasets import make_wafer_images

    d = make_wafer_images(n_train=n_train, n_test=n_test, image_size=image_size, random_state=seed)
    return d.X_train, d.X_test, d.y_test, d.masks_test, d.defect_types_test


# -- measurements ---------------------------------------------------------------------------
def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency(det, batch_sizes=(1, 8, 32, 64), n_images=128, n_batch1=100, seed=0):
    """Per-image latency of ``det.score`` (the public path) at each batch size."""
    rng = np.random.default_rng(seed)
    H, W = det.image_shape_
    pool = rng.random((n_images, H, W), dtype=np.float32)
    rows = []
    for b in batch_sizes:
        det.set_params(batch_size=b)
        det.score(pool[:b])  # warm-up
        n_calls = n_batch1 if b == 1 else max(3, n_images // b)
        per_image = []
        for i in range(n_calls):
            start = (i * b) % (n_images - b + 1)
            batch = pool[start : start + b]
            t0 = time.perf_counter()
            det.score(batch)
            per_image.append((time.perf_counter() - t0) / b)
        t = np.array(per_image) * 1e3
        rows.append(
            {
                "batch": b,
                "calls": n_calls,
                "mean_ms_per_image": float(t.mean()),
                "p99_ms_per_image": float(np.percentile(t, 99)),
                "throughput_img_s": float(1e3 / t.mean()),
                "peak_rss_mib": _peak_rss_mib(),
            }
        )
    det.set_params(batch_size=32)
    return rows


def sizes(det):
    with tempfile.TemporaryDirectory() as tmp:
        st = det.save(Path(tmp) / "vae.safetensors")
        ts = det.export_torchscript(Path(tmp) / "vae.pt")
        return {"safetensors_mib": st.stat().st_size / 2**20, "torchscript_mib": ts.stat().st_size / 2**20}


def _model_nbytes(det):
    """Bytes on disk of ``det.save`` (or of its learned arrays where it cannot save)."""
    if hasattr(det, "save"):
        with tempfile.TemporaryDirectory() as tmp:
            return det.save(Path(tmp) / "model.safetensors").stat().st_size
    return int(sum(v.nbytes for k, v in vars(det).items() if k.endswith("_") and isinstance(v, np.ndarray)))


def _latency_ms(det, X, n_single=20, n_batches=2, batch=32):
    """Mean ms per image of ``det.score`` at batch 1 (``n_single`` calls) and batch 32."""
    det.score(X[:1])  # warm-up
    t1 = []
    for i in range(n_single):
        t0 = time.perf_counter()
        det.score(X[i % len(X) : i % len(X) + 1])
        t1.append(time.perf_counter() - t0)
    reps = np.resize(np.arange(len(X)), batch * n_batches)
    t32 = []
    for j in range(n_batches):
        xb = X[reps[j * batch : (j + 1) * batch]]
        t0 = time.perf_counter()
        det.score(xb)
        t32.append((time.perf_counter() - t0) / batch)
    return 1e3 * float(np.mean(t1)), 1e3 * float(np.mean(t32))


def _vae(args, **kw):
    return ConvVAEDetector(max_epochs=args.max_epochs, random_state=args.seed, verbose=args.verbose, n_jobs=1, **kw)


# (label, variant parameters) evaluated on one trained network: the residual scaling and
# the reduction act after the network, so one training serves every row of a group.
PIXEL_VARIANTS = (
    ("raw residual, mean (case study a(x))", dict(residual_normalization="none", score_reduction="mean", smoothing_sigma=0.0)),
    ("raw residual, topk 1% + blur 2", dict(residual_normalization="none", score_reduction="topk", smoothing_sigma=2.0, topk_fraction=0.01)),
    ("residual/std, mean", dict(residual_normalization="std", score_reduction="mean", smoothing_sigma=0.0)),
    ("residual/std, topk 1% + blur 2", dict(residual_normalization="std", score_reduction="topk", smoothing_sigma=2.0, topk_fraction=0.01)),
    ("residual/std, max + blur 4", dict(residual_normalization="std", score_reduction="max", smoothing_sigma=4.0)),
)
FEATURE_VARIANTS = (
    ("raw residual, topk 5%", dict(residual_normalization="none", score_reduction="topk", smoothing_sigma=0.0, topk_fraction=0.05)),
    ("residual/std, mean", dict(residual_normalization="std", score_reduction="mean", smoothing_sigma=0.0)),
    ("residual/std, topk 5%", dict(residual_normalization="std", score_reduction="topk", smoothing_sigma=0.0, topk_fraction=0.05)),
    ("residual/std, max", dict(residual_normalization="std", score_reduction="max", smoothing_sigma=0.0)),
)


def detection(name, data, args):
    """Every detector of the VAE report on one data set, in one run; rows of figures."""
    from greyanom import PaDiMDetector
    from greyanom.metrics import evaluate

    X_train, X_test, y, masks, types = data
    rows, per_type = [], {}
    routes = {
        "pixels": ("ConvVAE pixels", dict(input_space="pixels"), PIXEL_VARIANTS),
        "pixels-registered": ("ConvVAE pixels, registered", dict(input_space="pixels", register=True), PIXEL_VARIANTS[1:]),
        "features": ("ConvVAE features", dict(input_space="features"), FEATURE_VARIANTS),
        "features-registered": (
            "ConvVAE features, registered",
            dict(input_space="features", register=True),
            FEATURE_VARIANTS[1:],
        ),
    }
    models = [
        ("PCA (defaults)", PCADetector(random_state=args.seed), None),
        ("PaDiM (defaults)", PaDiMDetector(n_jobs=1, random_state=args.seed), None),
    ]
    for route in args.routes:
        if route.endswith("-registered") and name not in args.register:
            continue
        label, params, variants = routes[route]
        models.append((label, _vae(args, **params), variants))
    for label, det, variants in models:
        t0 = time.perf_counter()
        det.fit(X_train)
        fit_s = time.perf_counter() - t0
        lat1, lat32 = _latency_ms(det, X_test)
        size_mib = _model_nbytes(det) / 2**20
        for vlabel, params in variants or ((None, {}),):
            v = _with_params(det, params) if params else det
            e = v.explain(X_test)
            rep = evaluate(y, e.score, heatmaps=e.heatmap, masks=masks, defect_types=types, target_fpr=0.05)
            full = label if vlabel is None else f"{label}: {vlabel}"
            row = {
                "data": name,
                "detector": full,
                "auroc": rep.auroc,
                "auprc": rep.auprc,
                "fnr_at_fpr5": rep.fnr_at_fpr,
                "pixel_auroc": rep.pixel_auroc,
                "aupro": rep.aupro,
                "fit_s": fit_s,
                "batch1_ms": lat1,
                "batch32_ms": lat32,
                "size_mib": size_mib,
                "n_params": getattr(det, "n_params_", None),
                "epochs": getattr(det, "n_epochs_", None),
                "best_epoch": getattr(det, "best_epoch_", None),
            }
            rows.append(row)
            per_type[full] = rep.per_type
            print(f"[{name}] {full} (fit {fit_s:.0f} s, load {os.getloadavg()[0]:.1f})\n{rep}\n", flush=True)
    return rows, per_type, None


def _with_params(det, params):
    import copy

    other = copy.copy(det)
    other.set_params(**params)
    return other


# -- output -----------------------------------------------------------------------------------
def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def table(rows, cols=None):
    cols = cols or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def rst_table(rows, cols=None):
    cols = cols or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    sep = "  ".join("=" * w for w in widths)
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([sep, line(cols), sep] + [line(r) for r in cells] + [sep]) + "\n"


def write(rows, stem, args):
    if not rows:
        return
    if args.csv:
        Path(args.csv).mkdir(parents=True, exist_ok=True)
        with open(Path(args.csv) / f"{stem}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.rst:
        Path(args.rst).mkdir(parents=True, exist_ok=True)
        (Path(args.rst) / f"{stem}.rst").write_text(rst_table(rows))


DOCS_COLUMNS = (
    ("detector", "detector"),
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("fnr_at_fpr5", "FNR@5%"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
    ("fit_s", "fit s"),
    ("batch1_ms", "ms batch 1"),
    ("batch32_ms", "ms/img batch 32"),
    ("size_mib", "MiB"),
)


def docs_tables(json_files):
    """One compact rst table per data set from the JSON files of earlier runs."""
    rows = []
    for f in json_files:
        rows += json.loads(Path(f).read_text()).get("detection", [])
    out = []
    for name in dict.fromkeys(r["data"] for r in rows):
        sub = [{label: r[key] for key, label in DOCS_COLUMNS} for r in rows if r["data"] == name]
        out.append(f".. rubric:: {name}\n\n" + rst_table(sub))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", action="store_true", help="CPU latency, throughput, size, memory")
    p.add_argument("--detection", nargs="*", choices=["mvtec", "wafer"], default=[])
    p.add_argument("--max-epochs", type=int, default=50, help="50 = the case study's full recipe")
    p.add_argument("--mvtec-path", default=str(DEFAULT_MVTEC))
    p.add_argument("--wafer-n-train", type=int, default=200)
    p.add_argument("--wafer-n-test", type=int, default=100)
    p.add_argument("--image-size", type=int, default=256, help="wafer image size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--routes",
        nargs="*",
        default=["pixels", "pixels-registered", "features", "features-registered"],
        choices=["pixels", "pixels-registered", "features", "features-registered"],
        help="VAE routes to train, in this order (registered ones only on --register data sets)",
    )
    p.add_argument(
        "--register", nargs="*", default=["wafer"], help="data sets that also get the registered VAE rows (aligned images)"
    )
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--rst", help="directory for .rst tables")
    p.add_argument("--csv", help="directory for .csv tables")
    p.add_argument("--json", help="file for all figures as JSON")
    p.add_argument("--docs-table", nargs="+", metavar=("OUT", "JSON"), help="write OUT from the JSON files; no run")
    args = p.parse_args(argv)
    if args.docs_table:
        Path(args.docs_table[0]).write_text(docs_tables(args.docs_table[1:]))
        return 0
    if not args.latency and not args.detection:
        args.latency = True
    import torch

    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, torch)
    finally:
        torch.set_num_threads(old_threads)


def _run(args, torch):
    out = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at start {os.getloadavg()[0]:.2f}",
    }
    print(out["machine"], flush=True)
    if args.latency:
        rng = np.random.default_rng(args.seed)
        X = rng.random((16, 256, 256), dtype=np.float32)
        det = ConvVAEDetector(input_space="pixels", max_epochs=1, random_state=args.seed).fit(X)  # weights do not affect timing
        rows = latency(det)
        info = {"n_params": det.n_params_, **sizes(det)}
        print(table(rows), "\n", info, flush=True)
        out["latency"], out["size"] = rows, info
        write(rows, "vae_latency", args)
        write([{k: v for k, v in info.items()}], "vae_size", args)
    det_rows, per_type_rows = [], []
    for name in args.detection:
        if name == "mvtec":
            data = load_mvtec_transistor(args.mvtec_path)
        else:
            data = load_wafer(args.wafer_n_train, args.wafer_n_test, args.image_size, args.seed)
        rows, per_type, _ = detection(name, data, args)
        det_rows += rows
        for label, rates in per_type.items():
            per_type_rows.append({"data": name, "detector": label, **{k: v for k, v in (rates or {}).items()}})
        print(table(rows), flush=True)
        if args.json:  # partial results survive an interrupted run
            Path(args.json).write_text(json.dumps({**out, "detection": det_rows, "per_type": per_type_rows}, indent=2, default=float))
    if det_rows:
        write(det_rows, "vae_detection", args)
        for name in args.detection:
            sub = [r for r in per_type_rows if r["data"] == name]
            write(sub, f"vae_per_type_{name}", args)
        out["detection"], out["per_type"] = det_rows, per_type_rows
    out["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
