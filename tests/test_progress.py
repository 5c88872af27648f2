import io
import logging

from greyanom._progress import progress_stage


def test_stage_logs_count_and_time_without_a_bar(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="greyanom"):
        with progress_stage("features", total=5, unit="img", verbose=False) as bar:
            for _ in range(3):
                bar.update(1)
    assert bar.n == 3
    (record,) = [r for r in caplog.records if r.name == "greyanom"]
    assert record.getMessage().startswith("features: 3 img of 5 in ") and record.getMessage().endswith(" s")
    assert capsys.readouterr().err == ""  # no bar


def test_stage_shows_a_bar_when_verbose(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress_stage("train", total=2, unit="epoch", verbose=True) as bar:
        bar.update(2)
    assert "train" in err.getvalue() and "/2" in err.getvalue()


def test_auto_shows_a_bar_only_on_a_terminal(monkeypatch, caplog):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((io.StringIO(), False), (Tty(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        with progress_stage("score", total=1, verbose=None) as bar:
            bar.update(1)
        assert ("score" in stream.getvalue()) is shown


def test_stage_logs_even_when_the_work_fails(caplog):
    with caplog.at_level(logging.INFO, logger="greyanom"):
        try:
            with progress_stage("explain", total=4, verbose=False) as bar:
                bar.update(1)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert "explain: 1 it of 4 in" in caplog.text


def test_image_batches_report_progress(caplog):
    """Work of several batches (feature extraction, long scoring) ends with one timed log line."""
    import logging

    import numpy as np

    from greyanom import PCADetector

    X = np.random.default_rng(0).random((12, 8, 8))
    det = PCADetector(n_components=2, batch_size=4, smoothing_sigma=0).fit(X)
    with caplog.at_level(logging.INFO, logger="greyanom"):
        det.score(X)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("PCADetector")]
    assert len(lines) == 1 and "12" in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="greyanom"):
        det.score(X[:3])  # one batch: no stage, no line
    assert not [r for r in caplog.records if r.getMessage().startswith("PCADetector")]
