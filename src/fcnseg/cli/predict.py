"""`fcnseg predict`: label images, folders and globs with a trained model.

Writes, per input, ``NAME.png`` (palette PNG whose pixel values are class ids), with --overlay
``NAME_overlay.jpg`` (class colours blended over the photo, background left as it is, and a legend
band below naming the classes found) and with --probs ``NAME_probs.npy``
(C x H x W float16). NAME is the input's file stem; inputs that share one (a/x.png, b/x.png) get
NAME_2, NAME_3, ... skipping every other input's own stem, all decided before anything is written
and the renamed ones listed in one line. Masks without a model palette use PASCAL VOC's colour map,
as `fcnseg serve` does. An input that cannot be read is reported on one line and skipped; the
command exits 1 when any input failed. Every file is written whole or not at all (temp file +
rename); a full disk stops the command with one line. Inputs are never overwritten: the output
folder's contents are never read as inputs, and a run whose outputs would replace an input is
refused before anything is written. Under torchrun (`torchrun --nproc_per_node K -m fcnseg predict ...`)
each process predicts its share of the inputs into the same folder.
"""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

import numpy as np

from fcnseg.cli._model_options import BACKENDS, add_model_options, segmenter_from_args
from fcnseg.config import arg_type
from fcnseg.errors import FcnsegError
from fcnseg.predict_options import MAX_SCALES, MAX_TILE, MIN_TILE, SCALE_RANGE, parse_scales, tile_problem

