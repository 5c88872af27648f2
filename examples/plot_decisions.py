"""
From scores to PASS / REVIEW / REJECT, and watching for drift
=============================================================

Fit :class:`~greyanom.PCADetector` on normal synthetic wafer images, turn its held-out
training scores into conformal decision bands with
:class:`~greyanom.decision.DecisionPolicy`, count the decisions per defect type, and watch a
stream of batches with :class:`~greyanom.drift.RollingDriftMonitor` while the process slowly
drifts.
"""

# %%
# Data: 250 normal training images, a labelled test set, and later batches of normal images.
import numpy as np

from greyanom import PCADetector
from greyanom.datasets import make_wafer_images
from greyanom.decision import DecisionPolicy, decision_table

data = make_wafer_images(n_train=250, n_test=120, image_size=128, random_state=0)
detector = PCADetector(n_components=30, random_state=0).fit(data.X_train)

# %%
# ``fit`` set the threshold of ``predict`` on cross-fitted scores (``heldout_scores_``) rather
# than on the in-sample ones (``decision_scores_``), which are optimistic:
print("median in-sample score", np.median(detector.decision_scores_).round(5),
      "| median held-out score", np.median(detector.heldout_scores_).round(5))

# %%
# The held-out scores are the calibration set of the policy: 250 of them support a 0.5 %
# REJECT band (199 are needed) and a 5 % REVIEW-or-REJECT band.
policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.005).fit(detector.heldout_scores_)
print(f"REVIEW from {policy.review_threshold_:.5f}, REJECT from {policy.reject_threshold_:.5f}")
decisions = policy.decide(detector.score(data.X_test))
print(decision_table(decisions, data.defect_types_test))

# %%
# Drift: ten batches in time order; from batch 6 on, the images get brighter and noisier
# (a drifting light source), which the model has not seen.
from greyanom.drift import RollingDriftMonitor

monitor = RollingDriftMonitor(policy, alpha=0.01, reject_limit=0.05)
rng = np.random.default_rng(1)
for day in range(10):
    batch = make_wafer_images(n_train=60, n_test=2, image_size=128, random_state=100 + day).X_train
    if day >= 6:
        drift = 0.01 * (day - 5)
        batch = np.clip(batch + drift + rng.normal(scale=drift / 2, size=batch.shape), 0, 1).astype(np.float32)
    monitor.update(detector.score(batch), label=f"day {day}")
print(monitor.history_[["batch", "p_value", "reject_rate", "pass_mean_z", "alert"]].round(3).to_string(index=False))

# %%
# The score distribution over time, with the bands and the alerts.
ax = monitor.plot()
ax.set_title("PCADetector scores per batch")
