"""The same guards on every path. One image reader (bomb guard included) for
datasets, `data check`, training and predict; exported .onnx/.safetensors accepted where a model is
read; never advice to disable weights_only; and every write in the package goes through
fcnseg.files / fcnseg.images (checked over the source, so a new unsafe write cannot slip in)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from _faults import TINY_TRAIN, assert_one_line_error, bomb_png, folder_dataset, run_main
from fcnseg.errors import FcnsegError

SRC = Path(__file__).resolve().parents[1] / "src" / "fcnseg"


def test_bomb_png_is_refused_by_every_reader(tmp_path, capsys):
    from fcnseg.data.io import read_image as dataset_read
    from fcnseg.inference.image_io import read_image as predict_read

    bomb = bomb_png(tmp_path / "bomb.png")
    messages = []
    for read in (dataset_read, predict_read):
        with pytest.raises(FcnsegError) as err:
            read(bomb)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "decompression bomb guard" in messages[0]

    data = folder_dataset(tmp_path / "d")
    bomb_png(data / "train" / "images" / "train1.png")
    check = run_main(capsys, "data", "check", f"folder:{data}")
    assert check.returncode == 1 and "train1.png" in check.stdout and "decompression bomb" in check.stdout
    assert "Traceback" not in check.stderr
    train = run_main(
        capsys, "train", "--data", f"folder:{data}", "--iterations", "2", "--out", tmp_path / "R", *TINY_TRAIN
    )
    assert_one_line_error(train, "train1.png", "decompression bomb")


def test_malicious_pickle_is_refused_without_advice_to_disable_the_guard(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "fcnseg.checkpoint", "version": 1, "model": Evil(), "meta": {}}, evil)
    for args in (
        ["evaluate", "--checkpoint", evil, "--data", "shapes"],
        ["predict", "--checkpoint", evil, evil, "--out", tmp_path / "o"],
        ["train", "--data", "shapes", "--init-from", evil, "--out", tmp_path / "R"],
    ):
        line = assert_one_line_error(run_main(capsys, *args), "evil.pt", "cannot be loaded safely")
        assert "weights_only" not in line and "False" not in line
    assert not marker.exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint and its .safetensors export (and .onnx where the onnx extra is installed)."""
    from fcnseg.engine.checkpoint import model_from_checkpoint, save_checkpoint
    from fcnseg.inference import export
    from fcnseg.models import create_model

    folder = tmp_path_factory.mktemp("exported")
    kwargs = {"num_classes": 6, "width": 1 / 16, "geometry": "same"}
    torch.manual_seed(0)
    model = create_model("fcn8s", **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "score" in name:
                p.normal_(0, 0.5)
    meta = {
        "model_name": "fcn8s",
        "model_kwargs": kwargs,
        "class_names": [str(i) for i in range(6)],
        "palette": [[0, 0, 0]] * 6,
        "normalization": "imagenet",
    }
    save_checkpoint(folder / "m.pt", model.state_dict(), meta)
    model, meta = model_from_checkpoint(folder / "m.pt")
    export.export_safetensors(model, meta, folder / "m.safetensors")
    try:
        export.export_onnx(model, meta, folder / "m.onnx")
    except (ImportError, FcnsegError):
        pass
    return folder


def test_evaluate_takes_safetensors_and_onnx_exports(exported, capsys):
    import json

    results = {}
    for name in ("m.pt", "m.safetensors", "m.onnx"):
        if not (exported / name).exists():
            continue
        proc = run_main(
            capsys,
            "evaluate",
            "--checkpoint",
            exported / name,
            "--data",
            "shapes",
            "--max-images",
            "2",
            "--json",
            exported / f"{name}.json",
        )
        assert proc.returncode == 0, proc.stderr
        results[name] = json.loads((exported / f"{name}.json").read_text())
    assert results["m.safetensors"]["confusion"] == results["m.pt"]["confusion"]
    if "m.onnx" in results:
        assert results["m.onnx"]["mean_iu"] == pytest.approx(results["m.pt"]["mean_iu"], abs=0.02)


def test_init_from_takes_safetensors_and_names_the_types_it_takes(exported, tmp_path, capsys):
    from fcnseg.engine.trainer import load_init_source

    source = load_init_source(str(exported / "m.safetensors"))
    assert source["meta"]["model_kwargs"]["num_classes"] == 6 and source["model"]
    onnx = exported / "m.onnx"
    if onnx.exists():  # an ONNX model holds no PyTorch weights to start from
        proc = run_main(capsys, "train", "--data", "shapes", "--init-from", onnx, "--out", tmp_path / "R")
        assert_one_line_error(proc, "is an ONNX model; --init-from needs PyTorch weights", ".safetensors")
    junk = tmp_path / "m.onnx"
    junk.write_bytes(b"whatever")  # the name says ONNX, the content says nothing we read
    proc = run_main(capsys, "train", "--data", "shapes", "--init-from", junk, "--out", tmp_path / "R")
    assert_one_line_error(proc, "is not a model file fcnseg reads", ".safetensors")


def test_evaluate_names_the_file_types_it_takes(tmp_path, capsys):
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\0" * 100)
    assert_one_line_error(
        run_main(capsys, "evaluate", "--checkpoint", odd, "--data", "shapes"),
        "fcnseg .pt or .safetensors",
        "int8 .onnx",
        ".caffemodel",
    )


# ------------------------------------------------------------------ one write path, one image reader

WRITE_CALLS = re.compile(
    r"\.write_text\(|\.write_bytes\(|torch\.save\(|open_memmap|np\.save\(|\.savefig\(|"
    r"json\.dump\(|\.save\(|open\([^)]*[\"'][wa]b?[\"']|tofile\("
)
ALLOWED = {  # the one place each kind of write happens, into a temp file or a memory buffer
    "files.py": "atomic_write and friends",
    "images.py": "encodes into a BytesIO buffer, then files.write_bytes",
}


def test_every_write_goes_through_fcnseg_files():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if code.strip().startswith(('"', "'", 'f"')):  # a message quoting code, not code
                continue
            # exempt: writes into a memory buffer, and a download's resumable .part file (appended to
            # unbuffered as bytes arrive, checksummed, then renamed: its own temp-file scheme)
            if WRITE_CALLS.search(code) and "buffer" not in code:
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert offenders == [], "write through fcnseg.files instead:\n" + "\n".join(offenders)


def test_every_image_is_opened_by_fcnseg_images():
    offenders = [
        f"{p.relative_to(SRC)}:{n}"
        for p in SRC.rglob("*.py")
        if p.name != "images.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "Image.open(" in line.split("#")[0]
    ]
    assert offenders == []
