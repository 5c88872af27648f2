"""
Wafers in run order: centring drifting features on their neighbours
===================================================================

A chamber drifts between cleans, so within a lot some sensor levels move with the run. The wafer
model of :class:`~greyanom.ShapeSignatureDetector` centres each feature on its lot median; a
drift then stays in every wafer's scaled value, where it hides a fault of the same size. With
``order_key`` (a column with each wafer's run order in its lot: a run number or a start time),
the features that drift are centred on the median of the ``n_neighbours`` training wafers of
the lot nearest in run order. Which features drift is learned on the training wafers.

Here: simulated lots whose controlled variable ``v`` drifts along each lot, and a few held-out
wafers whose ``v`` sensor reads 0.2 high, less than the drift across a lot.
"""

# %%
# Simulated lots with a drift
# ---------------------------
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots

warnings.simplefilter("ignore", UserWarning)  # status warnings of the trace fits


def drifting_lots(random_state):
    df = make_pi_lots(n_lots=4, wafers_per_lot=16, sensors=("v", "u"), random_state=random_state)
    df["run"] = df.groupby("lot", sort=False)["wafer"].transform(lambda w: pd.factorize(w)[0] + 1)
    v = df["sensor"] == "v"
    df.loc[v, "value"] += 0.015 * df.loc[v, "run"]  # the chamber drifts along each lot
    wafers = df["wafer"].unique()
    held_out = wafers[np.arange(wafers.size) % 4 == 1]  # a quarter of the wafers, scored only
    faulty = wafers[np.arange(wafers.size) % 8 == 1]  # half of them read 0.2 high on v
    df.loc[v & df["wafer"].isin(faulty), "value"] += 0.2
    return df, set(held_out), set(faulty)


df, held_out, faulty = drifting_lots(random_state=0)
means = df[df["sensor"] == "v"].groupby(["lot", "run", "wafer"])["value"].mean().reset_index()
fig, ax = plt.subplots(figsize=(7, 3.5))
for lot, g in means.groupby("lot"):
    ax.plot(g["run"], g["value"], marker="o", ms=3, label=lot)
bad = means[means["wafer"].isin(faulty)]
ax.scatter(bad["run"], bad["value"], s=80, facecolors="none", edgecolors="k", label="sensor offset")
ax.set(xlabel="run in lot", ylabel="mean of v", title="v drifts along every lot")
ax.legend(ncol=5, fontsize=8)
plt.tight_layout()

# %%
# With and without the run order
# ------------------------------
# The same detector, fitted on the other wafers, once with ``order_key="run"``.
train, test = df[~df["wafer"].isin(held_out)], df[df["wafer"].isin(held_out)]
rows = {}
for order_key in (None, "run"):
    det = ShapeSignatureDetector(group_keys=("sensor",), order_key=order_key, random_state=0).fit(train)
    s = det.score_wafers(test)
    y = s.index.isin(faulty)
    rows[f"order_key={order_key!r}"] = {
        "AUROC": roc_auc_score(y, s), "faults flagged": f"{int((s[y] > det.wafer_threshold_).sum())} / {y.sum()}",
        "false alarms": f"{int((s[~y] > det.wafer_threshold_).sum())} / {(~y).sum()}",
    }
pd.DataFrame(rows).T

# %%
# The features the model centres on run-order neighbours: the level features of ``v`` (its
# mean, the fitted curve and level), none of ``u``.
list(det.wafer_columns_[det.wafer_model_.local])

# %%
# Over a few simulated data sets
# ------------------------------
# One data set is noisy evidence; the AUROC of the faulty wafers against the held-out normal
# ones on four seeds:
table = {}
for seed in range(4):
    df, held_out, faulty = drifting_lots(random_state=seed)
    train, test = df[~df["wafer"].isin(held_out)], df[df["wafer"].isin(held_out)]
    for order_key in (None, "run"):
        det = ShapeSignatureDetector(group_keys=("sensor",), order_key=order_key, random_state=0).fit(train)
        s = det.score_wafers(test)
        table.setdefault(f"seed {seed}", {})[f"order_key={order_key!r}"] = roc_auc_score(s.index.isin(faulty), s)
pd.DataFrame(table).T.round(3)

# %%
# On LAM 9600, with the wafer number as the run order, about a quarter of the features are
# chosen: the step durations and sample counts, and features of the optical endpoint, TCP tuner
# and load and RF power traces. The shape detector guide gives the figures on development, fresh
# and evaluation splits (``benchmarks/wafer_order_dev.py``).
