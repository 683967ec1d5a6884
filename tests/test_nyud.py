"""NYUDv2: the nyud:PATH format (a tiny fake folder in the reference's layout), HHA on a synthetic
scene with a known floor, the RGB-HHA late-fusion model against two independent streams, and the
authors' fused caffemodel layout converted and run end to end through `fcnseg evaluate`."""

import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import load_dataset
from fcnseg.data.hha import ANGLE_OFFSET, NYUD_CAMERA, cache_dir, cached_hha, encode_hha, hha_channels, nyud_camera
from fcnseg.data.normalize import mean_pixel, normalize
from fcnseg.data.nyud import HHA_NORMALIZATION, RGB_HHA_NORMALIZATION
from fcnseg.errors import FcnsegError
from fcnseg.models import build_model
from fcnseg.weights import load
from test_data_check_download import tar_of
from test_weights_convert import WIDTH, caffemodel_bytes, random_reference, reference_forward

H, W = 48, 64
CAM_HEIGHT = 1.2  # metres above the floor
WALL = 4.0  # metres ahead


def floor_scene(h=H, w=W, camera=None):
    """Depth (m) of a camera CAM_HEIGHT above a floor, looking level at a wall WALL ahead; the floor mask."""
    camera = camera or nyud_camera(w, h)
    rows = np.arange(1, h + 1, dtype=np.float64)[:, None]
    down = (rows - camera.cy) / camera.fy  # y / z of each row's ray
    floor_depth = np.where(down > 1e-9, CAM_HEIGHT / np.maximum(down, 1e-9), np.inf)
    depth = np.minimum(floor_depth, WALL) * np.ones((1, w))
    return depth, np.broadcast_to(floor_depth < WALL, (h, w))


# ----------------------------------------------------------------- HHA


def test_hha_of_a_known_floor_plane():
    depth, floor = floor_scene(480, 640, NYUD_CAMERA)
    c = hha_channels(depth, NYUD_CAMERA)
    assert abs(c.gravity[1]) > 0.999  # gravity found along the camera's y axis, pointing down
    inner = floor.copy()
    inner[:, :8] = inner[:, -8:] = False  # away from the image border
    inner[: np.argmax(floor[:, 0]) + 8] = False  # and from the floor-wall edge
    assert np.abs(c.height[inner]).max() < 3.0  # cm: the floor is the ground
    wall = ~floor
    wall[-1] = False
    rows_cm = (np.arange(480) + 1 - NYUD_CAMERA.cy) / NYUD_CAMERA.fy * WALL * 100
    expected_wall = CAM_HEIGHT * 100 - rows_cm[:, None] * np.ones((1, 640))
    assert np.abs(c.height - expected_wall)[wall & (np.arange(480)[:, None] < 200)].max() < 3.0
    assert np.percentile(c.angle[inner], 5) > 175  # floor normals: vertical (up, against gravity)
    walls = wall.copy()
    walls[:, :8] = walls[:, -8:] = False
    walls[np.argmax(floor[:, 0]) - 8 :] = False
    assert np.abs(c.angle[walls] - 90).max() < 2  # wall normals: horizontal
    np.testing.assert_allclose(c.disparity, 31000 / np.maximum(depth * 100, 100))  # f*b / depth
    hha = encode_hha(depth, NYUD_CAMERA)
    assert hha.dtype == np.uint8 and hha.shape == (480, 640, 3)
    assert np.all(hha[inner, 2] >= 180 + ANGLE_OFFSET - 5) and np.all(hha[walls, 2] == 90 + ANGLE_OFFSET)


