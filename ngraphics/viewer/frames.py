"""What the viewer computes without a browser: cameras from viser's camera state, display images from render
outputs, the crop box, the render budget and the frame sizes. Pure functions and small classes, tested in
tests/test_viewer.py; `ngraphics.viewer.server` wires them to viser.

Conventions: viser's Python API uses OpenCV camera axes (x right, y down, z forward), like `Cameras`; its
`fov` is the vertical field of view in radians; `wxyz` is the camera-to-world rotation as a unit quaternion.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError


def pinhole(wxyz, position, fov_y: float, width: int, height: int, time_value: float | None = None) -> Cameras:
    """One undistorted camera from a viewer pose: square pixels, principal point at the image centre.

    Args:
        wxyz: camera-to-world rotation (OpenCV axes), unit quaternion. (4,)
        position: camera centre, world units. (3,)
        fov_y: vertical field of view, radians, in (0, pi).
        width, height: image size, pixels, >= 1.
        time_value: the scene time in [0, 1] for dynamic scenes; None for static ones.
    Returns: Cameras with C = 1.
    """
    if not (0 < fov_y < math.pi) or width < 1 or height < 1:
        raise ConfigError(f"viewer camera: need 0 < fov < pi and a size >= 1, got {fov_y}, {width}x{height}")
    from viser.transforms import SO3

    c2w = torch.eye(4, dtype=torch.float32)
    c2w[:3, :3] = torch.from_numpy(SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()).float()
    c2w[:3, 3] = torch.as_tensor(np.asarray(position, dtype=np.float32))
    f = 0.5 * height / math.tan(0.5 * fov_y)
    K = torch.tensor([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])
    t = None if time_value is None else torch.tensor([float(time_value)], dtype=torch.float32)
    return Cameras(c2w[None], K[None], torch.tensor([width]), torch.tensor([height]), time=t)


def camera_pose(cameras: Cameras, i: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Camera i of a dataset as viser wants it: (wxyz (4,), position (3,), vertical fov in radians, width /
    height). The intrinsics' skew and off-centre principal point are not representable and are dropped."""
    from viser.transforms import SO3

    c2w = cameras.c2w[i].double().cpu().numpy()
    fy = float(cameras.K[i, 1, 1])
    height, width = int(cameras.height[i]), int(cameras.width[i])
    return SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3].copy(), 2 * math.atan(0.5 * height / fy), width / height


def frame_size(canvas_width: int, canvas_height: int, max_side: int, pixels: float | None = None) -> tuple[int, int]:
    """Render size (width, height) for a browser canvas: the canvas's aspect, the longer side at most
    `max_side`, and at most `pixels` pixels when given (the reduced size while the camera moves); each side
    >= 8 (a tiny frame of a moving camera is still a picture)."""
    w, h = max(int(canvas_width), 1), max(int(canvas_height), 1)
    scale = min(1.0, max_side / max(w, h))
    if pixels is not None:
        scale = min(scale, math.sqrt(max(pixels, 1.0) / (w * h)))
    return max(8, round(w * scale)), max(8, round(h * scale))


def crop_mask(cameras: Cameras, depth: torch.Tensor, alpha: torch.Tensor | None, box: torch.Tensor) -> torch.Tensor:
    """Pixels whose rendered surface point lies inside an axis-aligned box: point = origin + depth x (unit ray
    direction through the pixel centre), the expected ray distance that `render` returns as `depth`.

    A crop of the picture, not of the volume: what the box cuts away becomes background, and what lay behind
    it is not revealed (the protocol's `render` takes no crop). Pixels with alpha < 0.01 count as outside.
    Args:
        cameras: the one camera rendered (C = 1).
        depth: (H, W, 1) float32, world units along the ray. alpha: (H, W, 1) or None.
        box: (2, 3) float32, min row and max row, world units.
    Returns: (H, W, 1) bool on depth's device.
    """
    H, W = depth.shape[:2]
    origins, directions = cameras.to(depth.device).image_rays(0)
    points = origins + directions * depth.reshape(-1, 1)
    box = box.to(depth.device)
    inside = ((points >= box[0]) & (points <= box[1])).all(-1).reshape(H, W, 1)
    if alpha is not None:
        inside &= alpha > 0.01
    return inside


def turbo(x: np.ndarray) -> np.ndarray:
    """OpenCV's turbo colour map of values in [0, 1]. (H, W) float -> (H, W, 3) uint8 RGB."""
    import cv2

    grey = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)[..., ::-1].copy()


