"""Shadow, then canary, on simulated traffic: a worse candidate is flagged and rolled back, a better one promoted.

Simulated fab (64 x 64 patterned images, a tenth with a small defect of random size and
contrast, some faint). Three versions of one registered model, all PCA detectors with a bound
DecisionPolicy:

* ``1.0.0`` production: ``score_reduction="mean"``, REVIEW / REJECT at 5 % / 1 % FPR;
* ``1.1.0`` worse: the same detector retrained with a stricter policy (1 % / 0.5 % FPR):
  fewer false alarms, more missed defects;
* ``1.2.0`` better: ``score_reduction="topk"`` (the default), 5 % / 1 %: misses fewer defects.

Simulated inspectors review every REVIEW and REJECT the deciding model queued, and an audit
sample of 5 % of PASS and REJECT, truthfully. Each scenario runs the in-process service
(``create_app(registry=..., name=...)``'s :class:`InspectionService`, records in SQLite):

1. shadow: ``--shadow-n`` images; ``GET /api/v1/compare``'s figures are printed;
2. canary at 10 %: ``--canary-n`` images; compare again;
3. the candidate is promoted (as an operator would after the canary; here whatever the
   figures said, to show what the guardrail does) and ``--after-n`` images follow.

The FNR guardrail (1 %, at least 100 reviewed defects) runs every 50 images, as the service's
follower does every second. Usage::

    PYTHONPATH=src python benchmarks/canary_sim.py [--shadow-n 800] [--canary-n 600] [--after-n 1200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 64
NAME = "litho"


def _images(n, rng, defect_rate):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = [], []
    for _ in range(n):
        image = 0.5 + 0.1 * np.sin(xx / 3.0 + rng.uniform(0, 0.5)) * np.cos(yy / 4.0)
        image = image + 0.03 * rng.normal(size=(SIZE, SIZE))
        defect = bool(rng.random() < defect_rate)
        if defect:
            side = rng.integers(2, 7)
            r, c = rng.integers(4, SIZE - 14, 2)
            image[r:r + side, c:c + side] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        labels.append(defect)
    return images, labels


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _registry(root):
    from greyanom import PCADetector
    from greyanom.decision import DecisionPolicy
    from greyanom.registry import ModelRegistry

    rng = np.random.default_rng(0)
    train = np.stack(_images(200, rng, 0.0)[0])
    calib = np.stack([np.round(x * 255) / 255 for x in _images(400, rng, 0.0)[0]]).astype(np.float32)
    registry = ModelRegistry(root)
    for reduction, review, reject in (("mean", 0.05, 0.01), ("mean", 0.01, 0.005), ("topk", 0.05, 0.01)):
        det = PCADetector(n_components=8, score_reduction=reduction, random_state=0).fit(train)
        policy = DecisionPolicy(review_fpr=review, reject_fpr=reject).fit(det.score(calib), model=det)
        registry.add(det, policy, name=NAME, bump="minor")
    registry.promote(NAME, "1.0.0", actor="sim")
    return registry


def _traffic(service, n, rng, truth, log, every=50):
    """Post n images, review the queued ones truthfully, run the guardrail every ``every`` images."""
    from greyanom.serve._auth import Principal

    inspector = Principal("sim-inspector", "review")
    images, labels = _images(n, rng, 0.1)
    for i, (image, defect) in enumerate(zip(images, labels)):
        answer = service.inspect(_png(image), "SIM", len(truth))
        truth[answer["id"]] = defect
        if answer["decision"] != "PASS" or service.reviews.inspection(answer["id"])["queued"]:
            service.reviews.add(answer["id"], inspector, "defect" if defect else "normal")
        if (i + 1) % every == 0:
            result = service.models.check_guardrail()
            if result is not None and result["action"] is not None:
                log.append({"after_images": len(truth), **result})


def _figures(compare):
    def model(m):
        return None if m is None else {k: m[k] for k in ("registry_version", "n", "reject_rate", "review_rate",
                                                         "reviewed_defects", "missed", "fnr")} | {
            "latency_ms_mean": m["latency_ms"]["mean"], "latency_ms_p95": m["latency_ms"]["p95"]}

    tests = compare["tests"] or {}
    return {"mode": compare["mode"], "production": model(compare["production"]),
            "candidate": model(compare["candidate"]),
            "p_reject_rate": (tests.get("reject_rate") or {}).get("p_value"),
            "p_review_rate": (tests.get("review_rate") or {}).get("p_value"),
            "ks": (tests.get("score_ks") or {}).get("statistic"),
            "p_ks": (tests.get("score_ks") or {}).get("p_value"),
            "guardrail": compare["guardrail"]}


def _scenario(candidate, work, args):
    from greyanom.serve import InspectionService

    registry = _registry(work / f"registry-{candidate}")
    service = InspectionService(registry=registry, name=NAME, db_url=f"sqlite:///{work / f'{candidate}.db'}",
                                audit_sample=0.05, random_state=0, threads=1)
    rng, truth, actions, steps = np.random.default_rng(int(candidate.replace(".", ""))), {}, [], {}
    service.models.start_rollout("shadow", candidate)
    _traffic(service, args.shadow_n, rng, truth, actions)
    steps["shadow"] = _figures(service.models.compare())
    if service.candidate is not None:
        service.models.start_rollout("canary", candidate, fraction=0.1)
        _traffic(service, args.canary_n, rng, truth, actions)
        steps["canary"] = _figures(service.models.compare())
        # promoted while it is the canary: the service swaps it in, and the guardrail keeps watching it
        registry.promote(NAME, candidate, actor="sim-operator")
        service.follower.sync(service.models)
        _traffic(service, args.after_n, rng, truth, actions)
        steps["after_promotion"] = _figures(service.models.compare())
    return {"candidate": candidate, "steps": steps, "guardrail_actions": actions,
            "final_production": registry.production(NAME).version,
            "history": [(e["action"], e["version"], e["actor"]) for e in registry.history(NAME)]}


def _rate(x):
    return "-" if x is None else f"{100 * x:.1f} %"


def _p(x):
    return "-" if x is None else f"{x:.2g}"


def _print_summary(result):
    print(f"\ncandidate {result['candidate']}: final production {result['final_production']}; "
          f"registry history {result['history']}")
    for step, f in result["steps"].items():
        for role in ("production", "candidate"):
            m = f[role]
            if m is None:
                continue
            print(f"  {step:16s} {role:10s} {m['registry_version']}: n={m['n']:5d} REJECT {_rate(m['reject_rate'])} "
                  f"REVIEW {_rate(m['review_rate'])} FNR {_rate(m['fnr'])} ({m['missed']}/{m['reviewed_defects']}) "
                  f"latency {m['latency_ms_mean']:.2f} ms (p95 {m['latency_ms_p95']:.2f})")
        guard = f["guardrail"] and {k: f["guardrail"][k] for k in ("reviewed_defects", "missed", "judged", "exceeded")}
        print(f"  {step:16s} tests: REJECT-rate p={_p(f['p_reject_rate'])}, REVIEW-rate p={_p(f['p_review_rate'])}, "
              f"KS={_p(f['ks'])} p={_p(f['p_ks'])}; guardrail {guard}")
    for action in result["guardrail_actions"]:
        print(f"  guardrail after {action['after_images']} images: {action['action']} "
              f"(FNR {_rate(action['fnr'])}, {action['missed']}/{action['reviewed_defects']} reviewed defects)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shadow-n", type=int, default=800)
    ap.add_argument("--canary-n", type=int, default=600)
    ap.add_argument("--after-n", type=int, default=1200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="greyanom-canary-sim-"))
    t0 = time.monotonic()
    out = {"worse": _scenario("1.1.0", work, args), "better": _scenario("1.2.0", work, args),
           "seconds": time.monotonic() - t0, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    for key in ("worse", "better"):
        _print_summary(out[key])
    print(f"{out['seconds']:.0f} s on {out['cpus']} CPUs, load average {out['loadavg'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
