"""Bounded loopback load test of the inspection service (``greyanom serve``), and a kill -9 check.

For a PaDiM and a ConvVAE model on 256x256 synthetic wafer images (the case study's size):

1. train, score held-out normal images, fit a DecisionPolicy, save both;
2. time the bare ``detector.score`` of one image (the model alone, torch threads = 1);
3. start ``python -m greyanom serve`` on a free 127.0.0.1 port (one worker, SQLite records)
   and send ``--requests`` inspections from 1 and from 8 concurrent clients (httpx, keep-alive),
   recording end-to-end latency per request, throughput and errors; with ``--max-batch N``
   (N > 1) this is done for the service without micro-batching ("off", ``--max-batch 1``) and
   with it ("on", ``--max-batch N --max-wait-ms W``), and with ``--src-before DIR`` also for the
   service of another source tree ("before", e.g. the commit before a change): all their
   servers run side by side, and the load alternates between them, ``--requests`` at a time,
   in each of ``--rounds`` rounds (A/B in one run on one machine);
4. time the bare score again (the model's latency is bracketed around the load);
5. kill -9 the server (the last configuration) in the middle of 8-client load, restart it on
   the same database and check that every inspection that was answered 200 is a row.

All traffic goes to 127.0.0.1. Usage::

    PYTHONPATH=src python benchmarks/serve_load.py [--requests 1000] [--models padim,vae] [--json out.json]
    PYTHONPATH=src python benchmarks/serve_load.py --max-batch 8 --max-wait-ms 5 --rounds 2 --requests 200

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


def _launch(args, src=SRC, timeout=120):
    """``greyanom serve ARGS --host 127.0.0.1 --port P`` (a free port) as a real process; returns
    ``(process, url)`` once ``/healthz`` answers (the process is killed if it does not in time)."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "greyanom", "serve", *map(str, args), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("the server did not start")


def _start(model, policy, db, workers=1, extra=(), src=SRC):
    return _launch(["--model", model, "--policy", policy, "--db", f"sqlite:///{db}", "--workers", workers, *extra],
                   src=src)


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


def _batch_counts(url):
    """``(sum, count)`` of the server's ``greyanom_batch_size`` histogram ((0, 0) if it has none)."""
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("greyanom_batch_size_sum", "greyanom_batch_size_count")):
            values[line.split()[0]] = float(line.split()[1])
    return values.get("greyanom_batch_size_sum", 0.0), values.get("greyanom_batch_size_count", 0.0)


