"""Read the kept images of the inspection records with their latest review verdict.

Read-only helpers over the tables of :mod:`greyanom.serve._records` (``inspections``,
``inspection_images``, ``reviews``) for retraining; nothing here writes to them.
"""

from __future__ import annotations

import datetime as _dt
from typing import NamedTuple

__all__ = ["KeptImage", "image_data", "kept_images", "open_records"]


class KeptImage(NamedTuple):
    """One inspection whose raw image the service kept (the bytes are read by :func:`image_data`)."""

    inspection_id: int
    created_at: _dt.datetime
    decision: str
    anomaly_score: float
    model_version: str
    verdict: str | None  # the latest review verdict ("defect", "normal") or None


def open_records(db):
    """A :class:`~greyanom.serve.Records` of ``db`` (a URL or a ``Records``); a missing SQLite file is refused.

    Opening a missing SQLite file would create an empty database and hide a mistyped path.
    """
    from greyanom._optional import import_optional

    import_optional("sqlalchemy", "serve", "retraining from the records database")
    from sqlalchemy.engine import make_url

    from greyanom.serve._records import Records

    if isinstance(db, Records):
        return db
    if not isinstance(db, str):
        raise TypeError(f"db must be a database URL or a Records, got {type(db).__name__}.")
    try:
        url = make_url(db)
    except Exception as exc:  # sqlalchemy's ArgumentError for a malformed URL
        raise ValueError(f"db {db!r} is not a database URL: {exc}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(url.database).expanduser().is_file():
            raise ValueError(f"there is no records database at {url.database!r} (db {db!r}).")
    return Records(db)


def kept_images(records, *, since=None):
    """Every inspection with a kept raw image (newer than ``since``), oldest first, with its latest verdict.

    The image bytes are not read here (months of kept images need not fit in memory at once);
    :func:`image_data` reads those of a few inspections.

    Parameters
    ----------
    records : Records
    since : datetime, optional
        Only inspections with ``created_at >= since`` (aware datetimes in UTC).

    Returns
    -------
    images : list of KeptImage
    """
    from sqlalchemy import select

    from greyanom.serve._records import Inspection, InspectionImage, utc
    from greyanom.serve._review_store import ReviewStore

    stmt = (select(Inspection.id, Inspection.created_at, Inspection.decision, Inspection.anomaly_score,
                   Inspection.model_version)
            .join(InspectionImage, InspectionImage.inspection_id == Inspection.id)
            .order_by(Inspection.id))
    if since is not None:
        stmt = stmt.where(Inspection.created_at >= since)
    latest = ReviewStore(records).latest_verdicts(since=since)
    with records.session() as session:
        rows = session.execute(stmt).all()
    return [KeptImage(int(i), utc(created), str(decision), float(score), str(version), latest.get(int(i)))
            for i, created, decision, score, version in rows]


def image_data(records, inspection_ids):
    """The kept image bytes of these inspections: a dict inspection id -> bytes (absent ids left out)."""
    from sqlalchemy import select

    from greyanom.serve._records import InspectionImage

    ids = [int(i) for i in inspection_ids]
    stmt = select(InspectionImage.inspection_id, InspectionImage.data).where(InspectionImage.inspection_id.in_(ids))
    with records.session() as session:
        return {int(i): bytes(data) for i, data in session.execute(stmt)}
