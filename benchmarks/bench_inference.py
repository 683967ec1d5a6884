"""Batch-1 inference speed of FCN-8s VGG16 at 500x500: the naive fp32 forward vs fcnseg's fast path.

    python benchmarks/bench_inference.py [--size 500] [--reps 3] [--width 1.0]
                                         [--geometries caffe same] [--no-compile] [--no-rss]

Variants, timed side by side in one run (rounds interleave the variants, so load from other
processes hits them alike):

  naive fp32     model(x) under torch.no_grad, NCHW fp32: what a plain PyTorch user runs
  fast path      what Segmenter uses: bf16 weights + channels_last + inference_mode; exact fp32 score
                 head (diagonal upsamplers per class), first conv split hi/lo bf16 on the fp32 image,
                 fc6/fc7 as im2col + one GEMM on a weight packed once (see fcnseg.inference.fastpath)
  bf16 autocast  the textbook recipe: torch.autocast(bfloat16) + channels_last + inference_mode
  onnxruntime    the ONNX export on onnxruntime's CPU provider (fp32)
  fast+compile   the fast path through torch.compile with inductor weight freezing

Reported: median ms, GFLOP/s (FLOPs counted by fcnseg.models.count_flops), speedup over naive,
argmax agreement with naive fp32 (on all pixels, and on the pixels whose fp32 top-2 scores differ by
more than 1% of the score range, i.e. are not near-ties), the largest score difference relative to
the largest score, and peak RSS of a fresh process that loads the model and runs one
forward. The models are randomly initialised; because FCN score layers start at zero (which would
make every argmax trivially 0), the score layers get random N(0, 0.01) weights here.
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
from typing import Callable

import numpy as np
import torch
from torch import nn

from fcnseg.data.normalize import normalize
from fcnseg.inference import fastpath
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


def flops(model: nn.Module, size: int) -> int:
    try:
        from fcnseg.models import count_flops
    except ImportError:
        from fcnseg.models.flops import count_flops
    return count_flops(model, (size, size))


def make_input(size: int) -> torch.Tensor:
    """A normalised 1x3xSxS batch from a smooth random picture (photo-like, not white noise)."""
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, size // 16 + 1, size // 16 + 1)).astype(np.float32))
    image = nn.functional.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
    return normalize(image.clamp(0, 255).to(torch.uint8), "imagenet")


# ------------------------------------------------------------------------------------- variants
# Each factory takes a model it may modify in place and returns x -> float32 scores.

def naive(model: nn.Module) -> Forward:
    def run(x):
        with torch.no_grad():
            return model(x)
    return run


def fast_path(model: nn.Module) -> Forward:
    fastpath.prepare_model(model, True, NUM_CLASSES)
    return lambda x: fastpath.run_model(model, x, True)


def autocast(model: nn.Module) -> Forward:
    model.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()
    return run


def onnxruntime(model: nn.Module) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(onnx_bytes(model, {"model_name": "fcn8s"}), options,
                                   providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["scores"], {"image": x.numpy()})[0])


def compiled(model: nn.Module) -> Forward:
    model = fastpath.Compiled(fastpath.prepare_model(model, True, NUM_CLASSES))
    return lambda x: fastpath.run_model(model, x, True)


VARIANTS = {"naive fp32": naive, "fast path": fast_path, "bf16 autocast": autocast,
            "onnxruntime": onnxruntime, "fast+compile": compiled}


# ------------------------------------------------------------------------------------- measuring

def peak_rss_self_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork + exec, so a child of a big benchmark process would report the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss_mb(variant: str, geometry: str, args: argparse.Namespace) -> float:
    """Peak RSS of a fresh process that builds the model, prepares ``variant`` and runs one forward."""
    cmd = [sys.executable, __file__, "--child", variant, "--geometries", geometry,
           "--size", str(args.size), "--width", str(args.width)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mb"]


def child(args: argparse.Namespace) -> None:
    model = build_model(args.geometries[0], args.width)
    VARIANTS[args.child](model)(make_input(args.size))
    print(json.dumps({"rss_mb": peak_rss_self_mb()}))


def bench_geometry(geometry: str, names: list[str], args: argparse.Namespace) -> list[dict]:
    base = build_model(geometry, args.width)
    gflop = flops(base, args.size) / 1e9
    x = make_input(args.size)
    runs, outputs, setup = {}, {}, {}
    for name in names:
        start = time.perf_counter()
        runs[name] = VARIANTS[name](base if name == "naive fp32" else copy.deepcopy(base))
        outputs[name] = runs[name](x)  # warm-up (and compilation) outside the timings
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
        rows.append({
            "geometry": geometry, "variant": name, "ms": ms, "gflop": gflop,
            "gflops": gflop / (ms / 1000),
            "speedup": statistics.median(times["naive fp32"]) * 1000 / ms,
            "agree": (outputs[name].argmax(1) == reference.argmax(1)).float().mean().item(),
            "agree_clear": (outputs[name].argmax(1) == reference.argmax(1))[clear].float().mean().item(),
            "max_diff": (outputs[name] - reference).abs().max().item() / reference.abs().max().item(),
            "setup_s": setup[name],
            "rss_mb": (peak_rss_mb(name, geometry, args)
                       if not args.no_rss and name != "fast+compile" else float("nan")),
        })
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'geometry':8} {'variant':14} {'median ms':>10} {'GFLOP':>7} {'GFLOP/s':>8} {'speedup':>8} "
            f"{'argmax agree':>13} {'margin>1%':>10} {'max|d|/max':>10} {'setup s':>8} {'peak RSS MB':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rss = "-" if r["rss_mb"] != r["rss_mb"] else f"{r['rss_mb']:.0f}"
        print(f"{r['geometry']:8} {r['variant']:14} {r['ms']:10.0f} {r['gflop']:7.1f} {r['gflops']:8.1f} "
              f"{r['speedup']:7.2f}x {100 * r['agree']:12.2f}% {100 * r['agree_clear']:9.2f}% {r['max_diff']:10.4f} "
              f"{r['setup_s']:8.1f} {rss:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1 = VGG16)")
    parser.add_argument("--geometries", nargs="+", default=["caffe", "same"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-variant RSS subprocesses")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    names = [n for n in VARIANTS if not (args.no_compile and n == "fast+compile")]
    print(f"FCN-8s VGG16 (width {args.width:g}) batch 1 at {args.size}x{args.size}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"native bf16: {fastpath.fast_path_reason()}")
    print("random weights; score layers (zero-initialised in FCN) given N(0, 0.01) weights so argmax "
          f"is not trivial; {args.reps} timed rounds after one warm-up, variants interleaved\n")
    rows = []
    for geometry in args.geometries:
        rows += bench_geometry(geometry, names, args)
        print_table(rows[-len(names):])
        print(flush=True)
    by_geometry = {r["geometry"]: r["gflop"] for r in rows}
    if {"caffe", "same"} <= set(by_geometry):
        print(f"FLOPs same / caffe = {by_geometry['same'] / by_geometry['caffe']:.3f}")
    for geometry in args.geometries:
        fast = next(r for r in rows if r["geometry"] == geometry and r["variant"] == "fast path")
        print(f"{geometry}: fast path {fast['speedup']:.2f}x faster than naive fp32, "
              f"argmax agreement {100 * fast['agree']:.2f}%")


if __name__ == "__main__":
    main()
