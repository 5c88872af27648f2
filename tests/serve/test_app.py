"""The inspection service in process (FastAPI TestClient): contract, records, metrics, bad input."""

import io

import numpy as np
import pytest
from PIL import Image
from serve_support import SIZE, defect_png, models, normal_images, normal_png, png_bytes, to_uint8  # noqa: F401

from fastapi.testclient import TestClient  # noqa: E402

import greyanom  # noqa: E402
from greyanom.decision import DecisionPolicy  # noqa: E402
from greyanom.serve import create_app  # noqa: E402

INSPECT = "/api/v1/inspect"


def _client(models, name, tmp_path, **kwargs):
    model, policy = models[name]
    kwargs.setdefault("db_url", f"sqlite:///{tmp_path / 'records.db'}")
    return TestClient(create_app(model, policy, **kwargs), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def vae_client(models, tmp_path_factory):
    with _client(models, "vae", tmp_path_factory.mktemp("vae"), drift_window=20, drift_every=5) as client:
        yield client


@pytest.fixture(scope="module")
def padim_client(models, tmp_path_factory):
    with _client(models, "padim", tmp_path_factory.mktemp("padim")) as client:
        yield client


def _inspect(client, body, wafer="W1", point=1, **params):
    return client.post(INSPECT, params={"wafer_id": wafer, "inspection_point": point, **params}, content=body)


def test_inspect_contract_vae(vae_client, models, normal_png):
    r = _inspect(vae_client, normal_png, wafer="WF-2024-001234", point=42)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "wafer_id", "inspection_point", "anomaly_score", "decision", "confidence",
                         "heatmap_url", "latent_vector", "model_version", "inference_time_ms"}
    assert body["wafer_id"] == "WF-2024-001234" and body["inspection_point"] == 42
    assert body["decision"] in ("PASS", "REVIEW", "REJECT")
    assert 0 <= body["confidence"] <= 1 and body["inference_time_ms"] > 0
    assert len(body["latent_vector"]) == 6
    # the score is the detector's score of the decoded 8-bit image, the decision the policy's
    det = greyanom.load(models["vae"][0])
    policy = DecisionPolicy.load(models["vae"][1])
    image = np.asarray(Image.open(io.BytesIO(normal_png)), np.float32) / 255
    expected = float(det.score(image[None])[0])
    assert body["anomaly_score"] == pytest.approx(expected, rel=1e-5)
    assert body["decision"] == policy.decide([expected])[0]
    assert body["confidence"] == pytest.approx(float(policy.confidence([expected])[0]))
    np.testing.assert_allclose(body["latent_vector"], det.explain(image[None]).latent_mean[0], rtol=1e-4, atol=1e-6)


def test_model_version_is_content_hash(vae_client, models):
    from greyanom._persist import file_sha256

    info = vae_client.get("/api/v1/model").json()
    digest = file_sha256(models["vae"][0])
    assert info["model_version"] == f"sha256:{digest[:16]}+greyanom-{greyanom.__version__}"
    policy = DecisionPolicy.load(models["vae"][1])
    assert info["class"] == "ConvVAEDetector" and info["image_shape"] == [SIZE, SIZE]
    assert info["thresholds"]["review"] == policy.review_threshold_
    assert info["thresholds"]["reject"] == policy.reject_threshold_
    assert info["latent_dim"] == 6


def test_padim_has_no_latent_and_flags_a_defect(padim_client, normal_png, defect_png):
    good = _inspect(padim_client, normal_png).json()
    bad = _inspect(padim_client, defect_png).json()
    assert "latent_vector" not in good
    assert bad["anomaly_score"] > good["anomaly_score"]
    assert bad["decision"] == "REJECT"


def test_heatmap_is_a_coloured_png_on_the_training_scale(padim_client, normal_png, defect_png):
    from PIL import Image

    maps = []
    for body in (normal_png, defect_png):
        url = _inspect(padim_client, body).json()["heatmap_url"]
        r = padim_client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        im = Image.open(io.BytesIO(r.content))
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        maps.append(np.asarray(im, dtype=np.float64))
    # one fixed scale: the defect's map is brighter than the normal image's, not stretched alike
    assert maps[1].mean() > maps[0].mean() + 10


