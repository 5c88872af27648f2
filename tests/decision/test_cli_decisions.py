import pytest

from greyanom import cli


@pytest.mark.filterwarnings("ignore:n_components=.*:UserWarning")
def test_demo_prints_the_decision_table(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--detectors", "pca", "--no-plots", "--n-train", "40", "--n-test", "30",
            "--image-size", "64", "--random-state", "1", "--traces", "no"]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "pca (review_fpr=0.05" in stdout and "PASS  REVIEW  REJECT  total" in stdout
    text = (out / "decisions.txt").read_text()
    assert "good" in text and "n_calibration=40" in text
    # counts per class add up to the test set
    rows = [line.split() for line in text.splitlines()[2:]]
    assert sum(int(r[-1]) for r in rows) == 30
