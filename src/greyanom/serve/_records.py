"""The inspection records: SQLAlchemy tables of answered inspections, heatmaps, kept raw
images, the score of every model that scored an inspection (production, shadow, canary),
human reviews and the audit trail.

SQLite is the embedded default; any SQLAlchemy URL (``postgresql+psycopg://...``) works the
same way. A record and its heatmap are committed in one transaction before the service
answers, so a crash after an answer loses nothing.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import (
    Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, create_engine, event, select,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = ["Inspection", "Heatmap", "InspectionImage", "ModelScore", "Review", "AuditEvent", "Records", "utc"]


def utc(value):
    """A datetime from the database as an aware UTC datetime (SQLite returns naive ones)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)


class _Base(DeclarativeBase):
    pass


class Inspection(_Base):
    """One answered inspection (table ``inspections``)."""

    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    wafer_id: Mapped[str] = mapped_column(String(128), index=True)
    inspection_point: Mapped[int] = mapped_column(Integer)
    anomaly_score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(8), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(96), index=True)
    policy_version: Mapped[str] = mapped_column(String(96))
    inference_time_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    heatmap: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def to_dict(self):
        """The record as JSON values (``created_at`` in ISO 8601, UTC)."""
        created = utc(self.created_at)
        return {
            "id": self.id,
            "wafer_id": self.wafer_id,
            "inspection_point": self.inspection_point,
            "anomaly_score": self.anomaly_score,
            "decision": self.decision,
            "confidence": self.confidence,
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "inference_time_ms": self.inference_time_ms,
            "created_at": created.isoformat(),
            "heatmap_url": None if self.heatmap is None else f"/api/v1/heatmaps/{self.heatmap}.png",
        }


class Heatmap(_Base):
    """The coloured heatmap PNG of an inspection (table ``heatmaps``)."""

    __tablename__ = "heatmaps"

    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)


class InspectionImage(_Base):
    """The raw image of an inspection, kept for human review (table ``inspection_images``).

    Every REVIEW and REJECT image is kept, PASS images with ``keep_images``. ``queued``
    marks the inspections of the review queue: every REVIEW, and the audit sample of PASS
    and REJECT.
    """

    __tablename__ = "inspection_images"

    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    queued: Mapped[bool] = mapped_column(Boolean, index=True)


class ModelScore(_Base):
    """One model's score and decision of an inspection (table ``model_scores``).

    Every inspection has the row of the model that decided it (``decided``); in a shadow
    rollout the candidate's row beside it. ``role`` is ``"production"``, ``"shadow"`` or
    ``"canary"``; ``registry_version`` is the registry's version (None for a fixed model
    file); ``latency_ms`` the model's own forward pass and decision.
    """

    __tablename__ = "model_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(96), index=True)
    registry_version: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    decided: Mapped[bool] = mapped_column(Boolean)
    anomaly_score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(8))
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), index=True)

    def to_dict(self):
        """The row as JSON values."""
        return {
            "inspection_id": self.inspection_id,
            "model_version": self.model_version,
            "registry_version": self.registry_version,
            "role": self.role,
            "decided": self.decided,
            "anomaly_score": self.anomaly_score,
            "decision": self.decision,
            "latency_ms": self.latency_ms,
            "created_at": utc(self.created_at).isoformat(),
        }


