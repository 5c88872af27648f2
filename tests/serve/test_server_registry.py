"""``greyanom serve --registry`` as a real process on loopback: a promotion is picked up without restart."""

import time

import pytest
from registry_support import NAME, image_bytes, registry  # noqa: F401 (fixture)
from test_server import _launch, _stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def _start_registry(root, db, *extra, timeout=90):
    return _launch(["--registry", str(root), "--name", NAME], db, "--registry-poll-s", "0.2", *extra, timeout=timeout)


def _inspect(url, seed, point):
    r = httpx.post(f"{url}/api/v1/inspect", params={"wafer_id": "SRV", "inspection_point": point},
                   content=image_bytes(seed), headers={"content-type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_promotion_and_rollback_are_picked_up_without_restart(registry, tmp_path):
    proc, url = _start_registry(registry.root, tmp_path / "records.db")
    try:
        before = httpx.get(f"{url}/api/v1/model", timeout=10).json()
        assert before["registry_version"] == "1.0.0"
        first = _inspect(url, 1, 1)
        registry.promote(NAME, "1.1.0", actor="ana", reason="test")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/api/v1/model", timeout=10).json()["registry_version"] != "1.1.0":
            assert time.monotonic() < deadline, "the promotion was not picked up within 30 s"
            time.sleep(0.1)
        second = _inspect(url, 2, 2)
        assert second["model_version"] != first["model_version"] == before["model_version"]
        registry.rollback(NAME, actor="bo")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/api/v1/model", timeout=10).json()["registry_version"] != "1.0.0":
            assert time.monotonic() < deadline, "the rollback was not picked up within 30 s"
            time.sleep(0.1)
        assert _inspect(url, 3, 3)["model_version"] == first["model_version"]
        events = httpx.get(f"{url}/api/v1/audit", timeout=10).json()["events"]
        assert [(e["action"], e["actor"]) for e in events if e["target"] == f"model:{NAME}"][:2] == [
            ("rollback", "bo"), ("promote", "ana")]
        assert proc.poll() is None  # the same process throughout
    finally:
        _stop(proc)
