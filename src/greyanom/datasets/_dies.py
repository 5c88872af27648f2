"""A second synthetic inspection-image generator: one die per image, other layout, defects and noise.

It exists so that image detectors can be measured on data nobody tuned them on: the
layout, the defect shapes and the nuisance textures all differ from
:func:`~greyanom.datasets.make_wafer_images`.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils import Bunch, check_random_state

__all__ = ["make_die_images", "DIE_DEFECT_TYPES"]

#: The defect types of :func:`make_die_images`.
DIE_DEFECT_TYPES = ("bridge", "open", "void", "residue", "cluster")

_DESCR = """\
Synthetic single-die inspection images (greyanom.datasets.make_die_images)
--------------------------------------------------------------------------
Grayscale top view of one die: a bright seal ring, a block of horizontal metal lines with
periodic line-end cuts (top), a hexagonal contact array on a pad (bottom left) and a block
of diagonal lines (bottom right). Nuisances in every image: stage shift (up to `jitter`
pixels) and a small rotation, illumination gain and offset, vignetting, anisotropic
surface grain, per-row (line-scan) offsets, optical blur and signal-dependent noise.
Defects (test set only): {types}.
"""


def _box(a, lo, hi):
    """Anti-aliased indicator of lo <= a <= hi."""
    return np.clip(a - lo + 0.5, 0.0, 1.0) * np.clip(hi - a + 0.5, 0.0, 1.0)


def _stripes(a, period, width):
    return _box(np.mod(a, period), 0.5, 0.5 + width)


def _layout(u, v, s):
    """Scene reflectance at scene coordinates (u = x, v = y), lengths scaled by ``s``."""
    size = 256.0 * s
    ring = _box(u, 6 * s, size - 6 * s) * _box(v, 6 * s, size - 6 * s)
    ring = ring - _box(u, 10 * s, size - 10 * s) * _box(v, 10 * s, size - 10 * s)
    # top block: horizontal lines (pitch 8, width 4), cut every 48 px
    top = _box(u, 18 * s, size - 18 * s) * _box(v, 18 * s, 118 * s)
    lines = _stripes(v, 8 * s, 4 * s) * (1.0 - _box(np.mod(u + 20 * s, 48 * s), 0.5, 4 * s))
    # bottom left: hexagonal contact array on a darker pad
    pad = _box(u, 18 * s, 122 * s) * _box(v, 134 * s, size - 18 * s)
    pitch = 10 * s
    row = np.floor(v / (pitch * 0.866))
    uu = u - 0.5 * pitch * np.mod(row, 2)
    cu = (np.floor(uu / pitch) + 0.5) * pitch
    cv = (row + 0.5) * pitch * 0.866
    r = np.sqrt((uu - cu) ** 2 + (v - cv) ** 2)
    contacts = np.clip(2.5 * s - r + 0.5, 0.0, 1.0)
    # bottom right: diagonal lines (pitch 9, width 3)
    diag_block = _box(u, 134 * s, size - 18 * s) * _box(v, 134 * s, size - 18 * s)
    diag = _stripes((u + v) / np.sqrt(2.0), 9 * s, 3 * s)
    scene = 0.30 + 0.35 * ring
    scene = scene + top * lines * 0.35
    scene = scene + pad * (0.10 + 0.35 * contacts)
    scene = scene + diag_block * diag * 0.25
    return scene


def _grid(size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return xx, yy


def _bridge(scene, u, v, rng, s):
    # a bar across the gap between two adjacent horizontal lines
    x0 = rng.uniform(30, 226) * s
    k = rng.integers(3, 13)
    y0 = (k * 8 + 4) * s  # the gap below line k
    w = rng.uniform(2.0, 4.0) * s
    alpha = _box(u, x0, x0 + w) * _box(v, y0 - 0.5 * s, y0 + 4.5 * s)
    new = scene * (1 - alpha) + (0.30 + 0.35) * alpha
    return new, alpha


def _open(scene, u, v, rng, s):
    # a gap in one horizontal line
    x0 = rng.uniform(30, 220) * s
    k = rng.integers(3, 13)
    length = rng.uniform(3.0, 10.0) * s
    alpha = _box(u, x0, x0 + length) * _box(v, k * 8 * s + 0.5, k * 8 * s + 4 * s)
    return scene * (1 - alpha) + 0.30 * alpha, alpha


def _void(scene, u, v, rng, s):
    cx, cy = rng.uniform(30, 226, 2) * s
    radius = rng.uniform(3.0, 7.0) * s
    width = rng.uniform(1.2, 2.0) * s
    r = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
    alpha = np.clip(width / 2 + 0.5 - np.abs(r - radius), 0.0, 1.0)
    return scene * (1 - rng.uniform(0.3, 0.6) * alpha), alpha


def _residue(scene, u, v, rng, s):
    cx, cy = rng.uniform(40, 216, 2) * s
    radius = rng.uniform(8.0, 25.0) * s
    r = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
    envelope = np.clip((radius - r) / (0.3 * radius), 0.0, 1.0)
    texture = gaussian_filter(rng.standard_normal(scene.shape), 2.0 * s)
    texture = 0.5 + 0.5 * texture / (np.abs(texture).max() + 1e-12)
    alpha = envelope * texture
    change = rng.uniform(0.08, 0.2) * rng.choice([-1.0, 1.0])
    return scene * (1 + change * alpha), envelope * (texture > 0.3)


def _cluster(scene, u, v, rng, s):
    cx, cy = rng.uniform(30, 226, 2) * s
    alpha = np.zeros_like(scene)
    for _ in range(rng.integers(3, 9)):
        px, py = cx + rng.normal(0, 6 * s), cy + rng.normal(0, 6 * s)
        rad = rng.uniform(0.8, 2.0) * s
        r = np.sqrt((u - px) ** 2 + (v - py) ** 2)
        alpha = np.maximum(alpha, np.clip(rad - r + 0.5, 0.0, 1.0))
    level = rng.choice([0.1, 0.9])
    return scene * (1 - alpha) + level * alpha, alpha


_DEFECTS = {"bridge": _bridge, "open": _open, "void": _void, "residue": _residue, "cluster": _cluster}


def _render(n, size, rng, *, jitter, noise, labels=None):
    s = size / 256.0
    xx, yy = _grid(size)
    c = (size - 1) / 2.0
    X = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (c * c)
    for i in range(n):
        dx, dy = rng.uniform(-jitter, jitter, 2) * s
        th = np.deg2rad(rng.uniform(-0.1, 0.1))
        u = np.cos(th) * (xx - c) - np.sin(th) * (yy - c) + c + dx
        v = np.sin(th) * (xx - c) + np.cos(th) * (yy - c) + c + dy
        scene = _layout(u, v, s)
        name = None if labels is None else labels[i]
        if name is not None and name != "good":
            drng = np.random.default_rng(rng.randint(0, 2**31 - 1))
            new, alpha = _DEFECTS[name](scene, u, v, drng, s)
            masks[i] = (alpha >= 0.5) & (np.abs(new - scene) > 0.01)
            scene = new
        scene = gaussian_filter(scene, 0.7 * s)
        grain = gaussian_filter(rng.standard_normal(scene.shape), (0.7 * s, 3.0 * s))
        scene = scene * (1 + 0.02 * grain / (grain.std() + 1e-12))
        illum = rng.normal(1.0, 0.1) * (1 - rng.uniform(0.0, 0.15) * r2) + rng.normal(0.0, 0.03)
        img = scene * illum + rng.normal(0.0, 0.008, (size, 1))  # per-row (line-scan) offsets
        img = img + noise * np.sqrt(np.clip(img, 0, None) / 0.5) * rng.standard_normal(img.shape)
        X[i] = np.clip(img, 0.0, 1.0)
    return X, masks


def make_die_images(
    n_train=200,
    n_test=120,
    anomaly_fraction=0.5,
    *,
    image_size=256,
    defect_types=None,
    jitter=2.0,
    noise=0.02,
    random_state=None,
):
    """Generate synthetic single-die inspection images with pixel defect masks.

    A second generator beside :func:`make_wafer_images`, with another layout, other defect
    shapes and other nuisance textures, for measuring detectors on data they were not tuned
    on. Each image shows one die: a bright seal ring, a block of horizontal metal lines
    (pitch 8 px) cut every 48 px, a hexagonal contact array on a pad and a block of
    diagonal lines. Every image varies in stage shift (up to ``jitter`` pixels in x and y)
    and rotation (up to 0.1 degree), illumination gain (10%) and offset, vignetting
    (0-15% darker corners), an anisotropic surface grain (2%, elongated along x), per-row
    offsets as a line-scan camera gives them, optical blur and signal-dependent noise.

    The training set is all normal. In the test set, ``round(anomaly_fraction * n_test)``
    images carry one defect each, the types drawn in equal shares:

    * ``"bridge"``: a bar 2-4 px wide shorting two adjacent metal lines.
    * ``"open"``: a 3-10 px gap in one metal line.
    * ``"void"``: a dark ring (radius 3-7 px, 30-60% darker) anywhere on the die.
    * ``"residue"``: a textured, soft-edged film (radius 8-25 px) changing the
      reflectance by 8-20%.
    * ``"cluster"``: 3-8 tiny dark or bright particles (radius 0.8-2 px) within ~12 px.

    Masks mark the pixels at least half covered by the defect where it changes the
    scene.

    Parameters
    ----------
    n_train : int, default=200
        Number of normal training images.
    n_test : int, default=120
        Number of test images.
    anomaly_fraction : float in [0, 1], default=0.5
        Fraction of defective test images.
    image_size : int, default=256
        Side of the square images (>= 64); lengths above are for 256 and scale with it.
    defect_types : sequence of str, optional
        Subset of ``("bridge", "open", "void", "residue", "cluster")``; default all.
    jitter : float, default=2.0
        Largest stage shift in pixels (at 256 px).
    noise : float, default=0.02
        Standard deviation of the noise at mid-grey (it grows with the square root of the
        signal).
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same images.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` (n_train, S, S) float32 in [0, 1]; ``X_test``; ``y_test`` (1 =
        defective); ``masks_test`` bool; ``defect_types_test`` (``"good"`` for normal
        images); ``DESCR``. The same fields as :func:`make_wafer_images`.

    See Also
    --------
    make_wafer_images : The first generator (a 4 x 4 die grid, other defects).

    Examples
    --------
    >>> from greyanom.datasets import make_die_images
    >>> data = make_die_images(n_train=3, n_test=4, image_size=64, random_state=0)
    >>> data.X_train.shape, int(data.y_test.sum())
    ((3, 64, 64), 2)
    """
    for name, value, lo in (("n_train", n_train, 0), ("n_test", n_test, 0), ("image_size", image_size, 64)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}.")
    if n_train + n_test == 0:
        raise ValueError("n_train and n_test are both 0: nothing to generate.")
    if not isinstance(anomaly_fraction, numbers.Real) or not 0 <= anomaly_fraction <= 1:
        raise ValueError(f"anomaly_fraction must be a float in [0, 1], got {anomaly_fraction!r}.")
    for name, value in (("jitter", jitter), ("noise", noise)):
        if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if defect_types is None:
        types = DIE_DEFECT_TYPES
    else:
        types = tuple([defect_types] if isinstance(defect_types, str) else defect_types)
        if not types or any(t not in DIE_DEFECT_TYPES for t in types):
            raise ValueError(f"defect_types must be a non-empty subset of {DIE_DEFECT_TYPES}, got {defect_types!r}.")
    rng = check_random_state(random_state)
    size = int(image_size)
    X_train, _ = _render(int(n_train), size, rng, jitter=jitter, noise=noise)
    n_anom = int(round(anomaly_fraction * n_test))
    labels = np.array(["good"] * (n_test - n_anom) + [types[i % len(types)] for i in range(n_anom)], dtype=object)
    labels = labels[rng.permutation(n_test)]
    X_test, masks = _render(int(n_test), size, rng, jitter=jitter, noise=noise, labels=labels)
    kinds = labels.astype(str)
    return Bunch(
        X_train=X_train,
        X_test=X_test,
        y_test=(kinds != "good").astype(np.int64),
        masks_test=masks,
        defect_types_test=kinds,
        DESCR=_DESCR.format(types=", ".join(types)),
    )
