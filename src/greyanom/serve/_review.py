"""The review routes of the inspection service: verdicts, the queue, stats, audit, the page.

``install_review(app, service, tokens)`` adds them to the app that :func:`create_app`
builds; the roles each route needs are in :func:`greyanom.serve._auth.required_roles`.
"""

# no `from __future__ import annotations`: FastAPI and pydantic read the annotations

import datetime as _dt
import logging
from typing import Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field

from greyanom.serve._auth import LOCAL, SESSION_COOKIE, SESSION_SECONDS

__all__ = ["ReviewIn", "install_review"]

logger = logging.getLogger("greyanom.serve")

#: Longest note kept with a review.
MAX_NOTE = 2000
#: Largest login form body read.
MAX_LOGIN_BYTES = 4096


class ReviewIn(BaseModel):
    """The body of ``POST /api/v1/inspections/{id}/review`` (the inspector is the token's name)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["defect", "normal"] = Field(description="the inspector's verdict")
    note: str = Field("", max_length=MAX_NOTE, description="free text, e.g. what was seen")


def _principal(request, tokens):
    principal = getattr(request.state, "principal", None)
    return LOCAL if tokens is None else principal


def _time(value, name):
    """An aware datetime from an ISO 8601 query value (naive = UTC), or ValueError naming it."""
    if value in (None, ""):
        return None
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 time such as 2026-01-31T08:00, got {value!r}.") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.timezone.utc)


def install_review(app, service, tokens, error):
    """Add the review routes to ``app`` for ``service`` (an :class:`InspectionService`).

    Parameters
    ----------
    app : fastapi.FastAPI
    service : InspectionService
        Its ``reviews`` (:class:`ReviewStore`), ``audit`` (:class:`AuditLog`) and
        ``review_metrics`` are used.
    tokens : TokenStore or None
        None: no access control (the service listens on loopback only); everyone is the
        local operator.
    error : callable
        ``error(status, code, message)``: the service's JSON error response.
    """
    from fastapi import Query, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    from greyanom.serve._review_page import render_login, render_page

    reviews, audit = service.reviews, service.audit
    decision_query = Query(None, pattern="^(PASS|REVIEW|REJECT)$", description="PASS, REVIEW or REJECT")

    @app.post("/api/v1/inspections/{inspection_id}/review", status_code=201,
              summary="Store an inspector's verdict on an inspection (role review)")
    def post_review(inspection_id: int, review: ReviewIn, request: Request):
        principal = _principal(request, tokens)
        stored = reviews.add(inspection_id, principal, review.verdict, review.note)
        if stored is None:
            return error(404, "not_found", f"no inspection {inspection_id}.")
        logger.info("review of inspection %d by %s: %s", inspection_id, principal.name, review.verdict)
        service.review_metrics.update(reviews.stats())
        return stored

    @app.get("/api/v1/inspections/{inspection_id}", summary="One inspection with its reviews (role review)")
    def get_inspection(inspection_id: int):
        record = reviews.inspection(inspection_id)
        if record is None:
            return error(404, "not_found", f"no inspection {inspection_id}.")
        return record

    @app.get("/api/v1/inspections/{inspection_id}/image.png", summary="The kept image of an inspection (role review)")
    def get_image(inspection_id: int):
        data = reviews.image(inspection_id)
        if data is None:
            return error(404, "not_found", f"no kept image for inspection {inspection_id} (PASS images are kept "
                         "only with --keep-images or when sampled for audit).")
        return Response(content=_as_png(data), media_type="image/png")

    @app.get("/api/v1/review/queue", summary="Inspections waiting for review, oldest first (role review)")
    def get_queue(
        decision: str | None = decision_query,
        wafer_id: str | None = Query(None, max_length=128),
        since: str | None = Query(None, description="ISO 8601 time; naive times are UTC"),
        until: str | None = Query(None, description="ISO 8601 time; naive times are UTC"),
        include_reviewed: bool = Query(False),
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ):
        try:
            bounds = _time(since, "since"), _time(until, "until")
        except ValueError as exc:
            return error(422, "bad_parameters", str(exc))
        rows = reviews.queue(decision=decision, wafer_id=wafer_id, since=bounds[0], until=bounds[1],
                             include_reviewed=include_reviewed, limit=limit, offset=offset)
        return {"inspections": rows}

    @app.get("/api/v1/stats", summary="Decision counts and review figures (role admin)")
    def get_stats():
        stats = reviews.stats()
        service.review_metrics.update(stats)
        return stats

    @app.get("/api/v1/audit", summary="The audit trail, newest first (role admin)")
    def get_audit(
        action: str | None = Query(None, max_length=32),
        actor: str | None = Query(None, max_length=128),
        target: str | None = Query(None, max_length=128),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ):
        return {"events": audit.query(action=action, actor=actor, target=target, limit=limit, offset=offset)}

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(
        request: Request,
        decision: str | None = Query(None),
        wafer_id: str | None = Query(None, max_length=128),
        since: str | None = Query(None),
        until: str | None = Query(None),
        include_reviewed: bool = Query(False),
    ):
        principal = _principal(request, tokens)
        if principal is None or not principal.may(("review",)):
            message = None if principal is None else f"{principal.name} ({principal.role}) may not review."
            return HTMLResponse(render_login(message), status_code=200 if principal is None else 403)
        decision = decision if decision in ("PASS", "REVIEW", "REJECT") else None
        filters = {"decision": decision, "wafer_id": wafer_id or None, "since": since or None,
                   "until": until or None, "include_reviewed": include_reviewed}
        try:
            bounds = _time(filters["since"], "since"), _time(filters["until"], "until")
            problem = None
        except ValueError as exc:
            bounds, problem = (None, None), str(exc)
        rows = reviews.queue(decision=decision, wafer_id=filters["wafer_id"], since=bounds[0], until=bounds[1],
                             include_reviewed=include_reviewed, limit=200)
        return HTMLResponse(render_page(principal, rows, filters, problem, login=tokens is not None))

    @app.post("/review/login", include_in_schema=False)
    async def login(request: Request):
        if tokens is None:
            return RedirectResponse("/review", status_code=303)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_LOGIN_BYTES:
                return HTMLResponse(render_login("The form is too large."), status_code=413)
        form = parse_qs(raw.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        principal = tokens.authenticate(token)
        if principal is None:
            return HTMLResponse(render_login("Unknown token."), status_code=401)
        if not principal.may(("review",)):
            return HTMLResponse(render_login(f"{principal.name} ({principal.role}) may not review."), status_code=403)
        audit.add(principal, "login", "review-page", {})
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(SESSION_COOKIE, tokens.session_cookie(token), max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/review/logout", include_in_schema=False)
    def logout():
        response = RedirectResponse("/review", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _as_png(data):
    """The kept bytes as a PNG for the browser (a TIFF is re-encoded; a PNG is sent as kept)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    import io

    from PIL import Image

    import numpy as np

    from greyanom.serve._images import _to_gray

    # the kept bytes decoded as the service decoded them, shown as 16-bit grayscale
    gray = _to_gray(Image.open(io.BytesIO(data)))
    im = Image.fromarray(np.round(gray * 65535.0).astype(np.uint16))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
