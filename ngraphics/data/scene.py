"""`SceneData`: one split of a multi-view dataset, as every loader returns it and every method consumes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import DataError

Background = Literal["white", "black", "random"]
BACKGROUND_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}  # the constant backgrounds, RGB


@dataclass
class SceneData:
    """Images and cameras of one split, already undistorted, scaled and in the OpenCV convention.

    Attributes:
        cameras: C cameras; `cameras.time` holds the per-camera timestamps of dynamic scenes (see `times`).
        images: per camera an (H_i, W_i, 3) RGB or (H_i, W_i, 4) RGBA image, float32 in [0, 1], on CPU, with
            (H_i, W_i) = (cameras.height[i], cameras.width[i]). RGBA images keep straight (unpremultiplied)
            alpha; `rgb_on(background)` composites them.
        names: image file stems, for logs and output file names. (C,)
        aabb: axis-aligned box the scene lives in, world units. (2, 3) float32: min row, max row.
        near, far: ray range for methods that need one, world units.
        masks: optional per-camera foreground masks (1 = object, 0 = background; NeuS/DTU `mask/`, the
            procedural scene), one (H_i, W_i) float32 in [0, 1] per camera.
        depths: optional per-camera z-depth along the camera axis, (H_i, W_i) float32, world units, 0 = none.
        background: how RGBA images should be composited when trained on ("random" = a new colour per ray).
        contract: True for unbounded scenes whose space outside `aabb` should be contracted (e.g. the fox).
        surface: optional ground-truth surface (vertices (V, 3) float32, faces (F, 3) int64) for Chamfer.
        points: optional seed points (COLMAP's sparse points3D), in the cameras' world frame. (P, 3) float32
        point_colors: the seed points' colours (only with `points`). (P, 3) float32 in [0, 1]
        meta: loader-specific extras (format, source, files, ...).

    Shapes are checked at construction: a mismatch is a one-line DataError naming the field.
    """

    cameras: Cameras
    images: list[torch.Tensor]
    names: list[str]
    aabb: torch.Tensor
    near: float = 0.05
    far: float = 1e3
    masks: list[torch.Tensor] | None = None
    depths: list[torch.Tensor] | None = None
    background: Background = "white"
    contract: bool = False
    surface: tuple[torch.Tensor, torch.Tensor] | None = None
    points: torch.Tensor | None = None
    point_colors: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        C = len(self.cameras)
        if len(self.images) != C or len(self.names) != C:
            raise DataError(f"SceneData: {C} cameras but {len(self.images)} images and {len(self.names)} names")
        for i, image in enumerate(self.images):
            hw = (int(self.cameras.height[i]), int(self.cameras.width[i]))
            if image.ndim != 3 or tuple(image.shape[:2]) != hw or image.shape[2] not in (3, 4):
                raise DataError(f"SceneData.images[{i}]: expected (H, W, 3|4) with (H, W) = {hw} from "
                                f"cameras[{i}], got {tuple(image.shape)}")
        if len({image.shape[2] for image in self.images}) > 1:
            raise DataError("SceneData.images: mixes RGB and RGBA images")
        for name in ("masks", "depths"):
            per_view = getattr(self, name)
            if per_view is None:
                continue
            if len(per_view) != C:
                raise DataError(f"SceneData.{name}: {len(per_view)} for {C} cameras")
            for i, (x, image) in enumerate(zip(per_view, self.images)):
                if tuple(x.shape) != tuple(image.shape[:2]):
                    raise DataError(f"SceneData.{name}[{i}]: expected {tuple(image.shape[:2])} like images[{i}], "
                                    f"got {tuple(x.shape)}")
        if self.background not in ("white", "black", "random"):
            raise DataError(f"SceneData.background: expected white, black or random, got {self.background!r}")
        if self.aabb.shape != (2, 3):
            raise DataError(f"SceneData.aabb: expected (2, 3), got {tuple(self.aabb.shape)}")
        if self.points is not None and (self.points.ndim != 2 or self.points.shape[1] != 3):
            raise DataError(f"SceneData.points: expected (P, 3), got {tuple(self.points.shape)}")
        if self.point_colors is not None:
            expected = (len(self.points), 3) if self.points is not None else None
            if tuple(self.point_colors.shape) != expected:
                raise DataError(f"SceneData.point_colors: expected {expected or 'points (P, 3) beside them'}, "
                                f"got {tuple(self.point_colors.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_alpha(self) -> bool:
        return self.images[0].shape[-1] == 4

    @property
    def times(self) -> torch.Tensor | None:
        """Per-camera timestamps of a dynamic scene (`cameras.time`), or None. (C,) float32 in [0, 1]"""
        return self.cameras.time

    def rgb_on(self, i: int, color: tuple[float, float, float] | torch.Tensor) -> torch.Tensor:
        """Image i composited over a constant background colour. (H, W, 3) float32."""
        image = self.images[i]
        if image.shape[-1] == 3:
            return image
        color = torch.as_tensor(color, dtype=image.dtype)
        alpha = image[..., 3:]
        return image[..., :3] * alpha + color * (1 - alpha)
