"""Every option is validated before work starts, in one place shared by the
command line and config files, and any OSError reaching the CLI becomes one line with fitting advice."""

from __future__ import annotations

import errno

import pytest
import torch

from _faults import assert_one_line_error, cli, fake_run, run_main
from fcnseg.cli import main
from fcnseg.config import resolve_config
from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.errors import FcnsegError


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--batch-size", "0", ">= 1"),
        ("--device", "gpu0", "cuda:N"),
        ("--crop-size", "-10", ">= 1"),
        ("--scale-range", "2,0.5,abc", "scale_range"),
        ("--scale-range", "2,0.5", "MIN <= MAX"),
        ("--iterations", "-5", ">= 1"),
        ("--loss-sample-prob", "0", "> 0 and <= 1"),
        ("--lr", "nan", "finite"),
        ("--momentum", "1.5", "< 1"),
        ("--width", "0", "> 0"),
        ("--data", "foo:bar", "must be one of"),
    ],
)
def test_train_option_ranges_on_the_command_line_and_in_config_files(tmp_path, capsys, option, value, fragment):
    name = option[2:].replace("-", "_")
    code = main(
        ["train", "--data", "shapes", option, value, "--out", str(tmp_path / "R")]
        if option != "--data"
        else ["train", option, value, "--out", str(tmp_path / "R")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and name in err and fragment in err, err
    assert not (tmp_path / "R").exists()  # nothing written: checked before any work
    config = tmp_path / "c.yaml"
    config.write_text(f"{name}: {'[' + value + ']' if name == 'scale_range' else value}\n")
    with pytest.raises(FcnsegError, match=name):  # the same check for a config file
        resolve_config(config_file=config)


def test_presets_pass_their_own_checks():
    from fcnseg.config import list_presets

    for preset in list_presets():
        resolve_config(preset)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from fcnseg.models import create_model

    kwargs = {"num_classes": 6, "width": 1 / 16, "geometry": "same"}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        create_model("fcn8s", **kwargs).state_dict(),
        {
            "model_name": "fcn8s",
            "model_kwargs": kwargs,
            "class_names": [str(i) for i in range(6)],
            "palette": [[0, 0, 0]] * 6,
            "normalization": "imagenet",
        },
    )
    return path


def test_predict_evaluate_and_data_options(tmp_path, checkpoint, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    existing = tmp_path / "afile"
    existing.write_text("keep")
    cases = [
        (
            ["predict", "--checkpoint", checkpoint, image, "--out", tmp_path / "o", "--max-pixels", "nan"],
            "--max-pixels",
        ),
        (["predict", "--checkpoint", checkpoint, image, "--out", tmp_path / "o", "--overlap", "1"], "--overlap"),
        (["predict", "--checkpoint", checkpoint, image, "--out", tmp_path / "o", "--scales", "nan"], "--scales"),
        (["predict", "--checkpoint", checkpoint, image, "--out", existing], "existing file"),
        (["evaluate", "--checkpoint", checkpoint, "--data", "shapes", "--max-images", "0"], "--max-images"),
        (["evaluate", "--checkpoint", checkpoint, "--data", "shapes", "--device", "gpu0"], "cuda:N"),
        (["evaluate", "--checkpoint", checkpoint, "--data", "shapes", "--json", tmp_path], "is a folder"),
        (["data", "check", "shapes", "--json", tmp_path], "is a folder"),
        (["data", "check", "shapes", "--workers", "0"], "--workers"),
        (["export", "--checkpoint", checkpoint, "--out", tmp_path], "is a folder"),
        (["export", "--checkpoint", checkpoint, "--out", existing / "x.onnx"], "is a file, not a folder"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_main(capsys, *args), fragment)
    assert existing.read_text() == "keep"


def test_checkpoint_with_marker_but_no_metadata(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "fcnseg.checkpoint", "version": 1, "model": {}}, bad)
    for args in (
        ["evaluate", "--checkpoint", bad, "--data", "shapes"],
        ["predict", "--checkpoint", bad, bad, "--out", tmp_path / "o"],
        ["export", "--checkpoint", bad, "--out", tmp_path / "x.onnx"],
    ):
        assert_one_line_error(run_main(capsys, *args), "bad.pt", "no metadata")


def test_resume_with_another_optimiser_is_refused(tmp_path):
    run = fake_run(tmp_path / "R")  # trained with adamw
    assert_one_line_error(cli("train", "--resume", run, "--optimizer", "sgd"), "optimiser")


@pytest.mark.parametrize(
    "code, advice",
    [
        (errno.ENOENT, "no such file or folder"),
        (errno.ENOSPC, "free disk space"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission"),
        (errno.ENOTDIR, "not a folder"),
    ],
)
def test_cli_turns_any_oserror_into_one_line_with_fitting_advice(capsys, monkeypatch, code, advice):
    from fcnseg.cli import build_parser

    def fail(args):
        raise OSError(code, "boom", "/some/where")

    parser = build_parser()
    args = parser.parse_args(["models"])
    args.func = fail
    monkeypatch.setattr("fcnseg.cli.build_parser", lambda: _Fixed(parser, args))
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/some/where" in err and advice in err, err
    if code != errno.ENOSPC:
        assert "free disk space" not in err


class _Fixed:
    def __init__(self, parser, args):
        self.parser, self.args = parser, args

    def parse_args(self, argv):
        return self.args
