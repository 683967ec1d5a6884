"""`fcnseg quantize`: an int8 model of a checkpoint, calibrated on your own training images.

    fcnseg quantize --weights runs/x/best.pt --out model.int8.onnx     # calibrates on its training data
    fcnseg quantize --weights fcn8s-voc --data voc:VOC2012 --out fcn8s.int8.onnx
    fcnseg predict  --weights model.int8.onnx photos/ --out preds/
    fcnseg evaluate --weights model.int8.onnx --data folder:DATA --split val

The model is any source with PyTorch weights (--checkpoint is the same option as --weights).
--data defaults to the dataset the model was trained on, as its checkpoint records it.

The model is quantized with onnxruntime (static QDQ: per-channel 7-bit weights, so CPUs without
VNNI compute the same exact sums; uint8 activations whose ranges come from running the fp32 model
on the calibration images; the first convolution and the class-score layers stay fp32). It runs on
onnxruntime's CPU provider (VNNI int8 kernels where the CPU has them; --backend openvino for
OpenVINO); Caffe-geometry models compute only the image-dependent cells for sizes met twice.
"""

from __future__ import annotations

import argparse
import logging

from fcnseg.cli._model_options import add_model_options
from fcnseg.config import MAX_SIDE, MIN_SIDE, arg_type, zero_or_between

log = logging.getLogger("fcnseg.quantize")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="int8 model of a model, calibrated on training images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="dataset spec with the training images, "
        "e.g. folder:PATH or voc:PATH (default: the data the model was trained on)",
    )
    p.add_argument(
        "--split", default=None, help="split to calibrate on (default: the model's training split, else train)"
    )
    p.add_argument(
        "--images",
        type=arg_type(int, name="images", min=1, max=100000),
        default=32,
        help="calibration images (default 32, spread over the split)",
    )
    never_or_side = zero_or_between(MIN_SIDE, MAX_SIDE, "never")
    p.add_argument(
        "--max-side",
        type=arg_type(int, name="max-side", check=never_or_side),
        default=1024,
        help=f"scale calibration images down to this longest side, 0 or {MIN_SIDE}..{MAX_SIDE} "
        "(default 1024; 0 = never)",
    )
    p.add_argument("--out", required=True, metavar="MODEL", help="output int8 model (e.g. model.int8.onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fcnseg.inference import int8

    start = time.perf_counter()
    record = int8.quantize_checkpoint(
        args.weights,
        args.data,
        args.out,
        split=args.split,
        images=args.images,
        max_side=args.max_side or None,
        mirror=args.mirror,
    )
    out = Path(args.out)
    calib = record["calibration"]
    log.info(
        "wrote %s (int8, %.1f MB, calibrated on %s images of %s %s, %.0f s)",
        out,
        out.stat().st_size / 1e6,
        calib["images"],
        calib["data"],
        calib["split"],
        time.perf_counter() - start,
    )
    return 0
