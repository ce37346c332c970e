"""Images for datasets: sizes from headers, the dataset-side reading rules, area downscaling, tensors.

Decoding is `ngraphics.io.images.decode_image` (one clear `DataError` per bad file). Images stay in their
file's precision while they are processed (uint8 for 8-bit PNG/JPEG, float32 for 16-bit PNG and EXR);
`to_tensor` turns them into float32 in [0, 1] at the end. Keeping 8-bit data as uint8 makes the on-disk cache
small and the cached and freshly decoded results bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ngraphics.errors import DataError
from ngraphics.io.images import decode_image

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
    """Decode an image file as stored (`ngraphics.io.images.decode_image`), in the precision datasets keep.

    Args:
        path: PNG, JPEG, BMP, TIFF, WebP or OpenEXR file.
        where: context for error messages, e.g. "transforms_train.json frame 3".
    Returns: (H, W, C) array, C in {1, 3, 4} (grey + alpha becomes RGBA): uint8 for 8-bit files, float32 in
        [0, 1] for 16-bit files, float32 (linear, unclamped) for EXR.
    Raises: DataError naming the file when it is missing, empty or cannot be decoded.
    """
    image = decode_image(path, where)
    if image.shape[2] == 2:  # grey + alpha
        image = image[:, :, [0, 0, 0, 1]]
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)


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
