"""The MLflow "model from code" of a greyanom model: MLflow runs this file when it loads the model.

:func:`greyanom.registry.mlflow.log_model` logs this file as the model's code, so nothing is
pickled: ``load_context`` reads the detector and policy files (safetensors and JSON) that
were logged as the model's artifacts. Imported only by MLflow (it needs ``mlflow``).
"""

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class GreyanomPyfunc(PythonModel):
    """``predict(images)``: a table of ``score``, ``decision`` and ``confidence`` per image."""

    def load_context(self, context):
        from greyanom.registry.mlflow import _load_pair

        self.detector, self.policy, _ = _load_pair(context.artifacts["model"], context.artifacts["policy"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        images = np.asarray(values, dtype=np.float32)
        scores = np.asarray(self.detector.score(images), dtype=np.float64)
        return pd.DataFrame({
            "score": scores,
            "decision": np.asarray(self.policy.decide(scores), dtype=str),
            "confidence": np.asarray(self.policy.confidence(scores), dtype=np.float64),
        })


set_model(GreyanomPyfunc())
