"""The int8 model's huge layers on oneDNN (fcnseg.inference.int8_gemm): the same uint8 maps as
onnxruntime's QLinearConv, bit for bit, and the same scores through the int8 pad cache."""

import numpy as np
import onnx
import pytest
import torch

from fcnseg.data.normalize import normalize
from fcnseg.inference import int8, int8_gemm, runtimes
from fcnseg.inference import int8_padcache as pc
from fcnseg.models import create_model


def picture(height, width, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (1, 3, height, width), np.uint8)
    return normalize(torch.from_numpy(rgb), "imagenet")


def quantized(geometry):
    torch.manual_seed(0)
    model = create_model("fcn8s", 6, width=1 / 16, geometry=geometry).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    meta = {"model_name": "fcn8s", "model_kwargs": {"num_classes": 6, "width": 1 / 16, "geometry": geometry}}
    return int8.quantize(model, {**meta, "normalization": "imagenet"}, [picture(64, 80, s) for s in range(2)])


@pytest.fixture(scope="module", params=["caffe", "same"])
def model(request):
    return request.param, quantized(request.param)


@pytest.fixture(scope="module")
def caffe_data():
    return quantized("caffe")


@pytest.fixture
def small_layers_too(monkeypatch):
    """The tiny test models' fc6/fc7 are far under MIN_WEIGHTS: take every size."""
    monkeypatch.setattr(int8_gemm, "MIN_WEIGHTS", 1)


def last_pool_map(proto):
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    consumers = [n for n in proto.graph.node if pools[-1].output[0] in n.input]
    assert len(consumers) == 1 and consumers[0].op_type == "QuantizeLinear"
    return consumers[0].output[0]


def onnxruntime_maps(data, names, x):
    """The uint8 maps ``names`` of the int8 model on ``x``, as onnxruntime computes them."""
    proto = onnx.load_from_string(data)
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None) for n in names)
    session = runtimes.onnxruntime_session(proto.SerializeToString())
    return session.run(names, {"image": x.numpy()})


def test_fc6_fc7_give_onnxruntimes_uint8_maps_bit_for_bit(model, small_layers_too):
    geometry, data = model
    proto = onnx.load_from_string(data)
    gemms = int8_gemm.find_gemms(proto, last_pool_map(proto))
    assert gemms is not None and [layer.kernel for layer in gemms.layers] == [(7, 7), (1, 1)]
    assert gemms.layers[0].pads == ((0,) * 4 if geometry == "caffe" else (3,) * 4)  # "same": zero point padding
    for size in [(64, 80), (45, 61), (100, 37)]:
        source, target = onnxruntime_maps(data, [gemms.source, gemms.target], picture(*size, seed=size[1]))
        got = gemms(source)
        assert got.dtype == np.uint8 and got.shape == target.shape
        np.testing.assert_array_equal(got, target)
        assert len(np.unique(got)) > 10  # not a degenerate all-zero map


def test_only_large_plain_layers_are_taken(model):
    _, data = model
    proto = onnx.load_from_string(data)
    assert int8_gemm.find_gemms(proto, last_pool_map(proto)) is None  # fc6 of width 1/16: 0.4M weights
    assert int8_gemm.find_gemms(proto, "image") is None  # the image is not a uint8 map read by a Conv


def test_pad_cache_with_gemms_gives_the_same_scores(caffe_data, small_layers_too):
    data = caffe_data
    session = lambda d: runtimes.onnxruntime_session(d, spinning=False)  # noqa: E731
    with_gemms = pc.PadCachedInt8(data, session, gemms=True)
    without = pc.PadCachedInt8(data, session, gemms=False)
    assert with_gemms.gemms is not None and without.gemms is None
    for size in [(61, 83), (61, 83), (61, 83), (40, 40), (40, 40), (40, 40)]:
        x = picture(*size, seed=sum(size))
        np.testing.assert_array_equal(with_gemms(x).numpy(), without(x).numpy())
    head = with_gemms.heads[(61, 83)]
    assert isinstance(head, pc._Head) and head.gemms is with_gemms.gemms
    rest_inputs = {i.name for i in head.rest.session.get_inputs()}
    assert with_gemms.gemms.target in rest_inputs and with_gemms.gemms.source not in rest_inputs


@pytest.mark.parametrize(
    "flags, expected", [({"avx2", "avx512_vnni"}, True), ({"avx2", "amx_int8"}, True), ({"avx2"}, False)]
)
def test_gemms_run_where_onednn_has_int8_dot_products(monkeypatch, caffe_data, small_layers_too, flags, expected):
    monkeypatch.setattr(int8_gemm, "cpu_flags", lambda: frozenset(flags))
    assert int8_gemm.wanted() is expected
    run = pc.PadCachedInt8(caffe_data, runtimes.onnxruntime_session)
    assert (run.gemms is not None) is expected


def test_isa_cap_turns_them_off(monkeypatch):
    monkeypatch.setenv("FCNSEG_CPU_ISA", "avx2")
    assert not int8_gemm.wanted()
