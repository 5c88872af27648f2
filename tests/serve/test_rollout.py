"""Serving from a model registry in process: hot swap, shadow, canary, compare, the FNR guardrail."""

import random
import threading

import numpy as np
import pytest
from registry_support import NAME, image_bytes, registry  # noqa: F401 (fixture)
from serve_support import models  # noqa: F401 (fixture)

from fastapi.testclient import TestClient  # noqa: E402

from greyanom.registry import RegistryError, UnknownVersionError  # noqa: E402
from greyanom.serve import create_app  # noqa: E402
from greyanom.serve._auth import LOCAL  # noqa: E402
from greyanom.serve._records import ModelScore  # noqa: E402
from greyanom.serve._rollout import two_proportion_test  # noqa: E402

#: no background tick during a test: the tests call follower.sync and check_guardrail themselves
QUIET = {"registry_poll_s": 3600}


def _app(registry, tmp_path, **kwargs):
    return create_app(registry=registry, name=NAME, db_url=f"sqlite:///{tmp_path / 'records.db'}", **QUIET,
                      **kwargs)


def _scores(service):
    with service.records.session() as session:
        return [row.to_dict() for row in session.query(ModelScore).order_by(ModelScore.id)]


def test_registry_serves_production_and_model_shows_registry_version(registry, tmp_path):
    with TestClient(_app(registry, tmp_path)) as client:
        info = client.get("/api/v1/model").json()
        assert info["registry_version"] == "1.0.0" and info["registry"] == NAME
        assert info["model_hash"] == registry.get(NAME, "1.0.0").model_hash
        r = client.post("/api/v1/inspect", params={"wafer_id": "W", "inspection_point": 1}, content=image_bytes(1))
        assert r.status_code == 200 and r.json()["model_version"] == info["model_version"]
        assert client.get("/healthz").json()["registry_version"] == "1.0.0"
    service = client.app.state.service
    [row] = _scores(service)
    assert (row["registry_version"], row["role"], row["decided"]) == ("1.0.0", "production", True)


def test_a_request_in_flight_finishes_on_the_old_model_and_the_next_sees_the_new(registry, tmp_path):
    app = _app(registry, tmp_path)
    service = app.state.service
    old = service.production
    entered, release = threading.Event(), threading.Event()
    original = old.detector.explain

    def slow_explain(X):  # holds the request inside the old model's forward pass
        entered.set()
        assert release.wait(30)
        return original(X)

    old.detector.explain = slow_explain
    answers = []
    worker = threading.Thread(target=lambda: answers.append(service.inspect(image_bytes(2), "W", 1)))
    worker.start()
    assert entered.wait(30)
    registry.promote(NAME, "1.1.0", actor="bo", reason="better")
    assert service.follower.sync(service.models) is True  # the swap happens while the request is in flight
    new = service.production
    assert new.registry_version == "1.1.0" and new is not old
    after = service.inspect(image_bytes(3), "W", 2)  # the next request runs on the new model at once
    release.set()
    worker.join(30)
    assert answers[0]["model_version"] == old.model_version  # finished on the model it started on
    assert after["model_version"] == new.model_version != old.model_version
    rows = {r["inspection_id"]: r for r in _scores(service)}
    assert rows[answers[0]["id"]]["registry_version"] == "1.0.0"
    assert rows[after["id"]]["registry_version"] == "1.1.0"
    assert service.describe()["registry_version"] == "1.1.0"
    [event] = service.audit.query(action="promote")
    assert (event["actor"], event["role"], event["target"]) == ("bo", "registry", f"model:{NAME}")
    assert event["detail"]["version"] == "1.1.0" and event["detail"]["from"] == "1.0.0"
    assert service.follower.sync(service.models) is False  # nothing changed since


def test_batched_items_of_two_models_are_explained_each_by_its_own(registry, tmp_path):
    service = _app(registry, tmp_path).state.service
    a = service.production
    b = service.follower.load("1.1.0")
    img = [service.decode(image_bytes(s)) for s in (4, 5, 6)]
    out = service.explain_plan([((a,), img[0]), ((b,), img[1]), ((a, b), img[2])])
    assert out[0][0].score == pytest.approx(float(a.detector.score(img[0][None])[0]))
    assert out[1][0].score == pytest.approx(float(b.detector.score(img[1][None])[0]))
    assert [e.score for e in out[2]] == pytest.approx([float(m.detector.score(img[2][None])[0]) for m in (a, b)])


