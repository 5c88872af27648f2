import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from greyanom.decision import DecisionPolicy, decision_table, min_calibration_size


def _naive_p(cal, s):
    cal = np.asarray(cal)
    return np.array([(1 + np.sum(cal >= x)) / (cal.size + 1) for x in np.atleast_1d(s)])


def test_p_values_match_the_definition(rng):
    cal = rng.normal(size=300)
    cal[:20] = cal[20:40]  # ties
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.01).fit(cal)
    s = np.concatenate([rng.normal(size=200) * 2, cal[:30], [np.inf, -np.inf]])
    np.testing.assert_allclose(policy.p_values(s), _naive_p(cal, s))
    np.testing.assert_allclose(policy.confidence(s), 1 - _naive_p(cal, s))
    assert policy.p_values([np.inf])[0] == pytest.approx(1 / 301)


def test_thresholds_are_the_smallest_scores_with_p_at_most_the_rate(rng):
    cal = rng.normal(size=500)
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(cal)
    for rate, thr in ((0.05, policy.review_threshold_), (0.005, policy.reject_threshold_)):
        assert _naive_p(cal, thr)[0] <= rate
        assert _naive_p(cal, np.nextafter(thr, -np.inf))[0] > rate
    assert policy.reject_threshold_ > policy.review_threshold_
    d = policy.decide([policy.review_threshold_, np.nextafter(policy.review_threshold_, -np.inf),
                       policy.reject_threshold_, np.inf])
    assert d.tolist() == ["REVIEW", "PASS", "REJECT", "REJECT"]
    assert policy.false_review_rate_ <= 0.05
    assert policy.fnr_ is None


@pytest.mark.parametrize("ties", [False, True])
def test_decide_agrees_with_p_values(rng, ties):
    cal = rng.exponential(size=400)
    if ties:
        cal = np.round(cal, 1)
        cal[-50:] = cal.max()  # heavy ties at the top: no calibration score has p <= 0.02
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(cal)
    s = np.concatenate([rng.exponential(size=1000) * 1.5, cal, np.nextafter(cal, np.inf)])
    p = policy.p_values(s)
    d = policy.decide(s)
    np.testing.assert_array_equal(d == "REJECT", p <= 0.02)
    np.testing.assert_array_equal(d != "PASS", p <= 0.1)


def test_rejection_rate_on_fresh_normals_is_within_target():
    # marginal guarantee: average over many calibration draws of P(REJECT | fresh normal)
    rng = np.random.default_rng(7)
    rates_rej, rates_rev = [], []
    for _ in range(200):
        policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(rng.gamma(2.0, size=199))
        d = policy.decide(rng.gamma(2.0, size=500))
        rates_rej.append(np.mean(d == "REJECT"))
        rates_rev.append(np.mean(d != "PASS"))
    # exact expectation with n=199: floor(0.01*200)/200 = 0.01 and floor(0.05*200)/200 = 0.05
    n_total = 200 * 500
    for got, target in ((np.mean(rates_rej), 0.01), (np.mean(rates_rev), 0.05)):
        upper = stats.binom.ppf(0.999, n_total, target) / n_total
        assert got <= upper + 0.003  # calibration draws add variance beyond the binomial
        assert got > target / 2


def test_series_in_series_out(rng):
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.05).fit(rng.normal(size=100))
    s = pd.Series([0.0, 5.0, -1.0], index=pd.Index(["w1", "w2", "w3"], name="wafer"))
    d = policy.decide(s)
    assert isinstance(d, pd.Series) and d.index.equals(s.index)
    assert d["w2"] == "REJECT"
    assert isinstance(policy.p_values(s), pd.Series)
    assert isinstance(policy.confidence(s), pd.Series)
    assert isinstance(policy.decide(s.to_numpy()), np.ndarray)


