"""How the defaults of PaDiMDetector / PatchCoreDetector were chosen (MVTec AD transistor).

Extracts the EfficientNet-Lite0 features once per (normalisation, stages, patch size), then
fits PaDiM (Ledoit-Wolf or empirical covariance) or PatchCore on them and evaluates image
AUROC, FNR at FPR = 5% and pixel AUROC for several heatmap blurs and score reductions.
Runs torch on one thread.

Usage::

    python benchmarks/patch_defaults.py padim imagenet:35:3 symmetric:35:3 imagenet:35:1
    python benchmarks/patch_defaults.py patchcore imagenet:35:3

Each configuration is ``normalization:stages:patch_size`` (stages as digits).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MVTEC = ROOT.parent / "shared" / "data" / "mvtec_ad_transistor_256gray"


def main(argv):
    import torch

    from greyanom import PaDiMDetector, PatchCoreDetector
    from greyanom.datasets import load_mvtec
    from greyanom.image import _backbone
    from greyanom.image._reduce import reduce_error_maps, smooth_maps
    from greyanom.metrics import fnr_at_fpr, image_auroc, pixel_auroc

    torch.set_num_threads(1)  # this script's process only
    kind, configs = argv[0], argv[1:]
    d = load_mvtec(MVTEC)
    if kind == "padim":
        variants = [(f"padim-{c}", lambda c=c: PaDiMDetector(covariance=c)) for c in ("ledoit_wolf", "empirical")]
    else:
        variants = [
            (f"patchcore-{f}-p{p}", lambda f=f, p=p: PatchCoreDetector(coreset_fraction=f, projection_dim=p))
            for f, p in ((0.01, 64), (0.01, 128), (0.02, 64))
        ]
    print("config detector heatmap_sigma reduction topk_fraction image_AUROC FNR@5% pixel_AUROC fit_s")
    for cfg in configs:
        norm, stages, ps = cfg.split(":")
        kw = dict(normalization=norm, stages=tuple(int(c) for c in stages), patch_size=int(ps), feature_stride=8)
        f_train = _backbone.extract_patch_features(d.X_train, **kw)
        f_test = _backbone.extract_patch_features(d.X_test, **kw)
        for name, make in variants:
            det = make()
            det.image_shape_, det.device_ = tuple(d.X_train.shape[1:]), torch.device("cpu")
            t0 = time.perf_counter()
            det._fit_features(f_train, np.random.RandomState(0))
            fit_s = time.perf_counter() - t0
            with torch.inference_mode():
                patch = det._patch_map(torch.from_numpy(f_test), det._on_device()).numpy()
            for sigma in (0.0, 4.0, 8.0):
                heat = smooth_maps(_backbone.upsample_maps(patch, det.image_shape_), sigma)
                pix = pixel_auroc(d.masks_test, heat)
                for red, frac in (("max", 0.01), ("topk", 0.01), ("topk", 0.05), ("mean", 0.01)):
                    s = reduce_error_maps(heat, red, topk_fraction=frac)
                    print(f"{cfg} {name} {sigma:g} {red} {frac:g} {image_auroc(d.y_test, s):.4f} "
                          f"{fnr_at_fpr(d.y_test, s)[0]:.3f} {pix:.4f} {fit_s:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
