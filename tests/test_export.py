"""Export: ONNX agrees with PyTorch at several sizes; safetensors round-trips without pickle."""

import json

import numpy as np
import pytest
import torch

from fcnseg.cli import main
from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.errors import FcnsegError
from fcnseg.inference import Segmenter, export_onnx, export_safetensors, load_safetensors
from fcnseg.models import create_model

ort = pytest.importorskip("onnxruntime")

META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 3, "width": 1 / 16},
    "class_names": ["bg", "a", "b"],
    "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
    "normalization": "caffe",
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("fcn8s", **META["model_kwargs"]).eval()
    with torch.no_grad():
        for p in m.parameters():  # score layers are zero-initialised; make the outputs non-trivial
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return m


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, META, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (101, 29)])
def test_onnx_matches_pytorch_on_random_sizes(model, onnx_file, size):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, *size)
    (scores,) = session.run(["scores"], {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert scores.shape == expected.shape == (1, 3, *size)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-3)


def test_onnx_carries_metadata_and_segmenter_uses_it(model, onnx_file):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(props["fcnseg"])["class_names"] == META["class_names"]
    seg = Segmenter.from_checkpoint(onnx_file, tile=0)
    assert seg.backend == "onnxruntime" and "onnxruntime" in seg.describe()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 31, 3), np.uint8)
    reference = Segmenter(model, META, fast=False, tile=0)
    np.testing.assert_allclose(seg.predict_proba(rgb), reference.predict_proba(rgb), atol=1e-4)


def test_safetensors_roundtrip_without_pickle(model, tmp_path):
    path = export_safetensors(model, META, tmp_path / "w.safetensors")
    state, meta = load_safetensors(path)
    assert meta["palette"] == META["palette"] and meta["normalization"] == "caffe"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value)
    rgb = np.random.default_rng(1).integers(0, 255, (30, 30, 3), np.uint8)
    loaded = Segmenter.from_checkpoint(path, fast=False)
    assert (loaded.predict(rgb) == Segmenter(model, META, fast=False).predict(rgb)).all()


def test_bad_export_files_raise_fcnseg_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    for name in ("bad.onnx", "bad.safetensors"):
        with pytest.raises(FcnsegError, match=name):
            Segmenter.from_checkpoint(tmp_path / name)


def test_cli_export_then_predict_with_onnxruntime(model, tmp_path, capsys):
    from PIL import Image

    save_checkpoint(tmp_path / "c.pt", model.state_dict(), META)
    assert (
        main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
        == 0
    )
    assert main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.safetensors")]) == 0
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (25, 35, 3), np.uint8)).save(tmp_path / "i.png")
    for ckpt, extra in (("m.onnx", []), ("c.pt", ["--backend", "onnxruntime"]), ("m.safetensors", [])):
        out = tmp_path / f"out_{ckpt}"
        assert (
            main(["predict", "--checkpoint", str(tmp_path / ckpt), str(tmp_path / "i.png"), "--out", str(out), *extra])
            == 0
        )
        assert Image.open(out / "i.png").size == (35, 25)
    assert main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.bin")]) == 2
    assert "--format" in capsys.readouterr().err


def test_out_suffix_must_agree_with_format(model, tmp_path, capsys):
    save_checkpoint(tmp_path / "c.pt", model.state_dict(), META)
    for fmt, name in (("onnx", "x.safetensors"), ("safetensors", "x.onnx"), ("onnx", "x")):
        capsys.readouterr()
        assert (
            main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--format", fmt, "--out", str(tmp_path / name)])
            == 2
        )
        err = capsys.readouterr().err
        assert f"does not end in .{fmt}" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / name).exists()
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tmp_path / "c.pt"),
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "X.SafeTensors"),
            ]
        )
        == 0
    )  # the suffix is compared without case
