"""Batch-1 inference speed of FCN-8s VGG16: every path fcnseg offers, side by side with onnxruntime and
OpenVINO, per CPU class, with the machine's measured fp32, bf16 and int8 peaks and each path's share.

    python benchmarks/bench_inference.py [--reps 3] [--folder 20] [--classes native avx2] [--size 500]
                                         [--width 1.0] [--geometries caffe] [--variants ...] [--extra]
                                         [--rss] [--calib 4]

Each CPU class gets a header (CPU model, ISA: AVX2 / AVX512 / VNNI / bf16 / AMX, threads, load
average, measured peaks, whether the fast path is on), a single-image table and a folder table:

  native     this CPU as it is
  avx2       this CPU run as an AVX2-only one (no AVX512, VNNI, bf16), in a child process with
             FCNSEG_CPU_ISA=avx2 (fcnseg's dispatch), ONEDNN_MAX_CPU_ISA=AVX2 (torch's and OpenVINO's
             oneDNN kernels) and MKL_ENABLE_INSTRUCTIONS=AVX2; onnxruntime has no such switch and keeps
             its best kernels there, so that class flatters onnxruntime. Skipped on a CPU without
             AVX512 (its native class is that class). int8 rows are native only.

Single image (--size, default 500x500), variants timed side by side (rounds interleave them, so load
from other processes hits them alike; --variants picks some):

  naive fp32            model(x) under torch.no_grad, NCHW fp32, torch.nn's layers: what a plain PyTorch user runs
  fcnseg default        what Segmenter runs on this class: where the CPU has native bf16 the fast path
                        (bf16 weights, fp32 score head, split first conv), else fp32; both with
                        channels_last + inference_mode, fc6/fc7 as one packed GEMM, per-class upsamplers,
                        plus the pad-constant cache (fcnseg.inference.padcache)
  default, no padcache  the same without the pad-constant cache
  default, no winograd  the same without Winograd F(4x4, 3x3) for the wide 3x3 convolutions (fp32 path
                        only: on a bf16 CPU it is the default itself; fcnseg.inference.winograd)
  onnxruntime fp32      the ONNX export on onnxruntime's CPU provider
  openvino default      the same ONNX file compiled by OpenVINO with its default for this class (bf16
                        where the CPU has it, f32 otherwise), static input shape; skipped with a note if
                        the `openvino` extra is not installed
  int8 onnxruntime      `fcnseg quantize`'s model (onnxruntime static QDQ, per-channel 7-bit weights,
                        calibrated on --calib images) on onnxruntime, with the per-size int8 head that
                        computes only the image-dependent cells (fcnseg.inference.int8_padcache; built
                        when a size comes twice, here in the warm-up)
  int8 openvino         the same int8 file on OpenVINO: fcnseg's int8 path with --backend openvino
                        (both int8 rows run as Segmenter runs them: dynamic height and width)
  --extra adds:         bf16 autocast (the textbook recipe) and fast+compile (torch.compile, freezing)

Folder (--folder N, default 20): N images in PASCAL VOC's mix of sizes, one at a time, as a new
`fcnseg predict` meets them: fcnseg's default prepared fresh (per-size caches cold), plain PyTorch,
onnxruntime and OpenVINO with dynamic shapes; total seconds and argmax agreement with plain PyTorch.

Reported: median ms, effective GFLOP/s (FLOPs of the plain model / time, counted by
fcnseg.models.count_flops; the pad cache computes fewer), its share of the peak of the kernels the
path runs (fp32, bf16 or int8), measured in the same run (torch matmul 2048^3 or a 3x3 conv; int8:
torch._int_mm 2048^3), speedup over naive, argmax agreement with naive fp32 (all pixels, and pixels
whose fp32 top-2 scores differ by more than 1% of the score range), the largest score difference
relative to the largest score, setup seconds (preparation, quantization, compilation) and, with
--rss, the peak RSS of a fresh process. Random weights: FCN score layers start at zero (every argmax
would be 0), so they get N(0, 0.01) weights here; calibration images are smooth random pictures.
Agreement on trained models is what benchmarks/int8_agreement.py measures.
The process keeps freed memory in its heap, as Segmenter does (`devices.keep_freed_cpu_memory`),
so the plain torch rows get that too; onnxruntime and OpenVINO keep their own memory pools.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fcnseg.data.normalize import normalize
from fcnseg.devices import keep_freed_cpu_memory
from fcnseg.inference import fastpath, runtimes
from fcnseg.inference.export import onnx_bytes

NUM_CLASSES = 21
Forward = Callable[[torch.Tensor], torch.Tensor]


def build_model(geometry: str, width: float) -> nn.Module:
    """A randomly initialised FCN-8s whose zero-initialised layers get N(0, 0.01) weights."""
    from fcnseg.models import create_model

    torch.manual_seed(0)
    model = create_model("fcn8s", NUM_CLASSES, geometry=geometry, width=width).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.01)
    return model


def flops(model: nn.Module, size: int | tuple[int, int]) -> int:
    try:
        from fcnseg.models import count_flops
    except ImportError:
        from fcnseg.models.flops import count_flops
    return count_flops(model, (size, size) if isinstance(size, int) else size)


def make_input(size: int, seed: int = 0, width: int | None = None) -> torch.Tensor:
    """A normalised 1x3xSxW batch (W = S unless given) from a smooth random picture (photo-like,
    not white noise)."""
    width = width or size
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, size // 16 + 1, width // 16 + 1)).astype(np.float32))
    image = nn.functional.interpolate(small, size=(size, width), mode="bicubic", align_corners=False)
    return normalize(image.clamp(0, 255).to(torch.uint8), "imagenet")


# ------------------------------------------------------------------------------------- variants
# Each factory takes a model it may modify in place (and the args) and returns x -> float32 scores.

META = {"model_name": "fcn8s", "model_kwargs": {"num_classes": NUM_CLASSES}, "normalization": "imagenet"}


def naive(model: nn.Module, args) -> Forward:
    from fcnseg.models.layers import to_plain_torch_layers

    model = to_plain_torch_layers(copy.deepcopy(model))  # torch.nn's layers; the caller's model is
    # the one the other variants copy, so it keeps fcnseg's

    def run(x):
        with torch.no_grad():
            return model(x)

    return run


def fcnseg_default(model: nn.Module, args) -> Forward:
    fast = fastpath.fast_path_supported()
    fastpath.prepare_model(model, fast, NUM_CLASSES)
    return lambda x: fastpath.run_model(model, x, fast)


def default_no_padcache(model: nn.Module, args) -> Forward:
    fast = fastpath.fast_path_supported()
    fastpath.prepare_model(model, fast, NUM_CLASSES, pad_constants=False)
    return lambda x: fastpath.run_model(model, x, fast)


def default_no_winograd(model: nn.Module, args) -> Forward:
    fast = fastpath.fast_path_supported()
    fastpath.prepare_model(model, fast, NUM_CLASSES, use_winograd=False)
    return lambda x: fastpath.run_model(model, x, fast)


def autocast(model: nn.Module, args) -> Forward:
    model.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()

    return run


def ort_session(data: bytes) -> Forward:
    from fcnseg.inference.int8 import session

    sess = session(data, torch.get_num_threads())
    return lambda x: torch.from_numpy(sess.run(["scores"], {"image": x.numpy()})[0])


def openvino_model(data: bytes, size: int | None) -> Forward:
    """OpenVINO's default for this CPU class: bf16 inference precision where the CPU has native bf16,
    f32 elsewhere (stated explicitly under FCNSEG_CPU_ISA, where OpenVINO itself sees the real CPU).
    ``size``: a static input shape (OpenVINO at its best), None: dynamic height and width."""
    import tempfile

    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
    if not fastpath.cpu_bf16_flags():
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(data)
        core = ov.Core()
        model = core.read_model(path)
        if size:
            model.reshape({"image": [1, 3, size, size]})
        compiled = runtimes.openvino_compile(core, model, config)  # its sigaltstack fault kept away
    request = compiled.create_infer_request()
    return lambda x: torch.from_numpy(request.infer({"image": x.numpy()})[compiled.output(0)].copy())


def onnxruntime_fp32(model: nn.Module, args) -> Forward:
    return ort_session(onnx_bytes(model, META))


def openvino_default(model: nn.Module, args) -> Forward:
    return openvino_model(onnx_bytes(model, META), args.size)


_INT8: dict = {}


def int8_bytes(model: nn.Module, args) -> bytes:
    """fcnseg's int8 model of ``model``, calibrated on --calib smooth random pictures (built once)."""
    if "bytes" not in _INT8:
        from fcnseg.inference import int8

        images = (make_input(args.size, seed) for seed in range(1, args.calib + 1))
        _INT8["bytes"] = int8.quantize(model, META, images)
    return _INT8["bytes"]


