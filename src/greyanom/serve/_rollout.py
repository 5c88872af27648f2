"""Comparing a candidate model with production, and the false-negative-rate guardrail.

The figures come from the ``model_scores`` table (one row per model that scored an
inspection) and the ``reviews`` table:

* per model: inspections, PASS / REVIEW / REJECT counts, REJECT and REVIEW rates, mean
  score, latency (mean, 95th percentile) and the FNR on reviewed defects;
* candidate against production: a two-sided two-proportion z-test (pooled) of the REJECT
  rate and of the REVIEW rate, and the two-sample Kolmogorov-Smirnov test
  (:func:`scipy.stats.ks_2samp`) of the score distributions.

The **FNR** of a model is, among the inspections it scored whose latest review verdict is
``defect``, the fraction it decided PASS. In a shadow rollout the candidate scored every
image, so its FNR is known on every reviewed defect; in a canary rollout on the images it
decided. :class:`FNRGuardrail` judges it once ``min_defects`` reviewed defects exist.
"""

from __future__ import annotations

import math

import numpy as np
from sqlalchemy import select

from greyanom.serve._records import ModelScore, Review

__all__ = ["FNRGuardrail", "two_proportion_test", "model_figures", "compare_models", "DEFAULT_MIN_DEFECTS",
           "DEFAULT_MAX_FNR"]

#: The case study's FNR limit for a candidate.
DEFAULT_MAX_FNR = 0.01
#: Reviewed defects before the guardrail judges: the fewest at which one missed defect is not
#: by itself above a 1 % limit (1 / 100). With fewer, a single miss among, say, 40 defects
#: (2.5 %) would roll back a candidate that may be as good as production.
DEFAULT_MIN_DEFECTS = 100


def two_proportion_test(k1, n1, k2, n2):
    """Two-sided two-proportion z-test with the pooled variance.

    Parameters
    ----------
    k1, n1, k2, n2 : int
        Successes and trials of the two samples.

    Returns
    -------
    result : dict or None
        ``{"p1", "p2", "difference", "z", "p_value"}`` (``difference = p2 - p1``); None
        when a sample is empty. When both samples are all successes or all failures the
        difference is 0, ``z`` 0 and the p-value 1.

    Notes
    -----
    :math:`z = (\\hat p_2 - \\hat p_1) / \\sqrt{\\hat p (1-\\hat p)(1/n_1 + 1/n_2)}` with the
    pooled :math:`\\hat p = (k_1 + k_2)/(n_1 + n_2)`; the p-value is :math:`2\\,\\Phi(-|z|)`
    (:func:`scipy.stats.norm.sf`). :math:`z^2` is Pearson's chi-square statistic of the
    2x2 table without continuity correction, so the p-value equals that of
    ``scipy.stats.chi2_contingency(table, correction=False)``.
    """
    from scipy.stats import norm

    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = (p2 - p1) / math.sqrt(var)
        p_value = float(2.0 * norm.sf(abs(z)))
    return {"p1": p1, "p2": p2, "difference": p2 - p1, "z": float(z), "p_value": p_value}


def _rows(records, model_version, since):
    stmt = select(ModelScore.inspection_id, ModelScore.anomaly_score, ModelScore.decision, ModelScore.latency_ms,
                  ModelScore.role).where(ModelScore.model_version == model_version)
    if since is not None:
        stmt = stmt.where(ModelScore.created_at >= since)
    with records.session() as session:
        return session.execute(stmt.order_by(ModelScore.id)).all()


def _fnr(records, model_version=None, registry_version=None, since=None):
    """Reviewed defects a model scored and how many it decided PASS."""
    from greyanom.serve._review_store import ReviewStore

    verdicts = ReviewStore(records).latest_verdicts()
    # scores of inspections ever reviewed as a defect; the latest verdict decides below
    stmt = select(ModelScore.inspection_id, ModelScore.decision).where(
        ModelScore.inspection_id.in_(select(Review.inspection_id).where(Review.verdict == "defect")))
    if model_version is not None:
        stmt = stmt.where(ModelScore.model_version == model_version)
    if registry_version is not None:
        stmt = stmt.where(ModelScore.registry_version == registry_version)
    if since is not None:
        stmt = stmt.where(ModelScore.created_at >= since)
    with records.session() as session:
        decided = {int(i): decision for i, decision in session.execute(stmt.order_by(ModelScore.id))}
    defects = [decision for i, decision in decided.items() if verdicts.get(i) == "defect"]
    missed = sum(d == "PASS" for d in defects)
    return {"reviewed_defects": len(defects), "missed": missed,
            "fnr": missed / len(defects) if defects else None}


