"""The one image reader (fcnseg.images): the dataset path, the predict/Segmenter path and the server's
upload decoding see the same pixels, by the same rules (EXIF, 16-bit, palette, alpha, CMYK), and the
same files are refused with the same one-line messages."""

import io
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.errors import FcnsegError
from fcnseg.images import image_size, read_label, read_rgb

RNG = np.random.default_rng(0)


def rotated_jpeg(path, orientation=6):
    """A 40x20 JPEG, left half red, whose EXIF says "rotate 90 clockwise to display"."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    return path


def deep_png(path):
    """A 16-bit greyscale PNG with values over the whole 0..65535 range."""
    values = RNG.integers(0, 65536, (12, 16)).astype(np.uint16)
    values[0, :4] = (0, 255, 256, 65535)
    Image.fromarray(values).save(path)
    return path, values


def all_readers(path):
    """The pixels of ``path`` (inside a folder dataset) as every part of fcnseg reads them."""
    from fcnseg.data.folder import open_folder
    from fcnseg.inference import Segmenter, load_image
    from fcnseg.models import create_model
    from fcnseg.serving.uploads import decode_image

    dataset = open_folder(str(path.parent.parent.parent), "train")
    meta = {
        "model_name": "fcn32s",
        "model_kwargs": {"num_classes": 2, "width": 1 / 32},
        "class_names": ["bg", "fg"],
        "palette": [],
        "normalization": "imagenet",
    }
    segmenter = Segmenter(create_model("fcn32s", **meta["model_kwargs"]), meta, fast=False)
    mask, segmented = segmenter.segment(path)  # the pixels the Segmenter really fed the model
    assert mask.shape == segmented.shape[:2]
    return {
        "dataset": dataset.load_image(0),
        "predict": load_image(path),
        "segmenter": segmented,
        "serve": decode_image(path.read_bytes(), 10**8),
        "pil": read_rgb(Image.open(path)),
    }


def folder_with(tmp_path, name, make):
    """A one-sample folder dataset whose image is made by ``make(path)``; its mask fits the image."""
    images, masks = tmp_path / "d" / "train" / "images", tmp_path / "d" / "train" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    path = images / name
    make(path)
    width, height = image_size(path)
    Image.fromarray(np.zeros((height, width), np.uint8), mode="L").save(masks / (path.stem + ".png"))
    (tmp_path / "d" / "classes.json").write_text('["bg", "fg"]')
    return path


def test_exif_rotated_jpeg_is_the_same_for_dataset_predict_and_serve(tmp_path):
    path = folder_with(tmp_path, "phone.jpg", rotated_jpeg)
    arrays = all_readers(path)
    first = arrays["dataset"]
    assert first.shape == (40, 20, 3)  # upright: the EXIF rotation is applied
    assert first[:20, :, 0].mean() > 200 and first[20:, :, 0].mean() < 50  # red is now on top
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, first, err_msg=name)
    assert image_size(path) == (20, 40)  # the header size the preflight compares masks with, upright too


def test_sixteen_bit_png_is_the_same_everywhere_and_keeps_the_high_byte(tmp_path):
    path = folder_with(tmp_path, "deep.png", deep_png)
    values = np.asarray(Image.open(path)).astype(np.int64)
    arrays = all_readers(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert arrays["dataset"][0, :4, 0].tolist() == [0, 0, 1, 255]  # not clipped to white
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, expected, err_msg=name)


def test_modes_cmyk_la_palette_with_transparency_and_i16(tmp_path):
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 0, 0))  # no magenta ink... full magenta: (255, 0, 255)
    assert read_rgb(cmyk)[0, 0].tolist() == [255, 0, 255]
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_rgb(tmp_path / "cmyk.jpg")[0, 0].astype(int) - [255, 0, 255]).max() < 8

    la = Image.new("LA", (3, 2), (50, 0))  # fully transparent grey: alpha dropped, grey kept
    la.save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png").tolist() == [[[50, 50, 50]] * 3] * 2

    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([0, 0, 0, 7, 8, 9] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").info.get("transparency") == 1
    assert read_rgb(tmp_path / "pal.png")[1, 2].tolist() == [7, 8, 9]  # the stored colour, alpha dropped

    rgba = np.dstack([np.full((2, 3, 3), 10, np.uint8), np.zeros((2, 3), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert (read_rgb(tmp_path / "rgba.png") == 10).all()

    i16 = Image.fromarray(np.array([[0, 256, 65535]], np.uint16))
    assert i16.mode == "I;16"
    assert read_rgb(i16)[0, :, 1].tolist() == [0, 1, 255]
    as_i = Image.fromarray(np.array([[512, 65535]], np.int32), mode="I")
    assert read_rgb(as_i)[0, :, 2].tolist() == [2, 255]


def test_masks_read_by_the_same_module(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [9] * (253 * 3))
    pal.save(tmp_path / "p.png")
    assert read_label(tmp_path / "p.png").tolist() == [[0, 1], [2, 255]]  # indices are the labels
    assert read_label(tmp_path / "p.png", by_colour=True)[0, 1].tolist() == [200, 0, 0]
    Image.fromarray(np.array([[3, 255]], np.uint16)).save(tmp_path / "ok16.png")
    assert read_label(tmp_path / "ok16.png").dtype == np.uint8
    Image.fromarray(np.array([[3, 300]], np.uint16)).save(tmp_path / "bad16.png")
    with pytest.raises(FcnsegError, match=r"bad16.png: mask values must be 0..255.*found 3..300"):
        read_label(tmp_path / "bad16.png")
    Image.fromarray(np.zeros((2, 2, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert read_label(tmp_path / "rgba.png").shape == (2, 2, 3)


def test_a_folder_given_as_a_file_says_so(tmp_path):
    from fcnseg.files import read_safetensors, safe_torch_load

    (tmp_path / "dir.png").mkdir()
    from fcnseg.data.io import read_sbd_mat

    for read in (read_rgb, read_label, safe_torch_load, read_safetensors, read_sbd_mat):
        with pytest.raises(FcnsegError) as err:
            read(tmp_path / "dir.png")
        assert "is a folder, not a file" in str(err.value) and "does not exist" not in str(err.value)
    with pytest.raises(FcnsegError, match="does not exist"):
        read_rgb(tmp_path / "missing.png")


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            read_rgb(fifo)
        except FcnsegError as exc:
            result["error"] = str(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # it blocked in open(): release it so the test run can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert "pipe.png: image is a FIFO, not a regular file" in result["error"]


def test_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(FcnsegError, match="a.png: image is a symlink loop"):
        read_rgb(tmp_path / "a.png")


def test_bytes_and_tensors_follow_the_same_depth_rule():
    from fcnseg.inference import load_image

    values = np.array([[0, 256, 65535]], np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    from_bytes = read_rgb(buffer.getvalue())
    assert from_bytes[0, :, 0].tolist() == [0, 1, 255]
    np.testing.assert_array_equal(load_image(values), from_bytes)  # a uint16 array: the same high byte
    np.testing.assert_array_equal(load_image(torch.from_numpy(values.astype(np.int32))[None]), from_bytes)
