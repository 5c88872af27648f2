"""Retraining from the inspection records: kept PASS images in, a gated candidate version out.

:func:`retrain` pulls the raw images the service kept since a time, validates them, trains a
detector of the production model's class with its parameters, calibrates its decision policy
with the production policy's rates, evaluates both models on the reviewed images, and
registers the new one as a candidate when it passes the gate. It never promotes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import math
import numbers
import re

import numpy as np

from greyanom.registry._store import RegistryError

__all__ = ["RetrainError", "RetrainReport", "parse_since", "retrain"]

logger = logging.getLogger("greyanom.registry")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class RetrainError(RegistryError):
    """A retraining that cannot start: unknown name, no production version, too few images or reviews."""


def parse_since(value):
    """``--since``: an age (``"90d"``, ``"12h"``, ``"30m"``, a ``timedelta``) or a time (ISO 8601, a ``datetime``).

    Returns a ``timedelta`` or an aware ``datetime`` (a naive time is taken as UTC).
    """
    if isinstance(value, _dt.timedelta):
        if value <= _dt.timedelta(0):
            raise ValueError(f"since must be a positive age, got {value}.")
        return value
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, str):
        match = _AGE.match(value)
        if match:
            age = _dt.timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
            return parse_since(age)
        try:
            return parse_since(_dt.datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    raise ValueError(f"since must be an age like '90d', '12h', '30m' or an ISO 8601 time, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class RetrainReport:
    """What :func:`retrain` saw, what the gate decided and what was registered.

    Attributes
    ----------
    name, base_version : str
        The model and its production version the candidate was trained after.
    version : str or None
        The registered candidate's version; None when the gate refused it.
    registered : bool
    message : str
        One line: what was registered, or why not.
    since : str
        The first inspection time pulled (ISO 8601, UTC).
    counts : dict
        ``kept`` (kept images in the window), ``pass`` (of them PASS or reviewed normal and
        not reviewed defect), ``reviewed_normal_train`` (reviewed normals used for
        training), ``unreadable``, ``duplicate``, ``out_of_distribution`` (dropped), ``used``
        (the training images), ``eval_defects``, ``eval_normals``, ``eval_unreadable``.
    current, candidate : dict
        ``auroc``, ``fnr`` and ``fpr`` of each model on the reviewed evaluation images (its
        own policy's decisions; flagged = REVIEW or REJECT); empty when not evaluated.
    gate : dict
        The tolerances and minimums applied.
    failures : tuple of str
        The gate's objections (empty when it passed).
    drift : dict
        PASS-only KS test of the training images' production scores against the production
        policy's calibration scores (:class:`greyanom.drift.ScoreDriftMonitor`): reported, not gated.
    data_hash : str or None
        :func:`greyanom.registry.data_hash` of the training images, in training order.
    """

    name: str
    base_version: str
    version: str | None
    registered: bool
    message: str
    since: str
    counts: dict
    current: dict
    candidate: dict
    gate: dict
    failures: tuple
    drift: dict
    data_hash: str | None

    def to_dict(self):
        """The report as JSON values."""
        out = dataclasses.asdict(self)
        out["failures"] = list(self.failures)
        return out

    def format(self):
        """The report as a few lines of text."""
        c = self.counts
        lines = [
            f"retrain {self.name} after production {self.base_version}, kept images since {self.since}",
            f"  pulled {c['kept']} kept images, {c['pass']} PASS or reviewed normal "
            f"({c['reviewed_normal_train']} reviewed-normal ones first); dropped {c['unreadable']} unreadable, "
            f"{c['duplicate']} duplicate, {c['out_of_distribution']} out of distribution "
            f"(production would REJECT); trained on {c['used']}",
            f"  evaluated on {c['eval_defects']} reviewed defects and {c['eval_normals']} reviewed normals"
            + (f" ({c['eval_unreadable']} unreadable dropped)" if c["eval_unreadable"] else ""),
        ]
        if self.drift:
            lines.append(f"  training scores vs calibration (PASS only, KS): statistic {self.drift['statistic']:.3f}, "
                         f"p = {self.drift['p_value']:.3g}{' (drift)' if self.drift['drift'] else ''}")
        for label, figures in (("current  ", self.current), ("candidate", self.candidate)):
            if figures:
                lines.append(f"  {label} AUROC {figures['auroc']:.3f}  FNR {figures['fnr']:.3f}  "
                             f"FPR {figures['fpr']:.3f}")
        g = self.gate
        lines.append(f"  gate: AUROC >= current - {g['auroc_tolerance']:g}, FNR <= current + {g['fnr_tolerance']:g}, "
                     f"FPR <= current + {g['fpr_tolerance']:g}")
        lines.extend(f"  gate failed: {f}" for f in self.failures)
        lines.append(self.message)
        return "\n".join(lines)


def _digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _decode_all(records, items, shape, resize):
    """``(images, digests, n_unreadable)`` of kept images, in order."""
    from greyanom.registry._kept import image_data
    from greyanom.serve._images import ImageError, decode_image

    data = image_data(records, [item.inspection_id for item in items])
    images, digests, bad = [], [], 0
    for item in items:
        try:
            image = decode_image(data.get(item.inspection_id, b""), shape, resize=resize)
        except ImageError as exc:
            logger.info("inspection %d: unreadable kept image dropped (%s)", item.inspection_id, exc)
            bad += 1
            continue
        images.append((item, image))
        digests.append(_digest(image))
    return images, digests, bad


def _evaluate(detector, policy, X, y):
    """AUROC, FNR (defects PASSed) and FPR (normals flagged) of one model on the reviewed images."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(detector.score(X), dtype=np.float64)
    flagged = np.asarray(policy.decide(scores)) != "PASS"
    return {"auroc": float(roc_auc_score(y, scores)), "fnr": float(np.mean(~flagged[y == 1])),
            "fpr": float(np.mean(flagged[y == 0]))}


def _validate(records, items, detector, policy, shape, resize, eval_digests, limit, chunk=256):
    """``(kept (item, image) pairs, drop counts, drift figures)`` of the training candidates, in order.

    Reads, decodes and scores ``chunk`` images at a time and stops once ``limit`` are kept.
    Drops the unreadable, the duplicates (of an earlier one or of an evaluation image) and the
    unreviewed images the production model and policy would REJECT (out of distribution).
    """
    from greyanom.drift import ScoreDriftMonitor

    seen, kept, scores = set(eval_digests), [], []
    counts = {"unreadable": 0, "duplicate": 0, "out_of_distribution": 0}
    for start in range(0, len(items), chunk):
        if limit is not None and len(kept) >= limit:
            break
        decoded, digests, n_unreadable = _decode_all(records, items[start:start + chunk], shape, resize)
        counts["unreadable"] += n_unreadable
        fresh = []
        for pair, digest in zip(decoded, digests):
            if digest in seen:
                counts["duplicate"] += 1
            else:
                seen.add(digest)
                fresh.append(pair)
        if not fresh:
            continue
        part = np.asarray(detector.score(np.stack([image for _, image in fresh])), dtype=np.float64)
        ood = (np.asarray(policy.decide(part)) == "REJECT") & np.array([item.verdict is None for item, _ in fresh])
        counts["out_of_distribution"] += int(ood.sum())
        kept += [pair for pair, out in zip(fresh, ood) if not out]
        scores.append(part[~ood])
    if limit is not None:
        kept = kept[:limit]
    drift = {}
    if kept:
        result = ScoreDriftMonitor(policy.calibration_scores_, policy=policy, pass_only=True).test(
            np.concatenate(scores)[: len(kept)])
        drift = {"statistic": float(result.statistic), "p_value": float(result.p_value), "drift": bool(result.drift)}
    return kept, counts, drift


def _gate(current, candidate, gate):
    """The gate's objections to ``candidate`` against ``current`` (empty: it passes)."""
    failures = []
    if candidate["auroc"] < current["auroc"] - gate["auroc_tolerance"]:
        failures.append(f"AUROC {candidate['auroc']:.3f} < current {current['auroc']:.3f} "
                        f"- {gate['auroc_tolerance']:g}")
    if candidate["fnr"] > current["fnr"] + gate["fnr_tolerance"]:
        failures.append(f"FNR {candidate['fnr']:.3f} > current {current['fnr']:.3f} + {gate['fnr_tolerance']:g}")
    if candidate["fpr"] > current["fpr"] + gate["fpr_tolerance"]:
        failures.append(f"FPR {candidate['fpr']:.3f} > current {current['fpr']:.3f} + {gate['fpr_tolerance']:g}")
    return failures


def _check_count(value, name, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_tolerance(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def retrain(db, registry, *, name, since="90d", min_images=100, min_defects=10, max_images=None,
            auroc_tolerance=0.02, fnr_tolerance=0.01, fpr_tolerance=0.05, eval_fraction=0.5, resize=False,
            actor=None, random_state=0, now=None):
    """Retrain the production model of ``name`` on kept images and register a gated candidate.

    1. **Pull** the kept images of inspections since ``since``: those whose decision was
       PASS and those an inspector's latest verdict calls normal (never one called defect).
       The reviewed normals are shuffled (``random_state``) and split: ``eval_fraction``
       of them judge the candidate, the rest train it, first.
    2. **Validate**: an image that does not decode to the model's shape is dropped as
       unreadable; one whose pixels equal an earlier or an evaluation image's is a
       duplicate; an unreviewed image the production model and policy would REJECT today
       is out of distribution (it passed under another model, e.g. before a promotion or a
       rollback). A PASS-only KS test of the training images' production scores against the
       policy's calibration scores is reported beside (not gated: a retraining is often
       the answer to drift).
    3. **Train** ``type(det)(**det.get_params())`` (so ``random_state`` is kept) on the
       images, and a :class:`~greyanom.decision.DecisionPolicy` with the production
       policy's ``review_fpr`` and ``reject_fpr`` on its ``heldout_scores_`` (bound with
       ``model=``; a labelled ``max_fnr`` tuning of the production policy is not repeated).
    4. **Gate** on the reviewed defects and the evaluation share of the reviewed normals:
       AUROC, FNR (defects PASSed) and FPR (normals REVIEWed or REJECTed) of each model at its
       own policy; the candidate must have AUROC >= current - ``auroc_tolerance``, FNR <=
       current + ``fnr_tolerance`` and FPR <= current + ``fpr_tolerance``.
    5. **Register** it as a candidate (metrics, data hash, description) when it passes. Either
       way, the report is kept in the records database's audit trail.

    The reviewed images were chosen by the current model (its REVIEW queue and the audit
    sample), so the current model's figures on them lean in its favour.

    Parameters
    ----------
    db : str or Records
        The records database (SQLAlchemy URL).
    registry : str, path-like or ModelRegistry
    name : str
        The model; its production version is the one retrained.
    since : str, timedelta or datetime, default="90d"
        See :func:`parse_since`.
    min_images : int, default=100
        Fewest usable training images.
    min_defects : int, default=10
        Fewest reviewed defects, and reviewed normals for evaluation, to judge by.
    max_images : int, optional
        Most training images (reviewed normals first, then the newest). Images are read,
        decoded and scored 256 at a time, and reading stops once this many are usable; the
        drop counts then cover the images read.
    auroc_tolerance, fnr_tolerance, fpr_tolerance : float, default=0.02, 0.01, 0.05
        The gate (the FNR tolerance is the case study's 1 %).
    eval_fraction : float in (0, 1), default=0.5
        Share of the reviewed normals kept for evaluation.
    resize : bool, default=False
        Resize kept images of another size (as ``greyanom serve --resize``).
    actor : str, optional
        Who retrains; kept in the description and, with the report, in the records
        database's audit trail (action ``"retrain"``, target ``"model:NAME"``, role
        ``admin``: whoever can run this holds the database).
    random_state : int, default=0
        Seeds the split of the reviewed normals.
    now : datetime, optional
        The present (default: the clock), for an age in ``since``.

    Returns
    -------
    report : RetrainReport

    Raises
    ------
    RetrainError
        Unknown name, no production version, too few usable images or reviewed images, or a
        training set too small to calibrate the policy.
    """
    import greyanom
    from greyanom.decision import DecisionPolicy
    from greyanom.registry import ModelRegistry, data_hash
    from greyanom.registry._kept import kept_images, open_records

    min_images, min_defects = _check_count(min_images, "min_images"), _check_count(min_defects, "min_defects")
    max_images = _check_count(max_images, "max_images", allow_none=True)
    gate = {"auroc_tolerance": _check_tolerance(auroc_tolerance, "auroc_tolerance"),
            "fnr_tolerance": _check_tolerance(fnr_tolerance, "fnr_tolerance"),
            "fpr_tolerance": _check_tolerance(fpr_tolerance, "fpr_tolerance"),
            "min_images": min_images, "min_defects": min_defects}
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, numbers.Real) or not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be a number in (0, 1), got {eval_fraction!r}.")
    since = parse_since(since)
    if isinstance(since, _dt.timedelta):
        since = (now or _dt.datetime.now(_dt.timezone.utc)) - since
    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    try:
        base = registry.production(name)
    except RegistryError as exc:
        raise RetrainError(str(exc)) from None
    detector, policy = greyanom.load(base.model_path), DecisionPolicy.load(base.policy_path)
    shape = tuple(int(v) for v in detector.image_shape_)

    records = open_records(db)
    try:
        items = kept_images(records, since=since)
        defects = [it for it in items if it.verdict == "defect"]
        normals = [it for it in items if it.verdict == "normal"]
        order = np.random.default_rng(random_state).permutation(len(normals))
        n_eval = int(math.ceil(eval_fraction * len(normals))) if normals else 0
        eval_normals = [normals[i] for i in order[:n_eval]]
        train_reviewed = [normals[i] for i in sorted(order[n_eval:])]
        unreviewed = [it for it in reversed(items) if it.verdict is None and it.decision == "PASS"]  # newest first
        counts = {"kept": len(items), "pass": len(train_reviewed) + len(unreviewed)}
        # evaluation images first: a training image equal to one of them is a duplicate
        eval_images, eval_digests, counts["eval_unreadable"] = _decode_all(records, defects + eval_normals, shape,
                                                                           resize)
        kept, dropped, drift = _validate(records, train_reviewed + unreviewed, detector, policy, shape, resize,
                                         eval_digests, max_images)
    finally:
        if records is not db:
            records.close()
    y_eval = np.array([int(it.verdict == "defect") for it, _ in eval_images])
    counts["eval_defects"], counts["eval_normals"] = int(y_eval.sum()), int((y_eval == 0).sum())
    counts.update(dropped)
    counts["used"] = len(kept)
    counts["reviewed_normal_train"] = sum(it.verdict == "normal" for it, _ in kept)
    summary = (f"{counts['kept']} kept images since {since.isoformat(timespec='seconds')}: {counts['unreadable']} "
               f"unreadable, {counts['duplicate']} duplicate, {counts['out_of_distribution']} out of distribution")
    if len(kept) < min_images:
        raise RetrainError(f"too few usable images to retrain {name}: {len(kept)} of {summary}; "
                           f"at least {min_images} needed (min_images).")
    if counts["eval_defects"] < min_defects or counts["eval_normals"] < min_defects:
        raise RetrainError(f"too few reviewed images to judge a candidate of {name}: {counts['eval_defects']} reviewed "
                           f"defects and {counts['eval_normals']} reviewed normals for evaluation; at least "
                           f"{min_defects} of each needed (min_defects).")

    X_train = np.stack([image for _, image in kept])
    candidate = type(detector)(**detector.get_params()).fit(X_train)
    try:
        new_policy = DecisionPolicy(review_fpr=policy.review_fpr, reject_fpr=policy.reject_fpr).fit(
            candidate.heldout_scores_, model=candidate)
    except ValueError as exc:
        raise RetrainError(f"cannot calibrate the candidate's decision policy: {exc}") from None
    X_eval = np.stack([image for _, image in eval_images])
    current_fig = _evaluate(detector, policy, X_eval, y_eval)
    cand_fig = _evaluate(candidate, new_policy, X_eval, y_eval)
    failures = _gate(current_fig, cand_fig, gate)
    digest = data_hash(X_train)
    report = dict(name=name, base_version=base.version, since=since.isoformat(timespec="seconds"), counts=counts,
                  current=current_fig, candidate=cand_fig, gate=gate, failures=tuple(failures), drift=drift,
                  data_hash=digest)
    if failures:
        out = RetrainReport(version=None, registered=False, message=(
            f"not registered: the candidate is worse than {name} {base.version} on the reviewed images "
            f"({'; '.join(failures)})."), **report)
    else:
        metrics = {**cand_fig, **{f"base_{k}": v for k, v in current_fig.items()},
                   "n_train": counts["used"], "n_eval_defects": counts["eval_defects"],
                   "n_eval_normals": counts["eval_normals"]}
        description = (f"retrained after {base.version} on {counts['used']} kept images since "
                       f"{report['since']}" + (f" by {actor}" if actor else ""))
        version = registry.add(candidate, new_policy, name=name, metrics=metrics, data_hash=digest,
                               description=description)
        logger.info("registered %s %s as a candidate (%s)", name, version.version, description)
        out = RetrainReport(version=version.version, registered=True, message=(
            f"registered {name} {version.version} as a candidate (not promoted): run it in shadow, then "
            f"'greyanom registry DIR promote {name} {version.version}'."), **report)
    _audit(db, actor, out)
    return out


def _audit(db, actor, report):
    """Keep the retraining (registered or refused) in the records database's audit trail."""
    from greyanom.registry._kept import open_records
    from greyanom.serve._audit import AuditLog
    from greyanom.serve._auth import LOCAL, Principal

    records = open_records(db)
    try:
        principal = LOCAL if actor is None else Principal(str(actor), LOCAL.role)
        AuditLog(records).add(principal, "retrain", f"model:{report.name}", report.to_dict())
    finally:
        if records is not db:
            records.close()
