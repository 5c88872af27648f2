"""Pixel AUROC of the README snippet with and without the detector's smoothing_sigma.

The README snippet and ``greyanom demo`` report pixel metrics on the same map: the heatmap
of ``explain`` blurred by the detector's ``smoothing_sigma`` (the map the image score is
reduced from). This script prints both figures so that the choice stays measured::

    PYTHONPATH=src python benchmarks/readme_pixel_auroc.py
"""

from __future__ import annotations

import time

from greyanom import PCADetector
from greyanom.datasets import make_wafer_images
from greyanom.image import smooth_maps
from greyanom.metrics import aupro, pixel_auroc


def main():
    data = make_wafer_images(random_state=0)
    t0 = time.perf_counter()
    det = PCADetector().fit(data.X_train)
    raw = det.explain(data.X_test).heatmap
    smoothed = smooth_maps(raw, det.smoothing_sigma)
    elapsed = time.perf_counter() - t0
    print(f"PCADetector() on make_wafer_images(random_state=0): fit + explain {elapsed:.1f} s")
    print(f"{'heatmap':<40} {'pixel AUROC':>11} {'AUPRO':>6}")
    for name, maps in (("explain(X).heatmap (raw)", raw),
                       (f"smooth_maps(heatmap, {det.smoothing_sigma:g}) (README, demo)", smoothed)):
        print(f"{name:<40} {pixel_auroc(data.masks_test, maps):11.3f} {aupro(data.masks_test, maps):6.3f}")


if __name__ == "__main__":
    main()
