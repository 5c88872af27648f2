import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from greyanom.metrics import fnr_at_fpr  # noqa: E402
from greyanom.plotting import plot_heatmap_overlays, plot_roc, plot_score_distributions  # noqa: E402


@pytest.fixture
def labelled(rng):
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    return y, np.r_[rng.normal(size=40), rng.normal(2.0, size=20)]


def test_roc_marks_operating_point(labelled):
    y, s = labelled
    ax = plot_roc(y, s, label="pca")
    fnr, thr = fnr_at_fpr(y, s, 0.05)
    point = ax.lines[1].get_xydata()
    np.testing.assert_allclose(point, [[np.mean(s[y == 0] >= thr), 1 - fnr]])
    assert "pca (AUROC" in ax.get_legend().get_texts()[0].get_text()
    ax2 = plot_roc(y, -s, label="reversed", ax=ax)
    assert ax2 is ax and len(ax.get_legend().get_texts()) == 2
    plt.close("all")


def test_score_distributions(labelled):
    y, s = labelled
    ax = plot_score_distributions(y, s, threshold=1.0, title="scores")
    assert len(ax.patches) == 60  # 30 bins per class
    assert ax.lines[0].get_xdata()[0] == 1.0
    with pytest.raises(ValueError, match="positive"):
        plot_score_distributions(y, s, log=True)
    plt.close("all")


def test_heatmap_overlays(rng):
    images = rng.random((3, 16, 16))
    heat = rng.random((3, 16, 16))
    masks = np.zeros((3, 16, 16), bool)
    masks[1, 4:8, 4:8] = True
    fig = plot_heatmap_overlays(images, heat, masks, titles=["a", "b", "c"], n_cols=2)
    assert len(fig.axes) == 2 * 2 * 2 + 1  # 2 rows x (2 images x 2 panels) + colour bar
    with pytest.raises(ValueError, match="heatmaps"):
        plot_heatmap_overlays(images, heat[:, :8])
    plt.close("all")


def test_import_greyanom_does_not_import_matplotlib_or_torch():
    code = (
        "import sys, greyanom, greyanom.metrics, greyanom.datasets, greyanom.plotting, greyanom.cli; "
        "print([m for m in ('matplotlib', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _overlaps(texts, renderer):
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_score_series_limits_read_apart_and_labels_do_not_collide(rng):
    """Centred scores over decades: distinct limit lines with their values, uncrowded ticks."""
    import pandas as pd

    from greyanom.plotting import plot_score_series

    ref = rng.normal(10.0, 2.0, size=200)
    scores = pd.Series(np.r_[rng.normal(10.0, 2.0, size=20), -30.0, 2000.0, 150.0])
    ax = plot_score_series(scores, reference=ref, labels=scores > 100, yscale="symlog")
    limits = ax.lines[-2:]
    styles = {(line.get_color(), line.get_linestyle()) for line in limits}
    assert len(styles) == 2 and all(line.get_color() != "k" for line in limits)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[-2:] == [f"95 % limit ({np.quantile(ref, 0.95):.3g})", f"99 % limit ({np.quantile(ref, 0.99):.3g})"]
    assert ax.get_yscale() == "symlog" and ax.yaxis.get_transform().linthresh == 10.0
    fig = ax.figure
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert _overlaps(ax.get_yticklabels(), renderer) == []
    assert _overlaps(ax.get_xticklabels(), renderer) == []
    # the legend sits beside the axes, off the data
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    with pytest.raises(ValueError, match="yscale"):
        plot_score_series(scores, yscale="log")
    plt.close("all")
