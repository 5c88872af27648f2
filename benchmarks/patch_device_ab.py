"""A/B of the patch detectors' ``score``: this tree against another git ref (default ``main``), one process.

The other ref's ``src/greyanom`` is exported with ``git archive`` into a temporary folder and
renamed ``greyanom_before`` (every ``greyanom`` import rewritten), so both versions live in
one process: each detector is fitted once per version on the same images (one torch
thread), and ``score`` of the same test batch is timed A, B, A, B, ... ``--repeats`` times.
Printed: the median seconds per call of each version, the ratio after/before (< 1 means
faster now) and the largest relative score difference.

Usage::

    python benchmarks/patch_device_ab.py [--ref main] [--repeats 7] [--n-train 40] [--n-test 32]
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _export(ref, dest):
    """``ref``'s src/greyanom under ``dest/greyanom_before`` with its imports renamed."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/greyanom"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)
    pkg = dest / "greyanom_before"
    (dest / "src" / "greyanom").rename(pkg)
    for path in pkg.rglob("*.py"):
        path.write_text(re.sub(r"\bgreyanom\b(?=[.\s]|$)", "greyanom_before", path.read_text()))
    return pkg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    tmp_dir = tempfile.TemporaryDirectory(prefix="greyanom-ab-")
    tmp = Path(tmp_dir.name)
    _export(args.ref, tmp)
    sys.path.insert(0, str(tmp))
    before = importlib.import_module("greyanom_before")
    after = importlib.import_module("greyanom")
    assert Path(after.__file__).is_relative_to(ROOT / "src"), after.__file__

    data = importlib.import_module("greyanom.datasets").make_wafer_images(n_train=args.n_train, n_test=args.n_test, random_state=0)
    X_train, X_test = data.X_train, data.X_test
    print(f"git ref before: {args.ref}; images {X_test.shape[1:]}, fit on {len(X_train)}, score {len(X_test)}; "
          f"torch {torch.__version__}, 1 thread")
    kinds = {
        "PaDiMDetector": dict(random_state=0),
        "PatchCoreDetector": dict(random_state=0),
    }
    for name, params in kinds.items():
        det_b = getattr(before, name)(n_jobs=1, **params).fit(X_train)
        det_a = getattr(after, name)(n_jobs=1, **params).fit(X_train)
        s_b, s_a = det_b.score(X_test), det_a.score(X_test)  # warm-up
        times = {"before": [], "after": []}
        for _ in range(args.repeats):
            for label, det in (("before", det_b), ("after", det_a)):
                t0 = time.perf_counter()
                det.score(X_test)
                times[label].append(time.perf_counter() - t0)
        tb, ta = np.median(times["before"]), np.median(times["after"])
        diff = float(np.max(np.abs(s_a - s_b) / np.abs(s_b)))
        print(f"{name:18s} score({len(X_test)}): before {tb:.3f} s, after {ta:.3f} s, ratio after/before "
              f"{ta / tb:.3f}; per-call ratios {sorted(round(a / b, 3) for a, b in zip(times['after'], times['before']))}; "
              f"max rel. score diff {diff:.1e}")
    tmp_dir.cleanup()


if __name__ == "__main__":
    main()
