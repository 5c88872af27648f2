"""Effect of ``inference_dtype="bfloat16"`` on the patch detectors' image AUROC (float32 beside it).

Each detector (default parameters, ``random_state=0``) is fitted twice on the same training
images, once per ``inference_dtype``, and scores the test images: image AUROC of each, the
largest relative score difference, and the score time per image. Data: MVTec AD transistor
from ../shared/data when present, else ``make_wafer_images``. bfloat16 autocast runs on the
CPU as on CUDA, so the AUROC effect is measurable without a GPU (the speed is not: a CPU
without bfloat16 matrix units gains nothing).

Usage::

    python benchmarks/dtype_auroc.py [--data mvtec|wafer] [--n-jobs 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MVTEC = ROOT.parent / "shared" / "data" / "mvtec_ad_transistor_256gray"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("mvtec", "wafer"), default="mvtec" if MVTEC.exists() else "wafer")
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from greyanom import PaDiMDetector, PatchCoreDetector
    from greyanom.datasets import load_mvtec, make_wafer_images

    data = load_mvtec(MVTEC) if args.data == "mvtec" else make_wafer_images(n_train=200, n_test=100, random_state=0)
    print(f"data: {args.data}, {len(data.X_train)} train, {len(data.X_test)} test ({int(data.y_test.sum())} "
          f"anomalous); torch {torch.__version__}, n_jobs={args.n_jobs}, device cpu")
    print(f"{'detector':18s} {'AUROC f32':>9s} {'AUROC bf16':>10s} {'max rel diff':>12s} {'ms/img f32':>10s} "
          f"{'ms/img bf16':>11s}")
    for cls in (PaDiMDetector, PatchCoreDetector):
        scores, ms = {}, {}
        for dtype in ("float32", "bfloat16"):
            det = cls(inference_dtype=dtype, n_jobs=args.n_jobs, random_state=0).fit(data.X_train)
            t0 = time.perf_counter()
            scores[dtype] = det.score(data.X_test)
            ms[dtype] = 1e3 * (time.perf_counter() - t0) / len(data.X_test)
        auc = {d: roc_auc_score(data.y_test, s) for d, s in scores.items()}
        diff = float(np.max(np.abs(scores["bfloat16"] - scores["float32"]) / np.abs(scores["float32"])))
        print(f"{cls.__name__:18s} {auc['float32']:9.4f} {auc['bfloat16']:10.4f} {diff:12.2e} "
              f"{ms['float32']:10.1f} {ms['bfloat16']:11.1f}")


if __name__ == "__main__":
    main()
