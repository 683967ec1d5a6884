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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="checkpoint written by `fcnseg train`")
    source.add_argument("--weights", metavar="NAME_OR_FILE",
                        help="published weights by name (e.g. fcn8s-voc; see `fcnseg weights list`) or a "
                             ".caffemodel / pytorch-fcn / torchvision file")
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec, e.g. shapes or voc:PATH")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    parser.add_argument("--plot", metavar="PNG",
                        help="confusion-matrix plot (default: confusion_<split>.png next to the checkpoint)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                        help="autocast precision; auto = bf16 where it is fast (default: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto = cuda where available (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
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
    source, meta = args.checkpoint, None
    if args.weights:
        from fcnseg.weights import load

        source, meta = load(args.weights)
        source.to(device)
    try:
        metrics = evaluate(source, dataset, meta=meta, precision=precision, channels_last=args.channels_last,
                           device=device, max_images=args.max_images, batch_size=args.batch_size, workers=args.workers,
                           progress=not args.no_progress)
    finally:
        shutdown_distributed()
    if not world.is_main:
        return 0
    name = args.checkpoint or args.weights
    folder = Path(args.checkpoint).parent if args.checkpoint else Path(".")
    plot = Path(args.plot) if args.plot else folder / f"confusion_{args.split}.png"
    plot_confusion(metrics["confusion"], metrics["class_names"], plot)
    print(f"{name} on {args.data} ({args.split}, {metrics['images']} images)")
    print(metrics_table(metrics, metrics["class_names"]))
    print(f"confusion matrix: {plot}")
    if args.json:
        write_text(Path(args.json), json.dumps(metrics, indent=2))
        print(f"metrics: {args.json}")
    return 0
