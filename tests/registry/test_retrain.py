"""Retraining from a records database filled by the inspection service on simulated 16x16 images."""

import datetime as dt
import io
import shutil

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("safetensors")

from greyanom import PCADetector, load  # noqa: E402
from greyanom.cli import main  # noqa: E402
from greyanom.decision import DecisionPolicy  # noqa: E402
from greyanom.registry import ModelRegistry, RetrainError, data_hash, parse_since, retrain  # noqa: E402

S = 16
_YY, _XX = np.mgrid[:S, :S]
BASE = 0.5 + 0.1 * np.sin(_XX / 2.0) * np.cos(_YY / 3.0)


def normals(n, seed, noise=0.03):
    rng = np.random.default_rng(seed)
    return np.clip(BASE + noise * rng.normal(size=(n, S, S)), 0, 1).astype(np.float32)


def defects(n, seed, amp=0.4):
    rng = np.random.default_rng(seed)
    images = normals(n, seed + 1000)
    for image in images:
        r, c = rng.integers(2, S - 6, 2)
        image[r:r + 4, c:c + 4] += amp
    return np.clip(images, 0, 1)


def png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _old_pass(records, body, wafer):
    """A PASS record with a kept image, as an earlier model (not the production one) answered it."""
    return records.add(wafer_id=wafer, inspection_point=1, anomaly_score=0.0, decision="PASS", confidence=0.5,
                       model_version="old", policy_version="old", inference_time_ms=1.0, image=body)["id"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """A registry with production 1.0.0 and a records database of its traffic, reviews included."""
    from greyanom.serve import InspectionService, ReviewStore
    from greyanom.serve._auth import Principal

    folder = tmp_path_factory.mktemp("retrain")
    train = np.round(normals(80, 0) * 255) / 255
    det = PCADetector(n_components=5, smoothing_sigma=1.0, random_state=0).fit(train.astype(np.float32))
    policy = DecisionPolicy(review_fpr=0.1, reject_fpr=0.02).fit(det.heldout_scores_, model=det)
    registry = ModelRegistry(folder / "registry")
    registry.add(det, policy, name="m")
    registry.promote("m", "1.0.0")
    version = registry.production("m")
    service = InspectionService(version.model_path, version.policy_path, db_url=f"sqlite:///{folder}/records.db",
                                threads=None, keep_images=True, audit_sample=0.3, random_state=0)
    truth = {}
    for i, x in enumerate(normals(150, 1)):
        truth[service.inspect(png(x), f"N{i}", 1)["id"]] = "normal"
    for i, x in enumerate(defects(30, 2)):
        truth[service.inspect(png(x), f"D{i}", 1)["id"]] = "defect"
    reviews = ReviewStore(service.records)
    for row in reviews.queue(limit=10_000):
        reviews.add(row["id"], Principal("ana", "review"), truth[row["id"]])
    # crafted rows: one unreadable, one duplicate of a normal, one defect an older model PASSed
    _old_pass(service.records, b"not an image", "X1")
    service.inspect(png(normals(150, 1)[0]), "N0-again", 1)
    _old_pass(service.records, png(defects(1, 9)[0]), "X2")
    service.records.close()
    return {"folder": folder, "truth": truth}


@pytest.fixture
def fresh(scenario, tmp_path):
    """Copies of the scenario's registry and records database (a retraining adds a version)."""
    shutil.copytree(scenario["folder"] / "registry", tmp_path / "registry")
    for path in scenario["folder"].glob("records.db*"):
        shutil.copy(path, tmp_path / path.name)
    return f"sqlite:///{tmp_path}/records.db", tmp_path / "registry"


def test_retrain_validates_trains_gates_and_registers(fresh, scenario):
    from greyanom.serve import Records, ReviewStore

    db, root = fresh
    stats = ReviewStore(Records(db)).stats()
    report = retrain(db, root, name="m", min_images=40, min_defects=5, actor="ana")
    assert report.registered and report.version == "1.1.0" and not report.failures
    truth = scenario["truth"]
    records = Records(db)
    reviewed = {}
    for rec in records.query(limit=10_000):
        reviews = ReviewStore(records).inspection(rec["id"])["reviews"]
        if reviews:
            reviewed[rec["id"]] = reviews[-1]["verdict"]
    n_defects = sum(v == "defect" for v in reviewed.values())
    n_normals = sum(v == "normal" for v in reviewed.values())
    assert n_defects == sum(truth[i] == "defect" for i in reviewed) and n_normals + n_defects == stats["reviews"]
    c = report.counts
    assert (c["unreadable"], c["duplicate"], c["out_of_distribution"]) == (1, 1, 1)
    assert c["eval_defects"] == n_defects and c["eval_normals"] == -(-n_normals // 2)  # half, rounded up
    assert c["reviewed_normal_train"] == n_normals - c["eval_normals"]
    assert c["kept"] == sum(stats["decisions"].values())  # every decision's image was kept (keep_images)
    unreviewed_pass = sum(rec["decision"] == "PASS" and rec["id"] not in reviewed
                          for rec in records.query(limit=10_000))
    # the unreviewed PASS images and the training share of the reviewed normals, less the three dropped
    assert c["pass"] == unreviewed_pass + c["reviewed_normal_train"]
    assert c["used"] == c["pass"] - 3

    registry = ModelRegistry(root)
    assert registry.production("m").version == "1.0.0"  # never promoted
    new = registry.get("m", "1.1.0")
    assert new.stage == "candidate" and new.policy_bound and new.data_hash == report.data_hash
    assert new.metrics["auroc"] == report.candidate["auroc"] and new.metrics["base_fpr"] == report.current["fpr"]
    assert new.metrics["n_train"] == c["used"] and "by ana" in new.description
    old, cand = load(registry.production("m").model_path), load(new.model_path)
    assert type(cand) is type(old) and cand.get_params() == old.get_params()
    policy = DecisionPolicy.load(new.policy_path)
    assert (policy.review_fpr, policy.reject_fpr, policy.model_hash_) == (0.1, 0.02, new.model_hash)
    assert report.candidate["auroc"] > 0.95 and report.candidate["fnr"] <= report.current["fnr"] + 0.01
    assert report.data_hash.startswith("sha256:") and report.data_hash != data_hash([np.zeros(1)])
    from greyanom.serve import AuditLog

    (event,) = AuditLog(Records(db)).query(action="retrain")
    assert (event["actor"], event["role"], event["target"]) == ("ana", "admin", "model:m")
    assert event["detail"]["version"] == "1.1.0" and event["detail"]["counts"] == c
    text = report.format()
    assert "1 unreadable, 1 duplicate, 1 out of distribution" in text and "registered m 1.1.0" in text


def test_max_images_takes_the_reviewed_normals_first(fresh):
    db, root = fresh
    full = retrain(db, root, name="m", min_images=40, min_defects=5)
    capped = retrain(db, root, name="m", min_images=10, min_defects=5, max_images=60)
    n_reviewed = full.counts["reviewed_normal_train"]
    assert 0 < n_reviewed < 60 < full.counts["used"]
    assert capped.counts["used"] == 60 and capped.counts["reviewed_normal_train"] == min(60, n_reviewed)
    assert capped.data_hash != full.data_hash and capped.version == "1.2.0"


def test_a_candidate_worse_on_the_reviewed_normals_is_refused(fresh):
    """A quiet spell (noise 0.008, not 0.03) fills the window: the candidate is too tight for the reviewed normals."""
    from greyanom.serve import InspectionService

    db, root = fresh
    version = ModelRegistry(root).production("m")
    service = InspectionService(version.model_path, version.policy_path, db_url=db, threads=None, keep_images=True)
    for i, x in enumerate(normals(300, 11, noise=0.008)):
        service.inspect(png(x), f"Q{i}", 1)
    service.records.close()
    report = retrain(db, root, name="m", min_images=40, min_defects=5)
    assert not report.registered and report.version is None
    assert report.candidate["fpr"] > report.current["fpr"] + 0.05
    assert any(f.startswith("FPR") for f in report.failures) and report.drift["drift"]
    assert [v.version for v in ModelRegistry(root).versions("m")] == ["1.0.0"]
    assert report.message.startswith("not registered: the candidate is worse than m 1.0.0")
    from greyanom.serve import AuditLog, Records

    (event,) = AuditLog(Records(db)).query(action="retrain")
    assert event["actor"] == "local" and not event["detail"]["registered"] and event["detail"]["failures"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_images": 10_000}, "too few usable images to retrain m"),
    ({"min_defects": 10_000}, "too few reviewed images to judge"),
    ({"since": dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)}, "too few usable images"),
    ({"name": "other"}, "no model named 'other'"),
])
def test_bad_input(fresh, kwargs, message):
    db, root = fresh
    args = {"name": "m", "min_images": 40, "min_defects": 5, **kwargs}
    with pytest.raises(RetrainError, match=message):
        retrain(db, root, **args)
    assert [v.version for v in ModelRegistry(root).versions("m")] == ["1.0.0"]


