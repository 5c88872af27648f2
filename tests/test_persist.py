"""Model files: format version, integrity hash, missing keys, generic greyanom.load."""

import json

import numpy as np
import pytest

pytest.importorskip("safetensors")

import greyanom  # noqa: E402
from greyanom import _persist  # noqa: E402
from greyanom._persist import load_arrays, read_config, save_arrays  # noqa: E402


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return np.clip(0.5 + 0.05 * rng.normal(size=(16, 32, 32)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def vae(images):
    return greyanom.ConvVAEDetector(
        channels=(8, 16), latent_dim=4, bottleneck_channels=4, max_epochs=1, n_threads=1, random_state=0
    ).fit(images)


@pytest.fixture(scope="module")
def padim(images):
    return greyanom.PaDiMDetector(n_jobs=1, random_state=0).fit(images)


def _rewrite(path, out, *, meta_update=None, meta_drop=(), arrays_fn=None):
    """Copy a model file, editing its metadata or arrays without fixing the hash."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as handle:
        meta = dict(handle.metadata())
    arrays = load_file(str(path))
    if arrays_fn is not None:
        arrays = arrays_fn(arrays)
    meta.update(meta_update or {})
    for key in meta_drop:
        meta.pop(key)
    save_file(arrays, str(out), metadata=meta)
    return out


def test_round_trip_header(tmp_path):
    arrays = {"b": np.arange(3.0), "a": np.ones((2, 2), np.float32)}
    config = {"class": "X", "params": {"k": 1}, "state": {"t": 0.5}}
    path = save_arrays(tmp_path / "m.safetensors", arrays, config)
    got, cfg = load_arrays(path, "X")
    assert cfg["params"] == {"k": 1} and cfg["state"]["t"] == 0.5
    np.testing.assert_array_equal(got["b"], arrays["b"])
    info = read_config(path)
    assert info["class"] == "X" and info["format_version"] == 2
    assert info["greyanom_version"] == greyanom.__version__
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place


def test_missing_state_key_is_value_error(tmp_path):
    path = save_arrays(tmp_path / "m.safetensors", {"a": np.zeros(2)}, {"class": "X", "params": {}, "state": {}})
    _, cfg = load_arrays(path, "X")
    with pytest.raises(ValueError, match="lacks the key 'threshold_'"):
        cfg["state"]["threshold_"]


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_arrays(tmp_path / "nope" / "m.safetensors", {}, {"class": "X", "params": {}, "state": {}})


def test_save_config_without_key(tmp_path):
    with pytest.raises(ValueError, match="params"):
        save_arrays(tmp_path / "m.safetensors", {}, {"class": "X", "state": {}})


@pytest.mark.parametrize("name", ["vae", "padim"])
def test_generic_load_round_trip(name, request, images, tmp_path):
    det = request.getfixturevalue(name)
    path = det.save(tmp_path / f"{name}.safetensors")
    loaded = greyanom.load(path)
    assert type(loaded) is type(det)
    np.testing.assert_allclose(loaded.score(images[:3]), det.score(images[:3]), rtol=1e-5)
    assert loaded.threshold_ == det.threshold_


@pytest.mark.parametrize("name", ["vae", "padim"])
def test_damaged_payload_is_value_error(name, request, images, tmp_path):
    """The issue's case: payload bytes set to 0xFF (an IndexError / NaN scores before)."""
    det = request.getfixturevalue(name)
    path = det.save(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    start = 8 + header_len
    raw[start + 16 : start + 4096] = b"\xff" * len(raw[start + 16 : start + 4096])
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged payload"):
        greyanom.load(path)
    with pytest.raises(ValueError, match="damaged payload"):
        type(det).load(path)


def test_edited_config_fails_hash(vae, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    cfg = json.loads(_read_raw_config(path))
    cfg["state"]["threshold_"] = 1e9
    out = _rewrite(path, tmp_path / "edited.safetensors", meta_update={"config": json.dumps(cfg)})
    with pytest.raises(ValueError, match="SHA-256"):
        greyanom.load(out)


def _read_raw_config(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.metadata()["config"]


def test_newer_format_is_refused(vae, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    out = _rewrite(path, tmp_path / "new.safetensors", meta_update={"format_version": "999"})
    with pytest.raises(ValueError, match="format version 999.*reads versions 1 to 2"):
        greyanom.load(out)
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta_update={"format_version": "two"})
    with pytest.raises(ValueError, match="invalid format_version"):
        greyanom.load(bad)


@pytest.mark.parametrize("key", ["params", "state", "class"])
def test_config_without_key(vae, tmp_path, key):
    """The issue's case: a header without ``params`` gave a KeyError."""
    path = vae.save(tmp_path / "m.safetensors")
    cfg = json.loads(_read_raw_config(path))
    del cfg[key]
    out = _rewrite(path, tmp_path / "nokey.safetensors", meta_update={"config": json.dumps(cfg)})
    with pytest.raises(ValueError, match=f"lacks the key '{key}'"):
        greyanom.load(out)


def test_metadata_without_hash(vae, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    out = _rewrite(path, tmp_path / "nohash.safetensors", meta_drop=("sha256",))
    with pytest.raises(ValueError, match="lacks the key 'sha256'"):
        greyanom.load(out)


def test_version_1_file_still_loads(vae, images, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    out = _rewrite(path, tmp_path / "v1.safetensors", meta_update={"format_version": "1"}, meta_drop=("sha256",))
    np.testing.assert_allclose(greyanom.load(out).score(images[:2]), vae.score(images[:2]), rtol=1e-5)


def test_unknown_class_is_refused_without_import(vae, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    cfg = json.loads(_read_raw_config(path))
    cfg["class"] = "os.system"
    out = _rewrite(path, tmp_path / "evil.safetensors", meta_update={"config": json.dumps(cfg)})
    with pytest.raises(ValueError, match="not a greyanom model class"):
        greyanom.load(out)


def test_not_a_model_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        greyanom.load(junk)
    with pytest.raises(FileNotFoundError):
        greyanom.load(tmp_path / "absent.safetensors")


def test_wrong_class_for_class_load(vae, tmp_path):
    path = vae.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="not a 'PaDiMDetector'"):
        greyanom.PaDiMDetector.load(path)


def test_file_sha256_changes_with_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    assert _persist.file_sha256(a) != _persist.file_sha256(b)


@pytest.mark.parametrize("name", ["vae", "padim"])
def test_model_hash_is_the_same_for_the_object_and_its_file(name, request, images, tmp_path):
    from sklearn.base import clone

    det = request.getfixturevalue(name)
    path = det.save(tmp_path / f"{name}.safetensors")
    digest = _persist.model_hash(det)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert _persist.model_hash(path) == digest
    if name == "padim":  # the VAE fixture uses the deprecated n_threads, which load renames to n_jobs
        assert _persist.model_hash(greyanom.load(path)) == digest
    # another constructor parameter with the same learned state: another hash
    changed = clone(det).set_params(random_state=1)
    changed.__dict__.update({k: v for k, v in det.__dict__.items() if k.endswith("_")})
    assert _persist.model_hash(changed) != digest
    with pytest.raises(TypeError, match="fitted greyanom detector"):
        _persist.model_hash(object())
