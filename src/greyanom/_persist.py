"""Model files: arrays in safetensors, parameters and state in JSON, an integrity hash, no pickle.

A saved detector, or a saved :class:`~greyanom.decision.DecisionPolicy`, is one
``.safetensors`` file, written atomically (a temporary file in the same folder, renamed into
place). Its metadata holds

* ``format`` (``"greyanom-detector"``) and ``format_version`` (an integer, now 2),
* ``greyanom_version``, the package version that wrote it,
* ``config``, a JSON document with the detector's ``class`` name, its ``params``
  (``get_params()``) and its scalar learned ``state``,
* ``sha256``, the SHA-256 of the payload: the config text and every array's name,
  dtype, shape and bytes, in name order.

Loading never executes code from the file. A file that is not a safetensors file, comes
from a newer format, fails the hash (a damaged payload or edited config) or lacks a key
raises a :class:`ValueError` that says which. Version-1 files (no hash) still load.
:func:`load` reads the class name from a file and dispatches to that class's ``load``
through a fixed registry of greyanom classes; it never imports a name read from a file.
:func:`load_detector` is the one ``load`` of every detector (``Detector.load(path, *, device=None)``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np


__all__ = [
    "save_arrays", "load_arrays", "read_config", "load", "load_detector", "file_sha256", "params_to_json",
    "params_from_json", "is_json_file", "model_hash", "MODEL_CLASSES",
]

_FORMAT = "greyanom-detector"
_FORMAT_VERSION = 2
#: Keys every config must hold.
_CONFIG_KEYS = ("class", "params", "state")
#: The classes :func:`load` may build, by the class name stored in a file. A name that
#: this version does not define is refused; nothing else is ever imported.
MODEL_CLASSES = (
    "PCADetector",
    "ConvVAEDetector",
    "PaDiMDetector",
    "PatchCoreDetector",
    "RegisteredPixelDetector",
    "ShapeSignatureDetector",
    "MultiwayPCADetector",
    "DecisionPolicy",
)


class _Section(dict):
    """A config section whose missing keys raise a ValueError naming the key and the file."""

    def __init__(self, data, *, where):
        super().__init__(data)
        self._where = where

    def __missing__(self, key):
        raise ValueError(f"{self._where} lacks the key {key!r}: the file is damaged or was not written by greyanom.")


def _payload_sha256(config_text, arrays):
    digest = hashlib.sha256()
    digest.update(config_text.encode("utf-8"))
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"\0{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(memoryview(value.reshape(-1).view(np.uint8)))  # no copy of large arrays
    return digest.hexdigest()


#: Learned state that says where a model runs, not what it computes: left out of :func:`model_hash`.
_PLACEMENT_STATE = ("device_",)


def model_hash(model):
    """Content hash of a fitted detector or of its model file: the same value for both.

    The SHA-256 covers what :meth:`save` writes: the class name, the constructor
    parameters (``get_params``), the JSON learned state and every learned array (name,
    dtype, shape, bytes), in a canonical order. It leaves out the device the model was on
    (``device_``), so a model fitted on a GPU and its file loaded on a CPU hash alike, and
    the greyanom version that wrote the file. Any change of a parameter (a dtype, a
    reduction) or of a learned value changes it.

    Parameters
    ----------
    model : fitted detector, str or path-like
        A fitted greyanom detector (one with ``save``), or a file its ``save`` wrote
        (read and integrity-checked, not unpickled).

    Returns
    -------
    digest : str
        ``"sha256:"`` and 64 hex digits.

    Raises
    ------
    TypeError
        If ``model`` is neither a path nor a greyanom detector that can be saved.
    ValueError
        If the file is not a greyanom model file or is damaged.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from greyanom import PCADetector
    >>> from greyanom._persist import model_hash
    >>> det = PCADetector(n_components=2).fit(np.random.default_rng(0).normal(size=(30, 5)))
    >>> path = det.save(pathlib.Path(tempfile.mkdtemp()) / "pca.safetensors")
    >>> model_hash(det) == model_hash(path)
    True
    """
    if isinstance(model, (str, os.PathLike)):
        arrays, config = load_arrays(model, read_config(model)["class"])
    elif callable(getattr(model, "_save_payload", None)):
        arrays, config = model._save_payload()
    else:
        raise TypeError(f"model must be a fitted greyanom detector or its model file, got {type(model).__name__}.")
    state = {k: v for k, v in dict(config["state"]).items() if k not in _PLACEMENT_STATE}
    canonical = {"class": config["class"], "params": dict(config["params"]), "state": state}
    text = json.dumps(canonical, sort_keys=True, allow_nan=True)
    return "sha256:" + _payload_sha256(text, {str(k): np.asarray(v) for k, v in arrays.items()})


def file_sha256(path, *, chunk_size=1 << 20):
    """SHA-256 of a file's bytes, as a hex string.

    Parameters
    ----------
    path : str or path-like
        The file.
    chunk_size : int, default=1 MiB
        Bytes read at a time.

    Returns
    -------
    digest : str

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:12]
    'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_json(value):
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def params_to_json(estimator):
    """``estimator.get_params(deep=False)`` as JSON values (tuples as lists, a RandomState as None).

    A ``device`` that is not a string (a ``torch.device``) is written as its string.
    """
    params = {}
    for name, value in estimator.get_params(deep=False).items():
        if name == "random_state" and not (value is None or isinstance(value, numbers.Integral)):
            value = None  # a RandomState instance is not saved; the learned state holds its draws
        elif name == "device" and not isinstance(value, str):
            value = str(value)
        params[name] = _to_json(value)
    return params


