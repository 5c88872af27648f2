"""Saving, loading and pickling :class:`~greyanom.image.ConvVAEDetector`: its arrays, scalars and network.

The detector's persistence hooks call these functions; ``BaseImageDetector`` writes the file
(safetensors + JSON, no pickle). The array names are those of every earlier version, so
files saved before the routes were split load unchanged.
"""

from __future__ import annotations

import numpy as np

from greyanom._optional import import_torch

__all__ = ["state_arrays", "set_state_arrays", "json_state", "set_json_state", "upgraded_params",
           "built_module", "pickle_module", "restore_module"]

_CLASS = "ConvVAEDetector"


def state_arrays(det):
    """The learned arrays to save: the network's weights (``module.*``) and the residual, split and route state."""
    arrays = {f"module.{k}": v.detach().cpu().numpy() for k, v in det.module_.state_dict().items()}
    arrays["residual_mean_"] = det.residual_mean_
    arrays["residual_std_"] = det.residual_std_
    arrays["validation_indices_"] = np.asarray(det.validation_indices_, dtype=np.int64)
    if det.reference_ is not None:
        arrays["reference_"] = det.reference_
    if det.feature_shape_ is not None:
        arrays["feature_mean_"] = det.feature_mean_
        arrays["feature_std_"] = det.feature_std_
    return arrays


def set_state_arrays(det, arrays):
    """Restore what :func:`state_arrays` wrote, and the network on ``det.device_``."""
    arrays = dict(arrays)
    if not any(k.startswith("module.") for k in arrays):
        # files written before the image seam hold only the network's weights
        arrays = {f"module.{k}": v for k, v in arrays.items()}
    module_arrays = {k[len("module.") :]: v for k, v in arrays.items() if k.startswith("module.")}
    det.residual_std_ = arrays.get("residual_std_")
    det.residual_mean_ = arrays.get("residual_mean_")
    if (det.residual_std_ is None or det.residual_mean_ is None) and det.residual_normalization == "std":
        raise ValueError(
            "the saved ConvVAEDetector has no residual_mean_ / residual_std_; "
            "it was saved before residual_normalization existed and scores raw residuals."
        )
    det.validation_indices_ = arrays.get("validation_indices_")
    det.reference_ = arrays.get("reference_")
    if det.register and det.reference_ is None:
        raise ValueError("the saved ConvVAEDetector has register=True but no reference_ image.")
    if det.feature_shape_ is not None:
        det.feature_mean_ = arrays["feature_mean_"]
        det.feature_std_ = arrays["feature_std_"]
    det.module_ = built_module(det, module_arrays)


def json_state(det):
    """The learned scalars and the training history, as JSON values."""
    return {
        "heatmap_scale_": det.heatmap_scale_,
        "n_params_": det.n_params_,
        "best_epoch_": det.best_epoch_,
        "n_epochs_": det.n_epochs_,
        "history_": det.history_,
        "feature_shape_": None if det.feature_shape_ is None else list(det.feature_shape_),
    }


def set_json_state(det, state):
    for key in ("heatmap_scale_", "n_params_", "best_epoch_", "n_epochs_", "history_"):
        setattr(det, key, state[key])
    shape = state.get("feature_shape_")
    det.feature_shape_ = None if shape is None else tuple(int(v) for v in shape)


def upgraded_params(params):
    """Saved parameters with the defaults of files written before an option existed."""
    params = dict(params)
    # files from before these options: raw residuals of the pixel VAE
    params.setdefault("residual_normalization", "none")
    params.setdefault("input_space", "pixels")
    n_threads = params.pop("n_threads", "deprecated")
    if n_threads not in (None, "deprecated") and params.get("n_jobs") is None:
        params["n_jobs"] = n_threads
    return params


def built_module(det, arrays):
    """The route's network with the saved weights (``strict=True``), in eval mode on ``det.device_``."""
    torch = import_torch(_CLASS)
    module = det._route().new_module(det.image_shape_, det.feature_shape_)
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the saved weights do not match the saved architecture: {exc}") from exc
    return module.to(det.device_).eval()


def pickle_module(state):
    """Replace the network in a pickled ``state`` by its weights as arrays (in place)."""
    module = state.pop("module_", None)
    if module is not None:
        state["_module_arrays"] = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def restore_module(det):
    """Rebuild the network of an unpickled detector on its device."""
    det.__dict__.setdefault("inference_dtype", "float32")  # pickled before the parameter existed
    arrays = det.__dict__.pop("_module_arrays", None)
    if isinstance(det.__dict__.get("device_"), str):  # pickled before the image seam
        from greyanom._optional import device_or_cpu

        det.device_ = device_or_cpu(det.device_, _CLASS)
    if arrays is not None:
        det.module_ = built_module(det, arrays)
