"""Image IO: round trips against independent writers/readers (imageio, OpenEXR, a hand-written PNG
encoder)."""

from __future__ import annotations

import struct
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import need_data

from ngraphics.errors import DataError
from ngraphics.io.images import (
    IMAGE_SUFFIXES,
    decode_image,
    downscale,
    downscaled_size,
    linear_to_srgb,
    read_image,
    resize_area,
    srgb_to_linear,
    write_exr,
    write_image,
)

# A core dependency; only the bare device machine (no network, nothing installed) lacks it.
OpenEXR = pytest.importorskip("OpenEXR")


def _png_bytes(arr: np.ndarray) -> bytes:
    """Minimal PNG encoder (filter 0, one IDAT), independent of every library under test.
    arr: (H, W) or (H, W, 3|4) uint8 or uint16."""
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    depth = 16 if arr.dtype == np.uint16 else 8
    colour = {1: 0, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I",
                                                                        zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND",
                                                                                                    b"")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_png_8bit_rgb_matches_imageio(tmp_path, rng):
    arr = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", arr)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (13, 17, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, iio.imread(tmp_path / "a.png").astype(np.float32) / 255)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_16bit_from_hand_encoder(tmp_path, rng, channels):
    arr = rng.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    (tmp_path / "b.png").write_bytes(_png_bytes(arr))
    img = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(img, arr.astype(np.float32) / 65535)


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 1), (np.uint8, 4), (np.uint16, 1), (np.uint16, 3)])
def test_decode_image_keeps_the_file_precision(tmp_path, rng, dtype, channels):
    """The one decoder under both readers: the stored code values in the file's dtype, channels R, G, B, A."""
    arr = rng.integers(0, np.iinfo(dtype).max + 1, (9, 11, channels), dtype=dtype)
    (tmp_path / "c.png").write_bytes(_png_bytes(arr))
    img = decode_image(tmp_path / "c.png")
    assert img.dtype == dtype and img.shape == arr.shape
    np.testing.assert_array_equal(img, arr)
    with pytest.raises(DataError, match=r"nope\.png \(frame 3\): image file not found"):
        decode_image(tmp_path / "nope.png", "frame 3")


def test_png_16bit_write_round_trip(tmp_path, rng):
    x = rng.random((6, 5, 3)).astype(np.float32)
    write_image(tmp_path / "c.png", x, bit_depth=16)
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), x, atol=0.5 / 65535 + 1e-7)
    grey = rng.random((6, 5)).astype(np.float32)
    write_image(tmp_path / "g.png", grey, bit_depth=16)
    ref = iio.imread(tmp_path / "g.png")  # Pillow reads 16-bit greyscale exactly
    np.testing.assert_array_equal(ref, np.round(grey * 65535).astype(np.uint16))


def test_png_8bit_write_read_by_imageio(tmp_path, rng):
    x = rng.random((4, 7, 4)).astype(np.float32)
    write_image(tmp_path / "d.png", x)
    np.testing.assert_array_equal(iio.imread(tmp_path / "d.png"), np.round(x * 255).astype(np.uint8))


def test_jpg_greyscale_stays_one_channel(tmp_path, rng):
    grey = rng.integers(0, 256, (21, 30), dtype=np.uint8)
    iio.imwrite(tmp_path / "e.jpg", grey)
    img = read_image(tmp_path / "e.jpg")
    assert img.shape == (21, 30, 1)
    ref = iio.imread(tmp_path / "e.jpg").astype(np.float32) / 255
    assert np.abs(img[:, :, 0] - ref).max() <= 1 / 255 + 1e-6


