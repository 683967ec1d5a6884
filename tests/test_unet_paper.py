"""U-Net as its paper describes it: the unpadded network (572 -> 388), mirrored borders and
overlap-tile prediction (exactly the whole mirrored image's result)."""

import numpy as np
import pytest
import torch

from fcnseg.errors import FcnsegError
from fcnseg.inference import Segmenter
from fcnseg.inference.overlap_tile import overlap_tile, tile_offsets
from fcnseg.models import build_model
from fcnseg.models.layers import mirror_indices, mirror_pad
from fcnseg.models.unet import UNetValid, valid_output_size

META = {
    "model_name": "unet-valid",
    "model_kwargs": {"num_classes": 3, "width": 1 / 16},
    "class_names": ["a", "b", "c"],
    "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    "normalization": "imagenet",
}


def tiny(num_classes=3, batch_norm=True) -> UNetValid:
    return build_model("unet-valid", num_classes, width=1 / 16, batch_norm=batch_norm).eval()


def test_full_size_572_gives_388_and_the_same_weights_as_padded_unet():
    model = build_model("unet-valid", 2, width=1 / 16).eval()
    with torch.no_grad():
        assert model.forward_valid(torch.zeros(1, 3, 572, 572)).shape == (1, 2, 388, 388)
        assert model.forward_valid(torch.zeros(1, 3, 188, 204)).shape == (1, 2, 4, 20)
    with pytest.raises(FcnsegError, match="188 \\+ 16k"):
        model.forward_valid(torch.zeros(1, 3, 570, 572))
    padded = build_model("unet", 2, width=1 / 16)
    assert model.state_dict().keys() == padded.state_dict().keys()  # one layout, weights move across
    assert not any(m.padding != (0, 0) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_forward_keeps_any_size_by_mirroring():
    model = tiny()
    with torch.no_grad():
        for h, w in [(1, 1), (5, 40), (37, 21), (100, 130)]:
            assert model(torch.rand(2, 3, h, w)).shape == (2, 3, h, w)
    assert [valid_output_size(n) for n in (1, 4, 5, 20, 21, 388, 389)] == [4, 4, 20, 20, 36, 388, 404]


def test_mirror_extension_reflects_without_repeating_the_edge_and_folds_again():
    assert mirror_indices(4, 5, 5).tolist() == [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert mirror_indices(1, 2, 2).tolist() == [0] * 5
    for length, before, after in [(4, 5, 5), (1, 2, 2), (7, 3, 20)]:  # traced sizes are 0-dim tensors
        as_tensors = mirror_indices(torch.tensor(length), before, torch.tensor(after))
        assert as_tensors.tolist() == mirror_indices(length, before, after).tolist()
    x = torch.arange(12.0).view(1, 3, 4)
    np.testing.assert_array_equal(mirror_pad(x, 2, 2, 3, 3)[0, 2:5, 3:7].numpy(), x[0].numpy())
    np.testing.assert_array_equal(
        mirror_pad(x, 0, 0, 2, 0)[0].numpy(), np.pad(x[0].numpy(), ((0, 0), (2, 0)), mode="reflect")
    )


def test_tile_offsets_are_on_the_pooling_grid_and_cover_the_image():
    offsets, covered = tile_offsets(1000, 388)
    assert offsets == [0, 384, 768] and covered == 1156 and all(o % 16 == 0 for o in offsets)
    assert tile_offsets(50, 388) == ([0], 52)  # small image: one tile of the smallest size covering it


@pytest.mark.parametrize("size, tile", [((70, 90), 36), ((53, 41), 20), ((30, 30), 388)])
def test_overlap_tile_equals_the_whole_mirrored_image(size, tile):
    torch.manual_seed(0)
    model = tiny(batch_norm=True)
    for m in model.modules():  # BatchNorm with non-trivial statistics, so the test has teeth
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    image = torch.rand(3, *size)
    with torch.no_grad():
        whole = model(image[None]).softmax(1)[0]
        out = torch.full_like(whole, -1.0)
        calls = []

        def probs(x):
            calls.append(tuple(x.shape[-2:]))
            return model.forward_valid(x).softmax(1)

        def sink(y0, band):
            out[:, y0 : y0 + band.shape[1]] = band

        overlap_tile(probs, image, 3, sink, tile)
    assert (out >= 0).all()  # every row arrived
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)
    if tile < min(size):
        assert len(calls) > 1 and all(s == (tile + 184, tile + 184) for s in calls)


def test_segmenter_predicts_unet_valid_by_overlap_tile():
    model = tiny()
    rgb = np.random.default_rng(3).integers(0, 255, (45, 61, 3), np.uint8)
    tiled = Segmenter(model, META, fast=False, tile=20)
    assert "overlap-tile 20px out / 204px in" in tiled.describe()
    whole = Segmenter(model, META, fast=False, tile=0)
    probs = tiled.predict_proba(rgb)
    assert probs.shape == (3, 45, 61)
    np.testing.assert_allclose(probs, whole.predict_proba(rgb), atol=1e-5)
    assert (tiled.predict([rgb, rgb])[1] == probs.argmax(0)).all()
    with pytest.raises(FcnsegError, match="overlap-tile"):
        Segmenter(model, META, fast=False, tta_flip=True)


def _unet_checkpoint(tmp_path):
    from fcnseg.engine.checkpoint import save_checkpoint

    ckpt = tmp_path / "unet.pt"
    classes = [f"c{i}" for i in range(6)]  # as many as `shapes`, which quantize calibrates on
    meta = {**META, "model_kwargs": {"num_classes": 6, "width": 1 / 16}, "class_names": classes, "palette": None}
    torch.manual_seed(0)
    model = tiny(6)
    save_checkpoint(ckpt, model.state_dict(), {k: v for k, v in meta.items() if v is not None})
    return ckpt, model


def test_onnx_export_of_unet_valid_keeps_the_mirror_extension_dynamic(tmp_path):
    """The mirror extension is tensor arithmetic on the traced sizes, so one exported file answers
    every size exactly as the model does (a trace of Python size arithmetic once froze it: a 64x64
    export gave 52x52 scores at other sizes)."""
    pytest.importorskip("onnxruntime")
    from fcnseg.cli import main
    from fcnseg.inference.export import OnnxModel

    ckpt, model = _unet_checkpoint(tmp_path)
    out = tmp_path / "unet.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    onnx_model, _ = OnnxModel.from_file(out)
    for h, w in [(1, 1), (3, 50), (37, 21), (64, 64), (97, 130)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            expected = model(x)
        got = onnx_model(x)
        assert got.shape == expected.shape == (2, 6, h, w)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_int8_unet_valid_runs_at_sizes_it_was_not_calibrated_on(tmp_path):
    pytest.importorskip("onnxruntime")
    from fcnseg.cli import main

    ckpt, _ = _unet_checkpoint(tmp_path)
    out = tmp_path / "unet-int8.onnx"
    args = ["quantize", "--checkpoint", str(ckpt), "--data", "shapes", "--images", "2", "--out", str(out)]
    assert main(args) == 0
    segmenter = Segmenter.from_checkpoint(out)
    for h, w in [(5, 9), (120, 70)]:  # calibrated on shapes' 96x96
        assert segmenter.predict(np.zeros((h, w, 3), np.uint8)).shape == (h, w)
