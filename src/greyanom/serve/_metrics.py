"""Prometheus metrics of the inspection service (prometheus-client).

One process: the metrics live in the app's own :class:`~prometheus_client.CollectorRegistry`.
Several uvicorn workers: ``greyanom serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` aggregates every worker's values through
:class:`~prometheus_client.multiprocess.MultiProcessCollector`.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ServiceMetrics"]

#: Latency buckets (seconds): fine below the case study's 50 ms budget, coarse above.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Images per forward pass: every size up to 8 (the usual ``--max-batch``), then powers of two.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128)


def score_buckets(calibration_scores, review_threshold, reject_threshold):
    """Histogram buckets of anomaly scores from the calibration distribution and the thresholds.

    Parameters
    ----------
    calibration_scores : array-like
        Held-out normal anomaly scores of the decision policy.
    review_threshold, reject_threshold : float
        The policy's thresholds; each is a bucket edge, so the histogram counts the
        PASS / REVIEW / REJECT bands exactly.

    Returns
    -------
    buckets : tuple of float
        Increasing edges: calibration quantiles 1..99 %, the thresholds, and 1.5x to 8x
        the reject threshold.
    """
    s = np.asarray(calibration_scores, dtype=np.float64)
    edges = list(np.percentile(s, [1, 5, 10, 25, 50, 75, 90, 95, 99])) if s.size else []
    edges += [review_threshold, reject_threshold]
    edges += [reject_threshold + k * abs(reject_threshold) for k in (0.5, 1.0, 3.0, 7.0)]
    edges = np.unique(np.round(np.asarray(edges, dtype=np.float64), 12))
    return tuple(float(e) for e in edges[np.isfinite(edges)])


class ServiceMetrics:
    """The service's counters, histograms and gauges.

    Parameters
    ----------
    score_buckets : sequence of float
        Edges of the anomaly-score histogram (see :func:`score_buckets`).
    model_class, model_version : str
        Exported as the labels of ``greyanom_model_info``.
    """

    def __init__(self, score_buckets, *, model_class, model_version):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        #: callables run before each exposition (the review gauges refresh from the database)
        self.before_render = []
        # in multiprocess mode the values go to files and /metrics collects them; in one
        # process they live in this app's own registry (two apps never share metrics)
        self.registry = None if self.multiprocess else CollectorRegistry()
        gauge_mode = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        reg = {"registry": self.registry}
        self.requests = Histogram(
            "greyanom_http_request_duration_seconds",
            "End-to-end time to answer an HTTP request, by route and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.inference = Histogram(
            "greyanom_inference_duration_seconds",
            "Time to decode, score, decide and render the heatmap of one image (no database write).",
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.database = Histogram(
            "greyanom_record_commit_duration_seconds",
            "Time to commit one inspection record and its heatmap.",
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.scores = Histogram(
            "greyanom_anomaly_score", "Anomaly scores of answered inspections.", buckets=score_buckets, **reg
        )
        self.decisions = Counter(
            "greyanom_decisions", "Answered inspections by decision (PASS, REVIEW, REJECT).", ["decision"], **reg
        )
        for decision in ("PASS", "REVIEW", "REJECT"):
            self.decisions.labels(decision=decision)
        self.rejected = Counter(
            "greyanom_rejected_requests", "Inspection requests answered with an error, by reason.", ["reason"], **reg
        )
        self.drift_p_value = Gauge(
            "greyanom_score_drift_p_value",
            "p-value of the score-drift test of recent scores against the calibration scores "
            "(1 until enough scores are in the window).",
            **gauge_mode,
            **reg,
        )
        self.drift_statistic = Gauge(
            "greyanom_score_drift_statistic", "Statistic of the latest score-drift test.", **gauge_mode, **reg
        )
        self.drift_window = Gauge(
            "greyanom_score_drift_window_size", "Scores in the drift window of this worker.", **gauge_mode, **reg
        )
        self.reject_rate = Gauge(
            "greyanom_reject_rate",
            "Fraction of REJECT decisions in the drift window (the case study alerts above 5 %).",
            **gauge_mode,
            **reg,
        )
        self.drift_p_value.set(1.0)
        self.batch_size = Histogram(
            "greyanom_batch_size",
            "Images per forward pass of the model (always 1 without micro-batching, --max-batch 1).",
            buckets=BATCH_SIZE_BUCKETS,
            **reg,
        )
        self.batch_queue_depth = Gauge(
            "greyanom_batch_queue_depth",
            "Images waiting for the model in the micro-batch queue (summed over workers; 0 without batching).",
            **({"multiprocess_mode": "livesum"} if self.multiprocess else {}),
            **reg,
        )
        self.batch_queue_wait = Histogram(
            "greyanom_batch_queue_wait_seconds",
            "Time an image waited in the micro-batch queue before its forward pass started.",
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.model_info = Gauge(
            "greyanom_model_info", "The served model (value 1).", ["model_class", "model_version"], **gauge_mode, **reg
        )
        self.model_info.labels(model_class=model_class, model_version=model_version).set(1)

    def render(self):
        """The Prometheus text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        for hook in self.before_render:
            hook()
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
