"""The ``greyanom`` command line (``greyanom demo``, ``greyanom serve``; also ``python -m greyanom``)."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "DEMO_DETECTORS"]

logger = logging.getLogger("greyanom.cli")

#: Detectors of the demo: name -> (class name in :mod:`greyanom`, fast demo parameters).
#: Parameters a class does not accept are dropped, and a class that is not available
#: (not built in this version, or its optional extra missing) is skipped with a note.
DEMO_DETECTORS = {
    "registered": ("RegisteredPixelDetector", {}),
    "pca": ("PCADetector", {}),
    "padim": ("PaDiMDetector", {}),
    "vae": ("ConvVAEDetector", {"max_epochs": 15, "verbose": False}),  # verbose: True on a terminal
    "patchcore": ("PatchCoreDetector", {}),
}
#: The default run on the aligned wafer images: the detector the choosing guide recommends
#: for aligned wafers and dies, beside the two it beats (``--full`` runs every detector).
DEMO_DEFAULT = ("registered", "pca", "padim")
#: Why each detector is in the demo, one line each (printed, and written to the results).
#: Figures from docs/guide/choosing.rst (make_wafer_images and make_die_images, seed 0).
DEMO_REASONS = {
    "registered": "recommended for aligned wafers and dies: registers each image onto the normal template and "
    "scores each pixel against its own normal spread (guide: image AUROC 0.915 wafer, 0.976 die)",
    "pca": "linear baseline: fast and tiny, but with no registration and no per-pixel spread it falls behind "
    "on aligned images (guide: 0.763 wafer)",
    "padim": "recommended for parts that move (guide: MVTec transistor 0.993, registered 0.889); on aligned "
    "wafers it ranks below the pixel template (guide: 0.637 wafer)",
    "vae": "feature VAE, the other choice for unaligned parts; a training loop, slow on a CPU (--full only)",
    "patchcore": "position-free patch memory for unaligned parts; a CPU affords only a 1% coreset, which costs "
    "accuracy (--full only)",
}
#: Printed and written beside the image results: the built-in generators have no unaligned set.
DEMO_UNALIGNED_NOTE = (
    "unaligned parts (PaDiM or the feature VAE): no built-in data set; make_wafer_images and make_die_images "
    "shift by 1-2 px and rotate by under 0.3 degrees, which the registered detector tolerates, so this case "
    "is measured on MVTec AD and magnetic tiles in docs/guide/choosing.rst"
)
#: The trace part: the wafer-level shape detector beside the classic baseline.
DEMO_TRACE_REASONS = {
    "ShapeSignatureDetector": "recommended for traces: fits each trace's step response and says which "
    "parameter moved (gain, damping, level, slope, fit)",
    "MultiwayPCADetector": "the field's classic baseline (multiway PCA, Q statistic): ranks faults well, but "
    "names only a time point, not a cause",
}
_QUICK_OVERRIDES = {"vae": {"max_epochs": 3}}


def _build_parser():
    from greyanom import __version__

    parser = argparse.ArgumentParser(
        prog="greyanom",
        description="greyanom: anomaly detection for manufacturing.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="fit the recommended detectors beside the ones they beat on built-in data and report metrics",
        description=(
            "Generate a synthetic wafer-inspection data set (greyanom.datasets.make_wafer_images), fit "
            "the detector the choosing guide recommends for aligned wafers (RegisteredPixelDetector) beside "
            "PCADetector and PaDiMDetector (--full: every available image detector) on its normal training "
            "images, say in one line each why, print a metrics table "
            "(image AUROC, AUPRC, FNR at FPR=5%, pixel AUROC, AUPRO, per-defect-type detection rates) "
            "and write plots (ROC curves with the FPR=5% operating point, score distributions, "
            "heatmap overlays) and the metrics (metrics.txt, metrics.json) into an output folder, "
            "each detector's results as soon as it finishes."
        ),
    )
    # Defaults are written into each help text once (no ArgumentDefaultsHelpFormatter, which
    # appended "(default: None)" to the options whose default depends on --quick).
    demo.add_argument("--output", "-o", default="greyanom-demo", metavar="DIR",
                      help="output folder, created if needed (default: %(default)s)")
    demo.add_argument("--n-train", type=int, default=None, metavar="N",
                      help="normal training images (default: 200; 60 with --quick)")
    demo.add_argument("--n-test", type=int, default=None, metavar="N",
                      help="test images, 40%% of them defective (default: 100; 40 with --quick)")
    demo.add_argument("--image-size", type=int, default=256, metavar="S",
                      help="image side in pixels, 32 to 1024 (default: %(default)s)")
    demo.add_argument("--random-state", type=int, default=0, metavar="S",
                      help="seed of the data and the detectors, 0 to 2**32 - 1 (default: %(default)s)")
    demo.add_argument(
        "--detectors",
        default="default",
        metavar="NAMES",
        help=f"comma-separated detectors from {{{','.join(DEMO_DETECTORS)}}}, 'default' "
        f"({','.join(DEMO_DEFAULT)}) or 'all', the available ones (default: %(default)s)",
    )
    demo.add_argument("--full", action="store_true",
                      help="run every available image detector (the same as --detectors all)")
    demo.add_argument("--target-fpr", type=float, default=0.05, metavar="F",
                      help="target false-positive rate in [0, 1) (default: %(default)s)")
    demo.add_argument(
        "--traces",
        default="auto",
        choices=("auto", "yes", "no"),
        help="also run ShapeSignatureDetector beside MultiwayPCADetector on simulated PI-loop lots with "
        "injected faults (default: auto, i.e. when --detectors is 'default' or 'all', or with --full)",
    )
    demo.add_argument("--quick", action="store_true", help="smaller data and shorter training (a smoke test)")
    demo.add_argument("--no-plots", action="store_true", help="write the metrics only")
    demo.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    demo.set_defaults(subparser=demo)
    _add_serve_parser(sub)
    from greyanom.registry._cli import add_parsers  # registry, retrain

    add_parsers(sub)
    return parser


def _add_serve_parser(sub):
    serve = sub.add_parser(
        "serve",
        help="serve a saved image detector and decision policy over HTTP (the 'serve' extra)",
        description=(
            "Run the inspection service (greyanom.serve): POST /api/v1/inspect with the raw PNG or TIFF "
            "bytes of one grayscale image answers its anomaly score, PASS/REVIEW/REJECT decision, "
            "confidence and heatmap link; every answer is first committed to the records database. "
            "Also GET /api/v1/heatmaps/{id}.png, /api/v1/inspections, /api/v1/model, /healthz, /metrics, "
            "the human review of inspections (POST /api/v1/inspections/{id}/review, the review page /review) "
            "and GET /api/v1/stats. With --registry DIR --name N it serves the production version of a model "
            "registry, follows promotions and rollbacks without a restart, and runs a --shadow or --canary "
            "candidate (GET /api/v1/compare) under an FNR guardrail that rolls a bad candidate back."
        ),
    )
    # defaults written into the help texts (ArgumentDefaultsHelpFormatter printed "(default: None)"
    # after the required options)
    serve.add_argument("--model", default=None, metavar="PATH",
                       help="model file written by a detector's save() (or --registry and --name)")
    serve.add_argument("--policy", default=None, metavar="PATH",
                       help="decision policy written by DecisionPolicy.save(), fitted with model= this model")
    serve.add_argument("--registry", default=None, metavar="DIR",
                       help="serve the production version of --name in this model registry and follow its "
                       "promotions and rollbacks without a restart (instead of --model and --policy)")
    serve.add_argument("--name", default=None, metavar="N", help="with --registry: the registered model to serve")
    serve.add_argument("--shadow", default=None, metavar="VERSION",
                       help="with --registry: also score every image with this version and record it; "
                       "production alone decides")
    serve.add_argument("--canary", default=None, metavar="VERSION",
                       help="with --registry: let this version decide --canary-fraction of the requests")
    serve.add_argument("--canary-fraction", type=float, default=0.1, metavar="F",
                       help="fraction in (0, 1) of the requests the canary decides (default: %(default)s)")
    serve.add_argument("--registry-poll-s", type=float, default=1.0, metavar="S",
                       help="seconds between two reads of the registry (default: %(default)s)")
    serve.add_argument("--max-fnr", type=float, default=0.01, metavar="F",
                       help="FNR guardrail: a candidate missing more than this fraction of reviewed defects "
                       "is dropped, and rolled back if promoted (default: %(default)s)")
    serve.add_argument("--min-reviewed-defects", type=int, default=100, metavar="N",
                       help="reviewed defects a candidate scored before the guardrail judges it "
                       "(default: %(default)s)")
    serve.add_argument("--seed", type=int, default=None, metavar="N",
                       help="seeds the canary's choice of requests and the audit sample")
    serve.add_argument("--allow-unbound-policy", action="store_true",
                       help="accept a policy that records no model (logged as a warning); a policy bound to "
                       "another model is always refused")
    serve.add_argument("--db", default="sqlite:///greyanom-inspections.db", metavar="URL",
                       help="SQLAlchemy database URL (default: %(default)s)")
    serve.add_argument("--token-file", default=None, metavar="PATH",
                       help="access tokens, one 'TOKEN ROLE [NAME]' a line, roles inspect, review, admin; "
                       "without it the service has no access control and binds loopback only")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on; 0.0.0.0 (every interface) needs --token-file (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="uvicorn worker processes (default: %(default)s)")
    serve.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch threads per inference (default: %(default)s)")
    serve.add_argument("--resize", action="store_true", help="resize images of another size (default: answer 422)")
    serve.add_argument("--max-body-mb", type=float, default=4.0, metavar="MB",
                       help="larger bodies are answered 413 (default: %(default)s)")
    serve.add_argument("--keep-images", action="store_true",
                       help="also keep the raw image of PASS inspections (REVIEW and REJECT images are always kept)")
    serve.add_argument("--audit-sample", type=float, default=0.0, metavar="F",
                       help="fraction of PASS and REJECT inspections put in the review queue beside every REVIEW "
                       "(default: %(default)s)")
    serve.add_argument("--max-batch", type=int, default=1, metavar="N",
                       help="micro-batching: up to N concurrent requests share one forward pass (default: 1, off)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                       help="with --max-batch > 1, longest wait for more requests after a batch's first "
                       "(default: %(default)s)")
    serve.add_argument("--max-queue", type=int, default=128, metavar="N",
                       help="with --max-batch > 1, images waiting for the model before 503 queue_full "
                       "(default: %(default)s)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (uvicorn's access log: method, path, status; never a token)")
    serve.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_serve(args, parser):
    """``greyanom serve``: check the arguments, then run the service until interrupted."""
    if args.registry is not None:
        if args.model is not None or args.policy is not None:
            parser.error("give --registry (with --name) or --model and --policy, not both.")
        if args.name is None:
            parser.error("--registry needs --name: the registered model to serve.")
        if not Path(args.registry).is_dir():
            parser.error(f"--registry {args.registry!r} is not a folder.")
    else:
        for name in ("model", "policy"):
            if getattr(args, name) is None:
                parser.error(f"give --{name} (with --{'policy' if name == 'model' else 'model'}), or --registry "
                             "and --name.")
            if not Path(getattr(args, name)).is_file():
                parser.error(f"--{name} {getattr(args, name)!r} is not a file.")
        for name in ("name", "shadow", "canary"):
            if getattr(args, name) is not None:
                parser.error(f"--{name} needs --registry.")
    if args.shadow is not None and args.canary is not None:
        parser.error("give --shadow or --canary, not both.")
    if not 0.0 < args.canary_fraction < 1.0:
        parser.error(f"--canary-fraction must be a fraction in (0, 1), got {args.canary_fraction}.")
    if not 0.0 < args.registry_poll_s <= 3600:
        parser.error(f"--registry-poll-s must be in (0, 3600], got {args.registry_poll_s}.")
    if not 0.0 <= args.max_fnr < 1.0:
        parser.error(f"--max-fnr must be a fraction in [0, 1), got {args.max_fnr}.")
    if args.min_reviewed_defects < 1:
        parser.error(f"--min-reviewed-defects must be at least 1, got {args.min_reviewed_defects}.")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {args.port}.")
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be at least 1.")
    if not args.max_body_mb > 0:
        parser.error(f"--max-body-mb must be positive, got {args.max_body_mb}.")
    if not 0.0 <= args.audit_sample <= 1.0:
        parser.error(f"--audit-sample must be a fraction in [0, 1], got {args.audit_sample}.")
    if args.token_file is not None and not Path(args.token_file).is_file():
        parser.error(f"--token-file {args.token_file!r} is not a file.")
    if args.max_batch < 1 or args.max_queue < 1:
        parser.error("--max-batch and --max-queue must be at least 1.")
    if not 0 <= args.max_wait_ms < float("inf"):
        parser.error(f"--max-wait-ms must be a finite number >= 0, got {args.max_wait_ms}.")
    try:
        from greyanom.serve import serve
    except ImportError as exc:
        parser.error(str(exc))
    registry = {}
    if args.registry is not None:
        registry = {"registry": args.registry, "name": args.name, "shadow": args.shadow, "canary": args.canary,
                    "canary_fraction": args.canary_fraction, "registry_poll_s": args.registry_poll_s,
                    "max_fnr": args.max_fnr, "min_reviewed_defects": args.min_reviewed_defects}
    try:
        serve(args.model, args.policy, db_url=args.db, host=args.host, port=args.port, workers=args.workers,
              threads=args.threads, resize=args.resize, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
              access_log=args.access_log, log_level="debug" if args.verbose else "info",
              token_file=args.token_file, allow_unbound_policy=args.allow_unbound_policy,
              keep_images=args.keep_images, audit_sample=args.audit_sample,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
              random_state=args.seed, **registry)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return 0


def _resolve_detectors(spec, full=False):
    """The detector names of ``--detectors`` (all with ``full``), or a ValueError that says what is allowed."""
    if full or spec.strip() == "all":
        return list(DEMO_DETECTORS)
    if spec.strip() == "default":
        return list(DEMO_DEFAULT)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in DEMO_DETECTORS]
    if unknown or not names:
        raise ValueError(
            f"unknown detector(s) {', '.join(unknown) if unknown else repr(spec)}; "
            f"choose from {', '.join(DEMO_DETECTORS)}, 'default' or 'all'."
        )
    return names


def _check_output(path):
    """Create the output folder and check that it is writable; an ``OSError`` message otherwise."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        return f"--output {str(out)!r} is a file, not a folder; pass a folder (it is created if needed)."
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"--output {str(out)!r} cannot be written to: {exc.strerror or exc}."
    return None


