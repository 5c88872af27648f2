"""Bounded loopback load test of the inspection service (``greyanom serve``), and a kill -9 check.

For a PaDiM and a ConvVAE model on 256x256 synthetic wafer images (the case study's size):

1. train, score held-out normal images, fit a DecisionPolicy, save both;
2. time the bare ``detector.score`` of one image (the model alone, torch threads = 1);
3. start ``python -m greyanom serve`` on a free 127.0.0.1 port (one worker, SQLite records)
   and send ``--requests`` inspections from 1 and from 8 concurrent clients (httpx, keep-alive),
   recording end-to-end latency per request, throughput and errors;
4. time the bare score again (the model's latency is bracketed around the load);
5. kill -9 the server in the middle of 8-client load, restart it on the same database and
   check that every inspection that was answered 200 is a row.

All traffic goes to 127.0.0.1. Usage::

    PYTHONPATH=src python benchmarks/serve_load.py [--requests 1000] [--models padim,vae] [--json out.json]

The figures depend on the machine and on what else runs on it; the script prints the CPU
count and the load average so that the numbers can be read in context.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(ms):
    a = np.asarray(ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)} | {"mean": float(a.mean())}


def _start(model, policy, db, workers=1):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "greyanom", "serve", "--model", str(model), "--policy", str(policy),
         "--db", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)


def _load(url, bodies, n_requests, n_clients, *, wafer="LOAD", stop=None):
    """Send ``n_requests`` inspections from ``n_clients`` threads; per-request results."""
    import httpx

    counter = iter(range(n_requests))
    lock = threading.Lock()
    results = []

    def client():
        with httpx.Client(base_url=url, timeout=30) as http:
            while stop is None or not stop.is_set():
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/v1/inspect", params={"wafer_id": wafer, "inspection_point": i},
                                  content=bodies[i % len(bodies)], headers={"content-type": "application/octet-stream"})
                    ok, status = r.status_code == 200, r.status_code
                    answer = r.json() if ok else {}
                    rid, server_ms = answer.get("id"), answer.get("inference_time_ms")
                except httpx.HTTPError as exc:
                    ok, rid, status, server_ms = False, None, type(exc).__name__, None
                with lock:
                    results.append((ok, rid, status, 1000 * (time.perf_counter() - t0), server_ms))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
        for f in [pool.submit(client) for _ in range(n_clients)]:
            f.result()
    return results, time.perf_counter() - t0


def _bare_score_ms(det, images, n):
    det.score(images[:1])  # warm-up
    out = []
    for i in range(n):
        x = images[i % len(images)][None]
        t0 = time.perf_counter()
        det.score(x)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def _train(name, data, folder):
    import greyanom
    from greyanom.decision import DecisionPolicy

    if name == "padim":
        det = greyanom.PaDiMDetector(n_jobs=1, random_state=0)
    else:  # the case study's architecture at 256x256; a few epochs suffice to time it
        det = greyanom.ConvVAEDetector(input_space="pixels", max_epochs=3, early_stopping_patience=None, n_jobs=1, random_state=0)
    t0 = time.perf_counter()
    det.fit(data["train"])
    fit_s = time.perf_counter() - t0
    calib = det.score(data["calib"])
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(calib, model=det)
    return det, det.save(folder / f"{name}.safetensors"), policy.save(folder / f"{name}-policy.safetensors"), fit_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--models", default="padim,vae")
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-calib", type=int, default=120)
    parser.add_argument("--kill-after", type=float, default=6.0, help="seconds of 8-client load before kill -9")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    from greyanom.datasets import make_wafer_images

    torch.set_num_threads(1)
    gen = make_wafer_images(n_train=args.n_train + args.n_calib, n_test=40, random_state=0)
    data = {"train": gen.X_train[: args.n_train], "calib": gen.X_train[args.n_train :]}
    bodies = [_png(x) for x in gen.X_test]
    images = np.stack([np.round(x * 255) / 255 for x in gen.X_test]).astype(np.float32)
    report = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "models": {}}
    folder = Path(tempfile.mkdtemp(prefix="greyanom-serve-bench-"))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        det, model_path, policy_path, fit_s = _train(name, data, folder)
        entry = {"fit_s": fit_s, "bare_score_before_ms": _percentiles(_bare_score_ms(det, images, 200)), "load": {}}
        proc, url = _start(model_path, policy_path, folder / f"{name}.db")
        try:
            _load(url, bodies, 20, 1)  # warm-up of the server's model and connections
            for n_clients in [int(c) for c in args.clients.split(",")]:
                results, wall = _load(url, bodies, args.requests, n_clients)
                ok = [r for r in results if r[0]]
                entry["load"][n_clients] = {
                    "requests": len(results),
                    "errors": len(results) - len(ok),
                    "throughput_per_s": len(results) / wall,
                    "latency_ms": _percentiles([r[3] for r in ok]),
                    # decode + score + decide + heatmap inside the server (its inference_time_ms)
                    "server_inference_ms": _percentiles([r[4] for r in ok]),
                }
                print(f"{name} {n_clients} client(s): {entry['load'][n_clients]}", flush=True)
        finally:
            _stop(proc)
        entry["bare_score_after_ms"] = _percentiles(_bare_score_ms(det, images, 200))

        # kill -9 in the middle of 8-client load, restart, count the answered rows
        db = folder / f"{name}-kill.db"
        proc, url = _start(model_path, policy_path, db)
        stop = threading.Event()
        holder = {}
        loader = threading.Thread(target=lambda: holder.update(
            r=_load(url, bodies, 10**6, 8, wafer="KILL", stop=stop)))
        loader.start()
        time.sleep(args.kill_after)
        _stop(proc, signal.SIGKILL)
        time.sleep(1.0)
        stop.set()
        loader.join()
        results, _ = holder["r"]
        answered = {r[1] for r in results if r[0]}
        proc, url = _start(model_path, policy_path, db)  # restart on the same database
        try:
            import httpx

            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            _stop(proc)
        with sqlite3.connect(db) as conn:
            rows = {r[0] for r in conn.execute("SELECT id FROM inspections WHERE wafer_id = 'KILL'")}
        entry["kill9"] = {
            "answered": len(answered),
            "answered_and_stored": len(answered & rows),
            "stored_rows": len(rows),
            # cut off by the kill, or refused while the server was down
            "failed_requests": sum(1 for r in results if not r[0]),
        }
        print(f"{name} kill -9: {entry['kill9']}", flush=True)
        report["models"][name] = entry
    report["machine"]["loadavg_end"] = os.getloadavg()

    print()
    print(f"machine: {report['machine']['cpus']} CPUs, load average {report['machine']['loadavg_start'][0]:.1f} "
          f"at start, {report['machine']['loadavg_end'][0]:.1f} at end")
    header = ("| model | clients | requests | errors | req/s | P50 ms | P95 ms | P99 ms | in-server P50 ms "
              "| bare score P50 / P99 ms (before; after) |")
    print(header)
    print("|" + "---|" * 10)
    for name, entry in report["models"].items():
        bare, after = entry["bare_score_before_ms"], entry["bare_score_after_ms"]
        for n_clients, res in entry["load"].items():
            lat = res["latency_ms"]
            print(f"| {name} | {n_clients} | {res['requests']} | {res['errors']} | {res['throughput_per_s']:.1f} | "
                  f"{lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {res['server_inference_ms']['p50']:.1f} | "
                  f"{bare['p50']:.1f} / {bare['p99']:.1f}; {after['p50']:.1f} / {after['p99']:.1f} |")
    for name, entry in report["models"].items():
        k = entry["kill9"]
        print(f"{name}: kill -9 under 8-client load: {k['answered']} answered 200, {k['answered_and_stored']} of them "
              f"in the database after the restart ({k['stored_rows']} rows; the rest were cut off or refused)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    lost = sum(e["kill9"]["answered"] - e["kill9"]["answered_and_stored"] for e in report["models"].values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