def test_exr_written_by_openexr(tmp_path, rng):
    rgba = rng.normal(size=(8, 10, 4)).astype(np.float32) * 3  # linear, unbounded, negatives allowed
    channels = {n: np.ascontiguousarray(rgba[:, :, i]) for i, n in enumerate("RGBA")}
    with OpenEXR.File({"compression": OpenEXR.PIZ_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(tmp_path / "f.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "f.exr"), rgba)
    y = rng.random((5, 6)).astype(np.float16)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Y": y}) as f:
        f.write(str(tmp_path / "y.exr"))
    img = read_image(tmp_path / "y.exr")
    assert img.shape == (5, 6, 1) and img.dtype == np.float32
    np.testing.assert_array_equal(img[:, :, 0], y.astype(np.float32))


@pytest.mark.parametrize("half", [False, True])
def test_write_exr_read_by_openexr(tmp_path, rng, half):
    x = torch.from_numpy(rng.random((7, 3, 3)).astype(np.float32) * 10)
    write_exr(tmp_path / "g.exr", x, half=half)
    ch = OpenEXR.File(str(tmp_path / "g.exr"), separate_channels=True).channels()
    assert sorted(ch) == ["B", "G", "R"]
    got = np.stack([ch[n].pixels.astype(np.float32) for n in "RGB"], axis=-1)
    ref = x.numpy().astype(np.float16).astype(np.float32) if half else x.numpy()
    np.testing.assert_array_equal(got, ref)


def test_shared_albert_exr():
    path = need_data("images", "albert.exr")
    img = read_image(path)
    ref = OpenEXR.File(str(path)).channels()["RGBA"].pixels  # the bindings' own RGBA grouping
    assert img.shape == (1024, 1024, 4)
    np.testing.assert_array_equal(img, ref)


def test_shared_albert_jpg():
    path = need_data("images", "albert.jpg")
    img = read_image(path)
    assert img.shape == (4333, 3250, 1)
    ref = iio.imread(path)
    assert ref.shape == (4333, 3250)
    assert np.abs(img[:, :, 0] * 255 - ref).max() <= 1.0 + 1e-3


def test_missing_and_corrupt_images_name_the_path(tmp_path):
    for name in ("missing.png", "missing.exr"):
        with pytest.raises(DataError, match=f"{name}.*not found"):
            read_image(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "bad.jpg").write_bytes(b"")
    (tmp_path / "bad.exr").write_bytes(b"v/1\x01" + b"\x00" * 50)
    for name in ("bad.png", "bad.jpg", "bad.exr"):
        with pytest.raises(DataError) as err:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not a supported image type"):
        read_image(tmp_path / "notes.txt")


def test_failed_write_keeps_old_file(tmp_path):
    write_image(tmp_path / "h.png", np.full((2, 2, 3), 0.5, np.float32))
    before = (tmp_path / "h.png").read_bytes()
    with pytest.raises(DataError, match="h.png"):
        write_image(tmp_path / "h.png", np.zeros((2, 2, 7), np.float32))
    assert (tmp_path / "h.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png"]


def test_srgb_transfer_against_formula():
    x = np.linspace(-0.1, 1.2, 1001)
    ref = np.array([v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in x])
    np.testing.assert_allclose(srgb_to_linear(x), ref, rtol=1e-12)
    np.testing.assert_allclose(srgb_to_linear(torch.from_numpy(x)).numpy(), ref, rtol=1e-12)
    assert abs(srgb_to_linear(0.5) - 0.21404114048223255) < 1e-12  # published sRGB value
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    t = torch.rand(100, dtype=torch.float64)
    torch.testing.assert_close(srgb_to_linear(linear_to_srgb(t)), t)


def test_downscale_is_area_average(rng):
    img = rng.random((8, 12, 3)).astype(np.float32)
    out = downscale(img, 6)
    ref = img.reshape(4, 2, 6, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert downscale(img, 0) is img and downscale(img, 100) is img


def test_downscale_non_integer_factor_is_resize_area(rng):
    """downscale(max side) is resize_area at the size downscaled_size gives for max(H, W) / max_side."""
    img = rng.random((10, 7, 3)).astype(np.float32)
    out = downscale(img, 4)  # factor 2.5: 10 -> 4, 7 -> round(2.8) = 3
    assert out.shape == (4, 3, 3) and downscaled_size(7, 10, 2.5) == (3, 4)
    np.testing.assert_array_equal(out, resize_area(img, 3, 4))
    # the longer side lands exactly on max_side for awkward ratios too
    for h, w, m in ((4333, 3250, 512), (1000, 999, 300), (7, 1001, 3)):
        new_w, new_h = downscaled_size(w, h, max(h, w) / m)
        assert max(new_w, new_h) == m


def _box_mean_premultiplied(img: np.ndarray, k: int) -> np.ndarray:
    """k x k block means of colour * alpha and alpha, colour divided back: a float64 loop."""
    h, w, c = img.shape
    out = np.zeros((h // k, w // k, c))
    for i in range(h // k):
        for j in range(w // k):
            block = img[i * k:(i + 1) * k, j * k:(j + 1) * k].astype(np.float64)
            alpha = block[:, :, -1].mean()
            out[i, j, -1] = alpha
            if alpha > 0:
                out[i, j, :-1] = (block[:, :, :-1] * block[:, :, -1:]).mean((0, 1)) / alpha
    return out


@pytest.mark.parametrize("channels", [2, 4])
def test_downscale_averages_alpha_premultiplied(rng, channels):
    img = rng.random((8, 12, channels)).astype(np.float32)
    img[:4, :4, -1] = 0.0  # a fully transparent 2x2 block of output pixels: colour 0 there
    out = downscale(img, 6)
    assert out.shape == (4, 6, channels) and out.dtype == np.float32
    np.testing.assert_allclose(out, _box_mean_premultiplied(img, 2), atol=1e-5)


def test_image_suffixes_cover_both_former_lists():
    """One list for the library reader and the dataset loaders: the union of the two they used to keep."""
    library = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".exr", ".hdr")
    datasets = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr")
    assert set(IMAGE_SUFFIXES) == set(library) | set(datasets)
    from ngraphics.data import images as data_images

    assert data_images.IMAGE_SUFFIXES is IMAGE_SUFFIXES


def test_ppm_pgm_and_radiance_hdr_read(tmp_path, rng):
    """Suffixes only the library reader knew before: PPM/PGM (hand-written) and .hdr (written by imageio)."""
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    (tmp_path / "a.ppm").write_bytes(b"P6 4 3 255\n" + rgb.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "a.ppm"), rgb / np.float32(255))
    grey = rng.integers(0, 256, (2, 5), dtype=np.uint8)
    (tmp_path / "b.PGM").write_bytes(b"P5 5 2 255\n" + grey.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "b.PGM"), grey[:, :, None] / np.float32(255))
    hdr = rng.uniform(0.01, 40.0, (5, 6, 3)).astype(np.float32)
    iio.imwrite(tmp_path / "c.hdr", hdr)
    got = read_image(tmp_path / "c.hdr")
    assert got.shape == (5, 6, 3) and got.dtype == np.float32
    # RGBE: 8-bit mantissas under the pixel's largest channel's exponent, so the step is <= that channel / 128
    assert (np.abs(got - hdr) <= hdr.max(axis=2, keepdims=True) / 128).all()


def test_keep_8bit_is_the_datasets_precision(tmp_path, rng):
    """read_image(keep_8bit=True) (what ngraphics.data.images.read_image is) keeps 8-bit code values; 16-bit
    files are float32 either way; errors name the file and the context."""
    from ngraphics.data.images import read_image as read_dataset_image

    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_png_bytes(rgba))
    for got in (read_image(tmp_path / "a.png", keep_8bit=True), read_dataset_image(tmp_path / "a.png")):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba / np.float32(255))
    grey16 = rng.integers(0, 65536, (4, 3), dtype=np.uint16)
    (tmp_path / "g.png").write_bytes(_png_bytes(grey16))
    grey = read_image(tmp_path / "g.png", keep_8bit=True)
    assert grey.dtype == np.float32
    np.testing.assert_array_equal(grey, read_image(tmp_path / "g.png"))
    with pytest.raises(DataError, match=r"notes\.txt \(frame 3\): not a supported image type"):
        read_dataset_image(tmp_path / "notes.txt", "frame 3")
