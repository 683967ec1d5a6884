"""The pad-constant cache for int8 models: per input size, an onnxruntime graph of the trunk's first
layers that computes only the cells that depend on the image (fcnseg.inference.padcache's idea, on
the int8 model file of `fcnseg quantize`).

In the Caffe geometry the first convolution pads the image by 100 zero pixels, so at 500x500 about
31% of FCN-8s VGG16's work produces activations that are the same for every image of that size. The
int8 model (static QDQ) keeps its activations as uint8 maps between layers, and an int8 convolution
is exact integer arithmetic, so those constant cells are exact constants too. For each input size:

* the first image runs the whole model (dynamic H and W) and returns, besides the scores, the
  uint8 maps of the trunk; the per-size *head* graph is built from them (pure protobuf work plus a
  small session: the first layers' weights only);
* later images of that size run the head, whose layers compute only the dependent rectangle (the
  rectangles, and where computing them stops, come from padcache's own arithmetic, so the decision
  lives in one place): each layer's input is the computed rectangle framed by the cached uint8
  constants (Concat) and zero-padded at the map's edges (Pad with the map's zero point), then the
  original DequantizeLinear -> Conv/MaxPool -> QuantizeLinear chain with no padding of its own;
  the maps read whole later (the pool3/pool4 taps and the last partial layer) are framed whole;
* the *rest* session (the original graph from those maps to the scores, one per boundary) finishes.

The result equals the plain int8 model's (the same integer arithmetic on the same uint8 inputs).
Batches of more than one image, models without a Caffe-padded trunk (e.g. the `same` geometry)
and graphs of any other shape run the plain model. Up to ``max_sizes`` sizes are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.inference.padcache import PadConstantTrunk

Rect = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class _Layer:
    """One spatial layer of the int8 trunk: DequantizeLinear -> Conv/MaxPool [-> Relu] -> QuantizeLinear;
    the first convolution may run in fp32 on the image (no DequantizeLinear: ``dq`` None)."""

    dq: object | None  # onnx NodeProto
    op: object
    relu: object | None
    q: object
    zero_point: str | None  # the input map's zero point (initializer name), the value of real 0


@dataclass(frozen=True)
class _Chain:
    """The trunk of a QDQ model: ``maps[i]`` is the uint8 input map of ``layers[i]``, ``maps[i + 1]``
    its output; ``taps``: layers whose output is also read outside the chain (FCN's skips)."""

    quantize_image: object | None  # None where the first convolution reads the float image
    layers: list[_Layer]
    maps: list[str]
    taps: frozenset[int]
    trunk: nn.Module  # the layers' geometry as meta-device torch layers, for padcache's arithmetic


class _MetaTrunk(nn.Module):
    """The shape of a ClassifierTrunk (``features``, ``feature_taps``) for padcache's layout."""

    def __init__(self, features: list[nn.Module], taps: frozenset[int]) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.feature_taps = {f"tap{i}": i for i in sorted(taps)}

    def forward_taps(self, x, taps):  # pragma: no cover - never run: only the layout is used
        raise NotImplementedError


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _meta_layer(op, weight_dims) -> nn.Module | None:
    """The torch layer (meta device) with ``op``'s geometry, None where padcache could not follow it."""
    a = _attrs(op)
    kernel, strides = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if len(kernel) != 2 or kernel[0] != kernel[1] or strides[0] != strides[1] or len(set(pads)) > 1:
        return None
    if op.op_type == "MaxPool":
        if pads[0] or list(a.get("dilations", [1, 1])) != [1, 1]:
            return None
        return nn.MaxPool2d(kernel[0], strides[0], ceil_mode=bool(a.get("ceil_mode", 0)))
    if (
        a.get("group", 1) != 1
        or list(a.get("dilations", [1, 1])) != [1, 1]
        or a.get("auto_pad", b"NOTSET") != b"NOTSET"
    ):
        return None
    out_channels, in_channels = weight_dims[:2]
    return nn.Conv2d(in_channels, out_channels, kernel[0], strides[0], pads[0], device="meta")


def find_chain(proto) -> _Chain | None:
    """The int8 trunk of a QDQ model from `fcnseg quantize`, None for any other graph."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = defaultdict(list)
    producer = {}
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
        for name in node.output:
            producer[name] = node
    readers = [n for n in consumers.get("image", []) if n.op_type != "Shape"]  # Shape: the crops read its size
    if len(readers) != 1 or readers[0].op_type not in ("QuantizeLinear", "Conv"):
        return None
    outputs = {o.name for o in graph.output}

    def weight_dims(node):
        """The dims of a convolution's weight: int8 (dequantized) or, for the first one, fp32."""
        if node.op_type != "Conv" or len(node.input) < 2:
            return None
        if node.input[1] in inits and node.input[0] == "image":
            return list(inits[node.input[1]].dims)
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        return list(inits[dq.input[0]].dims)

    def quantized_output(op):
        """(Relu or None, QuantizeLinear) after ``op``; None where the chain does not go on."""
        after = consumers.get(op.output[0], [])
        relu = after[0] if len(after) == 1 and after[0].op_type == "Relu" else None
        if relu is not None:
            after = consumers.get(relu.output[0], [])
        if (
            len(after) != 1
            or after[0].op_type != "QuantizeLinear"
            or outputs & {*op.output, *(relu.output if relu else ())}
        ):
            return None
        return relu, after[0]

    quantize_image = readers[0] if readers[0].op_type == "QuantizeLinear" else None
    layers, maps, taps, meta_layers = [], [quantize_image.output[0] if quantize_image else "image"], set(), []
    while True:
        readers = [n for n in consumers.get(maps[-1], []) if n.op_type != "Shape"]
        if quantize_image is None and not layers:
            dq, nxt = None, [n for n in readers if weight_dims(n)]  # an fp32 first convolution
        elif len(readers) == 1 and readers[0].op_type == "DequantizeLinear":
            dq = readers[0]
            nxt = [n for n in consumers.get(dq.output[0], []) if n.op_type == "MaxPool" or weight_dims(n)]
        else:
            break
        if len(nxt) != 1:
            break
        op = nxt[0]
        if dq is not None and len(consumers.get(dq.output[0], [])) > 1 and layers:
            taps.add(len(layers) - 1)  # the previous layer's output is also read by a skip
        found = quantized_output(op)
        meta = _meta_layer(op, weight_dims(op))
        if found is None or meta is None:
            break
        zero_point = dq.input[2] if dq is not None and len(dq.input) > 2 and dq.input[2] else None
        layers.append(_Layer(dq, op, found[0], found[1], zero_point))
        maps.append(found[1].output[0])
        meta_layers.append(meta)
    if not layers:
        return None
    trunk = _MetaTrunk(meta_layers, frozenset(taps))
    if not PadConstantTrunk.applies_to(trunk):
        return None
    return _Chain(quantize_image, layers, maps, frozenset(taps), trunk)


def _strips(full: np.ndarray, clip: Rect, have: Rect) -> list[np.ndarray]:
    """The constants of ``full`` inside ``clip`` around ``have``: top, bottom, left, right."""
    (r0, r1), (c0, c1) = clip
    (h0, h1), (w0, w1) = have
    return [
        full[:, :, r0:h0, c0:c1],
        full[:, :, h1:r1, c0:c1],
        full[:, :, h0:h1, c0:w0],
        full[:, :, h0:h1, w1:c1],
    ]


class _Builder:
    """Collects the nodes and initializers of one head graph."""

    def __init__(self, proto) -> None:
        self.source = {i.name: i for i in proto.graph.initializer}
        self.producer = {o: n for n in proto.graph.node for o in n.output}
        self.constant_nodes = set()  # nodes computed from initializers alone (weights, shared biases)
        known = set(self.source)
        for node in proto.graph.node:
            if all(not i or i in known for i in node.input):
                self.constant_nodes.add(id(node))
                known.update(node.output)
        self.nodes, self.inits, self.used, self.count = [], [], set(), 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}__pc{self.count}"

    def constant(self, array: np.ndarray, stem: str) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def copy(self, node, inputs: dict[str, str], output: str, **attrs) -> None:
        """``node`` with its data input(s) renamed and its output named ``output``; the weights it
        reads (initializers, or DequantizeLinear nodes of initializers) come along."""
        import onnx

        names = [inputs.get(i, i) for i in node.input]
        for name in names:
            self.need(name)
        kept = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kept.update(attrs)
        self.nodes.append(onnx.helper.make_node(node.op_type, names, [output], name=self.name(node.name), **kept))

    def need(self, name: str) -> None:
        if not name or name in self.used:
            return
        self.used.add(name)
        if name in self.source:
            self.inits.append(self.source[name])
        elif name in self.producer and id(self.producer[name]) in self.constant_nodes:
            node = self.producer[name]  # a weight's dequantization, a shared bias: copy it along
            for i in node.input:
                self.need(i)
            self.nodes.append(node)

    def frame(self, c: str, full: np.ndarray, clip: Rect, have: Rect, stem: str) -> str:
        """The tile ``clip`` of a map: the computed rectangle ``c`` (at ``have``) framed by constants."""
        import onnx

        if clip == have:
            return c
        top, bottom, left, right = _strips(full, clip, have)
        middle = [self.constant(s, stem) for s in (left,) if s.shape[3]] + [c]
        middle += [self.constant(s, stem) for s in (right,) if s.shape[3]]
        if len(middle) > 1:
            row = self.name(stem)
            self.nodes.append(onnx.helper.make_node("Concat", middle, [row], axis=3))
            c = row
        column = [self.constant(s, stem) for s in (top,) if s.shape[2]] + [c]
        column += [self.constant(s, stem) for s in (bottom,) if s.shape[2]]
        if len(column) > 1:
            out = self.name(stem)
            self.nodes.append(onnx.helper.make_node("Concat", column, [out], axis=2))
            c = out
        return c

    def pad(self, c: str, clip: Rect, need: Rect, zero_point: str | None, stem: str, dtype=np.uint8) -> str:
        import onnx

        (r0, r1), (c0, c1) = clip
        (n0, n1), (m0, m1) = need
        pads = [0, 0, r0 - n0, c0 - m0, 0, 0, n1 - r1, m1 - c1]
        if not any(pads):
            return c
        value = zero_point or self.constant(np.zeros((), dtype), stem)
        self.need(value)
        out = self.name(stem)
        pads_name = self.constant(np.array(pads, np.int64), stem)
        self.nodes.append(onnx.helper.make_node("Pad", [c, pads_name, value], [out], mode="constant"))
        return out


