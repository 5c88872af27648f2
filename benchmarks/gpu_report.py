"""GPU report of the torch image detectors: backbone throughput, end-to-end score, latency, agreement.

Written to finish in under 4 minutes on one CUDA GPU (a ``--budget-s`` guard skips what is
left once the budget is spent, and says so). Figures, each on every device measured
(CUDA when present, and the CPU):

* bare backbone throughput: images/s through the EfficientNet-Lite0 stages the patch
  detectors tap (:func:`greyanom.image._backbone.patch_features`), float32 and bfloat16, at
  batch 64 on CUDA and one image per pass on the CPU (what the detectors do there);
* for every torch detector (PaDiM, PatchCore and the VAE routes, reached by their public
  name ``ConvVAEDetector(input_space=...)``): fit time, end-to-end ``score`` throughput at
  batch 64 and batch-1 latency P50/P99 of ``score`` on one image, peak GPU memory;
* CPU-vs-GPU agreement: the model fitted on the GPU, saved and loaded on the CPU, scores
  the same images; the largest relative difference is printed, and the same for the
  patch detectors fitted with ``inference_dtype="bfloat16"`` against float32.

Without CUDA it runs the CPU part with smaller counts and says that CUDA is absent.

Usage::

    python benchmarks/gpu_report.py [--n-train 64] [--n-score 256] [--latency-repeats 50]
                                    [--budget-s 210] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _detectors(device, quick):
    """name -> constructor of each torch detector on ``device`` (fast settings for the VAE)."""
    from greyanom import ConvVAEDetector, PaDiMDetector, PatchCoreDetector

    epochs = 1 if quick else 3
    return {
        "PaDiM": lambda **kw: PaDiMDetector(device=device, random_state=0, **kw),
        "PatchCore": lambda **kw: PatchCoreDetector(device=device, random_state=0, **kw),
        "ConvVAE(pixels)": lambda **kw: ConvVAEDetector(
            input_space="pixels", max_epochs=epochs, batch_size=64, device=device, random_state=0, **kw
        ),
        "ConvVAE(features)": lambda **kw: ConvVAEDetector(
            input_space="features", max_epochs=epochs, batch_size=64, device=device, random_state=0, **kw
        ),
    }


class _Budget:
    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds
        self.skipped = []

    def left(self, what):
        if time.perf_counter() < self.end:
            return True
        self.skipped.append(what)
        return False


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def backbone_throughput(images, device, dtype, repeats):
    """Images/s through the tapped backbone stages (float32 features left on the device)."""
    import torch

    from greyanom.image import _backbone
    from greyanom.image._torch._post import to_device

    step = 64 if device == "cuda" else 1
    batch = images[:step]
    with torch.inference_mode():
        _backbone.patch_features(to_device(batch, device), stages=(3, 5), patch_size=3, inference_dtype=dtype)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            _backbone.patch_features(to_device(batch, device), stages=(3, 5), patch_size=3, inference_dtype=dtype)
        _sync(device)
    return repeats * len(batch) / (time.perf_counter() - t0)


def detector_figures(make, train, test, device, latency_repeats):
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    det = make().fit(train)
    fit_s = time.perf_counter() - t0
    det.score(test[:64])  # warm-up (kernels, caches)
    t0 = time.perf_counter()
    det.score(test)
    per_s = len(test) / (time.perf_counter() - t0)
    lat = []
    for i in range(latency_repeats):
        x = test[i % len(test)][None]
        t0 = time.perf_counter()
        det.score(x)
        lat.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return det, {
        "fit_s": fit_s,
        "score_img_per_s": per_s,
        "b1_p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "b1_p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "gpu_peak_MB": peak,
    }


def cpu_agreement(det, test, tmp):
    """Largest relative difference between ``det``'s scores and its copy loaded on the CPU."""
    path = det.save(Path(tmp) / "m.safetensors")
    back = type(det).load(path, device="cpu")
    a, b = det.score(test), back.score(test)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _agreement(fitted, device, train, test, tmp, budget, report):
    print("\n== agreement (max relative score difference) ==")
    if device == "cuda":
        for (dev, name), det in fitted.items():
            if dev == "cuda" and budget.left(f"agreement {name}"):
                diff = cpu_agreement(det, test[:32], tmp)
                report["agreement"][f"{name} cuda-vs-cpu"] = diff
                print(f"{name:18s} fitted on CUDA, scored on CUDA vs loaded on the CPU: {diff:.2e}")
    else:
        print("CUDA vs CPU: not measured (CUDA is absent)")
    for name in ("PaDiM", "PatchCore"):
        if (device, name) not in fitted or not budget.left(f"bfloat16 {name}"):
            continue
        bf16 = _detectors(device, quick=True)[name](inference_dtype="bfloat16").fit(train)
        a, b = bf16.score(test), fitted[(device, name)].score(test)
        diff = float(np.max(np.abs(a - b) / np.abs(b)))
        report["agreement"][f"{name} bfloat16-vs-float32 on {device}"] = diff
        print(f"{name:18s} inference_dtype bfloat16 vs float32 on {device}: {diff:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=None, help="default 64 with CUDA, 12 without")
    parser.add_argument("--n-score", type=int, default=None, help="default 256 with CUDA, 16 without")
    parser.add_argument("--latency-repeats", type=int, default=None, help="default 50 with CUDA, 5 without")
    parser.add_argument("--budget-s", type=float, default=210.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    import greyanom
    from greyanom.datasets import make_wafer_images

    cuda = torch.cuda.is_available()
    n_train = args.n_train or (64 if cuda else 12)
    n_score = args.n_score or (256 if cuda else 16)
    repeats = args.latency_repeats or (50 if cuda else 5)
    budget = _Budget(args.budget_s)
    print(f"greyanom {greyanom.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, CPU threads {torch.get_num_threads()}")
    if cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})")
    else:
        print("CUDA is absent on this machine: only the CPU part runs, with smaller counts; no GPU figure is measured.")
    data = make_wafer_images(n_train=n_train, n_test=max(n_score, 64), random_state=0)
    train, test = data.X_train, data.X_test[:n_score]
    report = {"cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else None, "n_train": n_train,
              "n_score": n_score, "backbone": {}, "detectors": {}, "agreement": {}}

    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    print("\n== backbone throughput (stages 3+5, 256x256 grey images, images/s) ==")
    for device in devices:
        for dtype in ("float32", "bfloat16"):
            if not budget.left(f"backbone {device} {dtype}"):
                continue
            ips = backbone_throughput(test, device, dtype, repeats=10 if device == "cuda" else 4)
            report["backbone"][f"{device}/{dtype}"] = ips
            print(f"{device:5s} {dtype:9s} batch {64 if device == 'cuda' else 1:3d}: {ips:9.1f} img/s")

    fitted = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the GPU first, with its agreement figures; the CPU timings last (smaller, and the
        # first to be skipped when the budget runs out)
        for device in devices:
            n_fit, n_test = (n_train, n_score) if device == devices[0] else (min(n_train, 24), min(n_score, 32))
            print(f"\n== {device}: fit on {n_fit}, score {n_test} images (batch 64 on CUDA), batch-1 latency ==")
            print(f"{'device':6s} {'detector':18s} {'fit_s':>7s} {'img/s':>9s} {'b1 P50 ms':>10s} {'b1 P99 ms':>10s} "
                  f"{'GPU peak MB':>12s}")
            for name, make in _detectors(device, quick=not cuda).items():
                if not budget.left(f"{device} {name}"):
                    continue
                det, fig = detector_figures(
                    make, train[:n_fit], test[:n_test], device, repeats if device == "cuda" else 3
                )
                fitted[(device, name)] = det
                report["detectors"][f"{device}/{name}"] = fig
                print(f"{device:6s} {name:18s} {fig['fit_s']:7.1f} {fig['score_img_per_s']:9.1f} "
                      f"{fig['b1_p50_ms']:10.1f} {fig['b1_p99_ms']:10.1f} {fig['gpu_peak_MB']:12.0f}")
            if device == devices[0]:
                _agreement(fitted, devices[0], train, test, tmp, budget, report)
    if budget.skipped:
        print(f"\nbudget of {args.budget_s:.0f} s spent; skipped: {', '.join(budget.skipped)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
