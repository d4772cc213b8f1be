"""Image decoding, conversion, resizing and the lossless PNG round trip."""

import io

import numpy as np
import pytest
from PIL import Image

from hf_unlearnable.images import decode_png, encode_png, load_image, prepare_image, resize_center_crop, to_rgb


def _encoded(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb_uint8(mode):
    image = Image.new(mode, (37, 21))
    array = prepare_image(image, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8


def test_transparency_composites_on_white():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (np.asarray(to_rgb(clear)) == 255).all()


def test_sixteen_bit_scales_to_eight_bit():
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert (np.asarray(to_rgb(deep)) == 255).all()


def test_shorter_side_resize_then_centre_crop():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # the centre third is white
    out = resize_center_crop(Image.fromarray(wide), 10)
    assert out.shape == (10, 10, 3)
    assert out[:, 2:8].min() > 200  # the crop kept the middle


def test_one_pixel_image_upsamples():
    out = prepare_image(Image.new("RGB", (1, 1), (1, 2, 3)), 8)
    assert out.shape == (8, 8, 3) and (out == [1, 2, 3]).all()


def test_png_round_trip_is_exact():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    assert (decode_png(encode_png(array)) == array).all()


def test_inputs_of_every_storage_form(tmp_path):
    image = Image.new("RGB", (5, 5), (9, 9, 9))
    path = tmp_path / "x.png"
    image.save(path)
    data = _encoded(image)
    for value in (
        image,
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(path)},
        data,
        str(path),
        np.asarray(image),
    ):
        assert (np.asarray(to_rgb(load_image(value))) == 9).all()


def test_broken_bytes_name_the_row():
    with pytest.raises(ValueError, match="row 7.*Fix or drop"):
        load_image({"bytes": b"\x89PNG broken", "path": None}, row=7)
    with pytest.raises(ValueError, match="row 2"):
        load_image(None, row=2)
    with pytest.raises(TypeError, match="row 3"):
        load_image(3.5, row=3)
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((4, 4), dtype=np.float32), row=1)


def test_a_decompression_bomb_names_the_row_and_the_fix(tmp_path, monkeypatch):
    # PIL refuses an image of more than 2 x MAX_IMAGE_PIXELS pixels with its own DecompressionBombError,
    # which no caller catches: it must be a ValueError naming the row, like every other bad image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 16x16 image (256 pixels) is then a "bomb"
    image = Image.new("RGB", (16, 16))
    image.save(tmp_path / "bomb.png")
    for value in ({"bytes": _encoded(image), "path": None}, str(tmp_path / "bomb.png")):
        with pytest.raises(ValueError, match=r"row 5 is too large to decode safely.*MAX_IMAGE_PIXELS"):
            prepare_image(value, 8, row=5)
