"""Human reviews of inspections: the store, the queue and the review metrics.

In the case study REVIEW means an inspector looks at the image. The inspectors' verdicts
(``"defect"`` or ``"normal"``) are kept, several per inspection with their time, and give
the figures a fab tracks:

* **REJECT override rate**: of the REJECT inspections reviewed, the fraction whose latest
  verdict is ``normal`` (the estimated false-reject rate of the REJECT band);
* **PASS miss rate**: of the audited PASS inspections, the fraction found ``defect``;
* **inspector agreement**: over inspections reviewed by two or more inspectors (each
  one's latest verdict), the fraction of inspector pairs that agree;
* **reviewed fraction**: of the queued inspections (every REVIEW and the audit sample of
  PASS and REJECT), the fraction with at least one review.
"""

from __future__ import annotations

import datetime as _dt
import itertools

from sqlalchemy import func, select

from greyanom.serve._audit import AuditLog
from greyanom.serve._records import Inspection, InspectionImage, Review

__all__ = ["VERDICTS", "ReviewStore", "ReviewMetrics"]

VERDICTS = ("defect", "normal")


class ReviewStore:
    """Reviews, the review queue and the kept images, over the records database.

    Parameters
    ----------
    records : Records
    """

    def __init__(self, records):
        self.records = records

    def add(self, inspection_id, principal, verdict, note=""):
        """Store a review and its audit event in one transaction; None if no such inspection."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}.")
        with self.records.session.begin() as session:
            inspection = session.get(Inspection, int(inspection_id))
            if inspection is None:
                return None
            review = Review(inspection_id=inspection.id, inspector=principal.name, verdict=verdict, note=str(note),
                            created_at=_dt.datetime.now(_dt.timezone.utc))
            session.add(review)
            session.flush()
            detail = {"review_id": review.id, "verdict": verdict, "decision": inspection.decision}
            session.add(AuditLog.event(principal, "review", f"inspection:{inspection.id}", detail))
            return review.to_dict()

    def inspection(self, inspection_id):
        """The record of an inspection with its reviews (oldest first), ``image_url`` and ``queued``; or None."""
        with self.records.session() as session:
            rec = session.get(Inspection, int(inspection_id))
            if rec is None:
                return None
            out = rec.to_dict()
            reviews = session.scalars(select(Review).where(Review.inspection_id == rec.id).order_by(Review.id))
            out["reviews"] = [r.to_dict() for r in reviews]
            kept = session.get(InspectionImage, rec.id)
            out["image_url"] = None if kept is None else f"/api/v1/inspections/{rec.id}/image.png"
            out["queued"] = bool(kept is not None and kept.queued)
            return out

    def image(self, inspection_id):
        """The kept raw image bytes of an inspection, or None."""
        with self.records.session() as session:
            row = session.get(InspectionImage, int(inspection_id))
            return None if row is None else row.data

    def queue(self, *, decision=None, wafer_id=None, since=None, until=None, include_reviewed=False, limit=50,
              offset=0):
        """Queued inspections, oldest first, with their review count.

        Parameters
        ----------
        decision : {"PASS", "REVIEW", "REJECT"}, optional
        wafer_id : str, optional
        since, until : datetime, optional
            Bounds on the inspection time (``since <= created_at < until``).
        include_reviewed : bool, default=False
            Also inspections that already have a review.
        limit, offset : int
        """
        n_reviews = (select(Review.inspection_id, func.count(Review.id).label("n"))
                     .group_by(Review.inspection_id).subquery())
        stmt = (select(Inspection, func.coalesce(n_reviews.c.n, 0))
                .join(InspectionImage, InspectionImage.inspection_id == Inspection.id)
                .outerjoin(n_reviews, n_reviews.c.inspection_id == Inspection.id)
                .where(InspectionImage.queued.is_(True)))
        if decision is not None:
            stmt = stmt.where(Inspection.decision == decision)
        if wafer_id is not None:
            stmt = stmt.where(Inspection.wafer_id == wafer_id)
        if since is not None:
            stmt = stmt.where(Inspection.created_at >= since)
        if until is not None:
            stmt = stmt.where(Inspection.created_at < until)
        if not include_reviewed:
            stmt = stmt.where(n_reviews.c.n.is_(None))
        stmt = stmt.order_by(Inspection.id).limit(int(limit)).offset(int(offset))
        with self.records.session() as session:
            return [{**rec.to_dict(), "n_reviews": int(n)} for rec, n in session.execute(stmt)]

    def latest_verdicts(self, *, since=None):
        """The latest review verdict of every reviewed inspection (later reviews win).

        Parameters
        ----------
        since : datetime, optional
            Only inspections created at or after it.

        Returns
        -------
        verdicts : dict of int to str
            Inspection id -> ``"defect"`` or ``"normal"``.
        """
        stmt = select(Review.inspection_id, Review.verdict).order_by(Review.id)
        if since is not None:
            stmt = stmt.join(Inspection, Inspection.id == Review.inspection_id).where(Inspection.created_at >= since)
        with self.records.session() as session:
            return {int(inspection_id): verdict for inspection_id, verdict in session.execute(stmt)}

    def stats(self):
        """Decision counts and the review figures (see the module docstring); None where undefined."""
        with self.records.session() as session:
            # not dict(result): a Result has keys() and would be read as a mapping
            decisions = {d: n for d, n in session.execute(
                select(Inspection.decision, func.count()).group_by(Inspection.decision))}
            n_queued = session.scalar(select(func.count()).select_from(InspectionImage)
                                      .where(InspectionImage.queued.is_(True)))
            n_reviewed = session.scalar(
                select(func.count(func.distinct(Review.inspection_id)))
                .join(InspectionImage, InspectionImage.inspection_id == Review.inspection_id)
                .where(InspectionImage.queued.is_(True))
            )
            rows = session.execute(
                select(Review.inspection_id, Review.inspector, Review.verdict, Inspection.decision)
                .join(Inspection, Inspection.id == Review.inspection_id)
                .order_by(Review.id)
            ).all()
            n_reviews = len(rows)
        latest, by_inspector = {}, {}
        for inspection_id, inspector, verdict, decision in rows:  # in id order: later reviews win
            latest[inspection_id] = (verdict, decision)
            by_inspector.setdefault(inspection_id, {})[inspector] = verdict
        rejects = [v for v, d in latest.values() if d == "REJECT"]
        passes = [v for v, d in latest.values() if d == "PASS"]
        reviews = [v for v, d in latest.values() if d == "REVIEW"]
        pairs = agree = 0
        for verdicts in by_inspector.values():
            for a, b in itertools.combinations(verdicts.values(), 2):
                pairs += 1
                agree += a == b
        return {
            "decisions": {d: int(decisions.get(d, 0)) for d in ("PASS", "REVIEW", "REJECT")},
            "reviews": n_reviews,
            "queued": int(n_queued),
            "reviewed": int(n_reviewed),
            "reviewed_fraction": _ratio(n_reviewed, n_queued),
            "reviewed_rejects": len(rejects),
            "reject_override_rate": _ratio(rejects.count("normal"), len(rejects)),
            "reviewed_passes": len(passes),
            "pass_miss_rate": _ratio(passes.count("defect"), len(passes)),
            "reviewed_reviews": len(reviews),
            "review_defect_rate": _ratio(reviews.count("defect"), len(reviews)),
            "inspector_pairs": pairs,
            "inspector_agreement": _ratio(agree, pairs),
        }


def _ratio(num, den):
    return None if not den else float(num) / float(den)


class ReviewMetrics:
    """The review figures as Prometheus gauges, refreshed from the database before each scrape.

    An undefined figure (no reviewed REJECT yet, no pair of inspectors) is exported as NaN,
    next to the count it is a fraction of (``greyanom_review_reviewed_rejects``, ...).
    """

    _GAUGES = {
        "reviewed_fraction": "Fraction of queued inspections (REVIEW and the audit sample) with a review.",
        "reject_override_rate": "Fraction of reviewed REJECT inspections whose latest verdict is normal "
                                "(estimated false rejects).",
        "pass_miss_rate": "Fraction of audited PASS inspections whose latest verdict is defect.",
        "inspector_agreement": "Fraction of inspector pairs agreeing on an inspection both reviewed.",
        "reviewed_rejects": "REJECT inspections with at least one review.",
        "inspector_pairs": "Pairs of inspectors who reviewed the same inspection.",
        "queued": "Inspections in the review queue (reviewed or not).",
        "reviews": "Reviews stored.",
    }

    def __init__(self, service_metrics):
        from prometheus_client import Gauge

        mode = {"multiprocess_mode": "mostrecent"} if service_metrics.multiprocess else {}
        self._gauges = {
            key: Gauge(f"greyanom_review_{key}", text, registry=service_metrics.registry, **mode)
            for key, text in self._GAUGES.items()
        }

    def update(self, stats):
        """Set the gauges from :meth:`ReviewStore.stats`."""
        for key, gauge in self._gauges.items():
            value = stats[key]
            gauge.set(float("nan") if value is None else float(value))
