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


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_closing_line_times_the_whole_stage_and_its_phases(monkeypatch, caplog):
    """The line of a stage times the whole block, not its last inner loop; inner stages nest at DEBUG."""
    clock = FakeClock()
    monkeypatch.setattr("greyanom._progress._clock", clock)
    with caplog.at_level(logging.DEBUG, logger="greyanom"):
        with progress_stage("PaDiMDetector fit", unit=None, verbose=False) as fit:
            fit.phase("model")
            clock.now += 20.0
            with progress_stage("PaDiMDetector features", total=200, unit="img", verbose=False) as inner:
                clock.now += 1.1
                inner.update(200)
            fit.phase("held-out calibration")
            clock.now += 35.0
    lines = {r.levelname: r.getMessage() for r in caplog.records if r.name == "greyanom"}
    assert lines["DEBUG"] == "PaDiMDetector fit > PaDiMDetector features: 200 img in 1.1 s"
    assert lines["INFO"] == "PaDiMDetector fit in 56.1 s (model 21.1 s, held-out calibration 35.0 s)"


def test_heartbeat_gives_done_total_rate_and_eta(monkeypatch):
    from greyanom._progress import heartbeat_line

    clock = FakeClock()
    monkeypatch.setattr("greyanom._progress._clock", clock)
    with progress_stage("ConvVAEDetector fit", unit=None, verbose=False) as fit:
        fit.phase("held-out calibration")
        clock.now += 50.0
        with progress_stage("cross-fitting", total=5, unit="fold", verbose=False) as folds:
            clock.now += 40.0
            folds.update(2)
            line = heartbeat_line([fit, folds], clock())
    assert line == ("ConvVAEDetector fit: running for 90.0 s, held-out calibration; "
                    "cross-fitting: 2/5 fold, 0.05 fold/s, ETA 60.0 s")


def test_heartbeat_loop_logs_every_interval_until_stopped(monkeypatch, caplog):
    """The heartbeat thread's loop, driven by a fake wait and clock (no sleeping)."""
    from greyanom._progress import Stage, _beat

    clock = FakeClock()

    class Bar:
        def update(self, n):
            pass

    stage = Stage("PCADetector features", 60, "img", Bar(), [], clock)
    waits = []

    def fake_wait(interval):
        waits.append(interval)
        clock.now += interval
        stage.update(10)
        return len(waits) > 3  # stopped at the 4th wait

    with caplog.at_level(logging.INFO, logger="greyanom"):
        _beat(fake_wait, [stage], logging.getLogger("greyanom"), 30.0, clock)
    assert waits == [30.0] * 4
    beats = [r.getMessage() for r in caplog.records]
    assert beats == [
        "PCADetector features: running for 30.0 s: 10/60 img, 0.333 img/s, ETA 2.5 min",
        "PCADetector features: running for 60.0 s: 20/60 img, 0.333 img/s, ETA 2.0 min",
        "PCADetector features: running for 90.0 s: 30/60 img, 0.333 img/s, ETA 90.0 s",
    ]


def test_heartbeat_thread_runs_only_where_no_one_watches(monkeypatch):
    import threading

    def heartbeats():
        return [t for t in threading.enumerate() if t.name.startswith("greyanom heartbeat")]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, beats in ((io.StringIO(), True), (Tty(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        with progress_stage("outer", verbose=False):
            with progress_stage("inner", verbose=False):
                assert len(heartbeats()) == int(beats)
        assert heartbeats() == []  # stopped with its stage


def test_fit_logs_one_line_for_the_whole_fit(caplog):
    import numpy as np

    from greyanom import PCADetector

    X = np.random.default_rng(0).random((12, 8, 8))
    with caplog.at_level(logging.INFO, logger="greyanom"):
        PCADetector(n_components=2, batch_size=4, smoothing_sigma=0).fit(X)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("PCADetector fit in "), info
    assert "(model " in info[0] and ", held-out calibration " in info[0]
