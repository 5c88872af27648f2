"""In-process A/B of the service's inspection path: ``InspectionService.inspect`` against the
pre-micro-batching code of it (copied below), alternating blocks on the same service object.

Isolates the code of one inspection (decode, explain, decide, heatmap, commit) from HTTP,
server restarts and the load generator. Usage::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/serve_inspect_ab.py [--models padim,vae] [--threads 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def old_inspect(self, body, wafer_id, inspection_point):
    """``InspectionService.inspect`` as it was before micro-batching (commit 5ecaa5a)."""
    from greyanom.serve._images import decode_image, heatmap_png

    t0 = time.perf_counter()
    image = decode_image(body, self.image_shape, resize=self.resize)
    explanation = self.detector.explain(image[None])
    score = float(explanation.score[0])
    if np.isnan(score):
        raise RuntimeError("the model returned a NaN anomaly score.")
    decision = str(self.policy.decide(np.array([score]))[0])
    confidence = float(self.policy.confidence(np.array([score]))[0])
    png = heatmap_png(self.normalize(explanation.heatmap[0]), self._lut, vmax=self.heatmap_vmax)
    latent = getattr(explanation, "latent_mean", None)
    elapsed_ms = 1000.0 * (time.perf_counter() - t0)
    t1 = time.perf_counter()
    record = self.records.add(wafer_id=wafer_id, inspection_point=int(inspection_point), anomaly_score=score,
                              decision=decision, confidence=confidence, model_version=self.model_version,
                              policy_version=self.policy_version, inference_time_ms=elapsed_ms, heatmap_png=png)
    self.metrics.database.observe(time.perf_counter() - t1)
    self.metrics.inference.observe(elapsed_ms / 1000.0)
    self.metrics.scores.observe(score)
    self.metrics.decisions.labels(decision=decision).inc()
    self._observe_drift(score)
    answer = {"id": record["id"], "anomaly_score": score, "decision": decision}
    if latent is not None:
        answer["latent_vector"] = [float(v) for v in latent[0]]
    return answer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="padim,vae")
    parser.add_argument("--threads", type=int, default=8, help="concurrent callers (uvicorn's thread pool)")
    parser.add_argument("--block", type=int, default=40, help="inspections per block")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per variant, alternating")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from greyanom.datasets import make_wafer_images
    from greyanom.serve import InspectionService
    from serve_load import _png, _train

    torch.set_num_threads(1)
    gen = make_wafer_images(n_train=180, n_test=40, random_state=0)
    data = {"train": gen.X_train[:60], "calib": gen.X_train[60:]}
    bodies = [_png(x) for x in gen.X_test]
    folder = Path(tempfile.mkdtemp(prefix="greyanom-inspect-ab-"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        _, model_path, policy_path, _ = _train(name, data, folder)
        service = InspectionService(model_path, policy_path, db_url=f"sqlite:///{folder / (name + '.db')}")
        variants = {"before": lambda i: old_inspect(service, bodies[i % 40], "AB", i),
                    "after": lambda i: service.inspect(bodies[i % 40], "AB", i)}
        for f in variants.values():  # warm-up
            f(0)
        times = {k: [] for k in variants}
        walls = {k: [] for k in variants}
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            for b in range(args.blocks):
                order = list(variants) if b % 2 == 0 else list(reversed(variants))
                for k in order:
                    def timed(i, f=variants[k]):
                        t0 = time.perf_counter()
                        f(i)
                        return time.perf_counter() - t0
                    t0 = time.perf_counter()
                    times[k] += list(pool.map(timed, range(args.block)))
                    walls[k].append(args.block / (time.perf_counter() - t0))
        for k in variants:
            ms = 1000 * np.asarray(times[k])
            print(f"{name} {k}: per-call P50 {np.percentile(ms, 50):.1f} ms, P95 {np.percentile(ms, 95):.1f} ms, "
                  f"{np.median(walls[k]):.2f} calls/s (median of {args.blocks} blocks, {args.threads} threads)")
        r = np.median(times["after"]) / np.median(times["before"])
        print(f"{name}: after / before per-call P50 = {r:.3f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
