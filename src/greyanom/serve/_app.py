"""The inspection service: the case study's REST contract on FastAPI.

``create_app`` builds the ASGI app around a saved detector and a decision policy;
``serve`` runs it under uvicorn (one process, or several workers sharing the records
database and the metrics). ``greyanom serve`` on the command line calls ``serve``.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations, whose
# classes (Request) are imported inside create_app

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from greyanom.serve._batcher import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    BatchedInspector,
    BatcherClosed,
    QueueFull,
    check_batch_options,
)
from greyanom.serve._follow import DEFAULT_POLL_S, RegistryFollower
from greyanom.serve._images import ImageError, colormap_lut, decode_image, heatmap_png
from greyanom.serve._rollout import DEFAULT_MAX_FNR, DEFAULT_MIN_DEFECTS, FNRGuardrail
from greyanom.serve._served import Explained, ServedModel
from greyanom.serve._switch import ModelSwitch, Plan, check_fraction

__all__ = ["InspectionService", "create_app", "serve", "app_from_env", "DEFAULT_MAX_BODY_BYTES"]

logger = logging.getLogger("greyanom.serve")

#: Request bodies above this many bytes are answered 413 (a 256x256 16-bit TIFF is 128 KiB).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Environment variable through which ``serve`` hands its settings to uvicorn workers.
CONFIG_ENV = "GREYANOM_SERVE_CONFIG"


class InspectionService:
    """Score, decide, record: the work behind ``POST /api/v1/inspect``, without HTTP.

    The served model (a :class:`~greyanom.serve._served.ServedModel`: detector, policy,
    versions, heatmap range, drift window) is one reference the service swaps atomically:
    each request takes it once at its start (:meth:`plan`) and finishes on that model, so a
    promotion or a rollback in the registry never fails a request in flight.

    Parameters
    ----------
    model : str, path-like or fitted image detector, optional
        A model file written by a detector's ``save`` (loaded with :func:`greyanom.load`),
        or a fitted detector (then ``model_version`` names it). Not with ``registry``.
    policy : str, path-like or fitted DecisionPolicy, optional
        A policy file written by :meth:`greyanom.decision.DecisionPolicy.save`, or a
        fitted policy. Not with ``registry``.
    registry : str, path-like or ModelRegistry, optional
        Serve the production version of ``name`` in this :class:`~greyanom.registry.ModelRegistry`
        and follow its promotions and rollbacks (see :meth:`follow`).
    name : str, optional
        The registered model's name (with ``registry``).
    shadow : str, optional
        A registry version scored beside production on every image, recorded, never deciding.
    canary : str, optional
        A registry version that decides ``canary_fraction`` of the requests.
    canary_fraction : float in (0, 1), default=0.1
    registry_poll_s : float, default=1.0
        Seconds between two reads of the registry's revision.
    max_fnr : float, default=0.01
        The FNR guardrail's limit (see :class:`~greyanom.serve._rollout.FNRGuardrail`).
    min_reviewed_defects : int, default=100
        Reviewed defects before the guardrail judges a candidate.
    db_url : str, default="sqlite:///greyanom-inspections.db"
        SQLAlchemy URL of the records database.
    resize : bool, default=False
        Resize images of another size to the model's (otherwise they are answered 422).
    heatmap_vmax : float, default=2.0
        Value on the normal range (0 = its bottom, 1 = its top; see :meth:`normalize`)
        drawn in the brightest colour.
    drift_window : int, default=500
        Recent scores the drift test compares with the policy's calibration scores.
    drift_every : int, default=50
        Run the drift test after every this many inspections (once the window holds at
        least ``drift_every`` scores).
    drift_alpha : float, default=0.01
        Significance level of :class:`greyanom.drift.ScoreDriftMonitor` (the case study's
        alert: KS p-value < 0.01).
    threads : int or None, default=1
        Torch threads per inference; requests run concurrently in uvicorn's thread pool,
        so one thread each uses the cores without oversubscription. With micro-batching
        (``create_app(max_batch > 1)``) one batched forward pass runs at a time, with these
        threads. None leaves torch's setting.
    model_version : str, optional
        Overrides the version of a model file (by default a content hash of the file plus
        the greyanom version).
    allow_unbound_policy : bool, default=False
        Accept a policy fitted without ``model=`` (logged as a warning). A policy bound to
        another model is always refused; a registry version must always be bound.
    keep_images : bool, default=False
        Also keep the raw image of PASS inspections (REVIEW and REJECT images are always
        kept for review).
    audit_sample : float in [0, 1], default=0.0
        Fraction of PASS and REJECT inspections put in the review queue beside every
        REVIEW (their images are kept).
    random_state : int or None, default=None
        Seeds the audit sample and the canary's choice of requests.

    Attributes
    ----------
    production : ServedModel
        The model deciding now (``detector``, ``policy``, ``model_version``,
        ``policy_version``, ``model_hash`` and ``image_shape`` are its).
    candidate : ServedModel or None
        The shadow or canary candidate.
    models : ModelSwitch
        Production and the candidate, swapped atomically; rollouts and the guardrail.
    follower : RegistryFollower or None
    guardrail : FNRGuardrail
    records : Records
    reviews : ReviewStore
    audit : AuditLog
    metrics : ServiceMetrics
    """

    def __init__(
        self,
        model=None,
        policy=None,
        *,
        registry=None,
        name=None,
        shadow=None,
        canary=None,
        canary_fraction=0.1,
        registry_poll_s=DEFAULT_POLL_S,
        max_fnr=DEFAULT_MAX_FNR,
        min_reviewed_defects=DEFAULT_MIN_DEFECTS,
        db_url="sqlite:///greyanom-inspections.db",
        resize=False,
        heatmap_vmax=2.0,
        drift_window=500,
        drift_every=50,
        drift_alpha=0.01,
        threads=1,
        model_version=None,
        allow_unbound_policy=False,
        keep_images=False,
        audit_sample=0.0,
        random_state=None,
    ):
        import random

        from greyanom.serve._audit import AuditLog
        from greyanom.serve._metrics import ServiceMetrics, score_buckets
        from greyanom.serve._records import Records
        from greyanom.serve._review_store import ReviewMetrics, ReviewStore

        if shadow is not None and canary is not None:
            raise ValueError("give shadow or canary, not both.")
        check_fraction(canary_fraction)
        drift = {"drift_window": drift_window, "drift_every": drift_every, "drift_alpha": drift_alpha}
        self.guardrail = FNRGuardrail(max_fnr, min_reviewed_defects)
        self.follower = None
        if registry is not None:
            from greyanom.registry import ModelRegistry

            if model is not None or policy is not None:
                raise ValueError("give either registry (with name) or model and policy, not both.")
            if name is None:
                raise ValueError("registry needs name: the registered model to serve.")
            registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
            self.follower = RegistryFollower(registry, name, poll_s=registry_poll_s, **drift)
            production = self.follower.load(registry.production(name))
            if shadow is not None or canary is not None:
                registry.get(name, shadow or canary)  # an unknown version fails before the database is opened
        else:
            if model is None or policy is None:
                raise ValueError("give model and policy (files or fitted objects), or registry and name.")
            if shadow is not None or canary is not None:
                raise ValueError("shadow and canary name registry versions: serve with registry and name.")
            production = ServedModel(model, policy, model_version=model_version,
                                     allow_unbound_policy=allow_unbound_policy, **drift)
            if not production.policy_bound:
                logger.warning("the decision policy is not bound to a model; its thresholds are applied to %s %s "
                               "unchecked (--allow-unbound-policy).", type(production.detector).__name__,
                               production.model_hash[:19])
        if isinstance(audit_sample, bool) or not 0.0 <= float(audit_sample) <= 1.0:
            raise ValueError(f"audit_sample must be a fraction in [0, 1], got {audit_sample!r}.")
        if heatmap_vmax <= 0:
            raise ValueError(f"heatmap_vmax must be positive, got {heatmap_vmax!r}.")
        self.keep_images = bool(keep_images)
        self.audit_sample = float(audit_sample)
        self._audit_rng = random.Random(random_state)
        self.resize = bool(resize)
        self.heatmap_vmax = float(heatmap_vmax)
        self._threads = threads
        self._set_threads(threads, production)
        self.records = Records(db_url)
        self.reviews = ReviewStore(self.records)
        self.audit = AuditLog(self.records)
        pol = production.policy
        self.metrics = ServiceMetrics(
            score_buckets(getattr(pol, "calibration_scores_", ()), pol.review_threshold_, pol.reject_threshold_),
            model_class=type(production.detector).__name__,
            model_version=production.model_version,
        )
        self.review_metrics = ReviewMetrics(self.metrics)
        self.metrics.before_render.append(lambda: self.review_metrics.update(self.reviews.stats()))
        self._lut = colormap_lut()
        self._lock = threading.Lock()
        self.models = ModelSwitch(production, records=self.records, audit=self.audit, guardrail=self.guardrail,
                                  follower=self.follower, random_state=random_state,
                                  prepare=lambda served: self._set_threads(self._threads, served))
        self.models.on_swap.append(self._announce)
        if shadow is not None or canary is not None:
            self.models.start_rollout("shadow" if shadow is not None else "canary", shadow or canary,
                                      fraction=canary_fraction)
        if self.follower is not None:
            self.follower.warm_up(() if self.candidate is None else (self.candidate.registry_version,))

    def _set_threads(self, threads, served):
        if threads is None:
            return
        from greyanom._optional import import_torch

        import_torch("the inspection service").set_num_threads(int(threads))
        # each request's score runs in the detector's thread-pool section (greyanom._threads):
        # with n_jobs=threads it keeps these threads; sections open at once share the CPUs
        served.own_threads(threads)

    def _announce(self, old, new):
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(type(old.detector).__name__, old.model_version)
        self.metrics.model_info.labels(model_class=type(new.detector).__name__, model_version=new.model_version).set(1)

    # -- the served models ------------------------------------------------------------------
    @property
    def production(self):
        """The :class:`ServedModel` deciding now."""
        return self.models.production

    @property
    def candidate(self):
        """The shadow or canary :class:`ServedModel`, or None."""
        return self.models.candidate

    detector = property(lambda self: self.production.detector, doc="The production detector.")
    policy = property(lambda self: self.production.policy, doc="The production decision policy.")
    model_version = property(lambda self: self.production.model_version, doc="The production model's version.")
    policy_version = property(lambda self: self.production.policy_version, doc="The production policy's version.")
    model_hash = property(lambda self: self.production.model_hash, doc="The production model's content hash.")
    image_shape = property(lambda self: self.production.image_shape, doc="The production model's image shape.")
    last_drift = property(lambda self: self.production.last_drift, doc="The production model's latest drift test.")

    def plan(self):
        """The models the next request runs on (:meth:`ModelSwitch.plan`)."""
        return self.models.plan()

    # -- heatmaps ------------------------------------------------------------------------
    def normalize(self, heatmap, served=None):
        """The heatmap on the model's normal range: 0 = its bottom, 1 = its top.

        The bottom and top come from training statistics: the detector's own
        ``normalize_heatmap`` where it has one (the VAE: 0 and the 99.5th percentile of the
        pixel errors of held-out normal images); otherwise the lowest calibration score and
        the REVIEW threshold of the policy (held-out normal scores, on the heatmap's scale
        for the ``topk`` and ``max`` reductions). One scale for every image, so the same
        colour means the same anomaly value. ``served`` is the model (production by default).
        """
        return (served or self.production).normalize(heatmap)

    # -- the inspection --------------------------------------------------------------------
    def inspect(self, body, wafer_id, inspection_point):
        """Decode, score, decide, render the heatmap, commit the record; return the answer.

        Raises
        ------
        ImageError
            If the body is not a usable image (the caller answers with its status).
        """
        t0 = time.perf_counter()
        plan = self.plan()
        explained = self.explain_plan([(plan.models, self.decode(body, plan))])[0]
        self.metrics.batch_size.observe(1)
        return self.answer(explained, wafer_id, inspection_point, body=body, started=t0, plan=plan)

    def decode(self, body, plan=None):
        """The request body as a float image of the model's shape (raises :class:`ImageError`)."""
        shape = (plan.models[0] if plan is not None else self.production).image_shape
        return decode_image(body, shape, resize=self.resize)

    def explain_images(self, images):
        """One ``explain`` of the decoded images by the production model; one ``Explained`` per image."""
        return self.production.explain_images(images)

    def explain_plan(self, items):
        """The micro-batcher's function: ``(models, image)`` items in, a tuple of ``Explained`` per item out.

        Items of the same models (one swap of the production model apart, at most two
        groups) share one ``explain`` per model.
        """
        groups = {}
        for i, (models, image) in enumerate(items):
            groups.setdefault(tuple(id(m) for m in models), (models, []))[1].append(i)
        out = [None] * len(items)
        for models, where in groups.values():
            stacked = np.stack([items[i][1] for i in where]) if len(where) > 1 else items[where[0]][1][None]
            per_model = [m.explain_images(stacked) for m in models]
            for j, i in enumerate(where):
                out[i] = tuple(p[j] for p in per_model)
        return out

    def answer(self, explained, wafer_id, inspection_point, *, body=None, started=None, spent_s=0.0, plan=None):
        """Decide, render the heatmap, commit the record, observe; return the answer of one image.

        ``explained`` holds one ``Explained`` per model of ``plan`` (the deciding model
        first; one ``Explained`` alone is production's). ``body`` is the request's raw
        image, kept with the record when the decision (or the audit sample, or
        ``keep_images``) says so.

        ``inference_time_ms`` is ``spent_s`` plus the time since ``started`` (default: now):
        :meth:`inspect` starts the clock before decoding; the micro-batcher passes the decode
        time plus its batch's forward pass as ``spent_s``.
        """
        t0 = time.perf_counter() if started is None else started
        if isinstance(explained, Explained):
            explained = (explained,)
        if plan is None:
            plan = Plan((self.production,), ("production",))
        deciding = plan.models[0]
        score = explained[0].score
        decision, confidence = deciding.decide(score)
        rows = []
        for model, role, ex in zip(plan.models, plan.roles, explained):
            t_decide = time.perf_counter()
            own = decision if model is deciding else model.decide(ex.score)[0]
            rows.append({"model_version": model.model_version, "registry_version": model.registry_version,
                         "role": role, "decided": model is deciding, "anomaly_score": ex.score, "decision": own,
                         "latency_ms": 1000.0 * (ex.forward_s + time.perf_counter() - t_decide)})
        png = heatmap_png(deciding.normalize(explained[0].heatmap), self._lut, vmax=self.heatmap_vmax)
        latent = explained[0].latent
        queued, keep = self._review_fate(decision)
        elapsed_ms = 1000.0 * (spent_s + time.perf_counter() - t0)
        t1 = time.perf_counter()
        record = self.records.add(
            wafer_id=wafer_id,
            inspection_point=int(inspection_point),
            anomaly_score=score,
            decision=decision,
            confidence=confidence,
            model_version=deciding.model_version,
            policy_version=deciding.policy_version,
            inference_time_ms=elapsed_ms,
            heatmap_png=png,
            image=body if keep else None,
            queued=queued,
            scores=rows,
        )
        self.metrics.database.observe(time.perf_counter() - t1)
        self.metrics.inference.observe(elapsed_ms / 1000.0)
        self.metrics.scores.observe(score)
        self.metrics.decisions.labels(decision=decision).inc()
        if plan.roles[0] == "production":
            self._observe_drift(deciding, score)
        answer = {
            "id": record["id"],
            "wafer_id": wafer_id,
            "inspection_point": int(inspection_point),
            "anomaly_score": score,
            "decision": decision,
            "confidence": confidence,
            "heatmap_url": record["heatmap_url"],
            "model_version": deciding.model_version,
            "inference_time_ms": round(elapsed_ms, 3),
        }
        if latent is not None:
            answer["latent_vector"] = [float(v) for v in latent]
        return answer

    def _review_fate(self, decision):
        """``(queued, keep image)``: every REVIEW is queued; PASS and REJECT in the audit sample."""
        if decision == "REVIEW":
            return True, True
        with self._lock:
            sampled = self.audit_sample > 0 and self._audit_rng.random() < self.audit_sample
        return sampled, sampled or decision == "REJECT" or self.keep_images

    def _observe_drift(self, served, score):
        result = served.observe_drift(score)
        if result is None:
            return
        self.metrics.drift_p_value.set(float(result.p_value))
        self.metrics.drift_statistic.set(float(result.statistic))
        self.metrics.drift_window.set(len(served._window))
        self.metrics.reject_rate.set(float(result.reject_rate))

    def describe(self):
        """What ``GET /api/v1/model`` answers."""
        import greyanom

        out = self.production.describe()
        out.update(greyanom_version=greyanom.__version__, resize=self.resize, heatmap_vmax=self.heatmap_vmax,
                   registry=None if self.follower is None else self.follower.name, rollout=self.models.rollout())
        return out


