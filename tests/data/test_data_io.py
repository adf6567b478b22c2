from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from data_synth import save
from PIL import Image

from medurwkv.data.io import ImageReadError, image_hash, read_image, read_label_array, read_mask, write_mask


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_gray_uint8_roundtrip(tmp_path, ext):
    a = np.random.default_rng(0).integers(0, 256, (7, 9), dtype=np.uint8)
    p = tmp_path / f"g{ext}"
    if ext == ".tif":
        tifffile.imwrite(p, a)
    else:
        save(p, a)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (7, 9)
    np.testing.assert_array_equal(out, a)


def test_jpeg_rgb_is_read_as_hwc(tmp_path):
    a = np.zeros((16, 16, 3), np.uint8)
    a[..., 0] = 200
    p = save(tmp_path / "x.JPG", a, quality=95)  # upper-case extension is accepted
    out = read_image(p)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert abs(int(out[..., 0].mean()) - 200) <= 3 and out[..., 1].mean() < 10


def test_16bit_png_and_tiff_stay_uint16(tmp_path):
    a = (np.arange(60).reshape(6, 10) * 1000).astype(np.uint16)
    save(tmp_path / "a.png", a)
    tifffile.imwrite(tmp_path / "a.tif", a)
    for name in ("a.png", "a.tif"):
        out = read_image(tmp_path / name)
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, a)


def test_16bit_rgb_png_is_lossless(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), a[..., ::-1])  # OpenCV writes BGR
    out = read_image(tmp_path / "c.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, a)


def test_rgba_la_and_palette_conversions(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(save(tmp_path / "rgba.png", rgba)), rgba[..., :3])
    la = Image.fromarray(rgba[..., :2].copy(), mode="LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), rgba[..., 0])
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])


def test_planar_tiff_is_moved_to_channels_last(tmp_path):
    a = np.random.default_rng(3).integers(0, 65535, (3, 8, 9), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", a, photometric="minisblack")  # read back as (C, H, W)
    out = read_image(tmp_path / "planar.tif")
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(out, np.moveaxis(a, 0, -1))


def test_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match="unsupported extension"):
        read_image(tmp_path / "x.gif")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 6, 7, 2), np.uint8))
    with pytest.raises(ImageReadError, match="stack"):
        read_image(tmp_path / "stack.tif")


def test_read_mask_binary_255_maps_to_one(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[2:4, 1:5] = 255
    out = read_mask(save(tmp_path / "m.png", m))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, (m > 0).astype(np.int64))
    # all-background masks stay zero, 16-bit 0/65535 masks are binary too
    assert read_mask(save(tmp_path / "z.png", np.zeros((3, 3), np.uint8))).max() == 0
    m16 = m.astype(np.uint16) * 257
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m16.png", m16)), (m > 0).astype(np.int64))


def test_read_mask_label_map_and_palette(tmp_path):
    lab = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "l.png", lab)), lab)
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), lab)  # indices, not colours
    rgb = np.repeat(lab[..., None] * 100, 3, axis=2)
    np.testing.assert_array_equal(read_label_array(save(tmp_path / "rgb.png", rgb)), lab * 100)


def test_read_mask_rejects_colour_and_out_of_range(tmp_path):
    c = np.zeros((4, 4, 3), np.uint8)
    c[0, 0] = (255, 0, 0)
    with pytest.raises(ImageReadError, match="colour"):
        read_mask(save(tmp_path / "c.png", c))
    lab = np.array([[0, 3]], np.uint8)
    with pytest.raises(ValueError, match=r"l\.png.*\[3\].*2 classes"):
        read_mask(save(tmp_path / "l.png", lab), num_classes=2)
    assert read_mask(tmp_path / "l.png", num_classes=4).max() == 3
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(ImageReadError, match="non-integer"):
        read_mask(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "fi.tif", np.array([[0.0, 2.0]], np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "fi.tif"), [[0, 2]])


def test_write_mask_roundtrip(tmp_path):
    binary = np.array([[0, 1], [1, 0]])
    write_mask(tmp_path / "b.png", binary)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "b.png")))) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), binary)
    multi = np.array([[0, 1, 2, 7]])
    write_mask(tmp_path / "m.png", multi)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), multi)
    with pytest.raises(ValueError, match="H, W"):
        write_mask(tmp_path / "x.png", np.zeros((2, 2, 2)))


def test_image_hash_depends_on_content_shape_dtype():
    a = np.zeros((2, 3), np.uint8)
    assert image_hash(a) == image_hash(a.copy())
    assert image_hash(a) != image_hash(np.zeros((3, 2), np.uint8))
    assert image_hash(a) != image_hash(a.astype(np.uint16))
    b = a.copy()
    b[1, 2] = 1
    assert image_hash(a) != image_hash(b)
