"""read_image on PNG/JPEG/BMP/TIFF files generated in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medfoundry.errors import InputError
from medfoundry.io import ImageData, read_image


def _gray(h: int = 6, w: int = 5) -> np.ndarray:
    return ((np.arange(h * w).reshape(h, w) * 7) % 256).astype(np.uint8)


def test_gray_png_is_one_channel_with_exact_values(tmp_path):
    a = _gray()
    path = tmp_path / "g.png"
    Image.fromarray(a).save(path)
    img = read_image(path)
    assert isinstance(img, ImageData)
    assert img.array.dtype == np.float32
    assert img.array.shape == (1, 6, 5)
    np.testing.assert_array_equal(img.array[0], a.astype(np.float32))
    assert img.spacing == (1.0, 1.0)
    assert img.modality == "unknown"
    assert img.source == str(path)
    assert img.meta["bit_depth"] == 8 and img.meta["spacing_known"] is False


def test_source_is_path_as_given_for_str_input(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(_gray()).save(path)
    assert read_image(str(path)).source == str(path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_keeps_full_range(tmp_path, suffix):
    a = np.array([[0, 255, 300], [4095, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / f"x16{suffix}"
    Image.fromarray(a).save(path)
    img = read_image(path)
    assert img.array.shape == (1, 2, 3)
    assert img.array.max() == 65535.0
    np.testing.assert_array_equal(img.array[0], a.astype(np.float32))
    assert img.meta["bit_depth"] == 16
    assert img.meta["value_range"] == (0.0, 65535.0)


def test_rgb_jpeg_stays_three_channels(tmp_path):
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[..., 0] = 200  # red
    a[..., 2] = 30
    path = tmp_path / "c.jpg"
    Image.fromarray(a).save(path, quality=100)
    img = read_image(path)
    assert img.array.shape == (3, 16, 16)
    means = img.array.reshape(3, -1).mean(axis=1)
    assert means[0] > 180 and means[1] < 20 and 15 < means[2] < 45
    assert img.meta["format"] == "JPEG"


def test_gray_jpeg_and_bmp(tmp_path):
    Image.fromarray(_gray(16, 16)).save(tmp_path / "g.jpeg", quality=95)
    Image.fromarray(_gray(16, 16)).save(tmp_path / "g.BMP")
    assert read_image(tmp_path / "g.jpeg").array.shape == (1, 16, 16)
    bmp = read_image(tmp_path / "g.BMP")
    np.testing.assert_array_equal(bmp.array[0], _gray(16, 16))


def test_rgba_png_is_refused(tmp_path):
    path = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8), mode="RGBA").save(path)
    with pytest.raises(InputError, match="4-channel image not supported") as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_cmyk_jpeg_is_refused(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(path)
    with pytest.raises(InputError, match="4-channel"):
        read_image(path)


def test_palette_png_color_becomes_rgb_and_gray_becomes_l(tmp_path):
    color = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=4
    )
    color.save(tmp_path / "pc.png")
    img = read_image(tmp_path / "pc.png")
    assert img.array.shape == (3, 1, 2)
    assert img.array[0, 0, 0] == 255 and img.array[2, 0, 1] == 255

    gray = Image.fromarray(np.array([[10, 200]], dtype=np.uint8)).convert("P")
    gray.save(tmp_path / "pg.png")
    img = read_image(tmp_path / "pg.png")
    assert img.array.shape == (1, 1, 2)
    np.testing.assert_array_equal(img.array[0], [[10, 200]])


def test_la_png_drops_alpha(tmp_path):
    a = np.stack([_gray(), np.full((6, 5), 17, np.uint8)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(a, mode="LA").save(path)
    img = read_image(path)
    assert img.array.shape == (1, 6, 5)
    np.testing.assert_array_equal(img.array[0], _gray())
    assert img.meta["alpha_dropped"] is True


def test_bilevel_png_reads_as_0_255(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool)).save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.array[0], [[0, 255], [255, 0]])


def test_float_tiff_values_and_nan(tmp_path):
    a = np.array([[-1000.5, 0.25], [3.0, 1e6]], dtype=np.float32)
    Image.fromarray(a, mode="F").save(tmp_path / "f.tiff")
    img = read_image(tmp_path / "f.tiff")
    np.testing.assert_array_equal(img.array[0], a)

    a[0, 1] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "nan.tif")
    a[0, 1] = np.inf
    Image.fromarray(a, mode="F").save(tmp_path / "inf.tif")
    with pytest.raises(InputError, match="infinite"):
        read_image(tmp_path / "inf.tif")


def test_multipage_tiff_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    pages = [Image.fromarray(_gray()) for _ in range(3)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match="3 frames"):
        read_image(path)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file_is_an_error_naming_the_file(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        read_image(cut)
    assert str(e.value).startswith(f"{cut}: ")


def test_non_image_bytes_with_png_suffix(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 20)
    with pytest.raises(InputError, match="not a readable image") as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=str(path)):
        read_image(path)


def test_missing_file_and_folder_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)
    txt = tmp_path / "a.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="unknown image extension '.txt'"):
        read_image(txt)
    nii = tmp_path / "vol.nii.gz"
    nii.write_bytes(b"\x00" * 400)
    with pytest.raises(InputError, match="3D volume"):
        read_image(nii)