def _error(status, code, message):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": code, "message": message, "status": status}, status_code=status)


class _BodyTooLarge(Exception):
    pass


async def _read_body(request, limit):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    model=None,
    policy=None,
    *,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    token_file=None,
    max_batch=DEFAULT_MAX_BATCH,
    max_wait_ms=DEFAULT_MAX_WAIT_MS,
    max_queue=DEFAULT_MAX_QUEUE,
    **service_kwargs,
):
    """The inspection service as a FastAPI app.

    Endpoints: ``POST /api/v1/inspect?wafer_id=...&inspection_point=...`` (raw PNG or TIFF
    bytes; the case study's contract), ``GET /api/v1/heatmaps/{id}.png``,
    ``GET /api/v1/inspections?wafer_id=...``, ``GET /api/v1/model``, ``GET /healthz`` and
    ``GET /metrics`` (Prometheus text); the review routes ``POST
    /api/v1/inspections/{id}/review``, ``GET /api/v1/inspections/{id}``,
    ``GET /api/v1/inspections/{id}/image.png``, ``GET /api/v1/review/queue``,
    ``GET /api/v1/stats``, ``GET /api/v1/audit`` and the review page ``/review``. Every
    error is a JSON object ``{"error": code, "message": ..., "status": ...}``.

    Served from a model registry (``registry=``, ``name=``), the app follows promotions
    and rollbacks without a restart (a background thread polls the registry), and adds
    ``GET /api/v1/compare`` (candidate against production, see the rollout guide),
    ``GET /api/v1/rollout`` and ``POST /api/v1/rollout`` (start or stop a shadow or canary
    candidate; role admin).

    Parameters
    ----------
    model : str, path-like or fitted image detector, optional
        See :class:`InspectionService`.
    policy : str, path-like or fitted DecisionPolicy, optional
        See :class:`InspectionService`.
    max_body_bytes : int, default=4 MiB
        Larger request bodies are answered 413 without being read whole.
    token_file : str or path-like, optional
        Bearer tokens and their roles, ``TOKEN ROLE [NAME]`` a line (see
        :mod:`greyanom.serve._auth`). Then every route but ``/healthz`` needs a token
        (``/metrics`` the admin role). None: no access control, which :func:`serve`
        allows on loopback only.
    max_batch : int, default=1
        Dynamic micro-batching: up to this many concurrent requests share one forward
        pass of the detector (one asyncio consumer, see the serving guide); each
        still gets its own record and answer. 1 (the default) turns batching off: every
        request runs its own forward pass in the thread pool, with no added wait.
    max_wait_ms : float, default=5.0
        With batching on, the longest a batch waits for more requests after its first
        one arrived; requests that queued while the previous batch ran are taken at once.
    max_queue : int, default=128
        With batching on, the most images waiting for the model; further requests are
        answered 503 ``queue_full`` (with ``Retry-After: 1``).
    **service_kwargs
        ``registry``, ``name``, ``shadow``, ``canary``, ``canary_fraction``,
        ``registry_poll_s``, ``max_fnr``, ``min_reviewed_defects``, ``db_url``, ``resize``, ``heatmap_vmax``, ``drift_window``, ``drift_every``,
        ``drift_alpha``, ``threads``, ``model_version``, ``allow_unbound_policy``,
        ``keep_images``, ``audit_sample``, ``random_state``: see :class:`InspectionService`.

    Returns
    -------
    app : fastapi.FastAPI
        With the service as ``app.state.service`` and the micro-batcher (None when
        ``max_batch`` is 1) as ``app.state.batched``.

    Examples
    --------
    >>> from greyanom.serve import create_app  # doctest: +SKIP
    >>> app = create_app("model.safetensors", "policy.safetensors", db_url="sqlite://")  # doctest: +SKIP
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    if int(max_body_bytes) < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}.")
    from greyanom.serve._auth import AuthMiddleware, token_store
    from greyanom.serve._review import install_review
    from greyanom.serve._rollout_routes import install_rollout

    tokens = token_store(token_file)
    max_batch, max_wait_ms, max_queue = check_batch_options(max_batch, max_wait_ms, max_queue)
    service = InspectionService(model, policy, **service_kwargs)
    follower = service.follower
    metrics = service.metrics
    batched = None
    if max_batch > 1:
        batched = BatchedInspector(service, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if batched is not None:
            batched.start()
        if follower is not None:
            follower.start(service.models)
        yield
        if follower is not None:
            follower.stop()
        if batched is not None:
            await batched.close()
        service.records.close()

    app = FastAPI(
        title="greyanom inspection service",
        version=service.model_version,
        description="Anomaly scores, PASS/REVIEW/REJECT decisions and heatmaps for inspection images.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.batched = batched

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc):
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route; see /docs for the API."
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        metrics.rejected.labels(reason="bad_parameters").inc()
        return _error(422, "bad_parameters", "; ".join(parts) or "invalid request parameters")

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc):  # never a traceback to the client
        logger.exception("internal error while answering a request")
        return _error(500, "internal_error", f"the service failed to answer ({type(exc).__name__}); see its log.")

    @app.middleware("http")
    async def _timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(
            method=request.method, route=getattr(route, "path", "unmatched"), status=str(response.status_code)
        ).observe(time.perf_counter() - t0)
        return response

    @app.post("/api/v1/inspect", summary="Score one image, decide, record it")
    async def inspect(
        request: Request,
        wafer_id: str = Query(..., min_length=1, max_length=128, description="wafer identifier"),
        inspection_point: int = Query(..., ge=0, le=2**31 - 1, description="inspection point on the wafer"),
    ):
        try:
            body = await _read_body(request, int(max_body_bytes))
        except _BodyTooLarge as exc:
            metrics.rejected.labels(reason="too_large").inc()
            return _error(413, "too_large", f"the body has {exc.args[0]} bytes or more; the limit is {int(max_body_bytes)}.")
        try:
            if batched is None:
                return await run_in_threadpool(service.inspect, body, wafer_id, inspection_point)
            return await batched.inspect(body, wafer_id, inspection_point)
        except (QueueFull, BatcherClosed) as exc:
            code = "queue_full" if isinstance(exc, QueueFull) else "shutting_down"
            metrics.rejected.labels(reason=code).inc()
            response = _error(503, code, str(exc))
            response.headers["Retry-After"] = "1"
            return response
        except ImageError as exc:
            metrics.rejected.labels(reason=exc.code).inc()
            return _error(exc.status, exc.code, str(exc))
        except Exception as exc:  # the model or the database failed: answer, log, keep serving
            logger.exception("inspection of wafer %r point %d failed", wafer_id, inspection_point)
            metrics.rejected.labels(reason="internal_error").inc()
            return _error(500, "internal_error", f"the inspection failed ({type(exc).__name__}); see the service log.")

    @app.get("/api/v1/heatmaps/{inspection_id}.png", summary="The coloured heatmap of an inspection")
    def heatmap(inspection_id: int):
        png = service.records.heatmap(inspection_id)
        if png is None:
            return _error(404, "not_found", f"no heatmap for inspection {inspection_id}.")
        return Response(content=png, media_type="image/png")

    @app.get("/api/v1/inspections", summary="Stored inspection records, newest first")
    def inspections(
        wafer_id: str | None = Query(None, max_length=128),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ):
        return {"inspections": service.records.query(wafer_id=wafer_id, limit=limit, offset=offset)}

    @app.get("/api/v1/model", summary="The served model: class, version, thresholds")
    def model_info():
        return service.describe()

    @app.get("/healthz", summary="Liveness and database check")
    def healthz():
        try:
            service.records.ping()
        except Exception as exc:  # the database is down: the service cannot record, so not healthy
            return _error(503, "database_unavailable", f"the records database does not answer: {type(exc).__name__}")
        return {"status": "ok", "model_version": service.model_version,
                "registry_version": service.production.registry_version}

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus():
        content, content_type = metrics.render()
        return Response(content=content, media_type=content_type)

    install_review(app, service, tokens, _error)
    install_rollout(app, service, tokens, _error)
    if tokens is not None:
        app.add_middleware(AuthMiddleware, tokens=tokens,
                           on_denied=lambda status: metrics.rejected.labels(reason=f"http_{status}").inc())
    return app


def app_from_env():
    """App factory for uvicorn workers: the settings come from ``GREYANOM_SERVE_CONFIG`` (JSON)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the service with `greyanom serve`.")
    return create_app(**json.loads(raw))


