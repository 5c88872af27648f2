"""asv benchmarks of the patch-feature detectors beside PCADetector (and ConvVAEDetector if present).

Data: the real MVTec AD transistor category (grayscale 256x256 derivative in
``../shared/data/mvtec_ad_transistor_256gray``; the benchmark is skipped without it) and
``make_wafer_images``. ``setup`` loads the data and fits the detectors outside the timers;
``track_*`` report image AUROC, pixel AUROC and the fitted model's memory.
The full table (AUPRC, FNR at FPR 5%, AUPRO, per-type rates) comes from
``benchmarks/patch_report.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

MVTEC = Path(
    os.environ.get(
        "GREYANOM_MVTEC_TRANSISTOR",
        Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad_transistor_256gray",
    )
)


def _detector(name):
    import greyanom

    if name == "PCADetector":
        return greyanom.PCADetector(
            n_components=50, score_reduction="topk", smoothing_sigma=4.0, topk_fraction=0.01, random_state=0
        )
    return getattr(greyanom, name)(random_state=0)


def _detectors():
    import greyanom

    names = ["PCADetector", "PaDiMDetector", "PatchCoreDetector"]
    try:
        greyanom.ConvVAEDetector
        names.insert(1, "ConvVAEDetector")
    except AttributeError:
        pass
    return names


def _data(name):
    from greyanom.datasets import load_mvtec, make_wafer_images

    if name == "mvtec-transistor":
        if not MVTEC.is_dir():
            raise NotImplementedError(f"MVTec transistor not found at {MVTEC}")  # asv: skip
        return load_mvtec(MVTEC)
    return make_wafer_images(n_train=200, n_test=100, random_state=0)


class PatchDetectors:
    """Fit and score the image detectors on MVTec transistor and synthetic wafers (256x256)."""

    params = (["mvtec-transistor", "wafer"], _detectors())
    param_names = ["data", "detector"]
    timeout = 900

    def setup(self, data_name, det_name):
        from sklearn.base import clone

        self.data = _data(data_name)
        self.det = _detector(det_name)
        self.fitted = clone(self.det).fit(self.data.X_train)
        self.one = self.data.X_test[:1]
        self.batch = self.data.X_test[:32]
        self.fitted.score(self.one)  # warm up

    def time_fit(self, data_name, det_name):
        from sklearn.base import clone

        clone(self.det).fit(self.data.X_train)

    def time_score_batch1(self, data_name, det_name):
        self.fitted.score(self.one)

    def time_score_batch32(self, data_name, det_name):
        self.fitted.score(self.batch)

    def peakmem_fit(self, data_name, det_name):
        from sklearn.base import clone

        clone(self.det).fit(self.data.X_train)

    def track_image_auroc(self, data_name, det_name):
        from greyanom.metrics import image_auroc

        return image_auroc(self.data.y_test, self.fitted.score(self.data.X_test))

    def track_pixel_auroc(self, data_name, det_name):
        from greyanom.metrics import pixel_auroc

        return pixel_auroc(self.data.masks_test, self.fitted.explain(self.data.X_test).heatmap)

    def track_model_mb(self, data_name, det_name):
        return getattr(self.fitted, "model_nbytes_", float("nan")) / 2**20