def test_a_rollback_swaps_from_the_warm_set_and_a_failed_load_keeps_the_old_model(registry, tmp_path, monkeypatch):
    from greyanom.serve._served import ServedModel

    service = _app(registry, tmp_path).state.service
    registry.promote(NAME, "1.1.0")
    service.follower.sync(service.models)
    assert set(service.follower.warm) == {"1.0.0", "1.1.0"}  # the rollback chain is loaded

    def no_loading(*args, **kwargs):
        raise AssertionError("a rollback to a warm version must not load")

    monkeypatch.setattr(ServedModel, "from_registry", classmethod(no_loading))
    registry.rollback(NAME, actor="cy")
    assert service.follower.sync(service.models) is True
    assert service.production.registry_version == "1.0.0"
    monkeypatch.undo()
    # a version whose file is damaged: the service keeps serving 1.0.0
    registry.get(NAME, "1.2.0").model_path.write_bytes(b"damaged")
    registry.promote(NAME, "1.2.0")
    assert service.follower.sync(service.models) is False
    assert service.production.registry_version == "1.0.0"
    assert service.inspect(image_bytes(7), "W", 1)["model_version"] == service.production.model_version
    [failed] = service.audit.query(action="swap-failed")
    assert failed["detail"]["version"] == "1.2.0" and failed["detail"]["serving"] == "1.0.0"


def test_shadow_records_both_scores_and_production_decides(registry, tmp_path):
    service = _app(registry, tmp_path, shadow="1.2.0").state.service
    prod, cand = service.production, service.candidate
    answers = [service.inspect(image_bytes(10 + i, defect=i % 2 == 0), "S", i) for i in range(6)]
    rows = _scores(service)
    assert len(rows) == 12
    for answer in answers:
        mine = [r for r in rows if r["inspection_id"] == answer["id"]]
        assert [(r["role"], r["decided"], r["registry_version"]) for r in mine] == [
            ("production", True, "1.0.0"), ("shadow", False, "1.2.0")]
        assert answer["decision"] == mine[0]["decision"] == prod.decide(answer["anomaly_score"])[0]
        assert answer["model_version"] == prod.model_version
        assert mine[1]["decision"] == cand.decide(mine[1]["anomaly_score"])[0] == "PASS"  # the blind one
    assert {a["decision"] for a in answers[::2]} == {"REJECT"}  # production caught the defects
    assert service.models.rollout()["mode"] == "shadow" and service.models.guarded == "1.2.0"
    assert service.audit.query(action="shadow-start")[0]["detail"]["version"] == "1.2.0"


def test_canary_decides_its_seeded_fraction(registry, tmp_path):
    service = _app(registry, tmp_path, canary="1.1.0", canary_fraction=0.3, random_state=7).state.service
    roles = [service.plan().roles[0] for _ in range(2000)]
    expected = random.Random("canary-7")
    assert roles == ["canary" if expected.random() < 0.3 else "production" for _ in range(2000)]
    assert 0.27 < roles.count("canary") / 2000 < 0.33
    answers = [service.inspect(image_bytes(20 + i), "C", i) for i in range(12)]
    rows = {r["inspection_id"]: r for r in _scores(service)}
    assert len(rows) == 12  # one row each: in a canary only the deciding model scores
    for answer in answers:
        row = rows[answer["id"]]
        model = service.candidate if row["role"] == "canary" else service.production
        assert row["decided"] and answer["model_version"] == model.model_version == row["model_version"]
    (tmp_path / "again").mkdir()
    again = _app(registry, tmp_path / "again", canary="1.1.0", canary_fraction=0.3, random_state=7).state.service
    assert [again.plan().roles[0] for _ in range(2000)] == roles  # the same seed, the same requests


@pytest.mark.parametrize("table", [(3, 40, 11, 50), (0, 30, 5, 30), (17, 100, 9, 120), (40, 41, 2, 45)])
def test_two_proportion_test_matches_scipy_chi_square(table):
    from scipy.stats import chi2_contingency

    k1, n1, k2, n2 = table
    result = two_proportion_test(k1, n1, k2, n2)
    chi2, p_value, _, _ = chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
    assert result["z"] ** 2 == pytest.approx(chi2)
    assert result["p_value"] == pytest.approx(p_value)
    assert result["difference"] == pytest.approx(k2 / n2 - k1 / n1)
    assert two_proportion_test(0, 10, 0, 12)["p_value"] == 1.0 and two_proportion_test(1, 0, 1, 3) is None


