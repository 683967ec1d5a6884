"""Folder datasets: every entry of images/ and masks/ is used or reported (real symlink loops, FIFOs,
broken links, other suffixes, subfolders, two files with one stem), by `data check` and by training."""

import json
import logging
import os
import threading

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main
from fcnseg.data import load_dataset
from fcnseg.errors import FcnsegError


def make_pair(root, stem, image_suffix=".png", split="train"):
    for sub in ("images", "masks"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((6, 8, 3), 90, np.uint8))
    image.save(root / split / "images" / f"{stem}{image_suffix}")
    Image.fromarray(np.ones((6, 8), np.uint8), mode="L").save(root / split / "masks" / f"{stem}.png")


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "d"
    for stem in ("a", "b"):
        make_pair(root, stem)
    make_pair(root, "g", ".gif")  # GIF: read, like any image
    images, masks = root / "train" / "images", root / "train" / "masks"
    (images / "loop1.png").symlink_to(images / "loop2.png")  # a real symlink loop
    (images / "loop2.png").symlink_to(images / "loop1.png")
    os.mkfifo(images / "pipe.png")  # a FIFO: must never be opened
    (images / "gone.png").symlink_to(images / "nowhere.png")  # a broken link
    (images / "notes.txt").write_text("about the photos")  # not an image file
    (images / "old").mkdir()  # a subfolder
    Image.fromarray(np.full((6, 8, 3), 9, np.uint8)).save(images / "b.jpg")  # b.png and b.jpg: which?
    Image.fromarray(np.zeros((6, 8), np.uint8), mode="L").save(masks / "lonely.png")  # no image
    (root / "classes.json").write_text(json.dumps(["bg", "fg"]))
    return root


def without_blocking(fn):
    """Run ``fn`` in a thread; if it blocks (a FIFO opened), unblock it and fail."""
    result = {}

    def call():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        pytest.fail("blocked: a FIFO was opened")
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_data_check_reports_every_entry_once(messy, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = without_blocking(
        lambda: main(["data", "check", f"folder:{messy}", "--split", "train", "--json", str(report)])
    )
    assert code == 1
    split = json.loads(report.read_text())["splits"][0]
    problems = {
        p["file"].rsplit("/", 2)[-2] + "/" + p["file"].rsplit("/", 1)[-1]: p["problem"] for p in split["problems"]
    }
    skipped = {p["file"].rsplit("/", 1)[-1]: p["problem"] for p in split["skipped"]}
    assert problems["images/loop1.png"] == "symlink loop" and problems["images/loop2.png"] == "symlink loop"
    assert problems["images/pipe.png"] == "a FIFO, not a regular file"
    assert problems["images/gone.png"].startswith("broken symlink")
    assert "b.jpg and b.png share the name 'b'" in problems["images/b.png"] and "images/b.jpg" in problems
    assert problems["masks/b.png"] == "mask without image"  # its image is ambiguous, so it pairs with none
    assert problems["masks/lonely.png"] == "mask without image"
    assert set(skipped) == {"notes.txt", "old"}
    assert split["samples"] == 2  # a and g (the GIF) are used
    out = capsys.readouterr().out
    reported = [
        line.strip().split(": ")[0].split(" ", 1)[1]
        for line in out.splitlines()
        if line.strip().startswith(("PROBLEM", "SKIPPED"))
    ]
    used = {
        str(messy / "train" / sub / name)
        for sub, name in (("images", "a.png"), ("masks", "a.png"), ("images", "g.gif"), ("masks", "g.png"))
    }
    for sub in ("images", "masks"):  # every entry of both folders is used or reported, exactly once
        for name in os.listdir(messy / "train" / sub):
            path = str(messy / "train" / sub / name)
            assert reported.count(path) == (0 if path in used else 1), (path, out)


def test_training_refuses_an_unusable_image_and_warns_once_per_kind(messy, caplog):
    with pytest.raises(FcnsegError) as err:
        without_blocking(lambda: load_dataset(f"folder:{messy}", "train"))
    message = str(err.value)
    assert "\n" not in message and "gone.png: broken symlink" in message  # the first image problem, named
    assert "(6 such problem(s)" in message  # two loop links, the FIFO, the broken link, b.jpg and b.png
    for name in ("b.jpg", "b.png"):
        (messy / "train" / "images" / name).unlink()
    (messy / "train" / "masks" / "b.png").unlink()
    for name in ("loop1.png", "loop2.png", "pipe.png", "gone.png"):
        os.unlink(messy / "train" / "images" / name)
    with caplog.at_level(logging.WARNING, logger="fcnseg"):
        dataset = without_blocking(lambda: load_dataset(f"folder:{messy}", "train"))
    assert len(dataset) == 2 and dataset.load_image(1).shape == (6, 8, 3)  # the GIF is a sample
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # one line per kind: mask without image, other suffix, subfolder
    assert any("1 file(s) not used: mask without image: lonely.png" in line for line in lines)
    assert any("notes.txt" in line for line in lines) and any("old" in line for line in lines)