def serve(
    model=None,
    policy=None,
    *,
    db_url="sqlite:///greyanom-inspections.db",
    host="127.0.0.1",
    port=8080,
    workers=1,
    access_log=False,
    log_level="info",
    **app_kwargs,
):
    """Run the inspection service under uvicorn until interrupted.

    Parameters
    ----------
    model, policy : str or path-like, optional
        The model file and the decision-policy file; or ``registry=`` and ``name=`` in
        ``app_kwargs`` (see :func:`create_app`).
    db_url : str, default="sqlite:///greyanom-inspections.db"
        SQLAlchemy URL of the records database, shared by all workers.
    host : str, default="127.0.0.1"
        Interface to listen on; ``0.0.0.0`` exposes the service to the network, which
        needs ``token_file`` (without one the service binds loopback only).
    port : int, default=8080
    workers : int, default=1
        uvicorn worker processes. Each loads the model; uvicorn restarts a worker that
        dies, so one worker's failure does not take the service down. With more than one,
        the Prometheus metrics of all workers are aggregated through a shared folder
        (``PROMETHEUS_MULTIPROC_DIR``, a temporary one unless set).
    access_log : bool, default=False
        uvicorn's per-request access log (method, path and status; never a header, so
        never a token).
    log_level : str, default="info"
    **app_kwargs
        Passed to :func:`create_app` (``resize``, ``max_body_bytes``, ``threads``, ``max_batch``,
        ``max_wait_ms``, ``max_queue``, ...). Each worker batches its own requests.
    """
    import shutil
    import tempfile

    from greyanom._optional import import_optional

    uvicorn = import_optional("uvicorn", "serve", "greyanom serve")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}.")
    from greyanom.serve._auth import is_loopback

    if app_kwargs.get("token_file") is None:
        if not is_loopback(host):
            raise ValueError(
                f"without a token file the service binds loopback only, not {host!r}: give --token-file "
                "(TOKEN ROLE [NAME] a line) to listen on other interfaces."
            )
        logger.warning("no token file: serving without access control on loopback (%s) only.", host)
    else:
        app_kwargs["token_file"] = str(Path(app_kwargs["token_file"]))
    registry = app_kwargs.get("registry")
    if registry is not None:
        from greyanom.registry import ModelRegistry

        if model is not None or policy is not None:
            raise ValueError("give either a registry (with a name) or a model and a policy, not both.")
        if not isinstance(registry, ModelRegistry):
            app_kwargs["registry"] = str(Path(registry))
        else:
            app_kwargs["registry"] = str(registry.root)
        ModelRegistry(app_kwargs["registry"]).production(app_kwargs.get("name"))  # fail here, once
        config = {"db_url": db_url, **app_kwargs}
    elif model is None or policy is None:
        raise ValueError("give a model and a policy, or a registry and a name.")
    else:
        config = {"model": str(Path(model)), "policy": str(Path(policy)), "db_url": db_url, **app_kwargs}
    options = {"host": host, "port": int(port), "access_log": bool(access_log), "log_level": log_level}
    if int(workers) == 1:
        uvicorn.run(create_app(**config), **options)
        return
    from greyanom._persist import read_config
    from greyanom.serve._records import Records

    if registry is None:
        read_config(model)  # fail here, once, rather than in every worker
        from greyanom.decision import DecisionPolicy

        DecisionPolicy.load(policy).check_model(model, allow_unbound=bool(app_kwargs.get("allow_unbound_policy")))
    Records(db_url).close()  # create the tables before the workers race to
    made_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made_dir = tempfile.mkdtemp(prefix="greyanom-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    os.environ[CONFIG_ENV] = json.dumps(config)
    try:
        uvicorn.run("greyanom.serve._app:app_from_env", factory=True, workers=int(workers), **options)
    finally:
        if made_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(made_dir, ignore_errors=True)
