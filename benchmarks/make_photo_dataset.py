"""Build a small real-photo segmentation dataset (fcnseg `folder:` layout) from the sample photos that
ship inside the scikit-image wheel, with labels from a fixed colour rule. For agreement tests of the
int8 path on a model trained on real images (benchmarks/int8_agreement.py), not for accuracy claims.

    pip install scikit-image          # only its bundled data files are read; skimage is not imported
    python benchmarks/make_photo_dataset.py --out /tmp/photos [--size 128] [--per-image 24]

Images: every RGB photo in skimage/data (astronaut, chelsea, coffee, rocket, motorcycle_left/right,
retina, hubble_deep_field, ihc, brick, grass, gravel, color, logo, ...; grey ones as grey RGB).
Val takes whole photos (every fourth, sorted by name), train the rest, so no val pixel was seen in
training. From each photo ``--per-image`` crops (random side 40-100% of the shorter side, fixed
seed) are resized to ``--size`` x ``--size``.

Labels (deterministic, from the photo itself): the crop is blurred (5x5 box), then each pixel gets
  red / green / blue (1 / 2 / 3)  if its saturation (max - min of R, G, B) >= 48: the largest channel
  dark (4)                        else if its luminance < 70
  bright (5)                      else if its luminance > 180
  background (0)                  otherwise (unsaturated mid-tones)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

CLASSES = [
    ("background", (0, 0, 0)),
    ("red", (200, 40, 40)),
    ("green", (40, 180, 40)),
    ("blue", (40, 60, 200)),
    ("dark", (90, 90, 90)),
    ("bright", (240, 240, 160)),
]
SKIP = {"lbpcascade_frontalface_opencv.xml"}


def sample_photos() -> list[Path]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("make_photo_dataset: scikit-image is not installed; pip install scikit-image")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg") or path.name in SKIP:
            continue
        with Image.open(path) as im:
            if min(im.size) >= 128:
                photos.append(path)
    return photos


def label(rgb: np.ndarray) -> np.ndarray:
    """The colour rule of the module docstring on an HxWx3 uint8 crop."""
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.BoxBlur(2)), dtype=np.int32)
    sat = blurred.max(-1) - blurred.min(-1)
    luma = (299 * blurred[..., 0] + 587 * blurred[..., 1] + 114 * blurred[..., 2]) // 1000
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[luma < 70] = 4
    mask[luma > 180] = 5
    colourful = sat >= 48
    mask[colourful] = 1 + blurred.argmax(-1)[colourful]
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-image", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    photos = sample_photos()
    counts = {"train": 0, "val": 0}
    for index, path in enumerate(photos):
        split = "val" if index % 4 == 3 else "train"
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            photo = im.convert("RGB")
        width, height = photo.size
        for k in range(args.per_image):
            side = int(min(width, height) * rng.uniform(0.4, 1.0))
            x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            crop = np.asarray(photo.crop((x0, y0, x0 + side, y0 + side)).resize((args.size, args.size), Image.BILINEAR))
            stem = f"{path.stem}_{k:02d}"
            Image.fromarray(crop).save(out / split / "images" / f"{stem}.png")
            Image.fromarray(label(crop)).save(out / split / "masks" / f"{stem}.png")
            counts[split] += 1
    (out / "classes.json").write_text(
        json.dumps({"classes": [{"name": n, "color": list(c)} for n, c in CLASSES]}, indent=1)
    )
    print(
        f"{out}: {len(photos)} photos from scikit-image, {counts['train']} train / {counts['val']} val crops "
        f"of {args.size}x{args.size}, {len(CLASSES)} classes"
    )


if __name__ == "__main__":
    main()
