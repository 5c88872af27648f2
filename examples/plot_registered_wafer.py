"""
Golden-template inspection of aligned die images
================================================

Fit :class:`~greyanom.RegisteredPixelDetector` on normal images of a die from
:func:`~greyanom.datasets.make_die_images` (shifted by up to two pixels from image to
image), look at the shifts it estimated, its metrics, and the heatmaps of one image per
defect type. Small images (128 x 128) keep the example fast.
"""

# %%
# Data: 80 normal training images and 40 test images, half of them defective.
import numpy as np

from greyanom import RegisteredPixelDetector
from greyanom.datasets import make_die_images
from greyanom.metrics import evaluate

data = make_die_images(n_train=80, n_test=40, image_size=128, random_state=0)
print(data.X_train.shape, data.X_test.shape, "defective:", int(data.y_test.sum()))

# %%
# Fit: each image loses a plane and its gain, is registered to the reference by phase
# correlation (sub-pixel) and shifted onto it; 10 global PCA modes are removed; the
# per-pixel median and robust standard deviation of the aligned images are the model.
detector = RegisteredPixelDetector(n_components=10, random_state=0).fit(data.X_train)
print("largest training shift (px):", np.abs(detector.train_shifts_).max().round(2))

# %%
# Explain the test images: the heatmap is the normalised ``|z|`` in each image's own frame,
# the score its maximum, and ``shift`` the translation that registered the image.
e = detector.explain(data.X_test)
report = evaluate(data.y_test, e.score, heatmaps=e.heatmap, masks=data.masks_test,
                  defect_types=data.defect_types_test)
print(report)

# %%
# Heatmaps of one image per defect type (cyan: the true defect outline).
import matplotlib.pyplot as plt

from greyanom.plotting import plot_heatmap_overlays

idx = [int(np.flatnonzero(data.defect_types_test == t)[0]) for t in sorted(set(data.defect_types_test))]
titles = [f"{data.defect_types_test[i]}: {e.score[i]:.2g}" for i in idx]
plot_heatmap_overlays(data.X_test[idx], e.heatmap[idx], data.masks_test[idx], titles=titles, n_cols=3)
plt.show()
