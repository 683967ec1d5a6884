"""What the demo shows: the demo preset, and sample strips that explain themselves."""

import numpy as np
from PIL import Image

from fcnseg.cli.demo import demo_config
from fcnseg.config import resolve_config
from fcnseg.data import load_dataset
from fcnseg.data.shapes import SPLITS
from fcnseg.engine.rundir import save_sample_strip
from fcnseg.viz import IGNORE_CHECKER, legend


def test_demo_preset_resolves_to_the_bn_trunk_and_the_training_stream():
    cfg = resolve_config("demo")
    assert (cfg.data, cfg.model, cfg.backbone, cfg.train_split, cfg.val_split) == (
        "shapes",
        "fcn8s",
        "vgg16_bn",
        "stream",
        "val",
    )
    first, n = SPLITS[cfg.train_split]
    assert first >= sum(SPLITS["val"]) or first + n <= SPLITS["val"][0]
    preset = resolve_config("demo")
    for model, backbone, batch in [("fcn32s", "vgg16_bn", 16), ("fcn16s", "vgg16_bn", 16), ("unet", None, 8)]:
        cfg = demo_config("runs/x", model=model)
        assert (cfg.model, cfg.backbone, cfg.batch_size) == (model, backbone, batch)
        assert cfg.iterations * cfg.batch_size == preset.iterations * preset.batch_size  # the same images
    assert demo_config("runs/x", model="unet", iterations=10).iterations == 10


def _colours(region: np.ndarray) -> set:
    return {tuple(int(v) for v in c) for c in region.reshape(-1, 3)}


def test_sample_strip_has_titles_upscaled_panels_and_a_legend(tmp_path):
    ds = load_dataset("shapes", "val")
    image, truth = (t.numpy() for t in ds[0])
    image = image.transpose(1, 2, 0)
    truth = truth.copy()
    truth[:8, :8] = 255  # some ignore pixels
    pred = np.zeros_like(truth)
    pred[40:60, 40:60] = 3
    path = save_sample_strip(image, truth, pred, ds.palette, tmp_path / "s.png", class_names=ds.class_names)
    strip = np.asarray(Image.open(path).convert("RGB"))

    factor, gap = 3, 6  # 96 px panels are enlarged to 288 px (nearest neighbour), white gaps between
    assert strip.shape[1] == 3 * 96 * factor + 4 * gap
    top = np.flatnonzero((strip[:, gap] != 255).any(1))[0]  # first non-white row of the image column
    panel = strip[top : top + 96 * factor, gap : gap + 96 * factor]
    assert np.array_equal(panel, np.repeat(np.repeat(image, factor, 0), factor, 1))
    header = strip[:top]
    for k in range(3):  # a title (dark text) above each panel
        x0 = gap + k * (96 * factor + gap)
        assert (header[:, x0 : x0 + 96 * factor] < 100).all(-1).sum() > 20
    assert _colours(strip[:, :gap]) == {(255, 255, 255)}  # separators are white...
    truth_panel = strip[top : top + 96 * factor, 2 * gap + 96 * factor : 2 * gap + 2 * 96 * factor]
    assert set(IGNORE_CHECKER) <= _colours(truth_panel[: 8 * factor, : 8 * factor])  # ...ignore is not
    assert not set(IGNORE_CHECKER) & _colours(strip[:, :gap])

    key = strip[top + 96 * factor :]
    assert {tuple(c) for c in ds.palette} <= _colours(key)  # every class colour in the legend
    assert set(IGNORE_CHECKER) <= _colours(key)  # and the ignore swatch, as truth has ignore pixels


def test_legend_wraps_to_its_width_and_names_every_class():
    names = [f"class number {i}" for i in range(21)]
    palette = [(10 * i, 255 - 10 * i, 7 * i) for i in range(21)]
    key = legend(names, palette, 300)
    assert key.shape[1] == 300 and key.shape[0] > 5 * 16  # several rows
    assert {tuple(c) for c in palette} <= _colours(key)
