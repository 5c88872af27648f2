"""Micro-batching in the app, in process: concurrent requests through httpx's ASGI transport."""

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image
from serve_support import models, normal_images, png_bytes, to_uint8  # noqa: F401

httpx = pytest.importorskip("httpx")

import greyanom  # noqa: E402
from greyanom.serve import create_app  # noqa: E402

INSPECT = "/api/v1/inspect"


def _bodies(n, seed):
    images = normal_images(n, seed)
    images[1][8:24, 8:24] = 1.0  # one defect among them: answers must not be swapped
    return [png_bytes(to_uint8(x)) for x in images]


async def _post_all(app, requests):
    """POST every ``(body, wafer_id, point)`` at once; the responses in order."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(
                client.post(INSPECT, params={"wafer_id": w, "inspection_point": p}, content=b)
                for b, w, p in requests
            ))
    finally:
        if app.state.batched is not None:
            await app.state.batched.close()


def _metric(app, name, labels=None):
    return app.state.service.metrics.registry.get_sample_value(name, labels or {})


def _expected_scores(model_path, bodies):
    det = greyanom.load(model_path)
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32) / 255 for b in bodies])
    return np.array([det.score(x[None])[0] for x in images])


@pytest.mark.parametrize("name", ["vae", "padim"])
def test_concurrent_requests_share_a_batch_and_keep_their_own_answers(models, tmp_path, name):
    model, policy = models[name]
    app = create_app(model, policy, db_url=f"sqlite:///{tmp_path / 'r.db'}", max_batch=8, max_wait_ms=1000)
    bodies = _bodies(8, 40)
    requests = [(b, f"B-{i}", 100 + i) for i, b in enumerate(bodies)]
    responses = asyncio.run(_post_all(app, requests))
    answers = [r.json() for r in responses]
    assert [r.status_code for r in responses] == [200] * 8, answers
    # fewer forward passes than requests: at least one batch held several images
    assert _metric(app, "greyanom_batch_size_count") < 8
    assert _metric(app, "greyanom_batch_size_sum") == 8
    expected = _expected_scores(model, bodies)
    for (_, wafer, point), answer, score in zip(requests, answers, expected):
        assert answer["wafer_id"] == wafer and answer["inspection_point"] == point
        assert answer["anomaly_score"] == pytest.approx(score, rel=1e-4)
        assert answer["inference_time_ms"] > 0
    assert answers[1]["anomaly_score"] == max(a["anomaly_score"] for a in answers)  # the defect
    assert len({a["id"] for a in answers}) == 8
    # the same answer fields as without batching, and one committed record per answer
    assert all(set(a) == set(answers[0]) for a in answers)
    assert ("latent_vector" in answers[0]) == (name == "vae")
    stored = {s["id"]: s for s in app.state.service.records.query(limit=100)}
    for answer in answers:
        row = stored[answer["id"]]
        assert (row["wafer_id"], row["inspection_point"], row["anomaly_score"], row["decision"]) == (
            answer["wafer_id"], answer["inspection_point"], answer["anomaly_score"], answer["decision"])
    # every request is a drift observation and a decision
    assert len(app.state.service.production._window) == 8
    decided = sum(_metric(app, "greyanom_decisions_total", {"decision": d}) for d in ("PASS", "REVIEW", "REJECT"))
    assert decided == 8


def test_batched_answer_equals_the_unbatched_answer(models, tmp_path):
    model, policy = models["vae"]
    body = _bodies(2, 41)[0]
    one = create_app(model, policy, db_url=f"sqlite:///{tmp_path / 'a.db'}")
    eight = create_app(model, policy, db_url=f"sqlite:///{tmp_path / 'b.db'}", max_batch=8, max_wait_ms=0)
    a = asyncio.run(_post_all(one, [(body, "EQ", 1)]))[0].json()
    b = asyncio.run(_post_all(eight, [(body, "EQ", 1)]))[0].json()
    assert set(a) == set(b)
    for key in ("id", "wafer_id", "inspection_point", "decision", "heatmap_url", "model_version"):
        assert a[key] == b[key]
    assert a["anomaly_score"] == pytest.approx(b["anomaly_score"], rel=1e-6)
    np.testing.assert_allclose(a["latent_vector"], b["latent_vector"], rtol=1e-5, atol=1e-7)
    assert one.state.batched is None and _metric(one, "greyanom_batch_size_sum") == 1


def test_bad_image_and_failing_model_item_fail_alone(models, tmp_path, monkeypatch):
    model, policy = models["padim"]
    app = create_app(model, policy, db_url=f"sqlite:///{tmp_path / 'r.db'}", max_batch=8, max_wait_ms=1000)
    det = app.state.service.detector
    original = det.explain

    def explain(X):  # the model chokes on one particular image (all pixels bright)
        if (np.asarray(X).reshape(len(X), -1).min(axis=1) > 0.9).any():
            raise RuntimeError("boom")
        return original(X)

    monkeypatch.setattr(det, "explain", explain)
    bodies = _bodies(6, 42)
    poison = png_bytes(to_uint8(np.full(normal_images(1, 0)[0].shape, 0.95)))
    requests = [(b, "BAD", i) for i, b in enumerate(bodies)] + [(b"not an image", "BAD", 90), (poison, "BAD", 91)]
    responses = asyncio.run(_post_all(app, requests))
    status = [r.status_code for r in responses]
    assert status == [200] * 6 + [422, 500]
    assert responses[6].json()["error"] == "not_an_image"
    assert responses[7].json()["error"] == "internal_error" and "boom" not in responses[7].text
    assert [r.json()["inspection_point"] for r in responses[:6]] == list(range(6))
    assert len(app.state.service.records.query(wafer_id="BAD")) == 6  # no record for the failures


def test_full_queue_answers_503_queue_full(models, tmp_path, monkeypatch):
    model, policy = models["padim"]
    app = create_app(model, policy, db_url=f"sqlite:///{tmp_path / 'r.db'}", max_batch=2, max_wait_ms=0,
                     max_queue=2)
    det = app.state.service.detector
    original, gate, entered = det.explain, threading.Event(), threading.Event()

    def slow_explain(X):
        entered.set()
        assert gate.wait(30)
        return original(X)

    monkeypatch.setattr(det, "explain", slow_explain)
    body = _bodies(2, 43)[0]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            def post(point):
                return asyncio.ensure_future(
                    client.post(INSPECT, params={"wafer_id": "Q", "inspection_point": point}, content=body))

            first = post(0)
            while not entered.is_set():  # the first image is in the model
                await asyncio.sleep(0.01)
            queued = [post(1), post(2)]
            while app.state.batched.batcher.depth < 2:
                await asyncio.sleep(0.01)
            refused = await post(3)
            depth = _metric(app, "greyanom_batch_queue_depth")
            gate.set()
            done = await asyncio.gather(first, *queued)
        await app.state.batched.close()
        return refused, depth, done

    refused, depth, done = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.json()["error"] == "queue_full"
    assert refused.headers["retry-after"] == "1" and "--max-queue" in refused.json()["message"]
    assert depth == 2
    assert [r.status_code for r in done] == [200, 200, 200]
    assert _metric(app, "greyanom_rejected_requests_total", {"reason": "queue_full"}) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_batch": 0}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms"), ({"max_queue": 0}, "max_queue")],
)
def test_create_app_names_bad_batch_options(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_app(*models["padim"], db_url="sqlite://", **kwargs)
