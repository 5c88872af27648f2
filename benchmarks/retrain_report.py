"""Issue 22 measurements: a retraining from a records database filled by simulated traffic.

A PCADetector (production ``1.0.0`` of model ``litho`` in a registry) is trained on 100 normal
32x32 images. The inspection service (in-process, SQLite, ``keep_images=True``, an audit
sample of 30 % of PASS and REJECT) then answers simulated traffic in which the normal images
have drifted a little (illumination +0.012, which the production model REVIEWs more often),
with defects of three strengths (60 of 420). An inspector reviews every queued inspection (the truth).
A few records are crafted: unreadable kept images, images sent twice, and defects that an
earlier model had PASSed. Then:

1. ``retrain`` on the last 90 days: what it pulled and dropped, what the gate saw, the candidate.
2. A lot of 120 images with faint defects (strength 0.045) follows; the production model
   REJECTs them, the audit sample of them is reviewed, and the same training images now give
   a candidate that the larger reviewed set judges worse (it PASSes some faint defects): refused.
3. Bad input: a retrain with too few kept images, an unknown name, an unknown version, the
   promotion of a version whose policy is unbound (the command line's one-line errors).

Usage::

    python benchmarks/retrain_report.py [--rst docs/guide/registry_retrain_measured.rst.inc]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

S = 32
_YY, _XX = np.mgrid[:S, :S]
BASE = 0.5 + 0.1 * np.sin(_XX / 3.0) * np.cos(_YY / 4.0)


def normals(n, seed, noise=0.03, shift=0.0):
    rng = np.random.default_rng(seed)
    return np.clip(BASE + shift + noise * rng.normal(size=(n, S, S)), 0, 1).astype(np.float32)


def defects(n, seed, amp, shift=0.0):
    rng = np.random.default_rng(seed)
    images = normals(n, seed + 1000, shift=shift)
    for image in images:
        r, c = rng.integers(2, S - 8, 2)
        image[r:r + 6, c:c + 6] += amp
    return np.clip(images, 0, 1)


def png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def cli(argv):
    """Run ``greyanom`` and return its last stderr line (the one-line error) or stdout."""
    from greyanom.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    text = (err.getvalue().strip().splitlines() or out.getvalue().strip().splitlines() or [""])[-1]
    return code, text


def run(folder):
    from greyanom import PCADetector
    from greyanom.decision import DecisionPolicy
    from greyanom.registry import ModelRegistry, RetrainError, retrain
    from greyanom.serve import InspectionService, ReviewStore
    from greyanom.serve._auth import Principal

    lines = []
    registry = ModelRegistry(folder / "registry")
    det = PCADetector(n_components=10, smoothing_sigma=1.5, random_state=0).fit(
        np.round(normals(100, 0) * 255).astype(np.uint8))
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(det.heldout_scores_, model=det)
    registry.add(det, policy, name="litho", description="first model")
    registry.promote("litho", "1.0.0", actor="lead", reason="first")
    prod = registry.production("litho")
    db = f"sqlite:///{folder}/records.db"
    service = InspectionService(prod.model_path, prod.policy_path, db_url=db, threads=None, keep_images=True,
                                audit_sample=0.3, random_state=0)
    t0 = time.perf_counter()
    truth = {}
    traffic = [(x, "normal") for x in normals(360, 1, shift=0.012)]
    for k, amp in enumerate((0.07, 0.1, 0.3)):
        traffic += [(x, "defect") for x in defects(20, 2 + k, amp, shift=0.012)]
    order = np.random.default_rng(5).permutation(len(traffic))
    for n, i in enumerate(order):
        image, label = traffic[i]
        truth[service.inspect(png(image), f"W{n:04d}", 1)["id"]] = label
    for i in range(5):  # sent twice
        image, label = traffic[order[i]]
        truth[service.inspect(png(image), f"again{i}", 1)["id"]] = label
    for i, body in enumerate([b"", b"\x89PNG truncated"]):  # unreadable kept images
        service.records.add(wafer_id=f"bad{i}", inspection_point=1, anomaly_score=0.0, decision="PASS", confidence=0.5,
                            model_version="old", policy_version="old", inference_time_ms=1.0, image=body)
    for i, x in enumerate(defects(3, 9, 0.3, shift=0.012)):  # PASSed by an earlier model
        service.records.add(wafer_id=f"old{i}", inspection_point=1, anomaly_score=0.0, decision="PASS",
                            confidence=0.5, model_version="old", policy_version="old", inference_time_ms=1.0,
                            image=png(x))
    traffic_s = time.perf_counter() - t0
    reviews = ReviewStore(service.records)
    queued = reviews.queue(limit=100_000)
    for row in queued:
        reviews.add(row["id"], Principal("ana", "review"), truth[row["id"]])
    stats = reviews.stats()
    lines.append(f"traffic: {len(traffic)} images ({sum(lab == 'defect' for _, lab in traffic)} defects of strength "
                 f"0.07, 0.1, 0.3; normals brighter by 0.012) + 5 resent + 5 crafted rows in {traffic_s:.1f} s; "
                 f"decisions {stats['decisions']}; {len(queued)} queued inspections reviewed "
                 f"({stats['review_defect_rate'] or 0:.2f} of the REVIEWs were defects)")

    t0 = time.perf_counter()
    report = retrain(db, registry, name="litho", since="90d", min_images=100, min_defects=10, actor="ana")
    lines += ["", f"1. retrain after drifted traffic ({time.perf_counter() - t0:.1f} s):", report.format()]
    if report.registered:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            from greyanom.cli import main

            main(["registry", str(registry.root), "list", "--name", "litho"])
        lines.append(out.getvalue().rstrip())

    for i, x in enumerate(defects(120, 21, 0.045, shift=0.012)):  # a lot with faint defects
        answer = service.inspect(png(x), f"F{i:04d}", 1)
        truth[answer["id"]] = "defect"
    for row in reviews.queue(limit=100_000):
        reviews.add(row["id"], Principal("ana", "review"), truth[row["id"]])
    faint = ReviewStore(service.records).stats()
    t0 = time.perf_counter()
    refused = retrain(db, registry, name="litho", since="90d", min_images=100, min_defects=10)
    lines += ["", f"2. a lot of 120 images with faint defects (strength 0.045) follows; decisions now "
              f"{faint['decisions']}; the new queue (audit sample) reviewed; the same training images, "
              f"judged on more reviewed defects; retrain ({time.perf_counter() - t0:.1f} s):",
              refused.format()]

    lines += ["", "3. bad input (exit status, message):"]
    try:
        retrain(db, registry, name="litho", since="90d", min_images=5000)
    except RetrainError as exc:
        lines.append(f"retrain(min_images=5000): RetrainError: {exc}")
    unbound = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(det.heldout_scores_)
    unbound_path = unbound.save(folder / "unbound.safetensors")
    root = str(registry.root)
    for argv in (["retrain", "--db", db, "--registry", root, "--name", "litho", "--min-images", "5000"],
                 ["retrain", "--db", db, "--registry", root, "--name", "etch"],
                 ["registry", root, "promote", "litho", "7.0.0"],
                 ["registry", root, "add", str(prod.model_path), str(unbound_path), "--name", "litho"],
                 ["registry", root, "promote", "litho", None]):
        if argv[-1] is None:
            argv[-1] = registry.versions("litho")[-1].version
        code, text = cli(argv)
        lines.append(f"greyanom {' '.join(a if not a.startswith(('sqlite', '/')) else '...' for a in argv)}\n"
                     f"  -> exit {code}: {text}")
    service.records.close()
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rst", default=None, help="also write the output as a literal block into this file")
    args = parser.parse_args()
    import greyanom

    with tempfile.TemporaryDirectory(prefix="greyanom-retrain-") as folder:
        t0 = time.perf_counter()
        text = run(Path(folder))
        total = time.perf_counter() - t0
    header = (f"greyanom {greyanom.__version__}, Python {platform.python_version()}, {platform.machine()}; "
              f"whole run {total:.1f} s (wall clock, on a shared machine)")
    print(header)
    print(text)
    if args.rst:
        body = "\n".join("   " + line if line else "" for line in (header + "\n" + text).splitlines())
        Path(args.rst).write_text(".. code-block:: text\n\n" + body + "\n")


if __name__ == "__main__":
    main()
