"""The inspection records: one SQLAlchemy table of answered inspections and one of heatmaps.

SQLite is the embedded default; any SQLAlchemy URL (``postgresql+psycopg://...``) works the
same way. A record and its heatmap are committed in one transaction before the service
answers, so a crash after an answer loses nothing.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import DateTime, Float, ForeignKey, Integer, LargeBinary, String, create_engine, event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = ["Inspection", "Heatmap", "Records"]


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
        created = self.created_at
        if created.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
            created = created.replace(tzinfo=_dt.timezone.utc)
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
        self.engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _Base.metadata.create_all(self.engine)
        except OperationalError:  # another worker created the tables at the same moment
            _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def add(self, *, heatmap_png=None, **fields):
        """Insert an inspection (and its heatmap) and commit; return the record as a dict."""
        with self._session.begin() as session:
            rec = Inspection(created_at=_dt.datetime.now(_dt.timezone.utc), **fields)
            session.add(rec)
            session.flush()  # assigns rec.id
            if heatmap_png is not None:
                rec.heatmap = str(rec.id)
                session.add(Heatmap(inspection_id=rec.id, png=heatmap_png))
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
