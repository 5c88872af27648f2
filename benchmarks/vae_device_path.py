"""ConvVAEDetector scoring: the device path (issue 18) against the previous host path, same process.

The previous path ran the network on ``device_``, copied every heatmap to the host and
upsampled (feature route), blurred (SciPy) and reduced (NumPy) there. The device path keeps
all of it in torch where the network runs and copies back only the scores. Both are timed
alternately on the same fitted detector and the same images, and their scores compared.
The networks are trained for one epoch: the timing does not depend on the weights.

Usage::

    PYTHONPATH=src python benchmarks/vae_device_path.py --threads 1 --device cpu
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from greyanom import ConvVAEDetector
from greyanom.datasets import make_wafer_images


def host_path_scores(det, images):
    """The previous scoring: network on the device, maps to the host, SciPy blur, NumPy reduce."""
    import torch

    from greyanom.image import _backbone, reduce_error_maps
    from greyanom.image._reduce import smooth_maps
    from greyanom.image._torch import _post

    scorer = det._scorer()
    route = det._route()
    maps = []
    with det._threads(), torch.inference_mode():
        for start in range(0, len(images), det.batch_size):
            x = _post.to_device(images[start : start + det.batch_size], det.device_)[:, None]
            fb = route.front_batch(det.device_, det.batch_size)
            inputs = torch.cat([scorer.front(x[i : i + fb]) for i in range(0, x.shape[0], fb)])
            logits, _, _ = scorer.network(inputs)
            out = torch.sigmoid(logits) if scorer.bernoulli else logits
            sq = (inputs - out - scorer.residual_mean) ** 2 * scorer.inv_var
            maps.append(sq.mean(dim=1).cpu().numpy())
    heat = np.concatenate(maps)
    if det.input_space == "features":
        heat = smooth_maps(_backbone.upsample_maps(heat, det.image_shape_), det.feature_stride / 2.0)
    return reduce_error_maps(heat, det.score_reduction, smoothing_sigma=det.smoothing_sigma,
                             topk_fraction=det.topk_fraction)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--routes", nargs="*", default=["pixels", "features"])
    args = p.parse_args(argv)
    X = make_wafer_images(n_train=48, n_test=1, image_size=args.image_size, random_state=0).X_train
    test = X[: args.n_images]
    print(f"device={args.device} threads={args.threads} images={len(test)}x{args.image_size}x{args.image_size}")
    print(f"{'route':10s} {'host path s':>12s} {'device path s':>14s} {'ratio':>7s} {'max rel diff':>13s}")
    for route in args.routes:
        det = ConvVAEDetector(input_space=route, max_epochs=1, smoothing_sigma=2.0, device=args.device,
                              n_jobs=args.threads, random_state=0).fit(X)
        host, dev = [], []
        for _ in range(args.repeats):  # alternately, so both see the same machine load
            t = time.perf_counter()
            a = host_path_scores(det, test)
            host.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = det.score(test)
            dev.append(time.perf_counter() - t)
        diff = float(np.max(np.abs(b - a) / np.abs(a)))
        h, d = float(np.median(host)), float(np.median(dev))
        print(f"{route:10s} {h:12.3f} {d:14.3f} {h / d:7.2f} {diff:13.2e}")


if __name__ == "__main__":
    main()
