"""`fcnseg predict`: label images, folders and globs with a trained model.

Writes, per input, ``NAME.png`` (palette PNG whose pixel values are class ids), with --overlay
``NAME_overlay.jpg`` (class colours blended over the photo, background left as it is, and a legend
band below naming the classes found) and with --probs ``NAME_probs.npy``
(C x H x W float16). An input that cannot be read is reported on one line and skipped; the
command exits 1 when any input failed.
"""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.errors import FcnsegError

GLOB_CHARS = "*?["
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="segment images, folders or globs with a checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a .pt checkpoint, .safetensors or .onnx export")
    source.add_argument("--weights", metavar="NAME_OR_FILE",
                        help="published weights by name (e.g. fcn8s-voc; see `fcnseg weights list`), "
                             "downloaded once, or a .caffemodel / pytorch-fcn / torchvision file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays (NAME_overlay.jpg)")
    p.add_argument("--probs", action="store_true", help="also write probabilities (NAME_probs.npy, float16)")
    p.add_argument("--tile", type=int, default=None,
                   help="sliding-window tile size in pixels (default: whole image up to 2.25 MP, "
                        "1024 tiles above; 0 = always whole image)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    p.add_argument("--tta-flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", default="1", help="test-time scales, e.g. 0.75,1,1.25 (default 1)")
    p.add_argument("--shift-stitch", action="store_true",
                   help="shift-and-stitch (paper Sec. 3.2) at the model's output stride; costs "
                        "stride^2 forward passes")
    p.add_argument("--stitch-factor", type=int, default=None, metavar="F",
                   help="shift-and-stitch with stride F instead (implies --shift-stitch)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="default: onnxruntime for .onnx files, torch otherwise")
    p.add_argument("--no-fast", action="store_true", help="disable the bf16 fast path (fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (slow first call per image/tile shape; pays off "
                        "with --tile or many same-size images)")
    p.add_argument("--max-pixels", type=float, default=100e6,
                   help="refuse larger images (decompression-bomb guard; default 100e6)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto = cuda where available (default); on a GPU prediction "
                        "uses autocast and channels_last")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=run)


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(s <= 0 for s in scales):
        raise FcnsegError(f"--scales {text!r} is not a list of positive numbers; e.g. 0.75,1,1.25")
    return scales


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders and globs into image paths; returns (paths, one error line per bad input)."""
    from fcnseg.inference.image_io import IMAGE_SUFFIXES, is_image_file

    paths, errors = [], []
    for item in inputs:
        if any(c in item for c in GLOB_CHARS) and not Path(item).exists():
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(f"{item}: the pattern matches no files")
            paths.extend(found)
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if is_image_file(p))
            if not found:
                errors.append(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            paths.extend(found)
        elif Path(item).exists():
            paths.append(Path(item))
        else:
            errors.append(f"{item}: no such file or folder")
    unique = {p.resolve(): p for p in reversed(paths)}  # first mention wins, as the user wrote it
    return list(reversed(unique.values())), errors


def output_stems(paths: list[Path]) -> list[str]:
    """Output base names: the file stem, made unique with a _2, _3 ... suffix where stems repeat."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}_{count}")
    return stems


def run(args: argparse.Namespace) -> int:
    from fcnseg.engine.progress import track
    from fcnseg.engine.runtime import resolve_device
    from fcnseg.inference import Segmenter, load_image
    from fcnseg.viz import legend_entries, overlay, save_index_png, with_legend

    scales = parse_scales(args.scales)
    resolve_device(args.device)  # a bad --device is one line before anything is loaded
    paths, errors = collect_inputs(args.inputs)
    for line in errors:
        log.error("%s", line)
    load = (Segmenter.from_checkpoint if args.checkpoint else Segmenter.from_pretrained)
    seg = load(args.checkpoint or args.weights, backend=args.backend, fast=False if args.no_fast else None,
               tile=args.tile, overlap=args.overlap, tta_flip=args.tta_flip, scales=scales,
               shift_stitch=args.stitch_factor or args.shift_stitch or None,
               max_pixels=int(args.max_pixels), compile=args.compile, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = seg.palette or _default_palette(seg.num_classes)
    failed = len(errors)
    done = 0
    for path, stem in zip(track(paths, len(paths), "predict", enabled=not args.no_progress, unit="images"),
                          output_stems(paths)):
        try:
            rgb = load_image(path, seg.max_pixels)
            probs = (_probs_file(out / f"{stem}_probs.npy", (seg.num_classes, *rgb.shape[:2]))
                     if args.probs else None)
            mask, _ = seg.segment(rgb, probs_out=probs)
            if probs is not None:
                probs.flush()
                del probs
            save_index_png(mask, palette, out / f"{stem}.png")
            if args.overlay:
                legend = legend_entries(mask, seg.class_names, palette)
                picture = with_legend(overlay(rgb, mask, palette), legend)
                Image.fromarray(picture).save(out / f"{stem}_overlay.jpg", quality=90)
            done += 1
        except FcnsegError as exc:
            failed += 1
            log.error("%s", exc)
    log.info("fcnseg predict: %d image(s) written to %s, %d failed", done, out, failed)
    return 1 if failed else 0


def _probs_file(path: Path, shape: tuple[int, int, int]) -> np.memmap:
    """A float16 .npy memmap, so probabilities stream to disk tile row by row."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]
