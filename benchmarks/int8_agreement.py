"""Does the int8 path keep a trained model's answers? Quantize a checkpoint on its training split,
then compare int8 (and fcnseg's default bf16 path) with the fp32 model on the val split.

    python benchmarks/int8_agreement.py --checkpoint runs/demo/best.pt --data shapes [--images 32]
    python benchmarks/int8_agreement.py --checkpoint /tmp/photo_run/best.pt --data folder:/tmp/photos

Targets (issue 17): int8 keeps >= 99.5% pixel agreement with fp32 and loses <= 0.5 mean-IU points,
also with small calibration sets (--images 4).
Printed: per path, mean IU and pixel accuracy on val, argmax agreement with fp32 (labelled pixels
and all pixels), and the quantization time. The int8 model goes through `fcnseg quantize`'s own
code (fcnseg.inference.int8.quantize_checkpoint) and runs as `fcnseg predict` would run it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.data import load_dataset
from fcnseg.data.normalize import normalize
from fcnseg.engine.checkpoint import model_from_checkpoint
from fcnseg.engine.metrics import ConfusionMatrix
from fcnseg.inference import fastpath, int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--calib-split", default="train")
    parser.add_argument("--images", type=int, default=32, help="calibration images")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N val images")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.int8.onnx"
        start = time.perf_counter()
        record = int8.quantize_checkpoint(args.checkpoint, args.data, out, split=args.calib_split, images=args.images)
        quant_s = time.perf_counter() - start
        int8_model, _, _ = int8.load(out, checkpoint=args.checkpoint)
    fp32, meta = model_from_checkpoint(args.checkpoint)
    fp32.eval()
    fast = fastpath.fast_path_supported()
    default = fastpath.prepare_model(
        model_from_checkpoint(args.checkpoint)[0], fast, meta["model_kwargs"]["num_classes"]
    )
    dataset = load_dataset(args.data, args.split)
    n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    classes, ignore = dataset.num_classes, dataset.ignore_index
    paths = {
        "fp32": lambda x: fp32(x),
        "fcnseg default": lambda x: fastpath.run_model(default, x, fast),
        f"int8 {int8_model.runtime}": lambda x: int8_model(x),
    }
    confusion = {name: ConfusionMatrix(classes, ignore_index=ignore) for name in paths}
    agree = {name: [0, 0, 0, 0] for name in paths}  # labelled agree, labelled, all agree, all
    for index in range(n):
        image, mask = dataset[index]
        x = normalize(image[None], meta.get("normalization", "imagenet"))
        with torch.inference_mode():
            preds = {name: fn(x).float().argmax(1) for name, fn in paths.items()}
        labelled = mask[None] != ignore
        for name, pred in preds.items():
            confusion[name].update(pred, mask[None])
            same = pred == preds["fp32"]
            agree[name][0] += int(same[labelled].sum())
            agree[name][1] += int(labelled.sum())
            agree[name][2] += int(same.sum())
            agree[name][3] += same.numel()
    print(
        f"{args.checkpoint} ({meta['model_name']}, {meta['model_kwargs']}) on {args.data} {args.split}, "
        f"{n} images; int8 calibrated on {record['calibration']['images']} {args.calib_split} images "
        f"in {quant_s:.0f} s ({record['engine']})"
    )
    print(
        f"{'path':20} {'mean IU':>8} {'pixel acc':>10} {'agree (labelled)':>17} {'agree (all)':>12} {'d mean IU':>10}"
    )
    base = confusion["fp32"].compute()["mean_iu"]
    for name in paths:
        metrics = confusion[name].compute()
        a = agree[name]
        print(
            f"{name:20} {100 * metrics['mean_iu']:8.2f} {100 * metrics['pixel_acc']:10.2f} "
            f"{100 * a[0] / max(1, a[1]):16.2f}% {100 * a[2] / max(1, a[3]):11.2f}% "
            f"{100 * (metrics['mean_iu'] - base):+10.2f}"
        )


if __name__ == "__main__":
    main()
