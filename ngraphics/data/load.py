"""`load_dataset`: one entry point for every multi-view format; it recognises the format from the files.

    from ngraphics.data import load_dataset
    train = load_dataset("data/nerf_synthetic/lego", "train", downscale=2, background="white")
    test = load_dataset("data/nerf_synthetic/lego", "test", downscale=2)
    demo = load_dataset(None)                    # the built-in procedural scene, no files needed

Detection, in order (a folder, or a file inside it):
    None / "procedural"                -> procedural.load_procedural
    transforms_<split>.json in folder  -> blender.load_blender (NeRF-synthetic)
    transforms.json (or a *.json path) -> instant_ngp.load_instant_ngp
    cameras_sphere.npz                 -> neus.load_neus (NeuS / DTU)
    cameras.bin|txt in ., sparse/0, sparse -> colmap.load_colmap
    a mesh file (.obj .ply .stl .glb .off) -> mesh_scene.load_mesh_scene (rendered views, true surface)
"""

from __future__ import annotations

from pathlib import Path

from ngraphics.data.blender import is_blender, load_blender
from ngraphics.data.colmap import find_model_dir, load_colmap
from ngraphics.data.frames import check_split
from ngraphics.data.instant_ngp import load_instant_ngp
from ngraphics.data.mesh_scene import MESH_SUFFIXES, load_mesh_scene
from ngraphics.data.neus import is_neus, load_neus
from ngraphics.data.procedural import load_procedural
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError, choice_message

FORMATS = ("procedural", "blender", "instant-ngp", "neus", "colmap", "mesh")
BACKGROUNDS = ("white", "black", "random")


def detect_format(path: str | Path | None) -> str:
    """The format name (one of FORMATS) of a dataset path; DataError saying what was looked for if none."""
    if path is None or str(path) == "procedural":
        return "procedural"
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset path not found")
    if path.is_file():
        if path.suffix.lower() == ".json":
            split_file = path.stem.startswith("transforms_") and is_blender(path.parent)
            return "blender" if split_file else "instant-ngp"
        if path.suffix.lower() in MESH_SUFFIXES:
            return "mesh"
        if path.name == "cameras_sphere.npz":
            return "neus"
        if path.stem in ("cameras", "images", "points3D") and path.suffix in (".bin", ".txt"):
            return "colmap"
        raise DataError(f"{path}: not a dataset file (expected transforms*.json, cameras_sphere.npz or a "
                        "COLMAP model)")
    if is_blender(path):
        return "blender"
    if (path / "transforms.json").is_file():
        return "instant-ngp"
    if is_neus(path):
        return "neus"
    if find_model_dir(path) is not None:
        return "colmap"
    raise DataError(
        f"{path}: unknown dataset layout (looked for transforms_train.json, transforms.json, "
        "cameras_sphere.npz, and cameras.bin/.txt in ., sparse/0, sparse)"
    )


def load_dataset(
    path: str | Path | None = None, split: str = "train", downscale: float = 1, background: str = "white",
    cache: bool = True, *, max_frames: int | None = None, frame_stride: int = 1, contract: bool | None = None,
    holdout: int = 8, **procedural,
) -> SceneData:
    """Load one split of a multi-view dataset as `SceneData` (cameras in the OpenCV convention, images
    undistorted and on the CPU), whatever its format.

    Args:
        path: dataset folder (or a file in it); None or "procedural" for the built-in scene.
        split: "train", "val", "test" or "all". Formats without split files hold out every `holdout`-th frame
            (sorted) for "val"/"test" (the same frames) and give "train" the rest.
        downscale: shrink images by this factor (>= 1, area filter); intrinsics are scaled to match.
        background: "white", "black" or "random": what RGBA images are composited on when trained.
            Images keep their alpha; see SceneData.rgb_on.
        cache: reuse decoded images from the on-disk cache (`NGRAPHICS_CACHE`, default ~/.cache/ngraphics).
        max_frames, frame_stride: keep frames[::frame_stride][:max_frames] of the split (quick runs, tests).
        contract: instant-ngp: True gives aabb [0, 1]^3 with contraction outside it; COLMAP: recorded as is.
            None picks the format's default (False).
        holdout: see `split`.
        **procedural: options of `procedural.load_procedural` (resolution, n_views, seed, dynamic, ...).
    Returns: SceneData.
    Raises: DataError (one line naming the file and frame) for missing/malformed files.

    Example: `load_dataset(None, "test").images[0].shape == (80, 80, 4)`.
    """
    fmt = detect_format(path)
    check_split(split, str(path))
    if background not in BACKGROUNDS:
        raise DataError(choice_message("background", background, BACKGROUNDS))
    if not (isinstance(downscale, (int, float)) and downscale >= 1):
        raise DataError(f"downscale must be a number >= 1, got {downscale!r}")
    if procedural and fmt not in ("procedural", "mesh"):
        raise DataError(f"{path}: options {sorted(procedural)} only apply to the procedural scene and meshes")
    common = {"split": split, "background": background, "max_frames": max_frames,
              "frame_stride": frame_stride}
    if fmt == "procedural":
        if downscale != 1 and "resolution" not in procedural:
            procedural["resolution"] = max(4, round(80 / downscale))
        return load_procedural(**common, **procedural)
    path = Path(path)
    if fmt == "mesh":
        return load_mesh_scene(path, **common, **procedural)
    common.update(downscale=downscale, cache=cache)
    if fmt == "blender":
        return load_blender(path.parent if path.is_file() else path, **common)
    if fmt == "instant-ngp":
        return load_instant_ngp(path, **common, contract=bool(contract), holdout=holdout)
    if fmt == "neus":
        return load_neus(path.parent if path.is_file() else path, **common, holdout=holdout)
    return load_colmap(path.parent if path.is_file() else path, **common, holdout=holdout,
                       contract=bool(contract))
