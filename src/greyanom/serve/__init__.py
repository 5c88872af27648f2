"""The inspection service (the ``serve`` extra): the case study's REST endpoint on FastAPI.

``greyanom serve --model MODEL --policy POLICY`` (or :func:`serve`) answers
``POST /api/v1/inspect`` with the anomaly score, the PASS / REVIEW / REJECT decision of a
:class:`~greyanom.decision.DecisionPolicy`, its confidence and a heatmap link, commits a
record of every answer to a SQLAlchemy database first, and exports Prometheus metrics. With a
token file every route but ``/healthz`` needs a bearer token of the right role; inspectors
review REVIEW inspections on the review page (``/review``) or through the API, and every
change is kept in an audit table. ``greyanom serve --registry DIR --name N`` serves the
production version of a :class:`~greyanom.registry.ModelRegistry` model, follows its
promotions and rollbacks without a restart, and runs shadow and canary candidates with an
FNR guardrail.
FastAPI, uvicorn, SQLAlchemy and prometheus-client are imported only here, never by
``import greyanom``.
"""

from greyanom._optional import import_optional

for _module in ("fastapi", "sqlalchemy", "prometheus_client"):
    import_optional(_module, "serve", "greyanom.serve")
del _module

from greyanom.serve._app import DEFAULT_MAX_BODY_BYTES, InspectionService, create_app, serve  # noqa: E402
from greyanom.serve._audit import AuditLog  # noqa: E402
from greyanom.serve._auth import TokenStore  # noqa: E402
from greyanom.serve._images import ImageError, decode_image, heatmap_png  # noqa: E402
from greyanom.serve._records import (  # noqa: E402
    AuditEvent, Heatmap, Inspection, InspectionImage, ModelScore, Records, Review,
)
from greyanom.serve._served import ServedModel  # noqa: E402
from greyanom.serve._review_store import ReviewStore  # noqa: E402

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AuditEvent",
    "AuditLog",
    "Heatmap",
    "ImageError",
    "Inspection",
    "InspectionImage",
    "InspectionService",
    "ModelScore",
    "Records",
    "Review",
    "ReviewStore",
    "ServedModel",
    "TokenStore",
    "create_app",
    "decode_image",
    "heatmap_png",
    "serve",
]
