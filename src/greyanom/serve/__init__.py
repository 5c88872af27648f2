"""The inspection service (the ``serve`` extra): the case study's REST endpoint on FastAPI.

``greyanom serve --model MODEL --policy POLICY`` (or :func:`serve`) answers
``POST /api/v1/inspect`` with the anomaly score, the PASS / REVIEW / REJECT decision of a
:class:`~greyanom.decision.DecisionPolicy`, its confidence and a heatmap link, commits a
record of every answer to a SQLAlchemy database first, and exports Prometheus metrics.
FastAPI, uvicorn, SQLAlchemy and prometheus-client are imported only here, never by
``import greyanom``.
"""

from greyanom._optional import import_optional

for _module in ("fastapi", "sqlalchemy", "prometheus_client"):
    import_optional(_module, "serve", "greyanom.serve")
del _module

from greyanom.serve._app import DEFAULT_MAX_BODY_BYTES, InspectionService, create_app, serve  # noqa: E402
from greyanom.serve._images import ImageError, decode_image, heatmap_png  # noqa: E402
from greyanom.serve._records import Heatmap, Inspection, Records  # noqa: E402

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Heatmap",
    "ImageError",
    "Inspection",
    "InspectionService",
    "Records",
    "create_app",
    "decode_image",
    "heatmap_png",
    "serve",
]
