"""Every number a user types is bounded where it is parsed (one line, before any work); a checkpoint
claiming an absurd class count is refused on reading; torch's allocation failures become one line
naming the options to lower; a checkpoint whose bytes changed is refused, an old one without a digest
still loads."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from _faults import TINY_TRAIN, assert_one_line_error, run_main
from fcnseg.engine.checkpoint import load_checkpoint, save_checkpoint

META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 6, "width": 1 / 16, "geometry": "same"},
    "class_names": [str(i) for i in range(6)],
    "palette": [[0, 0, 0]] * 6,
    "normalization": "imagenet",
}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--data", "shapes", "--seed", str(2**70)], ("seed", "< 9223372036854775808")),
        (["train", "--data", "shapes", "--seed", "2**70"], ("seed", "expects int")),
        (["train", "--data", "shapes", "--crop-size", "100000"], ("crop_size", "<= 8192")),
        (["train", "--data", "shapes", "--width", "1e9"], ("width", "<= 16")),
        (["train", "--data", "shapes", "--batch-size", "100000"], ("batch_size", "<= 4096")),
        (
            ["predict", "--checkpoint", "x.pt", "a.png", "--out", "o", "--tile", "1"],
            ("--tile", "0 (whole image)", "32"),
        ),
        (
            ["quantize", "--checkpoint", "x.pt", "--data", "shapes", "--out", "q.onnx", "--max-side", "-1"],
            ("--max-side", "between 32"),
        ),
        (
            ["quantize", "--checkpoint", "x.pt", "--data", "shapes", "--out", "q.onnx", "--max-side", "1"],
            ("--max-side",),
        ),
    ],
)
def test_numbers_are_bounded_where_parsed(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_main(capsys, *args), *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_checkpoint_claiming_ten_thousand_classes_is_refused(tmp_path, capsys):
    path = tmp_path / "huge.pt"
    save_checkpoint(path, {}, {**META, "model_kwargs": {**META["model_kwargs"], "num_classes": 10_000}})
    assert_one_line_error(
        run_main(capsys, "evaluate", "--checkpoint", path, "--data", "shapes"), "huge.pt", "10000 classes", "4096"
    )


def test_flipped_byte_is_found_and_old_checkpoints_still_load(tmp_path, capsys):
    from fcnseg.models import create_model

    state = create_model("fcn8s", **META["model_kwargs"]).state_dict()
    path = tmp_path / "model.pt"
    save_checkpoint(path, state, META)
    assert torch.equal(load_checkpoint(path)["model"]["score_fr.weight"], state["score_fr.weight"])
    data = bytearray(path.read_bytes())
    weight = state["score_fr.weight"].numpy().tobytes()
    at = data.find(weight[:64])
    assert at > 0
    data[at + 5] ^= 0x04  # one bit of one weight, as a bad disk or copy would change it
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    for args in (
        ["evaluate", "--checkpoint", bad, "--data", "shapes"],
        ["train", "--data", "shapes", *TINY_TRAIN, "--init-from", bad, "--out", tmp_path / "R"],
    ):
        assert_one_line_error(run_main(capsys, *args), "flipped.pt", "corrupt", "digest")
    assert not (tmp_path / "R").exists()
    old = load_checkpoint(path)
    old.pop("digest")
    torch.save(old, tmp_path / "old.pt")  # as fcnseg wrote checkpoints before the digest
    assert load_checkpoint(tmp_path / "old.pt")["meta"]["model_name"] == "fcn8s"


def test_allocation_failure_names_the_options_to_lower(tmp_path):
    """A real allocation failure: the step of a 4096-pixel crop of 8 images under a 3 GB address-space limit."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    run = tmp_path / "R"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fcnseg",
            "train",
            "--data",
            "shapes",
            *TINY_TRAIN,
            "--iterations",
            "2",
            "--crop-size",
            "4096",
            "--batch-size",
            "8",
            "--out",
            str(run),
        ],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert_one_line_error(proc, "out of memory", "at iteration 1", "--batch-size (now 8)", "--crop-size (now 4096)")
    assert not run.exists()  # failed before its first step: no folder left


def test_other_option_sets_use_the_same_field_system():
    """What serving's ServeConfig relies on: ``option`` fields, ``coerce(schema=...)``, argparse options."""
    import argparse
    from dataclasses import dataclass

    from fcnseg.config import add_config_arguments, coerce, option, overrides_from_args
    from fcnseg.errors import FcnsegError

    @dataclass
    class Options:
        port: int = option(8000, "TCP port", min=1, max=65535)
        host: str = option("127.0.0.1", "address to listen on")

    assert coerce("port", "8080", "command line", schema=Options) == 8080
    with pytest.raises(FcnsegError, match=r"option 'port' must be >= 1 and <= 65535, got 70000"):
        coerce("port", 70000, "config file x.yaml", schema=Options)
    with pytest.raises(FcnsegError, match="fcnseg serve --help"):
        coerce("prot", 1, "command line", schema=Options, command="serve")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, schema=Options)
    assert overrides_from_args(parser.parse_args(["--port", "9"]), schema=Options) == {"port": "9"}
