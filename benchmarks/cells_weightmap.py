"""Does U-Net's weight map separate touching cells better? Real nuclei, unpadded U-Net, CPU.

    python benchmarks/cells_weightmap.py [--cache DIR] [--iterations 200] [--lr 2e-3] [--seeds 0 1] [--width 0.0625]
                                         [--variants plain balanced weightmap] [--out DIR]

Data: the one real DSB2018 fluorescence image the stardist wheel ships with its instance mask
(stardist/data/images/img2d.tif and mask2d.tif, 512x512, 16-bit), read out of the wheel with zipfile
after `pip download --no-deps stardist` into --cache (stardist itself is not installed). The right
half (two 256x256 quadrants) is the training split, the left half (512 rows x 256 columns, one
image: 73 nuclei, 19 touching pairs, against the right half's 57 and 5) the held-out test split,
written as an ``instances:PATH`` dataset.

Variants, each trained from the same seed with the same augmentation (random 128x128 crops,
horizontal flips, elastic deformation sigma 10 px on a 3x3 grid), AdamW with a poly schedule, batch 2,
--iterations (run variants as separate processes with --variants to use more cores):

  plain       per-pixel cross-entropy, unweighted
  balanced    class balance only (median-frequency weights, w_c of the weight map)
  weightmap   --weight-map: w_c + 10 exp(-(d1 + d2)^2 / (2 * 5^2)) on the gaps between nuclei

The held-out half is predicted by Segmenter (overlap-tile, mirrored borders). Scores: objects
recovered (predicted connected components, 4-connected, matched one to one to true nuclei at
IoU >= 0.5), false components (predicted components matching none), touching pairs separated (true
nuclei that touch, 8-connected, both recovered by distinct components), merged pairs (both nuclei's
pixels mostly inside one predicted component), and foreground IoU.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

import fcnseg
from fcnseg.engine.checkpoint import load_checkpoint
from fcnseg.images import save_image
from fcnseg.inference import Segmenter

MEMBERS = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
DEFAULT_CACHE = Path.home() / ".cache" / "fcnseg" / "stardist-wheel"


def stardist_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16 HxW, instance ids HxW) from the stardist wheel (downloaded once into ``cache``)."""
    wheels = sorted(cache.glob("stardist-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "stardist",
            "-d",
            str(cache),
        ]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("stardist-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        image, ids = (np.asarray(Image.open(io.BytesIO(wheel.read(name)))) for name in MEMBERS)
    return image, ids.astype(np.int32)


def write_dataset(root: Path, image: np.ndarray, ids: np.ndarray) -> None:
    """instances:ROOT: train = the two right quadrants, val = the left half."""
    grey = np.clip(image.astype(np.float32) * (255.0 / max(1, int(image.max()))), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    half = ids.shape[1] // 2
    pieces = {
        "train": {
            "top_right": (slice(0, 256), slice(half, None)),
            "bottom_right": (slice(256, 512), slice(half, None)),
        },
        "val": {"left": (slice(0, 512), slice(0, half))},
    }
    for split, parts in pieces.items():
        for name, box in parts.items():
            save_image(Image.fromarray(rgb[box]), root / split / "images" / f"{name}.png")
            save_image(Image.fromarray(ids[box].astype(np.uint16)), root / split / "masks" / f"{name}.png")


def touching_pairs(ids: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of distinct instances with 8-connected neighbouring pixels."""
    pairs: set[tuple[int, int]] = set()
    h, w = ids.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = ids[0 : h - dy, max(0, -dx) : w - max(0, dx)]
        b = ids[dy:h, max(0, dx) : w - max(0, -dx)]
        sel = (a > 0) & (b > 0) & (a != b)
        pairs |= {(int(min(p, q)), int(max(p, q))) for p, q in zip(a[sel], b[sel])}
    return pairs


def score(pred_fg: np.ndarray, ids: np.ndarray) -> dict:
    comps, _ = ndimage.label(pred_fg)
    truth = [int(t) for t in np.unique(ids) if t]
    # overlap counts between every true instance and every component
    both = (ids > 0) & (comps > 0)
    pair_counts: dict[tuple[int, int], int] = {}
    for t, c in zip(ids[both], comps[both]):
        pair_counts[(int(t), int(c))] = pair_counts.get((int(t), int(c)), 0) + 1
    t_area = {t: int((ids == t).sum()) for t in truth}
    c_area = dict(zip(*np.unique(comps[comps > 0], return_counts=True)))
    matched: dict[int, int] = {}
    for (t, c), inter in pair_counts.items():
        if inter / (t_area[t] + c_area[c] - inter) >= 0.5:
            matched[t] = c
    main_comp = {}
    for t in truth:
        best = max(((inter, c) for (tt, c), inter in pair_counts.items() if tt == t), default=(0, 0))
        main_comp[t] = best[1] if best[0] > 0.5 * t_area[t] else 0
    pairs = touching_pairs(ids)
    separated = sum(1 for a, b in pairs if a in matched and b in matched and matched[a] != matched[b])
    merged = sum(1 for a, b in pairs if main_comp[a] and main_comp[a] == main_comp[b])
    inter = (pred_fg & (ids > 0)).sum()
    return {
        "objects": len(truth),
        "recovered": len(matched),
        "false": len(c_area) - len(set(matched.values())),
        "pairs": len(pairs),
        "separated": separated,
        "merged": merged,
        "fg_iou": inter / max(1, (pred_fg | (ids > 0)).sum()),
    }


VARIANTS = {
    "plain": {},
    "balanced": {"class_weights": "median"},
    "weightmap": {"weight_map": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument(
        "--score", type=Path, nargs="+", default=None, help="only score these run folders' last.pt (no training)"
    )
    args = parser.parse_args()
    if args.score:
        return score_runs(args)

    image, ids = stardist_arrays(args.cache)
    work = args.out or Path(tempfile.mkdtemp(prefix="cells_weightmap_"))
    data = work / "cells"
    write_dataset(data, image, ids)
    test_ids = fcnseg.load_dataset(f"instances:{data}", "val").load_instances(0)
    test_image = data / "val" / "images" / "left.png"
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            run = work / f"{variant}-s{seed}"
            config = dict(
                data=f"instances:{data}",
                model="unet-valid",
                width=args.width,
                iterations=args.iterations,
                batch_size=2,
                crop_size=128,
                hflip=True,
                elastic=10.0,
                optimizer="adamw",
                lr=args.lr,
                lr_schedule="poly",
                seed=seed,
                num_samples=0,
                log_every=25,
                progress=False,
                out=str(run),
                **VARIANTS[variant],
            )
            start = time.perf_counter()
            fcnseg.train(config)
            seconds = time.perf_counter() - start
            rows.append((variant, seed, seconds, score_run(run, test_image, test_ids)))
            print(f"{variant} seed {seed}: {rows[-1][3]} ({seconds:.0f} s)", flush=True)
    print_table(rows, f"{args.iterations} iterations (lr {args.lr})", args.width)


def score_run(run: Path, test_image: Path, test_ids: np.ndarray) -> dict:
    """The scores of run/last.pt on the held-out half (Segmenter: overlap-tile, mirrored borders)."""
    seg = Segmenter.from_pretrained(run / "last.pt", fast=False)
    return score(seg.predict(test_image) == 1, test_ids)


def score_runs(args: argparse.Namespace) -> None:
    """--score RUN...: each run's last.pt (e.g. runs stopped early by SIGTERM) on the held-out half of
    its own data folder (RUN/../cells)."""
    rows = []
    for run in args.score:
        data = run.parent / "cells"
        test_ids = fcnseg.load_dataset(f"instances:{data}", "val").load_instances(0)
        iteration = load_checkpoint(run / "last.pt")["train_state"]["iteration"]
        rows.append(
            (f"{run.name} (iteration {iteration})", "", None, score_run(run, data / "val/images/left.png", test_ids))
        )
    print_table(rows, "last.pt of each run", args.width)


def print_table(rows: list, budget: str, width: float) -> None:
    print(f"\nheld-out left half, {rows[0][3]['objects']} nuclei, {rows[0][3]['pairs']} touching pairs;")
    print(f"unet-valid width {width}, {budget}, batch 2, 128 px crops + elastic + flips\n")
    print(
        "| variant | seed | recovered (IoU >= 0.5) | false components | touching pairs separated | merged pairs | fg IoU | train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, seed, seconds, s in rows:
        print(
            f"| {variant} | {seed} | {s['recovered']}/{s['objects']} | {s['false']} | "
            f"{s['separated']}/{s['pairs']} | {s['merged']} | {s['fg_iou']:.3f} | "
            f"{'-' if seconds is None else f'{seconds:.0f}'} |"
        )


if __name__ == "__main__":
    main()