def _check_args(parser, args):
    """Reject bad demo arguments with ``parser.error`` (one line, exit status 2, no traceback)."""
    for name in ("n_train", "n_test"):
        value = getattr(args, name)
        if value is not None and not 2 <= value <= 100_000:
            parser.error(f"--{name.replace('_', '-')} must be in [2, 100000], got {value}.")
    if not 32 <= args.image_size <= 1024:
        parser.error(f"--image-size must be in [32, 1024], got {args.image_size}.")
    if not 0 <= args.random_state < 2**32:
        parser.error(f"--random-state must be in [0, 2**32 - 1], got {args.random_state}.")
    if not 0 <= args.target_fpr < 1:
        parser.error(f"--target-fpr must be in [0, 1), got {args.target_fpr}.")
    try:
        names = _resolve_detectors(args.detectors, args.full)
    except ValueError as exc:
        parser.error(f"--detectors: {exc}")
    if "vae" in names and args.image_size % 16:
        parser.error(
            f"--image-size must be a multiple of 16 for the VAE (4 stride-2 blocks), got {args.image_size}; "
            "pass e.g. 256, or leave vae out of --detectors."
        )
    problem = _check_output(args.output)
    if problem:
        parser.error(problem)


def _make_detector(name, random_state, quick):
    """The detector instance, or None (with a logged note) when it is not available."""
    import greyanom

    class_name, params = DEMO_DETECTORS[name]
    try:
        cls = getattr(greyanom, class_name)
    except (AttributeError, ImportError) as exc:
        logger.info("skipping %s: %s is not available (%s)", name, class_name, exc)
        return None
    params = {**params, "random_state": random_state, **(_QUICK_OVERRIDES.get(name, {}) if quick else {})}
    if "verbose" in params:
        params["verbose"] = _show_bars()  # the VAE's epoch bar, on a terminal
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


