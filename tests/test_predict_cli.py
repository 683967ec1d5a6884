"""`fcnseg predict` end to end on a tiny FCN-8s checkpoint: outputs, options and bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.models import create_model

META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 3, "width": 1 / 16},
    "class_names": ["bg", "a", "b"],
    "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
    "normalization": "imagenet",
}


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
    rc = main(
        ["predict", "--checkpoint", str(checkpoint), str(src), "--out", str(tmp_path / "out"), "--overlay", "--probs"]
    )
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
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            str(tmp_path / "p*.png"),
            "--out",
            str(tmp_path / "o"),
            "--tile",
            "32",
            "--overlap",
            "0.25",
            "--scales",
            "0.5,1",
            "--stitch-factor",
            "2",
        ]
    )
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
    rc = main(
        ["predict", "--checkpoint", str(tmp_path / "junk.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "junk.pt" in capsys.readouterr().err
    other = create_model("fcn32s", num_classes=3, width=1 / 16)
    save_checkpoint(tmp_path / "mislabelled.pt", other.state_dict(), META)  # fcn32s weights, says fcn8s
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "mislabelled.pt"),
            str(tmp_path / "x.png"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "mislabelled.pt" in err and len(err.strip().splitlines()) == 1
    save_checkpoint(tmp_path / "alien.pt", other.state_dict(), {**META, "model_name": "deeplabv3"})
    rc = main(
        ["predict", "--checkpoint", str(tmp_path / "alien.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "alien.pt" in err and "deeplabv3" in err


def test_outputs_never_collide_and_the_count_is_what_was_written(tmp_path, checkpoint, capsys):
    from fcnseg.cli.predict import output_stems

    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
    inputs = [
        write_image(tmp_path / "a" / "x.png"),
        write_image(tmp_path / "b" / "x.png", (20, 10)),
        write_image(tmp_path / "c" / "x_2.png", (12, 8)),
    ]
    assert output_stems(inputs) == ["x", "x_3", "x_2"]
    assert output_stems([tmp_path / "X.png", tmp_path / "d" / "x.png"]) == ["X", "x_2"]  # case-blind file systems
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, inputs), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["x.png", "x_2.png", "x_3.png"]
    sizes = {name: Image.open(out / name).size for name in written}
    assert sizes == {"x.png": (40, 30), "x_3.png": (20, 10), "x_2.png": (12, 8)}  # each input its own file
    err = capsys.readouterr().err
    assert "3 image(s) written" in err and f"{inputs[1]} -> x_3.png" in err


def test_a_model_without_palette_gets_the_same_colours_as_serve(tmp_path, capsys):
    from fcnseg.palette import class_colours, voc_colormap
    from fcnseg.serving.app import class_palette

    torch.manual_seed(0)
    model = randomize_scores(create_model("fcn8s", **META["model_kwargs"]))
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, model.state_dict(), {**META, "palette": []})
    image = write_image(tmp_path / "i.png")
    for run in ("one", "two"):
        assert main(["predict", "--checkpoint", str(bare), str(image), "--out", str(tmp_path / run)]) == 0
    first, second = (Image.open(tmp_path / run / "i.png").getpalette()[:9] for run in ("one", "two"))
    assert first == second == voc_colormap(3).reshape(-1).tolist()  # deterministic, VOC's map

    class Bare:
        palette, num_classes = [], 3

    assert [list(c) for c in class_palette(Bare)] == [list(c) for c in class_colours(None, 3)]
    assert first == [v for c in class_palette(Bare) for v in c]


@pytest.mark.parametrize(
    "option", [["--tile", "5"], ["--tile", "5000"], ["--scales", "3"], ["--scales", "0.5,1,1.5,1.75,2"]]
)
def test_tile_and_scales_bounds_are_serves(tmp_path, checkpoint, capsys, option):
    image = write_image(tmp_path / "i.png")
    try:
        code = main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o"), *option])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and not (tmp_path / "o").exists()


def test_a_folder_with_a_fifo_and_a_link_loop_reports_them_without_blocking(tmp_path, checkpoint, capsys):
    import os

    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "good.png")
    os.mkfifo(src / "pipe.png")
    (src / "l1.jpg").symlink_to(src / "l2.jpg")
    (src / "l2.jpg").symlink_to(src / "l1.jpg")
    from _faults import fifo_watchdog

    with fifo_watchdog(src / "pipe.png") as watch:
        rc = main(["predict", "--checkpoint", str(checkpoint), str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert not watch["opened"] and rc == 1 and (tmp_path / "out" / "good.png").is_file()
    assert "pipe.png: image is a FIFO, not a regular file" in err and "l1.jpg: image is a symlink loop" in err
    assert "1 image(s) written" in err and "3 failed" in err
