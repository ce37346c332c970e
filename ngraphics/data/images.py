"""Images for datasets: sizes from headers, the dataset-side reading rules, tensors.

Reading is `ngraphics.io.images.read_image` (one clear `DataError` per bad file, one list of suffixes) and
shrinking is `ngraphics.io.images.resize_area`; this module adds what datasets need on top. Images stay in
their file's precision while they are processed (uint8 for 8-bit PNG/JPEG, float32 for 16-bit PNG and EXR);
`to_tensor` turns them into float32 in [0, 1] at the end. Keeping 8-bit data as uint8 makes the on-disk cache
small and the cached and freshly decoded results bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ngraphics.errors import DataError
from ngraphics.io import images as _io
from ngraphics.io.images import IMAGE_SUFFIXES, downscaled_size, resize_area  # re-exported for the loaders


def image_size(path: str | Path, where: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels; DataError naming the
    file when it is missing, unreadable, or over `ngraphics.io.images.MAX_IMAGE_PIXELS`."""
    return _io.check_pixel_limit(path, where)


def read_image(path: str | Path, where: str | None = None) -> np.ndarray:
    """`ngraphics.io.images.read_image(path, where, keep_8bit=True)`: an image in the precision datasets keep.

    Returns: (H, W, C), C in {1, 2, 3, 4}: uint8 for 8-bit files, float32 in [0, 1] for 16-bit files, float32
        (linear, unclamped) for EXR/HDR. `to_rgb_or_rgba` makes it 3 or 4 channels.
    Raises: DataError naming the file (and `where`) when it is missing, empty, of an unsupported type or
        cannot be decoded.
    """
    return _io.read_image(path, where, keep_8bit=True)


def to_rgb_or_rgba(image: np.ndarray, path: str | Path) -> np.ndarray:
    """Grey (C=1) becomes RGB, grey + alpha (C=2) RGBA; RGB and RGBA pass through. (H, W, 3|4), same dtype."""
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 2:
        return np.ascontiguousarray(image[:, :, [0, 0, 0, 1]])
    if image.shape[2] not in (3, 4):
        raise DataError(f"{path}: expected 1 to 4 channels, got {image.shape[2]}")
    return image


def read_mask(path: str | Path, where: str | None = None) -> np.ndarray:
    """A mask image as one channel, (H, W) in the file's dtype (first channel; alpha if the file has one)."""
    image = read_image(path, where)
    return np.ascontiguousarray(image[:, :, -1] if image.shape[2] in (2, 4) else image[:, :, 0])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 / 255; float arrays -> float32 as they are. Keeps the shape."""
    if image.dtype == np.uint8:
        return torch.from_numpy(image).to(torch.float32).div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


__all__ = [
    "IMAGE_SUFFIXES",
    "downscaled_size",
    "image_size",
    "read_image",
    "read_mask",
    "resize_area",
    "to_rgb_or_rgba",
    "to_tensor",
]
