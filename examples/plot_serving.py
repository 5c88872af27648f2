"""
Serving a detector: train, calibrate, save, inspect over HTTP, look at the heatmap
==================================================================================

The inspection service (:mod:`greyanom.serve`, the ``serve`` extra) puts a saved image
detector and a :class:`~greyanom.decision.DecisionPolicy` behind the case study's REST
contract: ``POST /api/v1/inspect`` with the raw PNG bytes of one image answers its anomaly
score, a PASS / REVIEW / REJECT decision, a confidence and a heatmap link, after committing
a record of the answer to a database.

Here the app runs in process with FastAPI's test client, so no port is opened; on a
production host the same files are served with ``greyanom serve --model ... --policy ...``
(see the serving guide).
"""

# %%
# Train and calibrate
# -------------------
# PaDiM on small synthetic wafer images. The decision policy is calibrated on anomaly
# scores of normal images the detector did not train on, so its false-alarm rates hold,
# and bound to the detector (``model=``): the service refuses it for any other model.
import io
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from greyanom import PaDiMDetector
from greyanom.datasets import make_wafer_images
from greyanom.decision import DecisionPolicy

data = make_wafer_images(n_train=100, n_test=12, image_size=64, random_state=0)
train, calibration = data.X_train[:40], data.X_train[40:]
detector = PaDiMDetector(random_state=0).fit(train)
policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(detector.score(calibration), model=detector)
print(f"REVIEW from {policy.review_threshold_:.3f}, REJECT from {policy.reject_threshold_:.3f}")
print(f"bound to {policy.model_class_} {policy.model_hash_[:19]}")

# %%
# Save
# ----
# The model file holds arrays and JSON only (safetensors, with a SHA-256 of the payload);
# loading it never unpickles. The policy goes into the same kind of file (its JSON state in the container).
folder = Path(tempfile.mkdtemp())
model_path = detector.save(folder / "padim.safetensors")
policy_path = policy.save(folder / "policy.safetensors")

# %%
# Serve and inspect
# -----------------
# ``create_app`` builds the FastAPI app that ``greyanom serve`` runs under uvicorn. The
# records go to an in-memory SQLite database here; by default they go to a SQLite file.
# A token file gives the camera an ``inspect`` token, an inspector a ``review`` token
# and the operator an ``admin`` token; every route but ``/healthz`` then needs one.
import secrets  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from greyanom.serve import create_app  # noqa: E402

tokens = {role: secrets.token_hex(16) for role in ("inspect", "review", "admin")}
token_file = folder / "tokens.txt"
token_file.write_text(f"{tokens['inspect']} inspect camera\n{tokens['review']} review alice\n"
                      f"{tokens['admin']} admin ops\n")
token_file.chmod(0o600)
client = TestClient(create_app(model_path, policy_path, db_url="sqlite://", token_file=token_file))


def as_(role):
    return {"Authorization": f"Bearer {tokens[role]}"}



def png(image):
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# the first normal test image, and the defective one the detector scores highest
normal = int(np.flatnonzero(data.y_test == 0)[0])
defective = np.flatnonzero(data.y_test == 1)
defect = int(defective[np.argmax(detector.score(data.X_test[defective]))])
answers = {}
for name, index in (("normal", normal), (data.defect_types_test[defect], defect)):
    response = client.post(
        "/api/v1/inspect",
        params={"wafer_id": "WF-2024-001234", "inspection_point": index},
        content=png(data.X_test[index]),
        headers={"content-type": "application/octet-stream", **as_("inspect")},
    )
    answers[name] = response.json()
print(json.dumps(answers, indent=1))

# %%
# Bad input is answered, not a crash: here an image of the wrong size.
wrong = client.post("/api/v1/inspect", params={"wafer_id": "W", "inspection_point": 0}, content=png(np.zeros((32, 32))),
                    headers=as_("inspect"))
print(wrong.status_code, wrong.json())
# and so is a request without a token, or with the wrong role
print(client.get("/api/v1/inspections").status_code, client.get("/api/v1/inspections", headers=as_("inspect")).json())

# %%
# Look at the heatmaps
# --------------------
# ``heatmap_url`` serves a coloured PNG on one fixed scale for every image (normalised with
# the model's training statistics), so a normal image stays dark and a defect glows.
fig, axes = plt.subplots(2, 2, figsize=(6, 6), layout="constrained")
for col, (name, answer) in enumerate(answers.items()):
    heat = Image.open(io.BytesIO(client.get(answer["heatmap_url"], headers=as_("review")).content))
    index = answer["inspection_point"]
    axes[0, col].imshow(data.X_test[index], cmap="gray", vmin=0, vmax=1)
    axes[0, col].set_title(f"{name}: {answer['decision']}\nscore {answer['anomaly_score']:.3f}", fontsize="small")
    axes[1, col].imshow(heat)
    axes[1, col].contour(data.masks_test[index], levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1, col].set_title("heatmap (cyan: true defect)", fontsize="small")
for ax in axes.ravel():
    ax.set_axis_off()
plt.show()

# %%
# The records and the metrics
# ---------------------------
# Every answer is a committed row; ``/metrics`` is Prometheus text for a dashboard.
records = client.get("/api/v1/inspections", params={"wafer_id": "WF-2024-001234"}, headers=as_("review"))
print([(r["id"], r["decision"], round(r["anomaly_score"], 3)) for r in records.json()["inspections"]])
metrics = client.get("/metrics", headers=as_("admin")).text
print("\n".join(line for line in metrics.splitlines() if line.startswith("greyanom_decisions_total")))

# %%
# Human review
# ------------
# An inspector looks at the defective image (on the review page ``/review``, or through
# the API) and posts a verdict; the inspector is the token's name. The stats estimate the
# false rejects from the verdicts, and the audit trail keeps who did what.
defect_answer = answers[data.defect_types_test[defect]]
review = client.post(f"/api/v1/inspections/{defect_answer['id']}/review",
                     json={"verdict": "defect", "note": "confirmed"}, headers=as_("review"))
print(review.status_code, review.json())
stats = client.get("/api/v1/stats", headers=as_("admin")).json()
print({k: stats[k] for k in ("decisions", "reviews", "queued", "reviewed_fraction", "reject_override_rate")})
print(client.get("/api/v1/audit", headers=as_("admin")).json()["events"][0])
