"""Image loading for prediction: orientation, modes, bit depths, and bad files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fcnseg.errors import FcnsegError
from fcnseg.inference.image_io import load_image, to_rgb


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    pil.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "phone.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20, :, 0].mean() > 200 and out[20:, :, 0].mean() < 50  # red is now on top


def test_grayscale_rgba_palette_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((5, 7), 77, np.uint8), mode="L")
    assert (load_image(gray) == 77).all() and load_image(gray).shape == (5, 7, 3)
    rgba = Image.fromarray(np.dstack([np.full((5, 7, 3), 10, np.uint8), np.zeros((5, 7), np.uint8)]))
    assert (load_image(rgba) == 10).all()
    pal = gray.convert("P")
    assert load_image(pal).shape == (5, 7, 3)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32896, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_numpy_inputs_of_other_dtypes():
    assert to_rgb(np.ones((2, 3), np.float32))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb(np.full((2, 3, 3), 65535, np.uint16)).max() == 255
    with pytest.raises(FcnsegError, match="shape"):
        load_image(np.zeros((2, 3, 5), np.uint8))


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "bomb", "big", "missing"])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "bomb":
        _png_header_only(path, 60000, 60000)  # Pillow's own guard refuses this one
    elif kind == "big":
        _png_header_only(path, 11000, 11000)  # 121 MP: over fcnseg's 100 MP limit, under Pillow's
    with pytest.raises(FcnsegError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if kind in ("bomb", "big"):
        assert "decompression bomb" in message


def test_max_pixels_guard_applies_to_pil_images():
    with pytest.raises(FcnsegError, match="exceeds"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
