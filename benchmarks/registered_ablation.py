"""RegisteredPixelDetector design choices on make_wafer_images (seed 0, 200 train / 100 test).

Each row changes one choice against the defaults: no Hann window before phase correlation
(monkeypatched, to show why it is there), no PCA modes, a single scale, no line filters, the coarse scale,
the top-k reduction. Prints image AUROC, pixel AUROC, AUPRO and the detection rate per
defect type at FPR 5% (``greyanom.metrics.evaluate``). One thread.

Usage::

    python benchmarks/registered_ablation.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

VARIANTS = [
    ("default", {}, False),
    ("no Hann window, n_components=0", {"n_components": 0}, True),
    ("n_components=0", {"n_components": 0}, False),
    ("single scale (no blob, no lines)", {"blob_sigma": 0.0, "line_length": 0.0}, False),
    ("no line filters", {"line_length": 0.0}, False),
    ("coarse_sigma=4", {"coarse_sigma": 4.0}, False),
    ("topk 0.1%, smoothing_sigma=1", {"score_reduction": "topk", "smoothing_sigma": 1.0}, False),
]


def main():
    from greyanom import RegisteredPixelDetector
    from greyanom.datasets import make_wafer_images
    from greyanom.image import _align
    from greyanom.metrics import evaluate

    data = make_wafer_images(n_train=200, n_test=100, random_state=0)
    window = _align.hann_window
    for name, params, no_window in VARIANTS:
        _align.hann_window = (lambda shape: np.ones(shape)) if no_window else window
        det = RegisteredPixelDetector(random_state=0, **params).fit(data.X_train)
        e = det.explain(data.X_test)
        r = evaluate(data.y_test, e.score, heatmaps=e.heatmap, masks=data.masks_test,
                     defect_types=data.defect_types_test)
        types = ", ".join(f"{k} {v:.2f}" for k, v in r.per_type.items() if k != "good")
        print(f"{name:<34} AUROC {r.auroc:.3f}  pixel AUROC {r.pixel_auroc:.3f}  AUPRO {r.aupro:.3f}  | {types}",
              flush=True)
    _align.hann_window = window
    return 0


if __name__ == "__main__":
    sys.exit(main())
