"""The inspection service as a real uvicorn process on a loopback port (``greyanom serve``)."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import models, normal_images, png_bytes, to_uint8  # noqa: F401

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(model, policy, db, *extra, timeout=90):
    """Start ``python -m greyanom serve`` of a model file on a free loopback port; wait for /healthz."""
    return _launch(["--model", str(model), "--policy", str(policy)], db, *extra, timeout=timeout)


def _launch(source, db, *extra, timeout=90):
    """Start ``python -m greyanom serve SOURCE...`` (model and policy, or a registry) on a free loopback port."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "greyanom", "serve", *source,
         "--db", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), *extra],
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
    _stop(proc)
    raise RuntimeError("greyanom serve did not answer /healthz in time")


def _stop(proc):
    """Stop the server (SIGTERM, then SIGKILL); return what it wrote."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read().decode("utf-8", "replace")
    proc.stdout.close()
    return output


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    db = tmp_path_factory.mktemp("server") / "records.db"
    proc, url = _start(*models["padim"], db)
    yield url, db
    _stop(proc)


def _post(url, body, wafer, point):
    return httpx.post(f"{url}/api/v1/inspect", params={"wafer_id": wafer, "inspection_point": point},
                      content=body, headers={"content-type": "application/octet-stream"}, timeout=30)


def test_inspect_over_http(server):
    url, _ = server
    body = png_bytes(to_uint8(normal_images(1, 7)[0]))
    r = _post(url, body, "HTTP-1", 3)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["decision"] in ("PASS", "REVIEW", "REJECT")
    heat = httpx.get(url + answer["heatmap_url"], timeout=10)
    assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    stored = httpx.get(f"{url}/api/v1/inspections", params={"wafer_id": "HTTP-1"}, timeout=10).json()
    assert stored["inspections"][0]["id"] == answer["id"]
    bad = _post(url, b"not an image", "HTTP-1", 4)
    assert bad.status_code == 422 and bad.json()["error"] == "not_an_image"
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'greyanom_http_request_duration_seconds_count{method="POST",route="/api/v1/inspect",status="200"}' in metrics


def test_every_answered_inspection_survives_kill_9(models, tmp_path):
    """Answers, then ``kill -9`` with no warning: every answered id is a row after a restart."""
    db = tmp_path / "records.db"
    proc, url = _start(*models["padim"], db)
    bodies = [png_bytes(to_uint8(x)) for x in normal_images(4, 11)]
    answered = []
    try:
        for i in range(12):
            r = _post(url, bodies[i % 4], "KILL", i)
            assert r.status_code == 200
            answered.append(r.json()["id"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with sqlite3.connect(db) as conn:
        rows = {row[0] for row in conn.execute("SELECT id FROM inspections WHERE wafer_id = 'KILL'")}
    assert set(answered) <= rows
    proc, url = _start(*models["padim"], db)  # a restart serves on the same database
    try:
        r = _post(url, bodies[0], "KILL", 99)
        assert r.status_code == 200 and r.json()["id"] > max(answered)
        stored = httpx.get(f"{url}/api/v1/inspections", params={"wafer_id": "KILL"}, timeout=10).json()
        assert {s["id"] for s in stored["inspections"]} >= set(answered)
    finally:
        _stop(proc)


def _workers(pid):
    """Pids of the uvicorn worker processes (multiprocessing spawn children) of ``pid``."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:  # exited meanwhile
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
def test_two_workers_survive_one_killed_worker(models, tmp_path):
    proc, url = _start(*models["padim"], tmp_path / "records.db", "--workers", "2")
    try:
        body = png_bytes(to_uint8(normal_images(1, 3)[0]))
        assert _post(url, body, "WK", 0).status_code == 200
        workers = _workers(proc.pid)
        assert len(workers) >= 2
        os.kill(workers[0], signal.SIGKILL)
        for i in range(1, 6):  # the other worker keeps answering while uvicorn restarts the dead one
            r = _post(url, body, "WK", i)
            assert r.status_code == 200
        # the metrics of both workers (the killed one's counters included) are aggregated
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        decided = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("greyanom_decisions_total{")]
        assert sum(decided) == 6
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # uvicorn replaces the dead worker
            alive = [p for p in _workers(proc.pid) if p != workers[0]]
            if len(alive) >= 2:
                break
            time.sleep(0.5)
        assert len(alive) >= 2
    finally:
        _stop(proc)


def test_token_file_guards_the_real_server_and_no_token_is_logged(models, tmp_path):
    token = "tok-server-admin-0123456789abcdef"
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{token} admin operator\ntok-server-inspect-0123456789 inspect camera\n")
    tokens.chmod(0o600)
    proc, url = _start(*models["padim"], tmp_path / "records.db", "--token-file", str(tokens), "--access-log")
    try:
        body = png_bytes(to_uint8(normal_images(1, 7)[0]))
        assert _post(url, body, "T", 1).status_code == 401
        r = httpx.post(f"{url}/api/v1/inspect", params={"wafer_id": "T", "inspection_point": 1}, content=body,
                       headers={"Authorization": "Bearer tok-server-inspect-0123456789"}, timeout=30)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert metrics.status_code == 200 and "greyanom_review_reviewed_fraction" in metrics.text
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 401
    finally:
        output = _stop(proc)
    assert '"POST /api/v1/inspect?wafer_id=T&inspection_point=1 HTTP/1.1" 200' in output  # the access log ran
    assert token not in output and "tok-server-inspect" not in output