def head_end(chain: _Chain, stop: int) -> int:
    """Where the head ends: after the trunk's last pooling (so one rest graph serves every size),
    or after the partial range where that reaches further."""
    pools = [i for i, layer in enumerate(chain.layers) if layer.op.op_type == "MaxPool"]
    return max(stop, pools[-1] + 1 if pools else stop)


def head_graph(proto, chain: _Chain, layout, maps: dict[str, np.ndarray], size: tuple[int, int]):
    """The per-size head: image (1 x 3 x H x W) -> the uint8 maps the rest of the model reads
    (named as in the full model), computing only the image-dependent rectangles up to
    ``layout.stop`` and whole maps from there to :func:`head_end`."""
    import onnx

    b = _Builder(proto)
    c = "image"
    if chain.quantize_image is not None:
        c = b.name("image_q")
        b.copy(chain.quantize_image, {}, c)
    end = head_end(chain, layout.stop)
    outputs = []
    for i in range(end):
        layer, stem, name = chain.layers[i], f"l{i}", chain.maps[i + 1]
        partial = i < layout.stop
        if partial and layout.tile[i]:
            c = b.frame(c, maps[chain.maps[i]], layout.clip[i], layout.have[i], stem)
            dtype = np.float32 if layer.dq is None else np.uint8  # an fp32 first convolution reads the image
            c = b.pad(c, layout.clip[i], layout.need[i], layer.zero_point, stem, dtype)
        if layer.dq is not None:
            dq = b.name(stem)
            b.copy(layer.dq, {layer.dq.input[0]: c}, dq)
            c = dq
        op = b.name(stem)
        unpadded = {"pads": [0, 0, 0, 0]} if partial and layer.op.op_type == "Conv" else {}
        b.copy(layer.op, {layer.op.input[0]: c}, op, **unpadded)
        if layer.relu is not None:
            relu = b.name(stem)
            b.copy(layer.relu, {layer.relu.input[0]: op}, relu)
            op = relu
        framed = partial and layout.whole[i]  # a rectangle, needed whole: frame it with its constants
        boundary = i in chain.taps or i == end - 1
        c = name if boundary and not framed else b.name(stem)
        b.copy(layer.q, {layer.q.input[0]: op}, c)
        if framed:  # the next layer reads the rectangle, unless the partial range ends here
            bounds = ((0, layout.sizes[i + 1][0]), (0, layout.sizes[i + 1][1]))
            whole = name if boundary else b.name(stem)
            b.nodes.append(
                onnx.helper.make_node("Identity", [b.frame(c, maps[name], bounds, layout.out[i], stem)], [whole])
            )
            c = whole if i == layout.stop - 1 else c
        if boundary:
            outputs.append(name)
    graph = onnx.helper.make_graph(
        b.nodes,
        "fcnseg_int8_head",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, *size])],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None) for n in outputs],
        b.inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return model, outputs


