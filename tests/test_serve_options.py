"""`fcnseg serve`'s options: one ServeConfig field each (defaults, types and bounds written once),
the same checks for the command line, the config object and the worker processes' environment."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra")  # make test installs it

from fcnseg.cli import build_parser  # noqa: E402
from fcnseg.errors import FcnsegError  # noqa: E402
from fcnseg.serving.config import ServeConfig, config_from_args  # noqa: E402


def parse(*argv):
    args = build_parser().parse_args(["serve", "--checkpoint", "m.pt", *argv])
    return config_from_args(args, weights=args.weights)  # --checkpoint is an alias of --weights


def test_defaults_come_from_the_fields_alone():
    assert parse() == ServeConfig(weights="m.pt")
    server_fields = [f.name for f in dataclasses.fields(ServeConfig) if f.metadata]
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    options = {a.dest for a in serve._actions}
    assert set(server_fields) <= options  # every field is an option, none written by hand


def test_values_are_typed_by_the_field():
    config = parse(
        "--max-pixels",
        "1.5e7",
        "--port",
        "9001",
        "--upload-timeout",
        "5",
        "--no-access-log",
        "--allow-host",
        "a.example",
        "--allow-host",
        "b.example",
        "--shutdown-timeout",
        "2.5",
    )
    assert config.max_pixels == 15_000_000 and type(config.max_pixels) is int  # an int, as the field says
    assert config.port == 9001 and config.upload_timeout == 5.0 and config.shutdown_timeout == 2.5
    assert config.access_log is False and config.allow_host == ["a.example", "b.example"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--max-pixels", "2.5"], "--max-pixels"),
        (["--max-pixels", "0"], ">= 1"),
        (["--port", "70000"], "<= 65535"),
        (["--workers", "0"], "--workers"),
        (["--queue", "-2"], ">= -1"),
        (["--header-timeout", "0"], "> 0"),
        (["--upload-timeout", "nan"], "finite"),
    ],
)
def test_command_line_bounds_are_one_line_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize(
    "values, words",
    [
        ({"max_pixels": 0}, "--max-pixels must be >= 1"),
        ({"max_pixels": "many"}, "--max-pixels expects int"),
        ({"port": 0}, "--port must be >= 1"),
        ({"allow_host": ["a b"]}, "--allow-host must be host names"),
        ({"shutdown_timeout": -1}, "--shutdown-timeout"),
    ],
)
def test_the_config_object_checks_the_same_bounds(values, words):
    with pytest.raises(FcnsegError, match=words):
        ServeConfig(checkpoint="m.pt", **values)


def test_host_names_answered_by_default():
    config = ServeConfig(checkpoint="m.pt", host="0.0.0.0")
    for name in ("127.0.0.1", "localhost", "[::1]", "10.1.2.3", "LOCALHOST."):
        assert config.allowed_host(name), name
    for name in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert not config.allowed_host(name), name
    assert ServeConfig(checkpoint="m.pt", host="seg.lan").allowed_host("seg.lan")
    assert ServeConfig(checkpoint="m.pt", allow_host=["*"]).allowed_host("evil.example")


def test_limits_order():
    config = ServeConfig(checkpoint="m.pt", concurrency=2, queue=3)
    assert config.threads + config.waiting < config.max_requests < config.max_connections
