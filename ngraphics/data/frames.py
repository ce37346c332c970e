"""What every loader shares: split selection, pose checks, and the cached image pipeline.

A loader parses its format into a list of `ImageJob`s (one per frame: file, target size, the lens to undo) and
camera-to-world matrices; `load_images` decodes, undistorts and area-downscales the images (in threads, with a
progress bar, through the on-disk cache) and `make_cameras` scales the intrinsics to the images it produced.
`Views` does both for loaders that read each image's size from its file (COLMAP, NeuS).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngraphics.cameras import Cameras
from ngraphics.cameras.distortion import undistort_image
from ngraphics.data import cache as _cache
from ngraphics.data.images import (
    downscaled_size,
    image_size,
    read_image,
    read_mask,
    resize_area,
    to_rgb_or_rgba,
    to_tensor,
)
from ngraphics.errors import DataError, choice_message

SPLITS = ("train", "val", "test", "all")


class DataWarning(UserWarning):
    """Something in a dataset was skipped or repaired (e.g. listed images that do not exist)."""


def check_split(split: str, where: str) -> str:
    if split not in SPLITS:
        raise DataError(choice_message(f"{where}: split", split, SPLITS))
    return split


def holdout_indices(n: int, split: str, holdout: int = 8) -> list[int]:
    """Frame indices of `split` for formats without split files (COLMAP, instant-ngp, NeuS).

    Every `holdout`-th frame (0, 8, 16, ... like the Mip-NeRF 360 / LLFF protocol) is held out for "test" and
    "val" (the same frames); "train" gets the rest; "all" (or holdout <= 0) gets every frame.
    """
    if split == "all" or holdout <= 0:
        return list(range(n))
    held = [i for i in range(n) if i % holdout == 0]
    if split in ("test", "val"):
        return held
    return [i for i in range(n) if i % holdout != 0] or held


def subsample(items: Sequence, max_frames: int | None, frame_stride: int) -> list:
    """items[::frame_stride][:max_frames]."""
    if frame_stride < 1:
        raise DataError(f"frame_stride must be >= 1, got {frame_stride}")
    if max_frames is not None and max_frames < 1:
        raise DataError(f"max_frames must be >= 1 or None, got {max_frames}")
    out = list(items)[::frame_stride]
    return out if max_frames is None else out[:max_frames]


def parse_c2w(value: object, where: str) -> np.ndarray:
    """A 4x4 camera-to-world matrix from nested lists / arrays, checked. (4, 4) float64.

    Raises DataError naming `where` when it is not 4x4 numbers, holds NaN/inf, or its last row is not 0 0 0 1.
    """
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: transform matrix is not a 4x4 array of numbers") from None
    if m.shape != (4, 4):
        raise DataError(f"{where}: transform matrix must be 4x4, got shape {tuple(m.shape)}")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{where}: transform matrix contains NaN or inf")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-5):
        raise DataError(f"{where}: transform matrix last row must be 0 0 0 1, got {m[3].tolist()}")
    return m


def warn_missing(missing: list[str], total: int, where: str) -> None:
    """One warning that counts the listed images that do not exist (and names a few)."""
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    warnings.warn(
        f"{where}: skipped {len(missing)} of {total} frames whose image file is missing ({shown})",
        DataWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class ImageJob:
    """One image to load: decode `path`, undo `distortion` with `K` (source pixels), area-resize to `size`.

    Attributes:
        path: image file.
        where: context for error messages, e.g. "transforms.json frame 12".
        size: output (width, height) in pixels.
        K: source intrinsics as 9 floats (row-major), needed when distortion is non-zero.
        distortion: (k1, k2, p1, p2, k3) of the source lens, or None.
        mask_path: optional mask image of the same size as the source image.
    """

    path: Path
    where: str
    size: tuple[int, int]
    K: tuple[float, ...] | None = None
    distortion: tuple[float, ...] | None = None
    mask_path: Path | None = None


def _run_job(job: ImageJob) -> tuple[np.ndarray, np.ndarray | None]:
    image = to_rgb_or_rgba(read_image(job.path, job.where), job.path)
    source_hw = image.shape[:2]
    K = None if job.K is None else np.asarray(job.K, dtype=np.float64).reshape(3, 3)
    lens = job.distortion is not None and any(job.distortion)
    if lens:
        image = undistort_image(image, K, np.asarray(job.distortion))
    image = resize_area(image, *job.size)
    mask = None
    if job.mask_path is not None:
        mask = read_mask(job.mask_path, job.where)
        if mask.shape[:2] != source_hw:
            raise DataError(
                f"{job.mask_path} ({job.where}): mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{job.path.name} is {source_hw[1]}x{source_hw[0]}"
            )
        if lens:
            mask = undistort_image(mask, K, np.asarray(job.distortion))
        mask = resize_area(mask, *job.size)
    return image, mask


def load_images(
    jobs: Sequence[ImageJob], cache: bool = True, desc: str = "images"
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Run the jobs (threads, tqdm bar) or fetch their results from the on-disk cache.

    Returns: images, each (H, W, 3|4) uint8 (8-bit sources) or float32; and masks, each (H, W), or None when
        no job has a mask. The cached and the freshly computed results are bit-identical.
    """
    from tqdm.auto import tqdm

    files: list[Path] = []
    for job in jobs:
        files.append(job.path)
        if job.mask_path is not None:
            files.append(job.mask_path)
    key = None
    if cache and _cache.cache_dir() is not None:
        for f in files:  # missing files must raise the loader's clear error, not a stat() trace
            if not f.is_file():
                raise DataError(f"{f}: image file not found")
        options = [[list(j.size), j.K, j.distortion, j.mask_path is not None] for j in jobs]
        key = _cache.cache_key("images", files, options)
        hit = _cache.load_arrays(key)
        if hit is not None and all(f"image/{i}" in hit for i in range(len(jobs))):
            images = [hit[f"image/{i}"] for i in range(len(jobs))]
            has_mask = any(j.mask_path is not None for j in jobs)
            masks = [hit[f"mask/{i}"] for i in range(len(jobs))] if has_mask else None
            return images, masks
    workers = max(1, min(8, os.cpu_count() or 1, len(jobs)))
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(_run_job, jobs), total=len(jobs), desc=desc, unit="img", disable=None))
    images = [r[0] for r in results]
    masks = [r[1] for r in results] if any(r[1] is not None for r in results) else None
    if key is not None:
        arrays = {f"image/{i}": im for i, im in enumerate(images)}
        if masks is not None:
            arrays.update({f"mask/{i}": m for i, m in enumerate(masks)})
        _cache.save_arrays(key, arrays)
    return images, masks


