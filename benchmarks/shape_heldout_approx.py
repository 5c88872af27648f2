"""Issue 21: what the linearised held-out calibration of ShapeSignatureDetector changes.

For several seeds of simulated PI-loop lots (``make_pi_lots``, two sensors, no faults): fit
``ShapeSignatureDetector`` on the first lots, then compute the held-out per-trace scores both
ways on the same wafer folds: the linearised fold models (the default,
:func:`greyanom.traces._heldout.linearised_heldout_scores`) and the normal models refitted per
fold (``refit=True``, what ``fit`` did before). Prints per seed the correlation of the two
scores trace by trace, the two thresholds at ``contamination`` and their false-alarm rates on
fresh normal lots (never used in fitting), and the time of each; then the means.

Usage::

    python benchmarks/shape_heldout_approx.py [--seeds 0,1,2,3,4] [--lots 4] [--wafers 12]
    python benchmarks/shape_heldout_approx.py --lam /work/shared/data/wise_etch_lam9600 [--warm] [--repeats 3]

``--lam``: on LAM 9600 (Wise et al. 1999), one ``fit`` with each calibration (in-sample first),
the per-fold refits, and the trace false alarms on the normal wafers left out of the fit.
``--warm``: one untimed in-sample fit first (the first fit of a process also loads the compiled
kernels); ``--repeats N``: N fits each way, alternated, and the median times and ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONTAMINATION = 0.05


def one_seed(seed, n_lots, wafers):
    from greyanom import ShapeSignatureDetector
    from greyanom.base import threshold_from_scores
    from greyanom.datasets import make_pi_lots
    from greyanom.traces._analyser import TraceAnalyser

    df = make_pi_lots(n_lots=2 * n_lots, wafers_per_lot=wafers, sensors=("v", "u"), n_points=60, random_state=seed)
    lots = sorted(df["lot"].unique())
    fit, new = df[df["lot"].isin(lots[:n_lots])], df[df["lot"].isin(lots[n_lots:])]
    det = ShapeSignatureDetector(group_keys=("sensor",), lot_key="lot", contamination=CONTAMINATION,
                                 calibration="in_sample", n_jobs=1, random_state=0).fit(fit)
    an = TraceAnalyser.of(det)
    t0 = time.perf_counter()
    app = an.heldout_scores(fit, det.cv, det.random_state)
    t1 = time.perf_counter()
    ref = an.heldout_scores(fit, det.cv, det.random_state, refit=True)
    t2 = time.perf_counter()
    both = ref.index.intersection(app.index)
    fresh = det.score(new).to_numpy(dtype=np.float64)
    fresh = fresh[np.isfinite(fresh)]
    thr_app, thr_ref = (float(threshold_from_scores(s.to_numpy(), CONTAMINATION)) for s in (app, ref))
    return {
        "seed": seed, "n_traces": len(ref), "n_common": len(both),
        "corr": float(np.corrcoef(app[both].to_numpy(), ref[both].to_numpy())[0, 1]),
        "thr_approx": thr_app, "thr_refit": thr_ref, "thr_rel_diff": thr_app / thr_ref - 1,
        "fa_approx": float(np.mean(fresh > thr_app)), "fa_refit": float(np.mean(fresh > thr_ref)),
        "fa_in_sample": float(np.mean(fresh > det.threshold_)), "n_fresh": len(fresh),
        "t_approx_s": t1 - t0, "t_refit_s": t2 - t1,
    }


def lam(path, seed=0, warm=False, repeats=1):
    """LAM 9600: fits each way on 75 % of the normal wafers (split ``seed``), the rest fresh."""
    from greyanom import ShapeSignatureDetector
    from greyanom.base import threshold_from_scores
    from greyanom.datasets import load_lam9600
    from greyanom.traces._analyser import TraceAnalyser

    df = load_lam9600(path)
    wafers = df.drop_duplicates("wafer").set_index("wafer")["fault"]
    normal = wafers.index[wafers.isna()]
    train = set(np.random.default_rng(seed).choice(normal, int(0.75 * len(normal)), replace=False))
    fit = df[df["wafer"].isin(train)]
    new = df[df["wafer"].isin(set(normal) - train)]
    times, dets = {"in_sample": [], "heldout": []}, {}

    def make(cal):
        return ShapeSignatureDetector(group_keys=("sensor", "step"), lot_key="experiment",
                                      contamination=CONTAMINATION, calibration=cal, random_state=seed)

    if warm:
        make("in_sample").fit(fit)
    for _ in range(repeats):
        for cal in ("in_sample", "heldout"):
            det = make(cal)
            t0 = time.perf_counter()
            dets[cal] = det.fit(fit)
            times[cal].append(time.perf_counter() - t0)
    ratios = [h / i for i, h in zip(times["in_sample"], times["heldout"])]
    times = {k: float(np.median(v)) for k, v in times.items()}
    held = dets["heldout"]
    t0 = time.perf_counter()
    ref = TraceAnalyser.of(held).heldout_scores(fit, held.cv, held.random_state, refit=True)
    t_ref = time.perf_counter() - t0
    app = TraceAnalyser.of(held).heldout_scores(fit, held.cv, held.random_state)
    both = ref.index.intersection(app.index)
    fresh = held.score(new).to_numpy(dtype=np.float64)
    fresh = fresh[np.isfinite(fresh)]
    thr_ref = float(threshold_from_scores(ref.to_numpy(), CONTAMINATION))
    return {
        "data": f"LAM 9600, {len(train)} + {len(normal) - len(train)} normal wafers",
        "fit_in_sample_s": times["in_sample"], "fit_heldout_s": times["heldout"],
        "ratio": float(np.median(ratios)), "ratios": [round(r, 3) for r in ratios], "warm": warm,
        "refit_heldout_s": t_ref,
        "n_traces": len(ref), "n_common": len(both),
        "corr": float(np.corrcoef(app[both].to_numpy(), ref[both].to_numpy())[0, 1]),
        "thr_approx": held.threshold_, "thr_refit": thr_ref, "thr_in_sample": dets["in_sample"].threshold_,
        "fa_approx": float(np.mean(fresh > held.threshold_)), "fa_refit": float(np.mean(fresh > thr_ref)),
        "fa_in_sample": float(np.mean(fresh > dets["in_sample"].threshold_)), "n_fresh": len(fresh),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--lots", type=int, default=4, help="lots to fit (as many fresh)")
    p.add_argument("--wafers", type=int, default=12, help="wafers per lot")
    p.add_argument("--lam", default=None, help="folder of MACHINE_Data.mat: one fit each way on LAM 9600 instead")
    p.add_argument("--warm", action="store_true", help="--lam: one untimed in-sample fit first")
    p.add_argument("--repeats", type=int, default=1, help="--lam: fits each way (alternated; medians)")
    args = p.parse_args(argv)
    if args.lam:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = lam(args.lam, warm=args.warm, repeats=args.repeats)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        return
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(one_seed(seed, args.lots, args.wafers))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    keys = ["corr", "thr_rel_diff", "fa_approx", "fa_refit", "fa_in_sample", "t_approx_s", "t_refit_s"]
    print("mean:", {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys})


if __name__ == "__main__":
    main()
