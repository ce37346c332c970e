"""COLMAP sparse models (`cameras`, `images`, `points3D`, text or binary) and scenes built on them.

Formats (colmap.github.io/format.html, COLMAP `src/colmap/scene/reconstruction_io.cc`), little-endian binary:

    cameras.bin   u64 n; n x [i32 camera_id, i32 model_id, u64 width, u64 height, f64 params[k(model)]]
    images.bin    u64 n; n x [i32 image_id, f64 qw qx qy qz, f64 tx ty tz, i32 camera_id, name\\0,
                              u64 m, m x [f64 x, f64 y, i64 point3D_id]]
    points3D.bin  u64 n; n x [u64 point3D_id, f64 x y z, u8 r g b, f64 error, u64 t,
                              t x [i32 image_id, i32 idx]]

The text files hold the same fields, one camera or point per line, two lines per image (the second, the 2D
points, may be empty). (q, t) map world to camera: x_cam = R(q) x_world + t, OpenCV camera axes, pixel centres
at i + 0.5 (COLMAP's convention is ngraphics'), so c2w = [R^T | -R^T t] needs no axis change.

Supported camera models: SIMPLE_PINHOLE (f, cx, cy), PINHOLE (fx, fy, cx, cy), SIMPLE_RADIAL (f, cx, cy, k),
RADIAL (f, cx, cy, k1, k2), OPENCV (fx, fy, cx, cy, k1, k2, p1, p2). Distorted images are undistorted once at
load (same K), so the returned cameras are pinholes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngraphics.data.frames import Views, check_split, holdout_indices, subsample, warn_missing
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError

# model id -> (name, number of params); COLMAP's `CAMERA_MODEL_DEFINITIONS`.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_PARAMS = {name: n for name, n in CAMERA_MODELS.values()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # (k,) float64


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) float64 (w, x, y, z), world -> camera rotation
    tvec: np.ndarray  # (3,) float64, world -> camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (M, 2) float64, observed 2D points
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (M,) int64, -1 = none


@dataclass
class ColmapModel:
    """A parsed sparse model. points: xyz (N, 3) float64, rgb (N, 3) uint8, error (N,) float64, ids (N,)
    int64."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    point_ids: np.ndarray


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (3, 3); normalises q first."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def image_c2w(image: ColmapImage) -> np.ndarray:
    """Camera-to-world (4, 4) float64 of a COLMAP image (OpenCV axes)."""
    R = qvec_to_rotmat(image.qvec)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ image.tvec
    return c2w


def camera_to_opencv(camera: ColmapCamera, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) and OpenCV distortion (k1, k2, p1, p2, k3) (5,) of a supported COLMAP camera."""
    p, m = camera.params, camera.model
    if m not in SUPPORTED_MODELS:
        raise DataError(
            f"{where}camera {camera.id}: model {m} is not supported (supported: "
            f"{', '.join(SUPPORTED_MODELS)}); run colmap image_undistorter to get PINHOLE cameras"
        )
    dist = np.zeros(5)
    if m in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist[: len(p) - 3] = p[3:]  # SIMPLE_RADIAL: k1; RADIAL: k1, k2
    else:  # PINHOLE, OPENCV
        fx, fy, cx, cy = p[:4]
        dist[: len(p) - 4] = p[4:]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), dist


class _Reader:
    """Little-endian struct reader over a bytes buffer; running past the end is a DataError."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DataError(f"{self.path}: file is truncated (needed {size} bytes at byte {self.pos})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.data):
            raise DataError(f"{self.path}: file is truncated (needed {size} bytes at byte {self.pos})")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DataError(f"{self.path}: file is truncated (unterminated image name at byte {self.pos})")
        out = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return out


