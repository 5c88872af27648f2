"""Issue 21: the ConvVAE's held-out threshold against fresh normal images, before and after the fix.

The VAE's held-out calibration scores are those of its validation images, which the weights never
trained on. With ``residual_normalization="std"`` (the default) the same images set the residual
statistics (``residual_mean_``, ``residual_std_``) that every score is z-scored by, so, scored
with them, they score lower than images the statistics never saw. "before" is the threshold that
``fit`` set until this fix: the ``1 - contamination`` quantile of the validation images' own scores
(``decision_scores_[validation_indices_]``, the same fitted model and statistics, so it is computed
from the same fit); "after" is ``threshold_`` now, set on their leave-one-out scores (each validation
image z-scored by the statistics of the others); "in-sample" is ``calibration="in_sample"``.

For each ``random_state``: ``fit`` with ``calibration="in_sample"`` and ``"heldout"`` alternated
(A B B A ..., the median of each and their ratio; goal at most 1.5), the fraction (and count) of
fresh normal images (never used in fitting) above each threshold at ``contamination=0.05``, and
the AUROC on a labelled test set (the fix changes no score, only which scores set ``offset_``, so
the AUROC of both arms is printed to show it is the same). Two diagnostics beside: the median score
of the validation images with the fitted statistics, leave-one-out, and of the fresh images.

Data: ``make_wafer_images`` (seed 0), the first ``n`` training images to fit and the next ``n``
(or ``--fresh``) as fresh normals (100 + 100 of 256 x 256, as ``calibration_cost.py``;
``--quick``: 40 + 40 of 128 x 128), its 100 test images (40 anomalous) for the AUROC. The VAE trains ``--epochs`` epochs
(default 3, as ``calibration_cost.py``; the threshold rule, not the network, is the point; with
3 epochs and the default KL warm-up of 10 epochs early stopping has no epoch to choose, so
``--epochs 20 --kl-warmup 2 --patience 3`` measures it with early stopping at work).

Usage::

    python benchmarks/vae_heldout_calibration.py [--quick] [--seeds 0,1,2] [--epochs 3] [--repeats 1]
                                                 [--input-space features|pixels] [--fresh 400]
                                                 [--size 128] [--kl-warmup 2] [--patience 3]
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="40 + 40 images of 128 x 128")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated random_state values")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="timed fits per arm and seed (alternated)")
    p.add_argument("--input-space", default="features", choices=("features", "pixels"))
    p.add_argument("--fresh", type=int, default=None, help="fresh normal images (default: as many as fitted)")
    p.add_argument("--size", type=int, default=None, help="image side (default 256, --quick 128)")
    p.add_argument("--kl-warmup", type=int, default=10, help="kl_warmup_epochs (the default 10)")
    p.add_argument("--patience", type=int, default=10, help="early_stopping_patience (the default 10)")
    args = p.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from greyanom import ConvVAEDetector
    from greyanom.base import threshold_from_scores
    from greyanom.datasets import make_wafer_images

    n, size = (40, 128) if args.quick else (100, 256)
    size = size if args.size is None else args.size
    n_fresh = n if args.fresh is None else args.fresh
    d = make_wafer_images(n_train=n + n_fresh, n_test=100, image_size=size, random_state=0)
    X_fit, X_new = d.X_train[:n], d.X_train[n:]
    seeds = [int(s) for s in args.seeds.split(",")]
    t_start = time.perf_counter()

    def factory(cal, seed):
        return ConvVAEDetector(contamination=CONTAMINATION, calibration=cal, max_epochs=args.epochs,
                               kl_warmup_epochs=args.kl_warmup, early_stopping_patience=args.patience,
                               input_space=args.input_space, random_state=seed)

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factory("in_sample", seeds[0]).fit(X_fit)  # warm-up: imports, backbone weights
        for seed in seeds:
            times = {"in_sample": [], "heldout": []}
            fitted = {}
            for r in range(args.repeats):
                for cal in (("in_sample", "heldout") if r % 2 == 0 else ("heldout", "in_sample")):
                    det = factory(cal, seed)
                    t0 = time.perf_counter()
                    det.fit(X_fit)
                    times[cal].append(time.perf_counter() - t0)
                    fitted[cal] = det
            held, ins = fitted["heldout"], fitted["in_sample"]
            val = held.validation_indices_
            s_new = held.score(X_new)
            thr = {
                "before": float(threshold_from_scores(held.decision_scores_[val], CONTAMINATION)),
                "after": float(held.threshold_),
                "in_sample": float(ins.threshold_),
            }
            row = {"seed": seed, "n_val": len(val), "n_new": len(s_new), "n_epochs": int(held.n_epochs_),
                   "best_epoch": int(held.best_epoch_),
                   "fit_in_sample_s": float(np.median(times["in_sample"])),
                   "fit_heldout_s": float(np.median(times["heldout"])),
                   "auroc_heldout": float(roc_auc_score(d.y_test, held.score(d.X_test))),
                   "auroc_in_sample": float(roc_auc_score(d.y_test, ins.score(d.X_test))),
                   "median_val_own": float(np.median(held.decision_scores_[val])),
                   "median_val_loo": float(np.median(held.heldout_scores_)),
                   "median_new": float(np.median(s_new))}
            for k, t in thr.items():
                row[f"thr_{k}"] = t
                row[f"fa_{k}"] = int(np.sum(s_new > t))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)

    def fa(key):
        counts = [r[f"fa_{key}"] for r in rows]
        total = sum(r["n_new"] for r in rows)
        return f"{100 * sum(counts) / total:.1f} % ({' + '.join(map(str, counts))} of {total})"

    ratio = [r["fit_heldout_s"] / r["fit_in_sample_s"] for r in rows]
    load = os.getloadavg()
    print()
    print(f"ConvVAEDetector(input_space={args.input_space!r}, max_epochs={args.epochs}, "
          f"kl_warmup_epochs={args.kl_warmup}, early_stopping_patience={args.patience}; "
          f"epochs trained {[r['n_epochs'] for r in rows]}, kept {[r['best_epoch'] for r in rows]}), "
          f"contamination={CONTAMINATION}, {n} + {n_fresh} wafer images of {size} x {size}, "
          f"random_state {args.seeds}, {rows[0]['n_val']} validation images")
    print(f"  fresh-normal false alarms, before (validation images' own scores): {fa('before')}")
    print(f"  fresh-normal false alarms, after (leave-one-out normalisation):    {fa('after')}")
    print(f"  fresh-normal false alarms, calibration='in_sample':                {fa('in_sample')}")
    print(f"  median score: validation own {np.mean([r['median_val_own'] for r in rows]):.4g}, "
          f"leave-one-out {np.mean([r['median_val_loo'] for r in rows]):.4g}, "
          f"fresh {np.mean([r['median_new'] for r in rows]):.4g} (mean over seeds)")
    print(f"  fit held-out / in-sample: {', '.join(f'{v:.2f}' for v in ratio)} (per seed; "
          "medians " + ", ".join(f"{r['fit_heldout_s']:.1f}/{r['fit_in_sample_s']:.1f} s" for r in rows) + ")")
    auc = {k: ", ".join(f"{r['auroc_' + k]:.3f}" for r in rows) for k in ("heldout", "in_sample")}
    print(f"  AUROC (100 test images, 40 anomalous): held-out {auc['heldout']}; in-sample {auc['in_sample']}")
    print(f"  {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {time.perf_counter() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
