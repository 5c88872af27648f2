"""TorchScript export of every :class:`~greyanom.image.ConvVAEDetector` route, checked against the detector.

The exported module is the detector's own scorer (:class:`greyanom.image._torch._infer.VAEScorer`)
on a CPU copy, scripted: the network, the residual z-score, the upsampling and blur of feature
maps, the score blur and the reduction. For ``input_space="features"`` the frozen EfficientNet-
Lite0 front end is traced for the detector's image size (its "same" padding depends on the
size) and scripted inside the module. With ``register=True`` the module takes the images and
their shifts onto ``reference_`` (``module(x, shifts)``, shifts from
:meth:`ConvVAEDetector.estimate_shifts`): moving the images and the heatmaps is in the module,
the shift estimation (FFT phase correlation with scikit-image, on the host) is not. Without
shifts it takes the images as registered already.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import numpy as np

from greyanom._optional import import_torch

__all__ = ["export_torchscript", "CHECK_TOLERANCE"]

#: Default ``(rtol, atol)`` of the export check per device type. On CUDA the check runs with
#: TF32 off; the scripted and the eager module may still pick different kernels.
CHECK_TOLERANCE = {"cpu": (1e-4, 1e-6), "cuda": (1e-3, 1e-5)}


@contextlib.contextmanager
def ieee_float32(torch):
    """Full float32 precision for CUDA matmuls and convolutions (TF32 off) inside the block; restored after."""
    flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    flags = [f for f in flags if hasattr(f, "fp32_precision")]
    old = [f.fp32_precision for f in flags]
    try:
        for f in flags:
            f.fp32_precision = "ieee"
        yield
    finally:
        for f, value in zip(flags, old):
            f.fp32_precision = value


def _prune_backbone(net, last_stage, torch):
    """Drop what the features never use: the blocks after ``last_stage`` and the classifier head.

    With stages (3, 5) this keeps 0.70M of the network's 4.65M parameters (a 3.2 MB file instead of
    19.2 MB for the tiny feature VAE of the tests).
    """
    keep = net.stage_ends[last_stage - 1] + 1
    net._blocks = torch.nn.ModuleList(list(net._blocks)[:keep])
    for name in ("_conv_head", "_bn1", "_fc"):
        delattr(net, name)


def _scripted(det, torch):
    module = copy.deepcopy(det.module_).cpu().float().eval()
    scorer = det._scorer(device=torch.device("cpu"), module=module)
    if det.input_space == "features":
        front = copy.deepcopy(scorer.front).eval()  # a private copy of the shared backbone
        _prune_backbone(front.net, max(front.stages), torch)
        example = torch.rand(2, 1, *det.image_shape_, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(False), torch.no_grad():
            scorer.front = torch.jit.trace(front, example, check_trace=False)
    return torch.jit.script(scorer.eval())


def export_torchscript(det, path, check_images=None, rtol=None, atol=None):
    """Write ``det``'s scorer as TorchScript to ``path`` and check it on ``det.device_``; see the method."""
    torch = import_torch(type(det).__name__)
    if getattr(det, "inference_dtype", "float32") != "float32":
        raise ValueError(
            f"export_torchscript writes a float32 module; this detector has inference_dtype={det.inference_dtype!r} "
            "and its offset_ was calibrated in it. Export a detector fitted with inference_dtype='float32'."
        )
    if check_images is None:
        check_images = np.random.default_rng(0).random((4, *det.image_shape_), dtype=np.float32)
    images = det._validated(check_images)
    path = Path(path)
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated in favour of torch.export; serving stacks
        # (TorchServe, libtorch, Triton) still load TorchScript files.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        scripted = _scripted(det, torch)
        scripted.save(str(path))
        loaded = torch.jit.load(str(path), map_location=det.device_)
    device = det.device_
    default = CHECK_TOLERANCE.get(device.type, CHECK_TOLERANCE["cuda"])
    rtol = default[0] if rtol is None else rtol
    atol = default[1] if atol is None else atol
    with ieee_float32(torch), det._threads():
        expected = det._explain_images(images, ("score", "heatmap", "reconstruction"))  # eager, same device
        shifts = None if det.reference_ is None else det.estimate_shifts(images)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images))[:, None].to(device)
            if shifts is None:
                recon, score, heat = loaded(x)
            else:
                recon, score, heat = loaded(x, torch.from_numpy(shifts).to(device))
    checks = [("heatmap", heat[:, 0], expected["heatmap"]), ("score", score, expected["score"])]
    if expected["reconstruction"] is not None:
        checks.insert(0, ("reconstruction", recon[:, 0], expected["reconstruction"]))
    for name, got, want in checks:
        got = got.detach().float().cpu().numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            raise RuntimeError(
                f"the TorchScript export's {name} differs from the estimator's on {device} "
                f"(max abs diff {err:.3g}, rtol={rtol:g}, atol={atol:g})."
            )
    return path
