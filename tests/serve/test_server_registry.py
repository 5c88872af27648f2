"""``greyanom serve --registry`` as a real process on loopback: a promotion is picked up without restart."""

import os
import signal
import subprocess
import sys
import time

import pytest
from registry_support import NAME, image_bytes, registry  # noqa: F401 (fixture)
from test_server import SRC, _free_port, _stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def _start_registry(root, db, *extra, timeout=90):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "greyanom", "serve", "--registry", str(root), "--name", NAME,
         "--db", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--registry-poll-s", "0.2", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"greyanom serve exited with {proc.returncode}:\n{proc.stdout.read().decode()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("greyanom serve did not answer /healthz in time")


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
