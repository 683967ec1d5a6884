"""Every on-disk format, from tiny fixture directories in the real layouts."""

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image

from fcnseg.data import load_dataset
from fcnseg.data.voc import PALETTE as VOC_PALETTE
from fcnseg.data.voc import open_voc_aug, voc_colormap
from fcnseg.errors import FcnsegError
from fcnseg.viz import save_index_png


def write_jpg(path, h=12, w=16, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, quality=95)


def label_map(h=12, w=16, labels=(0, 1)):
    mask = np.full((h, w), labels[0], np.uint8)
    mask[h // 2 :, :] = labels[1]
    return mask


def write_png(path, mask, palette=VOC_PALETTE):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_index_png(mask, palette, path)


def write_sbd_mat(path, mask):
    """SBD's cls/<id>.mat layout: struct GTcls with Boundaries (cell of sparse), Segmentation, CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(mask.shape, dtype=np.uint8)
    present = np.unique(mask[mask > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": mask, "CategoriesPresent": present}})


def make_voc(root, splits=None):
    splits = splits or {"train": ["2007_000001", "2008_000002"], "val": ["2007_000033"]}
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, i in enumerate(ids):
            write_jpg(voc / "JPEGImages" / f"{i}.jpg")
            mask = label_map(labels=(0, 15 + k))
            mask[0, 0] = 255
            write_png(voc / "SegmentationClass" / f"{i}.png", mask)
    return voc


def make_sbd(root, splits=None):
    splits = splits or {"train": ["2008_000002", "2009_000003"], "val": ["2010_000004", "2007_000033"]}
    sbd = root / "benchmark_RELEASE" / "dataset"
    sbd.mkdir(parents=True)
    for split, ids in splits.items():
        (sbd / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            write_jpg(sbd / "img" / f"{i}.jpg")
            write_sbd_mat(sbd / "cls" / f"{i}.mat", label_map(labels=(0, 7)))
    return sbd


def test_voc_palette_png_and_layout_discovery(tmp_path):
    make_voc(tmp_path)
    for spec in (f"voc:{tmp_path}", f"voc:{tmp_path}/VOCdevkit/VOC2012"):
        ds = load_dataset(spec, "train")
        assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[15] == "person"
    image, mask = ds[1]
    assert image.shape == (3, 12, 16) and image.dtype == torch.uint8
    assert mask[0, 0] == 255 and mask[11, 0] == 16 and mask[1, 0] == 0
    assert ds.sample_name(0).endswith("JPEGImages/2007_000001.jpg")
    with pytest.raises(FcnsegError, match="no split 'test'.*train, val"):
        load_dataset(f"voc:{tmp_path}", "test")
    with pytest.raises(FcnsegError, match="no ImageSets/Segmentation"):
        load_dataset(f"voc:{tmp_path / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'}", "train")


def test_voc_colormap_and_rgb_masks(tmp_path):
    cmap = voc_colormap()
    assert cmap[1].tolist() == [128, 0, 0] and cmap[15].tolist() == [192, 128, 128]
    assert cmap[255].tolist() == [224, 224, 192]
    voc = make_voc(tmp_path)
    ids = np.array([[0, 1, 15, 255], [20, 5, 0, 255]], np.uint8)
    rgb = cmap[ids]
    Image.fromarray(np.pad(rgb, ((5, 5), (6, 6), (0, 0)))).save(voc / "SegmentationClass" / "2007_000001.png")
    _, mask = load_dataset(f"voc:{tmp_path}", "train")[0]
    assert torch.equal(mask[5:7, 6:10], torch.from_numpy(ids).long())
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(np.pad(rgb, ((5, 5), (6, 6), (0, 0)))).save(voc / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(FcnsegError, match=r"2007_000001.png: pixel \(6, 5\) has colour \(1, 2, 3\)"):
        load_dataset(f"voc:{tmp_path}", "train")[0]


def test_voc_missing_and_truncated_files(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "SegmentationClass" / "2008_000002.png").unlink()
    with pytest.raises(FcnsegError, match="2008_000002.png does not exist"):
        load_dataset(f"voc:{tmp_path}", "train")
    data = (voc / "JPEGImages" / "2007_000033.jpg").read_bytes()
    (voc / "JPEGImages" / "2007_000033.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(FcnsegError, match="2007_000033.jpg: cannot read image"):
        load_dataset(f"voc:{tmp_path}", "val")[0]


def test_sbd_mat_files(tmp_path):
    make_sbd(tmp_path)
    ds = load_dataset(f"sbd:{tmp_path}", "val")
    assert len(ds) == 2 and ds.num_classes == 21
    image, mask = ds[0]
    assert mask.shape == (12, 16) and set(mask.unique().tolist()) == {0, 7}
    bad = tmp_path / "benchmark_RELEASE" / "dataset" / "cls" / "2010_000004.mat"
    scipy.io.savemat(bad, {"other": np.zeros(3)})
    with pytest.raises(FcnsegError, match="2010_000004.mat: not an SBD class file"):
        ds[0]


def test_voc_aug_train_aug_and_seg11valid(tmp_path):
    make_voc(tmp_path / "voc")
    make_sbd(tmp_path / "sbd")
    spec = f"voc-aug:{tmp_path / 'voc'},{tmp_path / 'sbd'}"
    ds = load_dataset(spec, "train_aug")
    # VOC train {01, 02} + SBD {02, 03, 04, 33} - VOC val {33}
    names = [ds.sample_name(i).rsplit("/", 2)[-2:] for i in range(len(ds))]
    assert names == [
        ["JPEGImages", "2007_000001.jpg"],
        ["JPEGImages", "2008_000002.jpg"],
        ["img", "2009_000003.jpg"],
        ["img", "2010_000004.jpg"],
    ]
    assert ds[1][1][11, 0] == 16 and ds[2][1].max() == 7  # VOC mask preferred, else SBD's
    valid = open_voc_aug(f"{tmp_path / 'voc'},{tmp_path / 'sbd'}", "seg11valid", check_files=False)
    assert len(valid) == 736 and valid.sample_name(0).endswith("JPEGImages/2007_000033.jpg")
    assert valid[0][1][11, 0] == 15  # the one seg11valid image the fixture has
    with pytest.raises(FcnsegError, match="does not exist"):
        load_dataset(spec, "seg11valid")
    with pytest.raises(FcnsegError, match="give both folders"):
        load_dataset(f"voc-aug:{tmp_path / 'voc'}", "train_aug")


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    name = "aachen_000000_000019"
    write_jpg(tmp_path / "leftImg8bit" / "train" / "aachen" / f"{name}_leftImg8bit.png")
    label_ids = np.array([[7, 26, 33, 0], [1, 30, 24, 23]], np.uint8)
    mask = np.zeros((12, 16), np.uint8)
    mask[:2, :4] = label_ids
    (tmp_path / "gtFine" / "train" / "aachen").mkdir(parents=True)
    Image.fromarray(mask, mode="L").save(tmp_path / "gtFine" / "train" / "aachen" / f"{name}_gtFine_labelIds.png")
    ds = load_dataset(f"cityscapes:{tmp_path}", "train")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.class_names[13] == "car"
    _, m = ds[0]
    assert m[:2, :4].tolist() == [[0, 13, 18, 255], [255, 255, 11, 10]]
    assert ds.palette[0] == (128, 64, 128)


def make_folder(root, split="train", stems=("a", "b"), color=False):
    for k, stem in enumerate(stems):
        write_jpg(root / split / "images" / f"{stem}.jpg")
        mask = label_map(labels=(0, k + 1))
        if color:
            colors = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], np.uint8)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(colors[mask]).save(root / split / "masks" / f"{stem}.png")
        else:
            write_png(root / split / "masks" / f"{stem}.png", mask)


def test_folder_index_masks_infer_classes(tmp_path, caplog):
    make_folder(tmp_path)
    make_folder(tmp_path, "val", stems=("c",))
    with caplog.at_level("WARNING", logger="fcnseg"):
        ds = load_dataset(f"folder:{tmp_path}", "val")
    assert "no classes.json; found labels 0..2 in 3 masks" in caplog.text
    assert ds.num_classes == 3 and ds.class_names == ("class_0", "class_1", "class_2") and len(ds) == 1
    write_jpg(tmp_path / "train" / "images" / "orphan.jpg")
    with pytest.raises(FcnsegError, match="orphan.jpg has no mask"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_folder_color_masks_with_classes_json(tmp_path):
    make_folder(tmp_path, color=True)
    (tmp_path / "classes.json").write_text(
        json.dumps(
            {
                "classes": [
                    {"name": "bg", "color": [0, 0, 0]},
                    {"name": "red", "color": [255, 0, 0]},
                    {"name": "green", "color": [0, 255, 0]},
                    {"name": "blue", "color": [0, 0, 255]},
                ]
            }
        )
    )
    ds = load_dataset(f"folder:{tmp_path}", "train")
    assert ds.class_names == ("bg", "red", "green", "blue") and ds.palette[1] == (255, 0, 0)
    assert ds[1][1].max() == 2 and ds[1][1].min() == 0
    (tmp_path / "classes.json").write_text(json.dumps([{"name": "bg", "color": [0, 0, 0]}]))
    with pytest.raises(FcnsegError, match=r"b.png: pixel \(0, 6\) has colour \(0, 255, 0\)"):
        load_dataset(f"folder:{tmp_path}", "train")[1]
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(FcnsegError, match="classes.json: cannot read"):
        load_dataset(f"folder:{tmp_path}", "train")