def test_records_are_committed_and_queryable(padim_client, normal_png, tmp_path):
    answers = [_inspect(padim_client, normal_png, wafer="REC-1", point=p).json() for p in range(3)]
    stored = padim_client.get("/api/v1/inspections", params={"wafer_id": "REC-1"}).json()["inspections"]
    assert [s["id"] for s in stored] == [a["id"] for a in reversed(answers)]
    for s, a in zip(reversed(stored), answers):
        assert s["anomaly_score"] == a["anomaly_score"] and s["decision"] == a["decision"]
        assert s["model_version"] == a["model_version"] and s["heatmap_url"] == a["heatmap_url"]
        assert s["created_at"].endswith("+00:00")
    # a second connection sees the rows: they were committed, not only flushed
    from sqlalchemy import create_engine, text

    url = padim_client.app.state.service.records.url
    with create_engine(url).connect() as conn:
        n = conn.execute(text("SELECT COUNT(*) FROM inspections WHERE wafer_id = 'REC-1'")).scalar()
    assert n == 3


def test_metrics_exposition(vae_client, normal_png):
    for point in range(6):
        assert _inspect(vae_client, normal_png, wafer="MET", point=point).status_code == 200
    r = vae_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("greyanom_http_request_duration_seconds_bucket", "greyanom_anomaly_score_bucket",
                 'greyanom_decisions_total{decision="PASS"}', "greyanom_score_drift_p_value",
                 "greyanom_inference_duration_seconds_count", "greyanom_model_info", "greyanom_reject_rate"):
        assert name in text, name
    decided = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("greyanom_decisions_total{"))
    count = [line for line in text.splitlines() if line.startswith("greyanom_anomaly_score_count")]
    assert decided == float(count[0].split()[-1]) >= 6


def test_drift_gauge_is_the_monitor_on_recent_scores(models, tmp_path):
    from greyanom.drift import ScoreDriftMonitor

    with _client(models, "vae", tmp_path, drift_window=10, drift_every=5) as client:
        scores = []
        for seed in range(10):
            image = normal_images(1, 200 + seed)[0] + 0.15  # brighter than training: a shift
            scores.append(_inspect(client, png_bytes(to_uint8(image)), point=seed).json()["anomaly_score"])
        gauge = [line for line in client.get("/metrics").text.splitlines()
                 if line.startswith("greyanom_score_drift_p_value ")]
        policy = DecisionPolicy.load(models["vae"][1])
        expected = ScoreDriftMonitor(policy.calibration_scores_, alpha=0.01).test(scores)
        assert float(gauge[0].split()[-1]) == pytest.approx(expected.p_value)
        assert expected.p_value < 0.01  # the shifted images did drift


