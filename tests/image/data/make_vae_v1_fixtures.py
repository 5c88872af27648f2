"""Save one tiny model per VAE route with the code before the route split (issue 18 part B).

The committed files were written by commit 5ecaa5a (the single-class detector: SciPy blur,
NumPy reduction), with their expected scores and heatmaps of two images; the tests check that
today's code loads them and scores the same. Rerunning this script with today's code would
test nothing: run it only from an export of that commit, from the repository root::

    git archive 5ecaa5a | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src python tests/image/data/make_vae_v1_fixtures.py
"""
from pathlib import Path

import numpy as np

from greyanom import ConvVAEDetector

out = Path("tests/image/data")


def texture(size, rng):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return 0.5 + 0.2 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy) + 0.05 * rng.normal(size=(size, size))


rng = np.random.default_rng(7)
X32 = np.clip(np.stack([texture(32, rng) for _ in range(20)]), 0, 1).astype(np.float32)
X64 = np.clip(np.stack([texture(64, rng) for _ in range(12)]), 0, 1).astype(np.float32)
common = dict(latent_dim=4, bottleneck_channels=2, max_epochs=2, batch_size=8, n_jobs=1, random_state=0, device="cpu")
models = {
    "pixels": (ConvVAEDetector(input_space="pixels", channels=(4, 8), smoothing_sigma=1.0, **common), X32),
    "registered": (ConvVAEDetector(input_space="pixels", channels=(4, 8), register=True, score_reduction="max", **common), X32),
    "features": (ConvVAEDetector(input_space="features", feature_channels=(8, 8, 8), **common), X64),
}
expected = {}
for name, (det, X) in models.items():
    det.fit(X)
    path = det.save(out / f"vae_v1_{name}.safetensors")
    e = det.explain(X[:2])
    np.savez_compressed(out / f"vae_v1_{name}_expected.npz", images=X[:2], score=e.score, heatmap=e.heatmap)
    print(name, path.stat().st_size, e.score)
