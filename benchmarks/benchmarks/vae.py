"""asv benchmarks of ConvVAEDetector: inference latency, memory, size, training and detection.

The network's weights do not change its speed, so the inference benchmarks use a model
trained for one epoch on random images (outside the timer). Detection figures
(``track_*``) train the default recipe for a few epochs on small synthetic wafer images;
``benchmarks/vae_report.py`` measures the full recipe on MVTec AD transistor.
"""

import tempfile
from pathlib import Path

import numpy as np

try:
    import torch  # noqa: F401

    from greyanom import ConvVAEDetector, PCADetector
except ImportError:  # asv records the benchmarks as skipped
    ConvVAEDetector = None


def _fitted(size=256, **params):
    if ConvVAEDetector is None:
        raise NotImplementedError("torch is not installed")
    rng = np.random.default_rng(0)
    X = rng.random((16, size, size), dtype=np.float32)
    return ConvVAEDetector(input_space="pixels", max_epochs=1, random_state=0, **params).fit(X)


class VAEInference:
    """Per-call time of ``score`` on 256x256 images at the case study's batch sizes."""

    params = [1, 8, 32, 64]
    param_names = ["batch"]
    timeout = 300

    def setup(self, batch):
        self.det = _fitted()
        self.det.set_params(batch_size=batch)
        self.X = np.random.default_rng(1).random((batch, 256, 256), dtype=np.float32)
        self.det.score(self.X)  # warm-up

    def time_score(self, batch):
        self.det.score(self.X)

    def peakmem_score(self, batch):
        self.det.score(self.X)


class VAEModel:
    """Size of the default model: parameters and bytes on disk."""

    timeout = 300

    def setup(self):
        self.det = _fitted()

    def track_n_params(self):
        return self.det.n_params_

    track_n_params.unit = "parameters"

    def track_safetensors_bytes(self):
        with tempfile.TemporaryDirectory() as tmp:
            return self.det.save(Path(tmp) / "vae.safetensors").stat().st_size

    track_safetensors_bytes.unit = "bytes"

    def track_torchscript_bytes(self):
        with tempfile.TemporaryDirectory() as tmp:
            return self.det.export_torchscript(Path(tmp) / "vae.pt").stat().st_size

    track_torchscript_bytes.unit = "bytes"


class VAETraining:
    """Time of one training epoch of the default network on 32 images of 256x256."""

    timeout = 600

    def setup(self):
        if ConvVAEDetector is None:
            raise NotImplementedError("torch is not installed")
        self.X = np.random.default_rng(0).random((40, 256, 256), dtype=np.float32)

    def time_one_epoch(self):
        ConvVAEDetector(input_space="pixels", max_epochs=1, random_state=0).fit(self.X)


class VAEDetectionWafer:
    """Image AUROC of the VAE beside PCADetector on synthetic 64x64 wafer images."""

    timeout = 900

    def setup_cache(self):
        if ConvVAEDetector is None:
            raise NotImplementedError("torch is not installed")
        try:
            from greyanom.datasets import make_wafer_images
            from greyanom.metrics import evaluate
        except ImportError as exc:
            raise NotImplementedError(str(exc)) from exc
        d = make_wafer_images(n_train=200, n_test=100, image_size=64, random_state=0)
        out = {}
        vae = ConvVAEDetector(
            input_space="pixels", channels=(32, 64, 128), max_epochs=15, kl_warmup_epochs=5, random_state=0
        )
        for name, det in (("vae", vae), ("pca", PCADetector(n_components=50))):
            e = det.fit(d.X_train).explain(d.X_test)
            out[name] = evaluate(d.y_test, e.score, heatmaps=e.heatmap, masks=d.masks_test).to_dict()
        return out

    def track_vae_auroc(self, out):
        return out["vae"]["auroc"]

    def track_pca_auroc(self, out):
        return out["pca"]["auroc"]

    def track_vae_pixel_auroc(self, out):
        return out["vae"]["pixel_auroc"]

    def track_pca_pixel_auroc(self, out):
        return out["pca"]["pixel_auroc"]
