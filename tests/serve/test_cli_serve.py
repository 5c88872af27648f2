"""``greyanom serve`` argument checks (the running service is tested in test_server.py)."""

import pytest

from serve_support import models  # noqa: F401 (fixture)

from greyanom.cli import main


def test_serve_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--policy", "--db", "--host", "--port", "--workers", "--resize", "--max-body-mb",
                   "--max-batch", "--max-wait-ms", "--max-queue"):
        assert option in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--port", "0"], "--port must be in 1..65535"),
        (["--workers", "0"], "--workers and --threads must be at least 1"),
        (["--max-body-mb", "-1"], "--max-body-mb must be positive"),
        (["--max-batch", "0"], "--max-batch and --max-queue must be at least 1"),
        (["--max-queue", "0"], "--max-batch and --max-queue must be at least 1"),
        (["--max-wait-ms", "-2"], "--max-wait-ms must be a finite number >= 0"),
    ],
)
def test_serve_bad_arguments(models, capsys, extra, message):
    model, policy = models["padim"]
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(model), "--policy", str(policy), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tmp_path / "absent.safetensors"), "--policy", str(tmp_path / "p.json")])
    assert "is not a file" in capsys.readouterr().err


def test_serve_refuses_a_damaged_model(models, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(bad), "--policy", str(models["padim"][1]), "--port", "1"])
    assert "not a greyanom detector file" in capsys.readouterr().err


def test_serve_batching_defaults_are_the_library_defaults():
    """The CLI cannot import greyanom.serve for its defaults (that needs the extra): same values."""
    import argparse

    from greyanom.cli import _add_serve_parser
    from greyanom.serve._batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS

    parser = argparse.ArgumentParser()
    _add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "m", "--policy", "p"])
    assert (args.max_batch, args.max_wait_ms, args.max_queue) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS,
                                                                   DEFAULT_MAX_QUEUE)
