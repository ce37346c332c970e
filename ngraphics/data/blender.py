"""Blender / NeRF-synthetic scenes: `transforms_{train,val,test}.json` + RGBA PNGs (Mildenhall et al. 2020).

Each JSON holds `camera_angle_x` (horizontal field of view, radians; f = 0.5 W / tan(angle / 2), square
pixels, principal point at the image centre) and `frames: [{file_path: "./train/r_0", transform_matrix}]`,
with camera-to-world matrices in OpenGL camera axes; the loader converts them once to OpenCV axes (c2w @
OPENGL_TO_OPENCV). World units are Blender's: the objects sit inside [-1.5, 1.5]^3 and the cameras on a sphere
of radius ~4, so aabb = [-1.5, 1.5]^3, near = 2, far = 6 (NeRF's values).

Images keep their alpha channel (straight alpha); `background` tells the trainer what to composite them on.
Dynamic scenes in this layout (D-NeRF) give each frame a `time` in [0, 1]; it becomes `Cameras.time`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ngraphics.cameras import OPENGL_TO_OPENCV
from ngraphics.data.frames import check_split, make_cameras, read_json, subsample, warn_missing
from ngraphics.data.instant_ngp import frame_times, load_frames_images, parse_transforms
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError

BLENDER_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


def is_blender(path: Path) -> bool:
    return path.is_dir() and any((path / f"transforms_{s}.json").is_file() for s in ("train", "val", "test"))


def load_blender(
    root: str | Path, split: str = "train", downscale: float = 1, background: str = "white",
    cache: bool = True, max_frames: int | None = None, frame_stride: int = 1,
) -> SceneData:
    """Load one split of a NeRF-synthetic scene.

    Args:
        root: folder holding transforms_<split>.json (e.g. nerf_synthetic/lego).
        split: "train", "val", "test", or "all" (the three concatenated).
        downscale: shrink images by this factor (area filter, premultiplied alpha); K is scaled to match.
        background: "white", "black" or "random": recorded in SceneData.background; images stay RGBA.
        cache: keep decoded/downscaled images on disk (see `ngraphics.data.cache`).
        max_frames, frame_stride: keep frames[::frame_stride][:max_frames] (for quick runs and tests).
    Returns: SceneData with RGBA images (H, W, 4) float32, OpenCV cameras (with per-frame `time` when the
        frames have one, as D-NeRF's do), aabb [-1.5, 1.5]^3.
    """
    root = Path(root)
    check_split(split, str(root))
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    frames = []
    for s in ("train", "val", "test") if split == "all" else (split,):
        json_path = root / f"transforms_{s}.json"
        if not json_path.is_file():
            raise DataError(f"{json_path}: file not found (a Blender scene needs transforms_{s}.json)")
        data = read_json(json_path)
        if "camera_angle_x" not in data and "fl_x" not in data:
            raise DataError(f"{json_path}: missing key camera_angle_x")
        split_frames, missing = parse_transforms(json_path, data)
        warn_missing(missing, len(split_frames) + len(missing), str(json_path))
        if not split_frames:
            raise DataError(f"{json_path}: none of its {len(missing)} frames has an image file")
        frames += split_frames
    frames = subsample(frames, max_frames, frame_stride)
    for f in frames[1:]:  # one camera_angle_x per split: images of another size would get wrong intrinsics
        if f.size != frames[0].size:
            raise DataError(f"{f.path}: image is {f.size[0]}x{f.size[1]} but {frames[0].path.name} is "
                            f"{frames[0].size[0]}x{frames[0].size[1]} (a Blender split has one camera, one size)")

    images, sizes = load_frames_images(frames, downscale, cache, f"{root.name} {split}")
    gl_to_cv = OPENGL_TO_OPENCV.numpy().astype("float64")
    cameras = make_cameras([f.c2w_gl @ gl_to_cv for f in frames], [f.K for f in frames],
                           [f.size for f in frames], sizes, frame_times(frames, str(root)))
    return SceneData(
        cameras=cameras, images=images, names=[f.name for f in frames],
        aabb=torch.tensor(BLENDER_AABB, dtype=torch.float32), near=2.0, far=6.0, background=background,
        meta={"format": "blender", "source": str(root), "split": split, "downscale": downscale,
              "files": [str(f.path) for f in frames]},
    )
