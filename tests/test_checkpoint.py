import os

import pytest
import torch

from fcnseg.engine.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.models import create_model
from fcnseg.models.registry import list_models
from fcnseg.weights.format import build_model


def test_roundtrip(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, {"w": torch.ones(2)}, {"model_name": "x", "model_kwargs": {}})
    ckpt = load_checkpoint(p)
    assert torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert ckpt["meta"]["model_name"] == "x"
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FcnsegError, match="bad.pt"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(FcnsegError, match="not an fcnseg checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(FcnsegError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_truncated_file(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"w": torch.randn(1000)}, {"model_name": "x", "model_kwargs": {}})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FcnsegError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    p = tmp_path / "evil.pt"
    torch.save({"format": "fcnseg.checkpoint", "x": Evil()}, p)
    with pytest.raises(FcnsegError, match="cannot be loaded safely"):
        load_checkpoint(p)
    assert not (tmp_path / "pwned").exists()


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "c.pt"
    atomic_save({"v": 1}, p)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(FcnsegError, match="No space left"):
        atomic_save({"v": 2}, p)
    monkeypatch.undo()
    assert torch.load(p, weights_only=True) == {"v": 1}
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_other_file_format_is_named(tmp_path):
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(FcnsegError, match="photo.png is corrupt or truncated, or not a PyTorch file"):
        load_checkpoint(png)


def test_legacy_format_still_loads(tmp_path):
    p = tmp_path / "old.pt"
    torch.save(
        {
            "format": "fcnseg.checkpoint",
            "version": 1,
            "model": {},
            "meta": {"model_name": "fcn8s", "model_kwargs": {"num_classes": 2}},
        },
        p,
        _use_new_zipfile_serialization=False,
    )
    assert load_checkpoint(p)["version"] == 1


@pytest.mark.parametrize(
    "name, kwargs",
    [(name, {}) for name in list_models()]
    + [("fcn32s", {"backbone": "alexnet", "geometry": "caffe"}), ("fcn8s", {"geometric_classes": 3})],
)
def test_a_model_opened_from_its_weights_is_the_model_that_wrote_them(name, kwargs):
    """Opening builds the model on the meta device (no random initial weights) and takes the file's
    tensors: every tensor real, the same outputs as the model that was saved, gradients as before."""
    torch.manual_seed(0)
    saved = create_model(name, 3, width=1 / 16, **kwargs).eval()
    meta = {"model_name": name, "model_kwargs": {"num_classes": 3, "width": 1 / 16, **kwargs}}
    state = {k: v.clone() for k, v in saved.state_dict().items()}
    rng = torch.random.get_rng_state()
    opened = build_model(meta, state, "model.pt").eval()
    assert torch.equal(torch.random.get_rng_state(), rng)  # no random weights drawn to be overwritten
    assert not any(t.is_meta for t in [*opened.parameters(), *opened.buffers()])
    assert [p.requires_grad for p in opened.parameters()] == [p.requires_grad for p in saved.parameters()]
    x = torch.randn(1, 6 if "fusion" in name else 3, 40, 44)  # late fusion takes RGB then HHA
    with torch.no_grad():
        assert torch.equal(opened(x), saved(x))
