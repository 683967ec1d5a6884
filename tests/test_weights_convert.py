"""Converters: tiny nets with random weights written in each published format, loaded by fcnseg,
compared with an independent forward of the same weights (the reference's own crops, written here)."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.cli import main
from fcnseg.data.normalize import mean_pixel, normalize, parse_mode
from fcnseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.weights import load
from fcnseg.weights.caffe import parse_caffemodel

WIDTH = 0.125
VGG = [
    ("conv1_1", 64),
    ("conv1_2", 64),
    ("conv2_1", 128),
    ("conv2_2", 128),
    ("conv3_1", 256),
    ("conv3_2", 256),
    ("conv3_3", 256),
    ("conv4_1", 512),
    ("conv4_2", 512),
    ("conv4_3", 512),
    ("conv5_1", 512),
    ("conv5_2", 512),
    ("conv5_3", 512),
]
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}


# ----------------------------------------------------------------- a tiny protobuf writer (Caffe layout)


def pb_varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_key(number, wire):
    return pb_varint(number << 3 | wire)


def pb_bytes(number, payload):
    return pb_key(number, 2) + pb_varint(len(payload)) + payload


def pb_int(number, value):
    return pb_key(number, 0) + pb_varint(value)


def pb_blob(array, legacy):
    array = np.asarray(array, dtype="<f4")
    data = pb_bytes(5, array.tobytes())
    if legacy:  # V1 files: num/channels/height/width, the shape padded to 4-D with leading ones
        dims = (1,) * (4 - array.ndim) + array.shape
        return b"".join(pb_int(i + 1, d) for i, d in enumerate(dims)) + data
    return pb_bytes(7, pb_bytes(1, b"".join(pb_varint(d) for d in array.shape))) + data


def caffemodel_bytes(layers, v1=False):
    """A NetParameter holding ``layers`` ({name: [arrays]}), plus blob-less layers Caffe would have."""
    out = [pb_bytes(1, b"tiny-fcn")]
    extra = {"data": [], "relu1_1": []}
    for name, blobs in {**extra, **layers}.items():
        kind = "Deconvolution" if name.startswith("upscore") else "Convolution"
        if v1:
            body = (
                pb_bytes(2, b"bottom")
                + pb_bytes(3, name.encode())
                + pb_bytes(4, name.encode())
                + pb_int(5, 39 if kind == "Deconvolution" else 4)
                + b"".join(pb_bytes(6, pb_blob(b, True)) for b in blobs)
            )
            out.append(pb_bytes(2, body))
        else:
            body = (
                pb_bytes(1, name.encode())
                + pb_bytes(2, kind.encode())
                + pb_bytes(3, b"bottom")
                + pb_bytes(4, name.encode())
                + b"".join(pb_bytes(7, pb_blob(b, False)) for b in blobs)
            )
            out.append(pb_bytes(100, body))
    return b"".join(out)


# ----------------------------------------------------------------- random reference weights


def random_reference(model="fcn8s", num_classes=5, seed=0):
    """{reference layer name: [weight, bias]} for a tiny FCN; upsamplers random too (not bilinear)."""
    rng = np.random.default_rng(seed)

    def conv(cout, cin, k, bias=True):
        w = rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)).astype(np.float32)
        return [w, rng.normal(0, 0.1, cout).astype(np.float32)] if bias else [w]

    layers, cin = {}, 3
    for name, c in VGG:
        c = int(c * WIDTH)
        layers[name] = conv(c, cin, 3)
        cin = c
    hidden = int(4096 * WIDTH)
    layers["fc6"] = conv(hidden, cin, 7)
    layers["fc7"] = conv(hidden, hidden, 1)
    layers["score_fr"] = conv(num_classes, hidden, 1)
    if model in ("fcn16s", "fcn8s", "fcn8s-atonce"):
        layers["upscore2"] = conv(num_classes, num_classes, 4, bias=False)
        layers["score_pool4"] = conv(num_classes, int(512 * WIDTH), 1)
    if model in ("fcn8s", "fcn8s-atonce"):
        layers["upscore_pool4"] = conv(num_classes, num_classes, 4, bias=False)
        layers["score_pool3"] = conv(num_classes, int(256 * WIDTH), 1)
    final = {"fcn32s": ("upscore", 64), "fcn16s": ("upscore16", 32)}.get(model, ("upscore8", 16))
    layers[final[0]] = conv(num_classes, num_classes, final[1], bias=False)
    if model == "fcn8s-atonce":
        layers["scale_pool4"] = [np.array([0.01], np.float32)]
        layers["scale_pool3"] = [np.array([0.0001], np.float32)]
    return layers


def reference_forward(layers, x, model="fcn8s"):
    """The reference nets (voc-fcn*/net.py) written out: pad 100, ceil pooling, the published crops."""
    t = {k: [torch.from_numpy(np.asarray(b)) for b in v] for k, v in layers.items()}
    h, pools = x, {}
    for name, _ in VGG:
        h = F.relu(F.conv2d(h, *t[name], padding=100 if name == "conv1_1" else 1))
        if name in POOL_AFTER:
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            pools[f"pool{len(pools) + 1}"] = h
    h = F.relu(F.conv2d(h, *t["fc6"]))
    h = F.relu(F.conv2d(h, *t["fc7"]))
    h = F.conv2d(h, *t["score_fr"])
    H, W = x.shape[-2:]
    if model == "fcn32s":
        return F.conv_transpose2d(h, t["upscore"][0], stride=32)[:, :, 19 : 19 + H, 19 : 19 + W]
    scale4, scale3 = (0.01, 1e-4) if model == "fcn8s-atonce" else (1, 1)
    up = F.conv_transpose2d(h, t["upscore2"][0], stride=2)
    s4 = F.conv2d(pools["pool4"] * scale4, *t["score_pool4"])[:, :, 5 : 5 + up.shape[2], 5 : 5 + up.shape[3]]
    h = up + s4
    if model == "fcn16s":
        return F.conv_transpose2d(h, t["upscore16"][0], stride=16)[:, :, 27 : 27 + H, 27 : 27 + W]
    up = F.conv_transpose2d(h, t["upscore_pool4"][0], stride=2)
    s3 = F.conv2d(pools["pool3"] * scale3, *t["score_pool3"])[:, :, 9 : 9 + up.shape[2], 9 : 9 + up.shape[3]]
    return F.conv_transpose2d(up + s3, t["upscore8"][0], stride=8)[:, :, 31 : 31 + H, 31 : 31 + W]


def image(h=37, w=45, seed=1):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 50


# ----------------------------------------------------------------- caffemodel


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1-layers"])
@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
def test_caffemodel_logits_equal_reference_forward(tmp_path, arch, v1):
    layers = random_reference(arch)
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel_bytes(layers, v1=v1))
    model, meta = load(path)
    assert meta["model_name"] == arch and meta["normalization"] == "caffe"
    assert meta["model_kwargs"] == {"num_classes": 5, "backbone": "vgg16", "geometry": "caffe", "width": WIDTH}
    x = image()
    with torch.no_grad():
        ours, ref = model(x), reference_forward(layers, x, arch)
    assert ours.shape == ref.shape == (1, 5, 37, 45)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_caffe_reader_reads_both_layouts_the_same():
    layers = random_reference("fcn16s")
    new, old = parse_caffemodel(caffemodel_bytes(layers)), parse_caffemodel(caffemodel_bytes(layers, v1=True))
    assert set(new) == set(old) == set(layers)  # blob-less layers (data, relu) are skipped
    assert new["conv3_1"].type == "Convolution" and old["conv3_1"].type == "4"
    for name in layers:
        for a, b, c in zip(new[name].blobs, old[name].blobs, layers[name]):
            assert a.shape == c.shape and np.array_equal(a, c) and np.array_equal(b.reshape(c.shape), c)


def test_convert_writes_an_ordinary_checkpoint(tmp_path, capsys):
    layers = random_reference("fcn8s", num_classes=21)
    src = tmp_path / "fcn8s-heavy-pascal.caffemodel"
    src.write_bytes(caffemodel_bytes(layers))
    assert main(["weights", "convert", str(src), "--out", str(tmp_path / "fcn8s-voc.pt")]) == 0
    ckpt = load_checkpoint(tmp_path / "fcn8s-voc.pt")
    assert ckpt["meta"]["class_names"][15] == "person" and ckpt["meta"]["normalization"] == "caffe"
    model, _ = model_from_checkpoint(ckpt)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference_forward(layers, x), rtol=1e-4, atol=1e-4)
    # the Python surface: create_model(..., weights=FILE) and Segmenter.from_pretrained(FILE)
    net = fcnseg.create_model("fcn8s", num_classes=21, geometry="caffe", weights=str(src))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(layers, x), rtol=1e-4, atol=1e-4)
    seg = fcnseg.Segmenter.from_pretrained(str(src), fast=False)
    assert seg.normalization == "caffe" and seg.num_classes == 21
    mask = seg.predict(np.zeros((20, 30, 3), np.uint8))
    assert mask.shape == (20, 30)


# ----------------------------------------------------------------- FCN-AlexNet (CaffeNet trunk)

# voc-fcn-alexnet/net.py: (name, channels, kernel, stride, pad, group); pool (3x3/2) + LRN after
# conv1 and conv2, pool after conv5.
CAFFENET = [
    ("conv1", 96, 11, 4, 100, 1),
    ("conv2", 256, 5, 1, 2, 2),
    ("conv3", 384, 3, 1, 1, 1),
    ("conv4", 384, 3, 1, 1, 2),
    ("conv5", 256, 3, 1, 1, 2),
]


def random_caffenet(num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    layers, cin = {}, 3
    for name, c, k, _, _, group in CAFFENET:
        c = int(c * WIDTH)
        layers[name] = [
            rng.normal(0, (2 / (cin // group * k * k)) ** 0.5, (c, cin // group, k, k)).astype(np.float32),
            rng.normal(0, 0.1, c).astype(np.float32),
        ]
        cin = c
    hidden = int(4096 * WIDTH)
    for name, cout, c_in, k in (
        ("fc6", hidden, cin, 6),
        ("fc7", hidden, hidden, 1),
        ("score_fr", num_classes, hidden, 1),
    ):
        layers[name] = [
            rng.normal(0, (2 / (c_in * k * k)) ** 0.5, (cout, c_in, k, k)).astype(np.float32),
            rng.normal(0, 0.1, cout).astype(np.float32),
        ]
    layers["upscore"] = [rng.normal(0, 0.05, (num_classes, num_classes, 63, 63)).astype(np.float32)]
    return layers


def caffe_lrn(x, size=5, alpha=1e-4, beta=0.75):
    """Caffe's LRN (ACROSS_CHANNELS, k = 1): x / (1 + alpha / size * sum of x^2 over size channels)^beta."""
    sq = F.pad(x * x, (0, 0, 0, 0, size // 2, size // 2))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (1 + alpha / size * window) ** beta


def caffenet_reference_forward(layers, x):
    """The reference FCN-AlexNet written out: groups as split convolutions, Caffe's LRN, the
    published crop (val.prototxt: offset 18)."""
    t = {k: [torch.from_numpy(np.asarray(b)) for b in v] for k, v in layers.items()}
    h = x
    for name, _, _, stride, pad, group in CAFFENET:
        w, b = t[name]
        parts = zip(h.chunk(group, 1), w.chunk(group, 0), b.chunk(group, 0))
        h = F.relu(torch.cat([F.conv2d(hi, wi, bi, stride, pad) for hi, wi, bi in parts], 1))
        if name in ("conv1", "conv2", "conv5"):
            h = F.max_pool2d(h, 3, 2, ceil_mode=True)
        if name in ("conv1", "conv2"):
            h = caffe_lrn(h)
    h = F.relu(F.conv2d(h, *t["fc6"]))
    h = F.relu(F.conv2d(h, *t["fc7"]))
    h = F.conv_transpose2d(F.conv2d(h, *t["score_fr"]), t["upscore"][0], stride=32)
    return h[:, :, 18 : 18 + x.shape[-2], 18 : 18 + x.shape[-1]]


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1-layers"])
def test_fcn_alexnet_caffemodel_logits_equal_reference_forward(tmp_path, v1):
    layers = random_caffenet(num_classes=21)
    path = tmp_path / "fcn-alexnet-pascal.caffemodel"  # the published name: the registry's classes
    path.write_bytes(caffemodel_bytes(layers, v1=v1))
    model, meta = load(path)
    assert meta["model_name"] == "fcn32s" and meta["normalization"] == "caffe"
    assert meta["model_kwargs"] == {"num_classes": 21, "backbone": "caffenet", "geometry": "caffe", "width": WIDTH}
    assert meta["class_names"][15] == "person" and model.crop_offsets() == {"upscore32": 18}
    for x in (image(), image(64, 50, seed=2)):
        with torch.no_grad():
            ours, ref = model(x), caffenet_reference_forward(layers, x)
        assert ours.shape == ref.shape == (1, 21, *x.shape[-2:])
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    net = fcnseg.create_model("fcn32s", backbone="caffenet", geometry="caffe", weights=str(path))
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
    if not v1:  # the bf16 fast path runs it too (LRN in float32: CPU avg_pool3d has no bf16 kernel)
        from fcnseg.inference.fastpath import prepare_model, run_model

        fast = run_model(prepare_model(net, True, 21), x, True)
        assert fast.dtype == torch.float32 and (fast.argmax(1) == ref.argmax(1)).float().mean() > 0.95


def test_per_model_mean_travels_with_the_converted_model(tmp_path):
    """SIFT Flow's nets subtract their own BGR mean; the converted checkpoint says so and
    normalize() subtracts it."""
    layers = random_reference("fcn32s", num_classes=33)
    heads = ("score_fr", "upscore")
    two_headed = {
        **{k: v for k, v in layers.items() if k not in heads},
        **{k + "_sem": layers[k] for k in heads},
        **{k + "_geo": random_reference("fcn32s", num_classes=3, seed=5)[k] for k in heads},
    }
    src = tmp_path / "siftflow-fcn32s-heavy.caffemodel"
    src.write_bytes(caffemodel_bytes(two_headed))
    assert main(["weights", "convert", str(src), "--out", str(tmp_path / "siftflow.pt")]) == 0
    mode = load_checkpoint(tmp_path / "siftflow.pt")["meta"]["normalization"]
    assert parse_mode(mode) == ("caffe", (114.578, 115.294, 108.353))
    rgb = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    expected = rgb.flip(1).float() - torch.tensor([114.578, 115.294, 108.353]).view(3, 1, 1)
    torch.testing.assert_close(normalize(rgb, mode), expected)
    assert not torch.allclose(normalize(rgb, "caffe"), expected, atol=1)  # the PASCAL mean differs
    assert mean_pixel(mode) == (108, 115, 115)
    assert fcnseg.Segmenter.from_pretrained(str(tmp_path / "siftflow.pt"), fast=False).normalization == mode


# ----------------------------------------------------------------- pytorch-fcn and torchvision


def pytorch_fcn_state(layers):
    state = {}
    for name, blobs in layers.items():
        if name.startswith("scale_"):
            continue
        for kind, blob in zip(("weight", "bias"), blobs):
            state[f"{name}.{kind}"] = torch.from_numpy(blob.copy())
    return state


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s-atonce"])
def test_pytorch_fcn_state_dict(tmp_path, arch):
    layers = random_reference(arch, num_classes=21)
    path = tmp_path / f"{arch}_from_caffe.pth"
    # 2017-era files: the legacy (non-zip) serialisation
    torch.save(pytorch_fcn_state(layers), path, _use_new_zipfile_serialization=False)
    model, meta = load(path, model=arch)  # pytorch-fcn's fcn8s and fcn8s-atonce files have equal keys
    assert meta["model_name"] == arch
    x = image(29, 33)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(layers, x, arch), rtol=1e-4, atol=1e-4)


def resnet_reference_forward(state, x, depths=(3, 4, 6, 3)):
    """torchvision's fcn_resnet50 written out with F.*: dilated layer3/4, FCNHead, bilinear resize."""

    def bn(h, p):
        return F.batch_norm(
            h,
            state[p + ".running_mean"],
            state[p + ".running_var"],
            state[p + ".weight"],
            state[p + ".bias"],
            False,
            0.0,
            1e-5,
        )

    h = F.relu(bn(F.conv2d(x, state["backbone.conv1.weight"], stride=2, padding=3), "backbone.bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    dilation = 1
    for layer, (blocks, stride, dilate) in enumerate(zip(depths, (1, 2, 2, 2), (False, False, True, True)), 1):
        previous = dilation
        if dilate:
            dilation, stride = dilation * stride, 1
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}"
            s, d = (stride, previous) if b == 0 else (1, dilation)
            out = F.relu(bn(F.conv2d(h, state[p + ".conv1.weight"]), p + ".bn1"))
            out = F.relu(bn(F.conv2d(out, state[p + ".conv2.weight"], stride=s, padding=d, dilation=d), p + ".bn2"))
            out = bn(F.conv2d(out, state[p + ".conv3.weight"]), p + ".bn3")
            short = (
                h
                if b > 0 or p + ".downsample.0.weight" not in state
                else bn(F.conv2d(h, state[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            )
            h = F.relu(out + short)
    h = F.relu(bn(F.conv2d(h, state["classifier.0.weight"], padding=1), "classifier.1"))
    h = F.conv2d(h, state["classifier.4.weight"], state["classifier.4.bias"])
    return F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)


def torchvision_fcn_state(num_classes=21):
    torch.manual_seed(3)
    net = fcnseg.models.create_model("fcn-resnet50", num_classes, width=WIDTH)
    state = {k: (torch.randn_like(v) * 0.1 if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    aux_in, aux_mid = int(1024 * WIDTH), int(256 * WIDTH)
    state.update(
        {
            "aux_classifier.0.weight": torch.randn(aux_mid, aux_in, 3, 3),
            "aux_classifier.1.weight": torch.ones(aux_mid),
            "aux_classifier.1.bias": torch.zeros(aux_mid),
            "aux_classifier.1.running_mean": torch.zeros(aux_mid),
            "aux_classifier.1.running_var": torch.ones(aux_mid),
            "aux_classifier.1.num_batches_tracked": torch.tensor(0),
            "aux_classifier.4.weight": torch.randn(num_classes, aux_mid, 1, 1),
            "aux_classifier.4.bias": torch.zeros(num_classes),
        }
    )
    return state


def test_torchvision_fcn_resnet_with_aux_head(tmp_path, caplog):
    state = torchvision_fcn_state()
    path = tmp_path / "fcn_resnet50_coco-1167a1af.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        model, meta = load(path)
    assert "aux_classifier" in caplog.text and "dropped" in caplog.text
    assert meta["model_name"] == "fcn-resnet50" and meta["normalization"] == "imagenet"
    x = image(40, 36)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet_reference_forward(state, x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- bad input: one line, exit 2


def test_bad_weight_files_are_one_line_errors(tmp_path, capsys):
    layers = random_reference("fcn8s")
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(caffemodel_bytes(layers)[:-5000])
    alexnet = tmp_path / "alexnet.caffemodel"  # AlexNet names, VGG shapes
    alexnet.write_bytes(
        caffemodel_bytes({"conv1": layers["conv1_1"], "fc6": layers["fc6"], "score_fr": layers["score_fr"]})
    )
    wrong = dict(layers, conv3_2=[np.zeros((7, 32, 3, 3), np.float32), np.zeros(7, np.float32)])
    wrong_shape = tmp_path / "wrong.caffemodel"
    wrong_shape.write_bytes(caffemodel_bytes(wrong))
    state = pytorch_fcn_state(layers)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "fc7.bias"}, missing)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "score_extra.weight": torch.zeros(5, 5, 1, 1)}, extra)
    cases = {
        truncated: "looks like a Caffe model but is truncated at byte",
        alexnet: "conv1 has shape 8x3x3x3",
        wrong_shape: "conv3_2 has shape",
        missing: "no weights for backbone.classifier.3.bias",
        extra: "score_extra",
    }
    for path, expected in cases.items():
        out = tmp_path / f"{path.stem}.pt"
        assert main(["weights", "convert", str(path), "--out", str(out)]) == 2, path
        err = capsys.readouterr().err.strip()
        assert expected in err and str(path) in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert (
        main(
            ["weights", "convert", str(tmp_path / "x.caffemodel"), "--model", "fcn32s", "--out", str(tmp_path / "y.pt")]
        )
        == 2
    )
    truncated.write_bytes(caffemodel_bytes(layers))
    assert main(["weights", "convert", str(truncated), "--model", "fcn32s", "--out", str(tmp_path / "y.pt")]) == 2
    assert "holds an fcn8s" in capsys.readouterr().err


def test_unknown_name_suggests_the_closest(capsys):
    with pytest.raises(FcnsegError, match="did you mean fcn8s-voc"):
        load("fcn8s-vco")
    assert main(["weights", "download", "fcn8-voc"]) == 2
    assert "did you mean fcn8s-voc" in capsys.readouterr().err