def _configs(args):
    """The server configurations compared in one run: label -> (source tree, extra CLI arguments)."""
    configs = {}
    if args.src_before:
        configs["before"] = (Path(args.src_before), ())
    if args.max_batch > 1:
        configs["off"] = (SRC, ("--max-batch", "1"))
        configs["on"] = (SRC, ("--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                               "--max-queue", str(args.max_queue), "--threads", str(args.threads_on)))
    else:
        configs["default"] = (SRC, ())
    return configs


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
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 check")
    parser.add_argument("--max-batch", type=int, default=1,
                        help="N > 1: compare the service with micro-batching off and with --max-batch N")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=128)
    parser.add_argument("--threads-on", type=int, default=1,
                        help="torch threads of the batching server (one forward pass at a time; the others: 1)")
    parser.add_argument("--src-before", default=None, metavar="DIR",
                        help="also load a server run from this source tree (the 'before' of an A/B)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the configurations (order rotates)")
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
    configs = _configs(args)
    report["configs"] = {label: {"src": str(src), "serve_args": list(extra)} for label, (src, extra) in configs.items()}
    folder = Path(tempfile.mkdtemp(prefix="greyanom-serve-bench-"))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        det, model_path, policy_path, fit_s = _train(name, data, folder)
        entry = {"fit_s": fit_s, "bare_score_before_ms": _percentiles(_bare_score_ms(det, images, 200)), "load": {}}
        raw = {}
        servers = {}
        try:  # every configuration's server is up for the whole comparison; the load alternates
            for label, (src, extra) in configs.items():
                servers[label] = _start(model_path, policy_path, folder / f"{name}-{label}.db", extra=extra, src=src)
                _load(servers[label][1], bodies, 20, 1)  # warm-up of the server's model and connections
            for round_ in range(args.rounds):
                labels = list(configs)
                labels = labels[round_ % len(labels):] + labels[: round_ % len(labels)]  # alternate who goes first
                for n_clients in [int(c) for c in args.clients.split(",")]:
                    for label in labels:
                        url = servers[label][1]
                        before = _batch_counts(url)
                        results, wall = _load(url, bodies, args.requests, n_clients)
                        after = _batch_counts(url)
                        slot = raw.setdefault((label, n_clients), {"results": [], "throughput": [], "batch": [0, 0]})
                        slot["results"] += results
                        slot["throughput"].append(len(results) / wall)
                        slot["batch"][0] += after[0] - before[0]
                        slot["batch"][1] += after[1] - before[1]
                        print(f"{name} round {round_} {label} {n_clients} client(s): {len(results) / wall:.1f} req/s",
                              flush=True)
        finally:
            for proc, _ in servers.values():
                _stop(proc)
        for (label, n_clients), slot in raw.items():
            ok = [r for r in slot["results"] if r[0]]
            entry["load"][f"{label}/{n_clients}"] = {
                "config": label,
                "clients": n_clients,
                "requests": len(slot["results"]),
                "errors": len(slot["results"]) - len(ok),
                # the median over rounds; every round's figure beside it
                "throughput_per_s": float(np.median(slot["throughput"])),
                "throughput_rounds": slot["throughput"],
                "latency_ms": _percentiles([r[3] for r in ok]),
                # decode + score + decide + heatmap inside the server (its inference_time_ms)
                "server_inference_ms": _percentiles([r[4] for r in ok]),
                "mean_batch_size": slot["batch"][0] / slot["batch"][1] if slot["batch"][1] else None,
            }
        entry["bare_score_after_ms"] = _percentiles(_bare_score_ms(det, images, 200))

        report["models"][name] = entry
        if args.no_kill:
            continue
        # kill -9 in the middle of 8-client load, restart, count the answered rows
        db = folder / f"{name}-kill.db"
        src, extra = configs[list(configs)[-1]]
        proc, url = _start(model_path, policy_path, db, extra=extra, src=src)
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
        proc, url = _start(model_path, policy_path, db, extra=extra, src=src)  # restart on the same database
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
    report["machine"]["loadavg_end"] = os.getloadavg()

    print()
    print(f"machine: {report['machine']['cpus']} CPUs, load average {report['machine']['loadavg_start'][0]:.1f} "
          f"at start, {report['machine']['loadavg_end'][0]:.1f} at end")
    for label, cfg in report["configs"].items():
        print(f"{label}: greyanom serve {' '.join(cfg['serve_args']) or '(defaults)'} from {cfg['src']}")
    header = ("| model | config | clients | requests | errors | req/s (median; rounds) | P50 ms | P95 ms | P99 ms "
              "| in-server P50 ms | mean batch | bare score P50 / P99 ms (before; after) |")
    print(header)
    print("|" + "---|" * 12)
    for name, entry in report["models"].items():
        bare, after = entry["bare_score_before_ms"], entry["bare_score_after_ms"]
        for res in entry["load"].values():
            lat = res["latency_ms"]
            rounds = ", ".join(f"{t:.1f}" for t in res["throughput_rounds"])
            batch = "-" if res["mean_batch_size"] is None else f"{res['mean_batch_size']:.2f}"
            print(f"| {name} | {res['config']} | {res['clients']} | {res['requests']} | {res['errors']} | "
                  f"{res['throughput_per_s']:.1f} ({rounds}) | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | "
                  f"{res['server_inference_ms']['p50']:.1f} | {batch} | "
                  f"{bare['p50']:.1f} / {bare['p99']:.1f}; {after['p50']:.1f} / {after['p99']:.1f} |")
    for name, entry in report["models"].items():
        if "kill9" not in entry:
            continue
        k = entry["kill9"]
        print(f"{name}: kill -9 under 8-client load: {k['answered']} answered 200, {k['answered_and_stored']} of them "
              f"in the database after the restart ({k['stored_rows']} rows; the rest were cut off or refused)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    lost = sum(e["kill9"]["answered"] - e["kill9"]["answered_and_stored"] for e in report["models"].values()
               if "kill9" in e)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
