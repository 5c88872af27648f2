"""Fair under load: every detector's ``fit`` and ``score``, quiet and beside two busy-loop processes.

Usage::

    PYTHONPATH=src python benchmarks/load_fairness.py            # both modes: 6.5-8 min on a shared 2-core machine
    PYTHONPATH=src python benchmarks/load_fairness.py --quick    # smaller data
    PYTHONPATH=src python benchmarks/load_fairness.py --modes new --detectors pca padim

Each mode runs in its own process, because the thread runtimes read their environment when
they load: ``legacy`` (``GREYANOM_THREADS=legacy``: no polite-waiting defaults, no pool limits,
torch threads only for an explicit ``n_jobs``: the behaviour before greyanom._threads) and
``new`` (the default). In each, every detector is warmed up (backbone loaded, JIT compiled)
outside the timer, then ``fit`` and ``score`` are timed quiet and busy, alternately (quiet,
busy, ...; operations under a second are repeated within a timing). "Busy" means two ``python -c
"while True: pass"`` processes, started before and killed after each timing by this script. A
fair share of a 2-core machine beside two busy loops makes a 2-thread job about 2x slower; the
goal is busy/quiet <= 3 for each detector. Prints one line per detector and mode (the best of
the rounds) and the ratios; ``--json`` writes them. Other load on the machine shows up as noise:
say what else ran when you quote the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ALL = ("pca", "registered", "padim", "patchcore", "vae", "shape", "multiway")
BUSY_CODE = "while True: pass"
#: Shorter operations are repeated within one timing (seconds), so that noise does not dominate.
MIN_SECONDS = 1.0


def _busy(n):
    return [subprocess.Popen([sys.executable, "-c", BUSY_CODE]) for _ in range(n)]


def _stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _data(quick):
    from greyanom.datasets import make_pi_lots, make_wafer_images

    n_train, size = (16, 64) if quick else (24, 96)
    images = make_wafer_images(n_train=n_train, n_test=10, image_size=size, random_state=0)
    lots = make_pi_lots(n_lots=4 if quick else 5, wafers_per_lot=10, n_clean_lots=4 if quick else 5, random_state=0)
    return images, lots


def _detectors(quick):
    import greyanom

    return {
        "pca": lambda: greyanom.PCADetector(random_state=0),
        "registered": lambda: greyanom.RegisteredPixelDetector(random_state=0),
        "padim": lambda: greyanom.PaDiMDetector(random_state=0),
        "patchcore": lambda: greyanom.PatchCoreDetector(random_state=0),
        "vae": lambda: greyanom.ConvVAEDetector(max_epochs=2 if quick else 3, random_state=0),
        "shape": lambda: greyanom.ShapeSignatureDetector(lot_key="lot", random_state=0),
        "multiway": lambda: greyanom.MultiwayPCADetector(group_keys=("sensor",), lot_key="lot", random_state=0),
    }


def _child(args):
    """Run in one mode: print one JSON line per detector."""
    import greyanom  # first: its polite-waiting defaults must precede NumPy's and torch's runtimes
    import warnings

    warnings.simplefilter("ignore")
    images, lots = _data(args.quick)
    makers = _detectors(args.quick)
    for name in args.detectors:
        trace = name in ("shape", "multiway")
        X_fit = lots if trace else images.X_train
        X_score = lots if trace else images.X_test
        makers[name]().fit(lots if trace else images.X_train[:8])  # JIT, backbone, imports
        t0 = time.perf_counter()
        det = makers[name]().fit(X_fit)
        t1 = time.perf_counter()
        det.score(X_score)
        t2 = time.perf_counter()
        # operations under MIN_SECONDS are repeated, so that each timing spans about that long
        k_fit, k_score = (max(1, math.ceil(MIN_SECONDS / max(t, 1e-3))) for t in (t1 - t0, t2 - t1))
        times = {"fit quiet": [], "fit busy": [], "score quiet": [], "score busy": []}
        for _ in range(args.rounds):
            for cond in ("quiet", "busy"):
                procs = _busy(2) if cond == "busy" else []
                try:
                    time.sleep(0.5 if procs else 0.0)
                    t0 = time.perf_counter()
                    for _ in range(k_fit):
                        det = makers[name]().fit(X_fit)
                    t1 = time.perf_counter()
                    for _ in range(k_score):
                        det.score(X_score)
                    t2 = time.perf_counter()
                finally:
                    _stop(procs)
                times[f"fit {cond}"].append((t1 - t0) / k_fit)
                times[f"score {cond}"].append((t2 - t1) / k_score)
        print(json.dumps({"detector": name, "mode": args.child, "repeats": [k_fit, k_score], **times}), flush=True)
    print(json.dumps({"threads": greyanom._threads.usable_cpus(),
                      "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                      "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "mode": args.child}),
          flush=True)


def _run_mode(mode, args):
    env = dict(os.environ)
    env.pop("GREYANOM_THREADS", None)
    if mode == "legacy":
        env["GREYANOM_THREADS"] = "legacy"
    cmd = [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds), "--detectors", *args.detectors]
    if args.quick:
        cmd.append("--quick")
    rows, info = [], {}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            rec = json.loads(line)
            if "detector" in rec:
                rows.append(rec)
                _print_row(rec)
            else:
                info = rec
    if proc.returncode:
        raise SystemExit(f"the {mode} run failed with exit status {proc.returncode}")
    return rows, info


def _print_row(rec):
    q, b = min(rec["fit quiet"]), min(rec["fit busy"])
    sq, sb = min(rec["score quiet"]), min(rec["score busy"])
    print(f"{rec['mode']:7s} {rec['detector']:11s} fit {q:7.2f} s quiet {b:7.2f} s busy  x{b / q:5.2f}   "
          f"score {sq:6.2f} s quiet {sb:6.2f} s busy  x{sb / sq:5.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data (16 images of 64x64, 4 lots)")
    parser.add_argument("--rounds", type=int, default=1, help="quiet/busy pairs per detector (default 1)")
    parser.add_argument("--modes", nargs="+", choices=("legacy", "new"), default=["legacy", "new"])
    parser.add_argument("--detectors", nargs="+", choices=ALL, default=list(ALL))
    parser.add_argument("--json", help="write the timings to this file")
    parser.add_argument("--child", choices=("legacy", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    t0 = time.perf_counter()
    print(f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}; "
          f"{'quick' if args.quick else 'full'} sizes, {args.rounds} round(s); best of the rounds", flush=True)
    results = {}
    for mode in args.modes:
        results[mode] = _run_mode(mode, args)
    print(f"\nbusy/quiet ratios (goal <= 3), total {time.perf_counter() - t0:.0f} s:")
    print(f"{'detector':11s} " + " ".join(f"{m + ' fit':>11s} {m + ' score':>13s}" for m in args.modes))
    for name in args.detectors:
        cells = []
        for mode in args.modes:
            rec = next((r for r in results[mode][0] if r["detector"] == name), None)
            if rec is None:
                cells.append(f"{'-':>11s} {'-':>13s}")
                continue
            cells.append(f"{min(rec['fit busy']) / min(rec['fit quiet']):11.2f} "
                         f"{min(rec['score busy']) / min(rec['score quiet']):13.2f}")
        print(f"{name:11s} " + " ".join(cells))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({m: {"rows": r, "info": i} for m, (r, i) in results.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