def rest_graph(model_bytes: bytes, inputs: list[str]):
    """The full model from the uint8 maps ``inputs`` to its outputs (the nodes they need): a fresh
    copy of the model with everything else deleted in place (the weights are never copied again)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    keep, seen, todo = set(), set(inputs), [o.name for o in graph.output]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producer:
            keep.add(producer[name])
            todo.extend(graph.node[producer[name]].input)
    for field, wanted in (
        (graph.node, lambda i, n: i in keep),
        (graph.initializer, lambda i, n: n.name in seen),
        (graph.input, lambda i, n: n.name in seen),  # the image stays where its size is read
        (graph.value_info, lambda i, n: False),
    ):
        for i in reversed(range(len(field))):
            if not wanted(i, field[i]):
                del field[i]
    graph.input.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None) for n in inputs)
    graph.name = "fcnseg_int8_rest"
    return model


@dataclass(frozen=True)
class _Rest:
    """The rest of the model from a boundary of uint8 maps (and the image, where its size is read)."""

    session: object
    needs_image: bool


@dataclass(frozen=True)
class _Head:
    session: object
    outputs: list[str]
    rest: _Rest


_SEEN = "seen"  # a size met once: it runs the plain model; the second image of that size builds its head


class PadCachedInt8:
    """x -> scores for an int8 model on onnxruntime, with per-size head graphs (module docstring).
    ``session`` makes an onnxruntime session from model bytes. A size's head is built when a second
    image of that size comes (a folder of photos in many sizes pays nothing for sizes met once)."""

    def __init__(self, model_bytes: bytes, session, max_sizes: int = 8) -> None:
        try:
            import onnx
        except ImportError:
            raise FcnsegError("the onnxruntime backend needs the onnx extra; pip install 'fcnseg[onnx]'") from None
        self.session, self.model_bytes = session, model_bytes
        self.proto = onnx.load_from_string(model_bytes)
        self.chain = find_chain(self.proto)
        self.max_sizes = max_sizes
        self.heads: OrderedDict[tuple, _Head | str | None] = OrderedDict()
        self.rests: dict[tuple, _Rest] = {}
        self.lock = threading.Lock()
        if self.chain is None:
            self.full = session(model_bytes)
            return
        capture = onnx.ModelProto()  # the model, also returning the trunk's uint8 maps
        capture.CopyFrom(self.proto)
        for name in self.chain.maps[1:] if self.chain.quantize_image is None else self.chain.maps:
            capture.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
        self.full = session(capture.SerializeToString())
        self.layouts = PadConstantTrunk(self.chain.trunk)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        image = x.float().contiguous().numpy()
        if self.chain is None or image.shape[0] != 1:
            return self._plain(image)
        size = tuple(image.shape[-2:])
        with self.lock:
            entry = self.heads.get(size)
            if size in self.heads:
                self.heads.move_to_end(size)
            else:
                self._remember(size, _SEEN)
        if isinstance(entry, _Head):
            maps = entry.session.run(entry.outputs, {"image": image})
            feeds = dict(zip(entry.outputs, maps))
            if entry.rest.needs_image:
                feeds["image"] = image
            return torch.from_numpy(entry.rest.session.run(["scores"], feeds)[0])
        if entry != _SEEN:  # new, or no saving at this size
            return self._plain(image)
        names = [m for m in self.chain.maps if m != "image"]
        results = self.full.run(["scores", *names], {"image": image})
        head = self._build(size, {"image": image, **dict(zip(names, results[1:]))})
        with self.lock:
            self._remember(size, head)
        return torch.from_numpy(results[0])

    def _remember(self, size: tuple, entry) -> None:
        self.heads[size] = entry
        while len(self.heads) > self.max_sizes:
            self.heads.popitem(last=False)

    def _plain(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.full.run(["scores"], {"image": image})[0])

    def _build(self, size: tuple[int, int], maps: dict[str, np.ndarray]) -> _Head | None:
        layout = self.layouts._layout(torch.empty(1, 3, *size, device="meta"), set(self.chain.taps))
        if layout is None:
            return None
        head, outputs = head_graph(self.proto, self.chain, layout, maps, size)
        key = tuple(outputs)
        if key not in self.rests:
            rest = self.session(rest_graph(self.model_bytes, outputs).SerializeToString())
            self.rests[key] = _Rest(rest, "image" in {i.name for i in rest.get_inputs()})
        return _Head(self.session(head.SerializeToString()), outputs, self.rests[key])
