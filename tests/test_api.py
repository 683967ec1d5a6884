"""An API that takes what users have: every Segmenter input type and lists of them (batched),
ConfusionMatrix on numpy, the documented Segmenter, --device checks, and overlays with a legend."""

from __future__ import annotations

import inspect
import pydoc

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnseg
from fcnseg.cli import main
from fcnseg.engine.runtime import resolve_device
from fcnseg.errors import FcnsegError
from fcnseg.viz import legend_entries, overlay, with_legend

META = {
    "model_name": "standin",
    "model_kwargs": {"num_classes": 3},
    "class_names": ["background", "cat", "dog"],
    "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    "normalization": "imagenet",
}


class Counting(nn.Module):
    """N,3,H,W -> N,3,H,W scores; remembers the batch size of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.body(x)


@pytest.fixture()
def seg():
    return fcnseg.Segmenter(Counting(), META, fast=False, device="cpu")


def rgb_image(h=20, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_every_input_type_gives_the_same_mask(seg, tmp_path):
    rgb = rgb_image()
    Image.fromarray(rgb).save(tmp_path / "x.png")
    reference = seg.predict(rgb)
    assert reference.shape == (20, 28)
    chw_uint8 = torch.from_numpy(rgb).permute(2, 0, 1)
    inputs = {
        "path str": str(tmp_path / "x.png"),
        "Path": tmp_path / "x.png",
        "PIL": Image.fromarray(rgb),
        "numpy HWC": rgb,
        "numpy float HWC in [0,1]": rgb / 255.0,
        "tensor CHW uint8": chw_uint8,
        "tensor CHW float in [0,1]": chw_uint8.float() / 255,
        "tensor 1xCxHxW": chw_uint8[None].clone(),
    }
    for name, value in inputs.items():
        out = seg.predict(value)
        if name == "tensor 1xCxHxW":  # a batch in, a list out
            assert isinstance(out, list) and len(out) == 1
            out = out[0]
        assert isinstance(out, np.ndarray) and (out == reference).all(), name
    probs = seg.predict_proba(chw_uint8)
    assert probs.shape == (3, 20, 28) and (probs.argmax(0) == reference).all()


def test_lists_and_batches_one_result_per_image_batched_by_size(seg, tmp_path):
    a, b, c = rgb_image(seed=1), rgb_image(seed=2), rgb_image(24, 16, seed=3)
    Image.fromarray(b).save(tmp_path / "b.png")
    singles = [seg.predict(x) for x in (a, b, c)]
    seg.model.batches.clear()
    masks = seg.predict([a, tmp_path / "b.png", torch.from_numpy(c).permute(2, 0, 1)])
    assert len(masks) == 3 and all((m == s).all() for m, s in zip(masks, singles))
    assert sorted(seg.model.batches) == [1, 2]  # a and b (same size) in one forward pass, c alone
    probs = seg.predict_proba([a, c])
    assert [p.shape for p in probs] == [(3, 20, 28), (3, 24, 16)]
    np.testing.assert_allclose(probs[0], seg.predict_proba(a), atol=1e-5)
    # an N x C x H x W tensor and an N x H x W x 3 array are lists of N images
    seg.model.batches.clear()
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    out = seg.predict(batch)
    assert len(out) == 2 and (out[1] == singles[1]).all() and seg.model.batches == [2]
    assert len(seg.predict(np.stack([a, b]))) == 2
    # batch_size bounds how many images are read and run together
    seg.model.batches.clear()
    assert len(seg.predict([a] * 5, batch_size=2)) == 5 and seg.model.batches == [2, 2, 1]
    assert seg.predict([]) == []


def test_bad_inputs_are_one_line_errors(seg):
    with pytest.raises(FcnsegError, match="cannot predict on a dict"):
        seg.predict({"image": 1})
    with pytest.raises(FcnsegError, match="tensor has shape"):
        seg.predict(torch.zeros(2, 3, 4, 5, 6))
    with pytest.raises(FcnsegError, match="batch_size 0"):
        seg.predict([rgb_image()], batch_size=0)


def test_confusion_matrix_takes_numpy_and_mixes(seg):
    truth = np.array([[0, 0, 1], [2, 255, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    from_numpy, from_torch = fcnseg.ConfusionMatrix(3), fcnseg.ConfusionMatrix(3)
    from_numpy.update(pred, truth)
    from_torch.update(torch.from_numpy(pred).long(), torch.from_numpy(truth).long())
    assert from_numpy.mat.tolist() == from_torch.mat.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    mixed = fcnseg.ConfusionMatrix(3)
    mixed.update(torch.from_numpy(pred), truth.astype(np.int64))
    assert mixed.mat.tolist() == from_numpy.mat.tolist()
    mask = seg.predict(rgb_image())  # what predict returns goes straight in
    cm = fcnseg.ConfusionMatrix(3)
    cm.update(mask, mask)
    assert cm.compute()["pixel_acc"] == 1.0
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(np.zeros((2, 2), np.float32), truth[:, :2])


def test_help_shows_an_example_and_every_option():
    text = pydoc.render_doc(fcnseg.Segmenter, renderer=pydoc.plaintext)
    assert "Segmenter.from_pretrained(" in text and "seg.predict(" in text and "ConfusionMatrix" in text
    doc = inspect.getdoc(fcnseg.Segmenter)
    for name in inspect.signature(fcnseg.Segmenter.__init__).parameters:
        if name != "self":
            assert f"``{name}``" in doc, name
    from_doc = inspect.getdoc(fcnseg.Segmenter.from_checkpoint)
    assert "backend" in from_doc and "device" in from_doc and "constructor option" in from_doc


def test_device_is_checked_the_same_everywhere(tmp_path, capsys):
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, words in [
        ("gpu", "must be auto, cpu, cuda or cuda:N"),
        ("mps", "must be auto"),
        ("cuda:x", "must be auto"),
    ]:
        with pytest.raises(FcnsegError, match=words):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(FcnsegError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(FcnsegError, match="CUDA is not available"):
            fcnseg.Segmenter(Counting(), META, device="cuda:0")
    from fcnseg.inference.segmenter import _inference_device

    assert _inference_device("auto", "onnxruntime") == _inference_device("cpu", "onnxruntime") == torch.device("cpu")
    if torch.cuda.is_available():
        with pytest.raises(FcnsegError, match="onnxruntime backend runs on the CPU"):
            _inference_device("cuda", "onnxruntime")
    Image.fromarray(rgb_image()).save(tmp_path / "x.png")
    commands = [
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            str(tmp_path / "x.png"),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "gpu",
        ],
        ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", "shapes", "--device", "gpu"],
        ["train", "--data", "shapes", "--out", str(tmp_path / "run"), "--device", "gpu"],
    ]
    for argv in commands:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own one-line error (--device checked while parsing)
            code = exc.code
        assert code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1
            and err[0].startswith(f"fcnseg {argv[0]}: error:")
            and "device" in err[0]
            and "must be auto, cpu, cuda or cuda:N" in err[0]
            and "'gpu'" in err[0]
        ), err


def test_overlay_keeps_background_and_gets_a_legend():
    photo = rgb_image(40, 60)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 2  # a dog; no cat
    blended = overlay(photo, mask, META["palette"])
    assert (blended[mask == 0] == photo[mask == 0]).all()  # background: the photo as it is
    assert not (blended[mask == 2] == photo[mask == 2]).all()
    entries = legend_entries(mask, META["class_names"], META["palette"])
    assert entries == [("dog", (0, 255, 0))]
    picture = with_legend(blended, entries)
    assert picture.shape[1] == 60 and picture.shape[0] > 40 and (picture[:40] == blended).all()
    band = picture[40:].reshape(-1, 3)
    assert ((band == (0, 255, 0)).all(1)).sum() > 20  # the dog's swatch is drawn
    assert not ((band == (255, 0, 0)).all(1)).any()  # the absent cat is not listed
    only_background = with_legend(
        photo, legend_entries(np.zeros((40, 60), np.uint8), META["class_names"], META["palette"])
    )
    assert only_background.shape[0] > 40  # the band says that nothing but background was found
