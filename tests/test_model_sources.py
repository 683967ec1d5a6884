"""One front door for models: every command that runs a model (predict, evaluate, export, quantize,
serve's model load, train --init-from) takes every source we read -- fcnseg .pt, .safetensors, fp32
and int8 .onnx, .caffemodel, pytorch-fcn .pth, torchvision state dict -- with the same result, and
every bad file gets the same one-line message from every command. Plus ModelMeta's layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.models  # noqa: F401  (the converters test builds through fcnseg.models)
from fcnseg.cli import main
from fcnseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.serving.config import ServeConfig, load_segmenter
from fcnseg.weights import ModelMeta, file_kind, open_model
from fcnseg.weights.meta import META_VERSION
from test_weights_convert import (
    caffemodel_bytes,
    pytorch_fcn_state,
    random_reference,
    torchvision_fcn_state,
)

CLASSES = 6  # the built-in shapes data
VGG_TORCH = ("pt", "safetensors", "caffemodel", "pytorch-fcn")  # the same weights in four files
ONNX = ("onnx", "int8")
ALL = (*VGG_TORCH, "torchvision", *ONNX)


def run(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """Every format, the VGG ones holding the same tiny FCN-8s (6 classes), and a test image."""
    folder = tmp_path_factory.mktemp("sources")
    layers = random_reference("fcn8s", num_classes=CLASSES)
    paths = {
        "caffemodel": folder / "tiny.caffemodel",
        "pytorch-fcn": folder / "tiny_torchfcn.pth",
        "pt": folder / "tiny.pt",
        "safetensors": folder / "tiny.safetensors",
        "onnx": folder / "tiny.onnx",
        "int8": folder / "tiny.int8.onnx",
        "torchvision": folder / "fcn_resnet_tiny.pth",
    }
    paths["caffemodel"].write_bytes(caffemodel_bytes(layers))
    torch.save(pytorch_fcn_state(layers), paths["pytorch-fcn"], _use_new_zipfile_serialization=False)
    torch.save({k: v for k, v in torchvision_fcn_state(CLASSES).items()}, paths["torchvision"])
    assert main(["weights", "convert", str(paths["caffemodel"]), "--out", str(paths["pt"])]) == 0
    for fmt in ("safetensors", "onnx"):
        assert main(["export", "--weights", str(paths["pt"]), "--out", str(paths[fmt])]) == 0
    assert (
        main(
            [
                "quantize",
                "--checkpoint",
                str(paths["pt"]),
                "--data",
                "shapes",
                "--images",
                "2",
                "--out",
                str(paths["int8"]),
            ]
        )
        == 0
    )
    photo = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(photo)
    return {"paths": paths, "photo": photo, "folder": folder}


def test_file_kinds_are_told_by_content_whatever_the_name(sources, tmp_path):
    expected = {
        "pt": "torch",
        "safetensors": "safetensors",
        "onnx": "onnx",
        "int8": "onnx",
        "caffemodel": "caffe",
        "pytorch-fcn": "torch-legacy",
        "torchvision": "torch",
    }
    for name, path in sources["paths"].items():
        renamed = tmp_path / f"{name}.bin"  # the suffix says nothing
        shutil.copy(path, renamed)
        assert file_kind(renamed) == expected[name], name
        opened = open_model(renamed)
        assert opened.meta.num_classes == CLASSES and opened.is_onnx == (name in ONNX)
        assert opened.is_int8 == (name == "int8")


# ------------------------------------------------------------------ every command on every source


@pytest.mark.parametrize("source", ALL)
def test_predict_takes_every_source(sources, source, tmp_path, capsys, caplog):
    path = sources["paths"][source]
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="fcnseg"):
        rc, err = run(
            capsys,
            "predict",
            sources["photo"],
            "--weights",
            path,
            "--out",
            out,
            "--no-fast",
            "--device",
            "cpu",
            "--no-progress",
        )
    assert rc == 0, err
    mask = np.array(Image.open(out / "photo.png"))
    assert mask.shape == (40, 52) and mask.max() < CLASSES
    assert "classes, training data not recorded" in caplog.text  # the header says what it knows
    np.save(sources["folder"] / f"mask-{source}.npy", mask)


def test_predict_gives_the_same_masks_from_the_same_weights(sources):
    masks = {
        s: np.load(sources["folder"] / f"mask-{s}.npy")
        for s in (*VGG_TORCH, "onnx")
        if (sources["folder"] / f"mask-{s}.npy").exists()
    }
    if len(masks) < 5:
        pytest.skip("needs test_predict_takes_every_source to have run first")
    for name in VGG_TORCH[1:]:
        assert np.array_equal(masks[name], masks["pt"]), name
    assert (masks["onnx"] == masks["pt"]).mean() > 0.99  # another runtime: a rare near-tie may flip


@pytest.mark.parametrize("source", ALL)
def test_evaluate_takes_every_source(sources, source, tmp_path, capsys):
    path = sources["paths"][source]
    rc, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        path,
        "--data",
        "shapes",
        "--max-images",
        2,
        "--json",
        tmp_path / "m.json",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 2 and len(metrics["per_class_iou"]) == CLASSES
    (sources["folder"] / f"eval-{source}.json").write_text(json.dumps(metrics["confusion"]))


def test_evaluate_gives_the_same_confusion_from_the_same_weights(sources):
    files = {s: sources["folder"] / f"eval-{s}.json" for s in VGG_TORCH}
    if not all(f.exists() for f in files.values()):
        pytest.skip("needs test_evaluate_takes_every_source to have run first")
    first = json.loads(files["pt"].read_text())
    assert all(json.loads(f.read_text()) == first for f in files.values())


@pytest.mark.parametrize("source", ALL)
def test_export_takes_every_source_with_torch_weights(sources, source, tmp_path, capsys):
    path = sources["paths"][source]
    out = tmp_path / "x.safetensors"
    rc, err = run(capsys, "export", "--weights", path, "--out", out)
    if source in ONNX:
        assert rc == 2 and f"{path} is an" in err and "export needs PyTorch weights" in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
        return
    assert rc == 0, err
    reopened = open_model(out)
    assert reopened.meta.num_classes == CLASSES and reopened.meta.output_stride


@pytest.mark.parametrize("source", ALL)
def test_serve_loads_every_source(sources, source):
    path = str(sources["paths"][source])
    for config in (ServeConfig(weights=path), ServeConfig(checkpoint=path)):  # --checkpoint: the alias
        seg = load_segmenter(config)
        assert seg.num_classes == CLASSES
        assert seg.backend == ("torch" if source not in ONNX else seg.backend)
        assert seg.predict(np.zeros((20, 24, 3), np.uint8)).shape == (20, 24)


@pytest.mark.parametrize("source", ["caffemodel", "torchvision", "onnx"])
def test_quantize_takes_any_torch_source_and_refuses_onnx(sources, source, tmp_path, capsys):
    path = sources["paths"][source]
    out = tmp_path / "q.int8.onnx"
    rc, err = run(
        capsys, "quantize", "--weights", path, "--data", "shapes", "--images", 1, "--max-side", 48, "--out", out
    )
    if source in ONNX:
        assert rc == 2 and "quantize needs PyTorch weights" in err
        return
    assert rc == 0, err
    assert open_model(out).is_int8


@pytest.mark.parametrize("source", ["pt", "caffemodel", "pytorch-fcn", "safetensors", "int8"])
def test_train_init_from_takes_every_source(sources, source, tmp_path, capsys):
    path = sources["paths"][source]
    rc, err = run(
        capsys,
        "train",
        "--data",
        "shapes",
        "--model",
        "fcn8s",
        "--width",
        "0.125",
        "--geometry",
        "caffe",
        "--iterations",
        1,
        "--lr",
        0,
        "--max-val-images",
        1,
        "--num-samples",
        0,
        "--crop-size",
        64,
        "--no-progress",
        "--device",
        "cpu",
        "--init-from",
        path,
        "--out",
        tmp_path / "run",
    )
    if source in ONNX:
        assert rc == 2 and "--init-from needs PyTorch weights" in err
        return
    assert rc == 0, err
    trained = load_checkpoint(tmp_path / "run" / "last.pt")
    ref = open_model(path).module.state_dict()
    assert torch.equal(trained["model"]["score_fr.weight"], ref["score_fr.weight"])  # lr 0: as loaded
    meta = ModelMeta.from_dict(trained["meta"])
    assert meta.trained_on == "shapes (synthetic)" and meta.data == "shapes" and meta.train_split == "train"
    if source == "pt":  # what predict's header and the page's model card say
        from fcnseg.inference import Segmenter

        described = Segmenter.from_pretrained(tmp_path / "run" / "last.pt", fast=False).describe()
        assert "fcn8s (6 classes, trained on shapes (synthetic)" in described


# ------------------------------------------------------------------ bad files: one message, every command


def bad_files(sources, folder):
    pt = sources["paths"]["pt"].read_bytes()
    caffe = sources["paths"]["caffemodel"].read_bytes()
    files = {
        "folder": folder / "a_run_folder",
        "truncated.pt": folder / "cut.pt",
        "truncated.caffemodel": folder / "cut.caffemodel",
        "html": folder / "page.pth",
        "wrong-shape": folder / "wrong.pt",
    }
    files["folder"].mkdir()
    files["truncated.pt"].write_bytes(pt[: len(pt) // 2])
    files["truncated.caffemodel"].write_bytes(caffe[:-5000])
    files["html"].write_bytes(b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n")
    ckpt = load_checkpoint(sources["paths"]["pt"])
    state = dict(ckpt["model"], **{"score_pool4.weight": torch.zeros(CLASSES, 3, 1, 1)})
    save_checkpoint(files["wrong-shape"], state, ckpt["meta"])
    expected = {
        "folder": "model file is a folder, not a file",
        "truncated.pt": "looks like a PyTorch file but is truncated at byte",
        "truncated.caffemodel": "looks like a Caffe model but is truncated at byte",
        "html": "is an HTML page, not a model file",
        "wrong-shape": "tensor score_pool4.weight has shape 6x3x1x1",
    }
    return files, expected


def test_every_command_says_the_same_true_thing_about_a_bad_file(sources, tmp_path, capsys):
    files, expected = bad_files(sources, tmp_path)
    commands = {
        "predict": lambda p: ["predict", sources["photo"], "--weights", p, "--out", tmp_path / "o"],
        "evaluate": lambda p: ["evaluate", "--checkpoint", p, "--data", "shapes", "--max-images", 1],
        "export": lambda p: ["export", "--weights", p, "--out", tmp_path / "x.onnx"],
        "quantize": lambda p: ["quantize", "--checkpoint", p, "--data", "shapes", "--out", tmp_path / "q.onnx"],
        "train": lambda p: [
            "train",
            "--data",
            "shapes",
            "--width",
            "0.0625",
            "--iterations",
            1,
            "--init-from",
            p,
            "--out",
            tmp_path / "run",
            "--no-progress",
        ],
    }
    for bad, path in files.items():
        messages = set()
        for command, argv in commands.items():
            rc, err = run(capsys, *argv(path))
            lines = err.strip().splitlines()
            assert rc == 2 and len(lines) == 1, (bad, command, err)
            prefix = f"fcnseg {command}: error: "
            assert lines[0].startswith(prefix), (bad, command, err)
            messages.add(lines[0][len(prefix) :])
        with pytest.raises(FcnsegError) as served:
            load_segmenter(ServeConfig(weights=str(path)))
        messages.add(str(served.value))
        assert len(messages) == 1, (bad, messages)  # the same words from every command
        message = messages.pop()
        assert expected[bad] in message and str(path) in message, message
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_damaged_cached_file_names_the_command_that_replaces_it(sources, tmp_path, monkeypatch):
    from fcnseg.weights.download import cached_path
    from fcnseg.weights.registry import get_entry

    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    cached = cached_path(get_entry("fcn8s-voc"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(sources["paths"]["caffemodel"].read_bytes()[:-5000])  # damaged after download
    with pytest.raises(FcnsegError) as error:
        open_model(cached)
    message = str(error.value)
    assert "looks like a Caffe model but is truncated at byte" in message
    assert message.endswith("it with `fcnseg weights download fcn8s-voc --force`")
    assert "torch.save" not in message


def test_weights_and_checkpoint_are_one_option(sources, tmp_path, capsys):
    pt = sources["paths"]["pt"]
    for argv in (["--weights", pt, "--checkpoint", sources["paths"]["onnx"]], []):
        with pytest.raises(SystemExit) as exited:
            main(["export", *map(str, argv), "--out", str(tmp_path / "x.onnx")])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and len(err.strip().splitlines()) == 1
        assert ("the model is already given" if argv else "--weights/--checkpoint") in err


# ------------------------------------------------------------------ ModelMeta, old layouts, quantize's default


def test_old_checkpoint_layout_still_loads(tmp_path, sources):
    """A checkpoint written before ModelMeta: no meta_version, no normalization, lists not tuples."""
    ckpt = load_checkpoint(sources["paths"]["pt"])
    old_meta = {
        "model_name": "fcn8s",
        "model_kwargs": ckpt["meta"]["model_kwargs"],
        "class_names": [str(i) for i in range(CLASSES)],
        "palette": [],
        "fcnseg_version": "0.0.9",
    }
    old = tmp_path / "old.pt"
    torch.save(
        {"format": "fcnseg.checkpoint", "version": 1, "model": ckpt["model"], "meta": old_meta, "train_state": None},
        old,
    )
    opened = open_model(old)
    assert opened.meta.normalization == "imagenet" and opened.meta.trained_on is None
    assert opened.meta.class_names == tuple(old_meta["class_names"]) and opened.meta["model_name"] == "fcn8s"
    # the registry's and the exports' layouts read the same way
    assert ModelMeta.from_dict({**old_meta, "source": "fcn8s-voc", "output_stride": 32}).output_stride == 32


def test_model_meta_round_trip_and_refusals():
    meta = ModelMeta(
        "fcn8s",
        {"num_classes": 3, "width": 0.5},
        ["a", "b", "c"],
        [[1, 2, 3]] * 3,
        trained_on="shapes (synthetic)",
        data="shapes",
        train_split="train",
    )
    data = meta.to_dict()
    assert data["meta_version"] == META_VERSION and json.loads(json.dumps(data)) == data
    assert ModelMeta.from_dict(data) == meta and meta.num_classes == 3 and meta.palette[0] == (1, 2, 3)
    with pytest.raises(FcnsegError, match="newer than this fcnseg"):
        ModelMeta.from_dict({**data, "meta_version": META_VERSION + 1}, "x.pt")
    with pytest.raises(FcnsegError, match="x.pt has no model name"):
        ModelMeta.from_dict({"model_kwargs": {"num_classes": 3}}, "x.pt")
    assert ModelMeta("unet", {"num_classes": 2}).normalization == "imagenet"  # the one default


def test_quantize_calibrates_on_the_data_the_model_was_trained_on(sources, tmp_path, capsys):
    ckpt = load_checkpoint(sources["paths"]["pt"])
    meta = ModelMeta.from_dict(ckpt["meta"]).with_(data="shapes", train_split="val", trained_on="shapes (synthetic)")
    trained = tmp_path / "trained.pt"
    save_checkpoint(trained, ckpt["model"], meta)
    out = tmp_path / "t.int8.onnx"
    rc, err = run(capsys, "quantize", "--weights", trained, "--images", 1, "--max-side", 48, "--out", out)
    assert rc == 0, err
    assert "1 images of shapes val" in err
    rc, err = run(capsys, "quantize", "--weights", sources["paths"]["pt"], "--out", out)
    assert rc == 2 and "does not record the data it was trained on; give --data SPEC" in err


def test_models_table_shows_the_score_stride(capsys):
    assert main(["models", "--size", "32", "32", "--width", "0.0625"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("fcn")]
    strides = {(r[0], r[2]): int(r[5]) for r in rows}
    assert strides[("fcn32s", "caffe")] == 32 and strides[("fcn16s", "caffe")] == 16
    assert strides[("fcn8s", "same")] == 8 and strides[("fcn8s-atonce", "caffe")] == 8


def test_one_public_create_model():
    import fcnseg
    import fcnseg.models

    assert fcnseg.create_model is fcnseg.models.create_model
    assert fcnseg.models.build_model is not fcnseg.create_model
    net = fcnseg.models.create_model("fcn32s", 3, width=1 / 16)
    assert net.num_classes == 3