def int8_onnxruntime(model: nn.Module, args) -> Forward:
    return runtimes.load("onnxruntime", int8_bytes(model, args))  # as Segmenter runs it


def int8_openvino(model: nn.Module, args) -> Forward:
    return runtimes.load("openvino", int8_bytes(model, args))  # as Segmenter runs it: dynamic H, W


def compiled(model: nn.Module, args) -> Forward:
    model = fastpath.Compiled(fastpath.prepare_model(model, True, NUM_CLASSES))
    return lambda x: fastpath.run_model(model, x, True)


VARIANTS = {
    "naive fp32": naive,
    "fcnseg default": fcnseg_default,
    "default, no padcache": default_no_padcache,
    "default, no winograd": default_no_winograd,
    "onnxruntime fp32": onnxruntime_fp32,
    "openvino default": openvino_default,
    "int8 onnxruntime": int8_onnxruntime,
    "int8 openvino": int8_openvino,
    "bf16 autocast": autocast,
    "fast+compile": compiled,
}
EXTRA = ("bf16 autocast", "fast+compile")
NEEDS_OPENVINO = ("openvino default", "int8 openvino")


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------- measuring


def gemm_peaks(size: int = 2048, reps: int = 5) -> dict[str, float]:
    """The ceilings the variants are compared with, in this process's threads: fp32 (FMA) GFLOP/s, the
    faster of a size^3 matmul and a 512->512 3x3 convolution (oneDNN); bf16 likewise, where the CPU
    has native bf16 (emulated bf16 is no ceiling); int8 GOP/s of a size^3 torch._int_mm, where the
    CPU has VNNI."""
    torch.manual_seed(0)
    flags = fastpath.cpu_flags()
    kinds = [torch.float32] + ([torch.bfloat16] if fastpath.cpu_bf16_flags() else [])
    tests = []
    conv_flop = 2 * 512 * 512 * 9 * 62 * 62
    for dtype in kinds:
        name = "fp32" if dtype == torch.float32 else "bf16"
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        conv_x = torch.randn(1, 512, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
        conv_w = torch.randn(512, 512, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        tests += [
            (name, lambda a=a, b=b: a @ b, 2 * size**3),
            (name, lambda x=conv_x, w=conv_w: nn.functional.conv2d(x, w), conv_flop),
        ]
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        i8 = (
            torch.randint(-128, 128, (size, size), dtype=torch.int8),
            torch.randint(-128, 128, (size, size), dtype=torch.int8),
        )
        tests.append(("int8", lambda: torch._int_mm(*i8), 2 * size**3))
    peaks: dict[str, float] = {}
    for name, fn, flop in tests:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        peaks[name] = max(peaks.get(name, 0.0), flop / min(times) / 1e9)
    return peaks


def kernel_dtype(name: str) -> str:
    """Which peak a variant is measured against: int8, bf16 (fast path / OpenVINO default on a bf16
    CPU) or fp32."""
    if name.startswith("int8"):
        return "int8"
    bf16 = bool(fastpath.cpu_bf16_flags())
    if name in ("bf16 autocast", "fast+compile") or (
        bf16 and name in ("fcnseg default", "default, no padcache", "default, no winograd", "openvino default")
    ):
        return "bf16"
    return "fp32"


def peak_rss_self_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork + exec, so a child of a big benchmark process would report the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss_mb(variant: str, geometry: str, args: argparse.Namespace) -> float:
    """Peak RSS of a fresh process that builds the model, prepares ``variant`` and runs one forward."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--geometries",
        geometry,
        "--size",
        str(args.size),
        "--width",
        str(args.width),
        "--calib",
        str(args.calib),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mb"]


def child(args: argparse.Namespace) -> None:
    keep_freed_cpu_memory()  # as Segmenter does
    model = build_model(args.geometries[0], args.width)
    VARIANTS[args.child](model, args)(make_input(args.size))
    print(json.dumps({"rss_mb": peak_rss_self_mb()}))


def bench_geometry(geometry: str, names: list[str], args: argparse.Namespace, peaks: dict) -> list[dict]:
    base = build_model(geometry, args.width)
    gflop = flops(base, args.size) / 1e9
    x = make_input(args.size)
    _INT8.clear()
    runs, outputs, setup = {}, {}, {}
    for name in names:
        start = time.perf_counter()
        runs[name] = VARIANTS[name](base if name == "naive fp32" else copy.deepcopy(base), args)
        outputs[name] = runs[name](x)  # warm-up (and compilation) outside the timings
        if name == "int8 onnxruntime":
            outputs[name] = runs[name](x)  # a size met twice gets its per-size int8 head (int8_padcache)
        setup[name] = time.perf_counter() - start
    times = {name: [] for name in names}
    for _ in range(args.reps):
        for name in names:
            start = time.perf_counter()
            runs[name](x)
            times[name].append(time.perf_counter() - start)
    reference = outputs["naive fp32"]
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.01 * reference.abs().max()  # not a near-tie in fp32
    rows = []
    for name in names:
        ms = statistics.median(times[name]) * 1000
        rows.append(
            {
                "geometry": geometry,
                "variant": name,
                "ms": ms,
                "gflop": gflop,
                "gflops": gflop / (ms / 1000),
                "peak": kernel_dtype(name),
                "share": gflop / (ms / 1000) / peaks.get(kernel_dtype(name), float("nan")),
                "speedup": statistics.median(times["naive fp32"]) * 1000 / ms,
                "agree": (outputs[name].argmax(1) == reference.argmax(1)).float().mean().item(),
                "agree_clear": (outputs[name].argmax(1) == reference.argmax(1))[clear].float().mean().item(),
                "max_diff": (outputs[name] - reference).abs().max().item() / reference.abs().max().item(),
                "setup_s": setup[name],
                "rss_mb": (peak_rss_mb(name, geometry, args) if args.rss and name != "fast+compile" else float("nan")),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'geometry':8} {'variant':20} {'median ms':>10} {'GFLOP/s':>8} {'% of peak':>12} "
        f"{'speedup':>8} {'argmax agree':>13} {'margin>1%':>10} {'max|d|/max':>10} {'setup s':>8} "
        f"{'peak RSS MB':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        rss = "-" if r["rss_mb"] != r["rss_mb"] else f"{r['rss_mb']:.0f}"
        share = f"{100 * r['share']:5.1f}% {r['peak']}"
        print(
            f"{r['geometry']:8} {r['variant']:20} {r['ms']:10.0f} {r['gflops']:8.1f} {share:>12} "
            f"{r['speedup']:7.2f}x {100 * r['agree']:12.2f}% {100 * r['agree_clear']:9.2f}% {r['max_diff']:10.4f} "
            f"{r['setup_s']:8.1f} {rss:>12}"
        )


# ------------------------------------------------------------------------------------- a folder of photos

# 20 (height, width) pairs in PASCAL VOC's mix (about half 375x500 landscape, a quarter portrait,
# the rest assorted), in an order that revisits sizes as a folder listing does.
VOC_SIZES = [
    (375, 500),
    (500, 375),
    (375, 500),
    (333, 500),
    (375, 500),
    (500, 333),
    (375, 500),
    (366, 500),
    (500, 375),
    (375, 500),
    (334, 500),
    (375, 500),
    (500, 500),
    (333, 500),
    (500, 375),
    (375, 500),
    (400, 500),
    (375, 500),
    (500, 400),
    (281, 500),
]
FOLDER_VARIANTS = ("naive fp32", "fcnseg default", "onnxruntime fp32", "openvino default")


def bench_folder(geometry: str, args: argparse.Namespace) -> list[dict]:
    """Each path over VOC_SIZES[:--folder] images, one at a time, as a new `fcnseg predict` meets
    them: fcnseg's model prepared fresh (its per-size caches cold), onnxruntime and OpenVINO with
    dynamic height and width. Images interleave the variants, so load hits them alike."""
    base = build_model(geometry, args.width)
    images = [make_input(h, 100 + i, w) for i, (h, w) in enumerate(VOC_SIZES[: args.folder])]
    names = [n for n in FOLDER_VARIANTS if n not in NEEDS_OPENVINO or openvino_installed()]
    runs, setup = {}, {}
    for name in names:
        start = time.perf_counter()
        if name == "openvino default":
            runs[name] = openvino_model(onnx_bytes(copy.deepcopy(base), META), None)
        else:  # onnxruntime's session takes any size as is
            runs[name] = VARIANTS[name](base if name == "naive fp32" else copy.deepcopy(base), args)
        setup[name] = time.perf_counter() - start
    seconds = {n: 0.0 for n in names}
    agree = {n: [] for n in names}
    for x in images:
        reference = None
        for name in names:
            start = time.perf_counter()
            out = runs[name](x)
            seconds[name] += time.perf_counter() - start
            reference = out.argmax(1) if reference is None else reference
            agree[name].append((out.argmax(1) == reference).float().mean().item())
    return [
        {
            "variant": n,
            "s": seconds[n],
            "setup_s": setup[n],
            "speedup": seconds["naive fp32"] / seconds[n],
            "agree": statistics.mean(agree[n]),
            "agree_min": min(agree[n]),
        }
        for n in names
    ]


def print_folder(rows: list[dict], count: int) -> None:
    sizes = len(set(VOC_SIZES[:count]))
    print(f"a folder of {count} photos in {sizes} VOC sizes, one new process's worth (fresh caches), batch 1:")
    print(f"{'variant':20} {'total s':>8} {'vs naive':>9} {'agree mean':>11} {'agree min':>10} {'setup s':>8}")
    for r in rows:
        print(
            f"{r['variant']:20} {r['s']:8.1f} {r['speedup']:8.2f}x {100 * r['agree']:10.2f}% "
            f"{100 * r['agree_min']:9.2f}% {r['setup_s']:8.1f}"
        )


# ------------------------------------------------------------------------------------- CPU classes

# Environment that makes this process run as an AVX2-only CPU (no AVX512, VNNI or bf16): fcnseg's own
# dispatch, oneDNN (torch's convolutions, and OpenVINO's, which reads the same variable) and MKL
# (torch's fp32 matmul). onnxruntime's MLAS kernels have no such switch: they keep this CPU's best ISA,
# which flatters onnxruntime in the emulated class.
AVX2_ENV = {"FCNSEG_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_class() -> str:
    return "AVX2-only (emulated)" if os.environ.get("FCNSEG_CPU_ISA") == "avx2" else "native"


def header(args: argparse.Namespace, peaks: dict) -> None:
    print(f"=== CPU class: {cpu_class()} ===")
    print(
        f"CPU {cpu_model()}, ISA {fastpath.cpu_isa()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {open('/proc/loadavg').read().split()[0]} at start"
    )
    if cpu_class() != "native":
        print(
            "emulation: "
            + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
            + " (onnxruntime has no ISA switch: it keeps this CPU's best kernels)"
        )
    units = {"fp32": "GFLOP/s", "bf16": "GFLOP/s", "int8": "GOP/s"}
    print(
        "measured peaks: "
        + ", ".join(f"{k} {v:.0f} {units[k]}" for k, v in peaks.items())
        + " (best of torch matmul 2048^3 and a 3x3 512->512 conv; int8: torch._int_mm 2048^3)"
    )
    print(f"fast path: {'on' if fastpath.fast_path_supported() else 'off'} ({fastpath.fast_path_reason()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--reps", "--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1 = VGG16)")
    parser.add_argument("--geometries", nargs="+", default=["caffe"])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"variants to run (default: all but {', '.join(EXTRA)}); naive fp32 always runs",
    )
    parser.add_argument("--extra", action="store_true", help=f"also run {', '.join(EXTRA)}")
    parser.add_argument("--calib", type=int, default=4, help="calibration images for the int8 model (default 4)")
    parser.add_argument(
        "--folder",
        type=int,
        default=20,
        choices=range(0, len(VOC_SIZES) + 1),
        metavar="N",
        help=f"images in the folder scenario (default 20, 0 = skip; at most {len(VOC_SIZES)})",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        choices=("native", "avx2"),
        default=["native", "avx2"],
        help="CPU classes to measure: this CPU as it is, and as an AVX2-only CPU (a child "
        "process with the ISA capped; skipped where the CPU has no more than AVX2)",
    )
    parser.add_argument("--rss", action="store_true", help="peak RSS per variant (one fresh process each)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if cpu_class() != "native":  # the child process of the emulated class
        return measure_class(args)
    classes = args.classes
    if "avx2" in classes and "avx512f" not in fastpath.cpu_flags():
        classes = [c for c in classes if c != "avx2"]
        print("this CPU has no AVX512: its native class is the AVX2-only class")
        classes = classes or ["native"]
    if "native" in classes:
        measure_class(args)
    if "avx2" in classes:
        print(flush=True)
        subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--classes", "avx2"], env={**os.environ, **AVX2_ENV}, check=True
        )


# onnxruntime cannot be capped to AVX2 here, but what it would take on an AVX2-only CPU is bounded
# from below: its CPU convolutions (MLAS: direct NCHWc kernels or im2col + GEMM) compute every FLOP
# of the model (no pad cache, no Winograd), and no kernel runs faster than the class's fp32 peak,
# measured in the same run with the same caps.
ORT_BOUND_NOTE = "onnxruntime fp32 on AVX2 kernels takes at least the model's FLOPs / this class's fp32 peak"


def ort_avx2_bound_ms(gflop: float, peak_gflops: float) -> float:
    return gflop / peak_gflops * 1000


def measure_class(args: argparse.Namespace) -> None:
    """Header, the single-image table and the folder table for the CPU class this process runs as."""
    keep_freed_cpu_memory()  # as Segmenter does; process-wide, so the plain torch rows get it too
    names = args.variants or [n for n in VARIANTS if args.extra or n not in EXTRA]
    names = ["naive fp32"] + [n for n in names if n != "naive fp32"]
    notes = []
    if not openvino_installed():
        skipped = [n for n in names if n in NEEDS_OPENVINO]
        names = [n for n in names if n not in NEEDS_OPENVINO]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: OpenVINO is not installed (pip install 'fcnseg[openvino]')")
    if cpu_class() != "native":
        skipped = [n for n in names if n.startswith("int8") or n in EXTRA]
        names = [n for n in names if n not in skipped]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: the int8 runtimes cannot be capped to AVX2 here")
    peaks = gemm_peaks()
    header(args, peaks)
    print(
        f"FCN-8s VGG16 (width {args.width:g}) batch 1 at {args.size}x{args.size}; random weights; score "
        "layers (zero-initialised in FCN) given N(0, 0.01) weights so argmax is not trivial; "
        f"{args.reps} timed rounds after one warm-up, variants interleaved"
    )
    for note in notes:
        print(note)
    print()
    rows = []
    for geometry in args.geometries:
        rows += bench_geometry(geometry, names, args, peaks)
        print_table(rows[-len(names) :])
        print(flush=True)
    for geometry in args.geometries:
        got = {r["variant"]: r for r in rows if r["geometry"] == geometry}
        default = got.get("fcnseg default")
        best = [got[n] for n in ("onnxruntime fp32", "openvino default") if n in got]
        if default and best:
            fastest = min(best, key=lambda r: r["ms"])
            print(
                f"{geometry} [{cpu_class()}]: fcnseg default is {fastest['ms'] / default['ms']:.2f}x the best "
                f"runtime's speed ({fastest['variant']}), argmax agreement {100 * default['agree']:.2f}%"
            )
        if default and "openvino default" in got:
            print(
                f"{geometry} [{cpu_class()}]: fcnseg default is {got['openvino default']['ms'] / default['ms']:.2f}x "
                "OpenVINO default's speed"
            )
        if default and cpu_class() != "native" and peaks.get("fp32"):
            bound = ort_avx2_bound_ms(default["gflop"], peaks["fp32"])
            print(
                f"{geometry} [{cpu_class()}]: {ORT_BOUND_NOTE}: {bound:.0f} ms here, so fcnseg default is at least "
                f"{bound / default['ms']:.2f}x onnxruntime on a real CPU of this class"
            )
        from fcnseg.inference.int8 import default_runtime

        int8_default = f"int8 {default_runtime()}"
        for name in ("int8 onnxruntime", "int8 openvino"):
            if name in got and "openvino default" in got:
                print(
                    f"{geometry} [{cpu_class()}]: {name}{' (fcnseg int8 default)' if name == int8_default else ''} is "
                    f"{got['openvino default']['ms'] / got[name]['ms']:.2f}x OpenVINO default's speed"
                )
        if default and "default, no padcache" in got:
            print(
                f"{geometry} [{cpu_class()}]: pad-constant cache: "
                f"{got['default, no padcache']['ms'] / default['ms']:.2f}x"
            )
        if default and "default, no winograd" in got:
            print(f"{geometry} [{cpu_class()}]: Winograd: {got['default, no winograd']['ms'] / default['ms']:.2f}x")
    if args.folder:
        print(flush=True)
        folder = bench_folder("caffe", args)
        print_folder(folder, args.folder)
        got = {r["variant"]: r for r in folder}
        others = [r for r in folder if r["variant"] in ("onnxruntime fp32", "openvino default")]
        if "fcnseg default" in got and others:
            fastest = min(others, key=lambda r: r["s"])
            print(
                f"folder [{cpu_class()}]: fcnseg default is {fastest['s'] / got['fcnseg default']['s']:.2f}x the "
                f"best runtime's speed ({fastest['variant']}), {got['fcnseg default']['speedup']:.2f}x naive"
            )
        if "fcnseg default" in got and cpu_class() != "native" and peaks.get("fp32"):
            model = build_model("caffe", args.width)
            gflop = sum(flops(model, (h, w)) for h, w in VOC_SIZES[: args.folder]) / 1e9
            bound = ort_avx2_bound_ms(gflop, peaks["fp32"]) / 1000
            print(
                f"folder [{cpu_class()}]: {ORT_BOUND_NOTE}: {bound:.1f} s here, so fcnseg default is at least "
                f"{bound / got['fcnseg default']['s']:.2f}x onnxruntime on a real CPU of this class"
            )
    print(f"load average at the end: {open('/proc/loadavg').read().strip()}", flush=True)


if __name__ == "__main__":
    main()