def test_labelled_tuning_moves_review_threshold_down(rng):
    normal = rng.normal(size=400)
    anomalous = rng.normal(loc=2.0, size=200)
    scores = np.concatenate([normal, anomalous])
    y = np.r_[np.zeros(400, int), np.ones(200, int)]
    plain = DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(scores, y=y)
    assert plain.n_calibration_ == 400
    assert plain.fnr_ == pytest.approx(np.mean(anomalous < plain.review_threshold_))
    tuned = DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(scores, y=y, max_fnr=0.01)
    assert tuned.review_threshold_ < plain.review_threshold_
    assert tuned.fnr_ <= 0.01
    assert tuned.reject_threshold_ == plain.reject_threshold_
    assert tuned.false_review_rate_ == pytest.approx(_naive_p(normal, tuned.review_threshold_)[0])
    assert tuned.false_review_rate_ > 0.05
    # a loose max_fnr never raises the threshold above the conformal one
    loose = DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(scores, y=y, max_fnr=0.9)
    assert loose.review_threshold_ == plain.review_threshold_


def test_min_calibration_size():
    assert min_calibration_size(0.001) == 999
    assert min_calibration_size(0.005) == 199
    assert min_calibration_size(0.05) == 19
    for rate in (0.001, 0.005, 0.01, 0.05, 0.1, 0.3):
        n = min_calibration_size(rate)
        assert 1 / (n + 1) <= rate + 1e-15 and 1 / n > rate


@pytest.mark.parametrize(
    "kwargs, scores, match",
    [
        ({}, [], "empty"),
        ({}, np.r_[np.zeros(300), np.nan], "NaN"),
        ({}, np.r_[np.zeros(300), np.inf], "infinite"),
        ({"review_fpr": 0.01, "reject_fpr": 0.05}, np.zeros(300), "smaller than review_fpr"),
        ({"review_fpr": 0.01, "reject_fpr": 0.01}, np.zeros(300), "smaller than review_fpr"),
        ({"reject_fpr": 0.001}, np.arange(500.0), "at least 999"),
        ({"review_fpr": 1.5}, np.zeros(300), "review_fpr must be in"),
        ({}, np.zeros((20, 20)), "1-D"),
    ],
)
def test_bad_input(kwargs, scores, match):
    with pytest.raises(ValueError, match=match):
        DecisionPolicy(**kwargs).fit(scores)


def test_bad_use(rng):
    with pytest.raises(RuntimeError, match="not fitted"):
        DecisionPolicy().decide([1.0])
    policy = DecisionPolicy().fit(rng.normal(size=300))
    with pytest.raises(ValueError, match="NaN"):
        policy.decide([0.0, np.nan])
    with pytest.raises(TypeError, match="reject_fpr"):
        DecisionPolicy(reject_fpr="small").fit(rng.normal(size=300))
    with pytest.raises(ValueError, match="needs labels"):
        DecisionPolicy().fit(rng.normal(size=300), max_fnr=0.01)
    with pytest.raises(ValueError, match="0 \\(normal\\) and 1"):
        DecisionPolicy().fit(rng.normal(size=300), y=np.full(300, 2))
    with pytest.raises(ValueError, match="labelled 1"):
        DecisionPolicy().fit(rng.normal(size=300), y=np.zeros(300, int), max_fnr=0.01)


def _legacy_doc(policy):
    """A policy as greyanom wrote it before the model-file container: a JSON document, format 1."""
    return {
        "format": "greyanom-decision-policy",
        "format_version": 1,
        "params": {"review_fpr": policy.review_fpr, "reject_fpr": policy.reject_fpr},
        "state": {
            "calibration_scores": policy.calibration_scores_.tolist(),
            "review_threshold": policy.review_threshold_,
            "reject_threshold": policy.reject_threshold_,
            "conformal_review_threshold": policy.conformal_review_threshold_,
            "false_review_rate": policy.false_review_rate_,
            "fnr": policy.fnr_,
        },
    }


