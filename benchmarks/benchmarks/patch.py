"""asv benchmarks of the patch-feature detectors beside PCADetector (and ConvVAEDetector if present).

Data: the real MVTec AD transistor category (grayscale 256x256 derivative in
``../shared/data/mvtec_ad_transistor_256gray``) and, when ``greyanom.datasets.make_wafer_images``
exists, synthetic wafer images. ``setup`` loads the data and fits the detectors outside the
timers; ``track_*`` report image AUROC and pixel AUROC.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TRANSISTOR = Path(
    os.environ.get(
        "GREYANOM_TRANSISTOR",
        Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad_transistor_256gray",
    )
)


def load_transistor(path=TRANSISTOR):
    """Train images, test images, labels, masks and defect types of MVTec transistor.

    Uses ``greyanom.datasets.load_mvtec`` when it exists, else reads the PNGs with Pillow
    (masks resized to 256x256 with nearest neighbour, as PROVENANCE.md says).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"MVTec transistor data not found at {path}")

    def read(p):
        return np.asarray(Image.open(p).convert("L"), dtype=np.uint8)

    train = np.stack([read(p) for p in sorted((path / "train" / "good").glob("*.png"))])
    X, y, masks, types = [], [], [], []
    for d in sorted((path / "test").iterdir()):
        for p in sorted(d.glob("*.png")):
            img = read(p)
            X.append(img)
            types.append(d.name)
            y.append(int(d.name != "good"))
            if d.name == "good":
                masks.append(np.zeros(img.shape, dtype=bool))
            else:
                m = Image.open(path / "ground_truth" / d.name / f"{p.stem}_mask.png").convert("L")
                m = m.resize(img.shape[::-1], Image.NEAREST)
                masks.append(np.asarray(m) > 127)
    return train, np.stack(X), np.array(y), np.stack(masks), np.array(types)


def load_wafer(random_state=0):
    """Synthetic wafer images from ``greyanom.datasets.make_wafer_images``, or None if absent."""
    try:
        from greyanom.datasets import make_wafer_images
    except ImportError:
        return None
    return make_wafer_images(random_state=random_state)


def make_detectors(random_state=0):
    """The detectors compared, by name (ConvVAEDetector only if greyanom has it)."""
    import greyanom
    from greyanom import PaDiMDetector, PatchCoreDetector, PCADetector

    dets = {
        "PCADetector": PCADetector(n_components=50, random_state=random_state),
        "PaDiMDetector": PaDiMDetector(random_state=random_state),
        "PatchCoreDetector": PatchCoreDetector(random_state=random_state),
    }
    try:
        dets["ConvVAEDetector"] = greyanom.ConvVAEDetector(random_state=random_state)
    except AttributeError:
        pass
    return dets


class TransistorPatch:
    """Fit and score on MVTec transistor (213 train, 100 test images, 256x256)."""

    params = ["PCADetector", "PaDiMDetector", "PatchCoreDetector"]
    param_names = ["detector"]
    timeout = 600

    def setup_cache(self):
        return load_transistor()

    def setup(self, data, name):
        from sklearn.base import clone

        self.train, self.X, self.y, self.masks, _ = data
        self.det = make_detectors()[name]
        self.fitted = clone(self.det).fit(self.train)
        self.fitted.score(self.X[:1])  # warm up (weights cached, allocator)

    def time_fit(self, data, name):
        from sklearn.base import clone

        clone(self.det).fit(self.train)

    def time_score_batch1(self, data, name):
        self.fitted.score(self.X[:1])

    def time_score_batch32(self, data, name):
        self.fitted.score(self.X[:32])

    def peakmem_fit(self, data, name):
        from sklearn.base import clone

        clone(self.det).fit(self.train)

    def track_image_auroc(self, data, name):
        from sklearn.metrics import roc_auc_score

        return roc_auc_score(self.y, self.fitted.score(self.X))

    def track_pixel_auroc(self, data, name):
        from sklearn.metrics import roc_auc_score

        heat = self.fitted.explain(self.X).heatmap
        return roc_auc_score(self.masks.ravel(), heat.ravel())
