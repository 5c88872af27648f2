"""Issue 21: what held-out calibration costs, and what it changes, for every detector.

For every detector, in one process on the same data: ``fit`` with ``calibration="in_sample"``
and with ``calibration="heldout"`` (the default), alternated (A B B A ...), the median of each
and their ratio (goal: at most 1.5); then the false-alarm rate on fresh normal data (never used
in fitting) at the threshold each sets, with ``contamination=0.05`` (the target), beside the
threshold and rate of the refitted clones that set it before (``cross_fit_scores``, the same
five folds; "refit"), for the detectors whose held-out scores changed (MultiwayPCA's wafer folds
did not change; ShapeSignatureDetector's "refit" is its per-fold normal-model refits on the same
wafer folds, ``heldout_scores(..., refit=True)``). For the ConvVAE, whose held-out scores never
came from refits (its validation split; since issue 21's fix each validation image z-scored by
the others' residual statistics), the refitted clones are a reference only: their threshold and
false alarms are shown, not their cost.

Data: ``make_wafer_images`` (seed 0), the first ``n`` training images to fit and the next ``n``
to measure false alarms (100 + 100 of 256 x 256, the issue's setting; ``--quick``: 40 + 40 of
128 x 128); simulated PI-loop lots (``make_pi_lots``, 60 points per trace), three lots to fit
and three to measure. The ConvVAE trains 3 epochs (the threshold rule, not the network, is the
point).

Usage::

    python benchmarks/calibration_cost.py [--quick] [--repeats 2] [--only PCADetector,...]
                                          [--rst docs/guide/calibration_measured.rst.inc]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONTAMINATION = 0.05


def image_sets(quick):
    from greyanom.datasets import make_wafer_images

    n, size = (40, 128) if quick else (100, 256)
    d = make_wafer_images(n_train=2 * n, n_test=2, image_size=size, random_state=0)
    return d.X_train[:n], d.X_train[n:], f"{n} + {n} wafer images of {size} x {size}"


def trace_sets(quick):
    from greyanom.datasets import make_pi_lots

    df = make_pi_lots(n_lots=6, wafers_per_lot=8 if quick else 12, n_points=60, random_state=1)
    lots = sorted(df["lot"].unique())
    fit, new = df[df["lot"].isin(lots[:3])], df[df["lot"].isin(lots[3:])]
    return fit, new, f"{fit['wafer'].nunique()} + {new['wafer'].nunique()} simulated PI-loop wafers"


def detectors():
    """name -> (factory(calibration), data kind, refit comparison: True, False, "trace_folds" or "reference")."""
    import greyanom

    c = CONTAMINATION
    return {
        "PCADetector": (lambda cal: greyanom.PCADetector(contamination=c, calibration=cal, random_state=0),
                        "images", True),
        "RegisteredPixelDetector": (
            lambda cal: greyanom.RegisteredPixelDetector(contamination=c, calibration=cal, random_state=0),
            "images", True),
        "PaDiMDetector": (lambda cal: greyanom.PaDiMDetector(contamination=c, calibration=cal, random_state=0),
                          "images", True),
        "PatchCoreDetector": (
            lambda cal: greyanom.PatchCoreDetector(contamination=c, calibration=cal, random_state=0),
            "images", True),
        "ConvVAEDetector (3 epochs)": (
            lambda cal: greyanom.ConvVAEDetector(contamination=c, calibration=cal, max_epochs=3, random_state=0),
            "images", "reference"),
        "ShapeSignatureDetector": (
            lambda cal: greyanom.ShapeSignatureDetector(lot_key="lot", contamination=c, calibration=cal, n_jobs=1,
                                                        random_state=0),
            "traces", "trace_folds"),
        "MultiwayPCADetector": (
            lambda cal: greyanom.MultiwayPCADetector(lot_key="lot", group_keys=("sensor",), contamination=c,
                                                     calibration=cal, random_state=0),
            "traces", False),
    }


def false_alarms(scores, threshold):
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    return float(np.mean(s > threshold))


def measure(name, factory, X_fit, X_new, refit, repeats, log):
    from greyanom.base import cross_fit_scores, threshold_from_scores

    times = {"in_sample": [], "heldout": []}
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up outside the timer, one fit per arm: imports, backbone weights, JIT, and the
        # allocator (the first fits of a process fault in fresh memory for their large arrays:
        # PCADetector's first held-out fits on 100 images of 256 x 256 took 1.3-2.0 s, later
        # ones 1.0-1.1 s)
        factory("heldout").fit(X_fit)
        t0 = time.perf_counter()
        factory("in_sample").fit(X_fit)
        # quick fits are repeated more (at least ~3 s per arm, at most 7 fits), so that the load of a
        # shared machine averages out
        repeats = int(min(7, max(repeats, np.ceil(3.0 / max(time.perf_counter() - t0, 1e-3)))))
        order = []
        for r in range(repeats):
            order += ["in_sample", "heldout"] if r % 2 == 0 else ["heldout", "in_sample"]
        for cal in order:
            det = factory(cal)
            t0 = time.perf_counter()
            det.fit(X_fit)
            times[cal].append(time.perf_counter() - t0)
            fitted[cal] = det
        held, ins = fitted["heldout"], fitted["in_sample"]
        s_new = held.score(X_new)
        row = {
            "detector": name,
            "fit_in_sample_s": float(np.median(times["in_sample"])),
            "fit_heldout_s": float(np.median(times["heldout"])),
            "thr_heldout": held.threshold_, "thr_in_sample": ins.threshold_,
            "fa_heldout": false_alarms(s_new, held.threshold_), "fa_in_sample": false_alarms(s_new, ins.threshold_),
            "n_new": int(np.isfinite(np.asarray(s_new, dtype=np.float64)).sum()), "repeats": repeats,
        }
        if refit == "trace_folds":  # the per-fold normal-model refits that fit ran before
            from greyanom.traces._analyser import TraceAnalyser

            t0 = time.perf_counter()
            ref = TraceAnalyser.of(held).heldout_scores(X_fit, held.cv, held.random_state, refit=True)
            row["refit_s"] = time.perf_counter() - t0
            row["thr_refit"] = float(threshold_from_scores(ref.to_numpy(), CONTAMINATION))
            row["fa_refit"] = false_alarms(s_new, row["thr_refit"])
        elif refit:
            t0 = time.perf_counter()
            ref = cross_fit_scores(factory("heldout"), X_fit, cv=5, random_state=0)
            row["refit_s"] = time.perf_counter() - t0
            row["thr_refit"] = float(threshold_from_scores(ref, CONTAMINATION))
            row["fa_refit"] = false_alarms(s_new, row["thr_refit"])
            row["reference"] = refit == "reference"  # not what fit cost before
    row["ratio"] = row["fit_heldout_s"] / row["fit_in_sample_s"]
    log(row)
    return row


def _fmt(v, kind):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "--"
    return {"s": f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 0.1 else f"{v:.3f}", "x": f"{v:.2f}", "pct": f"{100 * v:.1f} %", "thr": f"{v:.4g}"}[kind]


def table(rows):
    head = ["detector", "fit in-sample (s)", "fit held-out (s)", "ratio", "old refit held-out (s)",
            "threshold held-out / refit", "FA held-out", "FA refit", "FA in-sample", "fresh items"]
    body = []
    for r in rows:
        body.append([
            r["detector"], _fmt(r["fit_in_sample_s"], "s"), _fmt(r["fit_heldout_s"], "s"), _fmt(r["ratio"], "x"),
            _fmt(r["fit_in_sample_s"] + r["refit_s"], "s") if "refit_s" in r and not r.get("reference") else "--",
            f"{_fmt(r['thr_heldout'], 'thr')} / {_fmt(r.get('thr_refit'), 'thr')}",
            _fmt(r["fa_heldout"], "pct"), _fmt(r.get("fa_refit"), "pct"), _fmt(r["fa_in_sample"], "pct"),
            str(r["n_new"]),
        ])
    return head, body


def rst_table(head, body):
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = " ".join("=" * w for w in widths)
    out = [line, " ".join(h.ljust(w) for h, w in zip(head, widths)), line]
    out += [" ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    out.append(line)
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="40 + 40 images of 128 x 128, smaller trace set")
    p.add_argument("--repeats", type=int, default=None, help="fits per arm (default 2, --quick 1)")
    p.add_argument("--only", default=None, help="comma-separated detector names")
    p.add_argument("--rst", default=None, help="write the table as an RST include to this path")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    dets = detectors()
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        dets = {k: v for k, v in dets.items() if any(k.startswith(s) for s in keep)}
    t_start = time.perf_counter()
    X_img, X_img_new, img_desc = image_sets(args.quick)
    X_tr, X_tr_new, tr_desc = trace_sets(args.quick)

    def log(row):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    rows = []
    for name, (factory, kind, refit) in dets.items():
        X_fit, X_new = (X_img, X_img_new) if kind == "images" else (X_tr, X_tr_new)
        rows.append(measure(name, factory, X_fit, X_new, refit, repeats, log))
        text = report(rows, args, repeats, img_desc, tr_desc, time.perf_counter() - t_start)
        if args.rst:  # after every detector, so that a run cut short keeps what it measured
            Path(args.rst).write_text(text)
    print(text)


def report(rows, args, repeats, img_desc, tr_desc, seconds):
    head, body = table(rows)
    load = os.getloadavg()
    note = (
        f"Measured with ``python benchmarks/calibration_cost.py{' --quick' if args.quick else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats else ''}`` "
        f"(one untimed fit per arm first, then fits per arm alternated, at least {repeats} and more for fits "
        f"under 3 s, up to 7; median), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {load[0]:.1f} at the end), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; images: {img_desc}; traces: {tr_desc}; "
        f"contamination={CONTAMINATION}; {seconds:.0f} s in all."
    )
    return rst_table(head, body) + "\n\n" + note + "\n"


if __name__ == "__main__":
    main()
