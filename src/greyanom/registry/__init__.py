"""Model versions in production: a registry of detectors with their decision policies.

:class:`ModelRegistry` keeps numbered versions (``1.0.0`` first) of a named model, each a
detector file and the :class:`~greyanom.decision.DecisionPolicy` calibrated on it, with its
metrics, a hash of its training data and its creation time; ``promote`` and ``rollback``
move production between them, and the service (``greyanom serve --registry DIR --name N``)
follows. ``greyanom registry DIR ...`` is the command line over it. :func:`retrain` (``greyanom
retrain``) trains a candidate on the images the inspection service kept and registers it when
it passes a gate on the reviewed images; :mod:`greyanom.registry.mlflow` logs and loads a
version as an MLflow model (the ``mlflow`` extra).
"""

import hashlib

import numpy as np

from greyanom.registry._retrain import RetrainError, RetrainReport, parse_since, retrain
from greyanom.registry._store import ModelRegistry, ModelVersion, RegistryError, UnknownVersionError

__all__ = [
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "RetrainError",
    "RetrainReport",
    "UnknownVersionError",
    "data_hash",
    "parse_since",
    "retrain",
]


def data_hash(items):
    """A content hash of training data: images (arrays) or byte strings, in order.

    Parameters
    ----------
    items : iterable of ndarray or bytes
        The training images (any dtype and shape) or their raw file bytes.

    Returns
    -------
    digest : str
        ``"sha256:"`` and 64 hex digits; the same items in the same order give the same digest.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom.registry import data_hash
    >>> data_hash([np.zeros((2, 2))]) == data_hash([np.zeros((2, 2))])
    True
    >>> data_hash([np.zeros((2, 2))]) == data_hash([np.ones((2, 2))])
    False
    """
    digest = hashlib.sha256()
    n = 0
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            digest.update(b"bytes:%d:" % len(item))
            digest.update(bytes(item))
        else:
            array = np.ascontiguousarray(item)
            digest.update(f"array:{array.dtype.str}:{array.shape}:".encode())
            digest.update(array.tobytes())
        n += 1
    if n == 0:
        raise ValueError("items is empty: there is no data to hash.")
    return "sha256:" + digest.hexdigest()