def test_compare_against_scipy_on_the_recorded_scores(registry, tmp_path):
    from scipy.stats import chi2_contingency, ks_2samp

    with TestClient(_app(registry, tmp_path, shadow="1.2.0")) as client:
        for i in range(16):
            client.post("/api/v1/inspect", params={"wafer_id": "K", "inspection_point": i},
                        content=image_bytes(40 + i, defect=i % 3 == 0))
        out = client.get("/api/v1/compare").json()
    rows = _scores(client.app.state.service)
    prod = [r for r in rows if r["role"] == "production"]
    cand = [r for r in rows if r["role"] == "shadow"]
    assert out["mode"] == "shadow" and out["production"]["n"] == out["candidate"]["n"] == 16
    k1 = sum(r["decision"] == "REJECT" for r in prod)
    k2 = sum(r["decision"] == "REJECT" for r in cand)
    assert out["production"]["reject_rate"] == k1 / 16 and out["candidate"]["reject_rate"] == k2 / 16 == 0
    _, p_value, _, _ = chi2_contingency([[k1, 16 - k1], [k2, 16 - k2]], correction=False)
    assert out["tests"]["reject_rate"]["p_value"] == pytest.approx(p_value)
    assert out["tests"]["reject_rate"]["significant"] == (p_value < 0.01)
    ks = ks_2samp([r["anomaly_score"] for r in prod], [r["anomaly_score"] for r in cand])
    assert out["tests"]["score_ks"]["statistic"] == pytest.approx(ks.statistic)
    assert out["tests"]["score_ks"]["p_value"] == pytest.approx(ks.pvalue)
    latency = [r["latency_ms"] for r in cand]
    assert out["candidate"]["latency_ms"]["p95"] == pytest.approx(np.percentile(latency, 95))


def _review_defects(service, answers):
    for answer in answers:
        service.reviews.add(answer["id"], LOCAL, "defect")


def test_guardrail_waits_for_its_minimum_then_drops_the_shadow(registry, tmp_path):
    service = _app(registry, tmp_path, shadow="1.2.0", min_reviewed_defects=5, max_fnr=0.01).state.service
    defects = [service.inspect(image_bytes(60 + i, defect=True), "G", i) for i in range(5)]
    _review_defects(service, defects[:4])
    result = service.models.check_guardrail()
    assert (result["reviewed_defects"], result["missed"], result["judged"], result["action"]) == (4, 4, False, None)
    assert service.candidate is not None  # 4 reviewed defects: below the stated minimum, no judgement
    _review_defects(service, defects[4:])
    result = service.models.check_guardrail()
    assert result["judged"] and result["exceeded"] and result["fnr"] == 1.0 and result["action"] == "dropped"
    assert service.candidate is None and service.models.guarded is None
    assert registry.production(NAME).version == "1.0.0"  # never promoted: nothing to roll back
    assert service.audit.query(action="guardrail")[0]["actor"] == "guardrail"


def test_guardrail_rolls_back_a_promoted_candidate(registry, tmp_path):
    service = _app(registry, tmp_path, shadow="1.2.0", min_reviewed_defects=3).state.service
    registry.promote(NAME, "1.2.0", actor="ana", reason="shadow looked fine")
    service.follower.sync(service.models)
    assert service.production.registry_version == "1.2.0" and service.candidate is None
    assert service.models.guarded == "1.2.0"  # still watched after its promotion
    missed = [service.inspect(image_bytes(70 + i, defect=True), "R", i) for i in range(3)]
    assert {a["decision"] for a in missed} == {"PASS"}
    _review_defects(service, missed)
    result = service.models.check_guardrail()
    assert result["action"] == "rolled back"
    assert registry.production(NAME).version == "1.0.0"
    assert registry.history(NAME)[-1]["actor"] == "guardrail"
    assert service.production.registry_version == "1.0.0"  # swapped back at once
    assert service.inspect(image_bytes(80, defect=True), "R", 9)["decision"] == "REJECT"
    assert service.audit.query(action="rollback")[0]["actor"] == "guardrail"