def _select_examples(types, scores, per_type=1):
    """Indices of example test images: the highest-scoring normal and one per defect type."""
    chosen = []
    for t in sorted(set(types.tolist()), key=lambda t: (t != "good", t)):
        idx = np.flatnonzero(types == t)
        chosen += idx[np.argsort(-scores[idx])][:per_type].tolist()
    return chosen


def _show_bars():
    """Progress bars only where someone watches: on a terminal (stderr a TTY)."""
    return sys.stderr.isatty()


def _explain_in_chunks(det, X, name, chunk=8):
    """``det.explain(X)`` in chunks behind a progress bar (batch-wise equals whole-array)."""
    from greyanom._progress import progress_stage

    scores, heatmaps = [], []
    with progress_stage(f"{name} explain", total=len(X), unit="img", verbose=_show_bars(), logger=logger) as bar:
        for start in range(0, len(X), chunk):
            expl = det.explain(X[start : start + chunk])
            scores.append(expl.score)
            heatmaps.append(expl.heatmap)
            bar.update(len(expl.score))
    return np.concatenate(scores), np.concatenate(heatmaps)


def _json_safe(value):
    """Strict JSON: numpy scalars as numbers, a non-finite float (threshold = inf) as a string."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else str(float(value))
    return value


def _write_results(out, data, detectors, reports, results, timings, args, n_train, n_test, *, plots, new=None):
    """(Re)write metrics.txt, metrics.json and, with plots, the figures of the finished detectors."""
    from greyanom.metrics import format_reports

    table = format_reports(reports)
    reasons = "\n".join(f"  {name}: {DEMO_REASONS.get(name, '')}" for name in reports)
    table = f"{table}\nwhy each detector is here:\n{reasons}\n  {DEMO_UNALIGNED_NOTE}"
    (out / "metrics.txt").write_text(table + "\n")
    summary = {
        "data": {"n_train": n_train, "n_test": n_test, "image_size": args.image_size, "random_state": args.random_state},
        "pixel_metrics_on": "heatmap smoothed by the detector's smoothing_sigma (the map the score is reduced from)",
        "detectors": {
            name: {"class": type(detectors[name]).__name__, "reason": DEMO_REASONS.get(name, ""),
                   "params": {k: repr(v) for k, v in detectors[name].get_params().items()}, **timings[name],
                   **reports[name].to_dict()}
            for name in reports
        },
        "unaligned_parts": DEMO_UNALIGNED_NOTE,
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    written = [out / "metrics.txt", out / "metrics.json"]
    from greyanom.decision import format_decision_tables  # PASS/REVIEW/REJECT per true class (issue 10)

    decisions = format_decision_tables(
        {name: (detectors[name].heldout_scores_, results[name][0]) for name in results},
        data.defect_types_test,
        review_fpr=args.target_fpr,
    )
    (out / "decisions.txt").write_text(decisions + "\n")
    written.append(out / "decisions.txt")
    if plots:
        written += _write_plots(out, data, results, reports, args.target_fpr, new=new)
    return table, decisions, written


def _run_demo(args):
    from greyanom.datasets import make_wafer_images
    from greyanom.image import smooth_maps
    from greyanom.metrics import evaluate

    n_train = args.n_train if args.n_train is not None else (60 if args.quick else 200)
    n_test = args.n_test if args.n_test is not None else (40 if args.quick else 100)
    names = _resolve_detectors(args.detectors, args.full)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data = make_wafer_images(
        n_train=n_train, n_test=n_test, image_size=args.image_size, random_state=args.random_state
    )
    logger.info("generated %d training and %d test wafer images (%dx%d) in %.1f s",
                n_train, n_test, args.image_size, args.image_size, time.perf_counter() - t0)
    detectors = {}
    for name in names:
        det = _make_detector(name, args.random_state, args.quick)
        if det is not None:
            detectors[name] = det
    if not detectors:
        logger.error("none of the requested detectors (%s) is available", ", ".join(names))
        return 1

    plots = not args.no_plots and _pyplot() is not None
    reports, results, timings, written = {}, {}, {}, []
    for k, (name, det) in enumerate(detectors.items(), 1):
        logger.info("[%d/%d] fitting %s on %d images (%s)", k, len(detectors), name, n_train, DEMO_REASONS.get(name, ""))
        t0 = time.perf_counter()
        try:
            det.fit(data.X_train)
        except ImportError as exc:  # an optional extra missing: the detector says which
            logger.info("skipping %s: %s", name, exc)
            continue
        t1 = time.perf_counter()
        logger.info("[%d/%d] %s fitted in %.1f s; explaining %d test images", k, len(detectors), name, t1 - t0, n_test)
        scores, heatmap = _explain_in_chunks(det, data.X_test, name)
        t2 = time.perf_counter()
        timings[name] = {"fit_s": t1 - t0, "explain_s": t2 - t1}
        # Pixel metrics use the map the score is reduced from: the heatmap blurred by the
        # detector's smoothing_sigma (as the README snippet does with smooth_maps).
        heatmap = smooth_maps(heatmap, float(getattr(det, "smoothing_sigma", 0.0) or 0.0))
        results[name] = (scores, heatmap)
        reports[name] = evaluate(
            data.y_test,
            scores,
            heatmaps=heatmap,
            masks=data.masks_test,
            defect_types=data.defect_types_test,
            target_fpr=args.target_fpr,
        )
        t3 = time.perf_counter()
        table, decisions, written = _write_results(out, data, detectors, reports, results, timings, args, n_train, n_test,
                                                   plots=plots, new=name)
        logger.info("[%d/%d] %s done (explain %.1f s, metrics %.1f s, files %.1f s): AUROC %.3f, pixel AUROC %.3f; "
                    "results so far in %s", k, len(detectors), name, t2 - t1, t3 - t2, time.perf_counter() - t3,
                    reports[name].auroc, reports[name].pixel_auroc, out)

    if not results:
        logger.error("none of the requested detectors (%s) could be fitted", ", ".join(names))
        return 1
    run_traces = args.traces == "yes" or (
        args.traces == "auto" and (args.full or args.detectors.strip() in ("default", "all"))
    )
    trace_table = _run_trace_demo(out, args, written) if run_traces else None

    print(f"greyanom demo: {len(data.X_train)} training / {len(data.X_test)} test wafer images "
          f"({int(data.y_test.sum())} defective), target FPR {args.target_fpr:g}")
    print(table)
    print("pixel AUROC and AUPRO on the heatmaps smoothed by each detector's smoothing_sigma")
    print()
    print(decisions)
    print("fit / explain seconds: " + ", ".join(f"{n} {t['fit_s']:.1f} / {t['explain_s']:.1f}" for n, t in timings.items()))
    if trace_table is not None:
        print()
        print(trace_table)
    print(f"wrote {len(written)} files to {out.resolve()}:")
    for path in written:
        print(f"  {path.name}")
    return 0


#: Fault types of the trace part of the demo (see greyanom.datasets.make_pi_lots).
DEMO_TRACE_FAULTS = ("controller_gain", "process_gain", "time_constant", "setpoint_offset", "setpoint_slope",
                     "noise_burst", "outliers")


def _wafer_auroc(scores, normal, hit):
    """AUROC of the wafers ``hit`` against the normal wafers."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(normal.sum()), np.ones(hit.sum())]
    return round(float(roc_auc_score(y, np.r_[scores[normal], scores[hit]])), 3)


