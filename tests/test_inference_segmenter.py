"""Segmenter on a stand-in model: shapes, probabilities, tiling, TTA, fast path, description."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.inference import Segmenter, fastpath
from fcnseg.inference.fastpath import fast_path_supported

META = {
    "model_name": "standin",
    "model_kwargs": {"num_classes": 3},
    "class_names": ["a", "b", "c"],
    "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    "normalization": "imagenet",
}


class StandIn(nn.Module):
    """Full-resolution scores from a small conv net (like an FCN: N,3,H,W -> N,C,H,W)."""

    output_stride = 2

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.body(x)


def make(**options):
    return Segmenter(StandIn(), META, **options)


def test_predict_shapes_types_and_inputs(tmp_path):
    seg = make(fast=False)
    rgb = np.random.default_rng(0).integers(0, 255, (21, 34, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    mask = seg.predict(rgb)
    assert mask.shape == (21, 34) and np.issubdtype(mask.dtype, np.integer) and mask.max() < 3
    assert (seg.predict(Image.fromarray(rgb)) == mask).all()
    assert (seg.predict(tmp_path / "x.png") == mask).all()
    assert (seg.predict(str(tmp_path / "x.png")) == mask).all()
    probs = seg.predict_proba(rgb)
    assert probs.shape == (3, 21, 34) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    assert (probs.argmax(0) == mask).all()


def test_tiles_and_tta_keep_size_and_stay_close_to_whole_image():
    rgb = np.random.default_rng(1).integers(0, 255, (50, 70, 3), np.uint8)
    model = StandIn()
    whole = Segmenter(model, META, fast=False, tile=0).predict_proba(rgb)
    tiled = Segmenter(model, META, fast=False, tile=24, overlap=0.5).predict_proba(rgb)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < 0.01
    aug = Segmenter(model, META, fast=False, tta_flip=True, scales=(0.75, 1.0, 1.25))
    assert aug.predict(rgb).shape == (50, 70)
    assert "flip=on" in aug.describe() and "0.75,1,1.25" in aug.describe()


def test_shift_and_stitch_option_uses_the_model_stride():
    seg = make(fast=False, shift_stitch=True)
    assert seg.shift_stitch == 2 and "shift-and-stitch x2" in seg.describe()
    assert seg.predict(np.zeros((9, 11, 3), np.uint8)).shape == (9, 11)


def test_fast_path_agrees_with_fp32_and_says_so():
    rgb = np.random.default_rng(2).integers(0, 255, (32, 40, 3), np.uint8)
    model = StandIn()
    fp32 = Segmenter(model, META, fast=False).predict_proba(rgb)
    fast = Segmenter(model, META, fast=True)
    assert "bf16 weights" in fast.describe() and "channels_last" in fast.describe()
    assert model.body[0].weight.dtype == torch.bfloat16  # the trunk runs in bf16 ...
    assert model.body[2].weight.dtype == torch.float32  # ... the 3-class score layer in fp32
    assert np.abs(fast.predict_proba(rgb) - fp32).max() < 0.05
    auto = Segmenter(StandIn(), META)
    assert auto.fast == fast_path_supported()


def test_segmenter_on_cpu_keeps_freed_memory(monkeypatch):
    """Each forward reuses the last one's memory (devices.keep_freed_cpu_memory): an fp32 VGG16
    forward at 500x500 otherwise faults 49,000 pages in again every call."""
    import fcnseg.inference.segmenter as segmenter

    calls = []
    monkeypatch.setattr(segmenter, "keep_freed_cpu_memory", lambda: calls.append(True) or True)
    make(device="cpu")
    assert calls == [True]


@pytest.mark.parametrize("flags", [(), ("avx512_bf16",)])
def test_fast_path_dispatch_follows_the_cpu_and_describe_says_which(monkeypatch, flags):
    from fcnseg import devices

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(devices, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(fastpath, "cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(fastpath.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    auto = Segmenter(StandIn(), META)
    assert auto.fast == bool(flags)
    text = auto.describe()
    if flags:
        assert "torch fast path: bf16 weights" in text and "avx512_bf16" in text
    else:
        assert "fast path off: CPU lacks native bf16" in text and "bf16 weights" not in text
    off = Segmenter(StandIn(), META, fast=False)  # turned off by hand: says so, whatever the CPU
    assert not off.fast and "fast path off: " + ("disabled" if flags else "CPU lacks") in off.describe()


def test_a_onednn_cap_below_bf16_turns_the_fast_path_off_with_the_reason(monkeypatch):
    """One bf16 decision (devices.fast_bf16) for training and inference: a CPU with bf16 whose oneDNN is
    capped to AVX2 would emulate bf16, several times slower than fp32, so the fast path stays off."""
    from fcnseg import devices

    monkeypatch.setattr(devices, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(fastpath, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(fastpath.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    auto = Segmenter(StandIn(), META)
    assert not auto.fast and "caps oneDNN below bf16" in auto.describe()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert Segmenter(StandIn(), META).fast


@pytest.mark.parametrize(
    "options", [{"backend": "tensorflow"}, {"tile": -1}, {"overlap": 1.0}, {"scales": (0.0,)}, {"shift_stitch": -2}]
)
def test_bad_options_raise_fcnseg_error(options):
    with pytest.raises(FcnsegError):
        make(**options)


@pytest.mark.slow
def test_compiled_fast_path_matches_eager_fast_path():
    rgb = np.random.default_rng(3).integers(0, 255, (24, 24, 3), np.uint8)
    model = StandIn()
    eager = Segmenter(model, META, fast=True).predict_proba(rgb)
    compiled = Segmenter(model, META, fast=True, compile=True)
    assert "torch.compile" in compiled.describe()
    np.testing.assert_allclose(compiled.predict_proba(rgb), eager, atol=1e-2)
