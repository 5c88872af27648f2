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
    assert names == {"metrics.txt", "metrics.json", "decisions.txt", "roc.png", "score_distributions.png", "heatmaps_pca.png"}
    stdout = capsys.readouterr().out
    assert "AUROC" in stdout and "pca" in stdout and str(out.resolve()) in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"]["n_test"] == 10
    assert 0.0 <= summary["detectors"]["pca"]["auroc"] <= 1.0


def test_trace_part_scores_simulated_lots_and_names_the_parameters(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--detectors", "pca", "--traces", "yes", "--quick", *TINY]
    assert cli.main(args) == 0
    assert {"traces.txt", "trace_scores.png"} <= {p.name for p in out.iterdir()}
    text = (out / "traces.txt").read_text()
    assert text in capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert set(cli.DEMO_TRACE_FAULTS) <= set(rows)
    # full-size faults are separated and the largest explain term is the parameter they act on
    assert all(float(rows[f][2]) >= 0.9 for f in cli.DEMO_TRACE_FAULTS)
    assert rows["setpoint_slope"][4] == "c" and rows["noise_burst"][4] == "fit" and rows["outliers"][4] == "fit"


def test_traces_auto_runs_only_with_all_detectors(tmp_path):
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "pca", "--no-plots", *TINY]) == 0
    assert not (tmp_path / "traces.txt").exists()


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
