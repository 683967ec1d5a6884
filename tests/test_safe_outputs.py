"""Outputs are written safely or not at all, where the user asked, and never over
an input. Real faults: a 200 KB tmpfs (full disk), a read-only tmpfs, --out pointing into the inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _faults import TINY_TRAIN, assert_one_line_error, cli, folder_dataset, remount_read_only, tmpfs
from fcnseg.engine.checkpoint import save_checkpoint

META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 6, "width": 1 / 16, "geometry": "same"},
    "class_names": ["bg", "a", "b", "c", "d", "e"],
    "palette": [[10 * k, 0, 0] for k in range(6)],
    "normalization": "imagenet",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from fcnseg.models import create_model

    torch.manual_seed(0)
    model = create_model("fcn8s", **META["model_kwargs"])
    with torch.no_grad():  # predicts background everywhere: classes absent from an image have no IoU
        for name, p in model.named_parameters():
            if "score" in name and name.endswith("bias"):
                p[0] = 50.0
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model.state_dict(), META)
    return path


def photo(path: Path, size=(64, 48)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_predict_probs_onto_a_full_disk_is_one_line_and_leaves_nothing_partial(tmp_path, checkpoint):
    photo(tmp_path / "big.png", (256, 192))  # 6 x 192 x 256 float16 = 590 KB of probabilities
    with tmpfs(tmp_path / "full", "200k") as out:
        proc = cli("predict", "--checkpoint", checkpoint, tmp_path / "big.png", "--out", out, "--probs")
        assert_one_line_error(proc, "cannot write", "big_probs.npy", "No space left", "free disk space")
        assert not (out / "big_probs.npy").exists() and leftovers(out) == []  # no partial file, no temp


def test_predict_overlay_onto_a_full_disk_never_reports_success(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        photo(inputs / f"p{i}.png", (160, 120))
    with tmpfs(tmp_path / "full", "64k") as out:
        proc = cli("predict", "--checkpoint", checkpoint, inputs, "--out", out, "--overlay")
        assert_one_line_error(proc, "cannot write", "No space left")
        assert leftovers(out) == []
        for jpg in out.glob("*_overlay.jpg"):  # whatever was written before the disk filled is whole
            Image.open(jpg).load()


def test_training_onto_a_full_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "full", "600k") as out:  # room for config and logs, not for a checkpoint
        proc = cli(
            "train", "--data", "shapes", "--iterations", "2", "--max-val-images", "2", "--out", out / "R", *TINY_TRAIN
        )
        assert_one_line_error(proc, "cannot write", "last.pt", "No space left")
        assert leftovers(out) == [] and not (out / "R" / "last.pt").exists()


def test_evaluate_next_to_a_read_only_checkpoint_writes_where_asked(tmp_path, checkpoint):
    with tmpfs(tmp_path / "ro", "4m") as ro:
        (ro / "tiny.pt").write_bytes(checkpoint.read_bytes())
        remount_read_only(ro)
        result = tmp_path / "results" / "eval.json"
        proc = cli(
            "evaluate", "--checkpoint", ro / "tiny.pt", "--data", "shapes", "--max-images", "2", "--json", result
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        metrics = json.loads(result.read_text())
        assert metrics["images"] == 2 and (tmp_path / "results" / "eval_confusion.png").is_file()
        # a plot asked for in a read-only folder: the metrics are still printed and saved
        result.unlink()
        proc = cli(
            "evaluate",
            "--checkpoint",
            ro / "tiny.pt",
            "--data",
            "shapes",
            "--max-images",
            "2",
            "--json",
            result,
            "--plot",
            ro / "c.png",
        )
        assert_one_line_error(proc, "plot was not written", "read-only")
        assert "mean IU" in proc.stdout and json.loads(result.read_text())["images"] == 2


def test_evaluate_without_json_or_plot_writes_nothing(tmp_path, checkpoint):
    folder = checkpoint.parent
    before = sorted(folder.iterdir())
    proc = cli("evaluate", "--checkpoint", checkpoint, "--data", "shapes", "--max-images", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(folder.iterdir()) == before


def test_predict_never_overwrites_an_input(tmp_path, checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "cat.png")
    original = (photos / "cat.png").read_bytes()
    proc = cli("predict", "--checkpoint", checkpoint, photos, "--out", photos)
    assert_one_line_error(proc, "would overwrite the input", "cat.png")
    assert (photos / "cat.png").read_bytes() == original and sorted(p.name for p in photos.iterdir()) == ["cat.png"]


def test_predict_never_reads_its_own_output_folder(tmp_path, checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "cat.png")
    photo(photos / "dog.jpg")
    for _ in range(2):
        proc = cli("predict", "--checkpoint", checkpoint, photos, "--out", photos / "preds", "--overlay")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "2 image(s) written" in proc.stderr
    assert sorted(p.name for p in (photos / "preds").iterdir()) == [
        "cat.png",
        "cat_overlay.jpg",
        "dog.png",
        "dog_overlay.jpg",
    ]
    # a glob reaching into the output folder does not pick up the outputs either
    proc = cli("predict", "--checkpoint", checkpoint, f"{photos}/**/*.png", "--out", photos / "preds")
    assert proc.returncode == 0 and "1 image(s) written" in proc.stderr, proc.stderr[-2000:]


def test_json_results_hold_null_not_nan(tmp_path, checkpoint):
    data = folder_dataset(tmp_path / "d", classes=3)  # masks use labels 0..2 ...
    (data / "classes.json").write_text(json.dumps({"classes": META["class_names"]}))  # ... of 6 classes
    result = tmp_path / "eval.json"
    proc = cli("evaluate", "--checkpoint", checkpoint, "--data", f"folder:{data}", "--json", result)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = result.read_text()
    assert not re.search(r"\bNaN\b|\bInfinity\b", text)
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert None in metrics["per_class_iou"]  # classes neither in the image nor predicted: null, not NaN
