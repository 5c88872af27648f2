"""Development harness behind RegisteredPixelDetector's heatmap scales (issue 12).

Registers make_wafer_images once per data set (the detector's own registration) and caches
the aligned images in /tmp/cache, then re-implements the per-pixel statistics and the
heatmap scales in NumPy so that many variants can be compared in minutes. Its baseline row
reproduces the detector's single-scale figure (0.890 against 0.891). Data sets used: wafer
seeds 0, 1, 2 and a varied wafer set v3 (seed 3, noise 0.03, blur 1.2, jitter 1.5);
make_die_images was not used.

Usage::

    python benchmarks/registered_scales_dev.py cache w0 "dict(random_state=0)"
    python benchmarks/registered_scales_dev.py run w0
"""
# ruff: noqa: E402
import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np
from scipy import ndimage
from sklearn.utils.extmath import randomized_svd
from greyanom.metrics import evaluate

def load(tag):
    d = np.load(f"/tmp/cache/{tag}.npz", allow_pickle=True)
    return {k: d[k] for k in d.files}

_svd = {}
def modes(tag, train, k):
    key = (tag, k)
    if key not in _svd:
        n = len(train); flat = train.reshape(n, -1).astype(np.float64)
        mean = flat.mean(0)
        if k > 0:
            _, _, Vt = randomized_svd(flat - mean, k, random_state=0)
        else:
            Vt = np.zeros((0, flat.shape[1]))
        _svd[key] = (mean, Vt)
    return _svd[key]

def resid(a, mean, V):
    n = len(a); flat = a.reshape(n, -1).astype(np.float64) - mean
    if len(V): flat = flat - (flat @ V.T) @ V
    return (flat + mean).reshape(a.shape)

def gsmooth(x, s):
    return ndimage.gaussian_filter(x, (0, s, s), mode="nearest") if s > 0 else x

def line_kernels(shape, sig_along, sig_across, n_orient):
    fy = np.fft.fftfreq(shape[0])[:, None]; fx = np.fft.rfftfreq(shape[1])[None, :]
    ks = []
    for t in np.arange(n_orient) * np.pi / n_orient:
        fa = fx * np.cos(t) + fy * np.sin(t); fc = -fx * np.sin(t) + fy * np.cos(t)
        ks.append(np.exp(-2 * np.pi**2 * (sig_along**2 * fa**2 + sig_across**2 * fc**2)))
    return np.array(ks)

def line_maps(z, ks):
    F = np.fft.rfft2(z)  # (n,H,W/2+1)
    out = np.empty((len(ks),) + z.shape, np.float32)
    for i, k in enumerate(ks):
        out[i] = np.fft.irfft2(F * k, s=z.shape[1:])
    return out

def run(tag, d, k=20, floor=0.05, std_pool=0.0, scales=(("abs", 1.0),), norm="mean", calib=None,
        lines=None, reduce="max"):
    train, test = d["train"], d["test"]
    mean, V = modes(tag, train, k)
    rt = resid(train, mean, V); rs = resid(test, mean, V)
    med = np.median(rt, 0); std = 1.4826 * np.median(np.abs(rt - med), 0)
    if std_pool > 0:
        std = np.sqrt(ndimage.gaussian_filter(std**2, std_pool, mode="nearest"))
    std = np.maximum(std, max(floor * np.median(std), 1e-3))
    zt = (rt - med) / std; zs = (rs - med) / std
    heats_t, heats_s = [], []
    def add(mt, ms):
        if norm == "mean":
            nrm = np.maximum(mt.mean(0), max(0.25 * np.median(mt.mean(0)), 1e-3))
        elif norm == "rms":
            nrm = np.sqrt((mt**2).mean(0)); nrm = np.maximum(nrm, 0.25 * np.median(nrm))
        ht, hs = mt / nrm, ms / nrm
        if calib is not None:
            c = np.quantile(ht.reshape(len(ht), -1).max(1), calib)
            ht, hs = ht / c, hs / c
        heats_t.append(ht); heats_s.append(hs)
    for kind, s in scales:
        if kind == "abs":
            add(gsmooth(np.abs(zt), s), gsmooth(np.abs(zs), s))
        else:
            add(np.abs(gsmooth(zt, s)), np.abs(gsmooth(zs, s)))
    if lines:
        ks = line_kernels(zt.shape[1:], *lines)
        lt = np.abs(line_maps(zt, ks)).max(0); ls = np.abs(line_maps(zs, ks)).max(0)
        add(lt, ls)
    hs = np.max(heats_s, axis=0)
    hs = np.stack([ndimage.shift(h, -s, order=1, mode="nearest") for h, s in zip(hs, d["test_shifts"])])
    score = hs.reshape(len(hs), -1).max(1)
    r = evaluate(d["y"], score, heatmaps=hs, masks=d["masks"], defect_types=d["types"])
    return r

def show(label, r):
    types = ", ".join(f"{k[:6]} {v:.2f}" for k, v in r.per_type.items() if k != "good")
    print(f"{label:<50} AUROC {r.auroc:.3f} pix {r.pixel_auroc:.3f} AUPRO {r.aupro:.3f} | {types}", flush=True)


def cache(tag, kw):
    from greyanom import RegisteredPixelDetector
    from greyanom.datasets import make_wafer_images

    os.makedirs("/tmp/cache", exist_ok=True)
    data = make_wafer_images(n_train=200, n_test=100, **kw)
    det = RegisteredPixelDetector(n_components=0)
    norm = det._normalise(data.X_train)
    reference = np.median(norm, axis=0)
    for _ in range(3):
        shifts = det._estimate_shifts(norm, det._reference_fft(reference))
        aligned = det._shift(norm, shifts, order=3)
        reference = np.median(aligned, axis=0)
    ta, ts = det._register(data.X_test, reference)
    np.savez(f"/tmp/cache/{tag}.npz", train=aligned.astype(np.float32), test=ta.astype(np.float32),
             test_shifts=ts, y=data.y_test, masks=data.masks_test, types=data.defect_types_test)


VARIANTS = [
    ("baseline (single scale, mean norm)", {}),
    ("abs1+sig4 (coarse_sigma=4)", dict(scales=(("abs", 1.0), ("sig", 4.0)))),
    ("rms+calib: sig1,2,4,8", dict(scales=(("sig", 1.0), ("sig", 2.0), ("sig", 4.0), ("sig", 8.0)), norm="rms",
                                   calib=0.5)),
    ("rms+calib: abs1+lines(6,1,8)", dict(scales=(("abs", 1.0),), lines=(6, 1, 8), norm="rms", calib=0.5)),
    ("rms+calib: abs1+sig1+lines (default)", dict(scales=(("abs", 1.0), ("sig", 1.0)), lines=(6, 1, 8), norm="rms",
                                                  calib=0.5)),
    ("  ... + sig4", dict(scales=(("abs", 1.0), ("sig", 1.0), ("sig", 4.0)), lines=(6, 1, 8), norm="rms",
                          calib=0.5)),
    ("  ... k=10", dict(k=10, scales=(("abs", 1.0), ("sig", 1.0)), lines=(6, 1, 8), norm="rms", calib=0.5)),
    ("  ... k=40", dict(k=40, scales=(("abs", 1.0), ("sig", 1.0)), lines=(6, 1, 8), norm="rms", calib=0.5)),
]

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    if sys.argv[1] == "cache":
        cache(sys.argv[2], eval(sys.argv[3]))  # a dict literal of make_wafer_images arguments
    else:
        d = load(sys.argv[2])
        for label, params in VARIANTS:
            show(f"{sys.argv[2]} {label}", run(sys.argv[2], d, **params))
