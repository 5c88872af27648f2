"""
Grey-box anomaly scores for PI-controlled traces
================================================

:class:`~greyanom.ShapeSignatureDetector` summarises every trace by the parameters of the
damped, linearly driven oscillator that a PI control loop implies (its *shape signature*),
learns a normal model of those signatures lot by lot, and scores new traces by how unlikely
their signature and their fit are under it. Every score splits exactly into one term per
parameter plus a goodness-of-fit term.

Here: simulated lots of wafers through a PI loop, with a few injected faults.
"""

# %%
# Simulated lots
# --------------
# Eight lots of ten wafers; each wafer has a controlled-variable trace ``v`` and a controller
# output trace ``u``. The first three lots are clean and form the normal model; later lots
# hold one wafer with each kind of fault.
import matplotlib.pyplot as plt
import pandas as pd

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.plotting import plot_score_series, plot_signature_heatmap, plot_trace_fits

faults = ["controller_gain", "process_gain", "setpoint_offset", "setpoint_slope", "noise_burst", "outliers"]
df = make_pi_lots(n_lots=8, wafers_per_lot=10, sensors=("v", "u"), faults=faults, n_clean_lots=3, random_state=0)
df.head()

# %%
# Fit the normal model and score every wafer
# ------------------------------------------
# One normal model per sensor (``group_keys``); the hierarchical fit runs per lot.
det = ShapeSignatureDetector(group_keys=("sensor",), lot_key="lot", n_initial_lots=3)
det.fit(df)
det.normal_model_[["noise_sd", "mu_gamma", "sd_gamma", "mu_omega", "sd_omega", "mu_y", "sd_y"]]

# %%
# ``analyse`` fits every trace once; every method below reads the result. ``score_wafers``
# scores each wafer with the wafer model on its signature features (fitted curve, residual sd,
# level, slope, duration, sample count); normal wafers score about 1 and the reference is the
# cross-fitted training wafers, from which the control limit ``wafer_threshold_`` is set.
a = det.analyse(df)
wafer_scores = det.score_wafers(a)
fault = df.groupby("wafer", sort=False)["fault"].first().reindex(wafer_scores.index)
ax = plot_score_series(wafer_scores, reference=det.wafer_heldout_scores_, labels=fault.notna(),
                       yscale="symlog")
plt.tight_layout()

# %%
# Which parameter made each faulty wafer anomalous?
# -------------------------------------------------
# ``explain_wafers`` names the group; ``explain`` gives the exact additive decomposition of each
# trace's score.
det.explain_wafers(a)[fault.notna().to_numpy()].round(2)

# %%
ex = det.explain(a)
terms = ["fit", "gamma", "R", "omega", "y", "phi", "c"]
v = ex.xs("v", level="sensor")
bad = v[fault.reindex(v.index).notna().to_numpy()]
table = bad[terms + ["score"]].round(1)
table.insert(0, "fault", fault.reindex(bad.index))
table["largest term"] = bad[terms].idxmax(axis=1)
table

# %%
# The monitoring heatmap
# ----------------------
# Standardised parameters, SSR and score of the ``v`` traces, wafers in time order.
sig = det.signatures(a)
plot_signature_heatmap(det, signatures=sig, group="v")
plt.tight_layout()

# %%
# Fitted curves against the data
# ------------------------------
# A normal wafer, the set-point offset and the controller-gain fault, with the normal-model
# curve in black.
picks = ["L00W00", fault.index[fault == "setpoint_offset"][0], fault.index[fault == "controller_gain"][0]]
plot_trace_fits(det, df, picks, group="v", signatures=sig)
plt.tight_layout()

# %%
# Change attribution between two wafers
# -------------------------------------
# ``explain_change`` splits the score change between two wafers per parameter; the
# contributions sum exactly to the change.
change = det.explain_change(df, "L00W00", fault.index[fault == "setpoint_offset"][0])
pd.DataFrame(change.xs("v", level="sensor")[["before", "after", "contribution"]])

# %%
# Saving the fitted detector
# --------------------------
# ``save`` writes one safetensors file (arrays, and JSON for the parameters, keys and
# labels; no pickle, with a SHA-256 of the payload). :func:`greyanom.load` reads it back, in
# another process next to the line for example, and the loaded detector scores exactly as
# the saved one.
import tempfile
from pathlib import Path

import greyanom

path = det.save(Path(tempfile.mkdtemp()) / "shape.safetensors")
loaded = greyanom.load(path)
print(type(loaded).__name__, "scores the wafers as saved:",
      bool((loaded.score_wafers(df) == det.score_wafers(df)).all()))
