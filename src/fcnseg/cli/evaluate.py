"""`fcnseg evaluate`: the paper's four metrics, per-class IoU, confusion matrix and loss of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint on a dataset split",
        description="Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU, per-class IoU, confusion "
                    "matrix and loss of a checkpoint. Multi-process: torchrun --nproc_per_node N -m fcnseg evaluate ...")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by `fcnseg train`")
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec, e.g. shapes or voc:PATH")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    parser.add_argument("--plot", metavar="PNG",
                        help="confusion-matrix plot (default: confusion_<split>.png next to the checkpoint)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                        help="autocast precision; auto = bf16 where it is fast (default: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--max-images", type=int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (padded; default 1)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcnseg.data import load_dataset
    from fcnseg.engine import evaluate
    from fcnseg.engine.rundir import metrics_table, plot_confusion, write_text
    from fcnseg.engine.runtime import init_distributed, resolve_device, resolve_precision, shutdown_distributed

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    world = init_distributed(device)
    dataset = load_dataset(args.data, args.split)
    try:
        metrics = evaluate(args.checkpoint, dataset, precision=precision, channels_last=args.channels_last,
                           device=device, max_images=args.max_images, batch_size=args.batch_size, workers=args.workers)
    finally:
        shutdown_distributed()
    if not world.is_main:
        return 0
    plot = Path(args.plot) if args.plot else Path(args.checkpoint).parent / f"confusion_{args.split}.png"
    plot_confusion(metrics["confusion"], metrics["class_names"], plot)
    print(f"{args.checkpoint} on {args.data} ({args.split}, {metrics['images']} images)")
    print(metrics_table(metrics, metrics["class_names"]))
    print(f"confusion matrix: {plot}")
    if args.json:
        write_text(Path(args.json), json.dumps(metrics, indent=2))
        print(f"metrics: {args.json}")
    return 0
