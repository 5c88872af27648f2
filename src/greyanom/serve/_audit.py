"""The audit trail: who changed what, when (table ``audit`` of the records database).

Generic: the time, the actor's name and role, an action (``"review"``, ``"login"``; the
model registry adds ``"promote"`` and ``"rollback"``), its target and a JSON detail. A
change and its audit event are committed in one transaction (:meth:`AuditLog.event`
builds the row to add to the change's session).
"""

from __future__ import annotations

import datetime as _dt
import json

from sqlalchemy import select

from greyanom.serve._records import AuditEvent

__all__ = ["AuditLog"]


class AuditLog:
    """Write and read audit events.

    Parameters
    ----------
    records : Records
        The records database the ``audit`` table lives in.
    """

    def __init__(self, records):
        self.records = records

    @staticmethod
    def event(principal, action, target, detail=None):
        """An :class:`AuditEvent` row (not yet added to a session)."""
        return AuditEvent(
            created_at=_dt.datetime.now(_dt.timezone.utc),
            actor=principal.name,
            role=principal.role,
            action=str(action),
            target=str(target),
            detail=json.dumps(detail or {}, sort_keys=True),
        )

    def add(self, principal, action, target, detail=None):
        """Commit one event; return it as a dict."""
        with self.records.session.begin() as session:
            row = self.event(principal, action, target, detail)
            session.add(row)
            session.flush()
            return row.to_dict()

    def query(self, *, action=None, actor=None, target=None, limit=100, offset=0):
        """Events, newest first, optionally of one action, actor or target."""
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(int(limit)).offset(int(offset))
        for column, value in ((AuditEvent.action, action), (AuditEvent.actor, actor), (AuditEvent.target, target)):
            if value is not None:
                stmt = stmt.where(column == value)
        with self.records.session() as session:
            return [row.to_dict() for row in session.scalars(stmt)]