def test_hha_without_floor_in_view_assumes_the_camera_130cm_up():
    depth = np.full((H, W), 2.0)  # a wall filling the view: nothing 90 cm below the camera
    c = hha_channels(depth, nyud_camera(W, H))
    centre = c.height[H // 2, W // 2]
    assert abs(centre - 130) < 5


def test_hha_cache_is_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    depth, _ = floor_scene()
    path = tmp_path / "img_0001.png"
    Image.fromarray((depth * 1000).astype(np.uint16)).save(path)
    first = cached_hha(path)
    files = list(cache_dir().glob("*.png"))
    assert len(files) == 1 and np.array_equal(first, np.asarray(Image.open(files[0])))
    np.testing.assert_array_equal(first, encode_hha(np.round(depth * 1000) / 1000, nyud_camera(W, H)))
    assert np.array_equal(cached_hha(path), first) and len(list(cache_dir().glob("*.png"))) == 1
    Image.fromarray((depth * 900).astype(np.uint16)).save(path)  # new content: a new entry
    cached_hha(path)
    assert len(list(cache_dir().glob("*.png"))) == 2


# ----------------------------------------------------------------- the nyud:PATH format


def make_nyud(root, ids=("0001", "0002", "0003"), splits=None, hha=False, seed=0):
    """The reference's layout (data/nyud): split lists, data/images, data/depth, segmentation/*.mat."""
    rng = np.random.default_rng(seed)
    splits = {"train": ids[:1], "val": ids[1:2], "test": ids[2:]} if splits is None else splits
    for split, members in splits.items():
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
    for sub in ("data/images", "data/depth", "segmentation") + (("data/hha",) if hha else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    depth, _ = floor_scene()
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"data/images/img_{i}.png")
        Image.fromarray((depth * 1000).astype(np.uint16)).save(root / f"data/depth/img_{i}.png")
        if hha:
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"data/hha/img_{i}.png")
        seg = rng.integers(0, 41, (H, W)).astype(np.uint16)  # 0 void, 1..40 classes, as the reference
        scipy.io.savemat(root / f"segmentation/img_{i}.mat", {"segmentation": seg})
    return root


