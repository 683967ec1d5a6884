"""`fcnseg export`: write a checkpoint as ONNX (dynamic height/width) or safetensors (no pickle).

Both carry the checkpoint's metadata (classes, palette, normalisation) so that
`fcnseg predict --checkpoint FILE` works on the exported file directly.
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("onnx", "safetensors")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX or safetensors",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint written by fcnseg train")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --out suffix)")
    p.add_argument("--out", required=True, help="output file (.onnx or .safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.engine.checkpoint import model_from_checkpoint
    from fcnseg.errors import FcnsegError
    from fcnseg.files import check_output_file
    from fcnseg.inference import export

    out = check_output_file(args.out, "--out")
    fmt = args.format or out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FcnsegError(f"cannot tell the format of {out}; pass --format onnx or --format safetensors")
    if out.resolve() == Path(args.checkpoint).resolve():
        raise FcnsegError(f"--out {out} is the --checkpoint itself; choose another file name")
    model, meta = model_from_checkpoint(args.checkpoint)
    if fmt == "onnx":
        try:
            export.export_onnx(model, meta, out)
        except ImportError:
            raise FcnsegError("ONNX export needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    else:
        export.export_safetensors(model, meta, out)
    print(f"fcnseg export: wrote {out} ({fmt}, {out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
