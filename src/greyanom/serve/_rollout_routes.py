"""The rollout routes of the inspection service: compare a candidate, start and stop it.

``GET /api/v1/compare`` and ``GET /api/v1/rollout`` are readable by the ``review`` and
``admin`` roles; ``POST /api/v1/rollout`` (a change) needs ``admin``
(:func:`greyanom.serve._auth.required_roles`).
"""

# no `from __future__ import annotations`: FastAPI and pydantic read the annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from greyanom.serve._review import _principal, _time

__all__ = ["RolloutIn", "install_rollout"]


class RolloutIn(BaseModel):
    """The body of ``POST /api/v1/rollout``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["shadow", "canary", "off"] = Field(description="start a shadow or canary candidate, or stop it")
    version: str | None = Field(None, max_length=32, description="the registry version of the candidate")
    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="with canary: the fraction of requests it decides")


def install_rollout(app, service, tokens, error):
    """Add the rollout routes to ``app`` for ``service`` (an :class:`InspectionService`)."""
    from fastapi import Query, Request
    from starlette.concurrency import run_in_threadpool

    from greyanom.registry import RegistryError

    @app.get("/api/v1/compare", summary="Candidate against production: rates, tests, latency, FNR (role review)")
    def get_compare(
        since: str | None = Query(None, description="ISO 8601 time; by default the start of the rollout"),
        alpha: float = Query(0.01, gt=0.0, lt=1.0, description="significance level of the tests"),
    ):
        try:
            start = _time(since, "since")
        except ValueError as exc:
            return error(422, "bad_parameters", str(exc))
        return service.models.compare(since=start, alpha=alpha)

    @app.get("/api/v1/rollout", summary="The shadow or canary candidate and the guardrail (role review)")
    def get_rollout():
        return service.models.rollout()

    @app.post("/api/v1/rollout", summary="Start a shadow or canary candidate, or stop it (role admin)")
    async def post_rollout(body: RolloutIn, request: Request):
        principal = _principal(request, tokens)
        if service.follower is None:
            return error(409, "no_registry", "the service serves a fixed model file; shadow and canary need "
                         "--registry and --name.")
        if body.mode == "off":
            stopped = await run_in_threadpool(service.models.stop_rollout, principal=principal, reason="stopped by request")
            return {"stopped": stopped, **service.models.rollout()}
        if body.version is None:
            return error(422, "bad_parameters", f"mode {body.mode!r} needs a version.")
        try:
            await run_in_threadpool(service.models.start_rollout, body.mode, body.version, fraction=body.fraction,
                                    principal=principal)
        except (RegistryError, ValueError, TypeError) as exc:
            return error(404 if isinstance(exc, LookupError) else 422, "bad_rollout", str(exc))
        return service.models.rollout()