def params_from_json(cls, params):
    """Constructor keyword arguments of ``cls`` from saved ``params`` (lists back to tuples).

    Parameters this version does not know are a ``ValueError`` (the file comes from another
    greyanom); parameters the file lacks keep their defaults.
    """
    from greyanom import __version__

    known = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"the saved {cls.__name__} has parameters {unknown} that this greyanom "
            f"({__version__}) does not know; load it with the greyanom that saved it."
        )
    return {name: tuple(v) if isinstance(v, list) else v for name, v in params.items()}


def save_arrays(path, arrays, config):
    """Write ``arrays`` (name -> ndarray) and the JSON-serialisable ``config`` to ``path``.

    The file is written to a temporary name in the same folder and renamed into place,
    so a reader (a running inspection service) never sees a half-written model.

    Parameters
    ----------
    path : str or path-like
        Output file, conventionally ``*.safetensors``; its folder must exist.
    arrays : dict of str to ndarray
        Learned arrays.
    config : dict
        JSON-serialisable; must hold ``"class"``, ``"params"`` and ``"state"``.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist.
    ValueError
        If ``config`` lacks a key or is not JSON-serialisable.
    """
    from greyanom import __version__

    import safetensors.numpy as st  # a core dependency, imported when needed
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {str(path)!r}: the folder {str(path.parent)!r} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"cannot save to {str(path)!r}: it is a folder; give a file name.")
    missing = [key for key in _CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"config lacks the key(s) {missing}.")
    try:
        config_text = json.dumps(config, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config is not JSON-serialisable: {exc}") from exc
    tensors = {str(name): np.ascontiguousarray(value) for name, value in arrays.items()}
    meta = {
        "format": _FORMAT,
        "format_version": str(_FORMAT_VERSION),
        "greyanom_version": __version__,
        "config": config_text,
        "sha256": _payload_sha256(config_text, tensors),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_metadata(path):
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist or is not a file.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise ValueError(f"{str(path)!r} is not a greyanom detector file (not a safetensors file): {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a saved greyanom detector.")
    raw_version = meta.get("format_version")
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        raise ValueError(f"{str(path)!r} has an invalid format_version {raw_version!r}.") from None
    if version > _FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{str(path)!r} has model-file format version {version} (written by greyanom "
            f"{meta.get('greyanom_version', 'unknown')}); this greyanom reads versions 1 to {_FORMAT_VERSION}. "
            "Upgrade greyanom to load it."
        )
    if "config" not in meta:
        raise ValueError(f"{str(path)!r} lacks the key 'config' in its metadata.")
    if version >= 2 and "sha256" not in meta:
        raise ValueError(f"{str(path)!r} lacks the key 'sha256' in its metadata (format version {version}).")
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} has a damaged config (not JSON): {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} has a damaged config (not a JSON object).")
    for key in _CONFIG_KEYS:
        if key not in config:
            raise ValueError(f"{str(path)!r} lacks the key {key!r} in its config.")
        if key != "class" and not isinstance(config[key], dict):
            raise ValueError(f"{str(path)!r} has a damaged config: {key!r} is not a JSON object.")
    return meta, version, config


def read_config(path):
    """The class name, config and format facts of a model file, without reading its arrays.

    Parameters
    ----------
    path : str or path-like
        A file written by a detector's ``save``.

    Returns
    -------
    info : dict
        ``class`` (str), ``config`` (dict), ``format_version`` (int) and
        ``greyanom_version`` (str or None).

    Raises
    ------
    ValueError
        If the file is not a greyanom model file, is from a newer format, or lacks a key.
    """
    meta, version, config = _read_metadata(path)
    return {
        "class": config["class"],
        "config": config,
        "format_version": version,
        "greyanom_version": meta.get("greyanom_version"),
    }


def load_arrays(path, expected_class):
    """Read a file written by :func:`save_arrays`; check its integrity and its class.

    Parameters
    ----------
    path : str or path-like
        The model file.
    expected_class : str
        The class name the file must hold.

    Returns
    -------
    arrays : dict of ndarray
    config : dict
        With ``params`` and ``state`` sections whose missing keys raise ``ValueError``.

    Raises
    ------
    ValueError
        If the file is not a greyanom model file, is from a newer format, its payload
        fails the SHA-256 check, it lacks a key, or it holds another class.
    """
    import safetensors.numpy as st
    meta, version, config = _read_metadata(path)
    path = Path(path)
    if config["class"] != expected_class:
        raise ValueError(f"{str(path)!r} holds a {config['class']!r}, not a {expected_class!r}.")
    try:
        arrays = st.load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{str(path)!r} has a damaged payload (its arrays cannot be read): {exc}") from exc
    if version >= 2 and _payload_sha256(meta["config"], arrays) != meta["sha256"]:
        raise ValueError(
            f"{str(path)!r} has a damaged payload: its SHA-256 does not match the one recorded when it was "
            "saved (the file was corrupted or edited)."
        )
    where = f"the model file {str(path)!r}"
    config = dict(config)
    config["params"] = _Section(config["params"], where=f"the 'params' of {where}")
    config["state"] = _Section(config["state"], where=f"the 'state' of {where}")
    return arrays, config


def _model_class(name, path):
    import importlib

    if not isinstance(name, str) or name not in MODEL_CLASSES:
        raise ValueError(f"{str(path)!r} holds a {name!r}, which is not a greyanom model class {MODEL_CLASSES}.")
    for module in ("greyanom", "greyanom.image", "greyanom.traces", "greyanom.decision"):
        cls = getattr(importlib.import_module(module), name, None)
        if cls is not None:
            break
    else:
        raise ValueError(f"{str(path)!r} holds a {name!r}, which this greyanom version does not define.")
    if not callable(getattr(cls, "load", None)):
        raise ValueError(f"{name} cannot be loaded from a file in this greyanom version.")
    return cls


def is_json_file(path):
    """Whether ``path`` holds a JSON document (a decision policy of the first format) rather than safetensors.

    A safetensors file starts with its header length as 8 little-endian bytes, which hold
    NUL bytes for any header under 2**56 bytes; a JSON document holds none.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
    return head.lstrip().startswith(b"{") and b"\0" not in head


def load_detector(cls, path, *, device=None):
    """Build a fitted ``cls`` from a file written by its ``save`` (``cls.load`` of every detector).

    Parameters
    ----------
    cls : type
        A :class:`~greyanom.base.BaseDetector` subclass with a ``_set_saved_state`` hook.
    path : str or path-like
        The model file.
    device : str or torch.device, optional
        Only for classes with a ``device`` parameter; any other class takes ``None`` only.

    Returns
    -------
    detector : cls

    Raises
    ------
    ValueError
        If the file is not a model file of ``cls`` or is damaged, or if ``device`` is given to
        a class without a ``device`` parameter.
    """
    if device is not None and "device" not in cls._get_param_names():
        raise ValueError(
            f"device: {cls.__name__} runs on the CPU and has no device parameter; expected device=None, "
            f"got {device!r}."
        )
    arrays, config = load_arrays(path, cls.__name__)
    params = cls._params_from_json(dict(config["params"]))
    if device is not None:
        params["device"] = str(device)
    det = cls(**params)
    try:
        det._set_saved_state(config["state"], arrays, device=device)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} has a damaged state: {exc!r}") from exc
    return det


def load(path, *, device=None):
    """Load any saved greyanom detector or decision policy; the class comes from the file's own metadata.

    The class name in the file is looked up in a fixed registry of greyanom classes
    (:data:`MODEL_CLASSES`), and that class's ``load`` reads the file. Nothing is
    unpickled and no name from the file is imported. Decision policies saved as JSON by
    earlier greyanom versions load too.

    Parameters
    ----------
    path : str or path-like
        A file written by a detector's or a :class:`~greyanom.decision.DecisionPolicy`'s ``save``.
    device : str, optional
        Passed to the class's ``load`` (e.g. ``"cpu"`` for a model trained on a GPU); only
        ``None`` for classes that run on the CPU (trace detectors, decision policies).

    Returns
    -------
    obj : BaseDetector or DecisionPolicy
        A fitted detector or policy of the saved class.

    Raises
    ------
    ValueError
        If the file is not a greyanom model file, is damaged, comes from a newer format
        or holds a class that is not a greyanom detector.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> import greyanom
    >>> X = np.clip(0.5 + 0.05 * np.random.default_rng(0).normal(size=(20, 32, 32)), 0, 1)
    >>> det = greyanom.ConvVAEDetector(channels=(8, 16), latent_dim=4, bottleneck_channels=4,
    ...                                max_epochs=1, random_state=0).fit(X)
    >>> path = det.save(pathlib.Path(tempfile.mkdtemp()) / "vae.safetensors")
    >>> type(greyanom.load(path)).__name__
    'ConvVAEDetector'
    """
    path = Path(path)
    if path.is_file() and is_json_file(path):
        name = "DecisionPolicy"  # the first policy format: JSON; DecisionPolicy.load checks it
    else:
        name = read_config(path)["class"]
    cls = _model_class(name, path)
    if name == "DecisionPolicy":
        if device is not None:
            raise ValueError(f"device: a DecisionPolicy has no device; expected device=None, got {device!r}.")
        return cls.load(path)
    return cls.load(path, device=device)
