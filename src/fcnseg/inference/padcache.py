"""Image-independent activations of a Caffe-geometry trunk, computed once per input size.

In the FCN reference geometry the first convolution pads the (normalised) image by 100 zero pixels.
Wherever a cell's receptive field lies wholly in that pad, its activation does not depend on the
image, only on the input size: at 500x500 that is 31% of FCN-8s VGG16's FLOPs (about half of
conv1, 41-46% of conv2-conv3, 29-37% of conv4). :class:`PadConstantTrunk` keeps, per input size,
what the images of that size need of those cells. A new size takes them from small all-zero maps
of the same sizes modulo the trunk's stride (constants depend only on a cell's place relative to the
map's edges: see :meth:`PadConstantTrunk._plan_from_zeros`), about a sixth of a 500x500 forward, so
even its first image runs the partial forward (a folder of photos in many sizes
gains from the cache at once); where that does not apply (small inputs), the first image's own
plain forward, run layer by layer, captures them. Each image computes, layer by layer, only the
*dependent rectangle* (the output cells whose receptive field touches the image), taking the halo
around it from the cached constants of the previous layer. The result equals the plain forward
(up to the float rounding of a different convolution shape).

Memory: per cached size only thin frames around each dependent rectangle, plus the whole constant
maps at the taps FCN reads (pool3, pool4) and at the end of the partial range. The cache keeps the
``max_sizes`` most recently used sizes within ``max_bytes`` (about 17 MB per size for FCN-8s VGG16 at
375x500 in fp32, half that in bf16; key: size, dtype, device and the weights' identity and version,
so weights changed in place are noticed). Eight sizes hold PASCAL VOC's common sizes, so a folder of
its photos reuses them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.geometry import layer_geometry
from fcnseg.models.layers import is_plain_conv

Interval = tuple[int, int]  # half-open [start, stop)


@dataclass(frozen=True)
class _Spatial:
    """A spatial layer run on an explicit tile with no padding of its own."""

    kernel: int
    stride: int
    padding: int
    is_pool: bool


def _spatial(layer: nn.Module) -> _Spatial | None:
    """The geometry of a layer the partial forward can run, None for elementwise layers.
    Raises ValueError for anything it cannot run exactly."""
    if isinstance(layer, (nn.ReLU, nn.Dropout, nn.Identity)):
        return None
    if isinstance(layer, nn.MaxPool2d):
        kernel, stride, padding, _ = layer_geometry(layer)
        if padding or layer.dilation not in (1, (1, 1)):
            raise ValueError("padded or dilated pooling")
        return _Spatial(kernel, stride, 0, True)
    if is_plain_conv(layer) or hasattr(layer, "forward_unpadded"):
        kernel, stride, padding, _ = layer_geometry(layer)
        if getattr(layer, "padding_mode", "zeros") != "zeros" or getattr(layer, "dilation", (1, 1)) not in (1, (1, 1)):
            raise ValueError("non-zero padding mode or dilation")
        return _Spatial(kernel, stride, padding, False)
    raise ValueError(f"unsupported layer {type(layer).__name__}")


def _run_unpadded(layer: nn.Module, tile: Tensor) -> Tensor:
    if isinstance(layer, nn.MaxPool2d):
        return F.max_pool2d(tile, layer.kernel_size, layer.stride, 0, 1, layer.ceil_mode)
    if is_plain_conv(layer):
        return F.conv2d(tile, layer.weight, layer.bias, layer.stride, 0, 1, layer.groups)
    return layer.forward_unpadded(tile)


def _dependent(geo: _Spatial, d: Interval, n_out: int) -> Interval:
    """The output cells whose window touches input cells ``d``."""
    k, s, p = geo.kernel, geo.stride, geo.padding
    return max(0, -((p - k + 1 + d[0]) // -s)), min(n_out, (d[1] - 1 + p) // s + 1)


@dataclass
class _Step:
    """What one layer of the partial range does for one input size (rectangles in its input's cells).

    The computed rectangle ``have`` enters; a *tile* step first frames it with cached constants to
    ``clip`` (and zero-pads to ``need``); other steps read it as is (``have == need``). Outside tile
    steps the layers run on exactly what the next layer needs, so only a block's first layer (after a
    pool, or at an edge of the map) pays for assembling a tile.
    """

    spatial: _Spatial | None
    tile: bool
    have: tuple[Interval, Interval]
    need: tuple[Interval, Interval]
    clip: tuple[Interval, Interval]
    out: tuple[Interval, Interval]
    frame: tuple[Tensor, ...] = ()
    full: Tensor | None = None  # the whole constant output, where the map is needed whole (taps)


class _Plan:
    """The partial forward for one input size: steps up to ``stop`` (exclusive) run on rectangles."""

    def __init__(self, steps: list[_Step], stop: int) -> None:
        self.steps, self.stop = steps, stop
        self.nbytes = sum(
            t.numel() * t.element_size()
            for step in steps
            for t in (*step.frame, *(() if step.full is None else (step.full,)))
        )


@dataclass
class _Layout:
    """The rectangles of the partial forward for one input size, per layer up to ``stop``
    (see :class:`_Step`); ``whole``: the layer's output is needed as a whole map (a tap, or the last)."""

    stop: int
    sizes: list
    tile: list
    have: list
    need: list
    clip: list
    out: list
    whole: list

    def step(self, i: int, spatial: _Spatial | None, frame: tuple[Tensor, ...], full: Tensor | None) -> _Step:
        """Layer ``i``'s step of this layout, with its constants."""
        return _Step(spatial, self.tile[i], self.have[i], self.need[i], self.clip[i], self.out[i], frame, full)


