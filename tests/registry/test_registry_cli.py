"""``greyanom registry DIR ...`` through ``greyanom.cli.main``: the actions, their output, bad input."""

import json

import numpy as np
import pytest

from greyanom import PCADetector
from greyanom.cli import main
from greyanom.decision import DecisionPolicy
from greyanom.registry import ModelRegistry

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two saved PCA models with bound policies, and an unbound policy of the first."""
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    out = {}
    for k in (2, 3):
        det = PCADetector(n_components=k).fit(rng.normal(size=(120, 6)))
        det.save(folder / f"pca{k}.safetensors")
        policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(det.heldout_scores_, model=det)
        policy.save(folder / f"pca{k}-policy.safetensors")
        out[k] = (str(folder / f"pca{k}.safetensors"), str(folder / f"pca{k}-policy.safetensors"))
        if k == 2:
            unbound = DecisionPolicy(review_fpr=0.05, reject_fpr=0.02).fit(det.heldout_scores_)
            unbound.save(folder / "unbound.safetensors")
    out["unbound"] = str(folder / "unbound.safetensors")
    return out


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_add_list_promote_rollback_history(tmp_path, files, capsys):
    root = str(tmp_path / "reg")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"auroc": 0.91, "fnr": 0.01}))
    assert main(["registry", root, "add", *files[2], "--name", "litho", "--metrics", str(metrics),
                 "--data-hash", "sha256:ab", "--description", "first"]) == 0
    assert "registered litho 1.0.0 (candidate): PCADetector sha256:" in capsys.readouterr().out
    assert main(["registry", root, "add", *files[3], "--name", "litho", "--metrics", '{"auroc": 0.95}',
                 "--bump", "patch"]) == 0
    capsys.readouterr()
    assert main(["registry", root, "promote", "litho", "1.0.0", "--actor", "ana", "--reason", "first"]) == 0
    assert "promoted litho 1.0.0 to production (revision 1)" in capsys.readouterr().out
    assert main(["registry", root, "promote", "litho", "1.0.1"]) == 0
    capsys.readouterr()

    assert main(["registry", root, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "stage", "class", "created", "metrics"]
    assert lines[1].split()[:4] == ["litho", "1.0.0", "ready", "PCADetector"]
    assert "auroc=0.91 fnr=0.01" in lines[1]
    assert lines[2].split()[:4] == ["litho", "1.0.1", "production", "PCADetector"]

    assert main(["registry", root, "rollback", "litho", "--actor", "bo", "--reason", "bad canary"]) == 0
    assert "rolled litho back from 1.0.1 to 1.0.0 (revision 3)" in capsys.readouterr().out
    assert main(["registry", root, "list", "--name", "litho", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["stage"]) for v in listed] == [("1.0.0", "production"), ("1.0.1", "candidate")]
    assert listed[0]["data_hash"] == "sha256:ab" and listed[0]["description"] == "first"

    assert main(["registry", root, "history", "litho"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["time", "action", "version", "from", "actor", "reason"]
    assert [r.split()[1:5] for r in rows[1:]] == [["promote", "1.0.0", "-", "ana"], ["promote", "1.0.1", "1.0.0", "-"],
                                                  ["rollback", "1.0.0", "1.0.1", "bo"]]
    assert rows[3].endswith("bad canary")
    assert ModelRegistry(root).production("litho").version == "1.0.0"  # the files agree with the output


def test_unbound_policy_registers_but_cannot_be_promoted(tmp_path, files, capsys):
    root = str(tmp_path / "reg")
    assert main(["registry", root, "add", files[2][0], files["unbound"], "--name", "m"]) == 0
    assert "cannot be promoted" in capsys.readouterr().out
    code, err = _exit_code(["registry", root, "promote", "m", "1.0.0"], capsys)
    assert code == 2 and "decision policy is not bound to its model" in err
    assert main(["registry", root, "list"]) == 0
    assert "candidate (unbound)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["promote", "nope", "1.0.0"], "has no model named 'nope'; its models: m"),
    (["promote", "m", "9.9.9"], "has no version '9.9.9'; its versions: 1.0.0"),
    (["promote", "m", "latest"], "semantic version"),
    (["rollback", "m"], "no earlier production version to roll back to"),
    (["history", "zz"], "no model named 'zz'"),
    (["add", "missing.safetensors", "p", "--name", "m"], "MODEL 'missing.safetensors' is not a file"),
    (["list", "--name", "bad name!"], "name must be"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, files, capsys, argv, message):
    root = str(tmp_path / "reg")
    assert main(["registry", root, "add", *files[2], "--name", "m"]) == 0
    capsys.readouterr()
    code, err = _exit_code(["registry", root, *argv], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_metrics_and_missing_registry(tmp_path, files, capsys):
    code, err = _exit_code(["registry", str(tmp_path), "add", *files[2], "--name", "m", "--metrics", "[1, 2]"], capsys)
    assert code == 2 and "--metrics must be a JSON object" in err
    code, err = _exit_code(["registry", str(tmp_path / "none"), "list"], capsys)
    assert code == 2 and "is not a folder" in err
    code, err = _exit_code(["registry", str(tmp_path), "add", *files[3], "--name", "m",
                            "--metrics", '{"auroc": NaN}'], capsys)
    assert code == 2 and "finite" in err