def test_no_production_version_and_no_database(fresh, tmp_path):
    db, root = fresh
    registry = ModelRegistry(root)
    v = registry.production("m")
    registry.add(v.model_path, v.policy_path, name="fresh")
    with pytest.raises(RetrainError, match="no production version yet"):
        retrain(db, root, name="fresh")
    with pytest.raises(ValueError, match="no records database at"):
        retrain(f"sqlite:///{tmp_path}/missing.db", root, name="m")
    with pytest.raises(ValueError, match="min_images must be a positive integer"):
        retrain(db, root, name="m", min_images=0)


def test_cli_exit_status(fresh, capsys):
    db, root = fresh
    argv = ["retrain", "--db", db, "--registry", str(root), "--name", "m", "--min-defects", "5"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--min-images", "10000"])
    assert info.value.code == 2
    assert "too few usable images to retrain m" in capsys.readouterr().err
    assert main([*argv, "--min-images", "40", "--since", "30d"]) == 0
    out = capsys.readouterr().out
    assert "registered m 1.1.0 as a candidate (not promoted)" in out and "gate: AUROC >= current - 0.02" in out
    with pytest.raises(SystemExit) as info:
        main([*argv, "--since", "soon"])
    assert info.value.code == 2 and "--since: since must be an age" in capsys.readouterr().err


def test_parse_since():
    assert parse_since("90d") == dt.timedelta(days=90)
    assert parse_since("12h") == dt.timedelta(hours=12) and parse_since("30m") == dt.timedelta(minutes=30)
    assert parse_since("2026-01-02T03:04:05") == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    for bad in ("", "-3d", "3w", "0d", 5):
        with pytest.raises(ValueError, match="since must be"):
            parse_since(bad)
