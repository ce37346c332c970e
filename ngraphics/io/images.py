"""Read, write and shrink images as arrays `(H, W, C)`.

LDR files (PNG 8/16 bit, JPG, BMP, TIFF …) come back as their stored values scaled to [0, 1] (sRGB-encoded
for ordinary photos: no conversion is applied); EXR and HDR files come back as the linear values they hold.
Greyscale stays one channel, channel order is R, G, B(, A). `read_image` is the one reader for the library
and the dataset loaders (`ngraphics.data.images` asks it to keep 8-bit files as uint8, which keeps its
on-disk cache small); `decode_image` is the decoder underneath. Writers go through `atomic_path`, so a crash
never leaves a half-written file. A missing or unreadable file raises `DataError` naming the path.
`resize_area` is the one area (box-filter) shrink; `downscale` expresses "longer side at most N" through it.

    img = read_image("photo.jpg")           # (H, W, 3) float32 in [0, 1]
    write_image("out.png", downscale(img, 512))
    write_exr("out.exr", srgb_to_linear(img))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ngraphics.errors import DataError
from ngraphics.io.atomic import atomic_path

# The files `read_image` accepts (and the dataset loaders look for): every format of the library's and the
# loaders' former lists together. LDR: OpenCV's PNG, JPEG, BMP, TIFF, WebP and PPM/PGM decoders (8 or 16 bit);
# HDR: OpenEXR (through the OpenEXR bindings) and Radiance .hdr (OpenCV), both linear float.
LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
HDR_SUFFIXES = (".exr", ".hdr")
IMAGE_SUFFIXES = LDR_SUFFIXES + HDR_SUFFIXES

# The largest image any reader decodes: 2^28 pixels (16384 x 16384), whose RGBA float32 copy takes 4 GiB. The
# size is read from the file's header first, so a small file that claims a huge size (a "decompression bomb")
# is refused before any memory is spent. The environment variable NGRAPHICS_MAX_IMAGE_PIXELS raises it.
MAX_IMAGE_PIXELS = 1 << 28


def max_image_pixels() -> int:
    """`MAX_IMAGE_PIXELS`, or the environment's NGRAPHICS_MAX_IMAGE_PIXELS when set (a positive integer)."""
    value = os.environ.get("NGRAPHICS_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise DataError(f"NGRAPHICS_MAX_IMAGE_PIXELS: expected a positive integer, got {value!r}")
    return int(value)


def header_size(path: str | Path, where: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels.

    PIL's lazy open for PNG, JPEG, BMP, TIFF, WebP, PPM/PGM; the OpenEXR header; the Radiance header's
    resolution line. Raises DataError naming the file when it is missing or its header is unreadable."""
    path = Path(path)
    name = f"{path} ({where})" if where else str(path)
    if not path.is_file():
        raise DataError(f"{name}: image file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".exr":
            import OpenEXR

            with OpenEXR.File(str(path), header_only=True) as f:
                lo, hi = f.header()["dataWindow"]
            return int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)
        if suffix == ".hdr":
            return _radiance_size(path)
        from PIL import Image

        with warnings.catch_warnings():  # PIL's own decompression-bomb warning: the limit here is ours
            warnings.simplefilter("ignore")
            pixels, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return int(im.size[0]), int(im.size[1])
            finally:
                Image.MAX_IMAGE_PIXELS = pixels
    except DataError:
        raise
    except Exception:  # noqa: BLE001  PIL and OpenEXR raise many types for corrupt headers
        kind = suffix[1:].upper() or "supported image"
        raise DataError(f"{name}: cannot decode image header (corrupt or not a {kind} file)") from None


def _radiance_size(path: Path) -> tuple[int, int]:
    """Width and height from a Radiance .hdr header: text lines up to a blank one, then `-Y H +X W`."""
    with open(path, "rb") as f:
        head = f.read(65536)
    lines = head.split(b"\n")
    if not lines or not lines[0].startswith(b"#?"):
        raise DataError(f"{path}: not a Radiance HDR file (no #? signature)")
    for i, line in enumerate(lines[1:-1], 1):
        if not line.strip():
            parts = lines[i + 1].split()
            if len(parts) == 4 and parts[0][1:] in (b"Y", b"X") and parts[1].isdigit() and parts[3].isdigit():
                h, w = int(parts[1]), int(parts[3])
                return (h, w) if parts[0][1:] == b"X" else (w, h)
            break
    raise DataError(f"{path}: Radiance HDR header has no resolution line")


def check_pixel_limit(path: str | Path, where: str | None = None) -> tuple[int, int]:
    """The header's (width, height); DataError naming the file when it has more than `max_image_pixels()`."""
    w, h = header_size(path, where)
    limit = max_image_pixels()
    if w * h > limit or w < 1 or h < 1:
        name = f"{path} ({where})" if where else str(path)
        raise DataError(f"{name}: image header says {w}x{h} pixels; the limit is {limit:,} pixels "
                        f"(set NGRAPHICS_MAX_IMAGE_PIXELS to raise it)")
    return w, h


# --- sRGB transfer function (IEC 61966-2-1), for numpy arrays and torch tensors ---------------------------

def srgb_to_linear(x):
    """sRGB-encoded values -> linear. x: array or tensor, any shape, nominally in [0, 1]; negatives map to
    negatives (the linear segment), values above 1 follow the power curve."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.asarray(x)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(
        x.dtype if x.dtype.kind == "f" else np.float32
    )


def linear_to_srgb(x):
    """Linear values -> sRGB-encoded. x: array or tensor, any shape; the inverse of `srgb_to_linear`."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    x = np.asarray(x)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(
        x.dtype if x.dtype.kind == "f" else np.float32
    )


# --- reading ------------------------------------------------------------------------------------------------

def read_image(path: str | Path, where: str | None = None, *, keep_8bit: bool = False) -> np.ndarray:
    """Read an image file.

    Args:
        path: a file whose suffix is in `IMAGE_SUFFIXES` (case-insensitive): PNG (8 or 16 bit), JPEG, BMP,
            TIFF, WebP, PPM/PGM, OpenEXR or Radiance HDR.
        where: context for error messages, e.g. "transforms_train.json frame 3".
        keep_8bit: return 8-bit files as their uint8 code values (the dataset loaders' precision: their cache
            stays small and cached and fresh results are bit-identical); 16-bit and float files are float32
            either way.
    Returns:
        (H, W, C), C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA). float32: LDR values are the stored
        code values / (2^bits - 1), in [0, 1]; EXR/HDR values are linear and unbounded. With `keep_8bit`,
        8-bit files are uint8.
    Raises:
        DataError naming the path (and `where`) when the suffix is not an image type or the file is missing,
        not an image, or corrupt.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        name = f"{path} ({where})" if where else str(path)
        raise DataError(f"{name}: not a supported image type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    img = decode_image(path, where)
    if img.dtype == np.uint8:
        return img if keep_8bit else img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype.kind == "f":
        return np.ascontiguousarray(img, dtype=np.float32)
    name = f"{path} ({where})" if where else str(path)
    raise DataError(f"{name}: unsupported pixel type {img.dtype} (expected 8/16-bit integers or float)")


def decode_image(path: str | Path, where: str | None = None) -> np.ndarray:
    """Decode an image file as stored: no scaling, no EXIF rotation, no colour conversion but BGR -> RGB.

    Args:
        path: any file OpenCV decodes (PNG, JPEG, BMP, TIFF, WebP, HDR, …) or OpenEXR.
        where: context for error messages, e.g. "transforms_train.json frame 3".
    Returns: (H, W, C), C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA), in the file's precision: uint8 for
        8-bit files, uint16 for 16-bit ones, float32 for EXR / HDR / float TIFF (linear, unclamped).
    Raises: DataError naming the file (and `where`) when it is missing, empty, cannot be decoded, or its
        header claims more than `MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    import cv2

    path = Path(path)
    name = f"{path} ({where})" if where else str(path)
    if not path.is_file():
        raise DataError(f"{name}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: image file is empty")
    check_pixel_limit(path, where)
    if path.suffix.lower() == ".exr":
        try:
            return read_exr(path)
        except DataError as e:
            raise DataError(f"{where}: {e}" if where else str(e)) from None
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{name}: cannot read image ({err.strerror or err})") from None
    if data.size == 0:
        raise DataError(f"{name}: image file is empty")
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:  # UNCHANGED keeps 16-bit and float data, greyscale as one channel, and alpha
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(old)
    if img is None:
        kind = path.suffix.lower()[1:].upper() or "supported image"
        raise DataError(f"{name}: cannot decode image (corrupt or not a {kind} file)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 3:
        img = img[:, :, ::-1]  # BGR -> RGB
    elif img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    return np.ascontiguousarray(img)


def read_exr(path: str | Path) -> np.ndarray:
    """Read an OpenEXR file (any compression, half or float) into (H, W, C) float32 linear values.

    Channels R, G, B, A (any subset with R, G, B) become RGB(A); Y (and YA) become grey(+alpha); any other
    channel set is returned in name order. Layers (`layer.R`) use the first layer's RGB(A).
    """
    import OpenEXR

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        channels = OpenEXR.File(str(path), separate_channels=True).channels()
    except Exception as err:  # noqa: BLE001 - the bindings raise plain exceptions for corrupt files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read EXR ({reason})") from None
    names = list(channels)
    order = _exr_channel_order(names)
    if not order:
        raise DataError(f"{path}: EXR file has no channels")
    planes = [np.asarray(channels[n].pixels, dtype=np.float32) for n in order]
    if len({p.shape for p in planes}) != 1:
        raise DataError(f"{path}: EXR channels have different sizes (subsampled channels are not supported)")
    return np.ascontiguousarray(np.stack(planes, axis=-1))


def _exr_channel_order(names: list[str]) -> list[str]:
    """Which EXR channels to read, in output order."""
    by_short: dict[str, str] = {}
    for name in sorted(names):  # first layer wins, e.g. "diffuse.R" before "specular.R"
        by_short.setdefault(name.rsplit(".", 1)[-1].upper(), name)
    for combo in (("R", "G", "B", "A"), ("R", "G", "B"), ("Y", "A"), ("Y",)):
        if all(c in by_short for c in combo):
            return [by_short[c] for c in combo]
    return sorted(names)


# --- writing ------------------------------------------------------------------------------------------------

def write_image(path: str | Path, img, *, bit_depth: int = 8, quality: int = 95) -> None:
    """Write an LDR image (PNG, JPG, …) atomically; values are clipped to [0, 1] and quantised.

    Args:
        path: target file; the suffix picks the format. `.exr` is routed to `write_exr`.
        img: (H, W, C) or (H, W) array/tensor, C in {1, 2, 3, 4}, values in [0, 1] (stored as given: pass
            sRGB-encoded values for an ordinary-looking PNG).
        bit_depth: 8, or 16 for PNG/TIFF.
        quality: JPEG quality (0-100).
    """
    import cv2

    path = Path(path)
    img = _as_hwc(img, path)
    if path.suffix.lower() == ".exr":
        write_exr(path, img)
        return
    if path.suffix.lower() not in LDR_SUFFIXES:
        raise DataError(f"{path}: cannot write this image type (expected one of {', '.join(LDR_SUFFIXES)} "
                        "or .exr)")
    if bit_depth not in (8, 16):
        raise DataError(f"{path}: bit_depth must be 8 or 16, got {bit_depth}")
    scale = 255.0 if bit_depth == 8 else 65535.0
    q = np.round(np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0) * scale)
    q = q.astype(np.uint8 if bit_depth == 8 else np.uint16)
    if q.shape[2] == 3:
        q = q[:, :, ::-1]
    elif q.shape[2] == 4:
        q = q[:, :, [2, 1, 0, 3]]
    elif q.shape[2] == 2:  # grey + alpha: OpenCV has no such layout, write BGRA
        q = np.concatenate([q[:, :, :1]] * 3 + [q[:, :, 1:]], axis=2)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(q), params):
            raise DataError(f"{path}: could not write image")


def write_exr(path: str | Path, img, *, half: bool = False) -> None:
    """Write a linear float image to OpenEXR (ZIP compression) atomically.

    Args:
        img: (H, W, C) or (H, W) float array/tensor; C = 1 -> Y, 2 -> YA, 3 -> RGB, 4 -> RGBA.
        half: store 16-bit half floats instead of 32-bit floats.
    """
    import OpenEXR

    path = Path(path)
    img = _as_hwc(img, path).astype(np.float16 if half else np.float32)
    names = {1: "Y", 2: "YA", 3: "RGB", 4: "RGBA"}.get(img.shape[2])
    if names is None:
        raise DataError(f"{path}: cannot write {img.shape[2]} channels to EXR (expected 1 to 4)")
    channels = {name: np.ascontiguousarray(img[:, :, i]) for i, name in enumerate(names)}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_path(path) as tmp, OpenEXR.File(header, channels) as f:
        f.write(str(tmp))



def _as_hwc(img, path: Path) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(f"{path}: image to write must be (H, W) or (H, W, 1..4), got {img.shape}")
    return img


# --- resizing -----------------------------------------------------------------------------------------------

def downscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """Size of an image shrunk by `factor` (>= 1): (max(1, round(W / f)), max(1, round(H / f)))."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink with area averaging (OpenCV's INTER_AREA box filter: each output pixel is the mean of the source
    area it covers). Images with alpha (grey+alpha, RGBA: alpha is the last channel) are averaged
    premultiplied, so the colour of transparent pixels does not bleed into their neighbours; where the
    averaged alpha is 0 the colour is 0.

    Args:
        image: (H, W, C) or (H, W) uint8 or float (float32/float64; linear or sRGB-encoded values alike).
        width, height: target size in pixels (<= the source size for proper area averaging).
    Returns: (height, width[, C]) in the input's dtype (uint8 results are rounded); `image` itself when the
        size is already right.
    """
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    size = (int(width), int(height))
    if image.ndim == 3 and image.shape[2] in (2, 4):
        x = image.astype(np.float32 if image.dtype == np.uint8 else image.dtype)
        if image.dtype == np.uint8:
            x /= 255.0
        x[:, :, :-1] *= x[:, :, -1:]
        y = cv2.resize(x, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], image.shape[2])
        alpha = y[:, :, -1:]
        y[:, :, :-1] = np.where(alpha > 1e-6, y[:, :, :-1] / np.maximum(alpha, 1e-6), 0.0)
        if image.dtype == np.uint8:
            return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
        return y
    y = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and y.ndim == 2:
        y = y[:, :, None]
    return y


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most `max_side`: `resize_area` by the factor max(H, W) / max_side
    (sizes from `downscaled_size`); never enlarges.

    img: (H, W, C) float32 (or anything `resize_area` takes). Returns (H', W', C) in img's dtype;
    `max_side <= 0` or an image already small enough returns `img` itself."""
    h, w = img.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return img
    return resize_area(img, *downscaled_size(w, h, max(h, w) / max_side))


__all__ = [
    "HDR_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LDR_SUFFIXES",
    "decode_image",
    "downscale",
    "downscaled_size",
    "linear_to_srgb",
    "read_exr",
    "read_image",
    "resize_area",
    "srgb_to_linear",
    "write_exr",
    "write_image",
]
