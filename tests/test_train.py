"""End-to-end training with tiny models on `shapes`: run dir, determinism, exact resume after SIGKILL,
bad input, and the train/evaluate commands."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fcnseg.engine.trainer as trainer
from fcnseg.cli import main
from fcnseg.config import TrainConfig
from fcnseg.engine import evaluate, train
from fcnseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.engine.rundir import read_metrics
from fcnseg.errors import FcnsegError

TINY = dict(
    data="shapes",
    model="fcn8s",
    width=1 / 16,
    geometry="same",
    max_val_images=4,
    num_samples=1,
    optimizer="adamw",
    lr=1e-3,
    progress=False,
)
TINY_ARGS = [
    "--data",
    "shapes",
    "--model",
    "fcn8s",
    "--width",
    "0.0625",
    "--geometry",
    "same",
    "--max-val-images",
    "4",
    "--num-samples",
    "1",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-3",
    "--no-progress",
]


def tiny(tmp_path: Path, name: str = "run", **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), "iterations": 6, **changes})


def val_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"]


def test_run_directory_contents(tmp_path):
    summary = train(tiny(tmp_path, iterations=6, eval_every=3, log_every=2, batch_size=2, hflip=True))
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "summary.json",
        "plots/loss.png",
        "plots/mean_iu.png",
        "plots/confusion.png",
        "samples/sample_00.png",
    ):
        assert (run / name).is_file(), name
    assert [r["iteration"] for r in val_records(run)] == [3, 6]
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"] == [2, 4, 6]
    ckpt = load_checkpoint(run / "last.pt")
    ts = ckpt["train_state"]
    assert ts["iteration"] == 6 and set(ts["rng"]) >= {"torch", "numpy", "python"}
    assert {"optimizer", "scheduler", "best_mean_iu", "config"} <= set(ts)
    assert ckpt["meta"]["model_name"] == "fcn8s" and ckpt["meta"]["model_kwargs"]["num_classes"] == 6
    assert ckpt["meta"]["class_names"][0] == "background" and ckpt["meta"]["normalization"] == "imagenet"
    best = load_checkpoint(run / "best.pt")["train_state"]
    assert summary["best_mean_iu"] == best["best_mean_iu"] == max(r["mean_iu"] for r in val_records(run))
    # evaluating the saved checkpoint reproduces the final validation numbers
    from fcnseg.data import load_dataset

    again = evaluate(run / "last.pt", load_dataset("shapes", "val"), max_images=4)
    assert again["mean_iu"] == pytest.approx(summary["final"]["mean_iu"])
    # an existing run is never overwritten by accident
    with pytest.raises(FcnsegError, match="already holds a run"):
        train(tiny(tmp_path))


def test_seed_makes_runs_repeatable(tmp_path):
    options = dict(
        iterations=5,
        eval_every=5,
        log_every=1,
        hflip=True,
        loss_sample_prob=0.5,
        seed=7,
        precision="bf16",
        channels_last=True,
        class_weights="median",
    )
    a = train(tiny(tmp_path, "a", **options))
    b = train(tiny(tmp_path, "b", **options))
    train(tiny(tmp_path, "c", **{**options, "seed": 8}))
    losses = lambda run: [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    assert a["final"] == b["final"] and losses("a") == losses("b")
    assert losses("a") != losses("c")


def _train_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fcnseg", "train", *TINY_ARGS, "--out", str(run), *extra]


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_metrics(tmp_path):
    options = [
        "--iterations",
        "60",
        "--batch-size",
        "2",
        "--eval-every",
        "20",
        "--checkpoint-every",
        "4",
        "--log-every",
        "1",
        "--hflip",
        "--loss-sample-prob",
        "0.7",
        "--seed",
        "3",
        "--workers",
        "0",
    ]
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, *options), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, *options), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a bound, not a timing: a busy shared machine takes minutes to get there
    while time.time() < deadline:
        done = [r["iteration"] for r in read_metrics(killed / "metrics.jsonl")]
        if done and done[-1] >= 26 or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "last.pt")["train_state"]["iteration"]
    assert 20 <= stopped_at < 60

    resumed = subprocess.run(
        [sys.executable, "-m", "fcnseg", "train", "--resume", str(killed), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((killed / "summary.json").read_text())["final"]
    expected = json.loads((reference / "summary.json").read_text())["final"]
    assert final == expected
    assert val_records(killed) == val_records(reference)
    assert load_checkpoint(killed / "last.pt")["train_state"]["iteration"] == 60


def test_staged_init_from_previous_stage(tmp_path):
    train(tiny(tmp_path, "s32", model="fcn32s", iterations=3))
    stage32 = load_checkpoint(tmp_path / "s32" / "best.pt")["model"]
    train(tiny(tmp_path, "s16", model="fcn16s", iterations=1, lr=0.0, init_from=str(tmp_path / "s32" / "best.pt")))
    stage16 = load_checkpoint(tmp_path / "s16" / "last.pt")["model"]
    shared = [k for k in stage32 if k in stage16 and stage32[k].shape == stage16[k].shape]
    assert "backbone.features.0.weight" in shared and "score_fr.weight" in shared
    assert all(torch.equal(stage32[k], stage16[k]) for k in shared if stage32[k].is_floating_point())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FcnsegError, match="cannot resume"):
        train(tiny(tmp_path, resume=str(tmp_path / "empty")))


# ------------------------------------------------------------------ bad input


def test_missing_dataset_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", *TINY_ARGS, "--data", f"voc:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fcnseg train: error:") and "nowhere" in err and "\n" not in err


def test_empty_split_is_a_clear_error(tmp_path, monkeypatch):
    from fcnseg.data import load_dataset

    def empty_train_split(spec, split):
        dataset = load_dataset(spec, split)
        if split == "train":
            dataset.__class__ = type("Empty", (type(dataset),), {"__len__": lambda self: 0})
        return dataset

    monkeypatch.setattr(trainer, "load_dataset", empty_train_split)
    with pytest.raises(FcnsegError, match="training split of .* is empty"):
        train(tiny(tmp_path))


def test_class_count_mismatch_between_checkpoint_and_data(tmp_path, capsys):
    from fcnseg.models import create_model

    model = create_model("fcn8s", 3, width=1 / 16, geometry="same")
    meta = {
        "model_name": "fcn8s",
        "model_kwargs": {"num_classes": 3, "width": 1 / 16, "geometry": "same"},
        "class_names": ["a", "b", "c"],
        "palette": [[0, 0, 0]] * 3,
        "normalization": "imagenet",
    }
    save_checkpoint(tmp_path / "three.pt", model.state_dict(), meta)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "three.pt"), "--data", "shapes", "--max-images", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "predicts 3 classes but dataset" in err and "three.pt" in err
    with pytest.raises(FcnsegError, match="predicts 3 classes"):
        train(tiny(tmp_path, init_from=str(tmp_path / "three.pt")))


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real_loss = trainer.segmentation_loss
    calls = {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 7 else value

    monkeypatch.setattr(trainer, "segmentation_loss", loss_that_explodes)
    with pytest.raises(FcnsegError, match=r"diverged: loss is nan at iteration 7; .*last\.pt is intact"):
        train(tiny(tmp_path, iterations=10, checkpoint_every=3))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["train_state"]["iteration"] == 6
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["train", *TINY_ARGS, "--iterations", "2", "--out", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "a-file is a file, not a folder" in err and "\n" not in err  # found before any work


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    saves = {"n": 0}

    def save_until_full(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(FcnsegError, match="No space left on device.*intact"):
        train(tiny(tmp_path, iterations=6, checkpoint_every=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["iteration"] == 2
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ commands


def test_train_and_evaluate_commands(tmp_path, capsys):
    config = tmp_path / "cfg.toml"
    config.write_text("iterations = 3\nbatch_size = 2\nlog_every = 1\n")
    run = tmp_path / "cli-run"
    assert main(["train", "--config", str(config), *TINY_ARGS, "--iterations", "4", "--out", str(run)]) == 0
    saved = (run / "config.yaml").read_text()
    assert "iterations: 4" in saved and "batch_size: 2" in saved  # CLI beats the file; file beats defaults
    capsys.readouterr()
    out_json = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "best.pt"),
                "--data",
                "shapes",
                "--max-images",
                "3",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    assert {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iou", "loss", "confusion"} <= set(metrics)
    assert metrics["images"] == 3 and "mean IU" in printed and "background" in printed
    assert (tmp_path / "metrics_confusion.png").is_file()  # beside the JSON asked for, not beside the checkpoint
    assert not (run / "confusion_val.png").exists()
    # extending a finished run by resuming with more iterations
    assert main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 6


@pytest.mark.parametrize("preset", ["paper", "paper-atonce", "modern"])
def test_presets_train(tmp_path, preset):
    """Each preset's recipe runs end to end (shrunk: tiny width, 2 iterations, small crops)."""
    from fcnseg.config import resolve_config

    cfg = resolve_config(
        preset,
        None,
        {
            "data": "shapes",
            "width": 1 / 16,
            "iterations": 2,
            "max_val_images": 2,
            "num_samples": 0,
            "progress": False,
            "out": str(tmp_path / preset),
            "batch_size": min(2, resolve_config(preset).batch_size),
            "crop_size": None if preset != "modern" else 64,
            "precision": "fp32",
            "channels_last": False,
        },
    )
    summary = train(cfg)
    ckpt = load_checkpoint(tmp_path / preset / "last.pt")
    assert ckpt["train_state"]["config"]["loss_reduction"] == ("mean" if preset == "modern" else "sum")
    assert summary["iterations"] == 2 and 0 <= summary["final"]["pixel_acc"] <= 1


def _folder_with_one_truncated_image(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / split / "images" / f"im{i}.jpg"
            )
            Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(root / split / "masks" / f"im{i}.png")
    bad = root / "train" / "images" / "im2.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    return bad


def test_bad_training_sample_stops_with_its_name_or_is_skipped_when_asked(tmp_path, caplog):
    _folder_with_one_truncated_image(tmp_path / "data")
    spec = f"folder:{tmp_path / 'data'}"
    caplog.set_level("WARNING", logger="fcnseg")
    with pytest.raises(FcnsegError, match="im2.jpg"):
        train(tiny(tmp_path, "strict", data=spec, batch_size=1, iterations=4))
    # classes.json is absent: the class count is inferred, and said
    assert any("no classes.json" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()
    summary = train(tiny(tmp_path, "lenient", data=spec, batch_size=1, iterations=4, skip_bad=True))
    skipped = [r.getMessage() for r in caplog.records if "skipped bad sample" in r.getMessage()]
    assert len(skipped) == 1 and "im2.jpg: cannot read image" in skipped[0]  # once, however often it is drawn
    assert (Path(summary["run_dir"]) / "last.pt").is_file() and summary["skipped_samples"] == 1
