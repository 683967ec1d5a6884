"""`fcnseg models`: every model with its parameter count and FLOPs, both counted (not typed in).

Models are built on PyTorch's meta device (shapes only, no memory, no arithmetic), so the table of
full-size models takes well under a second. GFLOPs count a multiply-add as 2 FLOPs.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list models with parameter counts and GFLOPs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(500, 500),
        metavar=("H", "W"),
        help="input size for the FLOP count (default: 500 500, a PASCAL VOC image)",
    )
    p.add_argument("--num-classes", type=int, default=21, help="number of classes (default: 21, VOC)")
    p.add_argument("--width", type=float, default=1.0, help="channel-width multiplier (default: 1)")
    p.set_defaults(func=run)


def model_rows(num_classes: int = 21, size: tuple[int, int] = (500, 500), width: float = 1.0) -> list[dict]:
    """One row per (model, backbone, geometry): params, GFLOPs at ``size``, the stride of the scores
    upsampled to the input (FCN-32s 32, FCN-16s 16, FCN-8s 8), summary."""
    import torch

    from fcnseg.models import build_model, count_flops, count_parameters, list_models, model_entry

    rows = []
    for name in list_models():
        entry = model_entry(name)
        for backbone in entry.backbones:
            for geometry in entry.geometries:
                with torch.device("meta"):
                    model = build_model(name, num_classes, backbone=backbone, geometry=geometry, width=width)
                rows.append(
                    {
                        "model": name,
                        "backbone": backbone,
                        "geometry": geometry,
                        "params": count_parameters(model),
                        "gflops": count_flops(model, size) / 1e9,
                        "stride": getattr(model, "score_stride", model.output_stride),
                        "summary": entry.summary,
                    }
                )
    return rows


def run(args: argparse.Namespace) -> int:
    from fcnseg.errors import FcnsegError

    if min(args.size) < 1 or args.num_classes < 1:
        raise FcnsegError("--size and --num-classes must be positive")
    height, width = args.size
    rows = model_rows(args.num_classes, (height, width), args.width)
    flops_title = f"GFLOPs@{height}x{width}"
    header = f"{'model':<14}{'backbone':<11}{'geometry':<10}{'params':>9}{flops_title:>17}{'stride':>8}  summary"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<14}{r['backbone']:<11}{r['geometry']:<10}{r['params'] / 1e6:>8.1f}M"
            f"{r['gflops']:>17.1f}{r['stride']:>8}  {r['summary']}"
        )
    print(
        f"\n{args.num_classes} classes, width {args.width:g}; params include fixed upsampling filters; "
        "FLOPs counted with torch.utils.flop_counter (multiply-add = 2); stride: of the finest score map, "
        "the one upsampled to the input."
    )
    return 0
