"""Sliding-window prediction of large photos: peak memory stays bounded, time grows linearly.

    python benchmarks/bench_memory.py [--sizes 1000x1000 2000x2000 4000x3000 4000x4000]
                                      [--tile 1024] [--overlap 0.25] [--width 1.0] [--geometry caffe]
                                      [--variants default int8]

Each size and variant runs in a fresh process (so peaks do not mix): it builds a randomly
initialised FCN-8s VGG16 with 21 classes, wraps it in a Segmenter and predicts one synthetic photo
of that size. Variants: "default" (the torch fast path with the pad-constant cache) and "int8"
(`fcnseg quantize`'s model on fcnseg's default int8 runtime; quantized once in the parent, calibrated
on one small random picture, which is enough for memory and time). Reported: tiles, seconds, seconds per megapixel (flat
means linear cost; "tiled MP" counts the overlapping tiles the network actually sees), peak RSS (VmHWM) and the part of it above the loaded model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

NUM_CLASSES = 21


def proc_status_mb(field: str) -> float:
    """VmHWM (peak RSS) or VmRSS (current) of this process. Not ru_maxrss: Linux carries that over
    from the parent across fork + exec, so a child would report at least the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def synthetic_photo(width: int, height: int) -> np.ndarray:
    """A smooth random HxWx3 uint8 picture."""
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), np.uint8))
    return np.asarray(small.resize((width, height), Image.BICUBIC)).copy()


def tiling(width: int, height: int, tile: int, overlap: float) -> tuple[int, float]:
    """(number of tiles, megapixels the network processes) for one image."""
    from fcnseg.inference.window import tile_starts

    stride = max(1, round(tile * (1 - overlap)))
    th, tw = min(tile, height), min(tile, width)
    count = len(tile_starts(height, th, stride)) * len(tile_starts(width, tw, stride))
    return count, count * th * tw / 1e6


META = {"model_name": "fcn8s", "model_kwargs": {"num_classes": NUM_CLASSES}, "normalization": "imagenet"}


def make_model(args: argparse.Namespace):
    import torch

    from fcnseg.models import create_model

    torch.manual_seed(0)
    return create_model("fcn8s", NUM_CLASSES, geometry=args.geometry, width=args.width)


def write_int8(args: argparse.Namespace, path: str) -> None:
    import torch

    from fcnseg.files import write_bytes
    from fcnseg.inference import int8

    calibration = [torch.randn(1, 3, 64, 64)]
    write_bytes(path, int8.quantize(make_model(args), META, calibration))


def child(args: argparse.Namespace) -> None:
    from fcnseg.inference import Segmenter

    width, height = (int(v) for v in args.child.split("x"))
    if args.int8_file:
        seg = Segmenter.from_checkpoint(args.int8_file, tile=args.tile, overlap=args.overlap)
    else:
        model = make_model(args)
        seg = Segmenter(model, dict(META), tile=args.tile, overlap=args.overlap)
        del model
    image = synthetic_photo(width, height)
    before = proc_status_mb("VmRSS")
    start = time.perf_counter()
    mask = seg.predict(image)
    seconds = time.perf_counter() - start
    assert mask.shape == (height, width)
    print(
        json.dumps(
            {"seconds": seconds, "rss_mb": proc_status_mb("VmHWM"), "model_mb": before, "describe": seg.describe()}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000x1000", "2000x2000", "4000x3000", "4000x4000"])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1 = VGG16)")
    parser.add_argument("--geometry", default="caffe")
    parser.add_argument("--variants", nargs="+", default=["default", "int8"], choices=("default", "int8"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--int8-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    int8_file = os.path.join(tmp.name, "model.int8.onnx")
    if "int8" in args.variants:
        write_int8(args, int8_file)
    print(
        f"Sliding-window predict, FCN-8s VGG16 (width {args.width:g}, {args.geometry} geometry, "
        f"{NUM_CLASSES} classes), tile {args.tile}, overlap {args.overlap:g}; one fresh process per size"
    )
    head = (
        f"{'variant':>8} {'size':>10} {'MP':>5} {'tiles':>5} {'tiled MP':>8} {'seconds':>8} {'s/MP':>6} "
        f"{'s/tiled MP':>10} {'peak RSS MB':>12} {'rise MB':>8}"
    )
    rows = []
    jobs = [(variant, size) for size in args.sizes for variant in args.variants]
    for variant, size in jobs:
        width, height = (int(v) for v in size.split("x"))
        cmd = [
            sys.executable,
            __file__,
            "--child",
            size,
            "--tile",
            str(args.tile),
            "--overlap",
            str(args.overlap),
            "--width",
            str(args.width),
            "--geometry",
            args.geometry,
        ]
        if variant == "int8":
            cmd += ["--int8-file", int8_file]
        result = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
        if not rows:
            print(head)
            print("-" * len(head))
        mp = width * height / 1e6
        tiles, tiled_mp = tiling(width, height, args.tile, args.overlap)
        rows.append((variant, tiled_mp, result["seconds"]))
        print(
            f"{variant:>8} {size:>10} {mp:5.1f} {tiles:5d} {tiled_mp:8.1f} {result['seconds']:8.1f} "
            f"{result['seconds'] / mp:6.2f} {result['seconds'] / tiled_mp:10.2f} "
            f"{result['rss_mb']:12.0f} {result['rss_mb'] - result['model_mb']:8.0f}   {result['describe']}",
            flush=True,
        )
    print()
    for variant in args.variants:
        per_mp = [seconds / tiled_mp for name, tiled_mp, seconds in rows if name == variant]
        print(
            f"{variant}: seconds per tiled megapixel {min(per_mp):.2f} .. {max(per_mp):.2f} "
            "(flat = cost linear in pixels)"
        )


if __name__ == "__main__":
    main()
