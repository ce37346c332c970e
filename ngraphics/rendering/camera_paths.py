"""Camera paths for rendering videos of a trained scene, built from the training cameras.

`orbit` circles the point the training cameras look at, at their mean height and distance, starting next to
camera 0. All paths return `Cameras` (OpenCV convention) with camera 0's intrinsics.
"""

from __future__ import annotations

import math

import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError, choice_message


def focus_point(cameras: Cameras) -> torch.Tensor:
    """The point nearest (least squares) to all optical axes: where the cameras look. (3,) float32.

    Falls back to the mean camera position pushed along the mean viewing direction when the axes are
    (nearly) parallel."""
    origins = cameras.origins.double()
    axes = cameras.c2w[:, :3, 2].double()
    axes = axes / axes.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    P = eye - axes[:, :, None] * axes[:, None, :]  # projectors orthogonal to each axis, (C, 3, 3)
    A, b = P.sum(0), (P @ origins[:, :, None]).sum(0)[:, 0]
    if torch.linalg.cond(A) > 1e6:
        return (origins.mean(0) + axes.mean(0)).float()
    return torch.linalg.solve(A, b).float()


def look_at(positions: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrices (OpenCV axes) of cameras at `positions` (C, 3) looking at `target` (3,) with
    world `up` (3,) pointing to the top of the image. Returns (C, 4, 4) float32."""
    z = target[None, :] - positions
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up.expand_as(z))
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4).repeat(positions.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, positions
    return c2w


def orbit(cameras: Cameras, n_frames: int = 120, *, center: torch.Tensor | None = None, scale: float = 1.0) -> Cameras:
    """A circle around the scene.

    Args:
        cameras: training cameras; they fix the centre, the up direction, radius, height and intrinsics.
        n_frames: number of cameras on the circle (the last one stops short of the first).
        center: point to circle and look at, (3,); default: `focus_point(cameras)`.
        scale: image size factor (0.5 halves width and height).
    Returns: Cameras (n_frames of them), camera 0's intrinsics.
    """
    cameras = cameras.to("cpu")
    center = focus_point(cameras) if center is None else torch.as_tensor(center, dtype=torch.float32)
    up = -cameras.c2w[:, :3, 1].mean(0)  # OpenCV y points down the image
    up = up / up.norm()
    offsets = cameras.origins - center
    height = float((offsets @ up).mean())
    planar = offsets - (offsets @ up)[:, None] * up
    radius = float(planar.norm(dim=-1).mean())
    e1 = planar[0] / planar[0].norm().clamp_min(1e-12)
    e2 = torch.linalg.cross(up, e1)
    angles = torch.arange(n_frames, dtype=torch.float32) * (2 * math.pi / n_frames)
    positions = center + height * up + radius * (torch.cos(angles)[:, None] * e1 + torch.sin(angles)[:, None] * e2)
    c2w = look_at(positions, center, up)
    first = cameras[0].scaled(scale) if scale != 1.0 else cameras[0]
    C = n_frames
    return Cameras(c2w, first.K.expand(C, 3, 3).clone(), first.width.expand(C).clone(), first.height.expand(C).clone())


def training_views(cameras: Cameras, n_frames: int = 0, *, scale: float = 1.0) -> Cameras:
    """The training cameras themselves (n_frames = 0: all of them, else every k-th to give about n_frames)."""
    cameras = cameras.to("cpu")
    if n_frames > 0 and n_frames < len(cameras):
        cameras = cameras[torch.linspace(0, len(cameras) - 1, n_frames).round().to(torch.int64)]
    return cameras.scaled(scale) if scale != 1.0 else cameras


# path name -> function(cameras, n_frames, scale=...). Literal table.
PATHS = {"orbit": orbit, "train": training_views}


def make_path(name: str, cameras: Cameras, n_frames: int, scale: float = 1.0) -> Cameras:
    """Build the camera path called `name` (see PATHS); an unknown name is a ConfigError."""
    if name not in PATHS:
        raise ConfigError(choice_message("--path", name, PATHS))
    return PATHS[name](cameras, n_frames, scale=scale)