def test_rollout_routes_and_roles(registry, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token-0123456789 admin ana\nreview-token-0123456789 review bo\n")
    tokens.chmod(0o600)
    with TestClient(_app(registry, tmp_path, token_file=tokens)) as client:
        admin = {"Authorization": "Bearer admin-token-0123456789"}
        review = {"Authorization": "Bearer review-token-0123456789"}
        assert client.get("/api/v1/compare", headers=review).status_code == 200
        body = {"mode": "canary", "version": "1.1.0", "fraction": 0.2}
        assert client.post("/api/v1/rollout", json=body, headers=review).status_code == 403
        r = client.post("/api/v1/rollout", json=body, headers=admin)
        assert r.status_code == 200 and r.json()["candidate"] == "1.1.0" and r.json()["fraction"] == 0.2
        assert client.get("/api/v1/rollout", headers=review).json()["mode"] == "canary"
        bad = client.post("/api/v1/rollout", json={"mode": "shadow", "version": "9.9.9"}, headers=admin)
        assert bad.status_code == 404 and "9.9.9" in bad.json()["message"]
        assert client.post("/api/v1/rollout", json={**body, "fraction": 1.0}, headers=admin).status_code == 422
        assert client.post("/api/v1/rollout", json={"mode": "off"}, headers=admin).json()["mode"] is None
        assert client.app.state.service.audit.query(action="canary-start")[0]["actor"] == "ana"


def test_bad_input(registry, tmp_path, models):
    with pytest.raises(UnknownVersionError, match="no model named 'nope'"):
        create_app(registry=registry, name="nope", db_url="sqlite://")
    with pytest.raises(UnknownVersionError, match="no version '9.9.9'"):
        _app(registry, tmp_path, shadow="9.9.9")
    with pytest.raises(ValueError, match="not both"):
        create_app(*models["padim"], registry=registry, name=NAME, db_url="sqlite://")
    with pytest.raises(ValueError, match="needs name"):
        create_app(registry=registry, db_url="sqlite://")
    for fraction in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="canary_fraction must be a fraction in"):
            _app(registry, tmp_path, canary="1.1.0", canary_fraction=fraction)
    with pytest.raises(ValueError, match="is the production version"):
        _app(registry, tmp_path, shadow="1.0.0")
    with pytest.raises(ValueError, match="serve with registry and name"):
        create_app(*models["padim"], shadow="1.1.0", db_url="sqlite://")
    with pytest.raises(RegistryError, match="not bound"):
        registry.promote(NAME, "1.3.0")
    with pytest.raises(ValueError, match="unbound|records no model"):  # nor served as a candidate
        _app(registry, tmp_path, shadow="1.3.0")


def test_a_swap_during_a_micro_batch_keeps_each_request_on_its_model(registry, tmp_path):
    import asyncio

    import httpx

    app = _app(registry, tmp_path, max_batch=4, max_wait_ms=0)
    service = app.state.service
    old = service.production
    entered, release = threading.Event(), threading.Event()
    original = old.detector.explain

    def slow_explain(X):
        entered.set()
        assert release.wait(30)
        return original(X)

    old.detector.explain = slow_explain

    async def run():
        transport = httpx.ASGITransport(app=app)
        params = {"wafer_id": "B", "inspection_point": 1}
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                first = asyncio.create_task(client.post("/api/v1/inspect", params=params, content=image_bytes(90)))
                assert await asyncio.to_thread(entered.wait, 30)  # the old model's batch is running
                registry.promote(NAME, "1.1.0")
                await asyncio.to_thread(service.follower.sync, service.models)
                second = asyncio.create_task(client.post("/api/v1/inspect", params=params, content=image_bytes(91)))
                await asyncio.sleep(0.2)
                release.set()
                return (await first).json(), (await second).json()
        finally:
            await app.state.batched.close()

    first, second = asyncio.run(run())
    assert first["model_version"] == old.model_version
    assert second["model_version"] == service.production.model_version != old.model_version


def test_an_older_records_database_gets_the_model_scores_table(tmp_path):
    import sqlite3

    from greyanom.serve import Records

    db = tmp_path / "old.db"
    Records(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:  # a database from before model_scores existed
        conn.execute("DROP TABLE model_scores")
    records = Records(f"sqlite:///{db}")
    row = {"model_version": "m", "registry_version": "1.0.0", "role": "production", "decided": True,
           "anomaly_score": 0.5, "decision": "PASS", "latency_ms": 1.0}
    rec = records.add(wafer_id="W", inspection_point=1, anomaly_score=0.5, decision="PASS", confidence=0.1,
                      model_version="m", policy_version="p", inference_time_ms=1.0, scores=[row])
    records.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT inspection_id, role FROM model_scores").fetchall() == [(rec["id"], "production")]
