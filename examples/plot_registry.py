"""
Model versions: register, promote, roll back
============================================

Fit two :class:`~greyanom.PCADetector` models on synthetic wafer images, register each with
its bound :class:`~greyanom.decision.DecisionPolicy` and its test AUROC in a
:class:`~greyanom.registry.ModelRegistry`, promote the first and then the second, and roll
back. ``greyanom serve --registry DIR --name N`` serves whatever version is in production;
``greyanom registry DIR ...`` does the same steps on the command line.
"""

# %%
# Two models of the same images: 5 and 20 principal components.
import tempfile

import numpy as np

from greyanom import PCADetector
from greyanom.datasets import make_wafer_images
from greyanom.decision import DecisionPolicy
from greyanom.metrics import evaluate
from greyanom.registry import ModelRegistry, data_hash

data = make_wafer_images(n_train=120, n_test=60, image_size=64, random_state=0)
root = tempfile.mkdtemp(prefix="greyanom-registry-")
registry = ModelRegistry(root)
for k in (5, 20):
    detector = PCADetector(n_components=k, smoothing_sigma=2.0, random_state=0).fit(data.X_train)
    # the policy is bound to its model (model=): only bound versions can be promoted
    policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(detector.heldout_scores_, model=detector)
    report = evaluate(data.y_test, detector.score(data.X_test))
    version = registry.add(detector, policy, name="litho", metrics={"auroc": round(report.auroc, 3)},
                           data_hash=data_hash(data.X_train), description=f"{k} components")
    print(version.version, version.stage, version.metrics)

# %%
# Promote 1.0.0, then 1.1.0; 1.0.0 stays *ready* (the last five promoted versions are the
# rollback chain a service keeps loaded).
registry.promote("litho", "1.0.0", actor="ana", reason="first model")
registry.promote("litho", "1.1.0", actor="ana", reason="higher AUROC")
print([(v.version, v.stage) for v in registry.versions("litho")])

# %%
# A canary went wrong: roll back to the version promoted before. The same on the command
# line: ``greyanom registry DIR rollback litho --reason ...``.
from greyanom.cli import main

main(["registry", root, "rollback", "litho", "--actor", "bo", "--reason", "canary FNR above 1 %"])
main(["registry", root, "list"])
main(["registry", root, "history", "litho"])

# %%
# The scores of the test images under both versions, with each version's REVIEW threshold:
# the thresholds are on each model's own score scale, which is why a policy is bound to its
# model.
import greyanom
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
for ax, version in zip(axes, registry.versions("litho")):
    model = greyanom.load(version.model_path)
    policy = DecisionPolicy.load(version.policy_path)
    scores = model.score(data.X_test)
    bins = np.linspace(scores.min(), scores.max(), 30)
    ax.hist(scores[data.y_test == 0], bins=bins, alpha=0.6, label="normal")
    ax.hist(scores[data.y_test == 1], bins=bins, alpha=0.6, label="defect")
    ax.axvline(policy.review_threshold_, color="k", ls="--", label="REVIEW from")
    ax.set_title(f"{version.version} ({version.stage}): AUROC {version.metrics['auroc']}")
    ax.set_xlabel("anomaly score")
axes[0].legend()
plt.show()
