import json
import logging
import subprocess
import sys

import numpy as np
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
    # full-size faults are separated by both wafer-level detectors (shape, then multiway PCA) and
    # the shape detector's largest explain term is the parameter they act on
    assert all(float(rows[f][2]) >= 0.9 and float(rows[f][4]) >= 0.9 for f in cli.DEMO_TRACE_FAULTS)
    assert rows["setpoint_slope"][6] == "c" and rows["noise_burst"][6] == "fit" and rows["outliers"][6] == "fit"
    for name, reason in cli.DEMO_TRACE_REASONS.items():
        assert f"{name}: {reason}" in text


def test_traces_auto_runs_only_with_all_detectors(tmp_path):
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "pca", "--no-plots", *TINY]) == 0
    assert not (tmp_path / "traces.txt").exists()


def test_default_is_the_recommended_detector_beside_the_ones_it_beats():
    assert cli._resolve_detectors("default") == ["registered", "pca", "padim"]
    assert cli._resolve_detectors("pca", full=True) == list(cli.DEMO_DETECTORS) == cli._resolve_detectors("all")
    assert set(cli.DEMO_REASONS) == set(cli.DEMO_DETECTORS)


def test_results_carry_one_reason_line_per_detector(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(out), "--detectors", "registered,pca", "--no-plots", *TINY]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["detectors"]["registered"]["class"] == "RegisteredPixelDetector"
    assert summary["unaligned_parts"] == cli.DEMO_UNALIGNED_NOTE
    text = (out / "metrics.txt").read_text()
    stdout = capsys.readouterr().out
    for name in ("registered", "pca"):
        assert summary["detectors"][name]["reason"] == cli.DEMO_REASONS[name]
        assert f"{name}: {cli.DEMO_REASONS[name]}" in text and f"{name}: {cli.DEMO_REASONS[name]}" in stdout
    assert cli.DEMO_UNALIGNED_NOTE in text


def test_detector_whose_extra_is_missing_at_fit_is_skipped(tmp_path, monkeypatch, caplog):
    import greyanom

    class NeedsExtra(greyanom.PCADetector):
        def fit(self, X):
            raise ImportError("NeedsExtra needs the 'nothing' extra")

    monkeypatch.setattr(greyanom, "NeedsExtraDetector", NeedsExtra, raising=False)
    monkeypatch.setitem(cli.DEMO_DETECTORS, "padim", ("NeedsExtraDetector", {}))
    with caplog.at_level(logging.INFO, logger="greyanom.cli"):
        assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "padim,pca", "--no-plots", *TINY]) == 0
    assert "skipping padim: NeedsExtra needs the 'nothing' extra" in caplog.text
    assert set(json.loads((tmp_path / "metrics.json").read_text())["detectors"]) == {"pca"}
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "padim", "--no-plots", *TINY]) == 1


def test_unavailable_detectors_are_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(cli.DEMO_DETECTORS, "ghost", ("GhostDetector", {}))
    with caplog.at_level(logging.INFO, logger="greyanom.cli"):
        status = cli.main(["demo", "--output", str(tmp_path), "--detectors", "ghost,pca", "--no-plots", *TINY])
    assert status == 0
    assert "skipping ghost" in caplog.text
    assert "ghost" not in json.loads((tmp_path / "metrics.json").read_text())["detectors"]
    monkeypatch.setitem(cli.DEMO_DETECTORS, "pca", ("NoSuchDetector", {}))
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "ghost,pca", "--no-plots", *TINY]) == 1


