"""`fcnseg quantize`: an int8 model of a checkpoint, calibrated on your own training images.

    fcnseg quantize --checkpoint runs/x/best.pt --data folder:DATA --out model.int8.onnx
    fcnseg predict  --checkpoint model.int8.onnx photos/ --out preds/
    fcnseg evaluate --checkpoint model.int8.onnx --data folder:DATA --split val

The model is quantized with onnxruntime (static QDQ: per-channel int8 weights, int8 activations
whose ranges come from running the fp32 model on the calibration images; the class-score layers
stay fp32). It runs on onnxruntime's CPU provider with the VNNI int8 kernels where the CPU has them.
"""

from __future__ import annotations

import argparse
import sys

from fcnseg.config import MAX_SIDE, MIN_SIDE, arg_type, zero_or_between


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="int8 model of a checkpoint, calibrated on training images",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt checkpoint written by fcnseg train")
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec with the training images, "
                   "e.g. folder:PATH or voc:PATH")
    p.add_argument("--split", default="train", help="split to calibrate on (default: train)")
    p.add_argument("--images", type=arg_type(int, name="images", min=1, max=100000), default=32,
                   help="calibration images (default 32, spread over the split)")
    never_or_side = zero_or_between(MIN_SIDE, MAX_SIDE, "never")
    p.add_argument("--max-side", type=arg_type(int, name="max-side", check=never_or_side), default=1024,
                   help=f"scale calibration images down to this longest side, 0 or {MIN_SIDE}..{MAX_SIDE} "
                        "(default 1024; 0 = never)")
    p.add_argument("--out", required=True, metavar="MODEL", help="output int8 model (e.g. model.int8.onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fcnseg.inference import int8

    start = time.perf_counter()
    record = int8.quantize_checkpoint(args.checkpoint, args.data, args.out, split=args.split,
                                      images=args.images, max_side=args.max_side or None)
    out = Path(args.out)
    print(f"fcnseg quantize: wrote {out} (int8, {out.stat().st_size / 1e6:.1f} MB, calibrated on "
          f"{record['calibration']['images']} images of {args.data} {args.split}, "
          f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0
