"""NeuS / IDR scenes (e.g. DTU): `cameras_sphere.npz` + `image/` (or `images/`) + optional `mask/`.

`cameras_sphere.npz` holds, for every image i (sorted file order), `world_mat_i`: the projection P = K [R | t]
(3x4 or 4x4, any scale) from world to pixels, and `scale_mat_i`: the similarity that maps the unit sphere
around the object to world coordinates. Like NeuS (`models/dataset.py`, `load_K_Rt_from_P`), the loader
decomposes P' = (world_mat_i @ scale_mat_i)[:3] with cv2.decomposeProjectionMatrix into K (normalised so
K[2, 2] = 1), R and the camera centre, so poses come out in the normalised frame where the object fits in the
unit sphere: aabb = [-1, 1]^3. Camera axes are OpenCV's already.

Pixel convention: NeuS casts the ray of pixel (i, j) through (i, j) (pixel centres at integers), ngraphics
through (i + 0.5, j + 0.5), so the loader adds 0.5 to cx and cy. Masks are read from the first channel, in
[0, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch

from ngraphics.data.frames import Views, check_split, holdout_indices, subsample
from ngraphics.data.images import IMAGE_SUFFIXES
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError


def decompose_projection(P: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) with K[2, 2] = 1 and camera-to-world (4, 4) from a 3x4 projection P = s K [R | t], s > 0."""
    K, R, centre = cv2.decomposeProjectionMatrix(np.asarray(P, dtype=np.float64))[:3]
    if abs(centre[3, 0]) < 1e-12:
        raise DataError(f"{where}: projection matrix has its camera centre at infinity")
    K = K / K[2, 2]
    if K[0, 0] <= 0 or K[1, 1] <= 0 or np.linalg.det(R) <= 0:
        raise DataError(f"{where}: projection matrix does not decompose into K[R|t] with positive focal "
                        "lengths")
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = centre[:3, 0] / centre[3, 0]
    return K, c2w


def _matrix(cams, key: str, path: Path, default: np.ndarray | None = None) -> np.ndarray:
    if key not in cams.files:
        if default is not None:
            return default
        raise DataError(f"{path}: missing key {key}")
    m = np.asarray(cams[key], dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(m)):
        raise DataError(f"{path}: {key} must be a finite 3x4 or 4x4 matrix, got shape {tuple(m.shape)}")
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    return m


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def is_neus(path: Path) -> bool:
    return path.is_dir() and (path / "cameras_sphere.npz").is_file()


def load_neus(
    root: str | Path, split: str = "train", downscale: float = 1, background: str = "white",
    cache: bool = True, max_frames: int | None = None, frame_stride: int = 1, holdout: int = 8,
) -> SceneData:
    """Load a NeuS-format scene in its normalised (unit-sphere) frame.

    Args:
        root: folder with cameras_sphere.npz, image/ or images/, and optionally mask/.
        split: "train", "val", "test" or "all" (every `holdout`-th image is "val"/"test"; NeuS itself trains
            on all: pass split="all").
        downscale, background, cache, max_frames, frame_stride: as for `load_dataset`.
    Returns: SceneData with RGB(A) images, masks when mask/ exists, aabb [-1, 1]^3, meta["scale_mat"] (4, 4):
        scale_mat_0, the normalised (unit-sphere) frame -> world coordinates (for meshes).
    """
    root = Path(root)
    check_split(split, str(root))
    npz_path = root / "cameras_sphere.npz"
    if not npz_path.is_file():
        raise DataError(f"{npz_path}: file not found (a NeuS scene needs cameras_sphere.npz)")
    image_dir = next((root / d for d in ("image", "images") if (root / d).is_dir()), None)
    if image_dir is None:
        raise DataError(f"{root}: no image/ or images/ folder")
    files = _image_files(image_dir)
    if not files:
        raise DataError(f"{image_dir}: no image files")
    mask_files = _image_files(root / "mask") if (root / "mask").is_dir() else None
    if mask_files is not None and len(mask_files) != len(files):
        raise DataError(f"{root / 'mask'}: {len(mask_files)} masks for {len(files)} images in {image_dir}")
    try:
        cams = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{npz_path}: not a readable .npz file ({e})") from None

    chosen = subsample(holdout_indices(len(files), split, holdout), max_frames, frame_stride)
    # NeuS maps meshes back to world units with scale_mat_0 (every view's is the same object normalisation)
    scale_mat_0 = _matrix(cams, "scale_mat_0", npz_path, default=np.eye(4))
    views = Views(downscale)
    for i in chosen:
        world = _matrix(cams, f"world_mat_{i}", npz_path)
        scale = _matrix(cams, f"scale_mat_{i}", npz_path, default=np.eye(4))
        K, c2w = decompose_projection((world @ scale)[:3, :4], f"{npz_path} world_mat_{i}")
        K[0, 2] += 0.5  # NeuS pixel centres at integers -> ngraphics' at i + 0.5
        K[1, 2] += 0.5
        views.add(files[i], f"image {i} of {root.name}", K, c2w,
                  mask_path=None if mask_files is None else mask_files[i])
    cameras, images, masks = views.load(cache, f"{root.name} {split}")
    dist = cameras.origins.norm(dim=-1)
    return SceneData(
        cameras=cameras, images=images, names=[files[i].stem for i in chosen],
        aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), near=max(float(dist.min()) - 1.0, 0.05),
        far=float(dist.max()) + 1.0, background=background, masks=masks,
        meta={"format": "neus", "source": str(root), "split": split, "downscale": downscale,
              "files": [str(files[i]) for i in chosen], "scale_mat": scale_mat_0},
    )
