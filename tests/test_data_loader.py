import numpy as np
import pytest
import torch

from fcnseg.data import (
    PadCollate,
    TrainTransform,
    build_loader,
    class_frequencies,
    load_dataset,
    median_frequency_weights,
)
from fcnseg.data.base import SegmentationDataset
from fcnseg.errors import FcnsegError


class Tiny(SegmentationDataset):
    """Sample i is (i+4)x(i+6) of label i % 3; sample `bad` cannot be read."""

    class_names = ("a", "b", "c")
    palette = ((0, 0, 0), (1, 1, 1), (2, 2, 2))

    def __init__(self, n=6, bad=None):
        self.n, self.bad, self.identity = n, bad, f"tiny/{n}/{bad}"

    def __len__(self):
        return self.n

    def sample_name(self, i):
        return f"/data/img{i}.png"

    def load_arrays(self, i):
        if i == self.bad:
            raise FcnsegError(f"{self.sample_name(i)}: truncated file; re-download it")
        return np.full((i + 4, i + 6, 3), 10 * i, np.uint8), np.full((i + 4, i + 6), i % 3, np.uint8)


def test_pad_collate_pads_with_pad_value_and_ignore():
    images, masks = PadCollate((1, 2, 3))([Tiny()[0], Tiny()[2]])
    assert images.shape == (2, 3, 6, 8) and images.dtype == torch.uint8
    assert masks.shape == (2, 6, 8) and masks.dtype == torch.int64
    assert images[0, :, 5, 7].tolist() == [1, 2, 3] and masks[0, 5, 7] == 255
    assert masks[0, 3, 5] == 0 and masks[1, 5, 7] == 2


def test_train_transform_crop_scale_flip_jitter():
    torch.manual_seed(1)
    image = torch.arange(3 * 20 * 30, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 20, 30)
    mask = torch.arange(30).remainder(5).expand(20, 30).clone()
    t = TrainTransform(crop_size=40, scale_range=(0.5, 2.0), hflip=True, jitter=0.3, pad_value=(7, 8, 9))
    for _ in range(10):
        im, m = t(image, mask)
        assert im.shape == (3, 40, 40) and m.shape == (40, 40) and im.dtype == torch.uint8
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 4, 255}  # nearest: never blended labels
    small = TrainTransform(crop_size=(25, 35), pad_value=(7, 8, 9))
    im, m = small(image, mask)
    assert (m == 255).sum() == 25 * 35 - 20 * 30  # padding is ignored in the mask
    assert (im[0][m == 255] == 7).all()
    flipped = TrainTransform(hflip=True)
    outs = {tuple(flipped(image, mask)[1][0, :3].tolist()) for _ in range(20)}
    assert outs == {(0, 1, 2), (4, 3, 2)}  # both flipped and unflipped occur; labels move with pixels


def test_train_transform_draws_only_from_torch():
    """It says so (the training stream then isolates torch's generator alone around each sample):
    every augmentation on, many calls, and Python's and NumPy's generators have not moved."""
    import random

    from fcnseg.engine.batches import SeededAugment

    assert TrainTransform.draws_only_from_torch
    random.seed(5)
    np.random.seed(5)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    t = TrainTransform(crop_size=24, scale_range=(0.5, 2.0), hflip=True, jitter=0.3, elastic=3.0)
    image = torch.arange(3 * 20 * 30).remainder(256).to(torch.uint8).view(3, 20, 30)
    mask = torch.arange(30).remainder(5).expand(20, 30).clone()
    for _ in range(10):
        t(image, mask)
    assert random.getstate() == python_state and (np.random.get_state()[1] == numpy_state).all()
    # the same sample key gives the same augmentation, and the caller's torch generator is untouched
    stream = SeededAugment(Tiny(4), t, seed=3)
    torch.manual_seed(9)
    before = torch.get_rng_state()
    first, second = stream[(0, 2)], stream[(0, 2)]
    assert torch.equal(first[0], second[0]) and torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(stream[(1, 2)][0], first[0]) or not torch.equal(stream[(2, 2)][0], first[0])


def test_loader_batches_and_bad_samples(caplog):
    loader = build_loader(Tiny(), batch_size=3, shuffle=False)
    images, masks = next(iter(loader))
    assert images.shape == (3, 3, 6, 8) and masks.shape == (3, 6, 8)
    with pytest.raises(FcnsegError, match="img4.png: truncated"):
        list(build_loader(Tiny(bad=4), batch_size=2, shuffle=True))
    loader = build_loader(Tiny(bad=4), batch_size=2, shuffle=False, skip_bad=True)
    with caplog.at_level("WARNING", logger="fcnseg"):
        sizes = [len(b[0]) for b in loader]
        sizes += [len(b[0]) for b in loader]  # a second pass: the file is not logged again
    assert sizes == [2, 2, 1] * 2 and loader.num_skipped == 2 and loader.skipped[0][0] == "/data/img4.png"
    assert [r.getMessage() for r in caplog.records] == [
        "skipped bad sample /data/img4.png: truncated file; re-download it"
    ]


@pytest.mark.slow
def test_loader_workers_report_bad_samples_and_are_seeded(caplog):
    def run():
        loader = build_loader(
            Tiny(n=8, bad=3),
            batch_size=1,
            shuffle=True,
            workers=1,
            seed=5,
            skip_bad=True,
            transform=TrainTransform(crop_size=4, hflip=True, jitter=0.2),
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="fcnseg"):
            batches = list(loader)
        assert "skipped bad sample" in caplog.text
        assert all(masks.dtype == torch.int64 for _, masks in batches)  # uint8 between processes only
        return loader, [images for images, _ in batches]

    a, batches_a = run()
    _, batches_b = run()
    assert a.skipped[0][0] == "/data/img3.png" and len(batches_a) == 7
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b))


def test_class_frequencies_cached_and_median_weights(tmp_path):
    ds = Tiny(n=3)  # pixels: 4*6 of class 0, 5*7 of class 1, 6*8 of class 2
    freqs = class_frequencies(ds, cache_dir=tmp_path)
    assert torch.allclose(freqs, torch.tensor([24, 35, 48], dtype=torch.float64) / 107)
    assert len(list(tmp_path.rglob("*.json"))) == 1
    ds.load_arrays = None  # a second call must come from the cache
    assert torch.equal(class_frequencies(ds, cache_dir=tmp_path), freqs)
    w = median_frequency_weights(torch.tensor([0.5, 0.25, 0.25, 0.0]))
    assert torch.allclose(w, torch.tensor([0.5, 1.0, 1.0, 0.0]))


def test_shapes_frequencies(tmp_path):
    freqs = class_frequencies(load_dataset("shapes", "val"), cache_dir=tmp_path)
    assert freqs.shape == (6,) and abs(freqs.sum().item() - 1) < 1e-9 and freqs[0] > 0.5