def depth_range(image: torch.Tensor, coverage: torch.Tensor | None = None) -> tuple[float, float]:
    """The 1st and 99th percentiles of a one-channel image (H, W, 1) where `coverage` (H, W, 1) > 0.5 (all
    pixels if none are): the range `display_image` maps through its colour map."""
    x = image.detach().float().cpu()[..., 0]
    valid = x[coverage[..., 0].cpu() > 0.5] if coverage is not None else x.reshape(-1)
    if valid.numel() == 0:
        valid = x.reshape(-1)
    lo, hi = torch.quantile(valid.double(), torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
    return lo, hi


def display_image(image: torch.Tensor, coverage: torch.Tensor | None = None) -> np.ndarray:
    """One render output as an 8-bit RGB picture, whatever its key.

    - 3 channels: values in [0, 1] are shown as they are; anything with negative values (normals in
      [-1, 1]) as (x + 1) / 2.
    - 1 channel: values all in [0, 1] (alpha, masks) as grey levels; other values (depth) through the turbo
      colour map, stretched over their 1st..99th percentile where `coverage` > 0.5 (all pixels if none),
      and darkened by `coverage` (black where nothing was hit).
    image: (H, W, k) float32, k in {1, 3} (other k show their first channel). coverage: (H, W, 1) or None.
    Returns: (H, W, 3) uint8.
    """
    x = image.detach().float().cpu()
    if x.shape[-1] >= 3:
        rgb = x[..., :3]
        if float(rgb.min()) < 0:
            rgb = (rgb + 1) * 0.5
        return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    x = x[..., 0]
    if float(x.min()) >= 0 and float(x.max()) <= 1:
        grey = (x.numpy() * 255 + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return depth_picture(image, coverage)


def depth_picture(depth: torch.Tensor, coverage: torch.Tensor | None = None,
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A one-channel image (H, W, 1) through the turbo colour map, stretched over `value_range` (default: its
    `depth_range`; pass one range to keep a video's frames alike) and darkened by `coverage` (H, W, 1) (black
    where nothing was hit). Returns (H, W, 3) uint8."""
    lo, hi = depth_range(depth, coverage) if value_range is None else value_range
    x = depth.detach().float().cpu()[..., 0]
    picture = turbo(((x - lo) / max(hi - lo, 1e-8)).numpy())
    if coverage is not None:  # fades to black where nothing was hit
        weight = coverage[..., 0].cpu().clamp(0, 1).numpy()[..., None]
        picture = (picture * weight + 0.5).astype(np.uint8)
    return picture


class RenderBudget:
    """A token bucket that keeps the viewer's rendering to a share of wall time.

    Credit grows by `share` x the wall time that passes; a render may start while the credit is positive and
    costs its duration, so the credit can go negative and must be earned back before the next one. The credit
    is capped at `share` x `burst_s`, so an idle spell does not buy a burst of renders. Over any stretch of T
    seconds, rendering takes at most share x T + share x burst_s + one render.

    share: in (0, 1]; 1 = render whenever asked. clock: seconds (default time.perf_counter; tests pass their own).
    """

    def __init__(self, share: float, burst_s: float = 1.0, clock=time.perf_counter):
        self.clock, self.burst_s = clock, burst_s
        self.share = share
        self.credit, self._last = 0.0, clock()

    @property
    def share(self) -> float:
        return self._share

    @share.setter
    def share(self, value: float) -> None:
        if not 0 < value <= 1:
            raise ConfigError(f"viewer render share must be in (0, 1], got {value}")
        self._share = float(value)

    def _refill(self) -> None:
        now = self.clock()
        self.credit = min(self.credit + self._share * (now - self._last), self._share * self.burst_s)
        self._last = now

    def allows(self) -> bool:
        """May a render start now?"""
        if self._share >= 1:
            return True
        self._refill()
        return self.credit > 0

    def spend(self, seconds: float) -> None:
        """Charge a render that took `seconds`."""
        self._refill()
        self.credit -= seconds


@dataclass
class Pace:
    """Measured render speed, for the reduced frame size while the camera moves: `pixels_for(seconds)` is
    how many pixels a render of that duration can have (an exponential average of pixels per second)."""

    pixels_per_s: float = 0.0

    def record(self, pixels: int, seconds: float) -> None:
        rate = pixels / max(seconds, 1e-6)
        self.pixels_per_s = rate if self.pixels_per_s == 0 else 0.7 * self.pixels_per_s + 0.3 * rate

    def pixels_for(self, seconds: float) -> float | None:
        return None if self.pixels_per_s == 0 else self.pixels_per_s * seconds


__all__ = ["Pace", "RenderBudget", "camera_pose", "crop_mask", "depth_picture", "depth_range", "display_image",
           "frame_size",
           "pinhole", "turbo"]