class Review(_Base):
    """One inspector's verdict on an inspection (table ``reviews``); several per inspection are kept."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), index=True)
    inspector: Mapped[str] = mapped_column(String(128), index=True)
    verdict: Mapped[str] = mapped_column(String(8))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), index=True)

    def to_dict(self):
        """The review as JSON values."""
        return {
            "id": self.id,
            "inspection_id": self.inspection_id,
            "inspector": self.inspector,
            "verdict": self.verdict,
            "note": self.note,
            "created_at": utc(self.created_at).isoformat(),
        }


class AuditEvent(_Base):
    """One change made by someone (table ``audit``): reviews now, registry changes later.

    Generic on purpose: the time, the actor's name and role, the action (``"review"``,
    ``"login"``, ``"promote"``, ...), its target (``"inspection:42"``, ``"model:..."``) and
    a JSON detail.
    """

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(String(128), index=True)
    detail: Mapped[str] = mapped_column(Text)

    def to_dict(self):
        """The event as JSON values (``detail`` parsed)."""
        import json

        return {
            "id": self.id,
            "created_at": utc(self.created_at).isoformat(),
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "detail": json.loads(self.detail),
        }


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    # WAL lets readers (GET /inspections) run beside the writer and several workers share
    # one file; synchronous=NORMAL keeps every committed row through a crash of the server
    # process (kill -9). Power-loss durability needs synchronous=FULL or a server database.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Records:
    """The records database of the inspection service.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL, e.g. ``"sqlite:///inspections.db"`` or
        ``"postgresql+psycopg://user@host/db"``.

    Examples
    --------
    >>> records = Records("sqlite://")
    >>> rec = records.add(wafer_id="W1", inspection_point=3, anomaly_score=0.1, decision="PASS",
    ...                   confidence=0.2, model_version="m", policy_version="p",
    ...                   inference_time_ms=5.0, heatmap_png=b"png")
    >>> records.query(wafer_id="W1")[0]["decision"]
    'PASS'
    """

    def __init__(self, url):
        kwargs = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if url in ("sqlite://", "sqlite:///:memory:"):
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool  # one in-memory database for every thread
        self.url = url
        try:
            self.engine = create_engine(url, **kwargs)
        except Exception as exc:  # a malformed URL or a missing driver
            raise ValueError(f"cannot use the records database URL {url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            try:
                _Base.metadata.create_all(self.engine)
            except OperationalError:  # another worker created the tables at the same moment
                _Base.metadata.create_all(self.engine)
        except Exception as exc:  # one line for the command line, not a driver traceback
            self.engine.dispose()
            shown = self.engine.url.render_as_string(hide_password=True)
            reason = getattr(exc, "orig", None) or exc
            hint = ""
            database = self.engine.url.database
            if self.engine.dialect.name == "sqlite" and database and database != ":memory:":
                from pathlib import Path

                folder = Path(database).expanduser().parent
                if not folder.is_dir():
                    hint = f"; the folder {str(folder)!r} does not exist"
            raise ValueError(f"cannot open the records database {shown}: {reason}{hint}.") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def session(self):
        """The ``sessionmaker`` of this database (for the review and audit stores)."""
        return self._session

    def add(self, *, heatmap_png=None, image=None, queued=False, scores=(), **fields):
        """Insert an inspection (its heatmap, its raw image, its model scores) and commit; return the record.

        ``image`` (the request body) is kept in ``inspection_images`` when given, with
        ``queued`` marking it for the review queue. ``scores`` are the ``model_scores`` rows
        of the inspection (dicts of :class:`ModelScore` columns without ``inspection_id``),
        committed in the same transaction.
        """
        now = _dt.datetime.now(_dt.timezone.utc)
        with self._session.begin() as session:
            rec = Inspection(created_at=now, **fields)
            session.add(rec)
            session.flush()  # assigns rec.id
            if heatmap_png is not None:
                rec.heatmap = str(rec.id)
                session.add(Heatmap(inspection_id=rec.id, png=heatmap_png))
            if image is not None:
                session.add(InspectionImage(inspection_id=rec.id, data=bytes(image), queued=bool(queued)))
            for row in scores:
                session.add(ModelScore(inspection_id=rec.id, created_at=now, **row))
            out = rec.to_dict()
        return out

    def heatmap(self, inspection_id):
        """The PNG bytes of an inspection's heatmap, or None."""
        with Session(self.engine) as session:
            row = session.get(Heatmap, int(inspection_id))
            return None if row is None else row.png

    def query(self, *, wafer_id=None, limit=100, offset=0):
        """Records, newest first, optionally of one wafer."""
        stmt = select(Inspection).order_by(Inspection.id.desc()).limit(int(limit)).offset(int(offset))
        if wafer_id is not None:
            stmt = stmt.where(Inspection.wafer_id == wafer_id)
        with Session(self.engine) as session:
            return [rec.to_dict() for rec in session.scalars(stmt)]

    def ping(self):
        """Run ``SELECT 1``; raise if the database is unreachable."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self):
        """Dispose of the connection pool."""
        self.engine.dispose()