GLOB_CHARS = "*?["
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images, folders or globs with a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    add_model_options(p, int8=True, backends=BACKENDS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays (NAME_overlay.jpg)")
    p.add_argument("--probs", action="store_true", help="also write probabilities (NAME_probs.npy, float16)")
    p.add_argument(
        "--tile",
        type=arg_type(int, check=tile_problem),
        default=None,
        help=f"sliding-window tile size in pixels, {MIN_TILE}-{MAX_TILE} (default: whole image up "
        "to 2.25 MP, 1024 tiles above; 0 = always whole image)",
    )
    p.add_argument(
        "--overlap", type=arg_type(float, min=0, below=1), default=0.25, help="tile overlap fraction (default 0.25)"
    )
    p.add_argument("--tta-flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument(
        "--scales",
        default="1",
        help=f"test-time scales, e.g. 0.75,1,1.25: 1-{MAX_SCALES} numbers in "
        f"{SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g} (default 1)",
    )
    p.add_argument(
        "--shift-stitch",
        action="store_true",
        help="shift-and-stitch (paper Sec. 3.2) at the model's output stride; costs stride^2 forward passes",
    )
    p.add_argument(
        "--stitch-factor",
        type=arg_type(int, min=1),
        default=None,
        metavar="F",
        help="shift-and-stitch with stride F instead (implies --shift-stitch)",
    )
    p.add_argument("--no-fast", action="store_true", help="disable the bf16 fast path (fp32)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (slow first call per image/tile shape; pays off "
        "with --tile or many same-size images)",
    )
    p.add_argument(
        "--max-pixels",
        type=arg_type(float, min=1),
        default=100e6,
        help="refuse larger images (decompression-bomb guard; default 100e6)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto = cuda where available (default); on a GPU prediction "
        "uses autocast and channels_last",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=run)


def _glob_base(pattern: str) -> Path:
    """The folder a pattern searches in: its leading parts without glob characters."""
    parts = []
    for part in Path(pattern).parts:
        if any(c in part for c in GLOB_CHARS):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _results_of(out: Path | None, base: Path):
    """A test for "this file is one of our own results": inside ``out`` where ``out`` lies strictly
    inside the searched folder ``base`` (e.g. predict photos/ --out photos/preds)."""
    if out is None or base.resolve() not in out.parents:
        return lambda p: False
    return lambda p: out in p.resolve().parents


def collect_inputs(inputs: list[str], out: Path | None = None) -> tuple[list[Path], list[str]]:
    """Expand files, folders and globs into image paths; returns (paths, one error line per bad input).
    A folder or pattern never picks up files in the output folder ``out`` when that lies inside the
    folder searched (they are this command's own results). ``out`` equal to an input's folder is
    allowed as long as no output replaces an input (see ``check_no_overwrite``)."""
    from fcnseg.inference.image_io import IMAGE_SUFFIXES, is_image_file

    out = out.resolve() if out is not None else None
    paths, errors = [], []
    for item in inputs:
        if any(c in item for c in GLOB_CHARS) and not Path(item).exists():
            ours = _results_of(out, _glob_base(item))
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file() and not ours(Path(p)))
            if not found:
                errors.append(f"{item}: the pattern matches no files")
            paths.extend(found)
        elif Path(item).is_dir():
            ours = _results_of(out, Path(item))
            entries = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not ours(p))
            found = [p for p in entries if is_image_file(p)]
            errors.extend(_not_a_file(p) for p in entries if not is_image_file(p) and not p.is_dir())
            if not found:
                errors.append(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            paths.extend(found)
        elif Path(item).exists():
            paths.append(Path(item))
        else:
            errors.append(f"{item}: no such file or folder")
    unique = {p.resolve(): p for p in reversed(paths)}  # first mention wins, as the user wrote it
    return list(reversed(unique.values())), errors


def _not_a_file(path: Path) -> str:
    """The line for an image-named entry that is no regular file (a link loop, broken link, FIFO):
    reported, never opened."""
    from fcnseg.files import check_input_file

    try:
        check_input_file(path, "image")
    except FcnsegError as exc:
        return str(exc)
    return f"{path}: image is not a regular file; skipped"


def output_stems(paths: list[Path]) -> list[str]:
    """Output base names, one per input, all different, decided before anything is written.

    An input keeps its file stem when no other input has it; inputs sharing a stem (a/x.png, b/x.png)
    get the stem, then STEM_2, STEM_3, ... in input order, skipping every name that is some other
    input's own stem (so a/x.png b/x.png c/x_2.png give x, x_3, x_2) or already given. Names are
    compared without case, so the outputs stay distinct on case-insensitive file systems too."""
    own = [path.stem for path in paths]
    taken = {stem.casefold() for stem in own}
    claimed: set[str] = set()
    stems = []
    for stem in own:
        name, k = stem, 1
        while name.casefold() in claimed or (k > 1 and name.casefold() in taken):
            k += 1
            name = f"{stem}_{k}"
        claimed.add(name.casefold())
        stems.append(name)
    return stems


def report_renamed(paths: list[Path], stems: list[str], limit: int = 5) -> None:
    """One line naming the inputs whose outputs are not named after their own stem."""
    renamed = [f"{path} -> {stem}.png" for path, stem in zip(paths, stems) if stem != path.stem]
    if renamed:
        more = f", ... {len(renamed) - limit} more" if len(renamed) > limit else ""
        log.info(
            "%d input(s) share a file name with another input, so their outputs are renamed: %s%s",
            len(renamed),
            ", ".join(renamed[:limit]),
            more,
        )


def output_files(out: Path, stem: str, args: argparse.Namespace) -> list[Path]:
    """Every file written for one input."""
    names = [f"{stem}.png"] + [f"{stem}_overlay.jpg"] * bool(args.overlay) + [f"{stem}_probs.npy"] * bool(args.probs)
    return [out / name for name in names]


def check_no_overwrite(paths: list[Path], stems: list[str], out: Path, args: argparse.Namespace) -> None:
    """FcnsegError before anything is written if an output file would replace one of the inputs."""
    inputs = {p.resolve(): p for p in paths}
    for stem in stems:
        for target in output_files(out, stem, args):
            if target.resolve() in inputs:
                raise FcnsegError(
                    f"--out {out} would overwrite the input {inputs[target.resolve()]} with "
                    f"{target.name}; choose another --out (e.g. {out / 'predictions'})"
                )


def run(args: argparse.Namespace) -> int:
    from fcnseg.engine.progress import track
    from fcnseg.engine.runtime import all_reduce_sum, init_distributed, resolve_device, shard
    from fcnseg.files import WriteError, atomic_npy_rows, check_output_dir, clean_stale_temps
    from fcnseg.inference import load_image
    from fcnseg.viz import save_index_png, save_overlay

    scales = parse_scales(args.scales)
    from fcnseg.palette import class_colours

    device = resolve_device(args.device)  # a bad --device is one line before anything is loaded
    world = init_distributed(device)  # torchrun: one share of the inputs per process
    out = check_output_dir(args.out, "--out")
    paths, errors = collect_inputs(args.inputs, out)
    errors = errors if world.is_main else []
    stems = output_stems(paths)
    check_no_overwrite(paths, stems, out, args)
    if world.is_main:
        report_renamed(paths, stems)
    for line in errors:
        log.error("%s", line)
    seg = segmenter_from_args(
        args,
        fast=False if args.no_fast else None,
        tile=args.tile,
        overlap=args.overlap,
        tta_flip=args.tta_flip,
        scales=scales,
        shift_stitch=args.stitch_factor or args.shift_stitch or None,
        max_pixels=int(args.max_pixels),
        compile=args.compile,
        device=args.device,
    )
    clean_stale_temps(out, older_than_s=600)  # left by a killed earlier run (not by one running now)
    palette = class_colours(seg.palette, seg.num_classes)  # the one palette rule, as serve and plots use
    failed = len(errors)
    done = 0
    jobs = shard(list(zip(paths, stems)))  # stems from the whole list: same names on every rank
    for path, stem in track(jobs, len(jobs), "predict", enabled=world.is_main and not args.no_progress, unit="images"):
        try:
            rgb = load_image(path, seg.max_pixels)
            if args.probs:  # streamed to a temp file band by band, renamed into place when complete
                with atomic_npy_rows(out / f"{stem}_probs.npy", (seg.num_classes, *rgb.shape[:2]), np.float16) as probs:
                    mask, _ = seg.segment(rgb, probs_out=probs)
            else:
                mask, _ = seg.segment(rgb)
            save_index_png(mask, palette, out / f"{stem}.png")
            if args.overlay:
                save_overlay(rgb, mask, palette, out / f"{stem}_overlay.jpg", quality=90, class_names=seg.class_names)
            done += 1
        except WriteError:
            raise  # a full disk or a read-only folder fails every image after this one the same way
        except FcnsegError as exc:
            failed += 1
            log.error("%s", exc)
    done, failed = (int(n) for n in all_reduce_sum([done, failed]))
    if world.is_main:
        ranks = f" by {world.world_size} processes" if world.enabled else ""
        log.info("fcnseg predict: %d image(s) written to %s%s, %d failed", done, out, ranks, failed)
    return 1 if failed else 0
