"""The model options of every command that runs a model (predict, evaluate, serve, quantize, export),
so that each takes the same sources with the same messages:

    --weights NAME_OR_FILE   a published name or any model file, recognised by content
    --checkpoint FILE        the same option under its older name
    --mirror URL             where published weights are fetched from
    --int8 MODEL             (predict, evaluate) an int8 model of --weights, checked against it
    --backend NAME           (predict, serve) torch, onnxruntime or openvino

Every command opens the model with fcnseg.weights.open_model (via :func:`open_from_args`).
"""

from __future__ import annotations

import argparse

SOURCE_HELP = (
    "the model: a published name (e.g. fcn8s-voc; see `fcnseg weights list`, downloaded once) "
    "or any model file, recognised by content: fcnseg .pt or .safetensors, fp32 or int8 .onnx, "
    ".caffemodel, pytorch-fcn or torchvision .pth. --checkpoint is the same option"
)
BACKENDS = ("torch", "onnxruntime", "openvino")


class _Once(argparse.Action):
    """Store the value; an error if the model was already given under the other spelling."""

    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest, None)
        if previous is not None and previous != values:
            parser.error(
                f"{option_string} {values}: the model is already given ({previous}); "
                "--weights and --checkpoint are the same option, give it once"
            )
        setattr(namespace, self.dest, values)


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    int8: bool = False,
    backends: tuple[str, ...] | None = None,
    required: bool = True,
) -> None:
    """Add --weights/--checkpoint, --mirror and, where asked, --int8 and --backend to ``parser``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--weights",
        "--checkpoint",
        dest="weights",
        metavar="NAME_OR_FILE",
        action=_Once,
        required=required,
        default=None,
        help=SOURCE_HELP,
    )
    group.add_argument(
        "--mirror",
        metavar="URL",
        default=None,
        help="fetch published weights from this mirror (replaces the publisher's scheme and host; also $FCNSEG_MIRROR)",
    )
    if int8:
        group.add_argument(
            "--int8",
            metavar="MODEL",
            default=None,
            help="run this int8 model of --weights (from `fcnseg quantize`; it is checked to be "
            "quantized from those weights). --weights MODEL alone works too",
        )
    if backends:
        group.add_argument(
            "--backend",
            choices=backends,
            default=None,
            help="default: onnxruntime for ONNX models (OpenVINO for int8 where installed), torch otherwise",
        )


def open_from_args(args: argparse.Namespace):
    """The :class:`fcnseg.weights.OpenedModel` the options name (with --int8: that model, checked)."""
    from fcnseg.inference.segmenter import open_source

    return open_source(args.weights, int8=getattr(args, "int8", None), mirror=args.mirror)


def segmenter_from_args(args: argparse.Namespace, **options):
    """A :class:`fcnseg.inference.Segmenter` for the options (``options``: constructor options)."""
    from fcnseg.inference import Segmenter

    return Segmenter.from_opened(open_from_args(args), backend=getattr(args, "backend", None), **options)