def _blank_png(height, width):
    """A valid 8-bit grayscale PNG of zeros, built without an image library (small compressed)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("empty", 400, "empty_body"),
        ("text", 422, "not_an_image"),
        ("truncated", 422, "damaged_image"),
        ("colour", 422, "not_grayscale"),
        ("transparent", 422, "not_grayscale"),
        ("wrong_size", 422, "wrong_size"),
        ("jpeg", 415, "unsupported_format"),
        ("multipage", 422, "multi_page"),
        ("float_out_of_range", 422, "bad_range"),
        ("multipart", 422, "not_an_image"),
        ("huge_png", 422, "too_large"),
    ],
)
def test_bad_images_are_json_errors(padim_client, normal_png, case, status, code):
    from PIL import Image

    gray = to_uint8(normal_images(1, 5)[0])
    if case == "empty":
        body = b""
    elif case == "text":
        body = b"hello, this is not an image"
    elif case == "truncated":
        body = normal_png[: len(normal_png) // 2]
    elif case == "colour":
        rgb = np.stack([gray, gray // 2, gray], axis=-1)
        body = png_bytes(rgb)
    elif case == "transparent":
        body = png_bytes(np.stack([gray, gray, gray, np.full_like(gray, 10)], axis=-1))
    elif case == "wrong_size":
        body = png_bytes(to_uint8(np.full((SIZE * 2, SIZE), 0.5)))
    elif case == "jpeg":
        body = png_bytes(gray, fmt="JPEG")
    elif case == "multipage":
        buf = io.BytesIO()
        frames = [Image.fromarray(gray), Image.fromarray(gray)]
        frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
        body = buf.getvalue()
    elif case == "multipart":  # curl -F file=@image.png
        body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="w.png"\r\n'
                b"Content-Type: image/png\r\n\r\n" + normal_png + b"\r\n--xyz--\r\n")
    elif case == "huge_png":
        body = _blank_png(10000, 10000)
    else:
        body = png_bytes(np.full((SIZE, SIZE), 3.0, np.float32), fmt="TIFF")
    r = _inspect(padim_client, body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["message"]
    if case == "multipart":
        assert "--data-binary" in r.json()["message"]
    if case == "huge_png":
        assert "10000x10000" in r.json()["message"]
    assert _inspect(padim_client, normal_png).status_code == 200  # still answering


@pytest.mark.parametrize("case", ["gray_as_rgb", "uint16_png", "tiff", "float_tiff"])
def test_accepted_encodings_score_like_the_8bit_png(padim_client, normal_png, case):
    gray = to_uint8(normal_images(1, 99)[0])
    if case == "gray_as_rgb":
        body = png_bytes(np.stack([gray] * 3, axis=-1))
    elif case == "uint16_png":
        body = png_bytes(gray.astype(np.uint16) * 257)  # 257 * v / 65535 == v / 255
    elif case == "tiff":
        body = png_bytes(gray, fmt="TIFF")
    else:
        body = png_bytes(gray.astype(np.float32) / 255, fmt="TIFF")
    reference = _inspect(padim_client, normal_png).json()["anomaly_score"]
    r = _inspect(padim_client, body)
    assert r.status_code == 200, r.text
    assert r.json()["anomaly_score"] == pytest.approx(reference, rel=1e-5)


def test_resize_option(models, tmp_path):
    big = png_bytes(to_uint8(np.full((SIZE * 2, SIZE * 2), 0.5)))
    with _client(models, "padim", tmp_path, resize=True) as client:
        assert _inspect(client, big).status_code == 200
        assert client.get("/api/v1/model").json()["resize"] is True


def test_body_over_limit_is_413(models, tmp_path, normal_png):
    with _client(models, "padim", tmp_path, max_body_bytes=len(normal_png) - 1) as client:
        r = _inspect(client, normal_png)
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        # without a Content-Length header too (a chunked upload)
        r = client.post(INSPECT, params={"wafer_id": "W", "inspection_point": 0},
                        content=iter([normal_png[:100], normal_png[100:]]))
        assert r.status_code == 413


@pytest.mark.parametrize(
    "params",
    [{"inspection_point": 1}, {"wafer_id": "W"}, {"wafer_id": "W", "inspection_point": -1},
     {"wafer_id": "W", "inspection_point": "x"}, {"wafer_id": "", "inspection_point": 1},
     {"wafer_id": "W" * 200, "inspection_point": 1}],
)
def test_bad_parameters_are_422(padim_client, normal_png, params):
    r = padim_client.post(INSPECT, params=params, content=normal_png)
    assert r.status_code == 422 and r.json()["error"] == "bad_parameters" and r.json()["message"]


def test_unknown_routes_and_methods_are_json(padim_client):
    r = padim_client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = padim_client.get(INSPECT)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = padim_client.get("/api/v1/heatmaps/999999.png")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = padim_client.get("/api/v1/heatmaps/abc.png")
    assert r.status_code == 422


def test_model_failure_is_500_and_the_service_keeps_answering(models, tmp_path, normal_png, monkeypatch):
    with _client(models, "padim", tmp_path) as client:
        service = client.app.state.service
        original = service.detector.explain

        def broken(X):
            raise RuntimeError("boom")

        monkeypatch.setattr(service.detector, "explain", broken)
        r = _inspect(client, normal_png)
        assert r.status_code == 500 and r.json()["error"] == "internal_error" and "boom" not in r.text
        monkeypatch.setattr(service.detector, "explain", original)
        assert _inspect(client, normal_png).status_code == 200
        assert client.get("/api/v1/inspections").json()["inspections"][0]["id"] == 1  # the failure left no row


def test_healthz(padim_client):
    r = padim_client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_import_greyanom_does_not_import_the_serve_stack():
    import subprocess
    import sys

    code = ("import sys, greyanom; bad = [m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'prometheus_client') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_database_failure_is_500_without_an_answer(models, tmp_path, normal_png, monkeypatch):
    """No answer without a committed record: a failing commit is an error, not a decision."""
    from sqlalchemy.exc import OperationalError

    with _client(models, "padim", tmp_path) as client:
        records = client.app.state.service.records

        def down(**fields):
            raise OperationalError("INSERT", {}, Exception("database is locked"))

        monkeypatch.setattr(records, "add", down)
        r = _inspect(client, normal_png)
        assert r.status_code == 500 and "decision" not in r.json()
        metrics = client.get("/metrics").text
        assert 'greyanom_rejected_requests_total{reason="internal_error"} 1.0' in metrics
        assert 'greyanom_decisions_total{decision="PASS"} 0.0' in metrics