def _model_name(model_id: int, path: Path) -> tuple[str, int]:
    if model_id not in CAMERA_MODELS:
        raise DataError(f"{path}: unknown camera model id {model_id}")
    return CAMERA_MODELS[model_id]


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    r, cameras = _Reader(path), {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, width, height = r.read("iiQQ")
        name, n = _model_name(model_id, path)
        cameras[cam_id] = ColmapCamera(cam_id, name, width, height, np.array(r.read("d" * n)))
    return cameras


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    r, images = _Reader(path), {}
    point_dtype = np.dtype([("xy", "<f8", 2), ("id", "<i8")])
    for _ in range(r.read("Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("idddddddi")
        name = r.string()
        pts = r.array(point_dtype, r.read("Q")[0])
        images[image_id] = ColmapImage(
            image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cam_id, name,
            pts["xy"].copy(), pts["id"].astype(np.int64),
        )
    return images


def read_points3D_binary(path: Path) -> tuple[np.ndarray, ...]:
    r = _Reader(path)
    n = r.read("Q")[0]
    ids, xyz, rgb, err = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3), np.uint8), np.zeros(n)
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e, track_len = r.read("QdddBBBdQ")
        ids[i], xyz[i], rgb[i], err[i] = pid, (x, y, z), (cr, cg, cb), e
        r.array(np.int32, 2 * track_len)
    return xyz, rgb, err, ids


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a COLMAP text file (not UTF-8)") from None


def _parse(values: list[str], types: tuple, path: Path, line_no: int) -> list:
    try:
        return [t(v) for t, v in zip(types, values, strict=True)]
    except ValueError:
        raise DataError(f"{path} line {line_no}: cannot parse {' '.join(values)!r}") from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for no, line in enumerate(_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4 or parts[1] not in MODEL_PARAMS:
            raise DataError(f"{path} line {no}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', "
                            f"got {line!r}")
        n = MODEL_PARAMS[parts[1]]
        cam_id, width, height = _parse([parts[0], parts[2], parts[3]], (int, int, int), path, no)
        params = _parse(parts[4:], (float,) * len(parts[4:]), path, no)
        if len(params) != n:
            raise DataError(f"{path} line {no}: {parts[1]} needs {n} parameters, got {len(params)}")
        cameras[cam_id] = ColmapCamera(cam_id, parts[1], width, height, np.array(params))
    return cameras


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    lines, images, i = _text_lines(path), {}, 0
    while i < len(lines):
        line, no = lines[i].strip(), i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=9)
        if len(parts) != 10:
            raise DataError(f"{path} line {no}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        vals = _parse(parts[:9], (int,) + (float,) * 7 + (int,), path, no)
        points = lines[i].split() if i < len(lines) else []  # the 2D points line follows, possibly empty
        i += 1
        if len(points) % 3:
            raise DataError(f"{path} line {no + 1}: POINTS2D must be triples (X Y POINT3D_ID)")
        pts = np.array(_parse(points, (float,) * len(points), path, no + 1)).reshape(-1, 3)
        images[vals[0]] = ColmapImage(
            vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], parts[9], pts[:, :2],
            pts[:, 2].astype(np.int64)
        )
    return images


def read_points3D_text(path: Path) -> tuple[np.ndarray, ...]:
    rows = []
    for no, line in enumerate(_text_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 8:
            raise DataError(f"{path} line {no}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK...'")
        rows.append(_parse(parts[:8], (int, float, float, float, int, int, int, float), path, no))
    if not rows:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64)
    ids = np.array([r[0] for r in rows], np.int64)
    xyz = np.array([r[1:4] for r in rows], np.float64)
    rgb = np.array([r[4:7] for r in rows], np.uint8)
    err = np.array([r[7] for r in rows], np.float64)
    return xyz, rgb, err, ids


def find_model_dir(path: Path) -> Path | None:
    """The folder holding cameras.{bin,txt}: path itself, path/sparse/0 or path/sparse."""
    for d in (path, path / "sparse" / "0", path / "sparse"):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def read_model(folder: str | Path) -> ColmapModel:
    """Parse a sparse model folder, binary (.bin) preferred over text (.txt) when both exist."""
    folder = Path(folder)
    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    for name in ("cameras", "images", "points3D"):
        if not (folder / f"{name}{ext}").is_file():
            raise DataError(f"{folder / (name + ext)}: file not found (a COLMAP model needs cameras, images, "
                            "points3D)")
    if ext == ".bin":
        cameras = read_cameras_binary(folder / "cameras.bin")
        images = read_images_binary(folder / "images.bin")
        xyz, rgb, err, ids = read_points3D_binary(folder / "points3D.bin")
    else:
        cameras = read_cameras_text(folder / "cameras.txt")
        images = read_images_text(folder / "images.txt")
        xyz, rgb, err, ids = read_points3D_text(folder / "points3D.txt")
    for im in images.values():
        if im.camera_id not in cameras:
            raise DataError(f"{folder / ('images' + ext)}: image {im.name} uses camera {im.camera_id}, "
                            f"not in cameras{ext}")
        finite = np.all(np.isfinite(im.qvec)) and np.all(np.isfinite(im.tvec))
        if not finite or np.linalg.norm(im.qvec) < 1e-8:
            raise DataError(f"{folder / ('images' + ext)}: image {im.name} has a NaN/inf or zero pose")
    return ColmapModel(cameras, images, xyz, rgb, err, ids)


def scene_bounds(xyz: np.ndarray, c2w: np.ndarray, percentile: float = 2.0, margin: float = 0.1):
    """Robust bounds from sparse points: the [p, 100 - p] percentile box grown by `margin` of its size on
    each side, and near/far from the points' depths in the cameras (1st/99th percentile, x0.5 / x2).

    Args: xyz (N, 3) points; c2w (C, 4, 4) cameras. Returns: aabb (2, 3), near, far.
    """
    if len(xyz) < 4:  # no usable points: a box around the cameras
        centres = c2w[:, :3, 3]
        lo, hi = centres.min(0), centres.max(0)
        pad = max(float((hi - lo).max()), 1.0)
        return np.stack([lo - pad, hi + pad]), 0.05, 1e3
    lo, hi = np.percentile(xyz, percentile, axis=0), np.percentile(xyz, 100 - percentile, axis=0)
    pad = margin * (hi - lo)
    w2c = np.linalg.inv(c2w)
    depth = np.einsum("cij,nj->cni", w2c[:, :3, :3], xyz)[..., 2] + w2c[:, None, :3, 3][..., 2]
    depth = depth[depth > 0]
    near = max(0.5 * float(np.percentile(depth, 1)), 1e-3) if depth.size else 0.05
    far = 2.0 * float(np.percentile(depth, 99)) if depth.size else 1e3
    return np.stack([lo - pad, hi + pad]), near, far


def load_colmap(
    path: str | Path, split: str = "train", downscale: float = 1, background: str = "white",
    cache: bool = True, max_frames: int | None = None, frame_stride: int = 1, holdout: int = 8,
    images_dir: str | Path | None = None, contract: bool = False,
) -> SceneData:
    """Load a COLMAP scene: images sorted by name, undistorted, split by holdout, bounds from the points.

    Args:
        path: scene folder (with images/ and sparse/0/ or sparse/), or the model folder itself.
        split: "train", "val", "test" or "all"; every `holdout`-th image (sorted by name) is "val"/"test".
        downscale, background, cache, max_frames, frame_stride: as for `load_dataset`.
        images_dir: image folder (default: <scene>/images, searched up to two levels above the model).
        contract: recorded in SceneData.contract (for unbounded captures).
    Returns: SceneData in COLMAP's world frame (the cameras are not moved), with the sparse points3D as
    `points` (P, 3) float32 and `point_colors` (P, 3) float32 in [0, 1] (their RGB / 255).
    """
    path = Path(path)
    check_split(split, str(path))
    model_dir = find_model_dir(path)
    if model_dir is None:
        raise DataError(f"{path}: no COLMAP model (cameras.bin/.txt in it, in sparse/0 or in sparse)")
    model = read_model(model_dir)
    if images_dir is None:
        candidates = [d / "images" for d in (path, model_dir, model_dir.parent, model_dir.parent.parent)]
        images_dir = next((d for d in candidates if d.is_dir()), candidates[0])
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found (pass images_dir=...)")

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    present = [im for im in ordered if (images_dir / im.name).is_file()]
    warn_missing([im.name for im in ordered if im not in present], len(ordered), str(model_dir))
    if not present:
        raise DataError(f"{images_dir}: none of the {len(ordered)} images of {model_dir} exists")
    chosen = subsample([present[i] for i in holdout_indices(len(present), split, holdout)], max_frames,
                       frame_stride)

    views = Views(downscale)
    for im in chosen:
        cam, where = model.cameras[im.camera_id], f"image {im.id} of {model_dir}"
        K, dist = camera_to_opencv(cam, f"{model_dir}: ")
        size = views.add(images_dir / im.name, where, K, image_c2w(im), distortion=dist)
        if size != (cam.width, cam.height):
            raise DataError(f"{images_dir / im.name}: image is {size[0]}x{size[1]} but camera {cam.id} is "
                            f"{cam.width}x{cam.height}")
    cameras, images, _ = views.load(cache, f"{path.name} {split}")
    aabb, near, far = scene_bounds(model.xyz, np.stack([image_c2w(im) for im in present]))
    return SceneData(
        cameras=cameras, images=images, names=[Path(im.name).stem for im in chosen],
        aabb=torch.tensor(aabb, dtype=torch.float32), near=near, far=far, background=background,
        contract=contract, points=torch.tensor(model.xyz, dtype=torch.float32),
        point_colors=torch.tensor(model.rgb, dtype=torch.float32) / 255.0,
        meta={"format": "colmap", "source": str(model_dir), "split": split, "downscale": downscale,
              "files": [str(images_dir / im.name) for im in chosen]},
    )
