"""asv benchmarks of PCADetector on synthetic wafer images and the MVTec transistor category.

Data are built in ``setup`` (outside the timers). ``track_*`` report image AUROC for
each number of components and score reduction; ``benchmarks/pca_report.py`` prints the
full table (AUPRC, FNR at FPR = 5%, pixel AUROC) used in the docs.
"""

import warnings
from pathlib import Path

from greyanom import PCADetector
from greyanom.datasets import load_mvtec, make_wafer_images
from greyanom.metrics import image_auroc

MVTEC = Path(__file__).resolve().parents[3] / "shared" / "data" / "mvtec_ad_transistor_256gray"
REDUCTIONS = {"mean": ("mean", 0.0), "max-s4": ("max", 4.0), "topk-s0": ("topk", 0.0), "topk-s4": ("topk", 4.0)}

_CACHE = {}


def _wafer():
    if "wafer" not in _CACHE:
        _CACHE["wafer"] = make_wafer_images(n_train=250, n_test=100, random_state=0)
    return _CACHE["wafer"]


def _fitted(data, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return PCADetector(n_components=k, score_reduction="mean", smoothing_sigma=0.0).fit(data.X_train)


class WaferPCA:
    params = ([10, 50, 100, 200], list(REDUCTIONS))
    param_names = ["n_components", "reduction"]
    timeout = 600

    def setup(self, k, reduction):
        self.data = _wafer()
        self.det = _fitted(self.data, k)
        red, sigma = REDUCTIONS[reduction]
        self.det.set_params(score_reduction=red, smoothing_sigma=sigma)

    def time_score(self, k, reduction):
        self.det.score(self.data.X_test)

    def track_auroc(self, k, reduction):
        return image_auroc(self.data.y_test, self.det.score(self.data.X_test))


class WaferPCAFit:
    params = [10, 50, 200]
    param_names = ["n_components"]
    timeout = 600

    def setup(self, k):
        self.data = _wafer()

    def time_fit(self, k):
        _fitted(self.data, k)

    def peakmem_fit(self, k):
        _fitted(self.data, k)


class MVTecTransistorPCA:
    params = ([10, 50, 100, 200], list(REDUCTIONS))
    param_names = ["n_components", "reduction"]
    timeout = 600

    def setup(self, k, reduction):
        if not MVTEC.exists():
            raise NotImplementedError("../shared/data/mvtec_ad_transistor_256gray is absent")
        if "mvtec" not in _CACHE:
            _CACHE["mvtec"] = load_mvtec(MVTEC)
        self.data = _CACHE["mvtec"]
        self.det = _fitted(self.data, k)
        red, sigma = REDUCTIONS[reduction]
        self.det.set_params(score_reduction=red, smoothing_sigma=sigma)

    def track_auroc(self, k, reduction):
        return image_auroc(self.data.y_test, self.det.score(self.data.X_test))
