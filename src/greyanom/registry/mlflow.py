"""Log and load a greyanom model as an MLflow model (the ``mlflow`` extra).

The case study keeps its models in an MLflow registry. :func:`log_model` logs a fitted
detector and its :class:`~greyanom.decision.DecisionPolicy` as an MLflow ``pyfunc`` model:
the two greyanom files (safetensors and JSON, as ``save`` writes them) are its artifacts and
its code is a small module MLflow runs ("models from code"), so neither the detector nor the
wrapper is pickled. ``mlflow.pyfunc.load_model(uri).predict(images)`` answers a table of
score, decision (PASS / REVIEW / REJECT) and confidence per image; :func:`load_model` gives
back the greyanom detector and policy themselves (through :func:`greyanom.load`).

MLflow is imported only when these functions are called; without it they raise an
ImportError naming the extra (``pip install "greyanom[mlflow]"``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["log_model", "load_model"]

_CODE = Path(__file__).with_name("_mlflow_model.py")


def _mlflow():
    from greyanom._optional import import_optional

    import_optional("mlflow", "mlflow", "greyanom.registry.mlflow")
    import mlflow.pyfunc

    return mlflow


def _load_pair(model, policy):
    """The detector, its policy and the detector's hash from their files (or objects).

    The policy must be bound to the detector (as given: a file is checked as a file).
    """
    from greyanom.decision import _checked_pair

    # refuses a policy that is unbound or bound to another model
    return _checked_pair(model, policy, name="detector")


def log_model(detector, policy, name="greyanom-model", *, registered_model_name=None, input_example=None):
    """Log a detector and its decision policy as an MLflow pyfunc model.

    Parameters
    ----------
    detector : fitted detector, str or path-like
        A fitted greyanom detector or a file its ``save`` wrote (e.g. a registry version's
        ``model_path``).
    policy : fitted DecisionPolicy, str or path-like
        Its decision policy, bound to it (``fit(scores, model=detector)``).
    name : str, default="greyanom-model"
        The model's name in the run (MLflow's ``name``, formerly ``artifact_path``).
    registered_model_name : str, optional
        Also register it under this name in the MLflow model registry.
    input_example : ndarray, optional
        A few images, from which MLflow infers the signature. By default a blank image of
        the detector's ``image_shape_`` (image detectors) sets a tensor signature.

    Returns
    -------
    info : mlflow.models.model.ModelInfo
        ``info.model_uri`` loads it (:func:`load_model`, ``mlflow.pyfunc.load_model``).
    """
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    from greyanom.decision import _write_model

    given = detector
    detector, policy, digest = _load_pair(given, policy)
    if input_example is None and hasattr(detector, "image_shape_"):
        input_example = np.zeros((1, *map(int, detector.image_shape_)), dtype=np.float32)
    signature = example = None
    if input_example is not None:
        example = np.asarray(input_example, dtype=np.float32)
        scores = np.asarray(detector.score(example), dtype=np.float64)
        import pandas as pd

        output = pd.DataFrame({"score": scores, "decision": np.asarray(policy.decide(scores), dtype=str),
                               "confidence": np.asarray(policy.confidence(scores), dtype=np.float64)})
        signature = infer_signature(example, output)
    with tempfile.TemporaryDirectory(prefix="greyanom-mlflow-") as folder:
        # a file is logged as it is (the bytes its policy was bound to), a detector saved
        model_path = _write_model(given, detector, Path(folder) / "model.safetensors", digest)
        policy_path = policy.save(Path(folder) / "policy.safetensors")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(_CODE),
            artifacts={"model": str(model_path), "policy": str(policy_path)},
            signature=signature,
            input_example=None if signature is None else example,
            registered_model_name=registered_model_name,
            pip_requirements=[f"greyanom[mlflow]=={_greyanom_version()}"],
        )


def load_model(model_uri):
    """The greyanom detector and decision policy of an MLflow model logged by :func:`log_model`.

    Parameters
    ----------
    model_uri : str
        Any MLflow model URI: ``models:/<model id>``, ``runs:/<run id>/<name>``,
        ``models:/<registered name>/<version>`` or a local folder.

    Returns
    -------
    detector : fitted detector
    policy : DecisionPolicy
        Checked to be bound to ``detector``.

    Raises
    ------
    ValueError
        If the MLflow model was not logged by :func:`log_model` (no greyanom artifacts).
    """
    mlflow = _mlflow()
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    flavor = Model.load(local).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if not {"model", "policy"} <= set(artifacts):
        raise ValueError(f"the MLflow model {model_uri!r} is not a greyanom model (no 'model' and 'policy' artifacts).")
    return _load_pair(local / artifacts["model"]["path"], local / artifacts["policy"]["path"])[:2]


def _greyanom_version():
    from greyanom import __version__

    return __version__