def test_save_load_roundtrip_and_refusals(tmp_path, rng):
    scores = np.concatenate([rng.normal(size=300), rng.normal(2, size=50)])
    y = np.r_[np.zeros(300, int), np.ones(50, int)]
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.01).fit(scores, y=y, max_fnr=0.05)
    path = policy.save(tmp_path / "policy.safetensors")
    back = DecisionPolicy.load(path)
    s = rng.normal(size=100) * 2
    np.testing.assert_array_equal(back.decide(s), policy.decide(s))
    np.testing.assert_allclose(back.p_values(s), policy.p_values(s))
    assert back.review_threshold_ == policy.review_threshold_ and back.fnr_ == policy.fnr_
    assert back.review_fpr == 0.1 and back.reject_fpr == 0.01

    doc = _legacy_doc(policy)
    newer = dict(doc, format_version=doc["format_version"] + 1)
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="format version"):
        DecisionPolicy.load(tmp_path / "newer.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a greyanom decision policy"):
        DecisionPolicy.load(tmp_path / "foreign.json")
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01binary")
    with pytest.raises(ValueError, match="not a greyanom decision policy"):
        DecisionPolicy.load(tmp_path / "garbage.json")
    broken = dict(doc, state={k: v for k, v in doc["state"].items() if k != "reject_threshold"})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="damaged"):
        DecisionPolicy.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        DecisionPolicy.load(tmp_path / "absent.json")


def test_decision_table():
    t = decision_table(["PASS", "PASS", "REVIEW", "REJECT", "PASS"], [0, 0, 1, 1, 1], labels={0: "normal", 1: "bad"})
    assert t.loc["normal"].tolist() == [2, 0, 0, 2]
    assert t.loc["bad"].tolist() == [1, 1, 1, 3]
    with pytest.raises(ValueError, match="PASS/REVIEW/REJECT"):
        decision_table(["OK"], [0])


def _assert_same_policy(a, b):
    assert type(b) is DecisionPolicy
    np.testing.assert_array_equal(a.calibration_scores_, b.calibration_scores_)
    for name in ("review_fpr", "reject_fpr", "review_threshold_", "reject_threshold_", "conformal_review_threshold_",
                 "false_review_rate_", "fnr_", "n_calibration_"):
        assert getattr(a, name) == getattr(b, name), name


def test_policy_file_is_the_model_container_and_greyanom_load_reads_it(tmp_path, rng):
    import greyanom
    from greyanom._persist import read_config

    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.01).fit(rng.normal(size=200))
    path = policy.save(tmp_path / "policy.safetensors")
    info = read_config(path)  # the detectors' container: format version, hash, class name
    assert info["class"] == "DecisionPolicy" and info["greyanom_version"] == greyanom.__version__
    assert info["config"]["state"]["review_threshold"] == policy.review_threshold_
    _assert_same_policy(policy, greyanom.load(path))
    with pytest.raises(ValueError, match="device"):
        greyanom.load(path, device="cpu")


def test_policy_state_flows_through_the_container_unchanged(tmp_path, rng, monkeypatch):
    # a field added to the policy's JSON state (e.g. a model binding) is written as given
    from greyanom import _persist

    seen = {}
    real = _persist.save_arrays

    def spy(path, arrays, config):
        seen.update(config)
        return real(path, arrays, config)

    monkeypatch.setattr(_persist, "save_arrays", spy)
    policy = DecisionPolicy().fit(rng.normal(size=200))
    path = policy.save(tmp_path / "p.safetensors")
    assert _persist.read_config(path)["config"]["state"] == seen["state"]
    assert seen["state"]["calibration_scores"] == policy.calibration_scores_.tolist()


def test_json_policy_of_the_first_format_still_loads(tmp_path, rng):
    import greyanom

    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(rng.normal(size=200))
    old = tmp_path / "policy.json"
    old.write_text(json.dumps(_legacy_doc(policy)), encoding="utf-8")
    _assert_same_policy(policy, DecisionPolicy.load(old))
    _assert_same_policy(policy, greyanom.load(old))


