"""`fcnseg export`: write a model as ONNX (dynamic height/width) or safetensors (no pickle).

The model is any source with PyTorch weights: a .pt from `fcnseg train`, a published name
(fcn8s-voc), a .caffemodel, a pytorch-fcn or torchvision .pth, a .safetensors. Both formats carry
the model's metadata (classes, palette, normalisation, what it was trained on) so that
`fcnseg predict --weights FILE` works on the exported file directly.
"""

from __future__ import annotations

import argparse
import logging

from fcnseg.cli._model_options import add_model_options, open_from_args

log = logging.getLogger("fcnseg.export")

FORMATS = ("onnx", "safetensors")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX or safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from the --out suffix)")
    p.add_argument("--out", required=True, help="output file (.onnx or .safetensors)")
    p.set_defaults(func=run)


def export_format(out, fmt: str | None) -> str:
    """The format to write: --format, which must agree with the --out suffix, or the suffix alone."""
    from fcnseg.errors import FcnsegError

    suffix = out.suffix.lower().lstrip(".")
    if fmt is None:
        if suffix not in FORMATS:
            raise FcnsegError(
                f"--out {out}: cannot tell the format from the name; end it in .onnx or .safetensors, or pass --format"
            )
        return suffix
    if suffix != fmt:
        raise FcnsegError(
            f"--out {out} does not end in .{fmt} but --format is {fmt}; name the file "
            f"{out.with_suffix('.' + fmt).name}, or drop --format to take the format from the name"
        )
    return fmt


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.errors import FcnsegError
    from fcnseg.files import check_output_file
    from fcnseg.inference import export

    out = check_output_file(args.out, "--out")
    fmt = export_format(out, args.format)
    if out.resolve() == Path(args.weights).expanduser().resolve():
        raise FcnsegError(f"--out {out} is the --weights file itself; choose another file name")
    opened = open_from_args(args)
    model, meta = opened.require_module("export"), opened.meta
    if fmt == "onnx":
        try:
            export.export_onnx(model, meta, out)
        except ImportError:
            raise FcnsegError("ONNX export needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    else:
        export.export_safetensors(model, meta, out)
    log.info("wrote %s (%s, %.1f MB)", out, fmt, out.stat().st_size / 1e6)
    return 0
