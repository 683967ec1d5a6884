import hashlib

import numpy as np
import pytest
import torch

from fcnseg.data import load_dataset
from fcnseg.errors import FcnsegError


def _digest(ds, indices):
    h = hashlib.sha256()
    for i in indices:
        image, mask = ds[i]
        h.update(image.numpy().tobytes())
        h.update(mask.numpy().astype(np.uint8).tobytes())
    return h.hexdigest()


def test_contract():
    ds = load_dataset("shapes", "train")
    assert len(ds) == 400 and len(load_dataset("shapes", "val")) == 100
    assert ds.num_classes == len(ds.class_names) == len(ds.palette) == 6
    assert ds.ignore_index == 255
    image, mask = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 96)
    assert mask.dtype == torch.int64 and mask.shape == (96, 96)
    assert ds.sample_name(3) == "shapes/train/0003"
    assert torch.equal(ds[-1][1], ds[399][1])
    with pytest.raises(IndexError):
        ds[400]


def test_deterministic_and_pinned():
    # Pinned: the same pixels on every machine. Change only on purpose (it changes every result). The
    # whole val split (every reported number), and samples of train and of the training stream.
    assert _digest(load_dataset("shapes", "train"), (0, 1, 2, 399)) == (
        "8fa8f7eca068e1053e0ddebd2efb5955b4c5ba507fa22999ed249b5973a11ca5"
    )
    assert _digest(load_dataset("shapes", "val"), (0, 99)) == (
        "0d57b83e4a6bd763827a08481176889d70f329dd5b4458ff04ef23098faa3229"
    )
    assert _digest(load_dataset("shapes", "val"), range(100)) == (
        "af48fce49207a0d2da0b15282391b210a3710eff74f463470175f775cf8f0661"
    )
    assert _digest(load_dataset("shapes", "stream"), (0, 1, 2, 123_456, 999_999)) == (
        "94d27a2a22a344b919968caf8020fecc42bca8e292969c62ebf053a653784984"
    )


def test_every_pixel_as_the_full_grid_formulas_draw_it():
    """Shapes are computed only in a window around them, the background from per-row and per-column
    terms: the whole train split still hashes as when every formula ran on the full grid."""
    assert _digest(load_dataset("shapes", "train"), range(400)) == (
        "2394bd1268360d0628bc1360c221d9cbaacfe6914dc8f514accabbe9ed5b75a1"
    )


def test_every_class_appears_and_splits_differ():
    ds = load_dataset("shapes", "train")
    counts = sum(torch.bincount(ds[i][1].flatten(), minlength=6) for i in range(40))
    assert (counts > 0).all()
    assert counts[4] < counts[1]  # lines are thin
    assert not torch.equal(ds[0][0], load_dataset("shapes", "val")[0][0])


def test_bad_spec():
    with pytest.raises(FcnsegError, match="no split 'test'"):
        load_dataset("shapes", "test")
    with pytest.raises(FcnsegError, match="unknown dataset"):
        load_dataset("nope:/x", "train")
    with pytest.raises(FcnsegError, match="needs a path"):
        load_dataset("voc", "train")


def test_fine_strides_matter():
    """The point of `shapes`: an ideal stride-32 prediction (area-averaged labels, upsampled
    bilinearly) scores far below an ideal stride-8 one, so FCN-8s has room to beat FCN-32s."""
    import torch.nn.functional as F

    from fcnseg.engine.metrics import ConfusionMatrix

    masks = torch.stack([m for _, m in load_dataset("shapes", "val")])
    onehot = F.one_hot(masks, 6).permute(0, 3, 1, 2).float()
    mean_iu = {}
    for stride in (32, 8):
        up = F.interpolate(F.avg_pool2d(onehot, stride), size=(96, 96), mode="bilinear", align_corners=False)
        cm = ConfusionMatrix(6)
        cm.update(up.argmax(1), masks)
        mean_iu[stride] = cm.compute()["mean_iu"]
    assert mean_iu[8] > mean_iu[32] + 0.25, mean_iu


def test_training_stream_never_draws_val_or_train_seeds(monkeypatch):
    from fcnseg.data import shapes
    from fcnseg.engine.batches import training_batches

    spans = {name: range(first, first + n) for name, (first, n) in shapes.SPLITS.items()}
    assert len(spans["stream"]) >= 1_000_000 and len(spans["train"]) == 400 and len(spans["val"]) == 100
    for other in ("val", "train"):
        assert spans["stream"].start >= spans[other].stop or spans["stream"].stop <= spans[other].start
    stream = load_dataset("shapes", "stream")
    assert len(stream) == len(spans["stream"]) and stream.sample_name(7) == "shapes/stream/0007"
    assert np.array_equal(stream[-1][1].numpy(), shapes.render(spans["stream"].stop - 1)[1])

    drawn = []
    real = shapes.render.__wrapped__
    monkeypatch.setattr(shapes, "render", lambda seed, size=96: drawn.append(seed) or real(seed, size))
    batches = training_batches(stream, transform=None, batch_size=4, seed=3, start_iteration=0)
    for _ in range(3):
        next(batches)
    assert len(drawn) == 12 and len(set(drawn)) == 12
    assert all(seed in spans["stream"] for seed in drawn)  # so never a val (or train) seed
    val_images = {load_dataset("shapes", "val")[i][0].numpy().tobytes() for i in range(100)}
    assert not val_images & {real(seed)[0].tobytes() for seed in drawn}
