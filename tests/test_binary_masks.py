"""Masks as users have them: binary 0/255 masks and RGB colour masks without classes.json are
detected (by `data check` and `train`), the fix is printed, and the fix trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main
from fcnseg.config import TrainConfig
from fcnseg.data import load_dataset
from fcnseg.engine import train
from fcnseg.errors import FcnsegError


def make_folder(root: Path, mask_of, n: int = 3, size: int = 32, mode: str = "L") -> Path:
    """A folder dataset whose masks are ``mask_of(index)`` (an HxW 0/1 array) saved in ``mode``."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            fg = mask_of(i, size)
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image[fg == 1] += 150  # the object is bright: learnable in a few steps
            Image.fromarray(image).save(root / split / "images" / f"im{i}.png")
            if mode == "L":
                Image.fromarray((fg * 255).astype(np.uint8), mode="L").save(root / split / "masks" / f"im{i}.png")
            elif mode == "1":
                Image.fromarray(fg.astype(bool)).save(root / split / "masks" / f"im{i}.png")
            else:  # RGB: background black, objects red or green
                rgb = np.zeros((size, size, 3), np.uint8)
                rgb[fg == 1] = (255, 0, 0) if i % 2 == 0 else (0, 255, 0)
                Image.fromarray(rgb).save(root / split / "masks" / f"im{i}.png")
    return root


def square(i: int, size: int) -> np.ndarray:
    fg = np.zeros((size, size), np.uint8)
    fg[4 + i : 20 + i, 6:22] = 1
    return fg


@pytest.mark.parametrize("mode", ["L", "1"])
def test_binary_masks_are_detected_with_the_fix_in_the_message(tmp_path, mode):
    root = make_folder(tmp_path / "data", square, mode=mode)
    with pytest.raises(FcnsegError) as err:
        load_dataset(f"folder:{root}", "train")
    message = str(err.value)
    assert "only the values 0 and 255" in message and "1-class model" in message and "\n" not in message
    assert '{"name": "foreground", "value": 255}' in message and "--write-classes" in message


def test_data_check_reports_binary_masks_and_writes_the_fix(tmp_path, capsys):
    root = make_folder(tmp_path / "data", square)
    assert main(["data", "check", f"folder:{root}"]) == 1
    assert "binary masks saved as 0/255" in capsys.readouterr().out
    assert not (root / "classes.json").exists()
    assert main(["data", "check", f"folder:{root}", "--write-classes"]) == 0
    out = capsys.readouterr()
    assert "OK: no problems" in out.out and "wrote" in out.err
    spec = json.loads((root / "classes.json").read_text())
    assert spec["classes"] == [{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]
    # never replaces a classes.json that is there
    assert main(["data", "check", f"folder:{root}", "--write-classes"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_binary_masks_with_the_fix_train_end_to_end(tmp_path):
    root = make_folder(tmp_path / "data", square)
    (root / "classes.json").write_text(
        json.dumps({"classes": [{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]})
    )
    dataset = load_dataset(f"folder:{root}", "val")
    image, mask = dataset[0]
    assert dataset.class_names == ("background", "foreground")
    assert set(mask.unique().tolist()) == {0, 1} and int((mask == 1).sum()) == int(square(0, 32).sum())
    summary = train(
        TrainConfig(
            data=f"folder:{root}",
            model="fcn8s",
            width=1 / 16,
            geometry="same",
            iterations=4,
            batch_size=2,
            optimizer="adamw",
            lr=1e-3,
            num_samples=0,
            progress=False,
            out=str(tmp_path / "run"),
        )
    )
    assert len(summary["final"]["per_class_iou"]) == 2
    assert not np.isnan(summary["final"]["per_class_iou"][1])  # the foreground is a class that is scored


def test_value_not_in_classes_json_names_the_file(tmp_path):
    root = make_folder(tmp_path / "data", square)
    (root / "classes.json").write_text(
        json.dumps({"classes": [{"name": "bg", "value": 0}, {"name": "fg", "value": 255}]})
    )
    smoothed = square(0, 32) * 255
    smoothed[0, :3] = 7  # an edge value left by resizing with interpolation
    Image.fromarray(smoothed.astype(np.uint8), mode="L").save(root / "train" / "masks" / "im0.png")
    with pytest.raises(FcnsegError, match=r"im0.png: pixel values 7 are no class"):
        load_dataset(f"folder:{root}", "train")[0]


def test_colour_masks_without_classes_json_print_the_classes_json_to_write(tmp_path, capsys):
    root = make_folder(tmp_path / "data", square, mode="RGB")
    with pytest.raises(FcnsegError) as err:
        load_dataset(f"folder:{root}", "train")
    message = str(err.value)
    assert "masks are RGB colour images" in message and "\n" not in message
    suggested = json.loads(message[message.index("{") : message.rindex("}") + 1])
    assert suggested["classes"][0] == {"name": "background", "color": [0, 0, 0]}
    assert sorted(c["color"] for c in suggested["classes"][1:]) == [[0, 255, 0], [255, 0, 0]]
    # the written suggestion makes the data usable as it is
    assert main(["data", "check", f"folder:{root}", "--write-classes"]) == 0
    assert load_dataset(f"folder:{root}", "train").num_classes == 3
