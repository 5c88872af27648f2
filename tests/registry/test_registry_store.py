"""The file-based model registry: versions, promote, rollback, bad input."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from greyanom import PCADetector, load
from greyanom._persist import model_hash
from greyanom.decision import DecisionPolicy
from greyanom.registry import ModelRegistry, RegistryError, UnknownVersionError, data_hash


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    out = []
    for k in (2, 3):
        det = PCADetector(n_components=k).fit(rng.normal(size=(120, 6)))
        out.append((det, DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(det.heldout_scores_, model=det)))
    return out


def test_versions_are_numbered_and_files_round_trip(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    (det, pol), (det2, pol2) = models
    v1 = reg.add(det, pol, name="litho", metrics={"auroc": 0.9}, data_hash="sha256:ab")
    v2 = reg.add(det2, pol2, name="litho")
    v3 = reg.add(det2, pol2, name="litho", bump="major")
    assert [v.version for v in reg.versions("litho")] == ["1.0.0", "1.1.0", "2.0.0"]
    assert (v1.metrics, v1.data_hash, v1.stage, v1.policy_bound) == ({"auroc": 0.9}, "sha256:ab", "candidate", True)
    np.testing.assert_array_equal(load(v2.model_path).score(np.ones((3, 6))), det2.score(np.ones((3, 6))))
    assert DecisionPolicy.load(v3.policy_path).model_hash_ == v3.model_hash
    assert reg.names() == ["litho"]


def test_promote_and_rollback_follow_a_stack(tmp_path, models):
    reg = ModelRegistry(tmp_path, keep=2)
    (det, pol), (det2, pol2) = models
    for d, p in ((det, pol), (det2, pol2), (det2, pol2)):
        reg.add(d, p, name="m")
    assert reg.revision("m") == 0
    reg.promote("m", "1.0.0", actor="ana")
    reg.promote("m", "1.1.0")
    assert reg.promote("m", "1.2.0", reason="better").stage == "production"
    assert [v.version for v in reg.ready("m")] == ["1.2.0", "1.1.0"]  # keep=2
    assert reg.get("m", "1.0.0").stage == "archived"
    assert reg.rollback("m", actor="bo").version == "1.1.0"
    assert reg.production("m").version == "1.1.0"
    assert reg.get("m", "1.2.0").stage == "candidate"  # rolled back: no longer in the chain
    assert reg.revision("m") == 4
    history = reg.history("m")
    assert [(e["action"], e["version"], e["from"]) for e in history] == [
        ("promote", "1.0.0", None), ("promote", "1.1.0", "1.0.0"), ("promote", "1.2.0", "1.1.0"),
        ("rollback", "1.1.0", "1.2.0"),
    ]
    assert history[0]["actor"] == "ana" and history[-1]["actor"] == "bo"
    reg.rollback("m")
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback("m")


def test_bad_input_is_named(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    (det, pol), (det2, _) = models
    with pytest.raises(UnknownVersionError, match="no model named 'x'"):
        reg.production("x")
    reg.add(det, pol, name="m")
    with pytest.raises(UnknownVersionError, match="no version '9.9.9'.*1.0.0"):
        reg.promote("m", "9.9.9")
    with pytest.raises(UnknownVersionError, match="no production version"):
        reg.production("m")
    with pytest.raises(RegistryError, match="semantic version"):
        reg.get("m", "latest")
    with pytest.raises(RegistryError, match="name must be"):
        reg.add(det, pol, name="../evil")
    with pytest.raises(ValueError, match="calibrated on a PCADetector"):  # policy bound to another model
        reg.add(det2, pol, name="m")
    with pytest.raises(RegistryError, match="bump must be"):
        reg.add(det, pol, name="m", bump="huge")
    with pytest.raises(RegistryError, match="JSON-serialisable"):
        reg.add(det, pol, name="m", metrics={"auroc": float("nan")})
    with pytest.raises(ValueError, match="keep must be"):
        ModelRegistry(tmp_path, keep=0)
    reg.promote("m", "1.0.0")
    with pytest.raises(RegistryError, match="already in production"):
        reg.promote("m", "1.0.0")


def test_an_unbound_policy_registers_but_cannot_be_promoted(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    det, pol = models[0]
    unbound = DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(det.heldout_scores_)
    version = reg.add(det, unbound, name="m")
    assert not version.policy_bound
    with pytest.raises(RegistryError, match="not bound to its model"):
        reg.promote("m", version.version)


def test_files_are_accepted_and_a_damaged_index_is_reported(tmp_path, models):
    det, pol = models[0]
    det.save(tmp_path / "model.safetensors")
    pol.save(tmp_path / "policy.safetensors")
    reg = ModelRegistry(tmp_path / "reg")
    version = reg.add(tmp_path / "model.safetensors", tmp_path / "policy.safetensors", name="m")
    assert version.model_hash == pol.model_hash_
    (tmp_path / "reg" / "m" / "index.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not a readable greyanom registry index"):
        reg.versions("m")


def test_concurrent_adds_lose_nothing(tmp_path, models):
    det, pol = models[0]
    errors = []

    def add():
        try:
            ModelRegistry(tmp_path).add(det, pol, name="m")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [v.version for v in ModelRegistry(tmp_path).versions("m")] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    index = json.loads((tmp_path / "m" / "index.json").read_text())
    assert len(index["versions"]) == 4


def test_data_hash():
    a = [np.zeros((2, 2)), b"abc"]
    assert data_hash(a) == data_hash([np.zeros((2, 2)), b"abc"])
    assert data_hash(a) != data_hash([np.zeros((2, 2), dtype=np.float32), b"abc"])
    with pytest.raises(ValueError, match="empty"):
        data_hash([])


def test_rollback_if_production_is_conditional(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    (det, pol), (det2, pol2) = models
    reg.add(det, pol, name="m")
    reg.add(det2, pol2, name="m")
    reg.promote("m", "1.0.0")
    reg.promote("m", "1.1.0")
    with pytest.raises(RegistryError, match="1.0.0 is not in production"):
        reg.rollback("m", if_production="1.0.0")
    assert reg.production("m").version == "1.1.0" and reg.revision("m") == 2
    assert reg.rollback("m", actor="guardrail", if_production="1.1.0").version == "1.0.0"
    with pytest.raises(RegistryError, match="not in production"):  # a second guardrail does not roll back twice
        reg.rollback("m", if_production="1.1.0")


#: A ShapeSignatureDetector file written before its ``level_term`` parameter existed (commit fdfdfed).
OLD_FILE = Path(__file__).parents[1] / "traces" / "data" / "shape_v1_level.safetensors"


def test_a_file_written_before_a_parameter_was_added_registers_with_the_policy_bound_to_it(tmp_path):
    """Loaded, the old file's detector has ``level_term="scaled"`` among its parameters, so it hashes
    differently from the file. A policy bound to the file registers, and the version's model file is the
    file byte for byte, so ``greyanom serve`` (which hashes the file it serves) accepts the pair."""
    loaded = load(OLD_FILE)
    assert model_hash(loaded) != model_hash(OLD_FILE)
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(
        np.random.default_rng(0).normal(size=200), model=OLD_FILE
    )
    reg = ModelRegistry(tmp_path)
    v = reg.add(OLD_FILE, policy, name="etch")
    assert v.model_hash == model_hash(OLD_FILE) == policy.model_hash_
    assert Path(v.model_path).read_bytes() == OLD_FILE.read_bytes()
    assert policy.check_model(v.model_path) == v.model_hash
    assert DecisionPolicy.load(v.policy_path).check_model(v.model_path) == v.model_hash
    with pytest.raises(ValueError, match="calibrated on"):  # the loaded object is another model's bytes
        reg.add(loaded, policy, name="etch")