def model_figures(records, model, since=None):
    """One model's figures (see the module docstring) and its scores, from ``model_scores``.

    Returns
    -------
    figures : dict
    scores : ndarray
    """
    rows = _rows(records, model.model_version, since)
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    decisions = [r[2] for r in rows]
    latency = np.array([r[3] for r in rows], dtype=np.float64)
    n = len(rows)
    counts = {d: decisions.count(d) for d in ("PASS", "REVIEW", "REJECT")}
    figures = {
        "registry_version": model.registry_version,
        "model_version": model.model_version,
        "roles": sorted({r[4] for r in rows}),
        "n": n,
        "decisions": counts,
        "reject_rate": counts["REJECT"] / n if n else None,
        "review_rate": counts["REVIEW"] / n if n else None,
        "mean_score": float(scores.mean()) if n else None,
        "latency_ms": {"mean": float(latency.mean()) if n else None,
                       "p95": float(np.percentile(latency, 95)) if n else None},
        **_fnr(records, model_version=model.model_version, since=since),
    }
    return figures, scores


def compare_models(records, production, candidate, *, since=None, alpha=0.01):
    """``GET /api/v1/compare``: each model's figures and the tests of candidate against production.

    Parameters
    ----------
    records : Records
    production : ServedModel
    candidate : ServedModel or None
    since : datetime, optional
        Only inspections from this time on.
    alpha : float, default=0.01
        A test with ``p_value < alpha`` is ``significant`` (the case study's p < 0.01).
    """
    prod, prod_scores = model_figures(records, production, since)
    out = {"production": prod, "candidate": None, "tests": None, "alpha": alpha,
           "since": None if since is None else since.isoformat()}
    if candidate is None:
        return out
    cand, cand_scores = model_figures(records, candidate, since)
    tests = {}
    for key, decision in (("reject_rate", "REJECT"), ("review_rate", "REVIEW")):
        result = two_proportion_test(prod["decisions"][decision], prod["n"], cand["decisions"][decision], cand["n"])
        if result is not None:
            result["significant"] = result["p_value"] < alpha
        tests[key] = result
    if len(prod_scores) and len(cand_scores):
        from scipy.stats import ks_2samp

        ks = ks_2samp(prod_scores, cand_scores)
        tests["score_ks"] = {"statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                             "significant": float(ks.pvalue) < alpha}
    else:
        tests["score_ks"] = None
    out.update(candidate=cand, tests=tests)
    return out


class FNRGuardrail:
    """Roll back a candidate whose false-negative rate on reviewed defects is too high.

    Parameters
    ----------
    max_fnr : float in [0, 1), default=0.01
        The case study's limit: above it the candidate is dropped (and rolled back if it was
        promoted meanwhile).
    min_defects : int, default=100
        Reviewed defects the candidate scored before it is judged. The default is the
        fewest at which one missed defect alone is not above a 1 % limit; below it the FNR
        is too coarse to act on (one miss in 40 is 2.5 %).
    """

    def __init__(self, max_fnr=DEFAULT_MAX_FNR, min_defects=DEFAULT_MIN_DEFECTS):
        if isinstance(max_fnr, bool) or not 0.0 <= float(max_fnr) < 1.0:
            raise ValueError(f"max_fnr must be a fraction in [0, 1), got {max_fnr!r}.")
        if isinstance(min_defects, bool) or not isinstance(min_defects, int) or min_defects < 1:
            raise ValueError(f"min_defects must be a positive integer, got {min_defects!r}.")
        self.max_fnr = float(max_fnr)
        self.min_defects = min_defects

    def evaluate(self, records, registry_version):
        """The candidate's FNR on reviewed defects and whether it exceeds the limit.

        Returns
        -------
        result : dict
            ``registry_version``, ``reviewed_defects``, ``missed``, ``fnr`` (None without
            reviewed defects), ``max_fnr``, ``min_defects``, ``judged`` (enough reviewed
            defects) and ``exceeded`` (judged and ``fnr > max_fnr``).
        """
        fnr = _fnr(records, registry_version=registry_version)
        judged = fnr["reviewed_defects"] >= self.min_defects
        return {"registry_version": registry_version, **fnr, "max_fnr": self.max_fnr,
                "min_defects": self.min_defects, "judged": judged,
                "exceeded": bool(judged and fnr["fnr"] > self.max_fnr)}
