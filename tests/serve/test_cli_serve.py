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


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def test_serve_refusals_are_one_line(models, tmp_path, capsys):
    padim_model, padim_policy = models["padim"]
    vae_policy = models["vae"][1]
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(padim_model), "--policy", str(padim_policy),
              "--db", "sqlite:////nonexistent/dir/x.db"])
    assert exc.value.code == 2
    line = _one_line_error(capsys)
    assert "cannot open the records database" in line and "'/nonexistent/dir' does not exist" in line
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(padim_model), "--policy", str(vae_policy), "--db", "sqlite://"])
    assert "calibrated on a ConvVAEDetector" in _one_line_error(capsys)
    with pytest.raises(SystemExit):  # refused before anything binds
        main(["serve", "--model", str(padim_model), "--policy", str(padim_policy), "--host", "0.0.0.0"])
    assert "binds loopback only" in _one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(padim_model), "--policy", str(padim_policy),
              "--token-file", str(tmp_path / "absent.txt")])
    assert "--token-file" in _one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(padim_model), "--policy", str(padim_policy), "--audit-sample", "2"])
    assert "--audit-sample" in _one_line_error(capsys)


def test_serve_refuses_an_unbound_policy_unless_allowed(models, tmp_path, capsys, monkeypatch):
    import greyanom
    from greyanom.decision import DecisionPolicy

    from serve_support import normal_images

    padim_model = models["padim"][0]
    scores = greyanom.load(padim_model).score(normal_images(30, 3))
    unbound = DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(scores).save(tmp_path / "unbound.json")
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(padim_model), "--policy", str(unbound), "--db", "sqlite://"])
    line = _one_line_error(capsys)
    assert "records no model" in line and "--allow-unbound-policy" in line
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.update(app=app, **options))
    assert main(["serve", "--model", str(padim_model), "--policy", str(unbound), "--db", "sqlite://",
                 "--allow-unbound-policy", "--port", "8999"]) == 0
    assert started["app"].state.service.describe()["policy_bound"] is False
    assert started["host"] == "127.0.0.1" and started["port"] == 8999


def test_serve_help_has_no_none_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    for option in ("--token-file", "--allow-unbound-policy", "--keep-images", "--audit-sample"):
        assert option in out


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


def _registry_args(tmp_path):
    from registry_support import NAME, _template

    import shutil

    root = tmp_path / "registry"
    shutil.copytree(_template(), root)
    return root, NAME


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "nope"], "no model named 'nope'"),
        (["--shadow", "9.9.9"], "no version '9.9.9'"),
        (["--canary", "1.1.0", "--canary-fraction", "1.5"], "--canary-fraction must be a fraction in (0, 1)"),
        (["--canary", "1.1.0", "--canary-fraction", "0"], "--canary-fraction must be a fraction in (0, 1)"),
        (["--shadow", "1.1.0", "--canary", "1.1.0"], "--shadow or --canary, not both"),
        (["--min-reviewed-defects", "0"], "--min-reviewed-defects must be at least 1"),
    ],
)
def test_serve_registry_bad_arguments(tmp_path, capsys, extra, message):
    root, name = _registry_args(tmp_path)
    args = ["serve", "--registry", str(root), "--name", name, "--port", "1", *extra]
    if extra[0] == "--name":
        args = ["serve", "--registry", str(root), "--port", "1", *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in _one_line_error(capsys)


def test_serve_registry_excludes_model(tmp_path, models, capsys):
    root, name = _registry_args(tmp_path)
    model, policy = models["padim"]
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--registry", str(root), "--name", name, "--model", str(model), "--policy", str(policy)])
    assert exc.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(model), "--policy", str(policy), "--shadow", "1.1.0"])
    assert exc.value.code == 2 and "--shadow needs --registry" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--registry", str(root)])
    assert exc.value.code == 2 and "--registry needs --name" in capsys.readouterr().err
