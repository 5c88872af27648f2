import json
import logging
import subprocess
import sys

import pytest

from greyanom import cli

pytestmark = pytest.mark.filterwarnings("ignore:n_components=.*:UserWarning")

TINY = ["--n-train", "8", "--n-test", "10", "--image-size", "64", "--random-state", "1"]


def test_demo_writes_metrics_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(out), "--detectors", "pca", *TINY]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"metrics.txt", "metrics.json", "roc.png", "score_distributions.png", "heatmaps_pca.png"}
    stdout = capsys.readouterr().out
    assert "AUROC" in stdout and "pca" in stdout and str(out.resolve()) in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"]["n_test"] == 10
    assert 0.0 <= summary["detectors"]["pca"]["auroc"] <= 1.0


def test_unavailable_detectors_are_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(cli.DEMO_DETECTORS, "ghost", ("GhostDetector", {}))
    with caplog.at_level(logging.INFO, logger="greyanom.cli"):
        status = cli.main(["demo", "--output", str(tmp_path), "--detectors", "ghost,pca", "--no-plots", *TINY])
    assert status == 0
    assert "skipping ghost" in caplog.text
    assert "ghost" not in json.loads((tmp_path / "metrics.json").read_text())["detectors"]
    monkeypatch.setitem(cli.DEMO_DETECTORS, "pca", ("NoSuchDetector", {}))
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "ghost,pca", "--no-plots", *TINY]) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--output", str(tmp_path), "--detectors", "nope"])
    assert "unknown detector" in str(exc.value)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--n-train", "1"])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--output", "--n-train", "--n-test", "--random-state", "--detectors", "--quick", "pca"):
        assert option in text


def test_python_m_greyanom_help():
    out = subprocess.run([sys.executable, "-m", "greyanom", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
