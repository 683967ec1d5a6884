"""U-Net's weight map (instance labels, the gap term between touching objects), elastic deformation,
the instances:PATH format and training with --weight-map from the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.data import TrainTransform, load_dataset
from fcnseg.data.instances import W0, border_weights, weight_map, with_weight_map
from fcnseg.data.transforms import PadCollate, elastic_deform, elastic_field
from fcnseg.engine.losses import segmentation_loss
from fcnseg.errors import FcnsegError


def two_discs(gap: int = 2, radius: int = 10, size: int = 64) -> np.ndarray:
    """Instance ids of two discs side by side, centres ``2 radius + gap`` apart (``gap - 1``
    background pixels between them on the centre row)."""
    ys, xs = np.mgrid[:size, :size]
    ids = np.zeros((size, size), np.int32)
    cy, left = size // 2, size // 2 - gap // 2 - radius
    right = left + 2 * radius + gap
    ids[(ys - cy) ** 2 + (xs - left) ** 2 <= radius**2] = 3  # ids need not be consecutive
    ids[(ys - cy) ** 2 + (xs - right) ** 2 <= radius**2] = 7
    return ids


def test_border_weight_peaks_in_the_gap_between_touching_discs():
    ids = two_discs(gap=2)
    w = border_weights(ids)
    assert (w[ids > 0] == 0).all()
    cy, cx = 32, 32  # the gap: one background pixel on the centre row, 1 pixel from each disc ...
    assert ids[cy, cx] == 0 and ids[cy, cx - 1] == 3 and ids[cy, cx + 1] == 7
    # ... so d1 = d2 = 1 there: the largest weight of the map, about w0
    assert w[cy, cx] == pytest.approx(W0 * math.exp(-((1 + 1) ** 2) / 50), rel=1e-5)
    assert w.max() == w[cy, cx] and w.max() > 0.9 * W0
    assert w[cy, cx] > 10 * w[cy, 3]  # far out on the same row, beyond both discs: small
    assert w[2, 2] < 1e-3  # a corner far from both
    one = border_weights(np.where(ids == 3, 3, 0))  # a single disc has no second-nearest object
    assert one.max() == 0


def test_weight_map_adds_class_balance_and_ignores_void():
    ids = two_discs()
    mask = (ids > 0).astype(np.uint8)
    mask[0, 0] = 255
    w = weight_map(ids, mask, np.array([0.5, 2.0], np.float32))
    assert w[0, 0] == 0
    assert w[32, 20] == pytest.approx(2.0)  # inside a disc: its class weight only
    assert w[32, 32] > 0.5 + 0.8 * W0


def test_elastic_deformation_is_identity_at_zero_and_keeps_labels_valid():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    ids = torch.from_numpy(two_discs(size=50)[5:45]).long()
    mask = (ids > 0).long()
    mask[:3] = 255
    warped, (m0, i0) = elastic_deform(image, [mask, ids], torch.zeros(2, 40, 50))
    assert torch.equal(warped, image) and torch.equal(m0, mask) and torch.equal(i0, ids)
    field = elastic_field(40, 50, sigma=10)
    assert field.shape == (2, 40, 50) and field.abs().max() > 1
    warped, (m1, i1) = elastic_deform(image, [mask, ids], field)
    assert warped.dtype == torch.uint8 and m1.dtype == mask.dtype and i1.dtype == ids.dtype
    assert set(m1.unique().tolist()) <= {0, 1, 255} and set(i1.unique().tolist()) <= {0, 3, 7}
    assert not torch.equal(m1, mask)
    # mask and ids moved together: the class of every pixel is still "id > 0" where not void
    assert torch.equal((i1 > 0).long()[m1 != 255], m1[m1 != 255])


def test_train_transform_moves_extra_labels_with_the_mask():
    torch.manual_seed(1)
    ids = torch.from_numpy(two_discs(size=48)).long()
    mask = (ids > 0).long()
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    transform = TrainTransform(crop_size=56, scale_range=(0.7, 1.3), hflip=True, elastic=10)
    for _ in range(5):
        _, m, i = transform(image, mask, ids)
        valid = m != 255
        assert m.shape == i.shape == (56, 56)
        assert torch.equal((i[valid] > 0).long(), m[valid]) and (i[~valid] == 0).all()


def test_pixel_weights_scale_the_loss_and_collate_pads_them_with_zero():
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    ones = segmentation_loss(logits, target, pixel_weight=torch.ones(1, 4, 4))
    assert torch.allclose(ones, segmentation_loss(logits, target))
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 5.0
    only = segmentation_loss(logits, target, pixel_weight=w)
    expected = torch.nn.functional.cross_entropy(logits[:, :, :1, :1], target[:, :1, :1])
    assert torch.allclose(only, expected)
    a = (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(2, 2).long(), torch.ones(2, 2))
    b = (torch.zeros(3, 3, 1, dtype=torch.uint8), torch.zeros(3, 1).long(), torch.ones(3, 1))
    images, masks, weights = PadCollate()([a, b])
    assert weights.shape == (2, 3, 2) and weights[0, 2].sum() == 0 and weights[1, :, 1].sum() == 0


def make_instances(root, count=(3, 2), size=48):
    """A tiny instances:PATH dataset: touching discs on noise, 16-bit instance masks."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), count):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for k in range(n):
            ids = two_discs(gap=1 + k, radius=8, size=size)
            rgb = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            rgb[ids > 0] += 150
            Image.fromarray(rgb).save(root / split / "images" / f"c{k}.png")
            Image.fromarray(ids.astype(np.uint16) * 300).save(root / split / "masks" / f"c{k}.png")
    return root


def test_instances_format_reads_ids_and_classes(tmp_path):
    root = make_instances(tmp_path / "cells")
    data = load_dataset(f"instances:{root}", "train")
    assert data.class_names == ("background", "object") and len(data) == 3
    image, mask = data[0]
    ids = data.load_instances(0)
    assert set(np.unique(ids)) == {0, 900, 2100} and torch.equal(mask, torch.from_numpy(ids > 0).long())
    samples, transform = with_weight_map(data, TrainTransform(crop_size=40))
    image, mask, weights = transform(*samples[0])
    assert image.shape == (3, 40, 40) and weights.shape == (40, 40) and weights.max() > 5
    with pytest.raises(FcnsegError, match="instances:PATH"):
        with_weight_map(load_dataset("shapes", "val"), None)


def test_train_two_iterations_with_weight_map_from_the_cli(tmp_path):
    root = make_instances(tmp_path / "cells")
    out = tmp_path / "run"
    args = ["train", "--data", f"instances:{root}", "--model", "unet-valid", "--width", "0.0625"]
    args += ["--iterations", "2", "--batch-size", "2", "--crop-size", "40", "--elastic", "10", "--weight-map"]
    args += ["--optimizer", "adamw", "--num-samples", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary and (out / "last.pt").is_file()
    config = (out / "config.yaml").read_text()
    assert "weight_map: true" in config and "elastic: 10.0" in config
    assert main(["train", "--data", "shapes", "--weight-map", "--iterations", "1", "--out", str(tmp_path / "x")]) == 2
    bad = ["train", "--data", f"instances:{root}", "--weight-map", "--class-weights", "median"]
    assert main([*bad, "--iterations", "1", "--out", str(tmp_path / "y")]) == 2
