"""A/B of ``fit_batch`` in one process: an older ``_kernels.py`` against this checkout's, on LAM 9600.

Usage::

    git show 5ecaa5a:src/greyanom/shape/_kernels.py > /tmp/old_kernels/old_kernels.py
    PYTHONPATH=src python benchmarks/fit_batch_ab.py /tmp/old_kernels/old_kernels.py [--data DIR] [--reps 20]

The older file must be a leaf module with the 28-argument ``fit_batch`` (outputs passed in);
it is imported from its own folder under its file name, so that Numba caches it apart. Both
fit the 4,864 LAM traces (paper model, no prior, default tolerances); their outputs are
checked equal, then timed alternately (the order flips every repetition). Prints the median
seconds and fits/s of each, the ratio of the medians and the per-pair ratios.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from greyanom.datasets import load_lam9600
from greyanom.traces import Traces
from greyanom.traces import _kernels as new
from greyanom.traces._fit import CRITICAL_TOL, DEGENERATE_TOL


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="path of the older _kernels.py (copied under another name)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    old_path = Path(args.old).resolve()
    sys.path.insert(0, str(old_path.parent))
    old = importlib.import_module(old_path.stem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_lam9600(Path(args.data) / "wise_etch_lam9600")
    tr = Traces.from_frame(df, by=("sensor", "step", "wafer"))
    n = len(tr)
    inputs = (tr.t, tr.z, tr.offsets, np.full(n, np.nan), True, np.zeros((n, 6)), np.zeros(n, bool),
              np.zeros((n, 6)), np.zeros((n, 6)), np.full(n, np.nan))
    opts = (6, 100, 1e-8, CRITICAL_TOL, DEGENERATE_TOL)

    def run_old():
        shapes = [(n, 6), (n, 6), n, n, n, n, n, n, (n, 6, 6), (n, 6, 6), (n, 6, 6), (n, 6), (n, 6)]
        ints = {2, 3, 6}
        outs = [np.empty(s, dtype=np.int64 if i in ints else np.float64) for i, s in enumerate(shapes)]
        old.fit_batch(*inputs, *opts, *outs)
        return outs

    def run_new():
        return new.fit_batch(*inputs, opts)

    for a, b in zip(run_old(), run_new()):  # also the JIT warm-up
        if not np.array_equal(a, b, equal_nan=True):
            raise SystemExit("the outputs differ")
    print(f"outputs equal ({n} traces)")
    times = {"old": [], "new": []}
    for rep in range(args.reps):
        order = (("old", run_old), ("new", run_new)) if rep % 2 == 0 else (("new", run_new), ("old", run_old))
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, v in times.items():
        print(f"{name}: median {np.median(v):.3f} s ({n / np.median(v):.0f} fits/s), min {min(v):.3f} s")
    print(f"ratio new/old of the medians: {np.median(times['new']) / np.median(times['old']):.3f}")
    print("per-pair ratios:", " ".join(f"{b / a:.2f}" for a, b in zip(times["old"], times["new"])))


if __name__ == "__main__":
    main()
