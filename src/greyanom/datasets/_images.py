"""Synthetic wafer-surface inspection images with pixel-exact defect masks."""

from __future__ import annotations

import numbers

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils import Bunch, check_random_state

__all__ = ["make_wafer_images", "WAFER_DEFECT_TYPES"]

#: The defect types of :func:`make_wafer_images`.
WAFER_DEFECT_TYPES = ("particle", "scratch", "pattern_shift", "missing_pattern", "stain")

_BATCH = 32

_DESCR = """\
Synthetic wafer-surface inspection images (greyanom.datasets.make_wafer_images)
-------------------------------------------------------------------------------
Grayscale top-view images of a patterned wafer: a 4 x 4 grid of dies separated by
dark scribe streets; each die holds a block of horizontal lines, a pad array and a block of
vertical lines. Nuisance variation in every image: sub-pixel alignment jitter (shift and
rotation), die-to-die reflectance, surface grain, illumination gain, offset and a linear
gradient, optical blur and sensor noise.
Defects (test set only): {types}. Masks mark the defect pixels exactly (see the docstring
for the rule per type). Normal images have defect type "good" and empty masks.
"""


# -- rendering ---------------------------------------------------------------------------
def _box(a, lo, hi):
    """Anti-aliased indicator of lo <= a <= hi (one-pixel linear ramps)."""
    return np.clip(a - lo + 0.5, 0.0, 1.0) * np.clip(hi - a + 0.5, 0.0, 1.0)


def _stripes(a, period, width):
    """Anti-aliased periodic stripes of ``width`` every ``period`` pixels."""
    return _box(np.mod(a, period), 0.5, 0.5 + width)


def _die_pattern(u, v, scale, inner_shift=None):
    """Scene reflectance in [0, 1] at (possibly fractional) coordinates ``(u, v)``.

    ``u`` runs along x (columns), ``v`` along y (rows). ``inner_shift`` displaces the
    structures inside the dies (not the die outline) by ``(du, dv)`` pixels.
    """
    p = 64.0 * scale
    a = np.mod(u, p)
    b = np.mod(v, p)
    die = _box(a, 5 * scale, p - 5 * scale) * _box(b, 5 * scale, p - 5 * scale)
    if inner_shift is not None:
        a = a - inner_shift[0]
        b = b - inner_shift[1]
    lines_h = _box(a, 9 * scale, p - 9 * scale) * _box(b, 9 * scale, 29 * scale)
    lines_h = lines_h * _stripes(b, 4 * scale, 2 * scale)
    pads = _box(a, 9 * scale, 29 * scale) * _box(b, 34 * scale, 55 * scale)
    pads = pads * _stripes(a, 7 * scale, 4 * scale) * _stripes(b, 7 * scale, 4 * scale)
    lines_v = _box(a, 34 * scale, p - 9 * scale) * _box(b, 34 * scale, 55 * scale)
    lines_v = lines_v * _stripes(a, 6 * scale, 3 * scale)
    inner = 0.22 * lines_h + 0.32 * pads + 0.16 * lines_v
    return 0.22 + die * (0.26 + inner)