def _error_line(capsys, argv):
    """The one-line argparse error of ``argv`` (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--detectors", "nope"], "unknown detector(s) nope"),
        (["--detectors", ","], "unknown detector"),
        (["--n-train", "1"], "--n-train must be in [2, 100000]"),
        (["--n-test", "10000000"], "--n-test must be in [2, 100000]"),
        (["--random-state", "-1"], "--random-state must be in [0, 2**32 - 1]"),
        (["--random-state", str(2**32)], "--random-state"),
        (["--image-size", "8"], "--image-size must be in [32, 1024]"),
        (["--image-size", "100", "--full"], "multiple of 16 for the VAE"),
        (["--target-fpr", "nan"], "--target-fpr must be in [0, 1)"),
        (["--target-fpr", "1"], "--target-fpr"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, extra, expected):
    line = _error_line(capsys, ["demo", "--output", str(tmp_path / "out"), *extra])
    assert line.startswith("greyanom demo: error:") and expected in line


def test_image_size_not_divisible_by_16_is_fine_without_the_vae(tmp_path):
    assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "pca", "--no-plots", *TINY[:4],
                     "--image-size", "40"]) == 0


def test_output_that_is_a_file_or_unwritable(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file, not a folder" in _error_line(capsys, ["demo", "-o", str(a_file)])
    # below a file: mkdir fails with NotADirectoryError, even for root
    assert "cannot be written to" in _error_line(capsys, ["demo", "-o", str(a_file / "sub")])
    assert not (a_file / "sub").exists()


def test_output_in_a_read_only_folder(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "cannot be written to" in _error_line(capsys, ["demo", "-o", str(ro / "out")])
    finally:
        ro.chmod(0o700)


def test_version(capsys):
    from greyanom import __version__

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"greyanom {__version__}"


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert text.count("default:") == text.count("(default:")
    assert "(default: 200; 60 with --quick)" in text and "(default: 256)" in text
    assert "default 200, --quick 60) (default" not in text


def test_demo_writes_each_result_as_it_finishes(tmp_path, monkeypatch, caplog):
    """After the first detector, its metrics and heatmaps are on disk before the second starts."""
    pytest.importorskip("matplotlib")
    import greyanom

    seen = []

    class Probe(greyanom.PCADetector):
        def fit(self, X):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            return super().fit(X)

    monkeypatch.setattr(greyanom, "ProbeDetector", Probe, raising=False)
    monkeypatch.setitem(cli.DEMO_DETECTORS, "vae", ("ProbeDetector", {}))
    with caplog.at_level(logging.INFO, logger="greyanom.cli"):
        assert cli.main(["demo", "--output", str(tmp_path), "--detectors", "pca,vae", *TINY]) == 0
    assert {"metrics.txt", "metrics.json", "heatmaps_pca.png", "roc.png"} <= set(seen[0])
    assert "heatmaps_vae.png" not in seen[0]
    assert "pca" in (tmp_path / "metrics.txt").read_text() and "vae" in (tmp_path / "metrics.txt").read_text()
    # one log line per stage, with its time
    assert "[1/2] pca fitted in" in caplog.text and "[2/2] vae done (explain" in caplog.text
    assert "generated 8 training and 10 test wafer images" in caplog.text


def test_demo_explain_in_chunks_equals_whole(tmp_path):
    from greyanom import PCADetector
    from greyanom.datasets import make_wafer_images

    data = make_wafer_images(n_train=8, n_test=11, image_size=32, random_state=0)
    det = PCADetector(random_state=0).fit(data.X_train)
    scores, heat = cli._explain_in_chunks(det, data.X_test, "pca", chunk=4)
    whole = det.explain(data.X_test)
    np.testing.assert_allclose(scores, whole.score, rtol=1e-6)
    np.testing.assert_allclose(heat, whole.heatmap, rtol=1e-5, atol=1e-7)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--output", "--n-train", "--n-test", "--random-state", "--detectors", "--full", "--quick", "pca",
                   "registered"):
        assert option in text


def test_python_m_greyanom_help():
    out = subprocess.run([sys.executable, "-m", "greyanom", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_metrics_json_is_strict_json():
    assert cli._json_safe({"t": float("inf"), "n": np.int64(3), "l": [np.float32(0.5), float("nan")]}) == {
        "t": "inf", "n": 3, "l": [0.5, "nan"]}
