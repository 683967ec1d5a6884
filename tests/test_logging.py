"""Logs a person and a program can follow: piped training output is plain timestamped lines (no
carriage returns) with a header, progress lines, validation lines and the summary; --no-progress
hides only the bar; metrics.csv and TensorBoard scalars; resumed runs say so; warnings are plain."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from fcnseg.cli import main
from fcnseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.engine.rundir import read_metrics

TINY_ARGS = [
    "--data",
    "shapes",
    "--model",
    "fcn8s",
    "--width",
    "0.0625",
    "--geometry",
    "same",
    "--batch-size",
    "2",
    "--max-val-images",
    "4",
    "--num-samples",
    "1",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-3",
]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def test_piped_training_is_plain_timestamped_lines(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fcnseg",
            "train",
            *TINY_ARGS,
            "--iterations",
            "4",
            "--log-every",
            "2",
            "--eval-every",
            "2",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr
    assert "\r" not in err and "\x1b" not in err  # no progress bar, no terminal control
    lines = err.splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines[:3]
    text = "\n".join(STAMP.sub("", line) for line in lines)
    for header in (
        f"run directory: {run}",
        "data: shapes, 400 train images, 100 val images (4 evaluated), 6 classes: background, disk",
        "model: fcn8s (geometry same, width 0.0625):",
        "parameters",
        "device: cpu, precision fp32",
        "threads",
        "training: 4 iterations",
    ):
        assert header in text, header
    progress = re.findall(r"iteration (\d+)/4  loss [\d.]+  lr [\d.e-]+  [\d.]+ img/s  ETA \d+s", text)
    assert progress == ["2", "4"]
    assert re.findall(r"iteration (\d+)/4  val mean IU [\d.]+  pixel acc", text) == ["2", "4"]
    assert "fcn8s on shapes: 4 iterations in" in text and "best mean IU" in text and "background " in text
    assert text.rstrip().endswith(f"run directory: {run}")
    assert "resuming" not in text


def test_no_progress_still_logs_and_summarises_and_writes_csv(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--iterations", "3", "--log-every", "1", "--out", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "iteration 1/3  loss" in err and "iteration 3/3  val mean IU" in err
    assert "fcn8s on shapes: 3 iterations in" in err and "mean IU" in err
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    records = read_metrics(run / "metrics.jsonl")
    assert [(int(r["iteration"]), r["kind"]) for r in rows] == [(r["iteration"], r["kind"]) for r in records]
    assert [r["kind"] for r in rows] == ["train", "train", "train", "val"]
    assert float(rows[-1]["mean_iu"]) == pytest.approx(records[-1]["mean_iu"]) and rows[-1]["lr"] == ""

    # a resumed run says where it resumes, keeps the CSV in step with metrics.jsonl, and counts the whole run
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["elapsed_s"] > 0
    ckpt["train_state"]["elapsed_s"] = 1000.0  # as if the first session had trained for 1000 s
    save_checkpoint(run / "last.pt", ckpt["model"], ckpt["meta"], ckpt["train_state"])
    assert main(["train", "--resume", str(run), "--iterations", "5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming at iteration 3 of 5" in err
    assert "fcn8s on shapes: 5 iterations in" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 5 and 1000 < summary["wall_time_s"] < 1300
    assert "resuming at iteration 3 of 5 (16m40s trained before)" in err
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [r["iteration"] for r in read_metrics(run / "metrics.jsonl")]
    assert [int(r["iteration"]) for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_resume_after_a_crash_drops_csv_rows_past_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--iterations", "2", "--log-every", "1", "--out", str(run), "--no-progress"]) == 0
    with (run / "metrics.csv").open("a") as f:  # rows written after last.pt by a run that was then killed
        f.write("3,train,1.0,0.001,1.0,,,,\n")
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": 3, "kind": "train", "loss": 1.0, "lr": 0.001, "images_per_s": 1.0}) + "\n")
    assert main(["train", "--resume", str(run), "--iterations", "3", "--no-progress"]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [(int(r["iteration"]), r["kind"]) for r in rows] == [
        (1, "train"),
        (2, "train"),
        (2, "val"),
        (3, "train"),
        (3, "val"),
    ]
    assert float(rows[3]["loss"]) != 1.0
    capsys.readouterr()


def test_tensorboard_scalars(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY_ARGS,
                "--iterations",
                "2",
                "--log-every",
                "1",
                "--out",
                str(run),
                "--tensorboard",
                "--no-progress",
            ]
        )
        == 0
    )
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    data = events[0].read_bytes()
    assert b"train/loss" in data and b"val/mean_iu" in data
    capsys.readouterr()


def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["train", *TINY_ARGS, "--iterations", "1", "--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fcnseg train: error: --tensorboard needs the tensorboard extra: pip install")
    assert "Traceback" not in "\n".join(err)


def test_evaluate_shows_progress_when_piped(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--iterations", "1", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", "shapes", "--max-images", "5"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"evaluate: 5/5 batches", err) and "\r" not in err
    assert (
        main(
            ["evaluate", "--checkpoint", str(run / "last.pt"), "--data", "shapes", "--max-images", "2", "--no-progress"]
        )
        == 0
    )
    assert "evaluate:" not in capsys.readouterr().err


def test_warnings_are_plain_lines():
    code = (
        "import warnings, logging; from fcnseg.logs import configure; configure();"
        "warnings.warn('the thing is odd; do X'); logging.getLogger('fcnseg.x').warning('plain %s', 'too')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [STAMP.sub("", line) for line in proc.stderr.splitlines()]
    assert lines == ["warning: the thing is odd; do X", "warning: plain too"]