def _coords(size, params):
    """Jittered scene coordinates (n, H, W) of a batch of images."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    theta = params["theta"][:, None, None]
    dx = params["dx"][:, None, None]
    dy = params["dy"][:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    u = cos * (xx - c) - sin * (yy - c) + c + dx
    v = sin * (xx - c) + cos * (yy - c) + c + dy
    return u.astype(np.float32), v.astype(np.float32)


# -- defects: each returns (new scene, mask) for one image --------------------------------
def _disk_alpha(xx, yy, cx, cy, rx, ry, angle):
    ca, sa = np.cos(angle), np.sin(angle)
    x = (xx - cx) * ca + (yy - cy) * sa
    y = -(xx - cx) * sa + (yy - cy) * ca
    r = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    # signed distance (approximately, in pixels) to the ellipse edge -> anti-aliased alpha
    return np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0)


def _particle(scene, rng, scale, u, v):
    size = scene.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rx = rng.uniform(1.0, 5.0) * scale
    ry = rx * rng.uniform(0.6, 1.0)
    cx, cy = rng.uniform(8, size - 8, 2)
    alpha = _disk_alpha(xx, yy, cx, cy, max(rx, 1.0), max(ry, 1.0), rng.uniform(0, np.pi))
    # dark (absorbing) or bright (scattering) relative to the surface beneath
    level = scene * (1.0 + rng.uniform(0.15, 0.6) * rng.choice([-1.0, 1.0]))
    return np.clip(scene * (1 - alpha) + level * alpha, 0.0, 1.0), alpha >= 0.5


def _scratch(scene, rng, scale, u, v):
    size = scene.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    length = rng.uniform(40, 160) * scale
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
    d = np.array([np.cos(angle), np.sin(angle)])
    t = (xx - cx) * d[0] + (yy - cy) * d[1]
    curvature = rng.uniform(-1.5, 1.5) / max(length, 1.0)
    perp = -(xx - cx) * d[1] + (yy - cy) * d[0] - curvature * t**2
    half = max(0.5, rng.uniform(0.5, 1.3) * scale)
    # approximate pixel coverage of a line of width 2 * half (>= 0.5 within 0.5 px of its axis)
    alpha = np.clip(half + 0.5 - np.abs(perp), 0.0, 1.0) * _box(t, -length / 2, length / 2)
    contrast = rng.uniform(0.04, 0.2) * rng.choice([-1.0, 1.0])
    return np.clip(scene + contrast * alpha, 0.0, 1.0), alpha >= 0.5


def _die_cell(rng, size, scale):
    """Pixel rectangle (rows, cols) of the body of one randomly chosen die."""
    p = 64 * scale
    n_dies = int(size // p)
    i, j = rng.integers(0, n_dies, 2)
    lo = 5 * scale
    return (int(round(i * p + lo)), int(round((i + 1) * p - lo))), (
        int(round(j * p + lo)),
        int(round((j + 1) * p - lo)),
    )


def _pattern_shift(scene, rng, scale, u, v):
    p = 64.0 * scale
    n_dies = int(round(scene.shape[0] / p))
    i, j = rng.integers(0, n_dies, 2)
    mag = rng.uniform(1.0, 3.0) * scale
    ang = rng.uniform(0, 2 * np.pi)
    shifted = _die_pattern(u, v, scale, inner_shift=(mag * np.cos(ang), mag * np.sin(ang)))
    original = _die_pattern(u, v, scale)
    # the die body in scene coordinates (so the mask follows the alignment jitter)
    body = _box(np.mod(u, p), 5 * scale, p - 5 * scale) * _box(np.mod(v, p), 5 * scale, p - 5 * scale)
    mask = (np.floor(v / p) == i) & (np.floor(u / p) == j) & (body >= 0.5)
    # the shifted die replaces the original (scene = reflectance; illumination comes later)
    return np.where(mask, scene - original + shifted, scene), mask


def _missing_pattern(scene, rng, scale, u, v):
    size = scene.shape[0]
    (r0, r1), (c0, c1) = _die_cell(rng, size, scale)
    h = int(rng.uniform(4, 20) * scale) + 1
    w = int(rng.uniform(4, 24) * scale) + 1
    r = int(rng.integers(r0 + 2, max(r0 + 3, r1 - h - 1)))
    c = int(rng.integers(c0 + 2, max(c0 + 3, c1 - w - 1)))
    mask = np.zeros(scene.shape, bool)
    mask[r : r + h, c : c + w] = True
    flat = 0.22 + 0.26  # bare die body: the structures are missing
    return np.where(mask, flat, scene), mask


def _stain(scene, rng, scale, u, v):
    size = scene.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    radius = rng.uniform(12, 40) * scale
    field = np.zeros(scene.shape, np.float32)
    for _ in range(4):  # an irregular blob: a sum of offset Gaussian bumps
        ox, oy = rng.normal(0, 0.4 * radius, 2)
        s = radius * rng.uniform(0.5, 0.9)
        field += np.exp(-((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / (2 * s * s))
    field /= field.max()
    alpha = np.clip((field - 0.35) / 0.3, 0.0, 1.0)  # soft rim
    gain = 1.0 + rng.uniform(0.04, 0.15) * rng.choice([-1.0, 1.0])
    return scene * (1 + (gain - 1) * alpha), alpha >= 0.5


_DEFECTS = {
    "particle": _particle,
    "scratch": _scratch,
    "pattern_shift": _pattern_shift,
    "missing_pattern": _missing_pattern,
    "stain": _stain,
}


def _render(n, size, rng, *, jitter, noise, blur, grain_std=0.03, defects=None):
    """Render ``n`` images; ``defects`` is None or a list of defect names (or "good")."""
    scale = size / 256.0
    params = {
        "dx": rng.uniform(-jitter, jitter, n) * scale,
        "dy": rng.uniform(-jitter, jitter, n) * scale,
        "theta": np.deg2rad(rng.uniform(-0.3, 0.3, n) * jitter),
        "gain": rng.normal(1.0, 0.07, n),
        "offset": rng.normal(0.0, 0.03, n),
        "grad": rng.normal(0.0, 0.08, (n, 2)),
        "noise": noise * rng.uniform(0.7, 1.3, n),
        # die-to-die reflectance variation (film thickness) of the 4 x 4 dies
        "die_gain": rng.normal(1.0, 0.03, (n, 4, 4)),
    }
    seeds = rng.randint(0, 2**31 - 1, size=n)
    X = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ramp_x, ramp_y = (xx - size / 2) / size, (yy - size / 2) / size
    for start in range(0, n, _BATCH):
        sl = slice(start, min(n, start + _BATCH))
        sub = {k: v[sl] for k, v in params.items()}
        u, v = _coords(size, sub)
        scene = _die_pattern(u, v, scale).astype(np.float32)
        p = 64.0 * scale
        di = np.clip(np.floor(v / p), 0, 3).astype(np.intp)
        dj = np.clip(np.floor(u / p), 0, 3).astype(np.intp)
        scene *= sub["die_gain"][np.arange(len(u))[:, None, None], di, dj].astype(np.float32)
        for j in range(sl.stop - sl.start):
            name = None if defects is None else defects[start + j]
            if name is not None and name != "good":
                drng = np.random.default_rng(seeds[start + j])
                scene[j], masks[start + j] = _DEFECTS[name](scene[j], drng, scale, u[j], v[j])
        if blur > 0:
            scene = gaussian_filter(scene, sigma=(0, blur * scale, blur * scale), mode="reflect")
        illum = (
            sub["gain"][:, None, None]
            * (1 + sub["grad"][:, 0, None, None] * ramp_x + sub["grad"][:, 1, None, None] * ramp_y)
            + sub["offset"][:, None, None]
        )
        # surface grain: spatially correlated reflectance noise, then white sensor noise
        grain = gaussian_filter(rng.standard_normal(scene.shape).astype(np.float32), (0, 1.5 * scale, 1.5 * scale))
        scene = scene * (1 + grain_std / (grain.std() + 1e-12) * grain)
        img = scene * illum + rng.standard_normal(scene.shape).astype(np.float32) * sub["noise"][:, None, None]
        X[sl] = np.clip(img, 0.0, 1.0)
    return X, masks


def make_wafer_images(
    n_train=200,
    n_test=100,
    anomaly_fraction=0.4,
    *,
    image_size=256,
    defect_types=None,
    jitter=1.0,
    noise=0.02,
    blur=0.8,
    random_state=None,
):
    """Generate synthetic wafer-surface inspection images with pixel-exact defect masks.

    Each image is a top view of a patterned wafer: a 4 x 4 grid of dies (pitch
    ``image_size / 4``) separated by dark scribe streets, each die holding a block of
    horizontal lines, a pad array and a block of vertical lines. Every image, normal or
    not, varies in the nuisances an inspection tool sees: sub-pixel alignment jitter
    (shift up to ``jitter`` pixels, rotation up to ``0.3 * jitter`` degrees), die-to-die
    reflectance variation (3%), a spatially correlated surface grain (3%), illumination
    (gain 1 +/- 7%, offset, a linear gradient), optical blur and sensor noise. The
    rendering is analytic (anti-aliased), so sub-pixel shifts need no interpolation.

    The training set is all normal. In the test set, ``round(anomaly_fraction * n_test)``
    images carry one defect each, the types drawn in equal shares:

    * ``"particle"``: an elliptical blob, radius 1-5 px, 15-60% darker or brighter than
      the surface beneath. Mask: the pixels at least half covered.
    * ``"scratch"``: a thin (1-2.6 px), slightly curved line, 40-160 px long, contrast
      +/-0.04-0.2. Mask: the pixels at least half covered.
    * ``"pattern_shift"``: the structures of one die displaced by 1-3 px (an overlay
      or misregistration error); the die outline stays. Mask: that die's body.
    * ``"missing_pattern"``: a rectangle (4-24 px) of one die without structures (bare
      die surface). Mask: the rectangle.
    * ``"stain"``: a large (radius 12-40 px), irregular, soft-edged reflectance change of
      4-15%. Mask: the pixels where the change is at least half its peak.

    Contrasts and sizes are drawn from ranges that include subtle defects; the mean
    image intensity separates the classes poorly, because the illumination gain varies
    more than most defects change the mean.

    Parameters
    ----------
    n_train : int, default=200
        Number of normal training images.
    n_test : int, default=100
        Number of test images.
    anomaly_fraction : float in [0, 1], default=0.4
        Fraction of defective test images.
    image_size : int, default=256
        Side of the square images in pixels, 32 to 4096. All lengths above are for 256 and
        scale with the size.
    defect_types : sequence of str, optional
        Subset of ``("particle", "scratch", "pattern_shift", "missing_pattern",
        "stain")``; default all five.
    jitter : float, default=1.0
        Alignment jitter: shifts up to ``jitter`` pixels, rotations up to
        ``0.3 * jitter`` degrees. 0 gives perfectly aligned images.
    noise : float, default=0.02
        Typical standard deviation of the Gaussian sensor noise (each image draws
        0.7-1.3 times this value).
    blur : float, default=0.8
        Standard deviation (pixels) of the optical blur.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same images.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` (n_train, S, S) float32 in [0, 1]; ``X_test`` (n_test, S, S);
        ``y_test`` (n_test,) int, 1 = defective; ``masks_test`` (n_test, S, S) bool;
        ``defect_types_test`` (n_test,) str, ``"good"`` for normal images; ``DESCR``.

    See Also
    --------
    load_mvtec : The same Bunch from a real MVTec AD category.

    Examples
    --------
    >>> from greyanom.datasets import make_wafer_images
    >>> data = make_wafer_images(n_train=4, n_test=5, image_size=64, random_state=0)
    >>> data.X_train.shape, data.X_test.dtype, int(data.y_test.sum())
    ((4, 64, 64), dtype('float32'), 2)
    """
    for name, value, lo, hi in (("n_train", n_train, 0, None), ("n_test", n_test, 0, None),
                                ("image_size", image_size, 32, 4096)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lo or (hi and value > hi):
            bound = f"in [{lo}, {hi}]" if hi else f">= {lo}"
            raise ValueError(f"{name} must be an integer {bound}, got {value!r}.")
    if n_train + n_test == 0:
        raise ValueError("n_train and n_test are both 0: nothing to generate.")
    if not isinstance(anomaly_fraction, numbers.Real) or not 0 <= anomaly_fraction <= 1:
        raise ValueError(f"anomaly_fraction must be a float in [0, 1], got {anomaly_fraction!r}.")
    for name, value in (("jitter", jitter), ("noise", noise), ("blur", blur)):
        if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if defect_types is None:
        types = WAFER_DEFECT_TYPES
    else:
        try:
            types = tuple([defect_types] if isinstance(defect_types, str) else defect_types)
        except TypeError:
            raise TypeError(f"defect_types must be a sequence of str, got {defect_types!r}.") from None
        unknown = [t for t in types if t not in WAFER_DEFECT_TYPES]
        if unknown or not types:
            raise ValueError(f"defect_types must be a non-empty subset of {WAFER_DEFECT_TYPES}, got {defect_types!r}.")
    rng = check_random_state(random_state)
    size = int(image_size)

    X_train, _ = _render(int(n_train), size, rng, jitter=jitter, noise=noise, blur=blur)
    n_anom = int(round(anomaly_fraction * n_test))
    labels = np.array(["good"] * (n_test - n_anom) + [types[i % len(types)] for i in range(n_anom)], dtype=object)
    labels = labels[rng.permutation(n_test)]
    X_test, masks = _render(int(n_test), size, rng, jitter=jitter, noise=noise, blur=blur, defects=labels)
    defect_types_test = labels.astype(str)
    return Bunch(
        X_train=X_train,
        X_test=X_test,
        y_test=(defect_types_test != "good").astype(np.int64),
        masks_test=masks,
        defect_types_test=defect_types_test,
        DESCR=_DESCR.format(types=", ".join(types)),
    )