def make_cameras(
    c2w: Sequence[np.ndarray], K: Sequence[np.ndarray], source_sizes: Sequence[tuple[int, int]],
    sizes: Sequence[tuple[int, int]], time: Sequence[float] | None = None,
) -> Cameras:
    """Cameras for images resized from `source_sizes` to `sizes` ((W, H) each): K is scaled per axis by the
    exact size ratio (pixel edges map to pixel edges), distortion is zero (images are undistorted); `time`
    (one timestamp in [0, 1] per camera, dynamic scenes) becomes `Cameras.time`."""
    Ks = []
    for k, (W0, H0), (W, H) in zip(K, source_sizes, sizes):
        k = np.array(k, dtype=np.float64)
        k[0, :] *= W / W0
        k[1, :] *= H / H0
        Ks.append(k)
    return Cameras(
        c2w=torch.tensor(np.stack(c2w), dtype=torch.float32),
        K=torch.tensor(np.stack(Ks), dtype=torch.float32),
        width=torch.tensor([s[0] for s in sizes], dtype=torch.int64),
        height=torch.tensor([s[1] for s in sizes], dtype=torch.int64),
        time=None if time is None else torch.tensor(list(time), dtype=torch.float32),
    )


@dataclass
class Views:
    """The frames a loader picked, collected one by one, then loaded together.

    `add` reads the image's size from its header and queues an `ImageJob` at `downscale`; `load` runs the
    jobs (`load_images`) and returns the cameras scaled to the loaded images with float32 tensors.
    """

    downscale: float = 1
    jobs: list[ImageJob] = field(default_factory=list)
    c2w: list[np.ndarray] = field(default_factory=list)
    K: list[np.ndarray] = field(default_factory=list)
    source_sizes: list[tuple[int, int]] = field(default_factory=list)

    def add(self, path: Path, where: str, K: np.ndarray, c2w: np.ndarray,
            distortion: np.ndarray | None = None, mask_path: Path | None = None) -> tuple[int, int]:
        """Queue one frame: K (3, 3) in source pixels, c2w (4, 4) OpenCV axes, the lens to undo (or None).
        Returns the image's source (width, height)."""
        size = image_size(path, where)
        job_K = job_distortion = None  # the lens to undo (a job without one is not undistorted)
        if distortion is not None:
            job_K, job_distortion = tuple(K.ravel().tolist()), tuple(distortion.tolist())
        out = downscaled_size(*size, self.downscale)
        self.jobs.append(ImageJob(path, where, out, job_K, job_distortion, mask_path))
        self.K.append(K)
        self.c2w.append(c2w)
        self.source_sizes.append(size)
        return size

    def load(self, cache: bool, desc: str) -> tuple[Cameras, list[torch.Tensor], list[torch.Tensor] | None]:
        """-> (cameras, images (H, W, 3|4) float32, masks (H, W) float32 in [0, 1] or None)."""
        arrays, masks = load_images(self.jobs, cache=cache, desc=desc)
        cameras = make_cameras(self.c2w, self.K, self.source_sizes, [job.size for job in self.jobs])
        masks = None if masks is None else [to_tensor(m) for m in masks]
        return cameras, [to_tensor(a) for a in arrays], masks


def read_json(path: str | Path) -> dict:
    """A JSON object from a file, or DataError naming the file (missing, not JSON, not an object)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def number(mapping: dict, key: str, where: str, default: float | None = None) -> float | None:
    """mapping[key] as a finite float (default when absent), or DataError naming `where` and the key."""
    if key not in mapping:
        return default
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)
