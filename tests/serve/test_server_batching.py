"""``greyanom serve --max-batch 8`` as a real process on a loopback port: concurrent clients."""

import io
import threading

import numpy as np
import pytest
from PIL import Image
from serve_support import models, normal_images, png_bytes, to_uint8  # noqa: F401
from test_server import _post, _start, _stop

httpx = pytest.importorskip("httpx")

import greyanom  # noqa: E402


def test_concurrent_clients_get_their_own_records_in_shared_batches(models, tmp_path):
    model, _ = models["vae"]
    images = normal_images(8, 60)
    images[3][4:12, 20:28] = 1.0  # one defect: a swapped answer would show
    bodies = [png_bytes(to_uint8(x)) for x in images]
    det = greyanom.load(model)
    expected = [float(det.score((np.asarray(Image.open(io.BytesIO(b)), np.float32) / 255)[None])[0]) for b in bodies]

    proc, url = _start(*models["vae"], tmp_path / "records.db", "--max-batch", "8", "--max-wait-ms", "500")
    try:
        barrier = threading.Barrier(8)
        answers = [None] * 8

        def client(i):
            barrier.wait()
            answers[i] = _post(url, bodies[i], f"CB-{i}", 10 + i)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        for i, r in enumerate(answers):
            answer = r.json()
            assert answer["wafer_id"] == f"CB-{i}" and answer["inspection_point"] == 10 + i
            assert answer["anomaly_score"] == pytest.approx(expected[i], rel=1e-4)
            assert len(answer["latent_vector"]) == 6
            stored = httpx.get(f"{url}/api/v1/inspections", params={"wafer_id": f"CB-{i}"}, timeout=10).json()
            assert [s["id"] for s in stored["inspections"]] == [answer["id"]]
            assert stored["inspections"][0]["anomaly_score"] == answer["anomaly_score"]
            assert stored["inspections"][0]["decision"] == answer["decision"]
            heat = httpx.get(url + answer["heatmap_url"], timeout=10)
            assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["greyanom_batch_queue_depth"] == 0
        assert values["greyanom_batch_size_sum"] == 8
        assert values["greyanom_batch_size_count"] < 8  # the eight clients shared forward passes
        assert values["greyanom_batch_queue_wait_seconds_count"] == 8
        assert "# TYPE greyanom_batch_size histogram" in metrics
    finally:
        _stop(proc)