def _run_trace_demo(out, args, written):
    """The wafer-level ShapeSignatureDetector beside MultiwayPCADetector on simulated PI-loop lots.

    Both fit on the clean lots and score the wafers of the later lots (``score_wafers``,
    flagged above ``wafer_threshold_``); the shape detector's trace explanation names the
    parameter each fault moved.
    """
    import pandas as pd

    from greyanom import MultiwayPCADetector, ShapeSignatureDetector
    from greyanom.datasets import make_pi_lots

    n_lots, n_clean, per_fault = (6, 3, 2) if args.quick else (10, 4, 4)
    t0 = time.perf_counter()
    df = make_pi_lots(n_lots=n_lots, wafers_per_lot=10, faults={f: per_fault for f in DEMO_TRACE_FAULTS},
                      n_clean_lots=n_clean, random_state=args.random_state)
    logger.info("traces: simulated %d lots of 10 wafers through a PI loop (solve_ivp) in %.1f s",
                n_lots, time.perf_counter() - t0)
    lots = sorted(df["lot"].unique())
    train, held_out = df[df["lot"].isin(lots[:n_clean])], df[df["lot"].isin(lots[n_clean:])]
    detectors = {
        "ShapeSignatureDetector": ShapeSignatureDetector(lot_key="lot", random_state=args.random_state),
        "MultiwayPCADetector": MultiwayPCADetector(group_keys=("sensor",), lot_key="lot",
                                                   random_state=args.random_state),
    }
    scores, flagged, seconds = {}, {}, {}
    for name, det in detectors.items():
        logger.info("traces: fitting %s on %d clean lots (%s)", name, n_clean, DEMO_TRACE_REASONS[name])
        t0 = time.perf_counter()
        det.fit(train)
        s = det.score_wafers(held_out)
        scores[name] = s
        flagged[name] = ~(s.to_numpy() <= det.wafer_threshold_)  # an unscored wafer is flagged
        seconds[name] = time.perf_counter() - t0
        logger.info("traces: %s fitted and scored %d wafers in %.1f s", name, len(s), seconds[name])
    shape = detectors["ShapeSignatureDetector"]
    t0 = time.perf_counter()
    explanation = shape.explain(held_out)  # per trace (one per wafer here): which parameter moved
    terms = explanation[["fit", "gamma", "R", "omega", "y", "phi", "c"]]
    index = scores["ShapeSignatureDetector"].index
    top_term = terms.idxmax(axis=1).groupby(level="wafer", sort=False).first().reindex(index)
    seconds["explain"] = time.perf_counter() - t0
    fault = held_out.groupby("wafer", sort=False)["fault"].first().reindex(index)
    normal = fault.isna().to_numpy()
    s_shape = scores["ShapeSignatureDetector"].to_numpy()
    s_mpca = scores["MultiwayPCADetector"].reindex(index).to_numpy()
    f_mpca = pd.Series(flagged["MultiwayPCADetector"], index=scores["MultiwayPCADetector"].index).reindex(index)
    f_mpca = f_mpca.to_numpy(dtype=bool)
    rows = []
    for name in DEMO_TRACE_FAULTS:
        hit = (fault == name).to_numpy()
        if not hit.any():
            continue
        top = top_term[hit].value_counts()
        rows.append({"fault": name, "n": int(hit.sum()),
                     "shape AUROC": _wafer_auroc(s_shape, normal, hit),
                     "shape flagged": f"{int(flagged['ShapeSignatureDetector'][hit].sum())}/{int(hit.sum())}",
                     "MPCA AUROC": _wafer_auroc(s_mpca, normal, hit),
                     "MPCA flagged": f"{int(f_mpca[hit].sum())}/{int(hit.sum())}",
                     "shape: parameter moved": ", ".join(f"{k} {v}" for k, v in top.items())})
    rows.append({"fault": "none (normal)", "n": int(normal.sum()), "shape AUROC": float("nan"),
                 "shape flagged": f"{int(flagged['ShapeSignatureDetector'][normal].sum())}/{int(normal.sum())}",
                 "MPCA AUROC": float("nan"), "MPCA flagged": f"{int(f_mpca[normal].sum())}/{int(normal.sum())}",
                 "shape: parameter moved": ""})
    table = pd.DataFrame(rows).to_string(index=False, na_rep="")
    header = (f"wafer-level trace detectors on simulated PI-loop lots: {n_clean} clean lots fit the normal models, "
              f"{int(normal.sum())} held-out normal wafers; fit + score s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    reasons = "\n".join(f"  {name}: {reason}" for name, reason in DEMO_TRACE_REASONS.items())
    text = f"{header}\n{table}\nwhy each detector is here:\n{reasons}"
    (out / "traces.txt").write_text(text + "\n")
    written.append(out / "traces.txt")
    logger.info("traces: done (%s), wrote %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
                out / "traces.txt")
    plt = None if args.no_plots else _pyplot()
    if plt is not None:
        from greyanom.plotting import plot_score_series

        ax = plot_score_series(scores["ShapeSignatureDetector"], reference=shape.wafer_heldout_scores_,
                               labels=fault.notna(), yscale="symlog")
        ax.set_title("ShapeSignatureDetector: centred wafer scores of the held-out lots (faults marked)")
        ax.figure.tight_layout()
        ax.figure.savefig(out / "trace_scores.png", dpi=110)
        plt.close(ax.figure)
        written.append(out / "trace_scores.png")
    return text


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        logger.warning("no plots written: %s", exc)
        return None
    return plt


def _write_plots(out, data, results, reports, target_fpr, new=None):
    """ROC and score plots of every finished detector; heatmaps of ``new`` (default: all)."""
    plt = _pyplot()
    if plt is None:
        return []
    from greyanom.plotting import plot_heatmap_overlays, plot_roc, plot_score_distributions

    written = []
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for name, (scores, _) in results.items():
        plot_roc(data.y_test, scores, target_fpr=target_fpr, label=name, ax=ax)
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    written.append(out / "roc.png")

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False, layout="constrained")
    for ax, (name, (scores, _)) in zip(axes[0], results.items()):
        plot_score_distributions(data.y_test, scores, threshold=reports[name].threshold, title=name, ax=ax)
    fig.savefig(out / "score_distributions.png", dpi=120)
    plt.close(fig)
    written.append(out / "score_distributions.png")

    for name, (scores, heatmap) in results.items():
        path = out / f"heatmaps_{name}.png"
        if new is not None and name != new:
            written.append(path)  # written when that detector finished
            continue
        idx = _select_examples(data.defect_types_test, scores)
        titles = [f"{data.defect_types_test[i]}  score {scores[i]:.3g}" for i in idx]
        fig = plot_heatmap_overlays(data.X_test[idx], heatmap[idx], data.masks_test[idx], titles=titles, n_cols=3)
        fig.suptitle(f"{name}: heatmaps (cyan: true defect outline)")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    """Run the ``greyanom`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``), e.g. ``["demo", "--quick"]``.

    Returns
    -------
    status : int
        The exit status, 0 on success.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "handler", None) is not None:  # registry, retrain (greyanom.registry._cli)
        return args.handler(args)
    if args.command == "serve":
        return _run_serve(args, parser)
    if args.command == "demo":
        _check_args(args.subparser, args)
        return _run_demo(args)
    return 2  # pragma: no cover (argparse rejects unknown commands)
