"""`fcnseg evaluate`: the paper's four metrics, per-class IoU, confusion matrix and loss of a model."""

from __future__ import annotations

import argparse
import logging

from fcnseg.cli._model_options import add_model_options, open_from_args
from fcnseg.config import arg_type, device_problem

log = logging.getLogger("fcnseg.evaluate")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset split",
        description="Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU, per-class IoU, confusion "
        "matrix and loss of a checkpoint; a model with a second head (SIFT Flow's geometric classes) on data "
        "labelled for it is scored on both. Multi-process: torchrun --nproc_per_node N -m fcnseg evaluate ...",
    )
    add_model_options(parser, int8=True)
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec, e.g. shapes or voc:PATH")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw the confusion matrix to PNG (default: with --json FILE, a plot "
        "FILE_confusion.png beside it; without --json, no plot)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16", "auto"),
        help="autocast precision; auto = bf16 where it is fast (default: fp32)",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument(
        "--device",
        default="auto",
        type=arg_type(str, name="device", check=device_problem),
        help="cpu, cuda, cuda:N or auto (default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("--max-images", type=arg_type(int, min=1), metavar="N", help="evaluate only the first N images")
    parser.add_argument(
        "--batch-size", type=arg_type(int, min=1), default=1, help="images per forward pass (padded; default 1)"
    )
    parser.add_argument("--workers", type=arg_type(int, min=0), default=0, help="data-loading worker processes")
    parser.set_defaults(func=run)


def runnable(opened):
    """A torch module for an OpenedModel: its own module, or the ONNX model on a CPU runtime (int8
    models on their default runtime, fp32 exports on onnxruntime), measured exactly as they run."""
    from fcnseg.inference import int8
    from fcnseg.inference.export import OnnxModel

    if opened.is_int8:
        module = int8.Int8Model(opened.onnx)
        module.num_classes = opened.meta.num_classes
        return module
    if opened.is_onnx:
        try:
            return OnnxModel(opened.onnx, opened.meta)
        except ImportError:
            from fcnseg.errors import FcnsegError

            raise FcnsegError(f"running {opened.label} needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    return opened.module


def run(args: argparse.Namespace) -> int:
    import torch

    from fcnseg.data import load_dataset
    from fcnseg.engine import evaluate
    from fcnseg.engine.evaluator import check_compatible
    from fcnseg.engine.rundir import metrics_table, plot_confusion
    from fcnseg.engine.runtime import init_distributed, resolve_device, resolve_precision
    from fcnseg.errors import FcnsegError
    from fcnseg.files import check_output_file, write_json

    # where results go is checked before any work; the plot is drawn only where asked
    json_path = check_output_file(args.json, "--json") if args.json else None
    if args.plot:
        plot = check_output_file(args.plot, "--plot")
    else:
        plot = json_path.with_name(f"{json_path.stem}_confusion.png") if json_path else None
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    world = init_distributed(device)
    dataset = load_dataset(args.data, args.split)
    opened = open_from_args(args)
    model, meta = runnable(opened), opened.meta
    if opened.is_onnx:  # ONNX models run on the CPU runtimes
        device, precision = resolve_device("cpu"), "fp32"
    name = args.int8 or args.weights
    dataset = dataset.with_modality(meta.modality)  # the input the model declares: rgb, hha, rgb-hha
    check_compatible(meta, dataset, f"model {name}")
    model.to(device)
    if args.channels_last and not opened.is_onnx:
        model.to(memory_format=torch.channels_last)
    metrics = evaluate(
        model,
        dataset,
        meta=meta,
        precision=precision,
        channels_last=args.channels_last,
        device=device,
        max_images=args.max_images,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if not world.is_main:
        return 0
    print(f"{name} on {args.data} ({args.split}, {metrics['images']} images)")
    print(metrics_table(metrics, metrics["class_names"]))
    if json_path:
        write_json(json_path, metrics)
        print(f"metrics: {json_path}")
    if plot is not None:
        try:
            plot_confusion(metrics["confusion"], metrics["class_names"], plot)
            print(f"confusion matrix: {plot}")
        except FcnsegError as exc:  # the metrics above are already out; only the picture is missing
            if args.plot:
                raise FcnsegError(f"the metrics are reported above, but the plot was not written: {exc}") from None
            log.warning("confusion matrix plot not written: %s", exc)
    return 0
