"""instant-ngp `transforms.json` scenes (e.g. the fox), and the frame parser the Blender loader shares.

Format (NVlabs/instant-ngp `docs/nerf_dataset_tips.md`, `src/nerf_loader.cu`): a JSON object with camera keys
at the top level, overridable per frame, and `frames: [{file_path, transform_matrix}, ...]`.

- Focal length: `fl_x`/`fl_y` in pixels, or `camera_angle_x`/`camera_angle_y` in radians
  (f = 0.5 w / tan(angle / 2)), or `x_fov`/`y_fov` in degrees; one axis alone sets both.
- Principal point `cx`, `cy` in pixels, pixel centres at i + 0.5 (default w/2, h/2); `w`, `h` must match the
  image.
- Lens: `k1`, `k2`, `p1`, `p2` (and `k3`), OpenCV's model. Images are undistorted once at load (and cached).
- `transform_matrix`: camera-to-world, OpenGL camera axes (x right, y up, looking down -z).
- instant-ngp moves the poses into its unit cube (`NerfDataset::nerf_matrix_to_ngp`): flip the camera's y and
  z axes (OpenGL -> OpenCV), then p' = p * scale + offset for the camera position (`scale` default 0.33,
  `offset` default (0.5, 0.5, 0.5), or both derived from an `aabb` key so that box fits [0, 1]^3), then cycle
  the world axes (x, y, z) <- (y, z, x): new row 0 = old row 1, new row 1 = old row 2, new row 2 = old row 0.
  This loader applies exactly that, so positions match instant-ngp's and the scene of interest sits in
  [0, 1]^3.
- `time` (optional, per frame): the frame's timestamp in [0, 1] for dynamic scenes (D-NeRF's convention),
  stored as `Cameras.time`; either every frame has one or none does.
- `aabb_scale` (1, 2, 4, ..., 128) enlarges the box instant-ngp marches in: the cube of side aabb_scale
  centred at (0.5, 0.5, 0.5). `SceneData.aabb` is that cube; with `contract=True` it is [0, 1]^3 instead and
  `SceneData.contract` is True (for methods that contract space outside the box).

Listed frames whose image is missing (the fox lists 67 and ships 50) are skipped with one warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ngraphics.cameras import OPENGL_TO_OPENCV
from ngraphics.data.frames import (
    ImageJob,
    check_split,
    holdout_indices,
    load_images,
    make_cameras,
    number,
    parse_c2w,
    read_json,
    subsample,
    warn_missing,
)
from ngraphics.data.images import IMAGE_SUFFIXES, downscaled_size, image_size, to_tensor
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError

NERF_SCALE = 0.33  # instant-ngp's default `scale`
NERF_OFFSET = (0.5, 0.5, 0.5)  # instant-ngp's default `offset`
LENS_KEYS = ("k1", "k2", "p1", "p2", "k3")
UNSUPPORTED_LENS_KEYS = ("k4", "is_fisheye", "ftheta_p0", "latlong", "equirectangular")


@dataclass
class TransformsFrame:
    """One frame of a transforms JSON, resolved and checked.

    Attributes:
        path: image file. name: its stem.
        c2w_gl: camera-to-world as stored (OpenGL camera axes). (4, 4) float64
        K: intrinsics at the image's own resolution, ngraphics pixel convention. (3, 3) float64
        distortion: (k1, k2, p1, p2, k3). (5,) float64
        size: (width, height) of the image file.
        where: "frame j of <json name>", for errors about the image.
        time: the frame's timestamp in [0, 1] (dynamic scenes), or None.
    """

    path: Path
    name: str
    c2w_gl: np.ndarray
    K: np.ndarray
    distortion: np.ndarray
    size: tuple[int, int]
    where: str = ""
    time: float | None = None


def _resolve_image(base: Path, file_path: str) -> Path | None:
    path = base / file_path
    if path.is_file():
        return path
    if path.suffix.lower() not in IMAGE_SUFFIXES:  # Blender lists "./train/r_0" without ".png"
        for suffix in (".png", ".jpg", ".jpeg", ".exr"):
            candidate = path.with_name(path.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _focal(keys: dict, axis: str, resolution: int, where: str) -> float | None:
    fov = number(keys, f"{axis}_fov", where)
    if fov is not None:
        return 0.5 * resolution / math.tan(0.5 * math.radians(fov))
    fl = number(keys, f"fl_{axis}", where)
    if fl is not None:
        return fl
    angle = number(keys, f"camera_angle_{axis}", where)
    if angle is not None:
        return 0.5 * resolution / math.tan(0.5 * angle)
    return None


def frame_intrinsics(keys: dict, size: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) and distortion (5,) from merged top-level + per-frame keys, for an image of `size` (W, H)."""
    W, H = size
    w, h = number(keys, "w", where), number(keys, "h", where)
    if (w is not None and round(w) != W) or (h is not None and round(h) != H):
        raise DataError(f"{where}: image is {W}x{H} but the JSON says w={w}, h={h}")
    fx, fy = _focal(keys, "x", W, where), _focal(keys, "y", H, where)
    if fx is None and fy is None:
        raise DataError(f"{where}: no focal length (need fl_x, fl_y, camera_angle_x or camera_angle_y)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise DataError(f"{where}: focal length must be positive, got fx={fx}, fy={fy}")
    for key in UNSUPPORTED_LENS_KEYS:
        if keys.get(key):
            raise DataError(f"{where}: lens key {key} is not supported (only k1, k2, p1, p2, k3 distortion)")
    cx, cy = number(keys, "cx", where, W / 2), number(keys, "cy", where, H / 2)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    distortion = np.array([number(keys, k, where, 0.0) for k in LENS_KEYS])
    return K, distortion


def parse_transforms(json_path: Path, data: dict) -> tuple[list[TransformsFrame], list[str]]:
    """Checked frames of a transforms JSON, and the file_path of each listed frame whose image is missing."""
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise DataError(f"{json_path}: expected a 'frames' list, got {type(frames).__name__}")
    top = {k: v for k, v in data.items() if k != "frames"}
    for key in ("w", "h", "cx", "cy", "fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "x_fov", "y_fov",
                *LENS_KEYS):
        number(top, key, str(json_path))  # a bad top-level key names the file, not the first frame
    out, missing = [], []
    for j, frame in enumerate(frames):
        where = f"{json_path} frame {j}"
        if not isinstance(frame, dict):
            raise DataError(f"{where}: expected an object, got {type(frame).__name__}")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise DataError(f"{where}: missing key {key}")
        if not isinstance(frame["file_path"], str):
            raise DataError(f"{where}: file_path must be a string, got {frame['file_path']!r}")
        c2w = parse_c2w(frame["transform_matrix"], where)
        path = _resolve_image(json_path.parent, frame["file_path"])
        if path is None:
            missing.append(frame["file_path"])
            continue
        image_where = f"frame {j} of {json_path.name}"
        size = image_size(path, image_where)
        K, distortion = frame_intrinsics({**top, **frame}, size, f"{where} ({frame['file_path']})")
        time = number(frame, "time", where)
        if time is not None and not 0.0 <= time <= 1.0:
            raise DataError(f"{where}: time must be in [0, 1], got {time}")
        out.append(TransformsFrame(path, path.stem, c2w, K, distortion, size, image_where, time))
    return out, missing


def frame_times(frames: list[TransformsFrame], where: str) -> list[float] | None:
    """The frames' timestamps (for `make_cameras`), or None when no frame has one; some but not all is an
    error."""
    timed = [f.time is not None for f in frames]
    if not any(timed):
        return None
    if not all(timed):
        untimed = next(f for f in frames if f.time is None)
        raise DataError(f"{where}: {sum(timed)} of {len(frames)} frames have a time, but {untimed.where} has "
                        "none (give every frame a time, or none)")
    return [f.time for f in frames]


def ngp_c2w(c2w_gl: np.ndarray, scale: float, offset: np.ndarray) -> np.ndarray:
    """instant-ngp's `nerf_matrix_to_ngp` for a 4x4 OpenGL camera-to-world; returns OpenCV axes. (4, 4)"""
    m = c2w_gl @ OPENGL_TO_OPENCV.numpy().astype(np.float64)
    m[:3, 3] = m[:3, 3] * scale + offset
    m[:3, :] = m[[1, 2, 0], :]
    return m


def load_frames_images(frames: list[TransformsFrame], downscale: float, cache: bool, desc: str):
    """Decode + undistort + downscale the frames' images. Returns tensors and the output sizes."""
    sizes = [downscaled_size(*f.size, downscale) for f in frames]
    jobs = [
        ImageJob(f.path, f.where, size, tuple(f.K.ravel().tolist()), tuple(f.distortion.tolist()))
        for f, size in zip(frames, sizes)
    ]
    arrays, _ = load_images(jobs, cache=cache, desc=desc)
    kinds = {3: "RGB (or grey)", 4: "RGBA (or grey + alpha)"}
    for f, a in zip(frames[1:], arrays[1:]):
        if a.shape[2] != arrays[0].shape[2]:
            raise DataError(f"{f.path}: image is {kinds[a.shape[2]]} but {frames[0].path.name} is "
                            f"{kinds[arrays[0].shape[2]]}; a split's images must all have alpha or none")
    return [to_tensor(a) for a in arrays], sizes


def _scale_offset(data: dict, where: str) -> tuple[float, np.ndarray]:
    scale = number(data, "scale", where, NERF_SCALE)
    offset = np.array(NERF_OFFSET)
    if "offset" in data:
        value = data["offset"]
        try:
            offset = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()
        except (TypeError, ValueError):
            raise DataError(f"{where}: offset must be a number or 3 numbers, got {value!r}") from None
    if "aabb" in data:  # fit the given box into [0, 1]^3, as instant-ngp does
        try:
            box = np.asarray(data["aabb"], dtype=np.float64).reshape(2, 3)
        except (TypeError, ValueError):
            raise DataError(f"{where}: aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]]") from None
        scale = 1.0 / max(1e-6, float(np.abs(box[1] - box[0]).max()))
        offset = -0.5 * (box[0] + box[1]) * scale + 0.5
    if not np.all(np.isfinite(offset)) or scale <= 0:
        raise DataError(f"{where}: scale must be > 0 and offset finite, got scale={scale}, "
                        f"offset={offset.tolist()}")
    return scale, offset


def find_transforms(path: Path, split: str) -> tuple[Path, bool]:
    """The transforms JSON for `split` and whether it is split-specific (transforms_<split>.json)."""
    if path.is_file():
        return path, path.stem != "transforms"
    if split != "all" and (path / f"transforms_{split}.json").is_file():
        return path / f"transforms_{split}.json", True
    if (path / "transforms.json").is_file():
        return path / "transforms.json", False
    raise DataError(f"{path}: no transforms.json (or transforms_{split}.json) in this folder")


def load_instant_ngp(
    path: str | Path, split: str = "train", downscale: float = 1, background: str = "white",
    cache: bool = True, max_frames: int | None = None, frame_stride: int = 1, contract: bool = False,
    holdout: int = 8,
) -> SceneData:
    """Load an instant-ngp scene in instant-ngp's world frame (see the module docstring).

    Args:
        path: the scene folder (with transforms.json) or the JSON file itself.
        split: "train", "val", "test" or "all". Without transforms_<split>.json files, every `holdout`-th
            frame is "val"/"test" and the rest "train" (see `frames.holdout_indices`).
        downscale: shrink images by this factor (area filter); K is scaled to match.
        background: how RGBA images are composited in training ("white", "black", "random").
        cache: keep decoded/undistorted/downscaled images on disk (see `ngraphics.data.cache`).
        max_frames, frame_stride: keep frames[::frame_stride][:max_frames] of the split (for quick runs).
        contract: aabb [0, 1]^3 with `SceneData.contract=True` instead of the aabb_scale cube.
    Returns: SceneData with undistorted images, OpenCV cameras (with `time` when the frames have one), aabb,
        near=0.05, far past the aabb.
    """
    check_split(split, str(path))
    json_path, split_file = find_transforms(Path(path), split)
    data = read_json(json_path)
    frames, missing = parse_transforms(json_path, data)
    warn_missing(missing, len(frames) + len(missing), str(json_path))
    if not frames:
        raise DataError(f"{json_path}: none of its {len(missing)} frames has an image file")
    if not split_file:
        frames = [frames[i] for i in holdout_indices(len(frames), split, holdout)]
    frames = subsample(frames, max_frames, frame_stride)
    scale, offset = _scale_offset(data, str(json_path))
    aabb_scale = number(data, "aabb_scale", str(json_path), 1.0)
    aabb_scale = min(max(aabb_scale, 1.0), 128.0)
    half = 0.5 if contract else 0.5 * aabb_scale
    aabb = torch.tensor([[0.5 - half] * 3, [0.5 + half] * 3], dtype=torch.float32)

    images, sizes = load_frames_images(frames, downscale, cache, f"{json_path.parent.name} {split}")
    c2w = [ngp_c2w(f.c2w_gl, scale, offset) for f in frames]
    cameras = make_cameras(c2w, [f.K for f in frames], [f.size for f in frames], sizes,
                           frame_times(frames, str(json_path)))
    corners = torch.cartesian_prod(*[aabb[:, i] for i in range(3)])
    far = float(torch.cdist(cameras.origins, corners).max()) + 1e-3
    return SceneData(
        cameras=cameras, images=images, names=[f.name for f in frames], aabb=aabb, near=0.05, far=far,
        background=background, contract=contract,
        meta={"format": "instant-ngp", "source": str(json_path), "split": split, "downscale": downscale,
              "files": [str(f.path) for f in frames], "scale": scale, "offset": offset.tolist(),
              "aabb_scale": aabb_scale, "skipped_missing": len(missing)},
    )