def test_nyud_format_reads_the_reference_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    root = make_nyud(tmp_path / "nyud")
    train = load_dataset(f"nyud:{root}", "train")
    assert len(train) == 1 and train.num_classes == 40 and train.class_names[1] == "floor"
    assert len(load_dataset(f"nyud:{root}", "trainval")) == 2  # train + val: the standard training set
    image, mask = train[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    seg = scipy.io.loadmat(root / "segmentation/img_0001.mat")["segmentation"].astype(np.int64)
    expected = np.where(seg == 0, 255, seg - 1)
    assert torch.equal(mask, torch.from_numpy(expected))
    hha = load_dataset(f"nyud:{root}", "test", modality="hha")
    assert hha[0][0].shape == (3, H, W) and hha.modality == "hha"
    both = load_dataset(f"nyud:{root}", "test", modality="rgb-hha")
    six = both[0][0]
    assert six.shape == (6, H, W)
    assert torch.equal(six[:3], load_dataset(f"nyud:{root}", "test")[0][0]) and torch.equal(six[3:], hha[0][0])
    assert len(list(cache_dir().glob("*.png"))) == 1  # computed once, from depth (identical depth maps)


def test_nyud_prefers_the_shipped_hha_images(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    root = make_nyud(tmp_path / "nyud", hha=True)
    image, _ = load_dataset(f"nyud:{root}", "val", modality="hha")[0]
    shipped = np.array(Image.open(root / "data/hha/img_0002.png")).transpose(2, 0, 1).copy()
    assert torch.equal(image, torch.from_numpy(shipped)) and not cache_dir().exists()


def test_nyud_problems_are_one_line(tmp_path):
    root = make_nyud(tmp_path / "nyud")
    (root / "data/depth/img_0003.png").unlink()
    load_dataset(f"nyud:{root}", "test")  # colour alone needs no depth
    with pytest.raises(FcnsegError, match=r"img_0003.png does not exist .*hha input needs one per image"):
        load_dataset(f"nyud:{root}", "test", modality="hha")
    with pytest.raises(FcnsegError, match="has no split 'bogus'"):
        load_dataset(f"nyud:{root}", "bogus")
    with pytest.raises(FcnsegError, match="has rgb input only, the model takes hha"):
        load_dataset("shapes", "val", modality="hha")
    scipy.io.savemat(root / "segmentation/img_0001.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(FcnsegError, match="img_0001.mat: not an NYUDv2 label file"):
        load_dataset(f"nyud:{root}", "train")[0]


# ----------------------------------------------------------------- normalisation and the fusion model


def test_hha_and_fused_normalisation():
    x = torch.randint(0, 256, (1, 6, 4, 5), dtype=torch.uint8)
    out = normalize(x, RGB_HHA_NORMALIZATION)
    bgr_mean = torch.tensor([116.190, 97.203, 92.318]).view(3, 1, 1)
    hha_mean = torch.tensor([132.431, 94.076, 118.477]).view(3, 1, 1)
    torch.testing.assert_close(out[0, :3], x[0, :3].flip(0).float() - bgr_mean)  # colour: BGR, as Caffe
    torch.testing.assert_close(out[0, 3:], x[0, 3:].float() - hha_mean)  # HHA: its own order
    torch.testing.assert_close(normalize(x[:, 3:], HHA_NORMALIZATION), out[:, 3:])
    assert mean_pixel(RGB_HHA_NORMALIZATION) == (92, 97, 116, 132, 94, 118)
    with pytest.raises(FcnsegError, match="for 6-channel input, the images have 3 channels"):
        normalize(x[:, :3], RGB_HHA_NORMALIZATION)


def test_fusion_model_is_the_sum_of_two_independent_streams():
    torch.manual_seed(0)
    fused = build_model("fcn16s-fusion", 5, width=WIDTH, geometry="same").eval()
    for p in fused.parameters():
        torch.nn.init.normal_(p, std=0.05)
    color, hha = (build_model("fcn16s", 5, width=WIDTH, geometry="same").eval() for _ in range(2))
    color.load_state_dict(fused.color.state_dict())
    hha.load_state_dict(fused.hha.state_dict())
    x = torch.randn(2, 6, 37, 45) * 50
    with torch.no_grad():
        ours = fused(x)
        expected = 0.5 * color(x[:, :3]) + 0.5 * hha(x[:, 3:])
    assert ours.shape == (2, 5, 37, 45)
    torch.testing.assert_close(ours, expected)


# ----------------------------------------------------------------- the authors' fused caffemodel


def fused_reference(num_classes=40):
    """The nyud-fcn32s-color-hha layout: conv1_1color ... score_frcolor, conv1_1hha ... score_frhha, upscore."""
    color = random_reference("fcn32s", num_classes, seed=1)
    hha = random_reference("fcn32s", num_classes, seed=2)
    layers = {f"{name}color": blobs for name, blobs in color.items() if name != "upscore"}
    layers.update({f"{name}hha": blobs for name, blobs in hha.items() if name != "upscore"})
    layers["upscore"] = color["upscore"]
    hha["upscore"] = color["upscore"]
    return layers, color, hha


def test_fused_caffemodel_converts_and_matches_the_reference_forward(tmp_path):
    layers, color, hha = fused_reference(num_classes=5)
    path = tmp_path / "fused.caffemodel"
    path.write_bytes(caffemodel_bytes(layers))
    model, meta = load(path)
    assert meta.model_name == "fcn32s-fusion" and meta.modality == "rgb-hha"
    assert meta.normalization == RGB_HHA_NORMALIZATION
    x = torch.randn(1, 6, 37, 45) * 50
    with torch.no_grad():
        ours = model(x)
        # the reference: Eltwise SUM (coeff 0.5, 0.5) of score_frcolor and score_frhha, then upscore
        ref = 0.5 * reference_forward(color, x[:, :3], "fcn32s") + 0.5 * reference_forward(hha, x[:, 3:], "fcn32s")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_evaluate_fused_and_hha_models_on_nyud_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    root = make_nyud(tmp_path / "nyud")
    layers, color, _ = fused_reference()
    fused = tmp_path / "nyud-fcn32s-color-hha-heavy.caffemodel"  # the published name: its registry entry applies
    fused.write_bytes(caffemodel_bytes(layers))
    out = tmp_path / "m.json"
    data = ["--data", f"nyud:{root}", "--split", "test", "--no-progress"]
    assert main(["evaluate", "--weights", str(fused), *data, "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 1 and len(metrics["per_class_iou"]) == 40
    hha_file = tmp_path / "nyud-fcn32s-hha-heavy.caffemodel"
    hha_file.write_bytes(caffemodel_bytes(color))
    _, meta = load(hha_file)
    assert meta.modality == "hha" and meta.normalization == HHA_NORMALIZATION and meta.source == "fcn32s-nyud-hha"
    assert main(["evaluate", "--weights", str(hha_file), *data]) == 0
    # a depth model on colour-only data: one line, exit 2
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(fused), "--data", "shapes", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has rgb input only, the model takes rgb-hha" in err[0]


def test_python_api_checks_model_and_data_agree(tmp_path):
    layers, _, _ = fused_reference(num_classes=40)
    path = tmp_path / "fused.caffemodel"
    path.write_bytes(caffemodel_bytes(layers))
    model = fcnseg.create_model("fcn32s-fusion", weights=str(path))
    root = make_nyud(tmp_path / "nyud")
    with pytest.raises(FcnsegError, match="takes rgb-hha input but dataset .* gives rgb"):
        fcnseg.evaluate(model, load_dataset(f"nyud:{root}", "test"), meta=model.fcnseg_meta)
    metrics = fcnseg.evaluate(model, load_dataset(f"nyud:{root}", "test", modality="rgb-hha"), meta=model.fcnseg_meta)
    assert metrics["images"] == 1


def test_depth_models_refuse_photos(tmp_path):
    hha_file = tmp_path / "nyud-fcn32s-hha-heavy.caffemodel"
    hha_file.write_bytes(caffemodel_bytes(random_reference("fcn32s", 40)))
    with pytest.raises(FcnsegError, match="takes hha input .*not colour photos"):
        fcnseg.Segmenter.from_pretrained(str(hha_file))


@pytest.mark.parametrize("top_folder", [True, False], ids=["nyud-top-folder", "no-top-folder"])
def test_download_nyud_archive_then_open_it_with_the_shipped_split_lists(tmp_path, capsys, top_folder):
    src = tmp_path / "src"
    folder = make_nyud(src / "nyud" if top_folder else src, ids=("5133", "5003"), splits={})  # no split lists
    archive = tar_of(src, tmp_path / "nyud.tar.gz")
    root = tmp_path / "data"
    assert main(["data", "download", "nyud", "--root", str(root), "--url", archive.as_uri(), "--no-progress"]) == 0
    assert f"nyud:{root}" in capsys.readouterr().out
    assert not list(folder.glob("*.txt"))
    with pytest.raises(FcnsegError, match=r"does not exist \(1306 of 1308 files"):  # the reference's 654 test ids
        load_dataset(f"nyud:{root}", "test")
    listed = load_dataset(f"nyud:{root}", "test", check_files=False)
    assert len(listed) == 654 and listed.sample_name(0).endswith("img_5133.png")
    assert len(load_dataset(f"nyud:{root}", "trainval", check_files=False)) == 795


TINY_NYUD_TRAIN = [
    "--width",
    "0.0625",
    "--geometry",
    "same",
    "--iterations",
    "2",
    "--batch-size",
    "2",
    "--crop-size",
    "32",
    "--hflip",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-3",
    "--no-progress",
    "--num-samples",
    "1",
    "--train-split",
    "trainval",
    "--val-split",
    "test",
]


def test_train_hha_and_fusion_models_on_nyud_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    root = make_nyud(tmp_path / "nyud")
    data = ["--data", f"nyud:{root}"]
    run = tmp_path / "fusion"
    fusion = ["--model", "fcn32s-fusion", "--modality", "rgb-hha", "--out", str(run)]
    assert main(["train", *data, *fusion, *TINY_NYUD_TRAIN]) == 0
    _, meta = load(run / "best.pt")
    assert meta.modality == "rgb-hha" and meta.normalization == "imagenet+imagenet"
    assert main(["evaluate", "--weights", str(run / "best.pt"), *data, "--split", "test", "--no-progress"]) == 0
    capsys.readouterr()
    bad = ["train", *data, "--model", "fcn32s", "--modality", "rgb-hha", "--out", str(tmp_path / "bad")]
    assert main([*bad, *TINY_NYUD_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes 3-channel input but --modality rgb-hha gives 6; use --model fcn32s-fusion" in err[0]
    assert not (tmp_path / "bad").exists()
