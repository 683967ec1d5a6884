"""The int8 path: `fcnseg quantize` on a tiny FCN-8s, the file it writes, the runtimes that run it
behind the same Segmenter options, and one-line errors for bad input."""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.inference import Segmenter, int8, runtimes
from fcnseg.models import create_model

CLASSES = ["background", "disk", "rectangle", "triangle", "line", "ring"]  # the built-in shapes data
META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 6, "width": 1 / 16},
    "class_names": CLASSES,
    "normalization": "imagenet",
}
RUNTIMES = [r for r in runtimes.RUNTIMES if runtimes.installed(r)]


def tiny_checkpoint(path, name="fcn8s", classes=6, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, classes, width=1 / 16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    meta = {
        **META,
        "model_name": name,
        "model_kwargs": {"num_classes": classes, "width": 1 / 16},
        "class_names": CLASSES[:classes],
    }
    save_checkpoint(path, model.state_dict(), meta)
    return path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fcnseg", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    ckpt = tiny_checkpoint(folder / "tiny.pt")
    out = folder / "tiny.int8.onnx"
    result = cli("quantize", "--checkpoint", ckpt, "--data", "shapes", "--images", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    return ckpt, out


def test_quantize_writes_an_int8_model_with_its_record(quantized):
    ckpt, out = quantized
    proto = onnx.load(str(out))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) >= 14  # 12 VGG convolutions + fc6 + fc7; conv1_1 and the score head stay fp32
    assert all(i.dims[0] != 6 for i in int8_weights)
    # bilinear upsamplers run as Resize (their transposed convolution's values), other diagonal ones
    # grouped, one filter per class; both in fp32
    groups = [
        next((a.i for a in node.attribute if a.name == "group"), 1)
        for node in proto.graph.node
        if node.op_type == "ConvTranspose"
    ]
    assert "Resize" in ops and all(group == 6 for group in groups)
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    readers = {i: n.op_type for n in proto.graph.node for i in n.input}
    for resize in (n for n in proto.graph.node if n.op_type == "Resize"):  # not quantized around
        assert producer.get(resize.input[0]) != "DequantizeLinear" and readers.get(resize.output[0]) != "QuantizeLinear"
    record = int8.read_record(out.read_bytes())
    assert record["calibration"] == {"data": "shapes", "split": "train", "max_side": 1024, "images": 3}
    assert record["source"]["model_name"] == "fcn8s"
    assert int8.is_int8_model(out) and not int8.is_int8_model(ckpt)


def test_weights_never_saturate_avx2_kernels_and_the_first_convolution_stays_fp32(quantized):
    _, out = quantized
    proto = onnx.load(str(out))
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    # without VNNI, onnxruntime sums pairs of uint8 x int8 products in int16: 2 x 255 x 64 < 32767
    assert max(np.abs(onnx.numpy_helper.to_array(w).astype(int)).max() for w in weights) <= 64
    first = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert first.input[0] == "image" and first.input[1] in {i.name for i in proto.graph.initializer}
    assert "7-bit" in int8.read_record(out.read_bytes())["engine"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_agrees_with_fp32_behind_the_same_options(quantized, tmp_path, runtime):
    ckpt, out = quantized
    renamed = shutil.copy(out, tmp_path / "model.bin")  # recognised by content, not by name
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
    for options in [{}, {"tile": 32, "overlap": 0.25}, {"tta_flip": True, "scales": (0.75, 1.0)}, {"shift_stitch": 2}]:
        fp32 = Segmenter.from_checkpoint(ckpt, fast=False, **options)
        q = Segmenter.from_checkpoint(renamed, backend=runtime, **options)
        assert q.int8_record and "int8" in q.describe()
        agreement = (q.predict(image) == fp32.predict(image)).mean()
        assert agreement > 0.97, (options, agreement)  # random weights: many near-ties; trained: >= 99%


def test_checkpoint_plus_int8_must_match(quantized, tmp_path):
    ckpt, out = quantized
    assert Segmenter.from_checkpoint(ckpt, int8=out).int8_record
    other_arch = tiny_checkpoint(tmp_path / "fcn32s.pt", name="fcn32s")
    with pytest.raises(FcnsegError, match="quantized from a fcn8s"):
        Segmenter.from_checkpoint(other_arch, int8=out)
    other_weights = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(FcnsegError, match="other weights"):
        Segmenter.from_checkpoint(other_weights, int8=out)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    result = cli("predict", "--checkpoint", other_arch, "--int8", out, image, "--out", tmp_path / "p")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "fcnseg quantize --weights" in result.stderr


def test_predict_and_evaluate_accept_the_int8_model(quantized, tmp_path):
    ckpt, out = quantized
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    result = cli("predict", "--checkpoint", out, tmp_path / "a.png", "--out", tmp_path / "preds")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "preds" / "a.png").is_file()
    result = cli("evaluate", "--checkpoint", out, "--data", "shapes", "--max-images", 2, "--plot", tmp_path / "cm.png")
    assert result.returncode == 0, result.stderr
    assert "mean IU" in result.stdout


def test_bad_calibration_input_is_one_line_exit_2(quantized, tmp_path):
    ckpt, _ = quantized
    three = tiny_checkpoint(tmp_path / "three.pt", classes=3)
    result = cli("quantize", "--checkpoint", three, "--data", "shapes", "--out", tmp_path / "x.onnx")
    assert result.returncode == 2 and "predicts 3 classes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        (empty / split / "images").mkdir(parents=True)
        (empty / split / "masks").mkdir(parents=True)
    result = cli("quantize", "--checkpoint", ckpt, "--data", f"folder:{empty}", "--out", tmp_path / "y.onnx")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_missing_runtime_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for runtime, extra in (("openvino", "fcnseg[openvino]"), ("onnxruntime", "fcnseg[onnx]")):
        with pytest.raises(FcnsegError, match=extra.replace("[", r"\[").replace("]", r"\]")):
            runtimes.load(runtime, b"")


def test_onnxruntime_runs_every_quantized_convolution_in_int8(quantized, tmp_path):
    """The tiny net's biases are all zero, which the ONNX exporter stores once and shares through
    Identity nodes; onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into an int8
    convolution only where each bias is its own constant, so every int8 weight must reach a QLinearConv."""
    import onnxruntime as ort

    _, out = quantized
    proto = onnx.load(str(out))
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == len(int8_weights) >= 14
