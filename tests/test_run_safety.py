"""A finished run is never thrown away.

Real faults: a val mask with a label out of range, a resume that tries to change the architecture or
the optimiser, --skip-bad with nothing good to train on, a kill -9 in the middle of a checkpoint
write, masks changed under a cached path, and a torchrun resume on two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from _faults import TINY_TRAIN, TORCHRUN_FCNSEG, assert_one_line_error, cli, fake_run, folder_dataset, set_mask
from fcnseg.engine.checkpoint import load_checkpoint


def test_bad_val_label_is_found_before_training(tmp_path):
    data = folder_dataset(tmp_path / "d")
    set_mask(data / "val" / "masks" / "val1.png", 7)  # 3 classes: label 7 is no class
    proc = cli("train", "--data", f"folder:{data}", "--iterations", "6", "--out", tmp_path / "R", *TINY_TRAIN)
    assert_one_line_error(proc, "val1.png", "labels 7 are not classes (0..2) or 255", "fcnseg data check")
    assert not (tmp_path / "R" / "last.pt").exists()  # no compute was spent
    check = cli("data", "check", f"folder:{data}")
    assert "val1.png: labels 7 are not classes (0..2) or 255" in check.stdout  # the same message


def test_failing_final_validation_keeps_the_trained_weights(tmp_path, monkeypatch):
    """A bad val mask that the cheap up-front check cannot see (a large split: headers only)."""
    import fcnseg.data.check as check
    from fcnseg.config import TrainConfig
    from fcnseg.engine import train
    from fcnseg.errors import FcnsegError

    monkeypatch.setattr(check, "FULL_CHECK_SAMPLES", 0)
    data = folder_dataset(tmp_path / "d")
    set_mask(data / "val" / "masks" / "val1.png", 7)
    run = tmp_path / "R"
    cfg = TrainConfig(
        data=f"folder:{data}",
        model="fcn8s",
        width=1 / 16,
        geometry="same",
        iterations=4,
        num_samples=1,
        optimizer="adamw",
        progress=False,
        out=str(run),
    )
    with pytest.raises(FcnsegError) as err:
        train(cfg)
    message = str(err.value)
    assert "validation at iteration 4 failed" in message and "val1.png" in message and "\n" not in message
    assert f"the trained weights are saved in {run / 'last.pt'}" in message
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 4


@pytest.mark.parametrize(
    "option, value, why",
    [
        ("--model", "fcn32s", "architecture"),
        ("--width", "0.125", "architecture"),
        ("--optimizer", "sgd", "optimiser"),
        ("--data", "folder:/nowhere", "training data"),
    ],
)
def test_resume_refuses_changes_and_never_rewrites_the_config(tmp_path, option, value, why):
    run = fake_run(tmp_path / "R")
    before = (run / "config.yaml").read_bytes()
    proc = cli("train", "--resume", run, option, value)
    assert_one_line_error(proc, "cannot resume", option, why)
    assert (run / "config.yaml").read_bytes() == before


def test_bad_override_value_on_resume_is_refused_before_writing(tmp_path):
    run = fake_run(tmp_path / "R")
    before = (run / "config.yaml").read_bytes()
    assert_one_line_error(cli("train", "--resume", run, "--data", "foo:bar"), "data", "must be one of")
    assert_one_line_error(cli("train", "--resume", run, "--iterations", "-5"), "iterations", ">= 1")
    assert (run / "config.yaml").read_bytes() == before


def test_skip_bad_with_every_sample_bad_stops(tmp_path):
    data = folder_dataset(tmp_path / "d")
    for mask in (data / "train" / "masks").iterdir():
        mask.write_bytes(b"not a png")
    proc = cli(
        "train",
        "--data",
        f"folder:{data}",
        "--iterations",
        "4",
        "--skip-bad",
        "--out",
        tmp_path / "R",
        *TINY_TRAIN,
        timeout=120,
    )  # the old behaviour was an endless loop: a timeout fails the test
    assert_one_line_error(proc, "every one of the 4", "bad")


def test_batch_stream_stops_when_no_good_sample_can_be_drawn():
    from fcnseg.data.base import SegmentationDataset
    from fcnseg.engine.batches import training_batches
    from fcnseg.errors import FcnsegError

    class AllBad(SegmentationDataset):
        class_names = ("a", "b")

        def __len__(self):
            return 3

        def sample_name(self, i):
            return f"s{i}"

        def load_arrays(self, i):
            raise FcnsegError(f"s{i}: unreadable")

    stream = training_batches(AllBad(), transform=None, batch_size=1, seed=0, start_iteration=0, skip_bad=True)
    with pytest.raises(FcnsegError, match="no good training sample in a whole epoch"):
        next(stream)
    assert set(stream.skipped) == {"s0", "s1", "s2"}


def test_skip_bad_counts_and_logs_each_file_once(tmp_path):
    data = folder_dataset(tmp_path / "d", n_train=4)
    (data / "train" / "images" / "train2.png").write_bytes(b"\x89PNG broken")
    proc = cli(
        "train", "--data", f"folder:{data}", "--iterations", "6", "--skip-bad", "--out", tmp_path / "R", *TINY_TRAIN
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "skipped bad sample" in line]  # one per file
    assert len(lines) == 1 and "train2.png" in lines[0], proc.stderr  # once, as a plain line
    assert "Warning" not in proc.stderr and "warnings.warn" not in proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    assert summary["skipped_samples"] == 1
    assert "skipped 1 bad training sample(s) in all" in proc.stderr


def test_kill_during_checkpoint_write_leaves_temp_that_the_next_start_removes(tmp_path):
    run = tmp_path / "R"
    run.mkdir()
    script = textwrap.dedent(f"""
        import os, signal
        from fcnseg.files import atomic_write
        with atomic_write({str(run / "last.pt")!r}) as f:
            f.write(b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    temps = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert temps and not (run / "last.pt").exists()  # the kill left a temp file and no half checkpoint
    from fcnseg.engine.rundir import prepare_run_dir

    prepare_run_dir(run, resuming=False)  # what every `fcnseg train` start does
    assert [p.name for p in run.iterdir()] == [".lock"]  # the lock file stays (empty of a lock once its process ends)


def test_class_weight_cache_follows_the_mask_contents(tmp_path):
    from fcnseg.data import class_frequencies, load_dataset

    data = folder_dataset(tmp_path / "d")
    cache = tmp_path / "cache"
    first = class_frequencies(load_dataset(f"folder:{data}", "train"), cache_dir=cache)
    for mask in (data / "train" / "masks").iterdir():
        set_mask(mask, 2)  # same paths, same count, new contents
        os.utime(mask, ns=(10**18, 10**18))  # a distinct modification time even on a coarse clock
    second = class_frequencies(load_dataset(f"folder:{data}", "train"), cache_dir=cache)
    assert not torch.equal(first, second) and second[2] == 1.0


@pytest.mark.slow
def test_two_process_resume_equals_an_uninterrupted_two_process_run(tmp_path):
    """Per-rank random state and stream position: with loss sampling (a random draw per process), a
    torchrun run stopped at iteration 2 and resumed to 4 ends with the same weights as one run of 4."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*args):
        cmd = [
            *TORCHRUN_FCNSEG,
            "train",
            *map(str, args),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]

    common = [
        "--data",
        "shapes",
        "--model",
        "fcn8s",
        "--width",
        "0.0625",
        "--geometry",
        "same",
        "--batch-size",
        "1",
        "--max-val-images",
        "2",
        "--num-samples",
        "0",
        "--loss-sample-prob",
        "0.5",
        "--optimizer",
        "adamw",
        "--no-progress",
    ]
    torchrun(*common, "--iterations", "4", "--out", tmp_path / "whole")
    torchrun(*common, "--iterations", "2", "--out", tmp_path / "parts")
    torchrun("--resume", tmp_path / "parts", "--iterations", "4")
    whole, parts = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "parts" / "last.pt")
    assert len(parts["train_state"]["rng_ranks"]) == 2 and len(parts["train_state"]["stream"]) == 2
    assert not torch.equal(parts["train_state"]["rng_ranks"][0]["torch"], parts["train_state"]["rng_ranks"][1]["torch"])
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key
