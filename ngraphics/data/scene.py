"""`SceneData`: one split of a multi-view dataset, as every loader returns it and every method consumes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ngraphics.cameras import Cameras

Background = Literal["white", "black", "random"]


@dataclass
class SceneData:
    """Images and cameras of one split, already undistorted, scaled and in the OpenCV convention.

    Attributes:
        cameras: C cameras.
        images: per camera an (H_i, W_i, 3) RGB or (H_i, W_i, 4) RGBA image, float32 in [0, 1], on CPU.
            RGBA images keep straight (unpremultiplied) alpha; `rgb_on(background)` composites them.
        names: image file stems, for logs and output file names. (C,)
        aabb: axis-aligned box the scene lives in, world units. (2, 3) float32: min row, max row.
        near, far: ray range for methods that need one, world units.
        masks: optional per-camera foreground masks, (H_i, W_i) float32 in [0, 1].
        depths: optional per-camera z-depth along the camera axis, (H_i, W_i) float32, world units, 0 = none.
        background: how RGBA images should be composited when trained on ("random" = a new colour per ray).
        contract: True for unbounded scenes whose space outside `aabb` should be contracted (e.g. the fox).
        surface: optional ground-truth surface (vertices (V, 3) float32, faces (F, 3) int64) for Chamfer.
        time: optional per-camera timestamps in [0, 1] for dynamic scenes. (C,) float32
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
    time: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_alpha(self) -> bool:
        return self.images[0].shape[-1] == 4

    def rgb_on(self, i: int, color: tuple[float, float, float] | torch.Tensor) -> torch.Tensor:
        """Image i composited over a constant background colour. (H, W, 3) float32."""
        image = self.images[i]
        if image.shape[-1] == 3:
            return image
        color = torch.as_tensor(color, dtype=image.dtype)
        alpha = image[..., 3:]
        return image[..., :3] * alpha + color * (1 - alpha)
