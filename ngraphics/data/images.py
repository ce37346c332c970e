"""Reading and resizing images for datasets: one clear `DataError` per bad file, area downscaling.

8-bit files are decoded here (not with `ngraphics.io.images.read_image`, which returns float32) because
images stay in their file's precision while they are processed (uint8 for 8-bit PNG/JPEG, float32 for 16-bit
PNG and EXR); `to_tensor` turns them into float32 in [0, 1] at the end. Keeping 8-bit data as uint8 makes the
on-disk cache small and the cached and freshly decoded results bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ngraphics.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr")


def _where(path: Path, where: str | None) -> str:
    return f"{path} ({where})" if where else str(path)


def image_size(path: str | Path, where: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{_where(path, where)}: image file not found")
    try:
        if path.suffix.lower() == ".exr":
            import OpenEXR

            with OpenEXR.File(str(path), header_only=True) as f:
                lo, hi = f.header()["dataWindow"]
            return int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:  # noqa: BLE001  PIL and OpenEXR raise many types for corrupt headers
        raise DataError(f"{_where(path, where)}: not a readable image ({type(e).__name__}: {e})") from None


def read_image(path: str | Path, where: str | None = None) -> np.ndarray:
    """Decode an image file as stored (no EXIF rotation, no colour conversion besides BGR -> RGB).

    Args:
        path: PNG, JPEG, BMP, TIFF, WebP or OpenEXR file.
        where: context for error messages, e.g. "transforms_train.json frame 3".
    Returns: (H, W, C) array, C in {1, 3, 4}: uint8 for 8-bit files, float32 in [0, 1] for 16-bit files,
        float32 (linear, unclamped) for EXR.
    Raises: DataError naming the file when it is missing, empty or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{_where(path, where)}: image file not found")
    if path.suffix.lower() == ".exr":
        return _read_exr(path, where)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{_where(path, where)}: image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{_where(path, where)}: cannot decode image (corrupt or unsupported format)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    elif image.shape[2] == 2:  # grey + alpha
        image = image[:, :, [0, 0, 0, 1]]
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)


def _read_exr(path: Path, where: str | None) -> np.ndarray:
    from ngraphics.io.images import read_exr  # float32 linear (H, W, C), DataError on a bad file

    try:
        image = read_exr(path)
    except DataError as e:
        raise DataError(f"{where}: {e}" if where else str(e)) from None
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 2:  # grey + alpha
        image = image[:, :, [0, 0, 0, 1]]
    return np.ascontiguousarray(image, dtype=np.float32)


def to_rgb_or_rgba(image: np.ndarray, path: str | Path) -> np.ndarray:
    """Grey (C=1) becomes RGB; RGB and RGBA pass through. (H, W, 3|4), same dtype."""
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] not in (3, 4):
        raise DataError(f"{path}: expected 1, 3 or 4 channels, got {image.shape[2]}")
    return image


def read_mask(path: str | Path, where: str | None = None) -> np.ndarray:
    """A mask image as one channel, (H, W) in the file's dtype (first channel; alpha if the file has one)."""
    image = read_image(path, where)
    return np.ascontiguousarray(image[:, :, 3] if image.shape[2] == 4 else image[:, :, 0])


def downscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """Size of an image shrunk by `factor` (>= 1): (max(1, round(W / f)), max(1, round(H / f)))."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink with area averaging (box filter); RGBA is averaged premultiplied so edges do not bleed.

    Args:
        image: (H, W, C) or (H, W) uint8 or float32.
        width, height: target size in pixels (<= the source size for proper area averaging).
    Returns: (height, width[, C]) in the input's dtype (uint8 results are rounded).
    """
    if image.shape[1] == width and image.shape[0] == height:
        return image
    size = (int(width), int(height))
    if image.ndim == 3 and image.shape[2] == 4:
        x = image.astype(np.float32)
        if image.dtype == np.uint8:
            x /= 255.0
        x[:, :, :3] *= x[:, :, 3:]
        y = cv2.resize(x, size, interpolation=cv2.INTER_AREA)
        alpha = y[:, :, 3:]
        y[:, :, :3] = np.where(alpha > 1e-6, y[:, :, :3] / np.maximum(alpha, 1e-6), 0.0)
        if image.dtype == np.uint8:
            return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
        return y
    y = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and y.ndim == 2:
        y = y[:, :, None]
    return y


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 / 255; float arrays -> float32 as they are. Keeps the shape."""
    if image.dtype == np.uint8:
        return torch.from_numpy(image).to(torch.float32).div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
