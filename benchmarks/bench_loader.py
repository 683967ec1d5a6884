"""Loader throughput: VOC-sized (500x375) JPEG + palette-PNG decode, with and without augmentation,
through `build_loader` with 0, 1 and 2 worker processes. Prints images/s.

    python benchmarks/bench_loader.py [--images 200] [--workers 0 1 2] [--batch-size 1]

The images are generated into a temporary VOC-layout folder (smooth colours plus shapes, so the
JPEGs compress like photos rather than like noise). The first batch is not timed (worker start-up).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.data import TrainTransform, build_loader, load_dataset
from fcnseg.data.shapes import render
from fcnseg.data.voc import PALETTE
from fcnseg.viz import save_index_png

WIDTH, HEIGHT = 500, 375


def make_voc_folder(root: Path, n: int) -> None:
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    ids = [f"2012_{i:06d}" for i in range(n)]
    for k, image_id in enumerate(ids):
        image, mask = render(k, size=128)
        image = Image.fromarray(image).resize((WIDTH, HEIGHT), Image.BILINEAR)
        image.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        big_mask = np.asarray(Image.fromarray(mask).resize((WIDTH, HEIGHT), Image.NEAREST))
        save_index_png(big_mask * 3, PALETTE, voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


def images_per_second(dataset, transform, workers: int, batch_size: int) -> float:
    loader = build_loader(dataset, batch_size=batch_size, shuffle=True, transform=transform, workers=workers)
    it = iter(loader)
    next(it)  # start-up (workers forking) is not what we measure
    count, start = 0, time.perf_counter()
    for images, _ in it:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    augment = TrainTransform(crop_size=320, scale_range=(0.5, 2.0), hflip=True, jitter=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        make_voc_folder(Path(tmp), args.images)
        dataset = load_dataset(f"voc:{tmp}", "train")
        print(
            f"{args.images} images {WIDTH}x{HEIGHT} (JPEG + palette PNG), batch {args.batch_size}, augment = {augment}"
        )
        print(f"{'workers':>7} | {'decode img/s':>12} | {'decode+augment img/s':>20}")
        print(f"{'-' * 7}-+-{'-' * 12}-+-{'-' * 20}")
        for workers in args.workers:
            plain = images_per_second(dataset, None, workers, args.batch_size)
            aug = images_per_second(dataset, augment, workers, args.batch_size)
            print(f"{workers:>7} | {plain:>12.1f} | {aug:>20.1f}")


if __name__ == "__main__":
    main()
