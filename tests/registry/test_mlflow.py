"""The ``mlflow`` extra: a greyanom model logged as an MLflow pyfunc model and loaded back, on a local store."""

import numpy as np
import pytest

from greyanom import PCADetector
from greyanom.decision import DecisionPolicy

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("alembic")  # MLflow's sqlite tracking store
pytest.importorskip("safetensors")

from greyanom.registry import mlflow as gmlflow  # noqa: E402


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A local sqlite tracking store (created once: its migrations take seconds) and an experiment
    whose artifacts live beside it."""
    folder = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    experiment = mlflow.create_experiment("greyanom", artifact_location=(folder / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    try:
        yield folder
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    base = 0.5 + 0.1 * np.sin(xx / 2.0)
    images = (base + 0.03 * rng.normal(size=(60, 16, 16))).astype(np.float32)
    det = PCADetector(n_components=4, smoothing_sigma=1.0, random_state=0).fit(images)
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(det.heldout_scores_, model=det)
    test = (base + 0.03 * rng.normal(size=(4, 16, 16))).astype(np.float32)
    test[0, 4:9, 4:9] += 0.4
    return det, policy, np.clip(test, 0, 1)


def test_log_then_load_round_trips(tracking, fitted):
    det, policy, test = fitted
    with mlflow.start_run():
        info = gmlflow.log_model(det, policy, name="litho", registered_model_name="litho")
    loaded_det, loaded_policy = gmlflow.load_model(info.model_uri)
    np.testing.assert_array_equal(loaded_det.score(test), det.score(test))
    assert loaded_policy.model_hash_ == policy.model_hash_
    np.testing.assert_array_equal(loaded_policy.decide(det.score(test)), policy.decide(det.score(test)))
    # the registered MLflow model loads the same way
    again, _ = gmlflow.load_model("models:/litho/1")
    np.testing.assert_array_equal(again.score(test), det.score(test))
    # no pickle in the logged model: its files are the greyanom files, the code and MLflow's metadata
    local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri)
    import pathlib

    names = {p.suffix for p in pathlib.Path(local).rglob("*") if p.is_file()}
    assert ".pkl" not in names and ".safetensors" in names


def test_pyfunc_predicts_score_and_decision(tracking, fitted):
    det, policy, test = fitted
    info = gmlflow.log_model(det, policy)
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(test)
    scores = det.score(test)
    np.testing.assert_allclose(out["score"].to_numpy(), scores)
    assert list(out["decision"]) == list(policy.decide(scores))
    assert out["decision"][0] == "REJECT"
    np.testing.assert_allclose(out["confidence"].to_numpy(), policy.confidence(scores))


def test_refuses_a_policy_of_another_model_and_a_foreign_mlflow_model(tracking, fitted, tmp_path):
    det, policy, _ = fitted
    unbound = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(det.heldout_scores_)
    with pytest.raises(ValueError, match="records no model"):
        gmlflow.log_model(det, unbound)
    other = PCADetector(n_components=2, smoothing_sigma=1.0).fit(np.random.default_rng(1).random((30, 16, 16)))
    with pytest.raises(ValueError):
        gmlflow.log_model(other, policy)

    code = tmp_path / "echo.py"
    code.write_text("import mlflow\nclass Echo(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input, params=None):\n        return model_input\n"
                    "mlflow.models.set_model(Echo())\n")
    info = mlflow.pyfunc.log_model(name="echo", python_model=str(code))
    with pytest.raises(ValueError, match="is not a greyanom model"):
        gmlflow.load_model(info.model_uri)


def test_missing_mlflow_names_the_extra(monkeypatch, fitted):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # an import of mlflow raises ImportError
    with pytest.raises(ImportError, match=r'pip install "greyanom\[mlflow\]"'):
        gmlflow.log_model(*fitted[:2])
    with pytest.raises(ImportError, match="greyanom.registry.mlflow needs 'mlflow'"):
        gmlflow.load_model("models:/litho/1")


def test_a_file_written_before_a_parameter_was_added_is_logged_as_it_is(tracking):
    """An old ShapeSignatureDetector file (before ``level_term``) and a policy bound to that file: the
    logged artifact is the file byte for byte, so the pair loads back with the policy still bound."""
    from pathlib import Path

    from greyanom._persist import model_hash

    old = Path(__file__).parents[1] / "traces" / "data" / "shape_v1_level.safetensors"
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(np.random.default_rng(0).normal(size=200), model=old)
    with mlflow.start_run():
        info = gmlflow.log_model(old, policy, name="etch")
    det, back = gmlflow.load_model(info.model_uri)
    assert back.model_hash_ == model_hash(old) and type(det).__name__ == "ShapeSignatureDetector"
