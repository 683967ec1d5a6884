"""count_flops, the `fcnseg models` table, ONNX export with dynamic H/W, full-size shape checks."""

import warnings

import pytest
import torch
from torch import nn

from fcnseg.cli import main
from fcnseg.models import count_flops, create_model, list_models

TINY = 1 / 16


def test_count_flops_by_hand_and_mode_restored():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)).train()
    assert count_flops(conv, (10, 12)) == 2 * 8 * 3 * 9 * 10 * 12  # multiply-add = 2 FLOPs
    assert conv.training and conv[1].num_batches_tracked == 0  # fake run: statistics untouched


def test_count_flops_meta_equals_real_model():
    real = create_model("fcn8s", 21, width=TINY)
    with torch.device("meta"):
        meta = create_model("fcn8s", 21, width=TINY)
    assert count_flops(real, (97, 131)) == count_flops(meta, (97, 131)) > 0


def test_same_geometry_saves_40_percent_at_500():
    with torch.device("meta"):
        caffe = count_flops(create_model("fcn8s", 21, geometry="caffe"), (500, 500))
        same = count_flops(create_model("fcn8s", 21, geometry="same"), (500, 500))
    assert 0.59 < same / caffe <= 0.6  # at most 0.6; VGG16 "same" pads no input
    assert 340e9 < caffe < 380e9  # VGG16 on a 698x698 padded input plus fc6/fc7 on 16x16 cells


def test_models_command_prints_counted_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs@500x500" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in list_models()]
    assert {row[0] for row in rows} == set(list_models())
    fcn8s = {row[2]: row for row in rows if row[0] == "fcn8s"}
    assert fcn8s["caffe"][3] == "134.5M"  # the reference FCN-8s has ~134.5M parameters
    assert float(fcn8s["same"][4]) < 0.65 * float(fcn8s["caffe"][4])
    assert main(["models", "--size", "250", "250"]) == 0
    small = {
        tuple(row.split()[:3]): row.split() for row in capsys.readouterr().out.splitlines() if row.startswith("fcn8s ")
    }
    assert float(small[("fcn8s", "vgg16", "same")][4]) < float(fcn8s["same"][4]) / 3


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_onnx_export_keeps_height_and_width_dynamic(geometry):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = create_model("fcn8s", 3, geometry=geometry, width=TINY).eval()
    for name, layer in model.named_modules():
        if name.startswith("score_"):
            nn.init.normal_(layer.weight)
    dims = {2: torch.export.Dim("height", min=1, max=4096), 3: torch.export.Dim("width", min=1, max=4096)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), dynamic_shapes={"x": dims}, dynamo=True)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in [(1, 1), (37, 101), (70, 64)]:
        x = torch.randn(1, 3, *size)
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            expected = model(x)
        assert out.shape == expected.shape == (1, 3, *size)
        assert torch.allclose(out, expected, atol=1e-4 * expected.abs().max().item() + 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_full_size_fcn8s_shapes(geometry):
    model = create_model("fcn8s", 21, geometry=geometry).eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 500, 375)).shape == (1, 21, 500, 375)
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 21, 1, 1)