def test_policy_save_is_atomic(tmp_path, rng, monkeypatch):
    import os

    path = tmp_path / "policy.safetensors"
    first = DecisionPolicy().fit(rng.normal(size=200))
    first.save(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        DecisionPolicy(review_fpr=0.2).fit(rng.normal(size=300)).save(path)
    assert path.read_bytes() == before  # the old policy is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.safetensors"]  # no temporary file left
    monkeypatch.undo()
    _assert_same_policy(first, DecisionPolicy.load(path))


def test_policy_load_refuses_a_detector_file(tmp_path, rng):
    from greyanom import PCADetector

    det = PCADetector(n_components=2).fit(rng.normal(size=(30, 4)))
    path = det.save(tmp_path / "pca.safetensors")
    with pytest.raises(ValueError, match="not a greyanom decision policy"):
        DecisionPolicy.load(path)


def test_policy_binds_to_the_model_it_was_calibrated_on(tmp_path, rng):
    from greyanom import PCADetector

    X = rng.normal(size=(120, 6))
    det = PCADetector(n_components=2).fit(X[:60])
    other = PCADetector(n_components=3).fit(X[:60])  # another parameter: another model
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(det.score(X[60:]), model=det)
    assert policy.model_class_ == "PCADetector" and policy.model_hash_.startswith("sha256:")
    model_path = det.save(tmp_path / "pca.safetensors")
    # the fitted object and its saved file are the same model
    assert policy.check_model(det) == policy.check_model(model_path) == policy.model_hash_
    back = DecisionPolicy.load(policy.save(tmp_path / "policy.safetensors"))
    assert (back.model_class_, back.model_hash_) == (policy.model_class_, policy.model_hash_)
    assert back.check_model(model_path) == policy.model_hash_
    with pytest.raises(ValueError, match="calibrated on a PCADetector"):
        back.check_model(other)
    # a learned value changed: another hash
    refit = PCADetector(n_components=2).fit(X[1:61])
    with pytest.raises(ValueError, match="not on this PCADetector"):
        back.check_model(refit)


def test_unbound_policies_and_version_1_files(tmp_path, rng):
    from greyanom import PCADetector

    det = PCADetector(n_components=2).fit(rng.normal(size=(60, 4)))
    unbound = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(rng.normal(size=200))
    assert unbound.model_hash_ is None and unbound.model_class_ is None
    with pytest.raises(ValueError, match="records no model"):
        unbound.check_model(det)
    assert unbound.check_model(det, allow_unbound=True).startswith("sha256:")
    # a JSON file written before the binding existed (format version 1) loads unbound
    (tmp_path / "v1.json").write_text(json.dumps(_legacy_doc(unbound)))
    v1 = DecisionPolicy.load(tmp_path / "v1.json")
    assert v1.model_hash_ is None and v1.review_threshold_ == unbound.review_threshold_
    # half a binding is a damaged file
    half = DecisionPolicy().fit(rng.normal(size=200))
    half.model_class_, half.model_hash_ = "PCADetector", None
    with pytest.raises(ValueError, match="damaged"):
        DecisionPolicy.load(half.save(tmp_path / "half.safetensors"))
    with pytest.raises(TypeError, match="fitted greyanom detector"):
        DecisionPolicy().fit(rng.normal(size=300), model=object())


def test_serving_guide_says_how_many_calibration_scores_a_band_needs():
    """The serving guide's counts are min_calibration_size's, and its snippet's case holds."""
    import re
    from pathlib import Path

    import numpy as np
    import pytest

    from greyanom.decision import DecisionPolicy, min_calibration_size

    text = Path(__file__).parents[2].joinpath("docs", "guide", "serving.rst").read_text()
    text = " ".join(text.split())
    counts = re.search(r"gives that number, (\d+) for ``review_fpr=0.05``, (\d+) for 0.01, (\d+) for "
                       r"``reject_fpr=0.005`` and (\d+) for 0.001", text)
    assert counts is not None, "the serving guide no longer states the counts"
    assert [int(c) for c in counts.groups()] == [min_calibration_size(r) for r in (0.05, 0.01, 0.005, 0.001)]
    assert "min_calibration_size(0.005)" in text and "reject_fpr=0.005" in text
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 199 scores"):
        DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(rng.normal(size=63))
    DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(rng.normal(size=213))  # the snippet's 213
    DecisionPolicy(review_fpr=0.05, reject_fpr=1 / 64).fit(rng.normal(size=63))  # "at least 1/(n+1)"
