"""`fcnseg predict` end to end on a tiny FCN-8s checkpoint: outputs, options and bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.models import create_model

META = {"model_name": "fcn8s", "model_kwargs": {"num_classes": 3, "width": 1 / 16},
        "class_names": ["bg", "a", "b"], "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
        "normalization": "imagenet"}


def randomize_scores(model):
    """FCN score layers start at zero (paper recipe); give every parameter noise so argmax varies."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_scores(create_model("fcn8s", **META["model_kwargs"]))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model.state_dict(), META)
    return path


def write_image(path, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def test_predict_folder_with_overlay_and_probs(tmp_path, checkpoint, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_image(src / "a.jpg", (40, 30))
    write_image(src / "sub" / "b.png", (33, 47), mode="L")
    rc = main(["predict", "--checkpoint", str(checkpoint), str(src), "--out", str(tmp_path / "out"),
               "--overlay", "--probs"])
    assert rc == 0
    mask = Image.open(tmp_path / "out" / "b.png")
    assert mask.mode == "P" and mask.size == (33, 47) and np.asarray(mask).max() < 3
    overlay = Image.open(tmp_path / "out" / "a_overlay.jpg")
    assert overlay.width == 40 and overlay.height > 30  # the photo, and a legend band below it
    probs = np.load(tmp_path / "out" / "a_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (3, 30, 40)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=5e-3)
    assert (probs.argmax(0) == np.asarray(Image.open(tmp_path / "out" / "a.png"))).mean() > 0.99
    err = capsys.readouterr().err
    assert "2 image(s) written" in err and "0 failed" in err


def test_options_tiles_tta_shift_stitch_glob(tmp_path, checkpoint):
    write_image(tmp_path / "p1.png", (50, 36))
    write_image(tmp_path / "p2.png", (20, 20))
    rc = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "p*.png"), "--out",
               str(tmp_path / "o"), "--tile", "32", "--overlap", "0.25", "--scales", "0.5,1",
               "--stitch-factor", "2"])
    assert rc == 0
    assert Image.open(tmp_path / "o" / "p1.png").size == (50, 36)
    assert Image.open(tmp_path / "o" / "p2.png").size == (20, 20)


def test_bad_inputs_are_reported_and_the_rest_processed(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    write_image(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])
    (tmp_path / "nothing").mkdir()
    inputs = [str(tmp_path / n) for n in ("good.png", "empty.png", "cut.png", "nothing", "missing.jpg")]
    rc = main(["predict", "--checkpoint", str(checkpoint), *inputs, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert (tmp_path / "o" / "good.png").exists() and not (tmp_path / "o" / "cut.png").exists()
    for name in ("empty.png", "cut.png", "nothing", "missing.jpg"):
        lines = [line for line in err.splitlines() if name in line and "error" in line]
        assert len(lines) == 1, (name, err)
    assert "1 image(s) written" in err and "4 failed" in err


def test_not_a_checkpoint_and_wrong_model_exit_2(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "x.png")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    rc = main(["predict", "--checkpoint", str(tmp_path / "junk.pt"), str(tmp_path / "x.png"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "junk.pt" in capsys.readouterr().err
    other = create_model("fcn32s", num_classes=3, width=1 / 16)
    save_checkpoint(tmp_path / "mislabelled.pt", other.state_dict(), META)  # fcn32s weights, says fcn8s
    rc = main(["predict", "--checkpoint", str(tmp_path / "mislabelled.pt"), str(tmp_path / "x.png"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "mislabelled.pt" in err and len(err.strip().splitlines()) == 1
    save_checkpoint(tmp_path / "alien.pt", other.state_dict(), {**META, "model_name": "deeplabv3"})
    rc = main(["predict", "--checkpoint", str(tmp_path / "alien.pt"), str(tmp_path / "x.png"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "alien.pt" in err and "deeplabv3" in err
