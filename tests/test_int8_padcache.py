"""The int8 pad-constant cache (fcnseg.inference.int8_padcache): per input size, a head graph that
computes only the image-dependent cells of a Caffe-geometry int8 model, equal to the plain model."""

import numpy as np
import onnx
import pytest
import torch

from fcnseg.data.normalize import normalize
from fcnseg.inference import Segmenter, int8, runtimes
from fcnseg.inference import int8_padcache as pc
from fcnseg.inference.export import onnx_bytes
from fcnseg.models import create_model

META = {"model_name": "fcn8s", "model_kwargs": {"num_classes": 6, "width": 1 / 16}, "normalization": "imagenet"}


def picture(height, width, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (1, 3, height, width), np.uint8)
    return normalize(torch.from_numpy(rgb), "imagenet")


def tiny(geometry):
    torch.manual_seed(0)
    model = create_model("fcn8s", 6, width=1 / 16, geometry=geometry).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def caffe_int8():
    model = tiny("caffe")
    meta = {**META, "model_kwargs": {**META["model_kwargs"], "geometry": "caffe"}}
    return model, meta, int8.quantize(model, meta, [picture(64, 80, s) for s in range(2)])


def close(got, want):
    """The same integer arithmetic on the same uint8 maps; only the fp32 first convolution may round
    differently on a smaller tile (a uint8 step, rarely), so allow a hair."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-3 * (np.abs(want).max() + 1e-6)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99


def plain(data):
    session = runtimes.onnxruntime_session(data)
    return lambda x: session.run(["scores"], {"image": x.numpy()})[0]


def test_head_graphs_equal_the_plain_int8_model(caffe_int8):
    _, _, data = caffe_int8
    chain = pc.find_chain(onnx.load_from_string(data))
    assert chain is not None and len(chain.taps) == 2  # pool3 and pool4 feed FCN-8s' skips
    run, reference = runtimes.load("onnxruntime", data), plain(data)
    assert isinstance(run, pc.PadCachedInt8)
    for size in [(61, 83), (40, 40), (61, 83), (61, 83), (40, 40), (40, 40), (61, 83), (37, 101)]:
        x = picture(*size, seed=sum(size))
        close(run(x).numpy(), reference(x))
    assert isinstance(run.heads[(61, 83)], pc._Head) and isinstance(run.heads[(40, 40)], pc._Head)
    assert run.heads[(37, 101)] == pc._SEEN  # met once: the plain model, no head built
    assert len(run.rests) == 1  # one rest graph serves every size


def test_head_computes_only_the_dependent_cells(caffe_int8):
    _, _, data = caffe_int8
    run = runtimes.load("onnxruntime", data)
    size = (50, 60)
    x = picture(*size)
    names = run.chain.maps[1:]  # maps[0] is the image: the first convolution stays fp32
    assert run.chain.maps[0] == "image" and run.chain.layers[0].dq is None
    maps = dict(zip(names, run.full.run(names, {"image": x.numpy()})), image=x.numpy())
    layout = run.layouts._layout(torch.empty(1, 3, *size, device="meta"), set(run.chain.taps))
    head, outputs = pc.head_graph(run.proto, run.chain, layout, maps, size)
    assert len(outputs) == 3  # pool3, pool4 and pool5: the rest graph's inputs
    shapes = onnx.shape_inference.infer_shapes(head).graph.value_info
    convs = [n for n in head.graph.node if n.op_type == "Conv"]
    first = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in shapes}[convs[0].input[0]]
    assert first[2] * first[3] < (size[0] + 200) * (size[1] + 200) / 10  # plain: 250 x 260 (pad 100)
    assert all(list(a.ints) == [0, 0, 0, 0] for a in convs[0].attribute if a.name == "pads")


def test_batches_and_other_geometries_run_the_plain_model(caffe_int8):
    model, meta, data = caffe_int8
    run, reference = runtimes.load("onnxruntime", data), plain(data)
    batch = torch.cat([picture(30, 30, 1), picture(30, 30, 2)])
    for _ in range(3):
        close(run(batch).numpy(), reference(batch))
    assert not run.heads  # batches of two never build a head
    same = tiny("same")
    same_int8 = int8.quantize(same, META, [picture(32, 32)])
    assert pc.find_chain(onnx.load_from_string(same_int8)) is None  # no pad-only cells to skip
    assert pc.find_chain(onnx.load_from_string(onnx_bytes(model, meta))) is None  # fp32 export
    run = runtimes.load("onnxruntime", same_int8)
    x = picture(33, 47)
    for _ in range(3):
        close(run(x).numpy(), plain(same_int8)(x))


def test_segmenter_predicts_the_same_masks_through_the_cache(caffe_int8, tmp_path):
    _, meta, data = caffe_int8
    seg = Segmenter(None, meta, backend="onnxruntime", onnx_model=data)
    image = np.random.default_rng(3).integers(0, 256, (45, 70, 3), np.uint8)
    masks = [seg.predict(image) for _ in range(3)]
    assert isinstance(seg._run.heads[(45, 70)], pc._Head)
    assert all(np.array_equal(m, masks[0]) for m in masks)


def test_old_sizes_are_forgotten(caffe_int8):
    _, _, data = caffe_int8
    run = pc.PadCachedInt8(data, runtimes.onnxruntime_session, max_sizes=2)
    for size in [(30, 30), (31, 30), (32, 30)]:
        run(picture(*size))
    assert list(run.heads) == [(31, 30), (32, 30)]


def test_sessions_run_in_turn_without_spinning_threads(caffe_int8):
    """The head and rest graphs run one after the other on the same cores: their threads sleep
    between runs (a spinning head's threads would take cores from the rest graph)."""
    _, _, data = caffe_int8
    run = runtimes.load("onnxruntime", data)
    for _ in range(2):
        run(picture(40, 40))
    sessions = [run.full, run.heads[(40, 40)].session, run.heads[(40, 40)].rest.session]
    for session in sessions:
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = runtimes.onnxruntime_session(data)  # a session of its own keeps onnxruntime's default
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's own default
        default.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
