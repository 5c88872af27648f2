"""Saving fitted detectors without pickling code: arrays in safetensors, parameters in JSON.

A saved detector is one ``.safetensors`` file whose metadata holds a JSON document with the
detector's class name, its ``get_params()`` and any scalar learned state. Loading never
executes code from the file: a file that is not a safetensors file of the expected class
raises ``ValueError``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from greyanom._optional import import_optional

__all__ = ["save_arrays", "load_arrays"]

_FORMAT = "greyanom-detector"
_FORMAT_VERSION = 1


def save_arrays(path, arrays, config):
    """Write ``arrays`` (name -> ndarray) and the JSON-serialisable ``config`` to ``path``."""
    st = import_optional("safetensors.numpy", "torch", "saving a detector")
    meta = {"format": _FORMAT, "format_version": str(_FORMAT_VERSION), "config": json.dumps(config)}
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    path = Path(path)
    st.save_file(tensors, str(path), metadata=meta)
    return path


def load_arrays(path, expected_class):
    """Read a file written by :func:`save_arrays`; check it holds ``expected_class``.

    Returns
    -------
    arrays : dict of ndarray
    config : dict
    """
    st = import_optional("safetensors.numpy", "torch", "loading a detector")
    safe_open = import_optional("safetensors", "torch", "loading a detector").safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
        arrays = st.load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise ValueError(f"{str(path)!r} is not a greyanom detector file (not a safetensors file): {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a saved greyanom detector.")
    config = json.loads(meta["config"])
    if config.get("class") != expected_class:
        raise ValueError(
            f"{str(path)!r} holds a {config.get('class')!r}, not a {expected_class!r}."
        )
    return arrays, config
