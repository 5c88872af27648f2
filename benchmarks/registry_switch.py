"""Switch time of a promotion and a rollback under load (``greyanom serve --registry``), bounded.

1. train two PaDiM versions of one model on synthetic wafer images (``make_wafer_images``),
   calibrate a bound DecisionPolicy for each, register both, promote 1.0.0 (outside the timer);
2. start ``python -m greyanom serve --registry DIR --name wafer`` on a free 127.0.0.1 port
   (one worker, SQLite records, the registry polled every ``--poll-s`` seconds);
3. 4 client threads (``--clients``) post images in a loop for ``--duration`` seconds;
   at a third of it ``promote(1.1.0)``, at two thirds ``rollback`` (the Python API, as
   ``greyanom registry`` does);
4. report, for the promotion and the rollback, the time from the registry change (the call
   returned) to the first answer from the new version (an answer whose ``model_version`` is
   the new one), the requests answered meanwhile by the old version, and the failed requests
   (any status but 200, or a transport error) over the whole run.

All traffic goes to 127.0.0.1. Usage::

    PYTHONPATH=src python benchmarks/registry_switch.py [--duration 45] [--clients 4] [--image-size 128]

The figures depend on the machine and what else runs on it; the CPU count and load average
are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from serve_load import _launch, _png  # the sibling load benchmark's helpers (same folder)

NAME = "wafer"


def _build(root, size):
    from greyanom import PaDiMDetector
    from greyanom.datasets import make_wafer_images
    from greyanom.decision import DecisionPolicy
    from greyanom.registry import ModelRegistry, data_hash

    registry = ModelRegistry(root)
    for seed in (0, 1):
        data = make_wafer_images(n_train=60, n_test=0, image_size=size, random_state=seed)
        calib = make_wafer_images(n_train=120, n_test=0, image_size=size, random_state=10 + seed).X_train
        det = PaDiMDetector(n_jobs=1, random_state=seed).fit(data.X_train)
        policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(det.score(calib), model=det)
        registry.add(det, policy, name=NAME, data_hash=data_hash(data.X_train))
    registry.promote(NAME, "1.0.0", actor="bench")
    return registry


def _start(root, db, poll_s):
    return _launch(["--registry", root, "--name", NAME, "--db", f"sqlite:///{db}", "--registry-poll-s", poll_s])


def _client(url, bodies, stop, log, k):
    import httpx

    with httpx.Client(timeout=60) as http:
        i = k
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = http.post(f"{url}/api/v1/inspect", params={"wafer_id": f"C{k}", "inspection_point": i},
                              content=bodies[i % len(bodies)], headers={"content-type": "application/octet-stream"})
                ok, version = r.status_code == 200, r.json().get("model_version") if r.status_code == 200 else None
            except Exception:  # a transport error is a failed request
                ok, version = False, None
            log.append((t0, time.monotonic(), ok, version))
            i += 4


def _switch(log, changed_at, new_version):
    after = [(end, v) for start, end, ok, v in log if ok and end >= changed_at]
    first = min((end for end, v in after if v == new_version), default=None)
    old = sum(1 for end, v in after if v != new_version and (first is None or end < first))
    return {"switch_s": None if first is None else first - changed_at, "answered_by_old_meanwhile": old}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of load (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--poll-s", type=float, default=1.0, help="the server's --registry-poll-s")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    import httpx

    from greyanom.datasets import make_wafer_images

    work = Path(tempfile.mkdtemp(prefix="greyanom-registry-switch-"))
    t0 = time.monotonic()
    registry = _build(work / "registry", args.image_size)
    print(f"trained and registered 2 PaDiM versions ({args.image_size} px) in {time.monotonic() - t0:.1f} s")
    from greyanom.serve._served import file_version

    # the service's model_version of each registry version (a content hash of its model file)
    versions = {v: file_version(registry.get(NAME, v).model_path) for v in ("1.0.0", "1.1.0")}
    bodies = [_png(x) for x in make_wafer_images(n_train=0, n_test=32, image_size=args.image_size,
                                                  random_state=99).X_test]
    proc, url = _start(work / "registry", work / "records.db", args.poll_s)
    try:
        assert httpx.get(f"{url}/api/v1/model").json()["model_version"] == versions["1.0.0"]
        stop, log = threading.Event(), []
        threads = [threading.Thread(target=_client, args=(url, bodies, stop, log, k)) for k in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.duration / 3)
        registry.promote(NAME, "1.1.0", actor="bench", reason="switch benchmark")
        promoted_at = time.monotonic()
        time.sleep(args.duration / 3)
        registry.rollback(NAME, actor="bench", reason="switch benchmark")
        rolled_back_at = time.monotonic()
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
        stop.set()
        for t in threads:
            t.join()
        alive = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    out = {
        "requests": len(log),
        "failed": sum(1 for *_, ok, _v in log if not ok),
        "throughput_per_s": len(log) / args.duration,
        "promote": _switch(log, promoted_at, versions["1.1.0"]),
        "rollback": _switch(log, rolled_back_at, versions["1.0.0"]),
        "server_restarted": not alive,
        "clients": args.clients, "duration_s": args.duration, "poll_s": args.poll_s, "image_size": args.image_size,
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