def _zero_map_side(geoms: list[_Spatial | None]) -> tuple[int, int]:
    """The side a zero map needs for a uniform middle through the layers ``geoms`` (those after the
    first map), and their total stride. An edge's effects reach, in first-map cells, each padded
    layer's padding and each pool's kernel less one (its last window overhangs the edge), times the
    stride before that layer; the side leaves that reach at both edges plus three cells of the last
    map for the middle that the check compares."""
    stride, reach = 1, 0
    for geo in geoms:
        if geo is not None:
            reach += (geo.padding + (geo.kernel - 1 if geo.is_pool else 0)) * stride
            stride *= geo.stride
    return 2 * reach + 3 * stride, stride


def _out_size(geo: _Spatial, n: int, ceil_mode: bool) -> int:
    """PyTorch's output length of a convolution / pooling (padding ``geo.padding``) on ``n`` cells."""
    span = n + 2 * geo.padding - geo.kernel
    if not ceil_mode:
        return span // geo.stride + 1
    out = -(-span // geo.stride) + 1
    return out - 1 if (out - 1) * geo.stride >= n + geo.padding else out


class PadConstantTrunk:
    """Replaces a ClassifierTrunk's ``forward_taps`` by one that reuses the pad-only activations.

    Applies only in inference (no grad, eval mode); anything else takes the trunk's own path.
    """

    def __init__(
        self,
        trunk: nn.Module,
        max_sizes: int = 8,
        max_bytes: int = 256 << 20,
        min_saving: float = 0.05,
        max_fraction: float = 0.9,
    ) -> None:
        self.trunk = trunk
        self.zero_scale = 1  # zero maps this many times the size their geometry asks for (doubles when short)
        self.zero_runs = 0  # sizes whose constants came from zero maps (diagnostics, tests)
        self.max_fraction = max_fraction  # a convolution whose image-dependent share is larger runs whole
        self.layers = list(trunk.features)
        self.geoms = [_spatial(layer) for layer in self.layers]
        self.max_sizes, self.max_bytes, self.min_saving = max_sizes, max_bytes, min_saving
        self.plans: OrderedDict[tuple, _Plan | None] = OrderedDict()
        self.lock = threading.Lock()
        self.plain = type(trunk).forward_taps.__get__(trunk)

    def __getstate__(self) -> dict:  # copies and pickles start with an empty cache
        return {k: v for k, v in self.__dict__.items() if k not in ("lock", "plans")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock(), plans=OrderedDict())

    @staticmethod
    def applies_to(trunk: nn.Module) -> bool:
        """A trunk whose first convolution pads by more than its kernel (so a pad-only region exists)
        and whose features are all layers the partial forward runs exactly."""
        features = getattr(trunk, "features", None)
        if not isinstance(features, nn.Sequential) or not hasattr(trunk, "feature_taps"):
            return False
        try:
            geoms = [_spatial(layer) for layer in features]
        except ValueError:
            return False
        first = next((g for g in geoms if g is not None), None)
        return first is not None and not first.is_pool and first.padding >= first.kernel

    # ----------------------------------------------------------------------------- planning

    def _key(self, x: Tensor, taps: set[int]) -> tuple:
        params = tuple(
            (t.data_ptr(), t._version) for layer in self.layers for t in (*layer.parameters(), *layer.buffers())
        )
        return (tuple(x.shape[-2:]), x.dtype, x.device, params, tuple(sorted(taps)))

    def _cached(self, key: tuple) -> tuple[bool, _Plan | None]:
        with self.lock:  # a server may predict from several threads
            if key in self.plans:
                self.plans.move_to_end(key)
                return True, self.plans[key]
            return False, None

    def _store(self, key: tuple, plan: _Plan | None) -> None:
        with self.lock:
            self.plans[key] = plan
            while len(self.plans) > 1 and (
                len(self.plans) > self.max_sizes or sum(p.nbytes for p in self.plans.values() if p) > self.max_bytes
            ):
                self.plans.popitem(last=False)

    def _layout(self, x: Tensor, taps: set[int]) -> _Layout | None:
        """The rectangles for ``x``'s size (pure arithmetic, no tensors), None where caching saves too little."""
        # 1. forward: map sizes and dependent rectangles, up to the layer where the image reaches all cells
        size = tuple(x.shape[-2:])
        sizes, dep = [size], [((0, size[0]), (0, size[1]))]
        total = saved = 0
        for layer, geo in zip(self.layers, self.geoms):
            if geo is not None:
                ceil_mode = geo.is_pool and layer.ceil_mode
                out_size = tuple(_out_size(geo, n, ceil_mode) for n in size)
                d = tuple(_dependent(geo, dep[-1][i], out_size[i]) for i in range(2))
                fraction = _area(d) / max(1, out_size[0] * out_size[1])
                if not geo.is_pool and fraction > self.max_fraction:
                    break  # little left to save: from here on the layers run whole
                size = out_size
                work = size[0] * size[1] * (1 if geo.is_pool else layer.weight[0].numel() * layer.weight.shape[0])
                total += work
                saved += work * (1 - fraction)
            else:
                d = dep[-1]
            sizes.append(size)
            dep.append(d)
        stop = len(sizes) - 1
        if stop == 0 or total == 0 or saved < self.min_saving * total:
            return None
        # 2. backward: what each layer computes (its dependent cells plus what the next layer reads)
        bounds = lambda i: ((0, sizes[i][0]), (0, sizes[i][1]))  # noqa: E731
        tile = [
            i == 0 or (i - 1) in taps or (self.geoms[i - 1] is not None and self.geoms[i - 1].is_pool)
            for i in range(stop)
        ]
        out, need, clip = [None] * stop, [None] * stop, [None] * stop
        out[stop - 1] = dep[stop]
        for i in range(stop - 1, -1, -1):
            geo = self.geoms[i]
            need[i] = out[i] if geo is None else tuple(_need(geo, out[i][a]) for a in range(2))
            clip[i] = tuple((max(0, lo), min(hi, b[1])) for (lo, hi), b in zip(need[i], bounds(i)))
            if geo is not None and geo.is_pool:
                need[i] = clip[i]  # a ceil-mode window past the edge: the pool clips it itself
            if clip[i] != need[i] and i > 0:
                tile[i] = True  # zero padding at the map's edge: assemble and pad here
            if i > 0:
                out[i - 1] = dep[i] if tile[i] else need[i]
        have = [bounds(0)] + out[:-1]
        for i in range(stop):
            if tile[i] and not all(c[0] <= h[0] and h[1] <= c[1] for h, c in zip(have[i], clip[i])):
                return None
            if not tile[i] and have[i] != need[i]:
                return None
        whole = [out[i] != bounds(i + 1) and (i in taps or i == stop - 1) for i in range(stop)]
        return _Layout(stop, sizes, tile, have, need, clip, out, whole)

    def _forward_capturing(
        self, x: Tensor, layout: _Layout | None, wanted: dict[int, str]
    ) -> tuple[dict[str, Tensor], _Plan | None]:
        """The plain forward of ``x`` (layer by layer, same outputs as the trunk's own), keeping on
        the way what later images of this size need: outside its dependent rectangle a map holds
        the same values for every image, so the first image of a size builds the cache for free."""
        out: dict[str, Tensor] = {}
        steps, plan_ok = [], layout is not None
        a = x
        for i, layer in enumerate(self.layers):
            capture = plan_ok and i < layout.stop
            frame = _frame(a[:1], layout.clip[i], layout.have[i]) if capture and layout.tile[i] else ()
            a = layer(a)
            if i in wanted:
                out[wanted[i]] = a
            if capture:
                if tuple(a.shape[-2:]) != layout.sizes[i + 1]:
                    plan_ok = False  # a layer the arithmetic got wrong: never use the partial forward
                    continue
                full = a[:1].clone() if layout.whole[i] else None
                steps.append(layout.step(i, self.geoms[i], frame, full))
        out["fc7"] = self.trunk.classifier[:6](a)
        return out, (_Plan(steps, layout.stop) if plan_ok else None)

    def _plan_from_zeros(self, x: Tensor, layout: _Layout) -> _Plan | None:
        """The plan for ``x``'s size from the maps of a small all-zero input instead of a whole forward.

        Outside the dependent rectangles a map's values depend only on where a cell sits relative to
        the map's edges (its receptive field holds nothing but padding), and only near an edge: a cell
        farther from every edge than the edge effects reach has the value of the map's uniform
        interior. So zero maps of the same sizes modulo the trunk's stride (the pooling windows meet
        the bottom and right edges alike), just large enough for a uniform middle, hold every
        constant: their top and left halves are the real maps' top and left bands, their bottom and
        right halves the real bottom and right bands, and their middle row and column stand for
        everything in between.

        The first layer sees only zeros (the image and its padding), so its output is uniform: it is
        computed on a kernel-sized zero input and spread over a first map whose side comes from the
        geometry of the layers after it (:func:`_zero_map_side`); the later layers run on that. For
        VGG16 in Caffe geometry at VOC's sizes that is 192 cells a side, where a zero image (its first
        map the image plus 198 cells of padding) took 262 or more; a new size's constants took 156-177
        ms on the emulated AVX2 class that way, now 127-177 (the capturing forward: 1.1 s). None
        (the first image captures instead) where the first map is not larger than that side, or
        where the zero maps' middles are not uniform (then later sizes try zero maps twice as large)."""
        side, modulus = _zero_map_side(self.geoms[1 : layout.stop])
        side *= self.zero_scale
        size = layout.sizes[1]  # the first layer's output
        canon = tuple(n if n <= side else side + (n - side) % modulus for n in size)
        if canon == size:
            return None
        kernel = self.geoms[0].kernel if self.geoms[0] is not None else 1
        z = self.layers[0](x.new_zeros((1, x.shape[1], kernel, kernel)).contiguous(memory_format=_format(x)))
        cell = z[..., :1, :1]
        if not bool((z == cell).all()):  # a first layer that is not the same everywhere on zeros
            return None
        z = cell.expand(*z.shape[:2], *canon).contiguous(memory_format=_format(z))
        maps, n = [None, z], canon
        for layer, geo in zip(self.layers[1 : layout.stop], self.geoms[1 : layout.stop]):
            z = layer(z) if geo is not None else layer(z.clone())  # an in-place ReLU keeps its input
            if geo is not None:
                n = tuple(_out_size(geo, k, geo.is_pool and layer.ceil_mode) for k in n)
            if tuple(z.shape[-2:]) != n:
                return None
            maps.append(z)
        index = [None]  # the input's: its tile is the image itself
        for i, z in enumerate(maps[1:], start=1):
            rows, cols = (_edge_index(layout.sizes[i][a], z.shape[-2 + a]) for a in range(2))
            if not (_uniform_middle(z, -2, rows) and _uniform_middle(z, -1, cols)):
                self.zero_scale *= 2  # edge effects reach further in this trunk: larger zero maps
                return None
            index.append((rows, cols))
        steps = []
        for i in range(layout.stop):
            if layout.tile[i] and i > 0:
                frame = tuple(
                    _gather(maps[i], index[i], region) for region in _frame_regions(layout.clip[i], layout.have[i])
                )
            else:  # the image itself: its tile is the image (clip == have)
                frame = _frame(x[:1], layout.clip[i], layout.have[i]) if layout.tile[i] else ()
            whole = ((0, layout.sizes[i + 1][0]), (0, layout.sizes[i + 1][1]))
            full = _gather(maps[i + 1], index[i + 1], whole) if layout.whole[i] else None
            steps.append(layout.step(i, self.geoms[i], frame, full))
        self.zero_runs += 1
        return _Plan(steps, layout.stop)

    # ----------------------------------------------------------------------------- forward

    def forward_taps(self, x: Tensor, taps: tuple[str, ...]) -> dict[str, Tensor]:
        trunk = self.trunk
        if trunk.training or torch.is_grad_enabled():
            return self.plain(x, taps)
        wanted = {trunk.feature_taps[name]: name for name in taps if name != "fc7"}
        key = self._key(x, set(wanted))
        found, plan = self._cached(key)
        if not found:  # a new size: constants from a small zero image, else from its own plain forward
            layout = self._layout(x, set(wanted))
            plan = self._plan_from_zeros(x, layout) if layout is not None else None
            if plan is None:
                out, plan = self._forward_capturing(x, layout, wanted)
                self._store(key, plan)
                return out
            self._store(key, plan)
        if plan is None:
            return self.plain(x, taps)
        out: dict[str, Tensor] = {}
        c = x  # the computed rectangle of the current map
        for index, step in enumerate(plan.steps):
            layer = self.layers[index]
            if step.tile:
                c = _assemble(step.frame, c, step.clip, step.have)
                pads = (
                    step.clip[1][0] - step.need[1][0],
                    step.need[1][1] - step.clip[1][1],
                    step.clip[0][0] - step.need[0][0],
                    step.need[0][1] - step.clip[0][1],
                )
                if any(pads):
                    c = F.pad(c, pads)
            c = layer(c) if step.spatial is None else _run_unpadded(layer, c)
            if step.full is not None:  # a map needed whole: the constants around the rectangle
                full = step.full.expand(x.shape[0], *step.full.shape[1:]).clone(memory_format=_format(c))
                (r0, r1), (c0, c1) = step.out
                full[:, :, r0:r1, c0:c1] = c
                if index in wanted:
                    out[wanted[index]] = full
                if index == plan.stop - 1:
                    c = full
            elif index in wanted:  # the rectangle is the whole map
                out[wanted[index]] = c
        for index in range(plan.stop, len(self.layers)):
            c = self.layers[index](c)
            if index in wanted:
                out[wanted[index]] = c
        out["fc7"] = trunk.classifier[:6](c)
        return out


def _need(geo: _Spatial, cells: Interval) -> Interval:
    """The input cells that output cells ``cells`` read (may run past the map: zero padding)."""
    return cells[0] * geo.stride - geo.padding, (cells[1] - 1) * geo.stride - geo.padding + geo.kernel


def _area(rect: tuple[Interval, Interval]) -> int:
    return (rect[0][1] - rect[0][0]) * (rect[1][1] - rect[1][0])


def _format(t: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )


def _frame(a: Tensor, clip: tuple[Interval, Interval], have: tuple[Interval, Interval]) -> tuple[Tensor, ...]:
    """The four strips of ``a`` inside ``clip`` and around ``have``: top, bottom, left, right."""
    (r0, r1), (c0, c1) = clip
    (h0, h1), (w0, w1) = have
    return (
        a[..., r0:h0, c0:c1].clone(),
        a[..., h1:r1, c0:c1].clone(),
        a[..., h0:h1, c0:w0].clone(),
        a[..., h0:h1, w1:c1].clone(),
    )


def _frame_regions(
    clip: tuple[Interval, Interval], have: tuple[Interval, Interval]
) -> tuple[tuple[Interval, Interval], ...]:
    """The four strips :func:`_frame` cuts, as (rows, cols) rectangles: top, bottom, left, right."""
    (r0, r1), (c0, c1) = clip
    (h0, h1), (w0, w1) = have
    return ((r0, h0), (c0, c1)), ((h1, r1), (c0, c1)), ((h0, h1), (c0, w0)), ((h0, h1), (w1, c1))


def _edge_index(n: int, m: int) -> Tensor:
    """Which of a zero map's ``m`` rows stands for each of a real map's ``n`` (n >= m): the top half
    as is, the bottom half counted from the bottom edge, the rows between as the middle one."""
    half = m // 2
    index = torch.full((n,), half, dtype=torch.long)
    index[:half] = torch.arange(half)
    index[n - (m - half) :] = torch.arange(half, m)
    return index


def _uniform_middle(z: Tensor, dim: int, index: Tensor) -> bool:
    """Whether the rows (``dim`` -2) or columns (-1) around ``z``'s middle are equal, where the middle
    stands for more than itself: the edge effects do not reach it."""
    m = z.shape[dim]
    if len(index) == m:  # the real map is this size: nothing stands in
        return True
    half = m // 2
    if half < 2:
        return False
    middle = z.narrow(dim, half - 1, 3).float()
    spread = (middle - middle.narrow(dim, 1, 1)).abs().max()
    return bool(spread <= 1e-2 * (middle.abs().max() + 1e-12))


def _gather(z: Tensor, index: tuple[Tensor, Tensor], region: tuple[Interval, Interval]) -> Tensor:
    """The real map's ``region`` built from zero map ``z`` (see :func:`_edge_index`)."""
    (r0, r1), (c0, c1) = region
    rows, cols = index
    return (
        z.index_select(-2, rows[r0:r1].to(z.device))
        .index_select(-1, cols[c0:c1].to(z.device))
        .contiguous(memory_format=_format(z))  # index_select made a new tensor: no second copy
    )


def _assemble(
    frame: tuple[Tensor, ...], c: Tensor, clip: tuple[Interval, Interval], have: tuple[Interval, Interval]
) -> Tensor:
    """The input tile ``clip``: the computed rectangle ``c`` (at ``have``) framed by constants."""
    (r0, r1), (c0, c1) = clip
    (h0, h1), (w0, w1) = have
    if (r0, r1, c0, c1) == (h0, h1, w0, w1):
        return c
    tile = torch.empty(
        (c.shape[0], c.shape[1], r1 - r0, c1 - c0), dtype=c.dtype, device=c.device, memory_format=_format(c)
    )
    top, bottom, left, right = frame
    tile[:, :, : h0 - r0] = top
    tile[:, :, h1 - r0 :] = bottom
    tile[:, :, h0 - r0 : h1 - r0, : w0 - c0] = left
    tile[:, :, h0 - r0 : h1 - r0, w1 - c0 :] = right
    tile[:, :, h0 - r0 : h1 - r0, w0 - c0 : w1 - c0] = c
    return tile


def install(model: nn.Module, max_sizes: int = 8) -> bool:
    """Give every applicable trunk in ``model`` the pad-constant forward (in place); True if any."""
    done = False
    for module in model.modules():
        if "forward_taps" in module.__dict__:  # installed before
            done = True
        elif PadConstantTrunk.applies_to(module):
            module.forward_taps = PadConstantTrunk(module, max_sizes).forward_taps
            done = True
    return done


def uninstall(model: nn.Module) -> None:
    """Undo :func:`install` (e.g. before torch.compile, which should trace the plain forward)."""
    for module in model.modules():
        module.__dict__.pop("forward_taps", None)


def installed(model: nn.Module) -> bool:
    """True if :func:`install` gave some trunk of ``model`` the pad-constant forward."""
    return any("forward_taps" in module.__dict__ for module in model.modules())
